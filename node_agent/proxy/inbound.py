"""Inbound tunnel (15008): mTLS connections from other agents to one enrolled pod.

Per connection: TLS 1.3 server handshake with the pod's own certificate, a client certificate
chained to the mesh bundle and naming a workload of our trust domain -> the tunnel header (bounded,
with a deadline) -> the target must be this pod, on a port that is not the proxy's own, allowed by
policy -> connect to the application inside the pod's namespace -> answer ``OK`` (or why not, so
the client can try another endpoint) -> the pump. A bad handshake or header closes that
connection only and is reported with a response flag.
"""
from __future__ import annotations

import asyncio
import errno
import ssl

from node_agent.identity.spiffe import SpiffeId
from node_agent.proxy.errors import HeaderError, PeerIdentityError, TlsSetupError
from node_agent.proxy.listener import Listener, ProxyInputs, connect_stream
from node_agent.proxy.model import ServiceTarget
from node_agent.proxy.pump import Pump, PumpResult, Stream, StreamClosedError
from node_agent.proxy.records import ConnectionRecord, Reporter, ResponseFlag, SecurityPolicy
from node_agent.proxy.tls import describe_tls_error, server_peer_check
from node_agent.proxy.tunnel import HeaderDecoder, Status, TunnelHeader, encode_response


class TunnelRefused(Exception):
    """Answer ``status`` to the client (None: no TLS to answer over), record ``flag`` and ``detail``."""

    def __init__(self, status: Status | None, flag: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.flag = flag
        self.detail = detail

    def answer(self, stream: Stream) -> None:
        """Tell the client why over TLS and close, or abort when there is no TLS to answer over."""
        if self.status is not None and stream.ssl_object is not None and not stream.is_lost:
            stream.write(encode_response(self.status))
            stream.close()
        else:
            stream.abort()


class InboundListener(Listener):
    kind = "inbound"

    async def _handle(self, stream: Stream) -> None:
        transport = stream.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        record = ConnectionRecord(listener=self.kind, reporter=Reporter.DESTINATION,
                                  source_ip=peer[0] if peer else "")
        record.destination = self.workload
        record.destination_principal = self.workload.identity.uri
        record.security_policy = SecurityPolicy.MUTUAL_TLS
        try:
            header, source = await self._accept_tunnel(stream, record)
        except TunnelRefused as refused:
            record.fail(refused.flag, refused.detail)
            refused.answer(stream)
            self._open(record)
            self._close(record, PumpResult())
            return
        try:
            app = await self._connect_app(header, source, record)
        except TunnelRefused as refused:
            record.fail(refused.flag, refused.detail)
            stream.write(encode_response(refused.status))
            stream.close()
            self._open(record)
            self._close(record, PumpResult())
            return
        stream.write(encode_response(Status.OK))
        self._open(record)
        pump = Pump(stream, app)
        try:
            await pump.run()
        finally:
            self._close(record, pump.result())

    async def _accept_tunnel(self, stream: Stream, record: ConnectionRecord) -> tuple[TunnelHeader, SpiffeId]:
        header, source = await accept_tunnel(self.inputs, stream, identity=self.workload.identity, record=record)
        self._describe_source(record, header, source)
        return header, source

    def _describe_source(self, record: ConnectionRecord, header: TunnelHeader, source: SpiffeId) -> None:
        """Metrics labels: the snapshot's workload when it matches the authenticated identity, else the header's."""
        known = self.inputs.resolver.workload_by_ip(record.source_ip)
        if known is not None and known.identity == source:
            record.set_source(known)
        else:
            record.source_workload_name = header.source_workload
            record.source_namespace = source.namespace  # authenticated, unlike the header's claim
        if header.original_dst is not None:
            record.original_dst = header.original_dst
        if header.destination_service and record.destination_service is None:
            # the service the client dialled, as its agent resolved it: for the destination's metrics
            name, _, rest = header.destination_service.partition(".")
            vip, port = header.original_dst or ("", 0)
            record.destination_service = ServiceTarget(name=name, namespace=rest.partition(".")[0],
                                                       hostname=header.destination_service, vip=vip, port=port)

    async def _connect_app(self, header: TunnelHeader, source: SpiffeId, record: ConnectionRecord) -> Stream:
        target = (header.target_ip, header.target_port)
        record.destination_address = target
        if header.target_ip not in self.workload.ips:
            raise TunnelRefused(Status.FORBIDDEN, ResponseFlag.DENIED,
                           f"tunnel target {header.target_ip} is not pod {self.workload.namespace}/"
                           f"{self.workload.name} ({', '.join(self.workload.ips)})")
        if header.target_port in self.inputs.settings.reserved_ports:
            raise TunnelRefused(Status.FORBIDDEN, ResponseFlag.DENIED,
                           f"tunnel target port {header.target_port} is the proxy's own")
        guard = self.inputs.resolver.waypoint_guard(header.target_ip, header.target_port)
        if guard is not None and source.uri not in guard.identities:
            raise TunnelRefused(Status.FORBIDDEN, ResponseFlag.WAYPOINT_BYPASS,
                                guard.refusal(self.workload, header.target_port))
        if not self.inputs.authorizer.allows(source=source, source_ip=record.source_ip,
                                             destination=self.workload, port=header.target_port):
            raise TunnelRefused(Status.FORBIDDEN, ResponseFlag.DENIED,
                           f"policy denies {source} access to port {header.target_port}")
        try:
            return await connect_stream(self.inputs, netns=self.netns, host=header.target_ip,
                                        port=header.target_port, bind_ip=None)
        except TimeoutError as exc:
            raise TunnelRefused(Status.TIMEOUT, ResponseFlag.UPSTREAM_FAILURE,
                           f"application port {header.target_port} did not accept in time") from exc
        except OSError as exc:
            status = Status.REFUSED if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                                     errno.ENETUNREACH) else Status.INTERNAL
            raise TunnelRefused(status, ResponseFlag.UPSTREAM_FAILURE,
                           f"application port {header.target_port} refused the connection: "
                           f"{(exc.strerror or str(exc)).lower()}") from exc


async def accept_tunnel(
    inputs: ProxyInputs, stream: Stream, *, identity: SpiffeId, record: ConnectionRecord
) -> tuple[TunnelHeader, SpiffeId]:
    """Server side of the tunnel as ``identity``: TLS 1.3 handshake, a client certificate of our trust
    domain, the header (bounded, with a deadline). Returns the header and the authenticated source;
    raises ``TunnelRefused``. Used by the inbound listener and by the waypoint."""
    settings = inputs.settings
    try:
        context = inputs.tls.server(identity)
    except TlsSetupError as exc:
        raise TunnelRefused(None, ResponseFlag.UPSTREAM_FAILURE, str(exc)) from exc
    try:
        async with asyncio.timeout(settings.handshake_timeout):
            tls = await stream.start_tls(context, server_side=True, timeout=settings.handshake_timeout)
            record.tls_resumed = tls.session_reused
            source = server_peer_check(tls, trust_domain=settings.trust_domain)
            record.source_principal = source.uri
            decoder = HeaderDecoder()
            while True:
                data = await stream.read_some()
                if not data:
                    decoder.eof()
                decoded = decoder.feed(data)
                if decoded is not None:
                    break
    except PeerIdentityError as exc:
        raise TunnelRefused(Status.FORBIDDEN, ResponseFlag.DENIED, str(exc)) from exc
    except HeaderError as exc:
        raise TunnelRefused(Status.BAD_HEADER, ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR, str(exc)) from exc
    except TimeoutError as exc:
        raise TunnelRefused(None, ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR,
                            "client sent no complete tls handshake and tunnel header in time") from exc
    except (StreamClosedError, ssl.SSLError) as exc:
        cause = exc.__cause__ if isinstance(exc, StreamClosedError) else exc
        reason = describe_tls_error(cause) if isinstance(cause, ssl.SSLError) else str(exc)
        raise TunnelRefused(None, ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR, reason) from exc
    header, leftover = decoded
    stream.unread(leftover)
    return header, source
