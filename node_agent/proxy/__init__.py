"""The node agent's L4 proxy: per-pod listeners, the mTLS tunnel, and one byte pump.

- ``outbound`` (15001): the app's redirected connections -> resolve -> pick an endpoint
  (``balancer``: P2C over peak-EWMA) -> mTLS tunnel to ``<pod ip>:15008`` with the *source*'s
  certificate (same node: straight to the app after the same checks; non-mesh: plain passthrough).
- ``inbound`` (15008): terminate mTLS, read the ``tunnel`` header, check target and policy, connect
  to the app; ``inbound_plaintext`` (15006): non-mesh sources to an enrolled pod.
- ``pump``: ``Stream`` (TCP, optionally TLS 1.3 via MemoryBIO) and ``relay``: both directions,
  half-close, backpressure, one shared read buffer; every path ends there.
- ``tls``: contexts from in-memory PEMs, SPIFFE checks, session resumption; ``tunnel``: the wire
  format (``docs/tunnel.md``).
- Injected: ``model.Resolver``/``Authorizer`` (state, policy), ``sockets.SocketFactory`` (in-pod),
  ``tls.CertSource`` (identity), ``records.Observer`` (metrics); ``listener.ProxyInputs`` bundles
  them, ``pod.PodProxy`` runs one pod's three listeners.
"""
