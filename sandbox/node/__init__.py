"""Sandbox nodes: network namespaces as nodes and pods, run by a small kubelet through real CNI.

- ``underlay``: host bridge, one netns per node, routes between nodes; ``teardown`` removes it all
- ``netns``: named network namespaces (/run/netns), their processes
- ``cni``: a CNI 1.0.0 runtime (libcni semantics: conflist, chaining, prevResult, result cache)
  and the default ptp + host-local + portmap conflist
- ``pods``: the pod runtime: sandbox netns + CNI ADD, containers as processes, probes, restarts,
  status; ``containers``, ``launch``, ``probes``, ``podstatus``, ``serviceaccount`` are its parts
- ``volumes`` (spec -> plan -> files, pure), ``podvolumes`` (API reads, tokens, resync) and
  ``atomicwriter`` (the ..data swap): the pod's volumes, bind-mounted by ``launch``
- ``kubeproxy``: ClusterIP routing in each node netns as kube-proxy's iptables mode does it
- ``nodefs``: each node's filesystem, a mount namespace where /etc/cni/net.d, /opt/cni/bin and
  /var/run/ambit are the node's own directories; containers and CNI plugins run in it
- ``kubelet``: the process per node that ties the runtime and kube-proxy to the API
- ``layout``, ``logs``: where pod state and container logs live on disk
"""
