"""The L7 waypoint proxy: HTTP routing, retries, timeouts and request metrics for the Services bound to it.

Along the data path of one request (the L7 core; it starts from "a downstream byte stream carrying
HTTP for Service S port P"):

- ``http1``: HTTP/1.x framing on httptools (pure): request/response parsers fed chunks, head serializers.
- ``routes``: HTTPRoutes (mesh profile) parsed into frozen values; a ``RouteTable`` per snapshot picks the rule.
- ``budget``: the per-route retry budget (20% of requests + 10/s over 10 s); ``accrual``: endpoints that keep
  failing rest with a doubling penalty, then one probe decides.
- ``metrics``: ``ambit_requests_total``, ``ambit_request_duration_milliseconds`` (Istio's labels, reporter
  "waypoint"), retries and timeouts, and one JSON access line per request.
- ``http_proxy``: the engine, ``HttpProxy.serve_http1(downstream, context=...)``: one client connection's
  requests routed, balanced (P2C peak-EWMA, failure accrual), retried within budget, timed, streamed
  both ways with backpressure; ``pool``: keep-alive upstream connections per endpoint.
- ``model``: what the plumbing injects: ``RequestContext`` (service port, source identity) and the
  ``Connector``, ``Backends`` and ``RouteSource`` Protocols.
- ``errors``: ``WaypointError`` and its few subclasses (``HttpError`` with the status to answer, ``RouteError``).
"""
