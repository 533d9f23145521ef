"""HTTP/1.x framing (waypoint.http1): table-driven cases, chunk-boundary independence, fuzzing."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.errors import HttpError
from waypoint.http1 import (
    Body,
    EndOfMessage,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    chunk,
    encode_request_head,
    encode_response_head,
    end_to_end,
    last_chunk,
)


def events(parser, *, limit: int = 10_000) -> list:
    out: list = []
    for _ in range(limit):
        try:
            event = parser.next_event()
        except HttpError as exc:
            out.append(("error", exc.status))
            break
        if event is None:
            break
        out.append(event)
    return out


def summary(evs: list) -> list:
    """Events reduced to what a test compares: heads by method/status, bodies joined per message."""
    out: list = []
    body = b""
    for ev in evs:
        if isinstance(ev, RequestHead):
            out.append(("head", ev.method, ev.path, ev.query, ev.authority, ev.version, ev.keep_alive,
                        ev.framing.value, ev.expect_continue))
        elif isinstance(ev, ResponseHead):
            out.append(("head", ev.status, ev.keep_alive, ev.framing.value))
        elif isinstance(ev, Body):
            body += ev.data
        elif isinstance(ev, EndOfMessage):
            out.append(("end", body, ev.trailers))
            body = b""
        else:
            out.append(ev)
    return out


def parse_requests(data: bytes, *, sizes: list[int] | None = None, eof: bool = False) -> list:
    parser = RequestParser()
    if sizes is None:
        parser.feed(data)
    else:
        pos = 0
        for size in sizes:
            parser.feed(data[pos:pos + size])
            pos += size
        parser.feed(data[pos:])
    if eof:
        parser.feed_eof()
    return summary(events(parser))


REQUESTS = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
                 [("head", "GET", "/", "", "web", "1.1", True, "none", False), ("end", b"", ())], id="get"),
    pytest.param(b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: web:80\r\nConnection: close\r\n\r\n",
                 [("head", "GET", "/a/b", "x=1&y=2", "web:80", "1.1", False, "none", False), ("end", b"", ())],
                 id="query-and-close"),
    pytest.param(b"POST /p HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nhello",
                 [("head", "POST", "/p", "", "w", "1.1", True, "length", False), ("end", b"hello", ())],
                 id="content-length"),
    pytest.param(b"POST /p HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n!\r\n"
                 b"0\r\nX-Sum: 9\r\n\r\n",
                 [("head", "POST", "/p", "", "w", "1.1", True, "chunked", False),
                  ("end", b"hello!", ((b"X-Sum", b"9"),))], id="chunked-with-trailer"),
    pytest.param(b"GET / HTTP/1.0\r\n\r\n",
                 [("head", "GET", "/", "", "", "1.0", False, "none", False), ("end", b"", ())], id="http-1.0"),
    pytest.param(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: w\r\n\r\n",
                 [("head", "GET", "/", "", "w", "1.0", True, "none", False), ("end", b"", ())],
                 id="http-1.0-keep-alive"),
    pytest.param(b"PUT /u HTTP/1.1\r\nHost: w\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
                 [("head", "PUT", "/u", "", "w", "1.1", True, "length", True), ("end", b"ok", ())],
                 id="expect-100-continue"),
    pytest.param(b"GET http://web.demo:8080/x?q HTTP/1.1\r\nHost: other\r\n\r\n",
                 [("head", "GET", "/x", "q", "web.demo:8080", "1.1", True, "none", False), ("end", b"", ())],
                 id="absolute-form"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: w\r\n\r\n",
                 [("head", "OPTIONS", "*", "", "w", "1.1", True, "none", False), ("end", b"", ())], id="asterisk"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: w\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                 b"GET /next HTTP/1.1\r\nHost: w\r\n\r\n",
                 [("head", "GET", "/", "", "w", "1.1", True, "none", False), ("end", b"", ()),
                  ("head", "GET", "/next", "", "w", "1.1", True, "none", False), ("end", b"", ())],
                 id="upgrade-served-as-plain-request"),
    pytest.param(b"GET /1 HTTP/1.1\r\nHost: w\r\n\r\nPOST /2 HTTP/1.1\r\nHost: w\r\nContent-Length: 1\r\n\r\nx"
                 b"GET /3 HTTP/1.1\r\nHost: w\r\n\r\n",
                 [("head", "GET", "/1", "", "w", "1.1", True, "none", False), ("end", b"", ()),
                  ("head", "POST", "/2", "", "w", "1.1", True, "length", False), ("end", b"x", ()),
                  ("head", "GET", "/3", "", "w", "1.1", True, "none", False), ("end", b"", ())], id="pipelined"),
]


@pytest.mark.parametrize(("data", "expected"), REQUESTS)
def test_requests(data: bytes, expected: list) -> None:
    assert parse_requests(data) == expected
    assert parse_requests(data, sizes=[1] * len(data)) == expected  # one byte at a time


BAD_REQUESTS = [
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="1.1-without-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
                 id="two-lengths"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
                 id="length-and-chunked"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, id="http-2.0-line"),
    pytest.param(b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n", 501, id="connect"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, id="huge-header"),
    pytest.param(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431, id="huge-target"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 101 + b"\r\n", 431, id="too-many-fields"),
    pytest.param(b"GET nopath HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="relative-target"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01", 400, id="tls-client-hello"),
]


@pytest.mark.parametrize(("data", "status"), BAD_REQUESTS)
def test_bad_requests_are_errors_with_a_status(data: bytes, status: int) -> None:
    assert parse_requests(data)[-1] == ("error", status)


def test_an_endless_header_is_refused_before_it_is_held() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    for _ in range(10):
        parser.feed(b"a" * 65536)
    assert events(parser) == [("error", 431)]


def test_an_error_after_pipelined_requests_comes_after_them() -> None:
    got = parse_requests(b"GET /1 HTTP/1.1\r\nHost: w\r\n\r\nBAD\r\n\r\n")
    assert got[0][:3] == ("head", "GET", "/1")
    assert got[1] == ("end", b"", ())
    assert got[2] == ("error", 400)


def test_client_closing_mid_request_is_an_error_and_between_requests_is_not() -> None:
    assert parse_requests(b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n\r\nab", eof=True)[-1] == ("error", 400)
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n")
    assert not parser.idle
    events(parser)
    parser.feed_eof()
    assert parser.idle
    assert events(parser) == []


def parse_response(data: bytes, *, method: str = "GET", eof: bool = False, sizes: list[int] | None = None):
    parser = ResponseParser(request_method=method)
    if sizes is None:
        parser.feed(data)
    else:
        pos = 0
        for size in sizes:
            parser.feed(data[pos:pos + size])
            pos += size
        parser.feed(data[pos:])
    if eof:
        parser.feed_eof()
    return summary(events(parser)), parser.reusable


RESPONSES = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "GET", False,
                 [("head", 200, True, "length"), ("end", b"ok", ())], True, id="length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n",
                 "GET", False, [("head", 200, True, "chunked"), ("end", b"ok", ((b"grpc-status", b"0"),))], True,
                 id="chunked-with-trailers"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD", False,
                 [("head", 200, True, "none"), ("end", b"", ())], True, id="head-has-no-body"),
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", "DELETE", False,
                 [("head", 204, True, "none"), ("end", b"", ())], True, id="204"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", "GET", False,
                 [("head", 304, True, "none"), ("end", b"", ())], True, id="304"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                 b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", "POST", False,
                 [("head", 201, True, "length"), ("end", b"", ())], True, id="informational-skipped"),
    pytest.param(b"HTTP/1.0 200 OK\r\n\r\nuntil close", "GET", True,
                 [("head", 200, False, "close"), ("end", b"until close", ())], False, id="close-delimited"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx", "GET", False,
                 [("head", 200, False, "length"), ("end", b"x", ())], False, id="connection-close"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1", "GET", False,
                 [("head", 200, True, "length"), ("end", b"x", ())], False, id="bytes-after-the-response"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "GET", True,
                 [("head", 200, True, "length"), ("error", 502)], False, id="truncated"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", "GET", False,
                 [("error", 502)], False, id="unasked-upgrade"),
    pytest.param(b"SSH-2.0-OpenSSH\r\n\r\n", "GET", False, [("error", 502)], False, id="not-http"),
]


@pytest.mark.parametrize(("data", "method", "eof", "expected", "reusable"), RESPONSES)
def test_responses(data: bytes, method: str, eof: bool, expected: list, reusable: bool) -> None:
    assert parse_response(data, method=method, eof=eof) == (expected, reusable)
    assert parse_response(data, method=method, eof=eof, sizes=[1] * len(data)) == (expected, reusable)


def test_hop_by_hop_fields_are_removed_with_those_connection_names() -> None:
    headers = ((b"Host", b"w"), (b"Connection", b"keep-alive, X-Hop"), (b"Keep-Alive", b"timeout=5"),
               (b"X-Hop", b"1"), (b"TE", b"trailers"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"),
               (b"Proxy-Connection", b"x"), (b"X-End", b"2"), (b"Expect", b"100-continue"))
    assert end_to_end(headers, drop=frozenset({b"expect"})) == [(b"Host", b"w"), (b"X-End", b"2")]


def test_serialized_messages_parse_back() -> None:
    head = encode_request_head(method="POST", target="/a?b", headers=[(b"host", b"w")], chunked=True)
    wire = head + chunk(b"abc") + chunk(b"") + chunk(b"de") + last_chunk(((b"x-t", b"1"),))
    assert parse_requests(wire) == [("head", "POST", "/a", "b", "w", "1.1", True, "chunked", False),
                                    ("end", b"abcde", ((b"x-t", b"1"),))]
    resp = encode_response_head(status=503, reason="Service Unavailable", headers=[(b"content-length", b"0")],
                                close=True)
    assert parse_response(resp) == ([("head", 503, False, "length"), ("end", b"", ())], False)


# ------------------------------------------------------------------- properties

_pieces = st.sampled_from([
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 4\r\n", b"\r\n", b"3\r\nabc\r\n",
    b"0\r\n\r\n", b"Connection: close\r\n", b"Upgrade: x\r\nConnection: upgrade\r\n", b"CONNECT a:1 HTTP/1.1\r\n",
    b"\x00", b" ", b"HTTP/1.0 ", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
])
_streams = st.lists(st.one_of(st.binary(max_size=64), _pieces), max_size=12).map(b"".join)


@settings(max_examples=400)
@given(data=_streams, cut=st.lists(st.integers(min_value=1, max_value=40), max_size=8), eof=st.booleans())
def test_arbitrary_bytes_raise_only_http_errors(data: bytes, cut: list[int], eof: bool) -> None:
    for parser in (RequestParser(), ResponseParser(request_method="GET"), ResponseParser(request_method="HEAD")):
        pos = 0
        for size in cut:
            parser.feed(data[pos:pos + size])
            pos += size
            events(parser)
        parser.feed(data[pos:])
        if eof:
            parser.feed_eof()
        events(parser)


@settings(max_examples=200)
@given(bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
       chunked=st.booleans(), cut=st.lists(st.integers(min_value=1, max_value=50), max_size=10))
def test_pipelined_requests_come_out_whole_and_in_order(bodies: list[bytes], chunked: bool, cut: list[int]) -> None:
    wire = b""
    for i, body in enumerate(bodies):
        if chunked:
            wire += encode_request_head(method="POST", target=f"/{i}", headers=[(b"host", b"w")], chunked=True)
            wire += chunk(body[:7]) + chunk(body[7:]) + last_chunk()
        else:
            wire += encode_request_head(method="POST", target=f"/{i}",
                                        headers=[(b"host", b"w"), (b"content-length", b"%d" % len(body))])
            wire += body
    got = parse_requests(wire, sizes=cut)
    assert [g[2] for g in got[0::2]] == [f"/{i}" for i in range(len(bodies))]
    assert [g[1] for g in got[1::2]] == bodies
