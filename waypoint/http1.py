"""HTTP/1.x framing on ``httptools`` (llhttp): pure, fed arbitrary chunks, no I/O.

- ``RequestParser`` (server side) turns a downstream byte stream into events, strictly in order:
  ``RequestHead``, ``Body``*, ``EndOfMessage`` per request; pipelined requests queue behind the one
  in progress and are never interleaved. ``feed`` never raises: a malformed request becomes an
  ``HttpError`` that ``next_event`` raises when the requests before it have been taken, with the
  status to answer (400; 431 for a head over ``max_head_bytes``; 501 for CONNECT; 505).
- ``ResponseParser`` (client side) reads one response to one request: informational (1xx)
  responses are skipped, a HEAD/204/304 response has no body, a body without length ends at EOF.
- Serializers write heads with hop-by-hop fields removed (RFC 9110 7.6.1) and the framing the
  caller chose; ``chunk`` and ``last_chunk`` frame chunked bodies.

``Upgrade`` requests are served as ordinary requests (the header is hop-by-hop and not forwarded),
so a client asking for ``h2c`` or a WebSocket gets the service's plain HTTP/1.1 answer.
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import httptools

from waypoint.errors import HttpError

Headers = tuple[tuple[bytes, bytes], ...]

MAX_HEAD_BYTES = 64 * 1024
"""Request line (or status line) plus header fields; more is answered 431 (Envoy's and nginx's order)."""
MAX_HEADERS = 100
"""Header fields per message (Envoy's default)."""

HOP_BY_HOP = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"})
"""RFC 9110 7.6.1; fields named in ``Connection`` are hop-by-hop too (``end_to_end``)."""


class Framing(enum.Enum):
    """How a message's body is delimited on the wire."""

    NONE = "none"  # no body
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"
    CLOSE = "close"  # until the connection closes (responses only)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str  # as received (origin-form, absolute-form or "*")
    path: str  # the target's path, as received (percent-encoded); "*" for OPTIONS *
    query: str  # after "?", without it; "" when none
    authority: str  # Host (or the absolute-form target's host[:port]); "" for an HTTP/1.0 request without it
    version: str  # "1.1" or "1.0"
    headers: Headers
    keep_alive: bool  # the client wants the connection kept after this request
    framing: Framing
    content_length: int | None
    expect_continue: bool  # "Expect: 100-continue": the client waits for 100 before sending the body

    @property
    def origin_target(self) -> str:
        """The target to send upstream (origin-form)."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def header(self, name: bytes) -> bytes | None:
        """The field's values joined with ", " (RFC 9110 5.3); ``name`` lowercase."""
        values = [v for n, v in self.headers if n.lower() == name]
        return b", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    version: str
    headers: Headers
    keep_alive: bool  # the server keeps the connection after this response
    framing: Framing
    content_length: int | None

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n.lower() == name]
        return b", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: Headers = ()


RequestEvent = RequestHead | Body | EndOfMessage
ResponseEvent = ResponseHead | Body | EndOfMessage


class _Message:
    """What the callbacks collect for the message being parsed."""

    __slots__ = ("url", "status", "headers", "head_bytes", "in_head", "in_body", "trailers")

    def __init__(self) -> None:
        self.url = bytearray()
        self.status = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.in_head = False
        self.in_body = False
        self.trailers: list[tuple[bytes, bytes]] = []


def _framing_of(headers: list[tuple[bytes, bytes]]) -> tuple[Framing, int | None]:
    """From fields llhttp accepted (it refuses a duplicate or bad Content-Length, and both with TE)."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        low = name.lower()
        if low == b"transfer-encoding":
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif low == b"content-length":
            length = int(value.strip() or b"0")
    if chunked:
        return Framing.CHUNKED, None
    if length is not None:
        return Framing.LENGTH, length
    return Framing.NONE, None


class _Parser:
    """Shared by both directions: callbacks into an event queue, errors queued in order."""

    __slots__ = ("_parser", "_events", "_msg", "_max_head", "_max_headers", "_error", "_head_fed", "_eof", "_halted")

    def __init__(self, *, max_head_bytes: int, max_headers: int) -> None:
        self._events: deque[object] = deque()
        self._msg = _Message()
        self._max_head = max_head_bytes
        self._max_headers = max_headers
        self._error: HttpError | None = None  # once set, nothing more is parsed
        self._head_fed = 0  # bytes fed while a head was incomplete: bounds a head that never ends
        self._eof = False
        self._halted = False  # a callback stopped llhttp on purpose (not an error)
        self._parser = self._new_parser()

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def _fail(self, message: str, *, status: int = 400) -> None:
        if self._error is None:
            self._error = HttpError(message, status=status)
            self._events.append(self._error)

    # --------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._msg = _Message()
        self._msg.in_head = True

    def on_url(self, url: bytes) -> None:
        self._msg.url += url
        self._count(len(url))

    def on_status(self, status: bytes) -> None:
        self._msg.status += status
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self._msg
        if msg.in_head:
            msg.headers.append((name, value))
            self._count(len(name) + len(value) + 4)
            if len(msg.headers) > self._max_headers:
                self._fail(f"more than {self._max_headers} header fields", status=431)
                raise _Stop
        else:
            msg.trailers.append((name, value))
            if len(msg.trailers) > self._max_headers:
                self._fail(f"more than {self._max_headers} trailer fields", status=431)
                raise _Stop

    def _count(self, n: int) -> None:
        msg = self._msg
        msg.head_bytes += n
        if msg.head_bytes > self._max_head:
            self._fail(f"message head larger than {self._max_head} bytes", status=431)
            raise _Stop

    def on_body(self, data: bytes) -> None:
        if self._error is None:
            self._events.append(Body(data))

    def on_message_complete(self) -> None:
        if self._error is None:
            self._message_complete()

    def _message_complete(self) -> None:
        msg = self._msg
        msg.in_body = False
        self._events.append(EndOfMessage(tuple(msg.trailers)))

    # --------------------------------------------------------------- feeding

    def feed(self, data: bytes) -> None:
        """Parse ``data``; never raises (a malformed message is queued as an error)."""
        while data and self._error is None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                offset = int(upgrade.args[0]) if upgrade.args else len(data)
                data = data[offset:]
                self._parser = self._new_parser()  # what follows is parsed as the next message
                continue
            except httptools.HttpParserError as exc:
                # a callback stopped the parser (after queueing an error, or on purpose), else
                # llhttp refused the bytes
                if not self._halted:
                    self._fail(f"malformed http/1.1 message: {_reason(exc)}")
            break
        if self._msg.in_head and self._error is None:
            self._head_fed += len(data)
            if self._head_fed > 2 * self._max_head:
                self._fail(f"message head larger than {self._max_head} bytes", status=431)
        else:
            self._head_fed = 0

    def next_event(self) -> object | None:
        """The next event, ``None`` when more bytes are needed; raises a queued ``HttpError``."""
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, HttpError):
            self._events.appendleft(event)  # stays: the stream is unusable from here on
            raise event
        return event

    @property
    def pending_events(self) -> int:
        return len(self._events)


class _Stop(Exception):
    """Raised in a callback to stop llhttp after an error was queued."""


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.strip().lower().replace("`", "")


class RequestParser(_Parser):
    """Requests from one downstream connection (see the module docstring)."""

    __slots__ = ()

    def __init__(self, *, max_head_bytes: int = MAX_HEAD_BYTES, max_headers: int = MAX_HEADERS) -> None:
        super().__init__(max_head_bytes=max_head_bytes, max_headers=max_headers)

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def on_headers_complete(self) -> None:
        msg = self._msg
        msg.in_head = False
        msg.in_body = True
        self._head_fed = 0
        if self._error is not None:
            return
        parser = self._parser
        method = parser.get_method().decode("ascii", "replace")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(f"http version {version} is not supported; send http/1.1", status=505)
            raise _Stop
        if method == "CONNECT":
            self._fail("connect is not supported: the waypoint forwards requests to its service only", status=501)
            raise _Stop
        head = self._request_head(method, version, parser.should_keep_alive())
        if head is not None:
            self._events.append(head)
        else:
            raise _Stop

    def _request_head(self, method: str, version: str, keep_alive: bool) -> RequestHead | None:
        msg = self._msg
        target = msg.url.decode("latin-1")
        hosts = [v for n, v in msg.headers if n.lower() == b"host"]
        if len(hosts) > 1:
            self._fail("more than one host header")
            return None
        authority = hosts[0].decode("latin-1").strip() if hosts else ""
        if target.startswith("/"):
            path, _, query = target.partition("?")
        elif target == "*" and method == "OPTIONS":
            path, query = "*", ""
        elif "://" in target:
            try:
                url = httptools.parse_url(msg.url)
            except httptools.HttpParserInvalidURLError as exc:
                self._fail(f"invalid request target: {_reason(exc)}")
                return None
            authority = url.host.decode("latin-1") + (f":{url.port}" if url.port else "")
            path = (url.path or b"/").decode("latin-1")
            query = (url.query or b"").decode("latin-1")
        else:
            self._fail("request target must be a path starting with /")
            return None
        if version == "1.1" and not authority:
            self._fail("http/1.1 request without a host header")
            return None
        path = path.partition("#")[0]
        query = query.partition("#")[0]
        framing, length = _framing_of(msg.headers)
        expect = any(n.lower() == b"expect" and v.strip().lower() == b"100-continue" for n, v in msg.headers)
        return RequestHead(method=method, target=target, path=path, query=query, authority=authority,
                           version=version, headers=tuple(msg.headers), keep_alive=keep_alive, framing=framing,
                           content_length=length, expect_continue=expect and version == "1.1")

    def feed_eof(self) -> None:
        """The client finished sending: a request cut short is an error (queued after what came before)."""
        self._eof = True
        if (self._msg.in_head or self._msg.in_body) and self._error is None:
            self._fail("the client closed the connection in the middle of a request")

    @property
    def idle(self) -> bool:
        """Between requests with nothing queued: the connection may be closed without losing a request."""
        return not self._events and not self._msg.in_head and not self._msg.in_body


class ResponseParser(_Parser):
    """One response to one request sent upstream (a new parser per request)."""

    __slots__ = ("_method", "_done", "_final", "_extra")

    def __init__(self, *, request_method: str, max_head_bytes: int = MAX_HEAD_BYTES,
                 max_headers: int = MAX_HEADERS) -> None:
        self._method = request_method
        self._done = False  # the final response is complete
        self._final: ResponseHead | None = None
        self._extra = False  # bytes arrived after the final response: the connection is not reusable
        super().__init__(max_head_bytes=max_head_bytes, max_headers=max_headers)

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        if self._done:
            self._extra = True
            self._halted = True
            raise _Stop
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        msg = self._msg
        msg.in_head = False
        msg.in_body = True
        self._head_fed = 0
        if self._error is not None:
            return
        parser = self._parser
        status = parser.get_status_code()
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(f"upstream answered http version {version}", status=502)
            raise _Stop
        if status < 200:
            if status == 101:
                self._fail("upstream switched protocols, which was not asked for", status=502)
                raise _Stop
            return  # informational: skipped, the final response follows
        if self._method == "HEAD" or status in (204, 304):
            framing, length = Framing.NONE, None
        else:
            framing, length = _framing_of(msg.headers)
            if framing is Framing.NONE:
                framing = Framing.CLOSE
        head = ResponseHead(status=status, reason=msg.status.decode("latin-1"), version=version,
                            headers=tuple(msg.headers), keep_alive=parser.should_keep_alive(),
                            framing=framing, content_length=length)
        self._final = head
        self._events.append(head)
        if self._method == "HEAD":
            # llhttp does not know the request was HEAD and would wait for Content-Length bytes
            self._done = True
            msg.in_body = False
            self._events.append(EndOfMessage())
            self._halted = True
            raise _Stop

    def on_message_complete(self) -> None:
        if self._error is not None or self._done:
            return
        if self._final is None:
            self._msg.in_body = False  # the end of an informational response
            return
        self._done = True
        self._message_complete()

    def feed(self, data: bytes) -> None:
        if self._done:
            if data:
                self._extra = True
            return
        super().feed(data)

    def _fail(self, message: str, *, status: int = 502) -> None:
        super()._fail(message, status=status)

    def feed_eof(self) -> None:
        """The server closed: ends a body delimited by the close, else a response cut short is an error."""
        self._eof = True
        if self._done or self._error is not None:
            return
        final = self._final
        if final is not None and final.framing is Framing.CLOSE and self._msg.in_body:
            self._done = True
            self._msg.in_body = False
            self._events.append(EndOfMessage())
            return
        self._fail("upstream closed the connection before the response was complete")

    @property
    def done(self) -> bool:
        return self._done

    @property
    def reusable(self) -> bool:
        """The connection may carry another request: complete, kept alive, nothing after the response."""
        final = self._final
        return (self._done and final is not None and final.keep_alive and not self._extra
                and final.framing is not Framing.CLOSE and not self._eof)


# ------------------------------------------------------------------- serializing


def end_to_end(headers: Headers, *, drop: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """``headers`` without hop-by-hop fields (those of RFC 9110 7.6.1 and those ``Connection`` names)
    and without ``drop`` (lowercase names)."""
    named = set(HOP_BY_HOP)
    named.update(drop)
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return [(n, v) for n, v in headers if n.lower() not in named]


def _fields(headers: list[tuple[bytes, bytes]] | Headers) -> bytes:
    return b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers)


def encode_request_head(*, method: str, target: str, headers: list[tuple[bytes, bytes]] | Headers,
                        chunked: bool = False) -> bytes:
    """An HTTP/1.1 request head; ``headers`` end-to-end already; ``chunked`` adds the framing field."""
    extra = b"transfer-encoding: chunked\r\n" if chunked else b""
    return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method.encode("ascii"), target.encode("latin-1"), _fields(headers),
                                            extra)


def encode_response_head(*, status: int, reason: str, headers: list[tuple[bytes, bytes]] | Headers,
                         chunked: bool = False, close: bool = False) -> bytes:
    """An HTTP/1.1 status line and fields; ``close`` adds ``connection: close``."""
    extra = (b"transfer-encoding: chunked\r\n" if chunked else b"") + (b"connection: close\r\n" if close else b"")
    return b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (status, reason.encode("latin-1"), _fields(headers), extra)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def last_chunk(trailers: Headers = ()) -> bytes:
    return b"0\r\n%s\r\n" % _fields(trailers)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def simple_response(*, status: int, reason: str, body: str, close: bool = False,
                    extra: Headers = ()) -> bytes:
    """A whole response the waypoint makes itself (errors, 404 ...): text body with its length."""
    data = body.encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(data)).encode()), *extra]
    return encode_response_head(status=status, reason=reason, headers=headers, close=close) + data
