"""The three listeners of one enrolled pod, started and stopped together."""
from __future__ import annotations

import asyncio
import socket

from node_agent.proxy.inbound import InboundListener
from node_agent.proxy.inbound_plaintext import InboundPlaintextListener
from node_agent.proxy.listener import ProxyInputs
from node_agent.proxy.model import Workload
from node_agent.proxy.outbound import OutboundListener
from node_agent.proxy.sockets import NetnsHandle, OriginalDst, so_original_dst


class PodProxy:
    """Outbound (15001), inbound plaintext (15006) and tunnel (15008) for ``workload``.

    The sockets are already bound and listening inside the pod's network namespace (the in-pod
    layer creates them); ``netns`` is what the socket factory needs to open upstream sockets there.
    """

    def __init__(
        self,
        *,
        inputs: ProxyInputs,
        workload: Workload,
        netns: NetnsHandle | None,
        outbound: socket.socket,
        inbound_plaintext: socket.socket,
        inbound: socket.socket,
        original_dst: OriginalDst = so_original_dst,
    ) -> None:
        self.workload = workload
        self.outbound = OutboundListener(inputs=inputs, workload=workload, netns=netns, sock=outbound,
                                         original_dst=original_dst)
        self.inbound_plaintext = InboundPlaintextListener(inputs=inputs, workload=workload, netns=netns,
                                                          sock=inbound_plaintext, original_dst=original_dst)
        self.inbound = InboundListener(inputs=inputs, workload=workload, netns=netns, sock=inbound)
        self._listeners = (self.inbound, self.inbound_plaintext, self.outbound)

    async def start(self) -> None:
        started = []
        try:
            for listener in self._listeners:
                await listener.start()
                started.append(listener)
        except BaseException:
            for listener in started:
                await listener.stop(drain=0.0)
            raise

    async def stop(self, *, drain: float | None = None) -> None:
        """Stop accepting on all three, drain open connections up to ``drain`` seconds, then abort them."""
        await asyncio.gather(*(listener.stop(drain=drain) for listener in self._listeners))

    @property
    def open_connections(self) -> int:
        return sum(listener.open_connections for listener in self._listeners)
