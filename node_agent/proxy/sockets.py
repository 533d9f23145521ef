"""Opening upstream sockets, and asking the kernel where a redirected connection was going.

- ``SocketFactory`` (injected; the in-pod layer's implementation opens the socket inside a pod's
  network namespace with SO_MARK 0x539 so redirection skips it).
- ``HostSocketFactory`` connects from the agent's own namespace: loopback tests, and any setup
  where no namespace switch is needed.
- ``original_dst``/``so_original_dst`` read the pre-REDIRECT destination (``SO_ORIGINAL_DST``, IPv4
  and IPv6): the one place the agent asks conntrack.
"""
from __future__ import annotations

import asyncio
import errno
import socket
import sys
from collections.abc import Callable
from typing import Protocol, TypeAlias

from node_agent.proxy.model import Workload, WorkloadUid

NetnsHandle: TypeAlias = object
"""Opaque handle of a pod's network namespace; only the SocketFactory looks inside."""

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h (SOL_IP); IP6T_SO_ORIGINAL_DST (SOL_IPV6) has the same value
SOL_IPV6 = 41
_SOCKADDR_IN_SIZE = 16
_SOCKADDR_IN6_SIZE = 28

OriginalDst = Callable[[socket.socket], tuple[str, int]]
"""How a listener learns a redirected connection's original destination."""


class SocketFactory(Protocol):
    async def connect(self, *, netns: NetnsHandle | None, host: str, port: int, bind_ip: str | None) -> socket.socket:
        """A connected, non-blocking TCP socket to ``host:port`` opened inside ``netns`` (None: the agent's own).

        ``bind_ip`` is the local address to use (the source pod's IP), None to let the kernel choose.
        Raises ``OSError`` on failure; the caller applies its own timeout.
        """
        ...

    def local_netns(self, workload: Workload) -> NetnsHandle | None:
        """The netns of ``workload`` if it is enrolled on this node and its namespace is open, else None."""
        ...


class HostSocketFactory:
    """Connects from the agent's own network namespace; pods 'on this node' are registered by hand."""

    __slots__ = ("_local",)

    def __init__(self) -> None:
        self._local: dict[WorkloadUid, NetnsHandle] = {}

    def add_local(self, workload: Workload, handle: NetnsHandle = "host") -> None:
        self._local[workload.uid] = handle

    def remove_local(self, workload: Workload) -> None:
        self._local.pop(workload.uid, None)

    def local_netns(self, workload: Workload) -> NetnsHandle | None:
        return self._local.get(workload.uid)

    async def connect(self, *, netns: NetnsHandle | None, host: str, port: int, bind_ip: str | None) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if bind_ip is not None:
                sock.bind((bind_ip, 0))
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The (ip, port) an accepted connection was addressed to before any NAT, from conntrack.

    For a REDIRECTed connection that is where the app was going; for one that reached the
    listener directly it equals ``sock.getsockname()``. None when conntrack does not track
    the connection at all.
    """
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, _SOCKADDR_IN6_SIZE)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_SIZE)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return parse_sockaddr(raw)


def so_original_dst(sock: socket.socket) -> tuple[str, int]:
    """``original_dst`` for a listener (``OriginalDst``): ``OSError`` when there was none."""
    dst = original_dst(sock)
    if dst is None:
        raise OSError(errno.ENOENT, "no original destination (the connection was not redirected)")
    return dst


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
