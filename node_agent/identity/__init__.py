"""Identity: SPIFFE IDs, the CA that signs them, and the agent's per-service-account certificates.

- ``spiffe``: ``SpiffeId`` (``spiffe://<td>/ns/<ns>/sa/<sa>``), parsed and validated
- ``errors``: the package's error hierarchy, rooted at ``IdentityError``
"""
