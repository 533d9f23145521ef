"""The plugin<->agent codec: round trips, framing under any split, and garbage never crashes it."""
from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import protocol
from cni.errors import ProtocolError, UnsupportedProtocolVersion
from cni.protocol import CniRequest, CniResponse, FrameDecoder

text = st.text(max_size=40)
nonempty = st.text(min_size=1, max_size=40)
ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@st.composite
def requests(draw) -> CniRequest:
    command = draw(st.sampled_from(protocol.COMMANDS))
    netns = draw(text if command == "DEL" else nonempty)
    return CniRequest(
        command,
        draw(nonempty),
        draw(nonempty),
        draw(text),
        draw(nonempty),
        netns,
        draw(text),
        tuple(draw(st.lists(ips, max_size=4))),
    )


responses = st.builds(CniResponse, st.sampled_from(protocol.STATUSES), st.text(max_size=200))


def body_of(frame: bytes) -> bytes:
    assert protocol.frame_length(frame[:4]) == len(frame) - 4
    return frame[4:]


@given(requests())
def test_request_round_trip(request):
    assert protocol.decode_request(body_of(protocol.encode_request(request))) == request


@given(responses)
def test_response_round_trip(response):
    assert protocol.decode_response(body_of(protocol.encode_response(response))) == response


@given(st.lists(st.one_of(requests().map(protocol.encode_request), responses.map(protocol.encode_response)), min_size=1, max_size=5), st.data())
def test_frames_reassemble_under_any_split(frames, data):
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    bodies = []
    start = 0
    for cut in [*cuts, len(stream)]:
        bodies += decoder.feed(stream[start:cut])
        start = cut
    assert bodies == [f[4:] for f in frames]
    assert decoder.pending == 0


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_bodies_raise_only_protocol_errors(body):
    for decode in (protocol.decode_request, protocol.decode_response):
        try:
            decode(body)
        except ProtocolError:
            pass


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8), lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12))
def test_any_json_raises_only_protocol_errors(doc):
    for candidate in (doc, {"v": 1, **doc} if isinstance(doc, dict) else doc):
        body = json.dumps(candidate).encode()
        for decode in (protocol.decode_request, protocol.decode_response):
            try:
                decode(body)
            except ProtocolError:
                pass


@given(st.binary(max_size=64))
def test_decoder_garbage_raises_only_protocol_errors(data):
    try:
        FrameDecoder().feed(data)
    except ProtocolError:
        pass


@given(requests())
def test_decoded_ips_are_ip_addresses(request):
    decoded = protocol.decode_request(body_of(protocol.encode_request(request)))
    for ip in decoded.ips:
        ipaddress.ip_address(ip)


# ---- the wire format, pinned ---------------------------------------------------------------
def test_request_wire_format():
    request = CniRequest("ADD", "shop", "web-1", "u-1", "c0ffee", "/var/run/netns/p", "eth0", ("10.210.0.7",))
    frame = protocol.encode_request(request)
    assert json.loads(frame[4:]) == {
        "v": 1,
        "command": "ADD",
        "pod": {"namespace": "shop", "name": "web-1", "uid": "u-1"},
        "containerId": "c0ffee",
        "netns": "/var/run/netns/p",
        "interface": "eth0",
        "ips": ["10.210.0.7"],
    }
    assert frame[:4] == len(frame[4:]).to_bytes(4, "big")


def test_response_wire_format():
    body = b'{"v":1,"status":"not_enrolled","message":""}'
    assert protocol.encode_response(CniResponse("not_enrolled", "")) == len(body).to_bytes(4, "big") + body


def test_unknown_fields_are_ignored():
    body = json.dumps({"v": 1, "status": "enrolled", "message": "ok", "listeners": [15001, 15006]}).encode()
    assert protocol.decode_response(body) == CniResponse("enrolled", "ok")


# ---- rejected messages: each with the reason -----------------------------------------------
GOOD = {
    "v": 1,
    "command": "ADD",
    "pod": {"namespace": "shop", "name": "web-1", "uid": ""},
    "containerId": "c",
    "netns": "/n",
    "interface": "eth0",
    "ips": [],
}

BAD_REQUESTS = [
    ("version-2", {**GOOD, "v": 2}, "protocol version 2; this side speaks 1"),
    ("no-version", {k: v for k, v in GOOD.items() if k != "v"}, "protocol version None"),
    ("bool-version", {**GOOD, "v": True}, "protocol version True"),
    ("unknown-command", {**GOOD, "command": "VERSION"}, "unknown command 'VERSION'"),
    ("no-pod", {k: v for k, v in GOOD.items() if k != "pod"}, "message has no pod"),
    ("pod-not-object", {**GOOD, "pod": "shop/web-1"}, "pod must be a JSON object"),
    ("empty-name", {**GOOD, "pod": {"namespace": "shop", "name": "", "uid": ""}}, "must not be empty"),
    ("no-uid", {**GOOD, "pod": {"namespace": "shop", "name": "w"}}, "message has no pod.uid"),
    ("empty-netns-add", {**GOOD, "netns": ""}, "netns must not be empty for ADD"),
    ("empty-container", {**GOOD, "containerId": ""}, "containerId must not be empty"),
    ("ips-not-list", {**GOOD, "ips": "10.0.0.1"}, "ips must be a JSON array"),
    ("ip-with-prefix", {**GOOD, "ips": ["10.0.0.1/24"]}, "not an IP address"),
    ("ip-number", {**GOOD, "ips": [7]}, "not an IP address"),
]


@pytest.mark.parametrize(("doc", "reason"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests(doc, reason):
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(json.dumps(doc).encode())
    assert reason in str(info.value)


def test_del_may_have_no_netns():
    assert protocol.decode_request(json.dumps({**GOOD, "command": "DEL", "netns": ""}).encode()).netns == ""


def test_unsupported_version_carries_the_version():
    with pytest.raises(UnsupportedProtocolVersion) as info:
        protocol.decode_response(b'{"v": 7, "status": "enrolled", "message": ""}')
    assert info.value.version == 7


@pytest.mark.parametrize(
    ("header", "reason"),
    [(b"\x00\x00\x00\x00", "announces 0 bytes"), (b"\x00\x01\x00\x01", "announces 65537 bytes"), (b"HTTP", "announces")],
    ids=["zero", "too-big", "http"],
)
def test_bad_frame_headers(header, reason):
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(header)
    assert reason in str(info.value)


def test_oversized_body_is_refused_when_encoding():
    with pytest.raises(ProtocolError):
        protocol.encode_response(CniResponse("error", "x" * protocol.MAX_BODY))
