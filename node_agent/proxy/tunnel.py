"""The tunnel header: what a client agent says after the mTLS handshake, and the answer it gets.

Pure codec, no I/O (see ``docs/tunnel.md`` for the byte layout and the versioning rules):

- ``TunnelHeader`` / ``encode_header`` / ``HeaderDecoder``: client -> server, names the target
  ``ip:port`` and carries the source workload's metadata; length-prefixed, at most 4 KiB.
- ``Status`` / ``encode_response`` / ``ResponseDecoder``: server -> client, 8 bytes, says whether
  the server reached the application, so the client can try another endpoint before its app notices.

Decoders are fed arbitrary chunks; they return ``None`` until a frame is complete, then the frame
and the bytes that followed it (application data sent in the same segment). Anything that is not a
valid frame raises a ``HeaderError`` subclass and nothing else.
"""
from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass

from node_agent.proxy.errors import (
    HeaderError,
    MalformedHeaderError,
    TruncatedHeaderError,
    UnsupportedVersionError,
)

MAGIC = b"AMBT"
VERSION = 1
MAX_HEADER_LEN = 4096
"""Largest request header a server accepts; bounds the memory an unauthenticated-looking peer can pin."""

ALPN = "ambit-tunnel/1"
"""Offered by clients and selected by servers; a future multiplexed mode negotiates its own token."""

_FIXED = struct.Struct("!4sBBHI")  # magic, version, flags, total length, stream id
_ADDR = struct.Struct("!BH")  # family (4 or 6), port; followed by 4 or 16 address bytes
_TLV = struct.Struct("!BH")  # type, length; followed by the value
_RESPONSE = struct.Struct("!4sBBH")  # magic, version, status, reserved
RESPONSE_LEN = _RESPONSE.size

_MIN_HEADER_LEN = _FIXED.size + _ADDR.size + 4
_KNOWN_FLAGS = 0  # v1 understands no flags; bit 0 is reserved for multiplexed streams
_CRITICAL = 0x80  # TLV types with this bit must be understood by the receiver

# TLV types of version 1.
T_SOURCE_WORKLOAD = 0x01
T_SOURCE_NAMESPACE = 0x02
T_DESTINATION_SERVICE = 0x03
T_ORIGINAL_DESTINATION = 0x04

# Longest accepted value per string field (UTF-8 bytes): Kubernetes' own name limits.
_STRING_LIMITS = {
    T_SOURCE_WORKLOAD: 253,
    T_SOURCE_NAMESPACE: 63,
    T_DESTINATION_SERVICE: 253,
}
_FIELD_OF = {
    T_SOURCE_WORKLOAD: "source_workload",
    T_SOURCE_NAMESPACE: "source_namespace",
    T_DESTINATION_SERVICE: "destination_service",
}


def _normalize_ip(ip: str, *, what: str) -> tuple[str, int, bytes]:
    """Canonical text, family (4 or 6) and packed bytes of ``ip``; raise MalformedHeaderError."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        packed = socket.inet_pton(family, ip)
    except (OSError, TypeError, ValueError) as exc:
        raise MalformedHeaderError(f"{what} {ip!r} is not an IPv4 or IPv6 address") from exc
    return socket.inet_ntop(family, packed), (6 if family == socket.AF_INET6 else 4), packed


def _check_port(port: int, *, what: str) -> None:
    if type(port) is not int or not 0 < port < 65536:
        raise MalformedHeaderError(f"{what} {port!r} is not a TCP port (1-65535)")


@dataclass(frozen=True, slots=True)
class TunnelHeader:
    """What the client asks for: connect me to ``target_ip:target_port``; I come from this workload.

    Empty strings mean "not sent". ``original_dst`` is the address the application dialled (a
    Service VIP, say) when it differs from the target.
    """

    target_ip: str
    target_port: int
    source_workload: str = ""
    source_namespace: str = ""
    destination_service: str = ""
    original_dst: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        ip, _, _ = _normalize_ip(self.target_ip, what="target ip")
        object.__setattr__(self, "target_ip", ip)
        _check_port(self.target_port, what="target port")
        for tag, limit in _STRING_LIMITS.items():
            value = getattr(self, _FIELD_OF[tag])
            if not isinstance(value, str):
                raise MalformedHeaderError(f"{_FIELD_OF[tag]} must be a string, not {type(value).__name__}")
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise MalformedHeaderError(f"{_FIELD_OF[tag]} is {size} bytes long; the limit is {limit}")
        if self.original_dst is not None:
            odst_ip, odst_port = self.original_dst
            canonical, _, _ = _normalize_ip(odst_ip, what="original destination ip")
            _check_port(odst_port, what="original destination port")
            object.__setattr__(self, "original_dst", (canonical, odst_port))


def _pack_addr(ip: str, port: int) -> bytes:
    _, family, packed = _normalize_ip(ip, what="address")
    return _ADDR.pack(family, port) + packed


def _tlv(tag: int, value: bytes) -> bytes:
    return _TLV.pack(tag, len(value)) + value


def encode_header(header: TunnelHeader) -> bytes:
    """The wire form of ``header`` (version 1, no flags, stream id 0)."""
    parts = [_pack_addr(header.target_ip, header.target_port)]
    for tag, field in _FIELD_OF.items():
        value = getattr(header, field)
        if value:
            try:
                parts.append(_tlv(tag, value.encode("utf-8")))
            except UnicodeEncodeError as exc:
                raise MalformedHeaderError(f"{field} {value!r} cannot be encoded as UTF-8") from exc
    if header.original_dst is not None:
        parts.append(_tlv(T_ORIGINAL_DESTINATION, _pack_addr(*header.original_dst)))
    body = b"".join(parts)
    total = _FIXED.size + len(body)
    if total > MAX_HEADER_LEN:  # cannot happen with the v1 field limits
        raise MalformedHeaderError(f"BUG: tunnel header of {total} bytes exceeds {MAX_HEADER_LEN}")
    return _FIXED.pack(MAGIC, VERSION, 0, total, 0) + body


def _check_prefix(buf: bytes | bytearray) -> int | None:
    """Validate as much of the fixed part as has arrived; return the total length once known."""
    n = min(len(buf), 4)
    if buf[:n] != MAGIC[:n]:
        raise MalformedHeaderError(
            f"not an ambit tunnel header (starts with {bytes(buf[:n])!r}, expected {MAGIC!r}); "
            "is a non-mesh client connecting to port 15008?"
        )
    if len(buf) > 4 and buf[4] != VERSION:
        raise UnsupportedVersionError(
            f"tunnel header version {buf[4]} is not supported (this agent speaks version {VERSION}); "
            "upgrade the agent on this node",
            version=buf[4],
        )
    if len(buf) > 5 and buf[5] & ~_KNOWN_FLAGS:
        raise UnsupportedVersionError(
            f"tunnel header flags 0x{buf[5]:02x} are not supported by version {VERSION}; "
            "the peer needs a newer agent to use them",
            version=VERSION,
        )
    if len(buf) < _FIXED.size:
        return None
    _, _, _, total, stream_id = _FIXED.unpack_from(buf)
    if not _MIN_HEADER_LEN <= total <= MAX_HEADER_LEN:
        raise MalformedHeaderError(
            f"tunnel header length {total} is outside {_MIN_HEADER_LEN}..{MAX_HEADER_LEN}"
        )
    if stream_id != 0:
        raise MalformedHeaderError(f"stream id {stream_id} given without the multiplexing flag")
    return total


def _parse_addr(view: memoryview, *, what: str) -> tuple[str, int, int]:
    """Parse family, port, address at the start of ``view``; return (ip, port, bytes used)."""
    if len(view) < _ADDR.size:
        raise MalformedHeaderError(f"{what} is cut short")
    family, port = _ADDR.unpack_from(view)
    if family == 4:
        size, af = 4, socket.AF_INET
    elif family == 6:
        size, af = 16, socket.AF_INET6
    else:
        raise MalformedHeaderError(f"{what} has address family {family}; expected 4 or 6")
    end = _ADDR.size + size
    if len(view) < end:
        raise MalformedHeaderError(f"{what} is cut short")
    if port == 0:
        raise MalformedHeaderError(f"{what} has port 0")
    return socket.inet_ntop(af, view[_ADDR.size:end]), port, end


def _parse(view: memoryview) -> TunnelHeader:
    """Parse a complete header whose fixed part ``_check_prefix`` has accepted."""
    ip, port, used = _parse_addr(view[_FIXED.size:], what="target address")
    pos = _FIXED.size + used
    strings: dict[int, str] = {}
    original_dst: tuple[str, int] | None = None
    seen: set[int] = set()
    end = len(view)
    while pos < end:
        if end - pos < _TLV.size:
            raise MalformedHeaderError(f"field at offset {pos} is cut short")
        tag, size = _TLV.unpack_from(view, pos)
        pos += _TLV.size
        if pos + size > end:
            raise MalformedHeaderError(f"field 0x{tag:02x} of {size} bytes runs past the header's end")
        value = view[pos:pos + size]
        pos += size
        if tag in seen:
            raise MalformedHeaderError(f"field 0x{tag:02x} appears twice")
        seen.add(tag)
        if tag in _STRING_LIMITS:
            if size > _STRING_LIMITS[tag]:
                raise MalformedHeaderError(
                    f"{_FIELD_OF[tag]} is {size} bytes long; the limit is {_STRING_LIMITS[tag]}"
                )
            try:
                strings[tag] = str(value, "utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedHeaderError(f"{_FIELD_OF[tag]} is not valid UTF-8") from exc
        elif tag == T_ORIGINAL_DESTINATION:
            odst_ip, odst_port, odst_used = _parse_addr(value, what="original destination")
            if odst_used != size:
                raise MalformedHeaderError("original destination has trailing bytes")
            original_dst = (odst_ip, odst_port)
        elif tag == 0:
            raise MalformedHeaderError("field type 0 is reserved")
        elif tag & _CRITICAL:
            raise UnsupportedVersionError(
                f"tunnel header carries critical field 0x{tag:02x} that this agent does not know; "
                "upgrade the agent on this node",
                version=VERSION,
            )
        # Unknown non-critical fields are skipped: later minor additions stay readable.
    return TunnelHeader(
        target_ip=ip,
        target_port=port,
        source_workload=strings.get(T_SOURCE_WORKLOAD, ""),
        source_namespace=strings.get(T_SOURCE_NAMESPACE, ""),
        destination_service=strings.get(T_DESTINATION_SERVICE, ""),
        original_dst=original_dst,
    )


def decode_header(data: bytes | bytearray | memoryview) -> tuple[TunnelHeader, bytes]:
    """One-shot decode: the header at the start of ``data`` and the bytes after it."""
    decoder = HeaderDecoder()
    result = decoder.feed(data)
    if result is None:
        decoder.eof()
        raise AssertionError("BUG: HeaderDecoder.eof() did not raise on an incomplete header")
    return result


class HeaderDecoder:
    """Incremental request-header decoder; holds at most ``MAX_HEADER_LEN`` bytes."""

    __slots__ = ("_buf", "_total", "_done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._total: int | None = None
        self._done = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[TunnelHeader, bytes] | None:
        """Add ``data``; return ``(header, leftover)`` once complete, else ``None``."""
        if self._done:
            raise HeaderError("BUG: HeaderDecoder fed after it returned a header")
        buf = self._buf
        if self._total is None:
            need = _FIXED.size - len(buf)
            buf += data[:need]
            data = data[need:]
            self._total = _check_prefix(buf)
            if self._total is None:
                return None
        need = self._total - len(buf)
        buf += data[:need]
        if len(buf) < self._total:
            return None
        self._done = True
        header = _parse(memoryview(buf))
        leftover = bytes(data[need:])
        self._buf = bytearray()
        return header, leftover

    def eof(self) -> None:
        """The stream ended; raise ``TruncatedHeaderError`` unless a header was returned."""
        if not self._done:
            raise TruncatedHeaderError(
                f"connection closed after {len(self._buf)} bytes of the tunnel header"
            )


class Status(enum.IntEnum):
    """The server's answer to a tunnel header."""

    OK = 0
    REFUSED = 1
    """The application refused the connection or is unreachable; the client may try another endpoint."""
    FORBIDDEN = 2
    """Policy denied the source, or the target is not this pod or port."""
    BAD_HEADER = 3
    TIMEOUT = 4
    """Connecting to the application timed out; the client may try another endpoint."""
    INTERNAL = 5

    @property
    def retryable(self) -> bool:
        return self in (Status.REFUSED, Status.TIMEOUT)


def encode_response(status: Status) -> bytes:
    return _RESPONSE.pack(MAGIC, VERSION, int(status), 0)


class ResponseDecoder:
    """Incremental decoder of the server's 8-byte answer."""

    __slots__ = ("_buf", "_done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._done = False

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[Status | int, bytes] | None:
        """Return ``(status, leftover)`` once 8 bytes arrived; unknown codes come back as ``int``."""
        if self._done:
            raise HeaderError("BUG: ResponseDecoder fed after it returned a status")
        buf = self._buf
        need = RESPONSE_LEN - len(buf)
        buf += data[:need]
        n = min(len(buf), 4)
        if buf[:n] != MAGIC[:n]:
            raise MalformedHeaderError(
                f"tunnel peer answered {bytes(buf[:n])!r} instead of {MAGIC!r}; "
                "is something other than an ambit agent listening on port 15008?"
            )
        if len(buf) > 4 and buf[4] != VERSION:
            raise UnsupportedVersionError(
                f"tunnel peer answered with version {buf[4]}; this agent speaks {VERSION}", version=buf[4]
            )
        if len(buf) < RESPONSE_LEN:
            return None
        _, _, code, _ = _RESPONSE.unpack_from(buf)
        try:
            status: Status | int = Status(code)
        except ValueError:
            status = code
        self._done = True
        return status, bytes(data[need:])

    def eof(self) -> None:
        """The stream ended; raise ``TruncatedHeaderError`` unless a status was returned."""
        if self._done:
            return
        raise TruncatedHeaderError(
            f"tunnel peer closed the connection after {len(self._buf)} bytes of its answer"
        )
