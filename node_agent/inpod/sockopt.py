"""Socket options of the in-pod data path, and reading a redirected connection's destination.

- ``SO_MARK`` (0x539 on every agent socket) exempts the agent's own traffic from redirection;
- ``IP_TRANSPARENT`` lets a socket bind or accept for addresses that are not local;
- ``SO_ORIGINAL_DST`` reads, from conntrack, where a REDIRECTed connection was going.
"""
from __future__ import annotations

import errno
import socket
import sys

PROXY_MARK = 0x539
"""SO_MARK of every socket the agent opens in a pod; the redirection rules exempt it"""

SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; SOL_IP
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h; SOL_IPV6
_SOCKADDR_IN_SIZE = 16
_SOCKADDR_IN6_SIZE = 28


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The (ip, port) an accepted connection was addressed to before any NAT, from conntrack.

    For a REDIRECTed connection that is where the app was going; for one that reached the
    listener directly it equals ``sock.getsockname()``. None when conntrack does not track
    the connection at all.
    """
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_SIZE)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_SIZE)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return parse_sockaddr(raw)


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """Decode a kernel ``sockaddr_in``/``sockaddr_in6`` (family in host order, port big-endian)."""
    if len(raw) < 8:
        raise ValueError(f"sockaddr of {len(raw)} bytes is too short")
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raise ValueError(f"sockaddr of family {family} and {len(raw)} bytes is neither IPv4 nor IPv6")
