"""The L7 waypoint proxy: HTTP routing, retries, timeouts and request metrics for the Services bound to it.

Provisioning and the connection (``docs/waypoint.md``):

- ``controller``: ``ambit-waypoint controller``: each Gateway of class ``ambit-waypoint`` becomes an owned
  ServiceAccount, RoleBinding, trust-bundle ConfigMap, Deployment and Service; the Gateway's status.
- ``run``: ``ambit-waypoint proxy``, one waypoint pod: discovery, its own certificate, the listener, admin
  endpoints, drain on SIGTERM; ``settings``: its environment; ``discovery``: its namespace's Pods,
  Services, EndpointSlices and HTTPRoutes as one frozen view.
- ``server``: the tunnel listener (15008) as the waypoint's identity: the header names a Service of its
  namespace; HTTP goes to the engine below, anything else is relayed as TCP; endpoints are reached
  over new tunnels (``SnapshotBackends`` is the engine's ``Backends`` and ``Connector``).
- ``cli``: the ``ambit-waypoint`` command.

Along the data path of one request (the L7 core; it starts from "a downstream byte stream carrying
HTTP for Service S port P"):

- ``downstream_h1`` / ``downstream_h2``: the client's side, HTTP/1.1 (one request at a time) or HTTP/2
  with prior knowledge (h2: concurrent streams, flow control, trailers); ``http1``: HTTP/1.x framing on
  httptools (pure): request/response parsers fed chunks, head serializers.
- ``routes``: HTTPRoutes (mesh profile) parsed into frozen values; a ``RouteTable`` per snapshot picks the rule.
- ``budget``: the per-route retry budget (20% of requests + 10/s over 10 s); ``accrual``: endpoints that keep
  failing rest with a doubling penalty, then one probe decides.
- ``metrics``: ``ambit_requests_total``, ``ambit_request_duration_milliseconds`` (Istio's labels, reporter
  "waypoint"), retries and timeouts, and one JSON access line per request.
- ``http_proxy``: the engine, ``HttpProxy.serve_http1`` / ``serve_http2(downstream, context=...)``: one client
  connection's requests routed, balanced (P2C peak-EWMA, failure accrual), retried within budget, timed,
  streamed both ways with backpressure (a response head is held until the retry decision).
- ``upstream``: one attempt's request and response over HTTP/1.1 or h2c (``appProtocol`` grpc/h2c);
  ``pool``: keep-alive upstream connections per endpoint and protocol.
- ``model``: what the plumbing injects: ``RequestContext`` (service port, source identity) and the
  ``Connector``, ``Backends`` and ``RouteSource`` Protocols.
- ``errors``: ``WaypointError`` and its few subclasses (``HttpError`` with the status to answer, ``StreamRefused``
  an h2c upstream that processed nothing, ``RouteError``).
"""
