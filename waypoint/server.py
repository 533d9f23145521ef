"""The waypoint's tunnel listener (15008): node agents send it the connections of Services bound to it.

Per connection: the tunnel's server side as the waypoint's own identity (``accept_tunnel``: TLS 1.3,
a client certificate of the mesh, the header) -> the header's target must be a Service of this
namespace that is not bound to another waypoint -> answer ``OK`` -> then, by what the client
sends first (``detect``): HTTP/1.x and HTTP/2 with prior knowledge go to the L7 engine (``http``,
``waypoint.http_proxy``); anything else (TLS, or a client that waits for the server) is relayed as TCP to one of the Service's endpoints over a
new tunnel under the waypoint's identity (the node agent's ``open_tunnel`` and the one pump).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from node_agent.proxy.errors import UpstreamError
from node_agent.proxy.inbound import TunnelRefused, accept_tunnel
from node_agent.proxy.listener import Listener, ProxyInputs, connect_stream
from node_agent.proxy.model import Endpoint, ServiceTarget, Workload
from node_agent.proxy.outbound import open_tunnel
from node_agent.proxy.pump import Pump, PumpResult, Stream
from node_agent.proxy.records import ConnectionRecord, ResponseFlag, SecurityPolicy
from node_agent.proxy.tunnel import Status, TunnelHeader, encode_response
from node_agent.state.snapshot import Service

from waypoint.discovery import WaypointView
from waypoint.model import ServiceRef

REPORTER = "waypoint"
DETECT_TIMEOUT = 1.0
"""seconds to wait for the client's first bytes; a client that waits for the server gets TCP"""
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n"
_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"TRACE ", b"CONNECT ")


def detect(first: bytes) -> str:
    """``http2`` (prior-knowledge preface), ``http1`` (a request line's method) or ``tcp``."""
    if first.startswith(_HTTP2_PREFACE[: len(first)]) and len(first) >= 3:
        return "http2"
    if any(first.startswith(m) or m.startswith(first) for m in _HTTP_METHODS) and first:
        return "http1"
    return "tcp"


HttpHandler = Callable[[Stream, "Request"], Awaitable[None]]


class Request:
    """What the L7 engine is told about one tunnelled connection."""

    __slots__ = ("service", "port", "source_principal", "source_workload", "source_namespace", "protocol", "record")

    def __init__(self, *, service: Service, port: int, record: ConnectionRecord, protocol: str) -> None:
        self.service = service
        self.port = port
        self.record = record
        self.protocol = protocol
        self.source_principal = record.source_principal
        self.source_workload = record.source_workload_name
        self.source_namespace = record.source_namespace


class WaypointListener(Listener):
    kind = "waypoint"

    def __init__(
        self,
        *,
        inputs: ProxyInputs,
        workload: Workload,
        gateway: str,
        view: Callable[[], WaypointView],
        host: str,
        port: int,
        http: HttpHandler | None = None,
    ) -> None:
        super().__init__(inputs=inputs, workload=workload, netns=None, host=host, port=port)
        self.gateway = gateway
        self.view = view
        self._http = http

    def set_http(self, http: HttpHandler) -> None:
        """Wire the L7 engine (it needs the listener to connect, so it comes after construction)."""
        self._http = http

    async def _handle(self, stream: Stream) -> None:
        transport = stream.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        record = ConnectionRecord(listener=self.kind, reporter=REPORTER, source_ip=peer[0] if peer else "")
        record.security_policy = SecurityPolicy.MUTUAL_TLS
        record.waypoint = f"{self.workload.namespace}/{self.gateway}"
        try:
            header, source = await accept_tunnel(self.inputs, stream, identity=self.workload.identity, record=record)
            record.source_workload_name = header.source_workload  # the agent's claim, for metrics only
            record.source_namespace = source.namespace  # authenticated, unlike the header's claim
            service = self._service(header, record)
        except TunnelRefused as refused:
            record.fail(refused.flag, refused.detail)
            refused.answer(stream)
            self._open(record)
            self._close(record, PumpResult())
            return
        stream.write(encode_response(Status.OK))
        first = await self._first_bytes(stream)
        protocol = detect(first)
        if protocol in ("http1", "http2") and self._http is not None:
            self._open(record)
            try:
                await self._http(stream, Request(service=service, port=header.target_port, record=record,
                                                 protocol=protocol))
            finally:
                self._close(record, PumpResult())
            return
        await self._relay(stream, service, header.target_port, record)

    def _service(self, header: TunnelHeader, record: ConnectionRecord) -> Service:
        snap = self.view().snapshot
        svc = snap.services_by_vip.get(header.target_ip)
        record.original_dst = (header.target_ip, header.target_port)
        if svc is None or svc.namespace != self.workload.namespace:
            raise TunnelRefused(Status.FORBIDDEN, ResponseFlag.NO_ROUTE,
                                f"{header.target_ip}:{header.target_port} is not a service of namespace "
                                f"{self.workload.namespace}, which waypoint {self.gateway} serves")
        record.destination_service = ServiceTarget(
            name=svc.name, namespace=svc.namespace, hostname=f"{svc.hostname}.{snap.trust_domain}",
            vip=header.target_ip, port=header.target_port)
        if svc.gateway or (svc.waypoint and svc.waypoint != self.gateway):
            raise TunnelRefused(Status.FORBIDDEN, ResponseFlag.NO_ROUTE,
                                f"service {svc.namespace}/{svc.name} is not bound to waypoint {self.gateway}")
        if svc.port(header.target_port) is None:
            raise TunnelRefused(Status.REFUSED, ResponseFlag.NO_ROUTE,
                                f"service {svc.namespace}/{svc.name} has no port {header.target_port}")
        return svc

    @staticmethod
    async def _first_bytes(stream: Stream) -> bytes:
        try:
            async with asyncio.timeout(DETECT_TIMEOUT):
                first = await stream.read_some()
        except TimeoutError:
            return b""
        except ConnectionError:
            return b""
        stream.unread(first)
        return first

    def endpoints(self, service: Service, port: int) -> list[Endpoint]:
        """The service's ready endpoints for ``port`` that are pods (for the L7 engine too)."""
        snap = self.view().snapshot
        return [Endpoint(workload=snap.mesh_by_ip[ep.ip], port=target)
                for ep, target in service.targets(port) if ep.ip in snap.mesh_by_ip]

    async def connect(self, endpoint: Endpoint, *, service: ServiceTarget | None, record: ConnectionRecord) -> Stream:
        """A stream to ``endpoint``'s application: a tunnel under the waypoint's identity, or plain TCP
        when the pod has no tunnel listener (refused at 15008: it is not in the mesh). Raises
        ``UpstreamError``.

        The waypoint cannot read Namespaces (its RBAC stops at its own namespace), so it does not
        know which pods are enrolled; it asks the pod. That leaks nothing: an enrolled pod whose
        agent is down refuses the plaintext connection too (its rules redirect to a closed port),
        and one whose agent is up lets only the waypoint's tunnel through."""
        target = endpoint.workload
        header = TunnelHeader(target_ip=target.ip, target_port=endpoint.port,
                              source_workload=self.workload.workload_name, source_namespace=self.workload.namespace,
                              destination_service=service.hostname if service else "",
                              original_dst=(service.vip, service.port) if service else None)
        try:
            stream = await open_tunnel(self.inputs, netns=None, source=self.workload.identity, bind_ip=None,
                                       peer=target, header=header, record=record)
        except UpstreamError as exc:
            if not isinstance(exc.__cause__, ConnectionRefusedError):
                raise
        else:
            record.security_policy = SecurityPolicy.MUTUAL_TLS
            return stream
        try:
            stream = await connect_stream(self.inputs, netns=None, host=target.ip, port=endpoint.port, bind_ip=None)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"connection to {target.namespace}/{target.name} at {target.ip}:{endpoint.port} "
                                f"failed: {exc}") from exc
        record.security_policy = SecurityPolicy.NONE
        return stream

    async def _relay(self, client: Stream, service: Service, port: int, record: ConnectionRecord) -> None:
        inputs = self.inputs
        by_key = {ep.key: ep for ep in self.endpoints(service, port)}
        tried: list[tuple[str, int]] = []
        upstream: Stream | None = None
        error: UpstreamError | None = None
        for _ in range(inputs.settings.max_endpoint_attempts):
            key = inputs.balancer.pick(list(by_key), exclude=tried)
            if key is None:
                break
            tried.append(key)
            inputs.balancer.started(key)
            started = time.monotonic()
            try:
                upstream = await self.connect(by_key[key], service=record.destination_service, record=record)
            except UpstreamError as exc:
                inputs.balancer.failed(key, elapsed=time.monotonic() - started)
                inputs.balancer.finished(key)
                error = exc
                if not exc.retryable:
                    break
                continue
            inputs.balancer.observe(key, time.monotonic() - started)
            record.destination = by_key[key].workload
            record.destination_address = key
            record.destination_principal = by_key[key].workload.identity.uri
            break
        if upstream is None:
            if error is None:
                record.fail(ResponseFlag.NO_ROUTE, f"service {service.namespace}/{service.name} port {port} "
                                                   "has no ready endpoints")
            else:
                record.fail(error.flag, str(error))
            client.abort()
            self._open(record)
            self._close(record, PumpResult())
            return
        self._open(record)
        pump = Pump(client, upstream)
        try:
            await pump.run()
        finally:
            inputs.balancer.finished(record.destination_address)
            self._close(record, pump.result())


class SnapshotBackends:
    """``waypoint.model.Backends`` and ``Connector`` over the listener's view: endpoints and
    ``appProtocol`` from the current snapshot, connections through ``WaypointListener.connect``."""

    __slots__ = ("_listener",)

    def __init__(self, listener: WaypointListener) -> None:
        self._listener = listener

    def _service(self, ref: ServiceRef) -> Service | None:
        return self._listener.view().snapshot.services_by_name.get((ref.namespace, ref.name))

    def endpoints(self, service: ServiceRef) -> list[Endpoint] | None:
        svc = self._service(service)
        if svc is None or svc.port(service.port) is None:
            return None
        return self._listener.endpoints(svc, service.port)

    def app_protocol(self, service: ServiceRef) -> str:
        svc = self._service(service)
        port = svc.port(service.port) if svc is not None else None
        return port.app_protocol if port is not None else ""

    async def connect(self, endpoint: Endpoint, *, service: ServiceRef) -> Stream:
        svc = self._service(service)
        target = None
        if svc is not None:
            td = self._listener.view().snapshot.trust_domain
            if svc.cluster_ip not in ("", "None"):  # headless: no address for the header
                target = ServiceTarget(name=svc.name, namespace=svc.namespace, hostname=f"{svc.hostname}.{td}",
                                       vip=svc.cluster_ip, port=service.port)
        record = ConnectionRecord(listener=self._listener.kind, reporter=REPORTER)
        return await self._listener.connect(endpoint, service=target, record=record)
