"""The messages between the CNI plugin and the node agent: pure functions fed bytes.

One request and one response per unix-socket connection, each one *frame*::

    +----------------------+--------------------------------------+
    | length: uint32, BE   | body: `length` bytes of UTF-8 JSON   |
    +----------------------+--------------------------------------+

``1 <= length <= MAX_BODY``. The body is a JSON object with ``"v": PROTOCOL_VERSION``.
Request::

    {"v": 1, "command": "ADD", "pod": {"namespace": "shop", "name": "web-1", "uid": "..."},
     "containerId": "...", "netns": "/var/run/netns/cni-...", "interface": "eth0",
     "ips": ["10.210.0.5"]}

Response::

    {"v": 1, "status": "enrolled" | "not_enrolled" | "error", "message": "..."}

Unknown keys are ignored, so fields can be added without a version bump; anything else
incompatible bumps ``v``. A side that receives a version it does not speak answers (or fails)
with an ``error`` naming both versions. The full description is in docs/cni.md.
"""
from __future__ import annotations

import json
import socket
from collections import namedtuple

from cni.errors import ProtocolError, UnsupportedProtocolVersion

PROTOCOL_VERSION = 1
HEADER_SIZE = 4
MAX_BODY = 64 * 1024

COMMANDS = ("ADD", "DEL", "CHECK")
ENROLLED = "enrolled"
NOT_ENROLLED = "not_enrolled"
ERROR = "error"
STATUSES = (ENROLLED, NOT_ENROLLED, ERROR)


class CniRequest(
    namedtuple("CniRequest", "command pod_namespace pod_name pod_uid container_id netns interface ips")
):
    """The plugin's question: the runtime's operation on one pod sandbox.

    ``pod_uid`` may be empty (not every runtime passes ``K8S_POD_UID``); ``netns`` may be
    empty on DEL; ``ips`` is a tuple of addresses without prefix length.
    """

    __slots__ = ()


class CniResponse(namedtuple("CniResponse", "status message")):
    """The agent's answer. For ADD, ``enrolled`` means redirection and listeners are in place."""

    __slots__ = ()


# ---- framing -------------------------------------------------------------------------------
def frame(body: bytes) -> bytes:
    if not 1 <= len(body) <= MAX_BODY:
        raise ProtocolError(f"message body of {len(body)} bytes is outside 1..{MAX_BODY}")
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def frame_length(header: bytes) -> int:
    """The body length announced by a 4-byte header."""
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"a frame header is {HEADER_SIZE} bytes, got {len(header)}")
    length = int.from_bytes(header, "big")
    if not 1 <= length <= MAX_BODY:
        raise ProtocolError(f"frame announces {length} bytes; expected 1..{MAX_BODY} (is the peer speaking this protocol?)")
    return length


class FrameDecoder:
    """Reassembles frames from arbitrarily split reads."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """bytes received that do not complete a frame yet"""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the bodies of the frames they complete, in order."""
        self._buffer += data
        bodies: list[bytes] = []
        while len(self._buffer) >= HEADER_SIZE:
            length = frame_length(bytes(self._buffer[:HEADER_SIZE]))
            end = HEADER_SIZE + length
            if len(self._buffer) < end:
                break
            bodies.append(bytes(self._buffer[HEADER_SIZE:end]))
            del self._buffer[:end]
        return bodies


# ---- messages ------------------------------------------------------------------------------
def encode_request(request: CniRequest) -> bytes:
    """A complete frame carrying ``request``."""
    doc = {
        "v": PROTOCOL_VERSION,
        "command": request.command,
        "pod": {"namespace": request.pod_namespace, "name": request.pod_name, "uid": request.pod_uid},
        "containerId": request.container_id,
        "netns": request.netns,
        "interface": request.interface,
        "ips": list(request.ips),
    }
    return frame(_dump(doc))


def encode_response(response: CniResponse) -> bytes:
    """A complete frame carrying ``response``."""
    return frame(_dump({"v": PROTOCOL_VERSION, "status": response.status, "message": response.message}))


def decode_request(body: bytes) -> CniRequest:
    """Check and decode one request body (the bytes after the header)."""
    doc = _load(body)
    command = _field(doc, "command", str)
    if command not in COMMANDS:
        raise ProtocolError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    pod = _field(doc, "pod", dict)
    namespace = _field(pod, "namespace", str, where="pod.")
    name = _field(pod, "name", str, where="pod.")
    if not namespace or not name:
        raise ProtocolError("pod.namespace and pod.name must not be empty")
    uid = _field(pod, "uid", str, where="pod.")
    container_id = _field(doc, "containerId", str)
    if not container_id:
        raise ProtocolError("containerId must not be empty")
    netns = _field(doc, "netns", str)
    if command != "DEL" and not netns:
        raise ProtocolError(f"netns must not be empty for {command}")
    interface = _field(doc, "interface", str)
    ips = _field(doc, "ips", list)
    for ip in ips:
        if not isinstance(ip, str) or not _is_ip(ip):
            raise ProtocolError(f"ips holds {ip!r}, which is not an IP address")
    return CniRequest(command, namespace, name, uid, container_id, netns, interface, tuple(ips))


def decode_response(body: bytes) -> CniResponse:
    """Check and decode one response body (the bytes after the header)."""
    doc = _load(body)
    status = _field(doc, "status", str)
    if status not in STATUSES:
        raise ProtocolError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
    return CniResponse(status, _field(doc, "message", str))


# ---- helpers -------------------------------------------------------------------------------
def _dump(doc: dict) -> bytes:
    # ASCII output: strings from the environment may carry lone surrogates (undecodable bytes)
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _load(body: bytes) -> dict:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"message body is not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"message body is a JSON {type(doc).__name__}, expected an object")
    version = doc.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise UnsupportedProtocolVersion(
            version, f"message has protocol version {version!r}; this side speaks {PROTOCOL_VERSION}"
        )
    return doc


def _field(doc: dict, key: str, kind: type, *, where: str = ""):
    if key not in doc:
        raise ProtocolError(f"message has no {where}{key}")
    value = doc[key]
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}{key} must be a JSON {_JSON_NAMES[kind]}, got {value!r:.60}")
    return value


_JSON_NAMES = {str: "string", dict: "object", list: "array"}


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except (OSError, ValueError):  # ValueError: embedded NUL
            continue
    return False
