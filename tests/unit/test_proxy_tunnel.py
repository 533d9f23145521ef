"""The tunnel header codec: fixed vectors, table-driven refusals, and Hypothesis properties."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.proxy.errors import (
    HeaderError,
    MalformedHeaderError,
    TruncatedHeaderError,
    UnsupportedVersionError,
)
from node_agent.proxy.tunnel import (
    MAX_HEADER_LEN,
    HeaderDecoder,
    ResponseDecoder,
    Status,
    TunnelHeader,
    decode_header,
    encode_header,
    encode_response,
)

# ---------------------------------------------------------------- fixed vectors


def test_minimal_header_bytes_match_the_documented_layout() -> None:
    wire = encode_header(TunnelHeader(target_ip="10.1.2.3", target_port=8080))
    assert wire == (
        b"AMBT"  # magic
        + b"\x01"  # version
        + b"\x00"  # flags
        + b"\x00\x13"  # total length 19
        + b"\x00\x00\x00\x00"  # stream id
        + b"\x04"  # family
        + b"\x1f\x90"  # port 8080
        + b"\x0a\x01\x02\x03"  # 10.1.2.3
    )


def test_full_header_bytes_match_the_documented_layout() -> None:
    header = TunnelHeader(
        target_ip="fd00::1",
        target_port=80,
        source_workload="web",
        source_namespace="shop",
        destination_service="cart.shop.svc.cluster.local",
        original_dst=("10.96.0.10", 80),
    )
    wire = encode_header(header)
    assert wire[:4] == b"AMBT" and wire[4] == 1 and wire[5] == 0
    assert struct.unpack("!H", wire[6:8])[0] == len(wire)
    assert wire[12:15] == b"\x06\x00\x50"
    assert wire[15:31] == ipaddress.IPv6Address("fd00::1").packed
    assert wire[31:37] == b"\x01\x00\x03web"
    assert decode_header(wire) == (header, b"")


def test_response_bytes() -> None:
    assert encode_response(Status.OK) == b"AMBT\x01\x00\x00\x00"
    assert encode_response(Status.FORBIDDEN) == b"AMBT\x01\x02\x00\x00"


# ---------------------------------------------------------------- refusals

GOOD = encode_header(TunnelHeader(target_ip="10.1.2.3", target_port=80, source_workload="web"))


def _with_length(body: bytes) -> bytes:
    """A header whose length field matches ``body`` appended to the fixed part."""
    return b"AMBT\x01\x00" + struct.pack("!H", 12 + len(body)) + b"\x00\x00\x00\x00" + body


ADDR = b"\x04\x00\x50\x0a\x01\x02\x03"


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", MalformedHeaderError, "not an ambit tunnel header", id="http"),
        pytest.param(b"\x16\x03\x01\x02\x00", MalformedHeaderError, "not an ambit", id="tls-client-hello"),
        pytest.param(b"AMBT\x02" + GOOD[5:], UnsupportedVersionError, "version 2", id="version-2"),
        pytest.param(b"AMBT\x01\x01" + GOOD[6:], UnsupportedVersionError, "flags 0x01", id="mux-flag"),
        pytest.param(b"AMBT\x01\x00\x10\x01" + GOOD[8:], MalformedHeaderError, "outside", id="too-long"),
        pytest.param(b"AMBT\x01\x00\x00\x05" + GOOD[8:], MalformedHeaderError, "outside", id="too-short"),
        pytest.param(GOOD[:8] + b"\x00\x00\x00\x07" + GOOD[12:], MalformedHeaderError, "stream id", id="stream-id"),
        pytest.param(_with_length(b"\x05\x00\x50\x0a\x01\x02\x03"), MalformedHeaderError, "family 5", id="family"),
        pytest.param(_with_length(b"\x04\x00\x00\x0a\x01\x02\x03"), MalformedHeaderError, "port 0", id="port-0"),
        pytest.param(_with_length(b"\x06\x00\x50\x0a\x01\x02\x03"), MalformedHeaderError, "cut short", id="v6-short"),
        pytest.param(_with_length(ADDR + b"\x01\x00\x09web"), MalformedHeaderError, "runs past", id="tlv-overrun"),
        pytest.param(_with_length(ADDR + b"\x01\x00"), MalformedHeaderError, "cut short", id="tlv-cut"),
        pytest.param(_with_length(ADDR + b"\x01\x00\x02\xff\xfe"), MalformedHeaderError, "UTF-8", id="utf8"),
        pytest.param(_with_length(ADDR + b"\x01\x00\x01a\x01\x00\x01b"), MalformedHeaderError, "twice", id="dup"),
        pytest.param(_with_length(ADDR + b"\x02\x00\x40" + b"a" * 64), MalformedHeaderError, "limit", id="ns-long"),
        pytest.param(_with_length(ADDR + b"\x00\x00\x00"), MalformedHeaderError, "reserved", id="type-0"),
        pytest.param(_with_length(ADDR + b"\x81\x00\x00"), UnsupportedVersionError, "critical", id="critical"),
        pytest.param(_with_length(ADDR + b"\x04\x00\x08" + ADDR + b"\x00"), MalformedHeaderError, "trailing",
                     id="odst-trailing"),
    ],
)
def test_refused_headers(data: bytes, error: type[HeaderError], words: str) -> None:
    with pytest.raises(error, match=words):
        decode_header(data)


def test_unknown_noncritical_field_is_skipped() -> None:
    wire = _with_length(ADDR + b"\x42\x00\x03xyz" + b"\x01\x00\x03web")
    header, rest = decode_header(wire + b"app")
    assert header == TunnelHeader(target_ip="10.1.2.3", target_port=80, source_workload="web")
    assert rest == b"app"


def test_garbage_is_refused_before_the_whole_length_arrives() -> None:
    decoder = HeaderDecoder()
    with pytest.raises(MalformedHeaderError):
        decoder.feed(b"AMX")


def test_truncation_is_reported_at_eof() -> None:
    decoder = HeaderDecoder()
    assert decoder.feed(GOOD[:-1]) is None
    with pytest.raises(TruncatedHeaderError, match=f"after {len(GOOD) - 1} bytes"):
        decoder.eof()
    with pytest.raises(TruncatedHeaderError):
        decode_header(GOOD[:3])


def test_decoder_never_holds_more_than_the_header() -> None:
    decoder = HeaderDecoder()
    assert decoder.feed(GOOD[:10]) is None
    header, rest = decoder.feed(GOOD[10:] + b"x" * 1_000_000)  # type: ignore[misc]
    assert header.source_workload == "web"
    assert len(rest) == 1_000_000
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        pytest.param({"target_ip": "10.1.2", "target_port": 80}, "not an IPv4", id="bad-ip"),
        pytest.param({"target_ip": "10.1.2.3", "target_port": 0}, "not a TCP port", id="port-0"),
        pytest.param({"target_ip": "10.1.2.3", "target_port": 70000}, "not a TCP port", id="port-big"),
        pytest.param({"target_ip": "10.1.2.3", "target_port": 80, "source_namespace": "n" * 64}, "limit", id="ns"),
        pytest.param({"target_ip": "10.1.2.3", "target_port": 80, "original_dst": ("x", 1)}, "original", id="odst"),
    ],
)
def test_invalid_headers_cannot_be_built(kwargs: dict, words: str) -> None:
    with pytest.raises(MalformedHeaderError, match=words):
        TunnelHeader(**kwargs)


def test_response_decoder() -> None:
    decoder = ResponseDecoder()
    assert decoder.feed(b"AMBT\x01") is None
    assert decoder.feed(b"\x01\x00\x00hello") == (Status.REFUSED, b"hello")
    assert Status.REFUSED.retryable and not Status.FORBIDDEN.retryable
    assert ResponseDecoder().feed(b"AMBT\x01\x63\x00\x00") == (0x63, b"")
    with pytest.raises(MalformedHeaderError, match="instead of"):
        ResponseDecoder().feed(b"HTTP/1.1 400")
    with pytest.raises(UnsupportedVersionError):
        ResponseDecoder().feed(b"AMBT\x07")
    with pytest.raises(TruncatedHeaderError):
        ResponseDecoder().eof()


# ---------------------------------------------------------------- properties

ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
ports = st.integers(min_value=1, max_value=65535)
names = st.text(max_size=40)
headers = st.builds(
    TunnelHeader,
    target_ip=ips,
    target_port=ports,
    source_workload=names,
    source_namespace=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=63),
    destination_service=names,
    original_dst=st.none() | st.tuples(ips, ports),
)


@given(headers, st.binary(max_size=64))
def test_round_trip(header: TunnelHeader, trailer: bytes) -> None:
    wire = encode_header(header)
    assert len(wire) <= MAX_HEADER_LEN
    assert decode_header(wire + trailer) == (header, trailer)


@given(st.binary(max_size=600))
@settings(max_examples=500)
def test_any_bytes_decode_or_raise_a_header_error(data: bytes) -> None:
    try:
        decode_header(data)
    except HeaderError:
        pass


@given(headers, st.data())
@settings(max_examples=300)
def test_mutated_headers_decode_or_raise_a_header_error(header: TunnelHeader, data: st.DataObject) -> None:
    wire = bytearray(encode_header(header))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] = data.draw(st.integers(0, 255))
    try:
        decode_header(bytes(wire))
    except HeaderError:
        pass


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def _feed_all(chunks: list[bytes]) -> tuple[TunnelHeader, bytes] | type[HeaderError] | None:
    decoder = HeaderDecoder()
    for index, chunk in enumerate(chunks):
        try:
            result = decoder.feed(chunk)
        except HeaderError as exc:
            return type(exc)
        if result is not None:
            header, rest = result
            return header, rest + b"".join(chunks[index + 1:])
    return None


@given(st.one_of(headers.map(encode_header), st.binary(max_size=300)), st.binary(max_size=32),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
@settings(max_examples=400)
def test_chunked_feeding_equals_one_shot(prefix: bytes, trailer: bytes, cuts: list[int]) -> None:
    data = prefix + trailer
    one_shot = _feed_all([data])
    chunked = _feed_all(_chunks(data, cuts))
    assert chunked == one_shot
