"""One attempt's upstream side: a request sent and its response read, over HTTP/1.1 or h2c.

- ``Http1Upstream`` writes the request head and body (chunked when its length is unknown) on a
  pooled or new ``Stream`` and reads the response with ``http1.ResponseParser``.
- ``H2Connection`` is an h2c connection (prior knowledge) to one endpoint, for Service ports whose
  ``appProtocol`` is ``kubernetes.io/h2c`` or ``grpc``; it carries one request at a time, so it is
  pooled exactly like an HTTP/1.1 connection. ``Http2Upstream`` is one request on it: a reader
  task feeds h2 and queues the response's events; the body waits for flow-control window.
- Both yield ``ResponseHead``, ``Body``, ``EndOfMessage`` from ``next_event`` and raise
  ``HttpError`` (status 502) when the upstream breaks the protocol or closes early;
  ``StreamRefused`` when an h2c upstream refused the stream (``REFUSED_STREAM``, or a GOAWAY below
  its id) before answering: it processed nothing.
"""
from __future__ import annotations

import asyncio
import http
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from node_agent.proxy.pump import Stream, StreamClosedError

from waypoint import http1
from waypoint.errors import HttpError, StreamRefused
from waypoint.http1 import Body, EndOfMessage, Framing, RequestHead, ResponseHead

H2_PROTOCOLS = frozenset({"kubernetes.io/h2c", "grpc", "h2c"})
"""``appProtocol`` values for which the waypoint speaks h2c upstream."""

_H2_FORBIDDEN = http1.HOP_BY_HOP | {b"host"}  # connection-specific in HTTP/2 (RFC 9113 8.2.2); Host is :authority


def _host_first(head: RequestHead, headers: list[tuple[bytes, bytes]], authority: str) -> list[tuple[bytes, bytes]]:
    if not any(n.lower() == b"host" for n, _ in headers):
        headers.insert(0, (b"host", authority.encode("latin-1")))
    return headers


async def _read(stream: Stream) -> bytes:
    try:
        return await stream.read_some()
    except StreamClosedError:
        return b""


class Http1Upstream:
    """One request and its response on an HTTP/1.1 connection."""

    __slots__ = ("stream", "parser", "chunked", "received")

    def __init__(self, stream: Stream, *, method: str, max_head_bytes: int) -> None:
        self.stream = stream
        self.parser = http1.ResponseParser(request_method=method, max_head_bytes=max_head_bytes)
        self.chunked = False
        self.received = 0  # response bytes read

    @property
    def connection(self) -> Stream:
        """What goes back to the pool."""
        return self.stream

    def send_head(self, head: RequestHead, headers: list[tuple[bytes, bytes]], *, authority: str) -> None:
        self.chunked = head.framing is Framing.CHUNKED
        headers = _host_first(head, headers, authority)
        self.stream.write(http1.encode_request_head(method=head.method, target=head.origin_target, headers=headers,
                                                    chunked=self.chunked))

    async def send_body(self, data: bytes) -> None:
        self.stream.write(http1.chunk(data) if self.chunked else data)
        await self.stream.drain()

    async def end_body(self, trailers: http1.Headers) -> None:
        if self.chunked:
            self.stream.write(http1.last_chunk(trailers))
            await self.stream.drain()

    async def next_event(self) -> http1.ResponseEvent:
        while True:
            event = self.parser.next_event()
            if event is not None:
                return event  # type: ignore[return-value]
            data = await _read(self.stream)
            self.received += len(data)
            if data:
                self.parser.feed(data)
            else:
                self.parser.feed_eof()

    @property
    def reusable(self) -> bool:
        return self.parser.reusable

    def abort(self) -> None:
        self.stream.abort()

    def finish(self) -> None:
        """The exchange is over (nothing to stop for HTTP/1.1)."""


class H2Connection:
    """An h2c client connection to one endpoint (see the module docstring)."""

    __slots__ = ("stream", "h2", "broken", "_window")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        self.broken = False  # GOAWAY or a protocol error: never reused
        self._window = asyncio.Event()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.stream.write(data)

    def window_changed(self) -> None:
        event, self._window = self._window, asyncio.Event()
        event.set()

    async def wait_window(self) -> None:
        await self._window.wait()

    # what the pool asks
    def clean(self) -> bool:
        """Usable for the next request: alive, no GOAWAY; frames that came while idle (settings,
        pings, window updates) are handled here."""
        stream = self.stream
        if self.broken or stream.is_lost or stream.at_eof:
            return False
        if stream.buffered:
            try:
                events = self.h2.receive_data(stream.take_buffered())
            except h2.exceptions.ProtocolError:
                return False
            for event in events:
                if isinstance(event, h2.events.ConnectionTerminated):
                    self.broken = True
            self.flush()
        return not self.broken and self.h2.open_outbound_streams == 0

    def close(self) -> None:
        self.stream.close()

    def abort(self) -> None:
        self.stream.abort()


class Http2Upstream:
    """One request on an ``H2Connection``, with its reader task."""

    __slots__ = ("conn", "stream_id", "received", "started", "_events", "_ready", "_reader", "_trailers", "_ended",
                 "_method", "_acked")

    def __init__(self, conn: H2Connection, *, method: str) -> None:
        self.conn = conn
        self.stream_id = conn.h2.get_next_available_stream_id()
        self.received = 0
        self.started = False  # the response's HEADERS came
        self._events: deque[object] = deque()
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._trailers: http1.Headers = ()
        self._ended = False
        self._method = method

    @property
    def connection(self) -> H2Connection:
        return self.conn

    def send_head(self, head: RequestHead, headers: list[tuple[bytes, bytes]], *, authority: str) -> None:
        fields = [(b":method", head.method.encode()), (b":scheme", b"http"),
                  (b":authority", authority.encode("latin-1")), (b":path", head.origin_target.encode("latin-1"))]
        fields += [(n.lower(), v) for n, v in headers if n.lower() not in _H2_FORBIDDEN]
        te = head.header(b"te")
        if te is not None and b"trailers" in te.lower():
            fields.append((b"te", b"trailers"))  # gRPC asks for it; the one TE value HTTP/2 allows
        self.conn.h2.send_headers(self.stream_id, fields, end_stream=head.framing is Framing.NONE)
        self.conn.flush()
        self._reader = asyncio.get_running_loop().create_task(self._read(),
                                                              name=f"ambit-waypoint-h2-upstream-{self.stream_id}")

    async def send_body(self, data: bytes) -> None:
        conn = self.conn
        view = memoryview(data)
        while view:
            if conn.broken or conn.stream.is_lost:
                raise StreamClosedError("the upstream h2 connection is gone")
            try:
                window = min(conn.h2.local_flow_control_window(self.stream_id), conn.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError as exc:
                raise StreamClosedError("the upstream closed the stream") from exc
            if window <= 0:
                await conn.wait_window()
                continue
            conn.h2.send_data(self.stream_id, bytes(view[:window]))
            conn.flush()
            view = view[window:]
            await conn.stream.drain()

    async def end_body(self, trailers: http1.Headers) -> None:
        conn = self.conn
        try:
            if trailers:
                conn.h2.send_headers(self.stream_id, [(n.lower(), v) for n, v in trailers], end_stream=True)
            else:
                conn.h2.end_stream(self.stream_id)
        except h2.exceptions.StreamClosedError:
            return  # the server answered and closed its side already
        conn.flush()
        await conn.stream.drain()

    async def _read(self) -> None:
        conn = self.conn
        try:
            while not self._ended:
                data = await _read(conn.stream)
                if not data:
                    self._fail("upstream closed the h2 connection before the response was complete")
                    return
                self.received += len(data)
                try:
                    events = conn.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._fail(f"upstream broke the http/2 protocol: {exc}")
                    return
                for event in events:
                    self._dispatch(event)
                conn.flush()
        finally:
            self._ready.set()

    def _fail(self, message: str, *, refused: bool = False) -> None:
        self.conn.broken = True
        self._events.append(StreamRefused(message) if refused else HttpError(message, status=502))
        self._ended = True
        self._ready.set()

    def _dispatch(self, event: object) -> None:
        conn = self.conn
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            conn.window_changed()
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            conn.broken = True
            conn.window_changed()
            if not self._ended and (event.last_stream_id is None or event.last_stream_id < self.stream_id):
                # streams above last_stream_id were not processed (RFC 9113 6.8): as safe to retry as a refusal
                self._fail(f"upstream sent goaway ({event.error_code!s}) before answering", refused=True)
            return
        if getattr(event, "stream_id", None) != self.stream_id:
            return
        if isinstance(event, h2.events.ResponseReceived):
            self.started = True
            self._events.append(_response_head(event.headers, method=self._method,
                                               ended=event.stream_ended is not None))
        elif isinstance(event, h2.events.DataReceived):
            self._events.append((Body(event.data), event.flow_controlled_length))
        elif isinstance(event, h2.events.TrailersReceived):
            self._trailers = tuple((n, v) for n, v in event.headers if not n.startswith(b":"))
        elif isinstance(event, h2.events.StreamEnded):
            self._events.append(EndOfMessage(self._trailers))
            self._ended = True
        elif isinstance(event, h2.events.StreamReset):
            code = event.error_code
            if code == h2.errors.ErrorCodes.REFUSED_STREAM and not self.started:
                self._fail("upstream refused the stream (refused_stream)", refused=True)
            else:
                self._fail(f"upstream reset the stream ({h2.errors.ErrorCodes(code).name.lower()})"
                           if code in h2.errors.ErrorCodes._value2member_map_ else
                           f"upstream reset the stream (code {code})")
        else:
            return
        self._ready.set()

    async def next_event(self) -> http1.ResponseEvent:
        while not self._events:
            self._ready.clear()
            if self._reader is not None and self._reader.done() and not self._events:
                raise HttpError("upstream h2 stream ended without a response", status=502)
            await self._ready.wait()
        event = self._events.popleft()
        if isinstance(event, HttpError):
            raise event
        if isinstance(event, tuple):
            body, length = event
            if length:
                try:
                    self.conn.h2.acknowledge_received_data(length, self.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
                self.conn.flush()
            return body
        return event  # type: ignore[return-value]

    @property
    def reusable(self) -> bool:
        return self._ended and not self.conn.broken and not self._events

    def abort(self) -> None:
        self.conn.broken = True
        self.conn.abort()
        self.finish()

    def finish(self) -> None:
        """Stop the reader (the exchange is over or abandoned)."""
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()


def _response_head(headers: list[tuple[bytes, bytes]], *, method: str, ended: bool) -> ResponseHead:
    status = 0
    fields: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":"):
            fields.append((name, value))
            if name == b"content-length":
                length = int(value)
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    if ended or method == "HEAD" or status in (204, 304):
        framing = Framing.NONE
    elif length is not None:
        framing = Framing.LENGTH
    else:
        framing = Framing.CHUNKED  # a length the HTTP/1.1 side does not know: chunk it
    return ResponseHead(status=status, reason=reason, version="2", headers=tuple(fields), keep_alive=True,
                        framing=framing, content_length=length)
