"""The client's side of HTTP/2 with prior knowledge (h2c), on the ``h2`` state machine.

- ``Http2Server.run`` reads the connection (preface, SETTINGS, frames), starts one named task per
  request stream (at most ``max_streams`` at once, advertised in SETTINGS) and writes what h2
  queues. It ends when the client closes (its streams are cancelled), sends GOAWAY (they finish
  first), idles ``idle_timeout`` with no stream open, or breaks the protocol (GOAWAY sent).
- ``Http2Request`` is one stream as the engine's ``Downstream``: request body events, acknowledged
  (window reopened) only once the engine took them, so a slow upstream slows the client; response
  DATA sent as the stream's and the connection's windows allow; trailers (gRPC's ``grpc-status``)
  as a final HEADERS frame; ``cut`` resets the stream.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from node_agent.proxy.pump import Stream, StreamClosedError

from waypoint import http1
from waypoint.errors import HttpError
from waypoint.http1 import Body, EndOfMessage, Framing, RequestHead, ResponseHead

log = logging.getLogger(__name__)

_FORBIDDEN = http1.HOP_BY_HOP  # connection-specific fields never go into HTTP/2 (RFC 9113 8.2.2)


class Http2Server:
    __slots__ = ("stream", "h2", "requests", "tasks", "_window", "_max_streams")

    def __init__(self, stream: Stream, *, max_streams: int = 100, max_head_bytes: int = http1.MAX_HEAD_BYTES) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_head_bytes,
        })
        self.requests: dict[int, Http2Request] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._window = asyncio.Event()
        self._max_streams = max_streams

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.stream.write(data)

    async def drain(self) -> None:
        self.flush()
        await self.stream.drain()

    def window_changed(self) -> None:
        event, self._window = self._window, asyncio.Event()
        event.set()

    async def wait_window(self) -> None:
        await self._window.wait()

    async def run(self, handle: Callable[[Http2Request], Awaitable[None]], *, idle_timeout: float) -> None:
        """Serve the connection; ``handle`` runs once per request stream (in its own task)."""
        self.h2.initiate_connection()
        try:
            await self.drain()
            goaway = False
            while True:
                try:
                    # an idle connection (no stream open) waits ``idle_timeout`` for its next request
                    async with asyncio.timeout(None if self.requests else idle_timeout):
                        data = await self.stream.read_some()
                except (StreamClosedError, TimeoutError):
                    data = b""
                if not data:
                    break  # the client is gone: its streams are cancelled below
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    log.debug("h2 client broke the protocol: %s", exc)
                    self.flush()  # h2 queued the GOAWAY
                    break
                stop = False
                for event in events:
                    stop = self._dispatch(event, handle) or stop
                await self.drain()
                if stop:
                    goaway = True
                    break
            if goaway and self.tasks:  # the client said goodbye: what it asked for still gets answered
                await asyncio.wait(set(self.tasks))
            self.stream.close()
        except BaseException:
            self.stream.abort()
            raise
        finally:
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=5)

    def _dispatch(self, event: object, handle: Callable[[Http2Request], Awaitable[None]]) -> bool:
        """Handle one h2 event; whether the connection is ending."""
        if isinstance(event, h2.events.RequestReceived):
            self._start(event, handle)
        elif isinstance(event, h2.events.DataReceived):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.queue.put_nowait((Body(event.data), event.flow_controlled_length))
            elif event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.trailers = tuple((n, v) for n, v in event.headers if not n.startswith(b":"))
        elif isinstance(event, h2.events.StreamEnded):
            request = self.requests.get(event.stream_id)
            if request is not None:
                request.queue.put_nowait((EndOfMessage(request.trailers), 0))
        elif isinstance(event, h2.events.StreamReset):
            request = self.requests.pop(event.stream_id, None)
            if request is not None:
                request.reset = True
                request.queue.put_nowait((StreamClosedError("the client reset the stream"), 0))
                if request.task is not None:
                    request.task.cancel()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_changed()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.window_changed()
            return True
        return False

    def _start(self, event: h2.events.RequestReceived, handle: Callable[[Http2Request], Awaitable[None]]) -> None:
        sid = event.stream_id
        try:
            head = _request_head(event.headers, ended=event.stream_ended is not None)
        except HttpError as exc:
            self.h2.reset_stream(sid, error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
            log.debug("h2 stream %d refused: %s", sid, exc)
            return
        request = Http2Request(self, sid, head)
        self.requests[sid] = request
        task = asyncio.get_running_loop().create_task(self._serve(request, handle), name=f"ambit-waypoint-h2-{sid}")
        request.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, request: Http2Request, handle: Callable[[Http2Request], Awaitable[None]]) -> None:
        try:
            await handle(request)
        except asyncio.CancelledError:
            if not request.reset:
                raise
        except StreamClosedError:
            pass  # the connection is gone
        finally:
            self.requests.pop(request.stream_id, None)
            if not request.closed and not request.reset and not self.stream.is_lost:
                request.cut()


def _request_head(headers: list[tuple[bytes, bytes]], *, ended: bool) -> RequestHead:
    pseudo: dict[bytes, bytes] = {}
    fields: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name.startswith(b":"):
            pseudo[name] = value
        else:
            fields.append((name, value))
    method = pseudo.get(b":method", b"").decode("ascii", "replace")
    if method == "CONNECT":
        raise HttpError("connect is not supported", status=501)
    target = pseudo.get(b":path", b"").decode("latin-1")
    if not target.startswith("/") and not (target == "*" and method == "OPTIONS"):
        raise HttpError(f"invalid :path {target!r}")
    authority = pseudo.get(b":authority", b"").decode("latin-1")
    if not authority:
        authority = next((v.decode("latin-1") for n, v in fields if n == b"host"), "")
    path, _, query = target.partition("?")
    length = next((int(v) for n, v in fields if n == b"content-length" and v.strip().isdigit()), None)
    framing = Framing.NONE if ended else (Framing.LENGTH if length is not None else Framing.CHUNKED)
    return RequestHead(method=method, target=target, path=path, query=query, authority=authority, version="2",
                       headers=tuple(fields), keep_alive=True, framing=framing, content_length=length,
                       expect_continue=False)


class Http2Request:
    """One request stream (the engine's ``Downstream``)."""

    __slots__ = ("server", "stream_id", "head", "started", "body_done", "queue", "trailers", "reset", "closed", "task")

    def __init__(self, server: Http2Server, stream_id: int, head: RequestHead) -> None:
        self.server = server
        self.stream_id = stream_id
        self.head = head
        self.started = False
        self.body_done = False
        self.queue: asyncio.Queue[tuple[object, int]] = asyncio.Queue()
        self.trailers: http1.Headers = ()
        self.reset = False
        self.closed = False  # our side of the stream ended
        self.task: asyncio.Task[None] | None = None
        if head.framing is Framing.NONE:
            self.body_done = True  # END_STREAM came with the headers

    async def next_body_event(self) -> Body | EndOfMessage:
        item, length = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        if length:
            try:
                self.server.h2.acknowledge_received_data(length, self.stream_id)
            except h2.exceptions.StreamClosedError:
                pass
            self.server.flush()
        if isinstance(item, EndOfMessage):
            self.body_done = True
        return item  # type: ignore[return-value]

    async def ready_for_body(self) -> None:
        """HTTP/2 has no ``100 Continue`` handshake to run here."""

    def _headers(self, fields: list[tuple[bytes, bytes]], *, end: bool) -> None:
        try:
            self.server.h2.send_headers(self.stream_id, fields, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            raise StreamClosedError(f"the client's stream {self.stream_id} is closed") from exc
        if end:
            self.closed = True

    async def answer(self, status: int, detail: str, *, close: bool = False) -> None:
        data = f"{detail}\n".encode()
        self.started = True
        self._headers([(b":status", str(status).encode()), (b"content-type", b"text/plain"),
                       (b"content-length", str(len(data)).encode())], end=False)
        await self._data(data, end=True)

    async def start_response(self, response: ResponseHead) -> None:
        fields = [(b":status", str(response.status).encode())]
        fields += [(n.lower(), v.strip()) for n, v in http1.end_to_end(response.headers)
                   if n.lower() not in _FORBIDDEN]
        self.started = True
        # a response without a body (gRPC's trailers-only answer, 204, HEAD) ends with its HEADERS
        self._headers(fields, end=response.framing is Framing.NONE)
        await self.server.drain()

    async def send_body(self, data: bytes) -> None:
        await self._data(data, end=False)

    async def end_response(self, trailers: http1.Headers) -> None:
        if self.closed:
            return
        if trailers:
            self._headers([(n.lower(), v.strip()) for n, v in trailers], end=True)
            await self.server.drain()
        else:
            await self._data(b"", end=True)

    async def _data(self, data: bytes, *, end: bool) -> None:
        server = self.server
        conn = server.h2
        view = memoryview(data)
        while True:
            if self.reset or server.stream.is_lost:
                raise StreamClosedError(f"the client's stream {self.stream_id} is closed")
            try:
                window = min(conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError as exc:
                raise StreamClosedError(f"the client's stream {self.stream_id} is closed") from exc
            if view and window <= 0:
                await server.wait_window()
                continue
            piece = view[:window]
            view = view[len(piece):]
            last = end and not view
            try:
                conn.send_data(self.stream_id, bytes(piece), end_stream=last)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
                raise StreamClosedError(f"the client's stream {self.stream_id} is closed") from exc
            await server.drain()
            if last:
                self.closed = True
            if not view:
                return

    def cut(self) -> None:
        """Reset the stream: the client sees this request fail, the connection's other streams go on."""
        self.closed = True
        try:
            self.server.h2.reset_stream(self.stream_id, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
        except h2.exceptions.StreamClosedError:
            return
        self.server.flush()

    @property
    def keep_alive(self) -> bool:
        return True
