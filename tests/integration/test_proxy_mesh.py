"""Two agents' proxies on loopback: app -> outbound -> mTLS tunnel -> inbound -> app, under uvloop.

Pod "web" (127.0.0.2, node-1) talks to service cart.shop (10.96.0.10:80) whose endpoint is pod
"cart" (127.0.0.3, node-2). Each "node" has its own ProxyInputs (TLS contexts, balancer, records).
Certificates come from a tiny CA made here; the original destination is injected.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node_agent.identity.spiffe import SpiffeId
from node_agent.proxy.balancer import PeakEwmaBalancer
from node_agent.proxy.inbound import InboundListener, accept_tunnel
from node_agent.proxy.inbound_plaintext import InboundPlaintextListener
from node_agent.proxy.listener import ProxyInputs
from node_agent.proxy.model import (
    Endpoint,
    MeshRoute,
    Passthrough,
    ServiceTarget,
    WaypointGuard,
    Workload,
    WorkloadUid,
)
from node_agent.proxy.outbound import OutboundListener
from node_agent.proxy.pump import PumpEnd, PumpResult, Stream
from node_agent.proxy.records import ConnectionRecord
from node_agent.proxy.settings import ProxySettings
from node_agent.proxy.sockets import HostSocketFactory
from node_agent.proxy.tls import TlsContexts
from node_agent.proxy.tunnel import ResponseDecoder, Status, TunnelHeader, encode_header, encode_response

NOW = dt.datetime.now(dt.timezone.utc)
VIP = ("10.96.0.10", 80)
GREETER_VIP = ("10.96.0.20", 80)
TD = "cluster.local"


def run(coro: Awaitable) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(coro, 60))


# ------------------------------------------------------------------ a tiny CA


@dataclass(frozen=True)
class Creds:
    chain_pem: bytes
    key_pem: bytes


class MiniCa:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, identity: SpiffeId) -> Creds:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(hours=1)).not_valid_after(NOW + dt.timedelta(hours=24))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Creds(cert.public_bytes(serialization.Encoding.PEM),
                     key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


class Certs:
    def __init__(self, ca: MiniCa, *identities: SpiffeId) -> None:
        self.bundle = ca.bundle
        self.by_id = {identity: ca.issue(identity) for identity in identities}

    def credentials(self, identity: SpiffeId) -> Creds | None:
        return self.by_id.get(identity)

    def trust_bundle(self) -> bytes:
        return self.bundle


CA = MiniCa("mesh root")
WEB = Workload(uid=WorkloadUid("u-web"), name="web-1", namespace="shop", service_account="web",
               ips=("127.0.0.2",), node="node-1", workload_name="web")
CART = Workload(uid=WorkloadUid("u-cart"), name="cart-1", namespace="shop", service_account="cart",
                ips=("127.0.0.3",), node="node-2", workload_name="cart")
WAYPOINT = Workload(uid=WorkloadUid("u-wp"), name="waypoint-1", namespace="shop", service_account="waypoint",
                    ips=("127.0.0.5",), node="node-1", workload_name="waypoint", enrolled=False)
GONE = Workload(uid=WorkloadUid("u-gone"), name="cart-0", namespace="shop", service_account="cart",
                ips=("127.0.0.4",), node="node-3", workload_name="cart")


# ------------------------------------------------------------------ the fakes the agent would provide


class Resolver:
    def __init__(self, routes: dict[tuple[str, int], MeshRoute | Passthrough], workloads: list[Workload]) -> None:
        self.routes = routes
        self.by_ip = {w.ip: w for w in workloads}
        self.guards: dict[tuple[str, int], WaypointGuard] = {}

    def waypoint_guard(self, ip: str, port: int) -> WaypointGuard | None:
        return self.guards.get((ip, port))

    def route(self, *, source: Workload, ip: str, port: int) -> MeshRoute | Passthrough:
        return self.routes.get((ip, port), Passthrough())

    def workload_by_ip(self, ip: str) -> Workload | None:
        return self.by_ip.get(ip)


class Observed:
    """Observer recording every call."""

    def __init__(self) -> None:
        self.opened_records: list[ConnectionRecord] = []
        self.closed_records: list[tuple[ConnectionRecord, PumpResult]] = []
        self._changed: asyncio.Event | None = None

    def opened(self, record: ConnectionRecord) -> None:
        self.opened_records.append(record)

    def closed(self, record: ConnectionRecord, result: PumpResult) -> None:
        self.closed_records.append((record, result))
        if self._changed is not None:
            self._changed.set()

    async def wait_closed(self, count: int) -> list[tuple[ConnectionRecord, PumpResult]]:
        self._changed = self._changed or asyncio.Event()
        async with asyncio.timeout(10):
            while len(self.closed_records) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.closed_records


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Mesh:
    """Both nodes' proxies, the cart app (echo; 'bye' after EOF) and helpers."""

    def __init__(self, *, same_node: bool = False, endpoints: tuple[Workload, ...] = (CART,),
                 expected: Workload | None = None) -> None:
        self.same_node = same_node
        self.endpoint_workloads = endpoints
        self.expected = expected

    async def __aenter__(self) -> Mesh:
        self.app = await asyncio.start_server(self._echo, CART.ip, 0)
        self.app_port = self.app.sockets[0].getsockname()[1]
        self.greeted: list[bytes] = []
        self.greeter = await asyncio.start_server(self._greet, CART.ip, 0)
        greeter_port = self.greeter.sockets[0].getsockname()[1]
        self.tunnel_port = _free_port(CART.ip)
        settings = ProxySettings(tunnel_port=self.tunnel_port, connect_timeout=2.0, handshake_timeout=2.0)
        endpoints = tuple(Endpoint(self.expected or w, self.app_port) for w in self.endpoint_workloads)
        service = ServiceTarget(name="cart", namespace="shop", hostname="cart.shop.svc.cluster.local",
                                vip=VIP[0], port=VIP[1])
        self.resolver = resolver = Resolver({VIP: MeshRoute(endpoints=endpoints, service=service),
                             GREETER_VIP: MeshRoute(endpoints=(Endpoint(CART, greeter_port),)),
                             ("10.96.0.99", 80): MeshRoute(endpoints=(), service=None)}, [WEB, CART])
        self.node1_sockets = HostSocketFactory()
        node2_sockets = HostSocketFactory()
        if self.same_node:
            self.node1_sockets.add_local(CART)
        self.node1 = ProxyInputs(node_name="node-2" if self.same_node else "node-1", resolver=resolver,
                                 sockets=self.node1_sockets,
                                 tls=TlsContexts(certs=Certs(CA, WEB.identity)), settings=settings,
                                 balancer=PeakEwmaBalancer(), observer=Observed())
        self.node2 = ProxyInputs(node_name="node-2", resolver=resolver, sockets=node2_sockets,
                                 tls=TlsContexts(certs=Certs(CA, CART.identity)), settings=settings,
                                 observer=Observed())
        self.dst: tuple[str, int] = VIP
        self.outbound = OutboundListener(inputs=self.node1, workload=WEB, netns=None, host=WEB.ip, port=0,
                                         original_dst=lambda sock: self.dst)
        self.inbound = InboundListener(inputs=self.node2, workload=CART, netns=None, host=CART.ip,
                                       port=self.tunnel_port)
        self.plaintext = InboundPlaintextListener(inputs=self.node2, workload=CART, netns=None, host=CART.ip,
                                                  port=0, original_dst=lambda sock: (CART.ip, self.app_port))
        for listener in (self.inbound, self.outbound, self.plaintext):
            await listener.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for listener in (self.outbound, self.inbound, self.plaintext):
            await listener.stop(drain=1.0)
        for server in (self.app, self.greeter):
            server.close()
            await server.wait_closed()

    @staticmethod
    async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
            writer.write(b"bye")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Speaks first and half-closes at once; then reads what the client still sends."""
        writer.write(b"hello")
        writer.write_eof()
        self.greeted.append(await reader.read())
        writer.close()

    @property
    def out_records(self) -> Observed:
        return self.node1.observer  # type: ignore[return-value]

    @property
    def in_records(self) -> Observed:
        return self.node2.observer  # type: ignore[return-value]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.outbound.address)

    async def ping(self, payload: bytes = b"ping") -> bytes:
        reader, writer = await self.connect()
        writer.write(payload)
        writer.write_eof()
        data = await reader.read()
        writer.close()
        return data


async def closed_without_data(reader: asyncio.StreamReader) -> None:
    """The proxy closed the application's connection (reset or EOF) without sending anything."""
    try:
        assert await reader.read() == b""
    except ConnectionResetError:
        pass


# ------------------------------------------------------------------ tests


def test_tunnel_carries_20_mb_both_ways_and_half_close() -> None:
    async def main() -> None:
        async with Mesh() as mesh:
            reader, writer = await mesh.connect()
            payload = bytes(range(256)) * (20 * 4096)  # 20 MiB

            async def send() -> None:
                view = memoryview(payload)
                for i in range(0, len(view), 1 << 20):
                    writer.write(view[i:i + (1 << 20)])
                    await writer.drain()
                writer.write_eof()  # half-close: the reply still comes back

            sender = asyncio.create_task(send())
            echoed = await reader.readexactly(len(payload))
            assert await reader.read() == b"bye"
            await sender
            writer.close()
            assert echoed == payload

            ((out, out_result),) = await mesh.out_records.wait_closed(1)
            ((inn, in_result),) = await mesh.in_records.wait_closed(1)
            assert out_result.end is PumpEnd.COMPLETE and in_result.end is PumpEnd.COMPLETE
            assert (out_result.from_client, out_result.from_server) == (len(payload), len(payload) + 3)
            assert (in_result.from_client, in_result.from_server) == (len(payload), len(payload) + 3)
            assert out.response_flags == "-" and out.security_policy == "mutual_tls"
            assert out.destination == CART and out.destination_service.hostname == "cart.shop.svc.cluster.local"
            assert out.destination_principal == "spiffe://cluster.local/ns/shop/sa/cart"
            assert out.original_dst == VIP
            assert inn.source_principal == "spiffe://cluster.local/ns/shop/sa/web"
            assert (inn.source_workload_name, inn.source_namespace) == ("web", "shop")
            assert inn.original_dst == VIP and inn.destination_address == (CART.ip, mesh.app_port)
            assert len(mesh.node1.registry) == 0 and len(mesh.node2.registry) == 0

    run(main())


def test_small_records_in_bursts_and_ping_pong_are_delivered_at_once() -> None:
    """Many TLS records arriving in one read are all decrypted; a lone record is not held back."""

    async def main() -> None:
        async with Mesh() as mesh:
            reader, writer = await mesh.connect()
            burst = [b"%04d" % i for i in range(200)]
            for chunk in burst:  # many small writes: several records per read on the far side
                writer.write(chunk)
            assert await asyncio.wait_for(reader.readexactly(800), 5) == b"".join(burst)
            for i in range(300):  # strict ping-pong: each reply needs the last record decrypted at once
                writer.write(b"%05d" % i)
                assert await asyncio.wait_for(reader.readexactly(5), 2) == b"%05d" % i
            writer.write_eof()
            assert await reader.read() == b"bye"
            writer.close()

    run(main())


def test_server_presents_the_destination_identity_and_answers_the_header() -> None:
    """A hand-made client: TLS 1.3 with web's certificate, check cart's SPIFFE ID, send a header."""

    async def main() -> None:
        async with Mesh() as mesh:
            client_tls = mesh.node1.tls.client(WEB.identity)
            reader, writer = await asyncio.open_connection(CART.ip, mesh.tunnel_port, ssl=client_tls.context)
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.3"
            assert ssl_object.getpeercert()["subjectAltName"] == (("URI", "spiffe://cluster.local/ns/shop/sa/cart"),)
            writer.write(encode_header(TunnelHeader(target_ip=CART.ip, target_port=mesh.app_port)) + b"hello")
            decoder = ResponseDecoder()
            answer = None
            while answer is None:
                answer = decoder.feed(await reader.read(100))
            status, rest = answer
            assert status is Status.OK
            assert rest + await reader.readexactly(5 - len(rest)) == b"hello"
            writer.close()

    run(main())


def test_wrong_server_identity_is_refused_and_flagged() -> None:
    impostor_expected = Workload(uid=WorkloadUid("u-cart"), name="cart-1", namespace="shop",
                                 service_account="payments", ips=CART.ips, node="node-2")

    async def main() -> None:
        async with Mesh(expected=impostor_expected) as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"secret")
            await closed_without_data(reader)
            writer.close()
            ((record, result),) = await mesh.out_records.wait_closed(1)
            assert record.response_flags == "UF"
            assert "presented spiffe://cluster.local/ns/shop/sa/cart, expected " \
                   "spiffe://cluster.local/ns/shop/sa/payments" in record.detail
            assert result.end is PumpEnd.FAILED and result.from_client == 0
            # the destination never connected to its application
            assert all(r.destination_address is None for r in mesh.in_records.opened_records)

    run(main())


def test_refused_clients_at_15008_do_not_disturb_a_healthy_tunnel() -> None:
    async def main() -> None:
        async with Mesh() as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"one")
            assert await reader.readexactly(3) == b"one"

            async def refused(context: ssl.SSLContext | None, payload: bytes) -> None:
                r, w = await asyncio.open_connection(CART.ip, mesh.tunnel_port, ssl=context)
                w.write(payload)
                try:
                    assert await r.read() == b""
                except (ssl.SSLError, ConnectionResetError):
                    pass
                w.close()

            no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            no_cert.check_hostname = False
            no_cert.load_verify_locations(cadata=CA.bundle.decode())
            other_root = TlsContexts(certs=Certs(MiniCa("another root"), WEB.identity)).client(WEB.identity).context
            other_root.verify_mode = ssl.CERT_NONE  # it cannot verify our server either; we only test our side
            await refused(no_cert, b"x")
            await refused(other_root, b"x")
            await refused(None, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 5000)  # garbage, no TLS at all

            # garbage header inside a valid tunnel: answered BAD_HEADER
            r, w = await asyncio.open_connection(CART.ip, mesh.tunnel_port,
                                                 ssl=mesh.node1.tls.client(WEB.identity).context)
            w.write(b"AMBT\x01\x00\x00\x05garbage")
            decoder = ResponseDecoder()
            answer = None
            while answer is None:
                data = await r.read(100)
                assert data, "closed without an answer"
                answer = decoder.feed(data)
            assert answer[0] is Status.BAD_HEADER
            w.close()

            writer.write(b"two")  # the healthy tunnel is unaffected
            assert await reader.readexactly(3) == b"two"
            writer.write_eof()
            assert await reader.read() == b"bye"
            writer.close()

            records = await mesh.in_records.wait_closed(5)
            flags = sorted(record.response_flags for record, _ in records)
            assert flags == ["-", "DPE", "DPE", "DPE", "DPE"]
            details = [record.detail for record, _ in records if record.response_flags == "DPE"]
            assert any("peer did not return a certificate" in d for d in details)  # no client certificate
            assert any(d.startswith("peer certificate refused: ") for d in details)  # another root
            assert any("wrong version number" in d or "http request" in d for d in details)  # not TLS at all
            assert any("outside" in d for d in details)  # the garbage header's length field

    run(main())


def test_second_connection_resumes_the_tls_session() -> None:
    async def main() -> None:
        async with Mesh() as mesh:
            assert await mesh.ping(b"a") == b"abye"
            assert await mesh.ping(b"b") == b"bbye"
            out = await mesh.out_records.wait_closed(2)
            inn = await mesh.in_records.wait_closed(2)
            assert [r.tls_resumed for r, _ in out] == [False, True]
            assert [r.tls_resumed for r, _ in inn] == [False, True]
            assert inn[1][0].source_principal == WEB.identity.uri  # identity still known when resumed

    run(main())


def test_same_node_destination_skips_tls() -> None:
    async def main() -> None:
        async with Mesh(same_node=True) as mesh:
            assert await mesh.ping(b"local") == b"localbye"
            records = await mesh.out_records.wait_closed(2)
            reporters = sorted(record.reporter for record, _ in records)
            assert reporters == ["destination", "source"]
            for record, result in records:
                assert record.destination == CART and record.response_flags == "-"
                assert record.source_principal == WEB.identity.uri
                assert result.from_client == 5
            assert mesh.in_records.opened_records == []  # the tunnel listener was never used

    run(main())


def test_refused_endpoint_is_retried_on_another() -> None:
    async def main() -> None:
        async with Mesh(endpoints=(GONE, CART)) as mesh:
            for _ in range(3):
                assert await mesh.ping(b"x") == b"xbye"
            records = await mesh.out_records.wait_closed(3)
            assert all(record.response_flags == "-" and record.destination == CART for record, _ in records)
            assert mesh.node1.balancer.cost((GONE.ip, mesh.app_port)) > \
                mesh.node1.balancer.cost((CART.ip, mesh.app_port))

    run(main())


def test_no_endpoints_and_passthrough() -> None:
    async def main() -> None:
        async with Mesh() as mesh:
            mesh.dst = ("10.96.0.99", 80)  # a mesh service without endpoints
            reader, writer = await mesh.connect()
            await closed_without_data(reader)
            writer.close()
            mesh.dst = (CART.ip, mesh.app_port)  # not in the routes: passthrough, plain TCP
            assert await mesh.ping(b"plain") == b"plainbye"
            records = await mesh.out_records.wait_closed(2)
            assert [(r.response_flags, r.security_policy) for r, _ in records] == [("NR", "none"), ("-", "none")]
            assert mesh.in_records.opened_records == []

    run(main())


def test_inbound_plaintext_reaches_the_app() -> None:
    async def main() -> None:
        async with Mesh() as mesh:
            reader, writer = await asyncio.open_connection(*mesh.plaintext.address)
            writer.write(b"hi")
            writer.write_eof()
            assert await reader.read() == b"hibye"
            writer.close()
            ((record, result),) = await mesh.in_records.wait_closed(1)
            assert record.listener == "inbound_plaintext" and record.security_policy == "none"
            assert record.destination == CART and result.from_client == 2

    run(main())


def test_server_side_half_close_crosses_the_tunnel() -> None:
    async def main() -> None:
        async with Mesh() as mesh:
            mesh.dst = GREETER_VIP
            reader, writer = await mesh.connect()
            assert await reader.read() == b"hello"  # the app's EOF arrived as EOF ...
            writer.write(b"still talking")  # ... while our direction stays open
            writer.write_eof()
            ((record, result),) = await mesh.out_records.wait_closed(1)
            writer.close()
            async with asyncio.timeout(5):
                while not mesh.greeted:
                    await asyncio.sleep(0.01)
            assert mesh.greeted == [b"still talking"]
            assert result.end is PumpEnd.COMPLETE and (result.from_client, result.from_server) == (13, 5)

    run(main())


def test_stop_drains_then_aborts_open_connections() -> None:
    async def main() -> None:
        async with Mesh() as mesh:
            reader, writer = await mesh.connect()
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            assert len(mesh.node1.registry) == 1 and len(mesh.node2.registry) == 1
            dump = mesh.node1.registry.dump()
            assert dump[0]["destination_principal"] == CART.identity.uri and dump[0]["age_seconds"] >= 0
            await mesh.outbound.stop(drain=0.2)  # the idle connection does not finish: aborted
            await closed_without_data(reader)
            writer.close()
            ((record, result),) = await mesh.out_records.wait_closed(1)
            assert result.end is PumpEnd.ABORTED and result.from_client == 1
            await mesh.in_records.wait_closed(1)  # the far side saw the tunnel go and closed too
            assert len(mesh.node1.registry) == 0 and len(mesh.node2.registry) == 0
            assert mesh.outbound.open_connections == 0
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("ambit-")] == []

    run(main())


# ------------------------------------------------------------------ waypoints


def _guard(*identities: SpiffeId) -> WaypointGuard:
    return WaypointGuard(waypoint="shop/waypoint", identities=frozenset(i.uri for i in identities))


def test_pod_behind_a_waypoint_refuses_everyone_else_on_every_path() -> None:
    """Through the tunnel, on the same node and in plaintext: only the waypoint may reach the pod."""
    async def main() -> None:
        for same_node in (False, True):
            async with Mesh(same_node=same_node) as mesh:
                mesh.resolver.guards[(CART.ip, mesh.app_port)] = _guard(WAYPOINT.identity)
                reader, writer = await mesh.connect()
                writer.write(b"secret")
                await closed_without_data(reader)
                writer.close()
                records = mesh.out_records if same_node else mesh.in_records
                record, _ = (await records.wait_closed(1))[0]
                assert record.response_flags == "WAYPOINT_BYPASS"
                assert "behind waypoint shop/waypoint" in (record.detail or "")
                if same_node:
                    continue
                reader, writer = await asyncio.open_connection(*mesh.plaintext.address)
                writer.write(b"secret")
                await closed_without_data(reader)
                writer.close()
                plain = [r for r, _ in await mesh.in_records.wait_closed(2) if r.listener == "inbound_plaintext"]
                assert [r.response_flags for r in plain] == ["WAYPOINT_BYPASS"]
                mesh.resolver.guards[(CART.ip, mesh.app_port)] = _guard(WEB.identity)  # web is the waypoint now
                assert await mesh.ping(b"ok") == b"okbye"

    run(main())


def test_service_bound_to_a_waypoint_goes_through_it_or_nowhere() -> None:
    """The waypoint gets the service address in the header under mTLS with its own identity; without
    a ready waypoint the connection is refused, never sent to the endpoints directly."""
    async def main() -> None:
        async with Mesh() as mesh:
            headers: list[TunnelHeader] = []
            inputs = ProxyInputs(node_name="node-1", resolver=mesh.resolver, sockets=HostSocketFactory(),
                                 tls=TlsContexts(certs=Certs(CA, WAYPOINT.identity)), settings=mesh.node1.settings)

            loop = asyncio.get_running_loop()

            async def serve(stream: Stream) -> None:
                header, source = await accept_tunnel(inputs, stream, identity=WAYPOINT.identity,
                                                     record=ConnectionRecord(listener="waypoint", reporter="destination"))
                assert source == WEB.identity
                headers.append(header)
                stream.write(encode_response(Status.OK) + b"via waypoint")
                stream.close()

            tasks: set[asyncio.Task] = set()

            def accepted(stream: Stream) -> None:
                task = loop.create_task(serve(stream))
                tasks.add(task)

            server = await loop.create_server(lambda: Stream(on_connected=accepted), WAYPOINT.ip,
                                              mesh.tunnel_port)
            try:
                service = ServiceTarget(name="cart", namespace="shop", hostname="cart.shop.svc.cluster.local",
                                        vip=VIP[0], port=VIP[1])
                mesh.resolver.routes[VIP] = MeshRoute(endpoints=(Endpoint(WAYPOINT, 15008),), service=service,
                                                      waypoint="shop/waypoint")
                reader, writer = await mesh.connect()
                assert await reader.read() == b"via waypoint"
                writer.close()
                assert headers[0].target_ip == VIP[0] and headers[0].target_port == VIP[1]
                assert headers[0].destination_service == "cart.shop.svc.cluster.local"
                assert headers[0].source_workload == "web" and headers[0].source_namespace == "shop"
                mesh.resolver.routes[VIP] = MeshRoute(endpoints=(), service=service, waypoint="shop/waypoint")
                reader, writer = await mesh.connect()
                await closed_without_data(reader)
                writer.close()
                records = sorted((r for r, _ in await mesh.out_records.wait_closed(2)), key=lambda r: r.id)
                assert records[0].waypoint == "shop/waypoint" and records[0].destination_principal == WAYPOINT.identity.uri
                assert records[1].response_flags == "WAYPOINT_NOT_READY"
                assert "bound to waypoint shop/waypoint" in (records[1].detail or "")
                assert mesh.in_records.opened_records == []  # cart itself was never reached
            finally:
                server.close()
                await asyncio.gather(*tasks, return_exceptions=True)

    run(main())
