"""Original-destination parsing, the host socket factory, the state values and the connection registry."""
from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from node_agent.proxy.model import Endpoint, Workload, WorkloadUid
from node_agent.proxy.records import ConnectionRecord, ConnectionRegistry, Reporter, ResponseFlag
from node_agent.proxy.settings import ProxySettings
from node_agent.proxy.sockets import SO_ORIGINAL_DST, SOL_IPV6, HostSocketFactory, so_original_dst


class FakeSocket:
    def __init__(self, family: int, raw: bytes) -> None:
        self.family = family
        self.raw = raw
        self.asked: tuple[int, int, int] | None = None

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked = (level, option, size)
        return self.raw


def test_original_dst_ipv4() -> None:
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 8080) + socket.inet_aton("10.96.0.10") + bytes(8)
    sock = FakeSocket(socket.AF_INET, raw)
    assert so_original_dst(sock) == ("10.96.0.10", 8080)  # type: ignore[arg-type]
    assert sock.asked == (socket.SOL_IP, SO_ORIGINAL_DST, 16)


def test_original_dst_ipv6() -> None:
    raw = (struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 443) + bytes(4)
           + socket.inet_pton(socket.AF_INET6, "fd00::a") + bytes(4))
    sock = FakeSocket(socket.AF_INET6, raw)
    assert so_original_dst(sock) == ("fd00::a", 443)  # type: ignore[arg-type]
    assert sock.asked == (SOL_IPV6, SO_ORIGINAL_DST, 28)


def test_original_dst_of_a_direct_connection_is_its_own_address_or_an_error() -> None:
    """Without REDIRECT, conntrack (when loaded) reports the real destination; else ``OSError``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                try:
                    dst = so_original_dst(accepted)
                except OSError:
                    return
                assert dst == accepted.getsockname()[:2]


def test_host_socket_factory_binds_and_connects() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.3", 0)
        port = server.sockets[0].getsockname()[1]
        factory = HostSocketFactory()
        sock = await factory.connect(netns=None, host="127.0.0.3", port=port, bind_ip="127.0.0.2")
        assert sock.getsockname()[0] == "127.0.0.2" and not sock.getblocking()
        sock.close()
        with pytest.raises(ConnectionRefusedError):
            await factory.connect(netns=None, host="127.0.0.3", port=1, bind_ip=None)
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def _workload(**overrides: object) -> Workload:
    fields = dict(uid=WorkloadUid("u1"), name="cart-7d9f", namespace="shop", service_account="cart",
                  ips=("10.0.0.3",), node="node-2")
    fields.update(overrides)
    return Workload(**fields)  # type: ignore[arg-type]


def test_workload_identity_and_defaults() -> None:
    workload = _workload()
    assert str(workload.identity) == "spiffe://cluster.local/ns/shop/sa/cart"
    assert workload.workload_name == "cart-7d9f" and workload.ip == "10.0.0.3"
    assert Endpoint(workload, 8080).key == ("10.0.0.3", 8080)
    factory = HostSocketFactory()
    assert factory.local_netns(workload) is None
    factory.add_local(workload, "ns-handle")
    assert factory.local_netns(workload) == "ns-handle"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        pytest.param({"ips": ()}, "has no IP", id="no-ip"),
        pytest.param({"service_account": "Bad_SA"}, "service account", id="bad-sa"),
    ],
)
def test_invalid_workloads(overrides: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        _workload(**overrides)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        pytest.param({"connect_timeout": 0}, "connect_timeout=0", id="timeout"),
        pytest.param({"max_endpoint_attempts": 0}, "at least 1", id="attempts"),
        pytest.param({"tunnel_port": 70000}, "tunnel_port=70000", id="port"),
    ],
)
def test_invalid_settings(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ProxySettings(**kwargs)


def test_registry_dump_and_record_copy() -> None:
    registry = ConnectionRegistry()
    record = ConnectionRecord(listener="outbound", reporter=Reporter.SOURCE, source_ip="10.0.0.2")
    record.set_source(_workload(name="web-1", service_account="web", workload_name="web"))
    record.destination = _workload()
    record.original_dst = ("10.96.0.10", 80)
    record.fail(ResponseFlag.UPSTREAM_FAILURE, "first reason")
    record.fail(ResponseFlag.NO_ROUTE, "second reason")
    registry.add(record)
    (entry,) = registry.dump()
    assert entry["source_workload"] == "web" and entry["destination_workload"] == "cart-7d9f"
    assert entry["original_dst"] == "10.96.0.10:80"
    assert (entry["response_flags"], entry["detail"]) == ("UF", "first reason")
    other = record.copy(reporter=Reporter.DESTINATION)
    assert other.id != record.id and other.reporter == "destination" and other.destination == record.destination
    registry.discard(record)
    assert len(registry) == 0
