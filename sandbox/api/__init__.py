"""The sandbox's embedded Kubernetes-compatible API server.

A development/demo cluster API, not a replacement for Kubernetes: enough of the API for the real
kubectl and helm, the official Python client and the sandbox's kubelets, controllers and node agents.

- ``registry`` — the table of served kinds (group, version, plural, short names, columns, ...)
- ``store`` — SQLite persistence, in-memory mirror, resourceVersion counter, watch history
- ``resources`` — verbs with Kubernetes semantics; ``admission`` — per-kind defaults/validation
- ``patch`` (merge, JSON, strategic, apply), ``selectors``, ``validation``, ``tables``, ``deletion``
  (DeleteOptions, propagation finalizers) — pure functions
- ``handlers`` (HTTP routing, auth, negotiation), ``watch`` (event streams), ``discovery`` (+OpenAPI),
  ``protobuf`` (the request bodies kubectl's typed clients send)
- ``tokens`` (service-account JWTs), ``pki`` (CA, serving cert, kubeconfig), ``server`` (entry point),
  ``process`` (run it as a child process and wait until ready)

Every authenticated caller (admin token or service-account token) may do everything: no RBAC.
"""
