"""The HTTP/1.1 engine: one downstream connection in, requests routed, retried and timed, responses out.

``HttpProxy.serve_http1(downstream, context=...)`` runs one connection until the client is done:

1. parse one request at a time (pipelined ones wait their turn, ``http1.RequestParser``);
2. pick the rule (``RouteTable.select``: none → 404 ``NR``), a backend by weight (none with weight
   → 500 ``NR``), its endpoints (Service missing → 500; none ready or all resting → 503 ``UF``
   "no healthy upstream");
3. per attempt: an endpoint by P2C over peak-EWMA among those failure accrual allows, a pooled or
   new connection (``Connector``), the head, the body streamed up while the response is read
   (backpressure both ways through ``Stream.drain``);
4. retry per the rule's ``retry`` on connect failures and listed codes, never once a response byte
   went downstream and never a body past the 64 KiB replay buffer; each retry must be allowed by
   the route's budget (refused: the last answer as it is, ``UO``; attempts used up: ``URX``);
5. ``timeouts.request`` bounds the whole exchange including retries, ``timeouts.backendRequest``
   each attempt: 504 ``UT`` (or the connection cut when the response had already started);
6. record metrics and the access line; keep the downstream connection for the next request when
   both sides allow it.

A reused pooled connection that fails before any response byte is retried once on a fresh one at
no cost to the budget (the server had closed it while idle); nothing else is retried for free.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

from node_agent.proxy.balancer import PeakEwmaBalancer
from node_agent.proxy.errors import UpstreamError
from node_agent.proxy.model import Endpoint
from node_agent.proxy.pump import Stream, StreamClosedError

from waypoint import http1
from waypoint.accrual import AccrualSettings, FailureAccrual
from waypoint.budget import BudgetSettings, RetryBudgets
from waypoint.errors import HttpError
from waypoint.http1 import Body, EndOfMessage, Framing, RequestHead, ResponseHead, ResponseParser
from waypoint.metrics import Flag, RequestMetrics, RequestRecord
from waypoint.model import (
    UPSTREAM_HTTP1_PROTOCOLS,
    Backends,
    Clock,
    Connector,
    RequestContext,
    RouteSource,
    ServiceRef,
)
from waypoint.pool import ConnectionPool, PoolSettings
from waypoint.routes import Rule

log = logging.getLogger(__name__)

_DROP_UPSTREAM = frozenset({b"expect"})  # the waypoint answers 100-continue itself
_REASONS = {400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
            505: "HTTP Version Not Supported"}


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
    pool: PoolSettings = field(default_factory=PoolSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    accrual: AccrualSettings = field(default_factory=AccrualSettings)


class _Downstream:
    """The client's side: its parser and the state of the request in progress."""

    __slots__ = ("stream", "parser", "eof", "started", "continue_sent", "body_done")

    def __init__(self, stream: Stream, *, max_head_bytes: int) -> None:
        self.stream = stream
        self.parser = http1.RequestParser(max_head_bytes=max_head_bytes)
        self.eof = False
        self.started = False  # a response head went to the client for the current request
        self.continue_sent = False
        self.body_done = True  # the current request's body has been read to its end

    async def next_event(self) -> http1.RequestEvent | None:
        """The next request event, waiting for bytes; ``None`` once the client closed between requests."""
        while True:
            event = self.parser.next_event()  # raises HttpError in its turn
            if event is not None:
                return event  # type: ignore[return-value]
            if self.eof:
                return None
            try:
                data = await self.stream.read_some()
            except StreamClosedError:
                data = b""
            if data:
                self.parser.feed(data)
            else:
                self.eof = True
                self.parser.feed_eof()

    async def send(self, data: bytes) -> None:
        self.stream.write(data)
        await self.stream.drain()


class _Outcome:
    """How one attempt ended before its response was streamed."""

    __slots__ = ("head", "parser", "upstream", "upload", "key", "endpoint", "error", "flag", "retryable", "stale")

    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.parser: ResponseParser | None = None
        self.upstream: Stream | None = None
        self.upload: asyncio.Task[None] | None = None  # the request body still being sent
        self.key: tuple[str, int] | None = None
        self.endpoint: Endpoint | None = None
        self.error = ""
        self.flag = ""
        self.retryable = False
        self.stale = False  # a reused connection failed before any response byte


class _RequestBody:
    """The request body: streamed to the upstream, the first ``limit`` bytes kept for a replay."""

    __slots__ = ("down", "head", "limit", "kept", "size", "replayable", "trailers")

    def __init__(self, down: _Downstream, head: RequestHead, *, limit: int) -> None:
        self.down = down
        self.head = head
        self.limit = limit
        self.kept: list[bytes] = []
        self.size = 0
        self.replayable = True  # everything read so far is in ``kept``
        self.trailers: http1.Headers = ()
        down.body_done = head.framing is Framing.NONE
        if down.body_done:
            # llhttp ends a message without a body with its head, in the same feed: take the end now
            end = down.parser.next_event()
            if not isinstance(end, EndOfMessage):
                raise HttpError(f"BUG: a request without a body was followed by {end!r}", status=500)

    async def send(self, upstream: Stream) -> None:
        """Write the whole body upstream (what was kept first, then the rest as the client sends it).

        A client that breaks off aborts the upstream too, so the attempt waiting for its response
        wakes up and finds this task's ``HttpError``."""
        try:
            await self._send(upstream)
        except HttpError:
            upstream.abort()
            raise

    async def _send(self, upstream: Stream) -> None:
        chunked = self.head.framing is Framing.CHUNKED
        for data in self.kept:
            upstream.write(http1.chunk(data) if chunked else data)
            await upstream.drain()
        down = self.down
        while not down.body_done:
            if self.head.expect_continue and not down.continue_sent and not down.started:
                down.continue_sent = True
                await down.send(http1.CONTINUE)
            event = await down.next_event()
            if isinstance(event, Body):
                self.size += len(event.data)
                if self.replayable and self.size <= self.limit:
                    self.kept.append(event.data)
                else:
                    self.replayable = False
                    self.kept.clear()
                upstream.write(http1.chunk(event.data) if chunked else event.data)
                await upstream.drain()
            elif isinstance(event, EndOfMessage):
                down.body_done = True
                self.trailers = event.trailers
            else:
                raise HttpError("the client closed the connection in the middle of a request")
        if chunked:
            upstream.write(http1.last_chunk(self.trailers))
            await upstream.drain()


class HttpProxy:
    """The engine shared by every downstream connection of a waypoint (balancer, pools, budgets)."""

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

    # ------------------------------------------------------------------ one connection

    async def serve_http1(self, downstream: Stream, *, context: RequestContext) -> None:
        """Serve requests on ``downstream`` until the client closes, asks to, or errs; then close it.

        Cancelling aborts the downstream (and the upstream of the request in progress)."""
        down = _Downstream(downstream, max_head_bytes=self.settings.max_head_bytes)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.settings.keepalive_timeout):
                        event = await down.next_event()
                except TimeoutError:
                    break  # an idle keep-alive connection
                except HttpError as exc:
                    await self._refuse(down, context, exc)
                    break
                if event is None:
                    break
                if not isinstance(event, RequestHead):
                    raise HttpError("BUG: a request body event outside a request", status=500)
                if not await self._exchange(down, event, context):
                    break
            downstream.close()
        except StreamClosedError:
            downstream.abort()  # the client went away while we were writing
        except BaseException:  # cancelled (shutdown), or a bug the caller logs
            downstream.abort()
            raise

    async def _refuse(self, down: _Downstream, context: RequestContext, exc: HttpError) -> None:
        """A request the parser refused: answer its status, record it, close."""
        rec = self._record(context, started=self._clock())
        rec.status = exc.status
        rec.flag(Flag.DOWNSTREAM_PROTOCOL_ERROR, str(exc))
        try:
            await down.send(http1.simple_response(status=exc.status, reason=_REASONS.get(exc.status, "Error"),
                                                  body=f"{exc}\n", close=True))
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

    async def _exchange(self, down: _Downstream, head: RequestHead, context: RequestContext) -> bool:
        """Serve one request; whether the connection may carry the next one."""
        rec = self._record(context, started=self._clock())
        rec.method, rec.authority, rec.path = head.method, head.authority, head.path
        content_type = head.header(b"content-type") or b""
        if content_type.startswith(b"application/grpc"):
            rec.protocol = "grpc"
        down.started = False
        down.continue_sent = False
        body = _RequestBody(down, head, limit=self.settings.retry_buffer)
        keep = head.keep_alive
        try:
            keep = await self._route(down, head, context, rec, body) and keep
        except HttpError as exc:  # the client's body was malformed or cut short
            rec.flag(Flag.DOWNSTREAM_PROTOCOL_ERROR, str(exc))
            if not down.started:
                await self._answer(down, rec, exc.status, str(exc), close=True)
            keep = False
        except StreamClosedError as exc:
            rec.flag(Flag.DOWNSTREAM_DISCONNECT, str(exc))
            keep = False
            if not down.started:
                rec.status = 0
        finally:
            self._finish(rec)
        return keep and down.body_done and not down.stream.is_lost

    async def _answer(self, down: _Downstream, rec: RequestRecord, status: int, detail: str, *,
                      close: bool = False) -> None:
        """A response the waypoint makes itself."""
        rec.status = status
        down.started = True
        close = close or not down.body_done
        await down.send(http1.simple_response(status=status, reason=_REASONS.get(status, "Error"),
                                              body=f"{detail}\n", close=close))

    async def _route(self, down: _Downstream, head: RequestHead, context: RequestContext, rec: RequestRecord,
                     body: _RequestBody) -> bool:
        table = self._routes.route_table()
        rule = table.select(namespace=context.namespace, service=context.service, port=context.port, request=head)
        if rule is None:
            rec.flag(Flag.NO_ROUTE, f"no httproute rule of {context.namespace}/{context.service} port {context.port} "
                                    f"matches {head.method} {head.path}")
            await self._answer(down, rec, 404, "no route matches this request")
            return True
        rec.route = rule.route
        backend = rule.pick_backend(self._rng)
        if backend is None:
            rec.flag(Flag.NO_ROUTE, f"httproute {rule.route} rule {rule.index} has no backend with a weight above 0")
            await self._answer(down, rec, 500, "the route has no backend to send to")
            return True
        service = ServiceRef(namespace=backend.namespace, name=backend.name, port=backend.port)
        rec.destination_service = context.hostname(backend.name)
        endpoints = self._backends.endpoints(service)
        if endpoints is None:
            rec.flag(Flag.NO_ROUTE, f"backend service {service.namespace}/{service.name} port {service.port} "
                                    "does not exist")
            await self._answer(down, rec, 500, "the route's backend does not exist")
            return True
        protocol = self._backends.app_protocol(service)
        if protocol not in UPSTREAM_HTTP1_PROTOCOLS:
            rec.flag(Flag.UPSTREAM_PROTOCOL_ERROR, f"service {service.namespace}/{service.name} port {service.port} "
                                                   f"has appProtocol {protocol}; the waypoint speaks http/1.1 upstream")
            await self._answer(down, rec, 502, f"the backend speaks {protocol}, which the waypoint cannot send yet")
            return True
        budget_key = rule.route or f"{context.namespace}/{context.service}:{context.port}"
        try:
            async with asyncio.timeout(rule.request_timeout):
                return await self._attempts(down, head, rec, body, rule, service, list(endpoints), budget_key)
        except TimeoutError:
            rec.flag(Flag.TIMEOUT, f"timeouts.request ({rule.request_timeout:g}s) expired")
            rec.timeout = "request"
            if down.started:
                down.stream.abort()  # the response had begun: the client sees it cut
                rec.flag(Flag.DOWNSTREAM_DISCONNECT)
                return False
            await self._answer(down, rec, 504, "upstream request timeout", close=not down.body_done)
            return True

    async def _attempts(self, down: _Downstream, head: RequestHead, rec: RequestRecord, body: _RequestBody,
                        rule: Rule, service: ServiceRef, endpoints: list[Endpoint], budget_key: str) -> bool:
        retry = rule.retry
        allowed = retry.attempts if retry is not None else 0
        budget = self.budgets.for_route(budget_key)
        budget.deposit()
        by_key = {ep.key: ep for ep in endpoints}
        tried: list[tuple[str, int]] = []
        stale_retried = False
        failovers = 0
        while True:
            outcome = await self._attempt(down, head, rec, body, rule, service, by_key, tried)
            if outcome.stale and not stale_retried and body.replayable:
                stale_retried = True  # the server closed an idle connection as we sent: free retry
                continue
            if outcome.head is not None:
                retry_it = retry is not None and outcome.head.status in retry.codes
            else:
                retry_it = outcome.retryable
            if not retry_it:
                break
            if retry is None:  # a connect failure: nothing was sent, another endpoint may answer
                if failovers >= self.settings.connect_failovers:
                    break
                failovers += 1
                continue
            if not body.replayable:
                rec.detail = rec.detail or f"request body over {self.settings.retry_buffer} bytes is not retried"
                break
            if rec.retries >= allowed:
                if allowed:
                    rec.flag(Flag.RETRIES_EXHAUSTED)
                break
            if not budget.withdraw():
                rec.flag(Flag.OVERFLOW, "retry budget exhausted")
                break
            await self._discard(outcome)
            rec.retries += 1
            await asyncio.sleep(retry.backoff * 2 ** (rec.retries - 1))
        if outcome.head is not None:
            return await self._respond(down, head, rec, outcome, rule)
        rec.flag(outcome.flag, outcome.error)
        if outcome.key is None:
            await self._answer(down, rec, 503, "no healthy upstream")
        elif outcome.flag == Flag.TIMEOUT:
            await self._answer(down, rec, 504, "upstream request timeout")
        elif outcome.flag == Flag.UPSTREAM_PROTOCOL_ERROR:
            await self._answer(down, rec, 502, f"the upstream did not answer http/1.1: {outcome.error}")
        else:
            await self._answer(down, rec, 503, f"upstream connect error or disconnect/reset before headers: "
                                               f"{outcome.error}")
        return True

    async def _attempt(self, down: _Downstream, head: RequestHead, rec: RequestRecord, body: _RequestBody,
                       rule: Rule, service: ServiceRef, by_key: dict[tuple[str, int], Endpoint],
                       tried: list[tuple[str, int]]) -> _Outcome:
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
        rec.upstream = "%s:%d" % key
        rec.destination_workload = endpoint.workload.workload_name
        rec.destination_namespace = endpoint.workload.namespace
        self.accrual.start(key)
        self.balancer.started(key)
        started = self._clock()
        reused = False
        received = 0
        try:
            async with asyncio.timeout(rule.backend_timeout):
                upstream = self.pool.take(key)
                reused = upstream is not None
                if upstream is None:
                    try:
                        async with asyncio.timeout(self.settings.connect_timeout):
                            upstream = await self._connector.connect(endpoint, service=service)
                    except (UpstreamError, TimeoutError, OSError) as exc:
                        self.balancer.failed(key, elapsed=self._clock() - started)
                        self.accrual.failure(key)
                        outcome.flag = getattr(exc, "flag", Flag.UPSTREAM_FAILURE)
                        outcome.error = str(exc) or "connect timed out"
                        outcome.retryable = getattr(exc, "retryable", True)
                        return outcome
                outcome.upstream = upstream
                headers = http1.end_to_end(head.headers, drop=_DROP_UPSTREAM)
                if not head.authority:  # an HTTP/1.0 client: HTTP/1.1 upstream needs a Host
                    port = "" if service.port == 80 else f":{service.port}"
                    headers.insert(0, (b"host", f"{rec.destination_service}{port}".encode()))
                upstream.write(http1.encode_request_head(method=head.method, target=head.origin_target,
                                                         headers=headers, chunked=head.framing is Framing.CHUNKED))
                if head.framing is not Framing.NONE:
                    outcome.upload = asyncio.get_running_loop().create_task(
                        body.send(upstream), name=f"ambit-waypoint-upload-{id(upstream):x}")
                parser = outcome.parser = ResponseParser(request_method=head.method,
                                                         max_head_bytes=self.settings.max_head_bytes)
                while outcome.head is None:
                    event = parser.next_event()
                    if isinstance(event, ResponseHead):
                        outcome.head = event
                        break
                    data = await _read(upstream)
                    received += len(data)
                    if data:
                        parser.feed(data)
                        continue
                    upload = outcome.upload
                    if upload is not None and upload.done() and not upload.cancelled():
                        if isinstance(upload.exception(), HttpError):
                            raise upload.exception()  # type: ignore[misc]  # the client's body broke off
                    parser.feed_eof()
        except HttpError as exc:
            if exc.status != 502:  # the client's, answered by _exchange
                self.accrual.cancel(key)
                await self._discard(outcome)
                raise
            outcome.stale = reused and not received
            if outcome.stale:
                self.accrual.cancel(key)
            else:
                self.balancer.failed(key, elapsed=self._clock() - started)
                self.accrual.failure(key)
            outcome.flag = Flag.UPSTREAM_PROTOCOL_ERROR if received else Flag.UPSTREAM_RESET
            outcome.error = str(exc)
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
        upstream = outcome.upstream
        outcome.upstream = None
        if upstream is None:
            return
        if reuse and outcome.key is not None:
            self.pool.give(outcome.key, upstream)
        else:
            upstream.abort()

    async def _respond(self, down: _Downstream, head: RequestHead, rec: RequestRecord, outcome: _Outcome,
                       rule: Rule) -> bool:
        """Stream the response of a finished attempt down; whether the client connection may stay."""
        upload = outcome.upload
        response, parser, upstream = outcome.head, outcome.parser, outcome.upstream
        assert response is not None and parser is not None and upstream is not None
        rec.status = response.status
        grpc = response.header(b"grpc-status")
        if grpc is not None:
            rec.grpc_status = grpc.decode("latin-1").strip()
        framing = response.framing
        old_client = head.version == "1.0"
        chunked = framing in (Framing.CHUNKED, Framing.CLOSE) and not old_client
        delimit_by_close = framing in (Framing.CHUNKED, Framing.CLOSE) and old_client
        close = not head.keep_alive or delimit_by_close
        headers = http1.end_to_end(response.headers)
        if old_client and head.keep_alive and not close:
            headers.append((b"connection", b"keep-alive"))
        ok = False
        try:
            down.started = True
            down.stream.write(http1.encode_response_head(status=response.status, reason=response.reason,
                                                         headers=headers, chunked=chunked, close=close))
            await down.stream.drain()
            try:
                async with asyncio.timeout(rule.backend_timeout):
                    while True:
                        event = parser.next_event()
                        if event is None:
                            data = await _read(upstream)
                            if data:
                                parser.feed(data)
                            else:
                                parser.feed_eof()
                            continue
                        if isinstance(event, Body):
                            down.stream.write(http1.chunk(event.data) if chunked else event.data)
                            await down.stream.drain()
                        elif isinstance(event, EndOfMessage):
                            if event.trailers:
                                status = dict((n.lower(), v) for n, v in event.trailers).get(b"grpc-status")
                                if status is not None:
                                    rec.grpc_status = status.decode("latin-1").strip()
                            if chunked:
                                down.stream.write(http1.last_chunk(event.trailers))
                                await down.stream.drain()
                            break
            except TimeoutError:
                rec.flag(Flag.TIMEOUT, f"timeouts.backendRequest ({rule.backend_timeout:g}s) expired")
                rec.timeout = "backend_request"
                down.stream.abort()
                return False
            except HttpError as exc:  # the upstream broke off mid-body
                rec.flag(Flag.UPSTREAM_RESET, str(exc))
                down.stream.abort()
                return False
            ok = True
        finally:
            if upload is not None:
                if not upload.done() and ok and down.body_done:
                    await asyncio.wait({upload}, timeout=1.0)  # writing its last bytes
                if not upload.done():
                    ok = False  # the server answered without reading the whole body
                elif upload.cancelled() or upload.exception() is not None:
                    ok = False
                outcome.upload = None
                await _stop(upload)
            self._release(outcome, reuse=ok and parser.reusable)
        return not close and down.body_done


async def _read(upstream: Stream) -> bytes:
    """Bytes from the upstream; ``b""`` at EOF or when it was lost."""
    try:
        return await upstream.read_some()
    except StreamClosedError:
        return b""


async def _stop(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
    except Exception:
        pass  # its failure was seen (or does not matter) where the exchange ended
