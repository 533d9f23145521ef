"""The kubelet's pod runtime, driven with pod dicts and a fake API, on real namespaces (root).

The test thread enters node-1's network namespace, as the kubelet runs there: worker threads
inherit it, so CNI plugins, probes and kube-proxy act from the node exactly as in ``ambit up``.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from sandbox.config import SandboxConfig
from sandbox.node import cni, layout, netns, underlay
from sandbox.node.pods import PodRef, PodRuntime, RuntimeSettings

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

FAST = RuntimeSettings(restart_backoff_initial=0.2, restart_backoff_max=1.0, grace_cap=2.0,
                       sandbox_backoff_initial=0.2, sandbox_backoff_max=0.5, tick=0.1)
CLONE_NEWNET = 0x40000000
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
FAILING_PLUGIN = """#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","code":101,"msg":"ambit agent not ready","details":"socket missing"}'
  exit 1
fi
"""


class FakeApi:
    """PodApi that records what the runtime tells the API."""

    def __init__(self) -> None:
        self.statuses: dict[str, dict] = {}
        self.events: list[tuple[str, str, str, str]] = []
        self.tokens: list[tuple[PodRef, str]] = []
        self.finalized: list[PodRef] = []
        self._cond = threading.Condition()

    def patch_pod_status(self, ref: PodRef, status: dict) -> None:
        with self._cond:
            self.statuses[ref.uid] = json.loads(json.dumps(status))
            self._cond.notify_all()

    def record_event(self, ref: PodRef, *, type: str, reason: str, message: str) -> None:
        with self._cond:
            self.events.append((ref.name, type, reason, message))
            self._cond.notify_all()

    def finalize_deletion(self, ref: PodRef) -> None:
        self.finalized.append(ref)

    def request_token(self, ref: PodRef, *, service_account: str, expiration_seconds: int) -> tuple[str, float]:
        self.tokens.append((ref, service_account))
        return f"token-{ref.namespace}-{service_account}-{ref.uid[:8]}", time.time() + expiration_seconds

    def ca_bundle(self) -> bytes:
        return b"-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"

    def wait(self, uid: str, predicate, *, timeout: float = 20.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                status = self.statuses.get(uid)
                if status is not None and predicate(status):
                    return status
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what or predicate}: status={json.dumps(status)} "
                                         f"events={self.events}")
                self._cond.wait(min(left, 0.2))


@contextlib.contextmanager
def in_netns(name: str):
    """Move the calling thread (and the threads and processes it starts) into a network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(str(netns.path(name)), os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
        yield
    finally:
        if libc.setns(original, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "cannot return to the original network namespace")
        os.close(original)
        os.close(target)


@pytest.fixture
def cfg(tmp_path: Path):
    cfg = SandboxConfig(name="nodet", index=8, nodes=2, base_dir=tmp_path / "base")
    underlay.teardown(cfg)
    try:
        underlay.create_underlay(cfg)
        for i in (1, 2):
            underlay.create_node(cfg, i)
            cni.default_conflist(cfg, i)
        yield cfg
    finally:
        underlay.teardown(cfg)
        assert not netns.list_names(f"{cfg.name}-")


@pytest.fixture
def node(cfg):
    """(runtime, fake api) for node-1, with the test thread inside node-1's namespace."""
    api = FakeApi()
    runtimes: list[PodRuntime] = []

    def make() -> PodRuntime:
        rt = PodRuntime(cfg=cfg, node="node-1", host_ip=cfg.node_ip(1), api=api, settings=FAST)
        runtimes.append(rt)
        return rt

    with in_netns(cfg.node_netns("node-1")):
        try:
            yield make, api
        finally:
            for rt in runtimes:
                rt.shutdown(teardown=True, timeout=20)


def make_pod(name: str, containers: list[dict], **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "test", "uid": str(uuid.uuid4())},
            "spec": {"nodeName": "node-1", "containers": containers, **spec}}


def uid_of(pod: dict) -> str:
    return pod["metadata"]["uid"]


def cond(status: dict, ctype: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def ready(status: dict) -> bool:
    return cond(status, "Ready")["status"] == "True"


def cs(status: dict, name: str) -> dict:
    return next(c for c in status["containerStatuses"] if c["name"] == name)


def same_netns(pid: int, path: Path) -> bool:
    a, b = os.stat(f"/proc/{pid}/ns/net"), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_for(predicate, *, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


WEB = {
    "name": "web", "image": "python:3.11",
    "command": ["python3", "-m", "http.server", "$(PORT)", "--bind", "0.0.0.0"],
    "env": [{"name": "PORT", "value": "8080"}],
    "ports": [{"name": "http", "containerPort": 8080}],
    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
}


def test_pod_starts_gets_ready_sees_its_credentials_and_is_removed_without_a_trace(cfg, node):
    make, api = node
    runtime = make()
    secrets_existed = os.path.exists("/run/secrets")
    env_dump = {"name": "env", "image": "busybox", "command": ["sh", "-c"], "args": [
        f"echo token=$(cat {SA_DIR}/token) ns=$(cat {SA_DIR}/namespace) ca=$(head -c 27 {SA_DIR}/ca.crt); "
        "echo pod=$MY_POD ip=$MY_IP node=$MY_NODE api=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; "
        "echo python=$(command -v python3); exec sleep 600"],
        "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}
    pod = make_pod("web-1", [WEB, env_dump], serviceAccountName="web")
    uid = uid_of(pod)
    runtime.sync([pod])

    status = api.wait(uid, ready, what="Ready")
    ip = status["podIP"]
    assert ip.startswith("10.218.1.") and status["hostIP"] == cfg.node_ip(1)
    assert status["phase"] == "Running"
    assert all(c["ready"] and "running" in c["state"] for c in status["containerStatuses"])
    # served from the pod, reached from the node (the kubelet's vantage point)
    body = urllib.request.urlopen(f"http://{ip}:8080/", timeout=3).read()
    assert b"Directory listing" in body

    log = layout.pod_log_path(cfg, "node-1", "test", "web-1", "env")
    wait_for(lambda: log.exists() and "python=" in log.read_text(), what="the env container's output")
    text = log.read_text()
    assert f"token=token-test-web-{uid[:8]} ns=test ca=-----BEGIN CERTIFICATE-----" in text
    assert f"pod=web-1 ip={ip} node=node-1 api={cfg.host_ip}:{cfg.api_port}" in text
    assert f"python={Path(os.sys.executable).parent}/python3" in text
    assert os.path.exists("/run/secrets") == secrets_existed  # the host's tree is untouched
    assert api.tokens == [(PodRef("test", "web-1", uid), "web")]

    worker = runtime.worker(uid)
    pids = [c.pid for c in worker.containers]
    ns_path = netns.path(cfg.pod_netns(uid))
    assert all(same_netns(p, ns_path) for p in pids)
    cached = runtime.cni.cached(worker.record.sandbox_id)
    assert cached is not None and cni.result_ips(cached.result) == [ip]

    runtime.sync([])  # the pod is gone from the API
    assert worker.done.wait(15)
    assert not any(alive(p) for p in pids)
    assert not netns.exists(cfg.pod_netns(uid)) and not ns_path.exists()
    assert not layout.pod_dir(cfg, "node-1", uid).exists()
    assert not log.parent.exists()
    assert runtime.cni.cached(worker.record.sandbox_id) is None
    assert not (layout.cni_ipam_dir(cfg, "node-1") / f"{cfg.name}-pods" / ip).exists()
    assert api.finalized == []  # it was already gone; nothing to finalize


def test_a_crashing_container_restarts_with_backoff(cfg, node):
    make, api = node
    runtime = make()
    pod = make_pod("crasher", [{"name": "app", "command": ["sh", "-c", "echo started; exit 3"]}])
    runtime.sync([pod])
    status = api.wait(uid_of(pod), lambda s: cs(s, "app")["restartCount"] >= 2, what="two restarts")
    app = cs(status, "app")
    assert app["lastState"]["terminated"]["exitCode"] == 3
    assert app["lastState"]["terminated"]["reason"] == "Error"
    assert status["phase"] in ("Running",)
    status = api.wait(uid_of(pod), lambda s: "waiting" in cs(s, "app")["state"], what="back-off")
    assert cs(status, "app")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert any(e[2] == "BackOff" for e in api.events)
    log = layout.pod_log_path(cfg, "node-1", "test", "crasher", "app")
    assert log.read_text().count("started") >= 3


@pytest.mark.parametrize("code, phase", [(0, "Succeeded"), (4, "Failed")], ids=["succeeded", "failed"])
def test_restart_policy_never_ends_in_a_final_phase(cfg, node, code, phase):
    make, api = node
    runtime = make()
    pod = make_pod("job", [{"name": "task", "command": ["sh", "-c", f"exit {code}"]}], restartPolicy="Never")
    runtime.sync([pod])
    status = api.wait(uid_of(pod), lambda s: s["phase"] == phase, what=phase)
    task = cs(status, "task")
    assert task["state"]["terminated"]["exitCode"] == code and task["restartCount"] == 0


def test_a_failing_cni_chain_keeps_the_pod_pending_until_it_succeeds(cfg, node):
    make, api = node
    runtime = make()
    plugin = cfg.cni_bin_dir("node-1") / "ambit-fail"
    plugin.write_text(FAILING_PLUGIN)
    plugin.chmod(0o755)
    path = cni.conflist_path(cfg, "node-1")
    good = path.read_text()
    doc = json.loads(good)
    doc["plugins"].append({"type": "ambit-fail"})
    path.write_text(json.dumps(doc))

    pod = make_pod("enrolled", [WEB])
    runtime.sync([pod])
    status = api.wait(uid_of(pod), lambda s: cond(s, "PodReadyToStartContainers")["status"] == "False"
                      and "message" in cond(s, "PodReadyToStartContainers"), what="sandbox failure")
    c = cond(status, "PodReadyToStartContainers")
    assert c["reason"] == "FailedCreatePodSandBox"
    assert "plugin ambit-fail ADD: ambit agent not ready (code 101): socket missing" in c["message"]
    assert status["phase"] == "Pending" and "podIP" not in status
    assert cs(status, "web")["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert any(e[2] == "FailedCreatePodSandBox" and "ambit agent not ready" in e[3] for e in api.events)
    time.sleep(1.0)  # several retries
    assert not layout.pod_log_path(cfg, "node-1", "test", "enrolled", "web").exists()  # never started
    # the half-done ADDs were undone: only the final attempt may hold an address
    ipam = layout.cni_ipam_dir(cfg, "node-1") / f"{cfg.name}-pods"
    assert len([p for p in ipam.glob("10.*")]) <= 1

    path.write_text(good)  # the agent came up; the next retry succeeds
    status = api.wait(uid_of(pod), ready, what="Ready after the chain recovered")
    assert status["podIP"].startswith("10.218.1.")


def test_host_network_pod_runs_in_the_node_namespace(cfg, node):
    make, api = node
    runtime = make()
    pod = make_pod("agent", [{"name": "agent", "command": ["sleep", "600"]}], hostNetwork=True,
                   automountServiceAccountToken=False)
    runtime.sync([pod])
    status = api.wait(uid_of(pod), ready, what="Ready")
    assert status["podIP"] == cfg.node_ip(1)
    pid = runtime.worker(uid_of(pod)).containers[0].pid
    assert same_netns(pid, netns.path(cfg.node_netns("node-1")))
    assert not any(n.startswith(f"{cfg.name}-pod-") for n in netns.list_names(cfg.name))
    assert api.tokens == []


def test_liveness_failure_restarts_and_grace_period_is_honoured(cfg, node):
    make, api = node
    runtime = make()
    stubborn_cmd = ["sh", "-c", "trap '' TERM; echo trapped; while true; do sleep 0.1; done"]
    unhealthy = make_pod("unhealthy", [{
        "name": "app", "command": stubborn_cmd,
        "livenessProbe": {"tcpSocket": {"port": 9}, "initialDelaySeconds": 1, "periodSeconds": 1,
                          "failureThreshold": 1},
    }], terminationGracePeriodSeconds=1)
    stubborn = make_pod("stubborn", [{"name": "app", "command": stubborn_cmd}], terminationGracePeriodSeconds=1)
    runtime.sync([unhealthy, stubborn])
    status = api.wait(uid_of(unhealthy), lambda s: cs(s, "app")["restartCount"] >= 1, what="liveness restart")
    assert cs(status, "app")["lastState"]["terminated"]["exitCode"] == 137  # ignored TERM: killed
    assert any(e[0] == "unhealthy" and e[2] == "Unhealthy" for e in api.events)

    log = layout.pod_log_path(cfg, "node-1", "test", "stubborn", "app")
    wait_for(lambda: log.exists() and "trapped" in log.read_text(), what="the TERM trap")
    worker = runtime.worker(uid_of(stubborn))
    pid = worker.containers[0].pid
    started = time.monotonic()
    runtime.sync([unhealthy])
    assert worker.done.wait(10)
    assert 0.9 <= time.monotonic() - started < 5  # waited for the grace period, then SIGKILL
    assert not alive(pid)


def test_a_restarted_kubelet_recreates_live_pods_and_removes_gone_ones(cfg, node):
    make, api = node
    first = make()
    keep = make_pod("keep", [{"name": "app", "command": ["sleep", "600"]}])
    gone = make_pod("gone", [{"name": "app", "command": ["sleep", "600"]}])
    first.sync([keep, gone])
    api.wait(uid_of(keep), ready, what="keep Ready")
    api.wait(uid_of(gone), ready, what="gone Ready")
    old = {uid_of(p): first.worker(uid_of(p)).containers[0].pid for p in (keep, gone)}
    first.shutdown(teardown=False)  # the kubelet exits; its pods keep running
    assert all(alive(p) for p in old.values())

    second = make()
    handled = second.adopt([uid_of(keep)])
    assert sorted(handled) == ["test/gone: removed (no longer in the API)", "test/keep: recreating"]
    assert not any(alive(p) for p in old.values())
    assert not netns.exists(cfg.pod_netns(uid_of(gone)))
    keep_now = {**keep, "status": api.statuses[uid_of(keep)]}
    second.sync([keep_now])
    status = api.wait(uid_of(keep), lambda s: ready(s) and cs(s, "app")["restartCount"] == 1,
                      what="keep recreated")
    assert second.worker(uid_of(keep)).containers[0].pid != old[uid_of(keep)]
    assert status["podIP"].startswith("10.218.1.")
