"""Decoding the protobuf bodies kubectl's typed clients send to the sandbox API."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.api.protobuf import MAGIC, ProtobufError, decode_object


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ld(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def vi(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def s(num: int, text: str) -> bytes:
    return ld(num, text.encode())


def entry(num: int, key: str, value: bytes) -> bytes:
    return ld(num, s(1, key) + ld(2, value))


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return MAGIC + ld(1, s(1, api_version) + s(2, kind)) + ld(2, raw)


# gogo-protobuf writes every non-pointer field, so empty strings and zero times appear on the wire
META = s(1, "web") + s(2, "") + s(3, "shop") + s(6, "") + vi(7, 0) + ld(8, b"") + entry(11, "app", b"web")

CASES = [
    (
        "namespace",
        envelope("v1", "Namespace", ld(1, s(1, "shop") + ld(8, b"")) + ld(2, b"") + ld(3, b"")),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
    ),
    (
        "configmap",
        envelope("v1", "ConfigMap", ld(1, META) + entry(2, "a", b"1") + entry(3, "bin", b"\x00\x01")),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}}, "data": {"a": "1"}, "binaryData": {"bin": "AAE="}},
    ),
    (
        "secret-bytes-become-base64",
        envelope("v1", "Secret", ld(1, s(1, "s")) + entry(2, "p", b"pw") + s(3, "Opaque")),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"p": "cHc="}, "type": "Opaque"},
    ),
    (
        "deployment-with-int-or-string-and-zero-replicas",
        envelope("apps/v1", "Deployment", ld(1, s(1, "d")) + ld(2,
            vi(1, 0)
            + ld(2, entry(1, "app", b"d"))
            + ld(3, ld(1, entry(11, "app", b"d")) + ld(2, ld(2, s(1, "c") + s(2, "nginx:1") + ld(6, s(1, "") + vi(2, 0) + vi(3, 80) + s(4, "TCP")) + ld(8, b"")) + vi(11, 0)))
            + ld(4, s(1, "RollingUpdate") + ld(2, ld(1, vi(1, 1) + s(3, "25%")) + ld(2, vi(1, 0) + vi(2, 1))))
        )),
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
            },
        },
    ),
    (
        "token-request",
        envelope("authentication.k8s.io/v1", "TokenRequest", ld(1, b"") + ld(2, s(1, "ambit") + s(1, "api") + vi(4, 3600))),
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["ambit", "api"], "expirationSeconds": 3600}},
    ),
]


@pytest.mark.parametrize("body,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decode(body, want):
    assert decode_object(body) == want


ERRORS = [
    ("no-magic", b'{"kind": "ConfigMap"}', "magic"),
    ("unknown-kind", envelope("batch/v1", "Job", b""), "cannot decode Job"),
    ("unknown-field", envelope("v1", "ConfigMap", ld(9, b"x")), "field 9 of protobuf message ConfigMap"),
    ("truncated", envelope("v1", "ConfigMap", ld(1, s(1, "web")))[:-2], "truncated"),
    ("wrong-wire-type", envelope("v1", "ConfigMap", vi(1, 5)), "length-delimited"),
    ("invalid-utf8", envelope("v1", "ConfigMap", ld(1, ld(1, b"\xff\xfe"))), "not valid UTF-8"),
    ("bad-map-entry", envelope("v1", "ConfigMap", ld(2, vi(1, 3))), "malformed map entry"),
]


@pytest.mark.parametrize("body,msg", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_decode_errors(body, msg):
    with pytest.raises(ProtobufError, match=msg):
        decode_object(body)


fragments = st.sampled_from([
    b"", ld(1, b""), ld(1, s(1, "x")), ld(2, b"\xff"), entry(2, "k", b"v"), vi(1, 7), ld(3, ld(2, ld(2, b"\x80"))), b"\x0a\xff", b"\xff" * 3,
])


@given(st.binary(max_size=200), st.lists(fragments, max_size=6))
def test_arbitrary_bytes_only_raise_protobuf_error(data, parts):
    structured = b"".join(parts) + data[:20]
    for body in (MAGIC + data, envelope("v1", "ConfigMap", data), envelope("apps/v1", "Deployment", structured), envelope("v1", "Secret", structured)):
        try:
            decode_object(body)
        except ProtobufError:
            pass
