"""Inbound plaintext (15006): connections to an enrolled pod from sources outside the mesh.

The in-pod rules redirect inbound TCP (except 15008) here; the original destination must be this
pod on a port that is not the proxy's own, and policy must allow an unauthenticated source (the
policy layer can refuse everything here for STRICT mTLS). Then connect to the application inside the
pod's namespace and pump, reported with security policy ``none``.
"""
from __future__ import annotations

import socket

from node_agent.proxy.listener import RedirectedListener, connect_stream
from node_agent.proxy.pump import Pump, PumpResult, Stream
from node_agent.proxy.records import ConnectionRecord, Reporter, ResponseFlag, SecurityPolicy


class InboundPlaintextListener(RedirectedListener):
    kind = "inbound_plaintext"

    async def _handle(self, client: Stream) -> None:
        transport = client.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        record = ConnectionRecord(listener=self.kind, reporter=Reporter.DESTINATION,
                                  source_ip=peer[0] if peer else "")
        record.set_source(self.inputs.resolver.workload_by_ip(record.source_ip))
        record.destination = self.workload
        record.destination_principal = self.workload.identity.uri
        record.security_policy = SecurityPolicy.NONE
        app = await self._connect(transport.get_extra_info("socket"), record)
        self._open(record)
        if app is None:
            client.abort()
            self._close(record, PumpResult())
            return
        pump = Pump(client, app)
        try:
            await pump.run()
        finally:
            self._close(record, pump.result())

    async def _connect(self, sock: socket.socket, record: ConnectionRecord) -> Stream | None:
        try:
            ip, port = self._original_dst(sock)
        except OSError as exc:
            record.fail(ResponseFlag.NO_ROUTE, f"no original destination ({exc}); is the inbound redirection installed?")
            return None
        record.original_dst = record.destination_address = (ip, port)
        if ip not in self.workload.ips or port in self.inputs.settings.reserved_ports:
            record.fail(ResponseFlag.NO_ROUTE, f"{ip}:{port} is not an application port of pod "
                                               f"{self.workload.namespace}/{self.workload.name}")
            return None
        guard = self.inputs.resolver.waypoint_guard(ip, port)
        if guard is not None:
            record.fail(ResponseFlag.WAYPOINT_BYPASS, guard.refusal(self.workload, port))
            return None
        if not self.inputs.authorizer.allows(source=None, source_ip=record.source_ip, destination=self.workload,
                                             port=port):
            record.fail(ResponseFlag.DENIED, f"policy denies plaintext access to port {port}")
            return None
        try:
            return await connect_stream(self.inputs, netns=self.netns, host=ip, port=port, bind_ip=None)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
            record.fail(ResponseFlag.UPSTREAM_FAILURE, f"application port {port} failed: {reason}")
            return None
