"""Sandbox node networking, for real: underlay, the CNI chain, kube-proxy rules (root).

Uses its own sandbox (``nodet``, index 8, state under tmp_path) and removes every namespace,
link and process it made, also on failure.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sandbox.config import SandboxConfig
from sandbox.node import cni, layout, netns, underlay
from sandbox.node.errors import CniError
from sandbox.node.kubeproxy import KubeProxy

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

RECORDER = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
with open({log!r}, "a") as f:
    f.write(json.dumps({{"command": command, "tag": conf.get("tag"), "args": os.environ.get("CNI_ARGS"),
                        "netns": os.environ.get("CNI_NETNS"), "conf": conf}}) + "\\n")
if command == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}}))
elif command == "ADD":
    if conf.get("fail"):
        print(json.dumps({{"cniVersion": "1.0.0", "code": 101, "msg": "recorder refuses",
                          "details": "asked to fail by its config"}}))
        sys.exit(1)
    print(json.dumps(conf.get("prevResult") or {{"cniVersion": "1.0.0"}}))
"""


@pytest.fixture
def cluster(tmp_path: Path):
    cfg = SandboxConfig(name="nodet", index=8, nodes=2, base_dir=tmp_path / "base")
    underlay.teardown(cfg)  # leftovers of an earlier, killed run

    def cleanup() -> None:
        removed = underlay.teardown(cfg)
        assert not netns.list_names(f"{cfg.name}-"), removed

    try:
        underlay.create_underlay(cfg)
        for i in (1, 2):
            underlay.create_node(cfg, i)
            cni.default_conflist(cfg, i)
        yield cfg
    finally:
        cleanup()


def _links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [link["ifname"] for link in json.loads(out) if link["ifname"].startswith(prefix)]


def _sh(*argv: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


class Pods:
    """Pod sandboxes made straight through the CNI runtime, as a container runtime would."""

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        self.made: list[tuple[cni.CniRuntime, cni.RuntimeConf, str]] = []
        self.procs: list[subprocess.Popen] = []

    def runtime(self, node: str) -> cni.CniRuntime:
        return cni.CniRuntime.for_node(self.cfg, node, exec_netns=self.cfg.node_netns(node), timeout=20)

    def add(self, node: str, name: str) -> tuple[str, cni.RuntimeConf, dict]:
        uid = str(uuid.uuid4())
        ns = self.cfg.pod_netns(uid)
        netns.add(ns)
        rt = cni.pod_runtime_conf(container_id=uuid.uuid4().hex, netns=str(netns.path(ns)), namespace="test",
                                  name=name, uid=uid)
        runtime = self.runtime(node)
        self.made.append((runtime, rt, ns))
        return ns, rt, runtime.add(rt)

    def serve(self, ns: str, port: int) -> None:
        proc = subprocess.Popen([*netns.exec_argv(ns), sys.executable, "-m", "http.server", str(port),
                                 "--bind", "0.0.0.0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _sh(*netns.exec_argv(ns), "curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/",
                   check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"http.server in {ns} did not start")

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for runtime, rt, ns in reversed(self.made):
            try:
                runtime.delete(rt)
            except CniError:
                pass
            netns.delete(ns)


@pytest.fixture
def pods(cluster):
    p = Pods(cluster)
    try:
        yield p
    finally:
        p.close()


def _curl(ns: str, url: str, *, timeout: float = 3) -> subprocess.CompletedProcess:
    return _sh(*netns.exec_argv(ns), "curl", "-sS", "--max-time", str(timeout), url, check=False,
               timeout=timeout + 5)


def _connect_errno(ns: str, ip: str, port: int) -> str:
    """errno name of a TCP connect from inside ``ns`` ("OK" on success)."""
    code = ("import errno, socket; s = socket.socket(); s.settimeout(3); "
            f"e = s.connect_ex(({ip!r}, {port})); print(errno.errorcode.get(e, 'OK'))")
    return _sh(*netns.exec_argv(ns), sys.executable, "-c", code).stdout.strip()


# ---- underlay -----------------------------------------------------------------------------------
def test_underlay_wires_nodes_and_teardown_leaves_nothing(tmp_path: Path):
    cfg = SandboxConfig(name="nodet", index=8, nodes=2, base_dir=tmp_path)
    underlay.teardown(cfg)
    try:
        underlay.create_underlay(cfg)
        for i in (1, 2):
            underlay.create_node(cfg, i)
        underlay.create_node(cfg, 1)  # idempotent
        assert netns.list_names("nodet-") == ["nodet-node-1", "nodet-node-2"]
        assert sorted(_links("nodet")) == ["nodet-n1", "nodet-n2", "nodet0"]
        bridge = json.loads(_sh("ip", "-j", "-d", "link", "show", "nodet0").stdout)[0]
        assert bridge["linkinfo"]["info_data"]["nf_call_iptables"] == 0
        routes = _sh("ip", "-n", "nodet-node-1", "route").stdout
        assert "10.218.2.0/24 via 10.208.0.12 dev eth0" in routes
        assert "default" not in routes
        assert _sh(*netns.exec_argv("nodet-node-1"), "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        # node 1 reaches node 2 and the host over the bridge; nothing else is routed
        sleeper = subprocess.Popen([*netns.exec_argv("nodet-node-2"), sys.executable, "-m", "http.server", "8099",
                                    "--bind", "10.208.0.12"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while _curl("nodet-node-1", "http://10.208.0.12:8099/").returncode != 0:
            assert time.monotonic() < deadline, "node 1 cannot reach node 2"
            time.sleep(0.1)
        unreachable = _sh("ip", "-n", "nodet-node-1", "route", "get", "192.0.2.1", check=False)
        assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr.lower()
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            host_forwarding = f.read().strip()
        assert sleeper.poll() is None
    finally:
        removed = underlay.teardown(cfg)
    assert any("processes in netns nodet-node-2" in r for r in removed), removed
    assert {"netns nodet-node-1", "netns nodet-node-2", "link nodet0"} <= set(removed)
    assert netns.list_names("nodet-") == [] and _links("nodet") == []
    assert sleeper.wait(timeout=5) is not None
    assert host_forwarding == _host_forwarding_before
    assert underlay.teardown(cfg) == []  # idempotent


with open("/proc/sys/net/ipv4/ip_forward") as _f:
    _host_forwarding_before = _f.read().strip()


# ---- CNI --------------------------------------------------------------------------------------------
def test_ptp_host_local_chain_connects_pods_across_nodes(cluster, pods):
    cfg = cluster
    ns_a, _, result_a = pods.add("node-1", "a")
    ns_b, _, result_b = pods.add("node-2", "b")
    ip_a, ip_b = cni.result_ips(result_a)[0], cni.result_ips(result_b)[0]
    assert ip_a.startswith("10.218.1.") and ip_b.startswith("10.218.2.")
    addr = _sh("ip", "-n", ns_b, "-4", "addr", "show", "eth0").stdout
    assert f"inet {ip_b}/24" in addr
    pods.serve(ns_b, 8080)
    reply = _curl(ns_a, f"http://{ip_b}:8080/")
    assert reply.returncode == 0 and "Directory listing" in reply.stdout, reply.stderr
    # the pod's default route dies at the node: nothing leaves the machine
    assert _connect_errno(ns_a, "192.0.2.1", 80) in ("ENETUNREACH", "EHOSTUNREACH")  # ICMP from the node
    unrouted = _sh("ip", "-n", cfg.node_netns("node-1"), "route", "get", "192.0.2.1", check=False)
    assert "unreachable" in unrouted.stderr.lower()
    assert (layout.cni_ipam_dir(cfg, "node-2") / f"{cfg.name}-pods" / ip_b).exists()


def _append_plugins(cfg: SandboxConfig, node: str, *plugins: dict) -> None:
    path = cni.conflist_path(cfg, node)
    doc = json.loads(path.read_text())
    doc["plugins"].extend(plugins)
    path.write_text(json.dumps(doc))


def _install_recorder(cfg: SandboxConfig, node: str, log: Path) -> None:
    binary = cfg.cni_bin_dir(node) / "recorder"
    binary.write_text(RECORDER.format(python=sys.executable, log=str(log)))
    binary.chmod(0o755)


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_chaining_passes_prev_result_args_and_dels_in_reverse_with_the_cached_config(cluster, pods, tmp_path):
    cfg = cluster
    log = tmp_path / "recorder.log"
    _install_recorder(cfg, "node-1", log)
    _append_plugins(cfg, "node-1", {"type": "recorder", "tag": "first"}, {"type": "recorder", "tag": "second"})
    ns, rt, result = pods.add("node-1", "chained")
    adds = [r for r in _records(log) if r["command"] == "ADD"]
    assert [r["tag"] for r in adds] == ["first", "second"]
    first = adds[0]
    assert first["conf"]["name"] == f"{cfg.name}-pods" and first["conf"]["cniVersion"] == "1.0.0"
    assert cni.result_ips(first["conf"]["prevResult"]) == cni.result_ips(result)  # ptp+portmap's result
    assert first["args"] == (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME=chained;"
                             f"K8S_POD_INFRA_CONTAINER_ID={rt.container_id};K8S_POD_UID={rt.args[4][1]}")
    assert first["netns"] == f"/run/netns/{ns}"
    assert adds[1]["conf"]["prevResult"] == first["conf"]["prevResult"]  # echoed along the chain

    # the conflist changes after ADD (an installer rewrote it): DEL still runs the cached chain
    cni.default_conflist(cfg, 1)
    path = cni.conflist_path(cfg, "node-1")
    doc = json.loads(path.read_text())
    doc["plugins"] = [p for p in doc["plugins"] if p["type"] != "recorder"]
    path.write_text(json.dumps(doc))
    runtime = pods.runtime("node-1")
    runtime.check(rt)
    assert [r["tag"] for r in _records(log) if r["command"] == "CHECK"] == ["first", "second"]
    runtime.delete(rt)
    dels = [r for r in _records(log) if r["command"] == "DEL"]
    assert [r["tag"] for r in dels] == ["second", "first"]
    assert all(cni.result_ips(r["conf"]["prevResult"]) == cni.result_ips(result) for r in dels)
    assert runtime.cached(rt.container_id) is None
    ip = cni.result_ips(result)[0]
    assert not (layout.cni_ipam_dir(cfg, "node-1") / f"{cfg.name}-pods" / ip).exists()  # address released
    assert "eth0" not in _sh("ip", "-n", ns, "link").stdout  # ptp removed the veth


def test_a_failing_plugin_surfaces_its_error(cluster, pods, tmp_path):
    cfg = cluster
    _install_recorder(cfg, "node-1", tmp_path / "recorder.log")
    _append_plugins(cfg, "node-1", {"type": "recorder", "fail": True})
    with pytest.raises(CniError) as err:
        pods.add("node-1", "refused")
    assert (err.value.code, err.value.msg, err.value.details, err.value.plugin, err.value.command) == (
        101, "recorder refuses", "asked to fail by its config", "recorder", "ADD")
    assert "plugin recorder ADD: recorder refuses (code 101): asked to fail by its config" == str(err.value)


def test_a_missing_plugin_is_reported(cluster, pods):
    _append_plugins(cluster, "node-1", {"type": "ambit-cni-not-installed"})
    with pytest.raises(CniError, match="failed to find plugin 'ambit-cni-not-installed'"):
        pods.add("node-1", "x")


# ---- kube-proxy ------------------------------------------------------------------------------------
def test_cluster_ip_dnats_to_a_pod_on_the_other_node(cluster, pods):
    cfg = cluster
    ns_a, _, _ = pods.add("node-1", "client")
    ns_b, _, result_b = pods.add("node-2", "server")
    ip_b = cni.result_ips(result_b)[0]
    pods.serve(ns_b, 8080)
    vip, empty_vip = "10.228.0.10", "10.228.0.11"
    services = [
        {"metadata": {"name": "web", "namespace": "demo"},
         "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        {"metadata": {"name": "empty", "namespace": "demo"},
         "spec": {"clusterIP": empty_vip, "ports": [{"port": 80}]}},
    ]
    slices = [{"metadata": {"name": "web-1", "namespace": "demo",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [ip_b], "conditions": {"ready": True}}]}]
    proxy = KubeProxy(source=lambda: (services, slices), netns=cfg.node_netns("node-1"))
    try:
        proxy.sync()
        proxy.sync()  # a second sync replaces, not duplicates
        saved = _sh(*netns.exec_argv(cfg.node_netns("node-1")), "iptables-save").stdout
        assert saved.count("-j AMBIT-SERVICES") == 5 and saved.count(f"--to-destination {ip_b}:8080") == 1
        reply = _curl(ns_a, f"http://{vip}/")
        assert reply.returncode == 0 and "Directory listing" in reply.stdout, reply.stderr
        from_node = _curl(cfg.node_netns("node-1"), f"http://{vip}/")  # OUTPUT path, hostNetwork clients
        assert from_node.returncode == 0 and "Directory listing" in from_node.stdout, from_node.stderr
        assert _connect_errno(ns_a, empty_vip, 80) == "ECONNREFUSED"  # rejected, not dropped
        assert _connect_errno(cfg.node_netns("node-1"), empty_vip, 80) == "ECONNREFUSED"
        slices[0]["endpoints"][0]["conditions"]["ready"] = False
        proxy.sync()
        assert _connect_errno(ns_a, vip, 80) == "ECONNREFUSED"
    finally:
        proxy.cleanup()
    saved = _sh(*netns.exec_argv(cfg.node_netns("node-1")), "iptables-save").stdout
    assert "AMBIT" not in saved
