"""The sandbox's control plane: what kube-scheduler and kube-controller-manager do, in one process.

Each controller is a pure ``reconcile(objects...) -> [actions]`` plus a thin class that maps
watch events to queue keys; the runtime feeds and applies them.

- ``scheduler``: bind pending pods to Ready nodes, spreading each owner's replicas
- ``deployment``: Deployment -> ReplicaSet per pod-template hash, rolling updates, status
- ``replicaset``: ReplicaSet -> pods, scale up/down, replace finished pods, status
- ``daemonset``: one pod per eligible node, rolling replacement, status
- ``endpointslice``: Service selector -> EndpointSlice of ready/serving/terminating pods
- ``garbagecollector``: delete dependents whose owners are gone (owners by kind and group, a
  Gateway's too); foreground/orphan finalizers
- ``namespace``: empty a Terminating namespace (every namespaced resource, read live), then
  remove its ``kubernetes`` finalizer so the API removes it
- ``objects`` (raw JSON shapes, selectors, readiness, hashes) and ``actions`` (Create/Patch/
  Delete/DeleteCollection/FinalizeNamespace/Requeue): the vocabulary the reconcile functions share
- ``queue``, ``runtime``, ``applier``: work queue, expectations and worker loop, client calls
- ``manager`` / ``__main__``: one reflector per kind the controllers read (CRD kinds such as
  Gateway too, empty while their CRD is absent), all loops, readiness, SIGTERM
"""
