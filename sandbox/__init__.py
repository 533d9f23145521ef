"""The local sandbox cluster (`ambit up`): a development and demo cluster, not a Kubernetes replacement.

- ``config``: names, addresses, ports and paths, all derived from the sandbox name and index
- ``api/``: an embedded Kubernetes-compatible API server (SQLite, watches, patches, discovery, tables)
- ``controllers/``: scheduler, Deployment/ReplicaSet/DaemonSet, EndpointSlice, garbage collector
- ``node/``: network namespaces as nodes and pods, a kubelet that runs pods through real CNI plugins,
  and kube-proxy-style ClusterIP routing
- ``demo/``: the emojivoto-like demo application
- ``up``: ``ambit up``/``ambit down`` orchestration; ``mesh``: the values Ambit's Helm chart is
  installed with here
- ``cli``: the sandbox's commands, added to ``ambit`` through the ``ambit.commands`` entry point
"""
