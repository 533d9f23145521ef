"""The HTTP engine: a client connection in, requests routed, retried and timed, responses out.

``HttpProxy.serve_http1`` / ``serve_http2`` run one client connection (HTTP/1.1, or HTTP/2 with
prior knowledge) until the client is done; every request then goes the same way:

1. HTTP/1.1 requests are served one at a time, in order (``downstream_h1``); HTTP/2 streams
   concurrently (``downstream_h2``);
2. pick the rule (``RouteTable.select``: none → 404 ``NR``), a backend by weight (none with weight
   → 500 ``NR``), its endpoints (Service missing → 500; none ready or all resting → 503 ``UF``
   "no healthy upstream");
3. per attempt: an endpoint by P2C over peak-EWMA among those failure accrual allows, a pooled or
   new connection (``Connector``), HTTP/1.1 or, for an ``appProtocol`` of h2c/grpc, h2c
   (``upstream``); the body streamed up while the response is read, with backpressure both ways;
4. retry per the rule's ``retry`` on connect failures, h2c streams the upstream refused
   (``REFUSED_STREAM``), listed codes and gRPC trailers-only ``UNAVAILABLE`` answers (a response head
   is held until this is decided), never once a response byte went to the client and never a body
   past the 64 KiB replay buffer; each retry must be allowed by the route's budget (refused: the
   last answer as it is, ``UO``; attempts used up: ``URX``);
5. ``timeouts.request`` bounds the whole exchange including retries, ``timeouts.backendRequest``
   each attempt: 504 ``UT`` (or the response cut when it had already started);
6. record metrics and the access line.

A reused pooled connection that fails before any response byte is retried once on a fresh one at
no cost to the budget (the server had closed it while idle); nothing else is retried for free.
The client's side of one request is a ``Downstream`` (``Http1Request``, ``Http2Request``).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from node_agent.proxy.balancer import PeakEwmaBalancer
from node_agent.proxy.errors import UpstreamError
from node_agent.proxy.model import Endpoint
from node_agent.proxy.pump import Stream, StreamClosedError

from waypoint import http1
from waypoint.accrual import AccrualSettings, FailureAccrual
from waypoint.budget import BudgetSettings, RetryBudgets
from waypoint.downstream_h1 import Http1Connection, Http1Request
from waypoint.downstream_h2 import Http2Server
from waypoint.errors import HttpError, StreamRefused
from waypoint.http1 import Body, EndOfMessage, Framing, RequestHead, ResponseHead
from waypoint.metrics import Flag, RequestMetrics, RequestRecord
from waypoint.model import Backends, Clock, Connector, RequestContext, RouteSource, ServiceRef
from waypoint.pool import ConnectionPool, PoolSettings
from waypoint.routes import Rule
from waypoint.upstream import H2_PROTOCOLS, H2Connection, Http1Upstream, Http2Upstream

log = logging.getLogger(__name__)

_DROP_UPSTREAM = frozenset({b"expect"})  # the waypoint answers 100-continue itself
UPSTREAM_PROTOCOLS = frozenset({"", "http", "kubernetes.io/http"}) | H2_PROTOCOLS
"""``appProtocol`` values the engine can speak upstream; others are answered 502."""


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The engine's knobs; the plumbing's settings tree holds one."""

    retry_buffer: int = 64 * 1024
    """request body bytes kept to replay on a retry; a larger body is not retried (Linkerd: 64 KiB)"""
    max_head_bytes: int = http1.MAX_HEAD_BYTES
    """request and response heads beyond this are refused (431 / 502)"""
    keepalive_timeout: float = 60.0
    """seconds a client's idle keep-alive connection waits for its next request"""
    connect_timeout: float = 5.0
    """seconds to open a connection to an endpoint (the connector may give up sooner)"""
    connect_failovers: int = 2
    """other endpoints tried after a connect failure when the rule has no ``retry`` (nothing was sent)"""
    max_streams: int = 100
    """concurrent requests on one HTTP/2 client connection (SETTINGS_MAX_CONCURRENT_STREAMS)"""
    pool: PoolSettings = field(default_factory=PoolSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    accrual: AccrualSettings = field(default_factory=AccrualSettings)


class Downstream(Protocol):
    """One request's client side, whatever the client's protocol."""

    started: bool  # a response head went to the client
    body_done: bool  # the request body has been read to its end

    async def next_body_event(self) -> Body | EndOfMessage:
        """Raises ``HttpError`` when the client broke off, ``StreamClosedError`` when it is gone."""
        ...

    async def ready_for_body(self) -> None: ...

    async def answer(self, status: int, detail: str, *, close: bool = False) -> None: ...

    async def start_response(self, response: ResponseHead) -> None: ...

    async def send_body(self, data: bytes) -> None: ...

    async def end_response(self, trailers: http1.Headers) -> None: ...

    def cut(self) -> None: ...


Upstream = Http1Upstream | Http2Upstream


class _Outcome:
    """How one attempt ended before its response was streamed."""

    __slots__ = ("head", "up", "upload", "key", "pool_key", "endpoint", "error", "flag", "retryable", "stale")

    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.up: Upstream | None = None
        self.upload: asyncio.Task[None] | None = None  # the request body still being sent
        self.key: tuple[str, int] | None = None
        self.pool_key: tuple[str, int, str] | None = None
        self.endpoint: Endpoint | None = None
        self.error = ""
        self.flag = ""
        self.retryable = False
        self.stale = False  # a reused connection failed before any response byte


class _RequestBody:
    """The request body: streamed to the upstream, the first ``limit`` bytes kept for a replay."""

    __slots__ = ("client", "head", "limit", "kept", "size", "replayable", "trailers")

    def __init__(self, client: Downstream, head: RequestHead, *, limit: int) -> None:
        self.client = client
        self.head = head
        self.limit = limit
        self.kept: list[bytes] = []
        self.size = 0
        self.replayable = True  # everything read so far is in ``kept``
        self.trailers: http1.Headers = ()

    async def send(self, up: Upstream) -> None:
        """Write the whole body upstream (what was kept first, then the rest as the client sends it).

        A client that breaks off aborts the upstream too, so the attempt waiting for its response
        wakes up and finds this task's ``HttpError``."""
        try:
            await self._send(up)
        except HttpError:
            up.abort()
            raise

    async def _send(self, up: Upstream) -> None:
        for data in self.kept:
            await up.send_body(data)
        client = self.client
        while not client.body_done:
            await client.ready_for_body()
            event = await client.next_body_event()
            if isinstance(event, Body):
                self.size += len(event.data)
                if self.replayable and self.size <= self.limit:
                    self.kept.append(event.data)
                else:
                    self.replayable = False
                    self.kept.clear()
                await up.send_body(event.data)
            else:
                self.trailers = event.trailers
        await up.end_body(self.trailers)


class HttpProxy:
    """The engine shared by every client connection of a waypoint (balancer, pools, budgets)."""

    def __init__(
        self,
        *,
        connector: Connector,
        backends: Backends,
        routes: RouteSource,
        metrics: RequestMetrics,
        settings: HttpSettings | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or HttpSettings()
        self._connector = connector
        self._backends = backends
        self._routes = routes
        self.metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self.balancer: PeakEwmaBalancer[tuple[str, int]] = PeakEwmaBalancer(clock=clock, rng=self._rng)
        self.accrual: FailureAccrual[tuple[str, int]] = FailureAccrual(settings=self.settings.accrual, clock=clock,
                                                                       rng=self._rng)
        self.budgets = RetryBudgets(settings=self.settings.budget, clock=clock)
        self.pool = ConnectionPool(settings=self.settings.pool)

    def close(self) -> None:
        """Close the idle upstream connections (the waypoint is stopping)."""
        self.pool.close()

    # ------------------------------------------------------------------ client connections

    async def serve_http1(self, downstream: Stream, *, context: RequestContext) -> None:
        """Serve HTTP/1.x requests on ``downstream`` until the client closes, asks to, or errs; then close it.

        Cancelling aborts the downstream (and the upstream of the request in progress)."""
        conn = Http1Connection(downstream, max_head_bytes=self.settings.max_head_bytes)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.settings.keepalive_timeout):
                        event = await conn.next_event()
                except TimeoutError:
                    break  # an idle keep-alive connection
                except HttpError as exc:
                    await self._refuse(conn, context, exc)
                    break
                if event is None:
                    break
                if not isinstance(event, RequestHead):
                    raise HttpError("BUG: a request body event outside a request", status=500)
                request = Http1Request(conn, event)
                await self._exchange(request, event, context)
                if not request.keep_alive:
                    break
            downstream.close()
        except StreamClosedError:
            downstream.abort()  # the client went away while we were writing
        except BaseException:  # cancelled (shutdown), or a bug the caller logs
            downstream.abort()
            raise

    async def serve_http2(self, downstream: Stream, *, context: RequestContext) -> None:
        """Serve HTTP/2 with prior knowledge on ``downstream`` (its first bytes are the client preface)."""
        server = Http2Server(downstream, max_streams=self.settings.max_streams,
                             max_head_bytes=self.settings.max_head_bytes)
        await server.run(lambda request: self._exchange(request, request.head, context),
                         idle_timeout=self.settings.keepalive_timeout)

    async def _refuse(self, conn: Http1Connection, context: RequestContext, exc: HttpError) -> None:
        """A request the parser refused: answer its status, record it, close."""
        rec = self._record(context, started=self._clock())
        rec.status = exc.status
        rec.flag(Flag.DOWNSTREAM_PROTOCOL_ERROR, str(exc))
        try:
            await conn.refuse(exc)
        except StreamClosedError:
            rec.status = 0
        self._finish(rec)

    def _record(self, context: RequestContext, *, started: float) -> RequestRecord:
        return RequestRecord(started=started, source_workload=context.source_workload,
                             source_namespace=context.source_namespace, source_principal=context.source_principal,
                             destination_service=context.hostname())

    def _finish(self, rec: RequestRecord) -> None:
        rec.duration = self._clock() - rec.started
        try:
            self.metrics.record(rec)
        except Exception:  # metrics must never break the data path
            log.exception("BUG: recording request metrics failed")

    # ------------------------------------------------------------------ one request

    async def _exchange(self, client: Downstream, head: RequestHead, context: RequestContext) -> None:
        """Serve one request to its end (the client's side says afterwards whether its connection stays)."""
        rec = self._record(context, started=self._clock())
        rec.method, rec.authority, rec.path = head.method, head.authority, head.path
        content_type = head.header(b"content-type") or b""
        if content_type.startswith(b"application/grpc"):
            rec.protocol = "grpc"
        body = _RequestBody(client, head, limit=self.settings.retry_buffer)
        try:
            await self._route(client, head, context, rec, body)
        except HttpError as exc:  # the client's body was malformed or cut short
            rec.flag(Flag.DOWNSTREAM_PROTOCOL_ERROR, str(exc))
            if not client.started:
                rec.status = exc.status
                await client.answer(exc.status, str(exc), close=True)
            else:
                client.cut()
        except StreamClosedError as exc:
            rec.flag(Flag.DOWNSTREAM_DISCONNECT, str(exc))
            if not client.started:
                rec.status = 0
        except asyncio.CancelledError:
            rec.flag(Flag.DOWNSTREAM_DISCONNECT, "cancelled (the client reset the stream, or shutdown)")
            raise
        finally:
            self._finish(rec)

    async def _answer(self, client: Downstream, rec: RequestRecord, status: int, detail: str) -> None:
        """A response the waypoint makes itself."""
        rec.status = status
        await client.answer(status, detail)

    async def _route(self, client: Downstream, head: RequestHead, context: RequestContext, rec: RequestRecord,
                     body: _RequestBody) -> None:
        table = self._routes.route_table()
        rule = table.select(namespace=context.namespace, service=context.service, port=context.port, request=head)
        if rule is None:
            rec.flag(Flag.NO_ROUTE, f"no httproute rule of {context.namespace}/{context.service} port {context.port} "
                                    f"matches {head.method} {head.path}")
            return await self._answer(client, rec, 404, "no route matches this request")
        rec.route = rule.route
        backend = rule.pick_backend(self._rng)
        if backend is None:
            rec.flag(Flag.NO_ROUTE, f"httproute {rule.route} rule {rule.index} has no backend with a weight above 0")
            return await self._answer(client, rec, 500, "the route has no backend to send to")
        service = ServiceRef(namespace=backend.namespace, name=backend.name, port=backend.port)
        rec.destination_service = context.hostname(backend.name)
        endpoints = self._backends.endpoints(service)
        if endpoints is None:
            rec.flag(Flag.NO_ROUTE, f"backend service {service.namespace}/{service.name} port {service.port} "
                                    "does not exist")
            return await self._answer(client, rec, 500, "the route's backend does not exist")
        protocol = self._backends.app_protocol(service)
        if protocol not in UPSTREAM_PROTOCOLS:
            rec.flag(Flag.UPSTREAM_PROTOCOL_ERROR, f"service {service.namespace}/{service.name} port {service.port} "
                                                   f"has appProtocol {protocol}, which the waypoint does not speak")
            return await self._answer(client, rec, 502, f"the backend speaks {protocol}, which the waypoint cannot "
                                                        "send")
        h2c = protocol in H2_PROTOCOLS
        budget_key = rule.route or f"{context.namespace}/{context.service}:{context.port}"
        try:
            async with asyncio.timeout(rule.request_timeout):
                await self._attempts(client, head, rec, body, rule, service, list(endpoints), budget_key, h2c)
        except TimeoutError:
            rec.flag(Flag.TIMEOUT, f"timeouts.request ({rule.request_timeout:g}s) expired")
            rec.timeout = "request"
            if client.started:
                client.cut()  # the response had begun: the client sees it cut
                return
            await self._answer(client, rec, 504, "upstream request timeout")

    async def _attempts(self, client: Downstream, head: RequestHead, rec: RequestRecord, body: _RequestBody,
                        rule: Rule, service: ServiceRef, endpoints: list[Endpoint], budget_key: str,
                        h2c: bool) -> None:
        retry = rule.retry
        allowed = retry.attempts if retry is not None else 0
        budget = self.budgets.for_route(budget_key)
        budget.deposit()
        by_key = {ep.key: ep for ep in endpoints}
        tried: list[tuple[str, int]] = []
        stale_retried = False
        failovers = 0
        exhausted = False
        while True:
            outcome = await self._attempt(head, rec, body, rule, service, by_key, tried, h2c)
            if outcome.stale and not stale_retried and body.replayable:
                stale_retried = True  # the server closed an idle connection as we sent: free retry
                continue
            if outcome.head is not None:
                retry_it = retry is not None and (outcome.head.status in retry.codes
                                                  or _grpc_unavailable(outcome.head))
            else:
                retry_it = outcome.retryable
            if not retry_it:
                break
            if retry is None:  # a connect failure or a refused stream: nothing was processed, try elsewhere
                if failovers >= self.settings.connect_failovers:
                    break
                failovers += 1
                continue
            if not body.replayable:
                rec.detail = rec.detail or f"request body over {self.settings.retry_buffer} bytes is not retried"
                break
            if rec.retries >= allowed:
                exhausted = allowed > 0
                break
            if not budget.withdraw():
                rec.flag(Flag.OVERFLOW, "retry budget exhausted")
                break
            await self._discard(outcome)
            rec.retries += 1
            await asyncio.sleep(retry.backoff * 2 ** (rec.retries - 1))
        if outcome.head is None:
            rec.flag(outcome.flag, outcome.error)  # the cause first: "UF,URX"
        if exhausted:
            rec.flag(Flag.RETRIES_EXHAUSTED)
        if outcome.head is not None:
            return await self._respond(client, rec, outcome, rule)
        if outcome.key is None:
            await self._answer(client, rec, 503, "no healthy upstream")
        elif outcome.flag == Flag.TIMEOUT:
            await self._answer(client, rec, 504, "upstream request timeout")
        elif outcome.flag == Flag.UPSTREAM_PROTOCOL_ERROR:
            await self._answer(client, rec, 502, f"the upstream broke the protocol: {outcome.error}")
        else:
            await self._answer(client, rec, 503, f"upstream connect error or disconnect/reset before headers: "
                                                 f"{outcome.error}")

    async def _connection(self, endpoint: Endpoint, service: ServiceRef, pool_key: tuple[str, int, str],
                          *, h2c: bool) -> tuple[Stream | H2Connection, bool]:
        """A pooled connection to ``endpoint`` or a new one; whether it was reused. Raises the connector's errors."""
        pooled = self.pool.take(pool_key)
        if pooled is not None:
            return pooled, True  # type: ignore[return-value]
        async with asyncio.timeout(self.settings.connect_timeout):
            stream = await self._connector.connect(endpoint, service=service)
        return (H2Connection(stream) if h2c else stream), False

    async def _attempt(self, head: RequestHead, rec: RequestRecord, body: _RequestBody, rule: Rule,
                       service: ServiceRef, by_key: dict[tuple[str, int], Endpoint], tried: list[tuple[str, int]],
                       h2c: bool) -> _Outcome:
        """One try up to the response head (its body is streamed by ``_respond``)."""
        outcome = _Outcome()
        usable = [k for k in by_key if self.accrual.usable(k)]
        fresh = [k for k in usable if k not in tried]
        key = self.balancer.pick(fresh or usable)
        if key is None:
            outcome.flag = Flag.UPSTREAM_FAILURE
            outcome.error = (f"service {service.namespace}/{service.name} port {service.port} has no ready endpoint"
                             if not by_key else "every endpoint is resting after consecutive failures")
            return outcome
        endpoint = by_key[key]
        tried.append(key)
        outcome.key, outcome.endpoint = key, endpoint
        outcome.pool_key = (key[0], key[1], "h2c" if h2c else "http/1.1")
        rec.upstream = "%s:%d" % key
        rec.destination_workload = endpoint.workload.workload_name
        rec.destination_namespace = endpoint.workload.namespace
        self.accrual.start(key)
        self.balancer.started(key)
        started = self._clock()
        reused = False
        try:
            async with asyncio.timeout(rule.backend_timeout):
                try:
                    conn, reused = await self._connection(endpoint, service, outcome.pool_key, h2c=h2c)
                except (UpstreamError, TimeoutError, OSError) as exc:
                    self.balancer.failed(key, elapsed=self._clock() - started)
                    self.accrual.failure(key)
                    outcome.flag = getattr(exc, "flag", Flag.UPSTREAM_FAILURE)
                    outcome.error = str(exc) or "connect timed out"
                    outcome.retryable = getattr(exc, "retryable", True)
                    return outcome
                if isinstance(conn, H2Connection):
                    up: Upstream = Http2Upstream(conn, method=head.method)
                else:
                    up = Http1Upstream(conn, method=head.method, max_head_bytes=self.settings.max_head_bytes)
                outcome.up = up
                authority = head.authority or rec.destination_service + (f":{service.port}" if service.port != 80
                                                                         else "")
                up.send_head(head, http1.end_to_end(head.headers, drop=_DROP_UPSTREAM), authority=authority)
                if head.framing is not Framing.NONE:
                    outcome.upload = asyncio.get_running_loop().create_task(
                        body.send(up), name=f"ambit-waypoint-upload-{id(up):x}")
                while outcome.head is None:
                    try:
                        event = await up.next_event()
                    except HttpError:
                        upload = outcome.upload
                        if upload is not None and upload.done() and not upload.cancelled() and isinstance(
                                upload.exception(), HttpError):
                            raise upload.exception() from None  # type: ignore[misc]  # the client broke off
                        raise
                    if isinstance(event, ResponseHead):
                        outcome.head = event
        except HttpError as exc:
            if exc.status != 502:  # the client's, answered by _exchange
                self.accrual.cancel(key)
                await self._discard(outcome)
                raise
            received = outcome.up.received if outcome.up is not None else 0
            outcome.stale = reused and not received
            if outcome.stale:
                self.accrual.cancel(key)
            else:
                self.balancer.failed(key, elapsed=self._clock() - started)
                self.accrual.failure(key)
            refused = isinstance(exc, StreamRefused)
            outcome.flag = Flag.UPSTREAM_PROTOCOL_ERROR if received and not refused else Flag.UPSTREAM_RESET
            outcome.error = str(exc)
            outcome.retryable = refused  # the upstream processed nothing: as safe as a connect failure
        except TimeoutError:
            self.accrual.cancel(key)
            outcome.flag = Flag.TIMEOUT
            outcome.error = f"timeouts.backendRequest ({rule.backend_timeout:g}s) expired"
            rec.timeout = "backend_request"
        except BaseException:
            self.accrual.cancel(key)
            await self._discard(outcome)
            raise
        finally:
            self.balancer.finished(key)
        if outcome.head is None:
            await self._discard(outcome)
            return outcome
        self.balancer.observe(key, self._clock() - started)
        if outcome.head.status >= 500:
            self.accrual.failure(key)
        else:
            self.accrual.success(key)
        return outcome

    async def _discard(self, outcome: _Outcome) -> None:
        """Give up on an attempt: stop sending its body, drop its connection."""
        upload, outcome.upload = outcome.upload, None
        if upload is not None:
            await _stop(upload)
        self._release(outcome, reuse=False)

    def _release(self, outcome: _Outcome, *, reuse: bool) -> None:
        up, outcome.up = outcome.up, None
        if up is None:
            return
        up.finish()
        if reuse and outcome.pool_key is not None:
            self.pool.give(outcome.pool_key, up.connection)
        else:
            up.abort()

    async def _respond(self, client: Downstream, rec: RequestRecord, outcome: _Outcome, rule: Rule) -> None:
        """Stream the response of a finished attempt to the client."""
        upload = outcome.upload
        response, up = outcome.head, outcome.up
        assert response is not None and up is not None
        rec.status = response.status
        grpc = response.header(b"grpc-status")
        if grpc is not None:
            rec.grpc_status = grpc.decode("latin-1").strip()
        ok = False
        try:
            await client.start_response(response)
            try:
                async with asyncio.timeout(rule.backend_timeout):
                    while True:
                        event = await up.next_event()
                        if isinstance(event, Body):
                            await client.send_body(event.data)
                        elif isinstance(event, EndOfMessage):
                            for name, value in event.trailers:
                                if name.lower() == b"grpc-status":
                                    rec.grpc_status = value.decode("latin-1").strip()
                            await client.end_response(event.trailers)
                            break
            except TimeoutError:
                rec.flag(Flag.TIMEOUT, f"timeouts.backendRequest ({rule.backend_timeout:g}s) expired")
                rec.timeout = "backend_request"
                client.cut()
                return
            except HttpError as exc:  # the upstream broke off mid-body
                rec.flag(Flag.UPSTREAM_RESET, str(exc))
                client.cut()
                return
            ok = True
        finally:
            if upload is not None:
                if not upload.done() and ok and client.body_done:
                    await asyncio.wait({upload}, timeout=1.0)  # writing its last bytes
                if not upload.done():
                    ok = False  # the server answered without reading the whole body
                elif upload.cancelled() or upload.exception() is not None:
                    ok = False
                outcome.upload = None
                await _stop(upload)
            self._release(outcome, reuse=ok and up.reusable)


def _grpc_unavailable(head: ResponseHead) -> bool:
    """A gRPC trailers-only answer (HEADERS with END_STREAM) of status 14, UNAVAILABLE: nothing of it
    has reached the client (the head waits in the outcome), so a route with ``retry`` retries it."""
    if head.framing is not Framing.NONE:
        return False
    status = head.header(b"grpc-status")
    return status is not None and status.strip() == b"14"


async def _stop(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        pass  # its failure was seen (or does not matter) where the exchange ended
