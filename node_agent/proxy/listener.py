"""What every listener shares: the injected inputs, accepting, per-connection tasks, draining.

A listener belongs to one pod: it accepts on a socket the in-pod layer bound inside that pod's
network namespace (or on a host/port for tests), and runs one named task per connection. Task
references are kept; unexpected exceptions are logged; ``stop`` drains with a deadline, then
cancels (which aborts both sides of each relay).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

from node_agent.proxy.balancer import PeakEwmaBalancer
from node_agent.proxy.model import AllowAll, Authorizer, Resolver, Workload
from node_agent.proxy.pump import PumpResult, Stream
from node_agent.proxy.records import ConnectionRecord, ConnectionRegistry, NullObserver, Observer
from node_agent.proxy.settings import ProxySettings
from node_agent.proxy.sockets import NetnsHandle, OriginalDst, SocketFactory, so_original_dst
from node_agent.proxy.tls import TlsContexts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyInputs:
    """Everything the listeners of all pods on this node share; built once by the agent."""

    node_name: str
    resolver: Resolver
    sockets: SocketFactory
    tls: TlsContexts
    settings: ProxySettings = field(default_factory=ProxySettings)
    balancer: PeakEwmaBalancer[tuple[str, int]] = field(default_factory=PeakEwmaBalancer)
    observer: Observer = field(default_factory=NullObserver)
    registry: ConnectionRegistry = field(default_factory=ConnectionRegistry)
    authorizer: Authorizer = field(default_factory=AllowAll)


class Listener:
    """Base of the three listeners; subclasses implement ``_handle``."""

    kind = "listener"
    _pause_accepted = False  # keep accepted sockets unread until the relay starts

    def __init__(
        self,
        *,
        inputs: ProxyInputs,
        workload: Workload,
        netns: NetnsHandle | None,
        sock: socket.socket | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        if (sock is None) == (host is None or port is None):
            raise ValueError(f"BUG: a {self.kind} listener needs either a listening socket or host and port")
        self.inputs = inputs
        self.workload = workload
        self.netns = netns
        self._sock = sock
        self._host, self._port = host, port
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError(f"BUG: {self.kind} listener of {self.workload.name} is not started")
        return self._server.sockets[0].getsockname()[:2]

    @property
    def open_connections(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> Stream:
            return Stream(on_connected=self._accepted, paused=self._pause_accepted)

        if self._sock is not None:
            self._sock.setblocking(False)
            self._server = await loop.create_server(factory, sock=self._sock, backlog=1024)
        else:
            self._server = await loop.create_server(factory, self._host, self._port, backlog=1024,
                                                    reuse_address=True)
        log.debug("%s listener of %s/%s on %s", self.kind, self.workload.namespace, self.workload.name,
                  self.address)

    async def stop(self, *, drain: float | None = None) -> None:
        """Stop accepting; give open connections ``drain`` seconds (settings' default), then abort them."""
        if self._server is not None:
            self._server.close()
        deadline = self.inputs.settings.drain_timeout if drain is None else drain
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _accepted(self, stream: Stream) -> None:
        task = asyncio.get_running_loop().create_task(self._run(stream), name=f"ambit-{self.kind}-{id(stream):x}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, stream: Stream) -> None:
        try:
            await self._handle(stream)
        except asyncio.CancelledError:
            stream.abort()
            raise
        except Exception:
            log.exception("BUG: %s connection handler of %s/%s failed", self.kind, self.workload.namespace,
                          self.workload.name)
            stream.abort()

    async def _handle(self, stream: Stream) -> None:
        raise NotImplementedError

    # helpers shared by subclasses

    def _open(self, record: ConnectionRecord) -> None:
        self.inputs.registry.add(record)
        self.inputs.observer.opened(record)

    def _close(self, record: ConnectionRecord, result: PumpResult) -> None:
        self.inputs.registry.discard(record)
        self.inputs.observer.closed(record, result)


async def connect_stream(
    inputs: ProxyInputs, *, netns: NetnsHandle | None, host: str, port: int, bind_ip: str | None
) -> Stream:
    """A ``Stream`` connected to ``host:port`` through the socket factory, within the connect timeout."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(inputs.settings.connect_timeout):
        sock = await inputs.sockets.connect(netns=netns, host=host, port=port, bind_ip=bind_ip)
        try:
            _, stream = await loop.create_connection(Stream, sock=sock)
        except BaseException:
            sock.close()
            raise
    return stream


class RedirectedListener(Listener):
    """A listener whose connections were REDIRECTed to it (15001, 15006): it asks where they were going."""

    _pause_accepted = True

    def __init__(
        self,
        *,
        inputs: ProxyInputs,
        workload: Workload,
        netns: NetnsHandle | None,
        sock: socket.socket | None = None,
        host: str | None = None,
        port: int | None = None,
        original_dst: OriginalDst = so_original_dst,
    ) -> None:
        """``original_dst`` says where a redirected connection was going (``SO_ORIGINAL_DST`` with
        iptables/nftables; a redirection backend that records it elsewhere passes its own)."""
        super().__init__(inputs=inputs, workload=workload, netns=netns, sock=sock, host=host, port=port)
        self._original_dst = original_dst
