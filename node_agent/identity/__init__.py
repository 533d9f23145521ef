"""Identity: SPIFFE IDs, the CA that signs them, and the agent's per-service-account certificates.

- ``spiffe``: ``SpiffeId`` (``spiffe://<td>/ns/<ns>/sa/<sa>``), parsed and validated
- CA side (``ambit identity serve``): ``ca`` signs (pure logic), ``bootstrap`` loads/creates the
  ``ambit-ca`` Secret and publishes ``ambit-trust-bundle``, ``authz`` decides who may have which
  identity (TokenReview + same-node pod), ``server`` is the HTTPS endpoint, ``kube`` the API adapters
- agent side: ``manager.CertificateManager`` holds one certificate per service account on the node,
  getting them through ``client.CaClient`` and renewing at half-life; ``tls`` loads them into
  ``SSLContext`` from memory; ``validate.verify_peer`` turns a peer's chain into its ``SpiffeId``
- ``settings``: the frozen ``IdentitySettings`` tree; ``errors``: the hierarchy under ``IdentityError``

See docs/identity.md for the flow, the authorization rules and lifetimes.
"""
