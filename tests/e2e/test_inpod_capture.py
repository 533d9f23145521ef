"""In-pod redirection on real namespaces and real iptables (root).

A "node" netns and a "pod" netns joined by a veth (pod 10.99.1.2/24, node 10.99.1.1/24, the
pod's default route via the node), both made here and removed afterwards, also on failure.
The agent's listeners are made in the pod with ``listen_in_netns``; "app" traffic comes from
real processes in the pod (curl) or from unmarked sockets made in its netns (to the kernel the
same thing). Nothing touches the host's own network namespace.
"""
from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import uuid

import pytest

from node_agent.inpod import redirect_iptables as rd
from node_agent.inpod.netns import PodNetns, connect_socket_in_netns, listen_in_netns
from node_agent.inpod.sockopt import PROXY_MARK
from node_agent.proxy.sockets import original_dst
from sandbox.node import netns as netns_tool

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

POD_IP, NODE_IP = "10.99.1.2", "10.99.1.1"
ELSEWHERE = ("10.99.250.1", 80)  # routed out of the pod to the node, where nothing answers


class Topology:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.node_name, self.pod_name = f"cnit-n-{tag}", f"cnit-p-{tag}"
        self.node: PodNetns | None = None
        self.pod: PodNetns | None = None

    def create(self) -> None:
        for name in (self.node_name, self.pod_name):
            netns_tool.add(name)
        ip = ["ip", "-n", self.node_name]
        _sh(*ip, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", self.pod_name)
        _sh(*ip, "addr", "add", f"{NODE_IP}/24", "dev", "veth0")
        _sh(*ip, "link", "set", "veth0", "up")
        pod = ["ip", "-n", self.pod_name]
        _sh(*pod, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
        _sh(*pod, "link", "set", "eth0", "up")
        _sh(*pod, "route", "add", "default", "via", NODE_IP)
        self.node = PodNetns.by_name(self.node_name)
        self.pod = PodNetns.by_name(self.pod_name)

    def destroy(self) -> None:
        for handle in (self.node, self.pod):
            if handle is not None:
                handle.close()
        for name in (self.pod_name, self.node_name):
            netns_tool.delete(name)  # the veth dies with them

    def in_pod(self, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.pod_name}", *argv], capture_output=True, text=True, timeout=timeout)


def _sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


@pytest.fixture(scope="module")
def topo():
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces, iptables); run them as root")
    topology = Topology()
    try:
        topology.create()
        yield topology
    finally:
        topology.destroy()
    assert not os.path.exists(f"/run/netns/{topology.pod_name}")


@pytest.fixture
def redirected(topo):
    rd.install(topo.pod)
    try:
        yield topo
    finally:
        rd.remove(topo.pod)
        rd.remove_probe_snat(netns=topo.node)
    assert rd.state(topo.pod).status == "absent"


@pytest.fixture
def listeners(redirected):
    """The agent's three listeners in the pod, plus an app on 8080 and on loopback."""
    pod = redirected.pod
    socks = {
        15001: listen_in_netns(pod, host="127.0.0.1", port=15001),
        15006: listen_in_netns(pod, host="0.0.0.0", port=15006),
        15008: listen_in_netns(pod, host="0.0.0.0", port=15008),
        8080: listen_in_netns(pod, host="0.0.0.0", port=8080, mark=None),
        7000: listen_in_netns(pod, host="127.0.0.1", port=7000, mark=None),
        7001: listen_in_netns(pod, host="0.0.0.0", port=7001, mark=None),
    }
    try:
        yield socks
    finally:
        for sock in socks.values():
            sock.close()


def accept(listener: socket.socket, timeout: float = 5.0) -> socket.socket:
    ready, _, _ = select.select([listener], [], [], timeout)
    assert ready, f"nothing arrived on {listener.getsockname()} within {timeout}s"
    conn, _ = listener.accept()
    conn.setblocking(True)
    conn.settimeout(5)
    return conn


def nothing_pending(*listeners: socket.socket) -> bool:
    ready, _, _ = select.select(list(listeners), [], [], 0.2)
    return not ready


def connect(sock: socket.socket, addr: tuple[str, int]) -> socket.socket:
    sock.setblocking(True)
    sock.settimeout(5)
    sock.connect(addr)
    return sock


# ---- outbound ------------------------------------------------------------------------------
def test_outbound_from_a_pod_process_lands_on_15001_with_its_original_destination(listeners, topo):
    def serve() -> None:
        with accept(listeners[15001]) as conn:
            dst = original_dst(conn)
            conn.recv(4096)
            body = f"{dst[0]}:{dst[1]}".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    thread = threading.Thread(target=serve)
    thread.start()
    curl = topo.in_pod("curl", "-sS", "-m", "5", f"http://{ELSEWHERE[0]}:{ELSEWHERE[1]}/")
    thread.join(10)
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout == "10.99.250.1:80"  # what the agent read with SO_ORIGINAL_DST
    assert nothing_pending(listeners[15006], listeners[8080])


def test_marked_agent_socket_is_not_redirected(listeners, topo):
    with listen_in_netns(topo.node, host=NODE_IP, port=9000, mark=None) as node_server:
        with connect(connect_socket_in_netns(topo.pod, mark=PROXY_MARK), (NODE_IP, 9000)) as agent:
            with accept(node_server) as conn:
                assert conn.getpeername()[0] == POD_IP
                agent.sendall(b"marked")
                assert conn.recv(16) == b"marked"
        assert nothing_pending(listeners[15001])
        # control: the same connection unmarked is captured
        with connect(connect_socket_in_netns(topo.pod, mark=None), (NODE_IP, 9000)):
            with accept(listeners[15001]) as conn:
                assert original_dst(conn) == (NODE_IP, 9000)
        assert nothing_pending(node_server)


def test_agent_socket_bound_to_the_pod_ip(listeners, topo):
    with listen_in_netns(topo.node, host=NODE_IP, port=9001, mark=None) as node_server:
        with connect(connect_socket_in_netns(topo.pod, mark=PROXY_MARK, bind_ip=POD_IP), (NODE_IP, 9001)):
            with accept(node_server) as conn:
                assert conn.getpeername()[0] == POD_IP


@pytest.mark.parametrize(("addr", "port"), [("127.0.0.1", 7000), (POD_IP, 7001)], ids=["127.0.0.1", "own-pod-ip"])
def test_loopback_inside_the_pod_is_not_redirected(listeners, topo, addr, port):
    with connect(connect_socket_in_netns(topo.pod, mark=None), (addr, port)):
        with accept(listeners[port]) as conn:
            assert original_dst(conn) == conn.getsockname() == (addr, port)  # not NATed
    assert nothing_pending(listeners[15001], listeners[15006])


# ---- inbound -------------------------------------------------------------------------------
def test_inbound_to_the_app_port_lands_on_15006(listeners, topo):
    with connect(connect_socket_in_netns(topo.node, mark=None), (POD_IP, 8080)) as client:
        with accept(listeners[15006]) as conn:
            assert original_dst(conn) == (POD_IP, 8080)
            assert conn.getpeername()[0] == NODE_IP
            client.sendall(b"in")
            assert conn.recv(8) == b"in"
    assert nothing_pending(listeners[8080])


def test_inbound_to_15008_is_not_redirected(listeners, topo):
    with connect(connect_socket_in_netns(topo.node, mark=None), (POD_IP, 15008)):
        with accept(listeners[15008]) as conn:
            assert original_dst(conn) == conn.getsockname() == (POD_IP, 15008)  # not NATed
    assert nothing_pending(listeners[15006])


def test_kubelet_probe_reaches_the_app_through_the_node_snat(listeners, topo):
    rd.sync_probe_snat([POD_IP, "10.99.1.77"], netns=topo.node)
    assert rd.probe_snat_state([POD_IP, "10.99.1.77"], netns=topo.node).status == "installed"

    def probe() -> subprocess.CompletedProcess:  # the kubelet: a process on the node
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{topo.node_name}", "curl", "-sS", "-m", "5", "-o", "/dev/null", f"http://{POD_IP}:8080/healthz"],
            capture_output=True,
            text=True,
        )

    def answer(listener: socket.socket, seen: list) -> None:
        with accept(listener) as conn:
            seen.append(conn.getpeername()[0])
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    seen: list[str] = []
    thread = threading.Thread(target=answer, args=(listeners[8080], seen))
    thread.start()
    result = probe()
    thread.join(10)
    assert result.returncode == 0, result.stderr
    assert seen == ["169.254.7.127"]  # the app saw the probe, from the probe address
    assert nothing_pending(listeners[15006])

    # without the SNAT the same probe is ordinary inbound traffic: captured
    assert rd.remove_probe_snat(netns=topo.node)
    thread = threading.Thread(target=answer, args=(listeners[15006], seen))
    thread.start()
    probe()
    thread.join(10)
    assert seen == ["169.254.7.127", NODE_IP]


def test_probe_snat_follows_the_enrolled_set(topo):
    try:
        rd.sync_probe_snat(["10.99.1.5", "10.99.1.6"], netns=topo.node)
        rd.sync_probe_snat(["10.99.1.6"], netns=topo.node)
        assert rd.dump(topo.node).rules_of(rd.CHAIN_POSTROUTING) == (
            "-A AMBIT_POSTROUTING -d 10.99.1.6/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127",
        )
        assert rd.dump(topo.node).hook_count("POSTROUTING", rd.CHAIN_POSTROUTING) == 1
    finally:
        rd.remove_probe_snat(netns=topo.node)
    assert rd.CHAIN_POSTROUTING not in rd.dump(topo.node).chains


# ---- install / state / remove --------------------------------------------------------------
def save(topo: Topology, tool: str = "iptables-save") -> str:
    proc = topo.in_pod(tool)
    assert proc.returncode == 0, proc.stderr
    return "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("#"))


def test_reapplying_is_idempotent(redirected):
    before = save(redirected)
    rd.install(redirected.pod)
    rd.install(f"/run/netns/{redirected.pod_name}")  # by path, too
    assert save(redirected) == before
    assert before.count("-j AMBIT_OUTPUT") == 1 and before.count("-j AMBIT_PREROUTING") == 1
    assert rd.state(redirected.pod).status == "installed"


def test_install_repairs_partial_state(redirected):
    _sh("ip", "netns", "exec", redirected.pod_name, "iptables", "-t", "nat", "-D", "AMBIT_PREROUTING", "-p", "tcp", "-m", "tcp", "--dport", "15008", "-j", "RETURN")
    _sh("ip", "netns", "exec", redirected.pod_name, "iptables", "-t", "nat", "-A", "OUTPUT", "-j", "AMBIT_OUTPUT")
    broken = rd.state(redirected.pod)
    assert broken.status == "partial"
    assert broken.missing == ("-A AMBIT_PREROUTING -p tcp -m tcp --dport 15008 -j RETURN",)
    assert broken.unexpected == ("-A OUTPUT -j AMBIT_OUTPUT",)
    rd.install(redirected.pod)
    assert rd.state(redirected.pod).status == "installed"


def test_remove_leaves_no_ambit_chain_and_keeps_foreign_rules(topo):
    _sh("ip", "netns", "exec", topo.pod_name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN")
    try:
        pristine = save(topo)
        rd.install(topo.pod)
        assert "AMBIT" in save(topo)
        assert rd.remove(topo.pod) is True
        assert "AMBIT" not in save(topo)
        assert save(topo) == pristine
        assert rd.remove(topo.pod) is False  # not installed: a no-op
        assert rd.state(topo.pod).status == "absent"
    finally:
        rd.remove(topo.pod)
        _sh("ip", "netns", "exec", topo.pod_name, "iptables", "-t", "nat", "-F", "OUTPUT")


def test_ipv6_rules_install_and_remove(topo):
    try:
        rd.install(topo.pod, ipv6=True)
        assert rd.state(topo.pod, ipv6=True).status == "installed"
        assert "REDIRECT --to-ports 15001" in save(topo, "ip6tables-save")
        assert rd.state(topo.pod).status == "absent"  # the IPv4 table is separate
    finally:
        rd.remove(topo.pod, ipv6=True)
    assert "AMBIT" not in save(topo, "ip6tables-save")


def test_install_into_a_missing_netns_is_a_clear_error(topo):
    with pytest.raises(rd.RedirectError, match="iptables-save in network namespace /run/netns/cnit-nope failed"):
        rd.install("/run/netns/cnit-nope")
