"""The sandbox's embedded Kubernetes-compatible API server.

A development/demo cluster API, not a replacement for Kubernetes: enough of the API for the real
kubectl and helm, the official Python client and the sandbox's kubelets, controllers and node agents.

- ``registry`` — the one ``Registry`` of served kinds: the built-in table (group, version, plural,
  short names, columns, ...) plus the kinds of established CustomResourceDefinitions
- ``store`` — SQLite persistence, in-memory mirror, resourceVersion counter, watch history
- ``resources`` — verbs with Kubernetes semantics; ``admission`` — per-kind defaults/validation
- ``crds`` (a CRD's checks, status and served types; conversion between its versions),
  ``structural`` (a CRD schema on custom resources: prune, default, validate with ``jsonschema``),
  ``jsonpath`` (the subset printer columns use) — pure functions
- ``patch`` (merge, JSON, strategic, apply), ``selectors``, ``validation``, ``tables``, ``deletion``
  (DeleteOptions, propagation finalizers) — pure functions
- ``handlers`` (HTTP routing, auth, negotiation), ``watch`` (event streams), ``discovery`` (+OpenAPI),
  ``protobuf`` (the request bodies kubectl's typed clients send)
- ``tokens`` (service-account JWTs), ``pki`` (CA, serving cert, kubeconfig), ``server`` (entry point),
  ``process`` (run it as a child process and wait until ready)

Every authenticated caller (admin token or service-account token) may do everything: no RBAC.
"""
