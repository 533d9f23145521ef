"""The proxy's ``SocketFactory`` for real pods: upstream sockets opened inside a pod's netns.

A socket stays in the network namespace it was created in, so only its creation hops to the
netns worker thread; ``connect`` then runs on the event loop. Every socket carries SO_MARK
0x539, so the pod's redirection rules let it through.

Creating one socket per connection on the worker thread cost ~18% of the agent's CPU under
connection churn, so each pod netns the proxy connects from keeps a small pool of unconnected,
marked sockets, refilled in batches (one thread hop per ``POOL_SIZE`` connections). Pools are
made on first use and closed when the pod is released.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from node_agent.inpod.netns import NetnsWorker, PodNetns
from node_agent.inpod.sockopt import PROXY_MARK, SO_MARK
from node_agent.proxy.model import Workload

log = logging.getLogger(__name__)

POOL_SIZE = 16
"""sockets made per refill; a refill starts when a pool falls below half of it"""


class _Pool:
    __slots__ = ("socks", "refill")

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.refill: asyncio.Task | None = None


class InpodSocketFactory:
    def __init__(self, worker: NetnsWorker) -> None:
        self._worker = worker
        self._local: dict[str, PodNetns] = {}
        self._pooled: set[PodNetns] = set()  # the local pods' netns (identity-hashed handles)
        self._pools: dict[tuple[PodNetns, int], _Pool] = {}

    # the capture manager keeps this map: which workloads this agent holds, and their netns
    def add_local(self, uid: str, ns: PodNetns) -> None:
        self._local[uid] = ns
        self._pooled.add(ns)

    def remove_local(self, uid: str) -> None:
        ns = self._local.pop(uid, None)
        if ns is None:
            return
        self._pooled.discard(ns)
        for key in [k for k in self._pools if k[0] is ns]:
            pool = self._pools.pop(key)
            if pool.refill is not None:
                pool.refill.cancel()
            for sock in pool.socks:
                sock.close()
            pool.socks.clear()

    def local_netns(self, workload: Workload) -> PodNetns | None:
        return self._local.get(workload.uid)

    async def connect(self, *, netns: object | None, host: str, port: int, bind_ip: str | None) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        if netns is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, PROXY_MARK)
            if bind_ip:
                sock.bind((bind_ip, 0))
        elif not isinstance(netns, PodNetns):
            raise TypeError(f"BUG: netns handle {netns!r} is not a PodNetns")
        elif bind_ip is None and netns in self._pooled:
            sock = await self._take(netns, family)
        else:
            sock = await self._worker.connect_socket(netns, family=family, mark=PROXY_MARK, bind_ip=bind_ip)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _take(self, ns: PodNetns, family: int) -> socket.socket:
        pool = self._pools.get((ns, family))
        if pool is None:
            pool = self._pools[(ns, family)] = _Pool()
        if len(pool.socks) < POOL_SIZE // 2 and pool.refill is None:
            pool.refill = asyncio.create_task(self._refill(ns, family, pool), name="netns-socket-pool-refill")
        if pool.socks:
            return pool.socks.pop()
        return await self._worker.connect_socket(ns, family=family, mark=PROXY_MARK)

    async def _refill(self, ns: PodNetns, family: int, pool: _Pool) -> None:
        try:
            made = await self._worker.connect_sockets(ns, count=POOL_SIZE - len(pool.socks), family=family)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the pod may be going away; connections fall back to one-off sockets
            log.debug("refilling the socket pool of %s: %s", ns.path, exc)
            return
        finally:
            pool.refill = None
        if self._pools.get((ns, family)) is pool:
            pool.socks.extend(made)
        else:  # released while we were making them
            for sock in made:
                sock.close()
