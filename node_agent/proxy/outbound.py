"""Outbound (15001): connections the pod's applications open, redirected here by the in-pod rules.

Per connection: the original destination (``SO_ORIGINAL_DST``) -> ``Resolver.route`` ->
- mesh destination: pick an endpoint (P2C over peak-EWMA); if it runs on this node, connect straight
  to the application inside that pod's namespace after the same identity and policy checks the
  destination's tunnel listener would make; otherwise open mTLS (TLS 1.3, the *source* workload's
  certificate, the server must prove the destination's SPIFFE ID) to ``<pod ip>:15008`` from this
  pod's namespace, send the tunnel header and wait for the answer. A failed endpoint is retried on
  another (up to ``max_endpoint_attempts``) before the application sees anything;
- non-mesh destination (``Passthrough``, or a not-enrolled endpoint): plain TCP from the pod;
- then the pump. Any failure before that closes the application's connection: a mesh destination
  never falls back to plaintext.
"""
from __future__ import annotations

import asyncio
import ssl
import time

from node_agent.identity.spiffe import SpiffeId
from node_agent.proxy.errors import (
    HeaderError,
    PeerIdentityError,
    TlsSetupError,
    UpstreamError,
)
from node_agent.proxy.listener import ProxyInputs, RedirectedListener, connect_stream
from node_agent.proxy.model import Endpoint, MeshRoute, Passthrough, Workload
from node_agent.proxy.pump import Pump, PumpResult, Stream, StreamClosedError
from node_agent.proxy.records import ConnectionRecord, Reporter, ResponseFlag, SecurityPolicy
from node_agent.proxy.sockets import NetnsHandle
from node_agent.proxy.tls import client_peer_check, describe_tls_error
from node_agent.proxy.tunnel import ResponseDecoder, Status, TunnelHeader, encode_header


class OutboundListener(RedirectedListener):
    kind = "outbound"

    async def _handle(self, client: Stream) -> None:
        transport = client.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        record = ConnectionRecord(listener=self.kind, reporter=Reporter.SOURCE, source_ip=peer[0] if peer else "")
        record.set_source(self.workload)
        record.source_principal = self.workload.identity.uri
        try:
            upstream, extra = await self._connect(client, record)
        except UpstreamError as exc:
            record.fail(exc.flag, str(exc))
            client.abort()  # fail closed: the application sees a reset, never plaintext to a mesh peer
            self._open(record)
            self._close(record, PumpResult())
            return
        self._open(record)
        if extra is not None:
            self.inputs.observer.opened(extra)
        pump = Pump(client, upstream)
        try:
            await pump.run()
        finally:  # also when cancelled: the record is closed with what was relayed so far
            result = pump.result()
            if record.destination is not None and record.destination_address is not None:
                self.inputs.balancer.finished(record.destination_address)
            self._close(record, result)
            if extra is not None:
                self.inputs.observer.closed(extra, result)

    async def _connect(self, client: Stream, record: ConnectionRecord) -> tuple[Stream, ConnectionRecord | None]:
        """Connect upstream; returns the stream and, for same-node connections, the destination's record."""
        transport = client.transport
        assert transport is not None
        try:
            dst = self._original_dst(transport.get_extra_info("socket"))
        except OSError as exc:
            raise UpstreamError(f"no original destination for the connection ({exc}); is redirection installed "
                                "with REDIRECT to this listener?", flag=ResponseFlag.NO_ROUTE) from exc
        record.original_dst = dst
        if dst[1] in self.inputs.settings.reserved_ports and (dst[0] in self.workload.ips or
                                                               dst[0].startswith("127.")):
            raise UpstreamError(f"connection to the proxy's own port {dst[0]}:{dst[1]} refused (it would loop)",
                                flag=ResponseFlag.NO_ROUTE, retryable=False)
        route = self.inputs.resolver.route(source=self.workload, ip=dst[0], port=dst[1])
        record.destination_service = route.service
        if isinstance(route, Passthrough):
            record.destination_address = dst
            return await self._plain(dst[0], dst[1], what="passthrough destination"), None
        return await self._mesh(route, record, dst)

    async def _plain(self, host: str, port: int, *, what: str) -> Stream:
        try:
            return await connect_stream(self.inputs, netns=self.netns, host=host, port=port, bind_ip=None)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"connection to {what} {host}:{port} failed: {_oserror(exc)}") from exc

    async def _mesh(
        self, route: MeshRoute, record: ConnectionRecord, dst: tuple[str, int]
    ) -> tuple[Stream, ConnectionRecord | None]:
        if not route.endpoints:
            name = route.service.hostname if route.service else f"{dst[0]}:{dst[1]}"
            if route.waypoint:
                raise UpstreamError(f"{name} is bound to waypoint {route.waypoint} (label ambit.dev/use-waypoint), "
                                    "which has no ready pod; the connection is refused, not sent around it",
                                    flag=ResponseFlag.WAYPOINT_NOT_READY, retryable=False)
            raise UpstreamError(f"{name} has no ready endpoints", flag=ResponseFlag.NO_ROUTE, retryable=False)
        inputs = self.inputs
        by_key = {ep.key: ep for ep in route.endpoints}
        keys = list(by_key)
        tried: list[tuple[str, int]] = []
        last: UpstreamError | None = None
        for _ in range(inputs.settings.max_endpoint_attempts):
            key = inputs.balancer.pick(keys, exclude=tried)
            if key is None:
                break
            tried.append(key)
            endpoint = by_key[key]
            inputs.balancer.started(key)
            started = time.monotonic()
            try:
                stream, extra = await self._endpoint(endpoint, route, record, dst)
            except UpstreamError as exc:
                inputs.balancer.failed(key, elapsed=time.monotonic() - started)
                inputs.balancer.finished(key)
                last = exc
                if not exc.retryable:
                    break
                continue
            inputs.balancer.observe(key, time.monotonic() - started)
            record.destination = endpoint.workload
            record.destination_address = key
            return stream, extra
        assert last is not None
        if len(tried) > 1:
            raise UpstreamError(f"{len(tried)} endpoints failed; last: {last}", flag=last.flag) from last
        raise last

    async def _endpoint(
        self, endpoint: Endpoint, route: MeshRoute, record: ConnectionRecord, dst: tuple[str, int]
    ) -> tuple[Stream, ConnectionRecord | None]:
        target = endpoint.workload
        if route.waypoint:
            return await self._to_waypoint(endpoint, route, dst, record), None
        if target.node == self.inputs.node_name and target.enrolled:
            stream = await self._same_node(endpoint)
            record.security_policy = SecurityPolicy.MUTUAL_TLS
            record.destination_principal = target.identity.uri
            extra = record.copy(reporter=Reporter.DESTINATION)
            extra.destination = target
            extra.destination_address = endpoint.key
            return stream, extra
        if not target.enrolled:
            record.security_policy = SecurityPolicy.NONE
            return await self._plain(target.ip, endpoint.port, what=f"pod {target.namespace}/{target.name}"), None
        stream = await self._tunnel(endpoint, route, dst, record)
        record.security_policy = SecurityPolicy.MUTUAL_TLS
        record.destination_principal = target.identity.uri
        return stream, None

    async def _to_waypoint(
        self, endpoint: Endpoint, route: MeshRoute, dst: tuple[str, int], record: ConnectionRecord
    ) -> Stream:
        """Tunnel to a waypoint pod (always over mTLS: the waypoint is not one of our captured pods);
        the header names the service as the application dialled it, the waypoint picks the endpoint."""
        service = route.service
        assert service is not None, "BUG: a waypoint route without a service"
        header = TunnelHeader(
            target_ip=service.vip,
            target_port=service.port,
            source_workload=self.workload.workload_name,
            source_namespace=self.workload.namespace,
            destination_service=service.hostname,
            original_dst=dst,
        )
        stream = await open_tunnel(self.inputs, netns=self.netns, source=self.workload.identity,
                                   bind_ip=self.workload.ip, peer=endpoint.workload, header=header, record=record)
        record.security_policy = SecurityPolicy.MUTUAL_TLS
        record.destination_principal = endpoint.workload.identity.uri
        record.waypoint = route.waypoint
        return stream

    async def _same_node(self, endpoint: Endpoint) -> Stream:
        """Both pods are ours: no TLS, but the checks the destination's 15008 listener would make."""
        target = endpoint.workload
        if endpoint.port in self.inputs.settings.reserved_ports:
            raise UpstreamError(f"port {endpoint.port} of {target.namespace}/{target.name} is the proxy's own",
                                flag=ResponseFlag.DENIED, retryable=False)
        guard = self.inputs.resolver.waypoint_guard(target.ip, endpoint.port)
        if guard is not None and self.workload.identity.uri not in guard.identities:
            raise UpstreamError(guard.refusal(target, endpoint.port),
                                flag=ResponseFlag.WAYPOINT_BYPASS, retryable=False)
        if not self.inputs.authorizer.allows(source=self.workload.identity, source_ip=self.workload.ip,
                                             destination=target, port=endpoint.port):
            raise UpstreamError(f"policy denies {self.workload.identity} access to "
                                f"{target.namespace}/{target.name}:{endpoint.port}",
                                flag=ResponseFlag.DENIED, retryable=False)
        netns = self.inputs.sockets.local_netns(target)
        if netns is None:
            raise UpstreamError(f"pod {target.namespace}/{target.name} runs on this node but is not enrolled here "
                                "(yet); its in-pod setup may be pending")
        try:
            return await connect_stream(self.inputs, netns=netns, host=target.ip, port=endpoint.port, bind_ip=None)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"connection to {target.namespace}/{target.name} at {target.ip}:{endpoint.port} "
                                f"failed: {_oserror(exc)}") from exc

    async def _tunnel(
        self, endpoint: Endpoint, route: MeshRoute, dst: tuple[str, int], record: ConnectionRecord
    ) -> Stream:
        target = endpoint.workload
        header = TunnelHeader(
            target_ip=target.ip,
            target_port=endpoint.port,
            source_workload=self.workload.workload_name,
            source_namespace=self.workload.namespace,
            destination_service=route.service.hostname if route.service else "",
            original_dst=dst,
        )
        return await open_tunnel(self.inputs, netns=self.netns, source=self.workload.identity,
                                 bind_ip=self.workload.ip, peer=target, header=header, record=record)


async def open_tunnel(
    inputs: ProxyInputs,
    *,
    netns: NetnsHandle | None,
    source: SpiffeId,
    bind_ip: str | None,
    peer: Workload,
    header: TunnelHeader,
    record: ConnectionRecord,
) -> Stream:
    """mTLS to ``<peer ip>:15008`` as ``source`` (the peer must prove its own SPIFFE ID), send
    ``header``, wait for the answer; the stream is ready for the pump. Raises ``UpstreamError``.

    Used by the node agent's outbound listener and by the waypoint (to reach endpoints)."""
    address = f"{peer.ip}:{inputs.settings.tunnel_port}"
    try:
        client_tls = inputs.tls.client(source)
    except TlsSetupError as exc:
        raise UpstreamError(str(exc), retryable=False) from exc
    try:
        stream = await connect_stream(inputs, netns=netns, host=peer.ip,
                                      port=inputs.settings.tunnel_port, bind_ip=bind_ip)
    except (OSError, TimeoutError) as exc:
        raise UpstreamError(f"connection to {address} failed: {_oserror(exc)}; is the agent on node "
                            f"{peer.node} running, and port {inputs.settings.tunnel_port} allowed?") from exc
    session_key = (peer.ip, peer.identity)
    try:
        async with asyncio.timeout(inputs.settings.handshake_timeout):
            tls = await stream.start_tls(client_tls.context, server_side=False,
                                         session=client_tls.session(session_key),
                                         timeout=inputs.settings.handshake_timeout)
            record.tls_resumed = tls.session_reused
            client_peer_check(tls, expected=peer.identity, address=address)
            stream.write(encode_header(header))
            decoder = ResponseDecoder()
            while True:
                data = await stream.read_some()
                if not data:
                    decoder.eof()
                answer = decoder.feed(data)
                if answer is not None:
                    break
        status, leftover = answer
        client_tls.remember(session_key, tls)
    except PeerIdentityError as exc:
        stream.abort()
        client_tls.forget(session_key)
        raise UpstreamError(f"tunnel to {address} refused: {exc}") from exc
    except HeaderError as exc:
        stream.abort()
        raise UpstreamError(f"tunnel peer {address} answered garbage: {exc}",
                            flag=ResponseFlag.UPSTREAM_PROTOCOL_ERROR) from exc
    except TimeoutError as exc:
        stream.abort()
        raise UpstreamError(f"tunnel to {address} timed out during the handshake") from exc
    except StreamClosedError as exc:
        stream.abort()
        cause = exc.__cause__
        reason = describe_tls_error(cause) if isinstance(cause, ssl.SSLError) else str(exc)
        raise UpstreamError(f"tunnel to {address} failed: {reason}") from exc
    except ssl.SSLError as exc:
        stream.abort()
        raise UpstreamError(f"tunnel to {address} failed: {describe_tls_error(exc)}") from exc
    if status is not Status.OK:
        stream.close()
        name = status.name.lower().replace("_", " ") if isinstance(status, Status) else f"status {status}"
        flag = ResponseFlag.DENIED if status is Status.FORBIDDEN else ResponseFlag.UPSTREAM_FAILURE
        retryable = isinstance(status, Status) and status.retryable
        raise UpstreamError(f"tunnel peer {address} could not connect to {peer.namespace}/{peer.name} "
                            f"port {header.target_port}: {name}", flag=flag, retryable=retryable)
    stream.unread(leftover)
    return stream


def _oserror(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).lower() or type(exc).__name__
