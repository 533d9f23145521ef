"""The installed ambit-cni, run as a runtime runs it, against an agent served by ``cni_server`` (root).

- the plugin is the installer's launcher, executed with real stdin and a minimal environment;
- the "agent" is ``CniServer`` on a loop in a background thread with a handler per test;
- the chain test runs ptp + host-local + ambit-cni through ``sandbox.node.cni.CniRuntime`` in a
  "node" netns made here, and the handler does what the agent does for an enrolled pod:
  installs redirection and opens 15001 in the pod before answering.
"""
from __future__ import annotations

import asyncio
import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from cni import install as installer
from cni.protocol import CniResponse
from node_agent.inpod import redirect_iptables as rd
from node_agent.inpod.cni_server import CniServer
from node_agent.inpod.netns import NetnsWorker, PodNetns
from node_agent.proxy.sockets import original_dst
from sandbox.node import cni as runtime
from sandbox.node import netns as netns_tool

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "veth7", "mac": "0a:58:0a:63:07:01"},
        {"name": "eth0", "mac": "0a:58:0a:63:07:02", "sandbox": "/run/netns/cnit-x"},
    ],
    "ips": [{"address": "10.99.7.2/24", "gateway": "10.99.7.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0"}],
}
PRIMARY = {"cniVersion": "1.0.0", "name": "cnit-pods", "plugins": [{"type": "ptp", "ipMasq": False}]}


class Agent:
    """A node agent reduced to its CNI socket: ``behaviour(request)`` answers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list = []
        self.behaviour = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-agent", daemon=True)
        self.server = CniServer(path=path, handler=self.handle, request_timeout=8.0)

    async def handle(self, request):
        self.requests.append(request)
        return await self.behaviour(request)

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.call(self.server.start())

    def stop(self) -> None:
        if self.thread.is_alive():
            self.call(self.server.close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


@pytest.fixture
def agent(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces, iptables, CNI plugins); run them as root")
    fake = Agent(tmp_path / "run" / "cni.sock")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.path.exists()


@pytest.fixture
def node_dirs(tmp_path, agent):
    """A node's CNI dirs with a primary conflist and ambit-cni installed by the installer."""
    conf, bins = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    primary = json.loads(json.dumps(PRIMARY))
    primary["plugins"][0]["ipam"] = {
        "type": "host-local",
        "ranges": [[{"subnet": "10.99.7.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": str(tmp_path / "ipam"),
    }
    (conf / "10-pods.conflist").write_text(json.dumps(primary))
    installer.install(conf_dir=conf, bin_dir=bins, plugin_config={"agentSocket": str(agent.path)}, source_executable=sys.executable)
    return conf, bins


def plugin_input(node_dirs, command: str, *, namespace: str = "mesh", name: str = "web-1", **config) -> tuple[dict, bytes]:
    """(env, stdin) as the runtime passes them to ambit-cni in the chain, minimal env."""
    conf, bins = node_dirs
    net = runtime.load_network_list(conf)
    ours = {**net.plugins[-1], **config}
    assert ours["type"] == "ambit-cni"
    rt = runtime.pod_runtime_conf(container_id="c0ffee", netns="/run/netns/cnit-x", namespace=namespace, name=name, uid="uid-1")
    env = runtime.plugin_env(command, rt, cni_path=[bins, Path("/usr/lib/cni")], base={})
    stdin = runtime.plugin_stdin(net, ours, rt=rt, prev_result=PREV if command != "DEL" else None)
    return env, stdin


def run_plugin(node_dirs, command: str, **kw) -> tuple[subprocess.CompletedProcess, float]:
    env, stdin = plugin_input(node_dirs, command, **kw)
    started = time.perf_counter()
    proc = subprocess.run([str(node_dirs[1] / "ambit-cni")], input=stdin, env=env, capture_output=True, timeout=60)
    return proc, time.perf_counter() - started


async def enrolled_after(delay: float, request):
    await asyncio.sleep(delay)
    return CniResponse("enrolled", "")


# ---- the plugin executable against the agent -----------------------------------------------
def test_add_for_an_enrolled_pod_waits_for_the_ack_and_passes_prev_result_through(agent, node_dirs):
    agent.behaviour = lambda request: enrolled_after(0.5, request)
    proc, elapsed = run_plugin(node_dirs, "ADD")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == PREV
    assert elapsed >= 0.5  # it waited for the agent
    [request] = agent.requests
    assert request.command == "ADD"
    assert (request.pod_namespace, request.pod_name, request.pod_uid) == ("mesh", "web-1", "uid-1")
    assert (request.container_id, request.netns, request.interface) == ("c0ffee", "/run/netns/cnit-x", "eth0")
    assert request.ips == ("10.99.7.2",)


def test_agent_not_answering_in_time_is_a_cni_error(agent, node_dirs):
    agent.behaviour = lambda request: enrolled_after(5, request)
    proc, elapsed = run_plugin(node_dirs, "ADD", agentTimeoutSeconds=0.5)
    assert proc.returncode != 0
    error = json.loads(proc.stdout)
    assert error["code"] == 11
    assert error["msg"] == "the ambit node agent did not set up pod mesh/web-1 within 0.5s"
    assert "check the agent's log" in error["details"]
    assert elapsed < 3


def test_agent_error_is_reported_with_its_message(agent, node_dirs):
    async def refuse(request):
        return CniResponse("error", "iptables-restore failed: line 3")

    agent.behaviour = refuse
    proc, _ = run_plugin(node_dirs, "ADD")
    assert proc.returncode != 0
    assert json.loads(proc.stdout) == {
        "cniVersion": "1.0.0",
        "code": 100,
        "msg": "the ambit node agent could not set up pod mesh/web-1",
        "details": "iptables-restore failed: line 3",
    }


def test_not_enrolled_pods_pass_through_fast(agent, node_dirs, capsys):
    async def not_enrolled(request):
        return CniResponse("not_enrolled", "")

    agent.behaviour = not_enrolled
    timings = []
    for _ in range(20):
        proc, elapsed = run_plugin(node_dirs, "ADD", namespace="plain")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == PREV
        timings.append(elapsed)
    timings.sort()
    p50, p99 = statistics.median(timings), timings[min(len(timings) - 1, int(len(timings) * 0.99))]
    with capsys.disabled():
        print(f"\nambit-cni ADD, not enrolled, 20 runs: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert len(agent.requests) == 20
    assert max(timings) < 1.0  # a sanity bound, not a benchmark


def test_excluded_namespace_never_reaches_the_agent(agent, node_dirs):
    agent.behaviour = lambda request: enrolled_after(5, request)
    proc, elapsed = run_plugin(node_dirs, "ADD", namespace="kube-system", name="coredns-1")
    assert proc.returncode == 0 and json.loads(proc.stdout) == PREV
    assert agent.requests == []


@pytest.mark.parametrize(("fail_closed", "code"), [(True, 11), (False, None)], ids=["fail-closed", "fail-open"])
def test_agent_socket_absent(node_dirs, tmp_path, fail_closed, code):
    proc, _ = run_plugin(node_dirs, "ADD", agentSocket=str(tmp_path / "nowhere.sock"), failClosed=fail_closed)
    if code is None:
        assert proc.returncode == 0 and json.loads(proc.stdout) == PREV
        assert "starts without Ambit" in proc.stderr.decode()
    else:
        assert proc.returncode != 0
        assert json.loads(proc.stdout)["code"] == code
        assert "is not running on this node" in json.loads(proc.stdout)["msg"]


def test_del_succeeds_while_the_agent_is_down(agent, node_dirs):
    agent.stop()  # the socket is gone
    proc, _ = run_plugin(node_dirs, "DEL")
    assert proc.returncode == 0 and proc.stdout == b""
    assert "deleting anyway" in proc.stderr.decode()


def test_del_succeeds_while_the_agent_hangs(agent, node_dirs):
    agent.behaviour = lambda request: enrolled_after(5, request)
    proc, elapsed = run_plugin(node_dirs, "DEL")
    assert proc.returncode == 0
    assert elapsed < 4  # DEL waits at most DEL_TIMEOUT_CAP


# ---- a real chain: ptp + host-local + ambit-cni ---------------------------------------------
class Enroller:
    """What the agent does for pods in namespace ``mesh``: redirection + a 15001 listener."""

    def __init__(self, worker: NetnsWorker) -> None:
        self.worker = worker
        self.pods: dict[str, tuple[PodNetns, object]] = {}

    async def __call__(self, request):
        if request.pod_namespace != "mesh":
            return CniResponse("not_enrolled", "")
        if request.command == "ADD":
            ns = PodNetns.open(request.netns)
            await asyncio.to_thread(rd.install, ns)
            listener = await self.worker.listen(ns, host="127.0.0.1", port=15001)
            self.pods[request.container_id] = (ns, listener)
            return CniResponse("enrolled", "")
        if request.command == "DEL":
            entry = self.pods.pop(request.container_id, None)
            if entry is None:
                return CniResponse("not_enrolled", "")
            ns, listener = entry
            listener.close()
            await asyncio.to_thread(rd.remove, ns)
            ns.close()
            return CniResponse("enrolled", "")
        state = await asyncio.to_thread(rd.state, request.netns)
        return CniResponse("enrolled" if state.status == "installed" else "error", str(state))

    def close(self) -> None:
        for ns, listener in self.pods.values():
            listener.close()
            ns.close()


@pytest.fixture
def chain(agent, node_dirs, tmp_path):
    tag = uuid.uuid4().hex[:6]
    node = f"cnit-cn-{tag}"
    pods = [f"cnit-cp-{tag}-{i}" for i in (1, 2)]
    worker = NetnsWorker()
    enroller = Enroller(worker)
    agent.behaviour = enroller
    conf, bins = node_dirs
    cni = runtime.CniRuntime(
        conf_dir=conf, cache_dir=tmp_path / "cache", plugin_dirs=(bins, Path("/usr/lib/cni")), exec_netns=node
    )
    try:
        for name in (node, *pods):
            netns_tool.add(name)
        yield cni, node, pods, enroller
    finally:
        enroller.close()
        worker.close()
        for name in (*pods, node):
            netns_tool.delete(name)


def test_chain_through_the_reference_plugins(agent, chain):
    cni, node, (mesh_pod, plain_pod), enroller = chain
    mesh_rt = runtime.pod_runtime_conf(container_id="mesh0001", netns=f"/run/netns/{mesh_pod}", namespace="mesh", name="web-1", uid="u-1")
    plain_rt = runtime.pod_runtime_conf(container_id="plain0001", netns=f"/run/netns/{plain_pod}", namespace="plain", name="db-1", uid="u-2")

    mesh_result = cni.add(mesh_rt)
    mesh_ip = runtime.result_ips(mesh_result)[0]
    assert mesh_ip.startswith("10.99.7.")
    assert rd.state(mesh_rt.netns).status == "installed"  # in place before ADD returned
    assert agent.requests[-1].ips == (mesh_ip,)

    plain_result = cni.add(plain_rt)
    assert runtime.result_ips(plain_result)[0].startswith("10.99.7.")
    assert rd.state(plain_rt.netns).status == "absent"
    assert [r.pod_namespace for r in agent.requests] == ["mesh", "plain"]

    # the enrolled pod's outbound TCP lands on the agent's listener in its netns
    _, listener = enroller.pods["mesh0001"]  # complete: the agent acked ADD after storing it
    seen: list = []

    def serve() -> None:
        ready, _, _ = select.select([listener], [], [], 5)
        if ready:
            conn, _ = listener.accept()
            with conn:
                conn.setblocking(True)
                seen.append(original_dst(conn))
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve)
    thread.start()
    curl = subprocess.run(
        ["nsenter", f"--net=/run/netns/{mesh_pod}", "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://10.99.250.1:80/"],
        capture_output=True,
        text=True,
    )
    thread.join(10)
    assert curl.stdout == "204", curl.stderr
    assert seen == [("10.99.250.1", 80)]

    cni.check(mesh_rt)  # the agent confirms the redirection

    cni.delete(mesh_rt)
    cni.delete(plain_rt)
    assert rd.state(mesh_rt.netns).status == "absent"
    assert [r.command for r in agent.requests] == ["ADD", "ADD", "CHECK", "DEL", "DEL"]
    links = subprocess.run(["ip", "-n", node, "-o", "link"], capture_output=True, text=True).stdout
    assert "veth" not in links  # ptp cleaned up too
