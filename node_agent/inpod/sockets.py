"""The proxy's ``SocketFactory`` for real pods: upstream sockets opened inside a pod's netns.

A socket stays in the network namespace it was created in, so only its creation hops to the
netns worker thread; ``connect`` then runs on the event loop. Every socket carries SO_MARK
0x539, so the pod's redirection rules let it through.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket

from node_agent.inpod.netns import NetnsWorker, PodNetns
from node_agent.inpod.sockopt import PROXY_MARK, SO_MARK
from node_agent.proxy.model import Workload


class InpodSocketFactory:
    def __init__(self, worker: NetnsWorker) -> None:
        self._worker = worker
        self._local: dict[str, PodNetns] = {}

    # the capture manager keeps this map: which workloads this agent holds, and their netns
    def add_local(self, uid: str, ns: PodNetns) -> None:
        self._local[uid] = ns

    def remove_local(self, uid: str) -> None:
        self._local.pop(uid, None)

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
        else:
            if not isinstance(netns, PodNetns):
                raise TypeError(f"BUG: netns handle {netns!r} is not a PodNetns")
            sock = await self._worker.connect_socket(netns, family=family, mark=PROXY_MARK, bind_ip=bind_ip)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock
