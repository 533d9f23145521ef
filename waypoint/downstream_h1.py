"""The client's side of HTTP/1.1: one connection's parser, and each request's way back to the client.

- ``Http1Connection`` reads requests from the downstream ``Stream`` one event at a time (the
  parser never runs ahead by more than what one read brought).
- ``Http1Request`` is what the engine talks to for one request: the body as events, ``100
  Continue`` when the client waits for it, and the response written with the framing the client
  understands (chunked for HTTP/1.1, delimited by closing for HTTP/1.0 when the length is unknown).
"""
from __future__ import annotations

from node_agent.proxy.pump import Stream, StreamClosedError

from waypoint import http1
from waypoint.errors import HttpError
from waypoint.http1 import Body, EndOfMessage, Framing, RequestHead, ResponseHead

REASONS = {400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}


class Http1Connection:
    __slots__ = ("stream", "parser", "eof")

    def __init__(self, stream: Stream, *, max_head_bytes: int) -> None:
        self.stream = stream
        self.parser = http1.RequestParser(max_head_bytes=max_head_bytes)
        self.eof = False

    async def next_event(self) -> http1.RequestEvent | None:
        """The next request event, waiting for bytes; ``None`` once the client closed between requests.
        Raises the parser's ``HttpError`` in its turn."""
        while True:
            event = self.parser.next_event()
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

    async def refuse(self, exc: HttpError) -> None:
        """Answer a request the parser refused; the connection closes after it."""
        await self.send(http1.simple_response(status=exc.status, reason=REASONS.get(exc.status, "Error"),
                                              body=f"{exc}\n", close=True))


class Http1Request:
    """One request's client side (the engine's ``Downstream``)."""

    __slots__ = ("conn", "head", "started", "body_done", "continue_sent", "close", "chunked")

    def __init__(self, conn: Http1Connection, head: RequestHead) -> None:
        self.conn = conn
        self.head = head
        self.started = False  # a response head went to the client
        self.body_done = head.framing is Framing.NONE
        self.continue_sent = False
        self.close = not head.keep_alive
        self.chunked = False
        if self.body_done:
            # llhttp ends a message without a body with its head, in the same feed: take the end now
            end = conn.parser.next_event()
            if not isinstance(end, EndOfMessage):
                raise HttpError(f"BUG: a request without a body was followed by {end!r}", status=500)

    async def next_body_event(self) -> Body | EndOfMessage:
        event = await self.conn.next_event()
        if isinstance(event, Body):
            return event
        if isinstance(event, EndOfMessage):
            self.body_done = True
            return event
        raise HttpError("the client closed the connection in the middle of a request")

    async def ready_for_body(self) -> None:
        """The body is about to be read: a client that asked for ``100 Continue`` gets it now."""
        if self.head.expect_continue and not self.continue_sent and not self.started:
            self.continue_sent = True
            await self.conn.send(http1.CONTINUE)

    async def answer(self, status: int, detail: str, *, close: bool = False) -> None:
        """A response the waypoint makes itself."""
        self.started = True
        self.close = self.close or close or not self.body_done
        await self.conn.send(http1.simple_response(status=status, reason=REASONS.get(status, "Error"),
                                                   body=f"{detail}\n", close=self.close))

    async def start_response(self, response: ResponseHead) -> None:
        old_client = self.head.version == "1.0"
        unknown_length = response.framing in (Framing.CHUNKED, Framing.CLOSE)
        self.chunked = unknown_length and not old_client
        self.close = self.close or (unknown_length and old_client)
        headers = [(n, v) for n, v in http1.end_to_end(response.headers)]
        if self.chunked:
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        if old_client and not self.close:
            headers.append((b"connection", b"keep-alive"))
        self.started = True
        await self.conn.send(http1.encode_response_head(status=response.status, reason=response.reason,
                                                        headers=headers, chunked=self.chunked, close=self.close))

    async def send_body(self, data: bytes) -> None:
        await self.conn.send(http1.chunk(data) if self.chunked else data)

    async def end_response(self, trailers: http1.Headers) -> None:
        if self.chunked:
            await self.conn.send(http1.last_chunk(trailers))

    def cut(self) -> None:
        """The response cannot be completed: the client sees the connection end."""
        self.close = True
        self.conn.stream.abort()

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry the next request."""
        return not self.close and self.body_done and not self.conn.stream.is_lost
