"""Pod volumes end to end (root): the pod runtime on node-1's namespace against the real sandbox API.

The runtime uses ``KubePodApi`` (the kubelet's own API adapter): tokens are real TokenRequests
signed by the API, ConfigMaps and Secrets are read from it, status and events are written to it.
Own sandbox (``nodev``, index 9, state under tmp_path); everything is removed afterwards and the
test checks that nothing was created on the host outside the state dir.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import time
from pathlib import Path

import pytest
from kubernetes import client

from sandbox.api.process import ApiProcess
from sandbox.config import SandboxConfig
from sandbox.node import cni, layout, netns, underlay
from sandbox.node.kubelet import KubePodApi, node_api_client
from sandbox.node.pods import PodRuntime, RuntimeSettings

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

RESYNC = 0.5
FAST = RuntimeSettings(restart_backoff_initial=0.2, restart_backoff_max=1.0, grace_cap=2.0,
                       sandbox_backoff_initial=0.2, sandbox_backoff_max=0.5, tick=0.1, volume_resync=RESYNC)
CLONE_NEWNET = 0x40000000
NS = "default"

# what the node agent's container does with its volumes, reporting every change on stdout
AGENT = r"""
import base64, json, os, sys, time
TOKEN = "/var/run/secrets/ambit/tokens/ambit-identity"
TRUST = "/var/run/ambit/trust"
last = None
while True:
    token = open(TOKEN).read()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    try:
        open(TOKEN + ".new", "w").close()
        token_dir = "writable"
    except OSError as exc:
        token_dir = exc.strerror
    trust = sorted(f for f in os.listdir(TRUST) if not f.startswith(".."))
    with open(os.path.join(sys.argv[1], "heartbeat"), "w") as f:
        f.write("alive")
    state = {"aud": claims["aud"], "sub": claims["sub"], "pod": claims["kubernetes.io"]["pod"]["name"],
             "token_dir": token_dir, "trust": trust,
             "bundle": open(TRUST + "/ca.crt").read() if "ca.crt" in trust else None,
             "password": open("/var/run/creds/password").read(),
             "sa_token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")}
    line = json.dumps(state, sort_keys=True)
    if line != last:
        print(line, flush=True)
        last = line
    time.sleep(0.05)
"""


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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node sandbox with the real API; yields (cfg, api client reaching it from node-1)."""
    tmp = tmp_path_factory.mktemp("volumes")
    cfg = SandboxConfig(name="nodev", index=9, nodes=1, base_dir=tmp / "base")
    underlay.teardown(cfg)
    api = None
    try:
        underlay.create_underlay(cfg)
        underlay.create_node(cfg, 1)
        cni.default_conflist(cfg, 1)
        api = ApiProcess(cfg, bind=("127.0.0.1", cfg.host_ip), log_path=tmp / "api.log")
        api.start()
        yield cfg, node_api_client(cfg)
    finally:
        if api is not None:
            api.stop()
        underlay.teardown(cfg)
        assert not netns.list_names(f"{cfg.name}-")


@pytest.fixture
def node(cluster):
    """(cfg, CoreV1Api, runtime) with the test thread inside node-1's namespace, as the kubelet runs."""
    cfg, api_client = cluster
    core = client.CoreV1Api(api_client)
    with in_netns(cfg.node_netns("node-1")):
        runtime = PodRuntime(cfg=cfg, node="node-1", host_ip=cfg.node_ip(1),
                             api=KubePodApi(api_client, node="node-1"), settings=FAST)
        try:
            yield cfg, core, runtime
        finally:
            runtime.shutdown(teardown=True, timeout=20)
            for kind in ("pod", "config_map", "secret"):
                for item in getattr(core, f"list_namespaced_{kind}")(NS).items:
                    if kind != "config_map" or item.metadata.name != "kube-root-ca.crt":
                        getattr(core, f"delete_namespaced_{kind}")(item.metadata.name, NS, grace_period_seconds=0)


def create_pod(core: client.CoreV1Api, name: str, spec: dict) -> dict:
    """Create the pod in the API (TokenRequests are bound to it); returns it as the kubelet sees it."""
    containers = [{"image": "python:3.11", **c} for c in spec["containers"]]  # images are not run
    core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                    "spec": {"nodeName": "node-1", **spec, "containers": containers}})
    return json.loads(core.read_namespaced_pod(name, NS, _preload_content=False).data)


def pod_status(core: client.CoreV1Api, name: str) -> dict:
    return json.loads(core.read_namespaced_pod(name, NS, _preload_content=False).data).get("status") or {}


def events(core: client.CoreV1Api, name: str) -> list[tuple[str, str, str]]:
    items = json.loads(core.list_namespaced_event(NS, _preload_content=False).data)["items"]
    return [(e["type"], e["reason"], e["message"]) for e in items if e["involvedObject"]["name"] == name]


def wait_for(fn, *, timeout: float = 20.0, what: str, diag=lambda: ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{diag()}")


def ready(status: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])


def host_state(paths: list[str]) -> dict[str, bool]:
    return {p: os.path.lexists(p) for p in paths}


def test_projected_token_configmap_secret_and_emptydir_without_touching_the_host(node):
    cfg, core, runtime = node
    tag = secrets.token_hex(4)
    scratch = f"/tmp/ambit-e2e-{tag}/work"  # its parent does not exist on the host
    shared = f"/ambit-e2e-{tag}"  # a new top-level directory
    watched = ["/run/secrets", "/run/secrets/ambit", "/run/ambit", "/run/creds", str(Path(scratch).parent), shared]
    before = host_state(watched)
    assert not before[str(Path(scratch).parent)] and not before[shared]
    core.create_namespaced_secret(NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-creds"},
                                       "stringData": {"password": "s3cret"}})
    spec = {
        "containers": [
            {"name": "agent", "command": ["python3", "-c", AGENT, scratch],
             "readinessProbe": {"exec": {"command": ["cat", "/var/run/secrets/ambit/tokens/ambit-identity",
                                                     f"{scratch}/heartbeat"]}, "periodSeconds": 1},
             "volumeMounts": [
                 {"name": "ca-token", "mountPath": "/var/run/secrets/ambit/tokens", "readOnly": True},
                 {"name": "trust", "mountPath": "/var/run/ambit/trust", "readOnly": True},
                 {"name": "scratch", "mountPath": scratch},
                 {"name": "creds", "mountPath": "/var/run/creds"}]},
            {"name": "peer", "command": ["sh", "-c", f"until [ -s {shared}/heartbeat ]; do sleep 0.05; done; "
                                                     f"echo peer sees $(cat {shared}/heartbeat); exec sleep 600"],
             "readinessProbe": {"exec": {"command": ["cat", f"{shared}/heartbeat"]}, "periodSeconds": 1},
             "volumeMounts": [{"name": "scratch", "mountPath": shared}]},
        ],
        "volumes": [
            {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "ambit-identity", "expirationSeconds": 3600, "path": "ambit-identity"}}]}},
            {"name": "trust", "configMap": {"name": "ambit-trust-bundle", "optional": True}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "creds", "secret": {"secretName": "db-creds"}},
        ],
    }
    pod = create_pod(core, "agent", spec)
    runtime.sync([pod])
    uid = pod["metadata"]["uid"]
    log = layout.pod_log_path(cfg, "node-1", NS, "agent", "agent")
    diag = lambda: (log.read_text() if log.exists() else "(no log)") + f"\nevents: {events(core, 'agent')}"

    def states() -> list[dict]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]

    first = wait_for(lambda: states() and states()[0], what="the agent's first report", diag=diag)
    assert first == {"aud": ["ambit-identity"], "sub": "system:serviceaccount:default:default", "pod": "agent",
                     "token_dir": "Read-only file system", "trust": [], "bundle": None, "password": "s3cret",
                     "sa_token": True}
    # exec probes run in each container's mount namespace and see its volumes
    wait_for(lambda: ready(pod_status(core, "agent")), what="Ready (exec probes reading the volumes)", diag=diag)
    peer_log = layout.pod_log_path(cfg, "node-1", NS, "agent", "peer")
    wait_for(lambda: peer_log.exists() and "peer sees alive" in peer_log.read_text(),
             what="the emptyDir shared between containers", diag=diag)

    # the optional ConfigMap appears, then changes: each shows up within the resync period
    for version in ("BUNDLE-1", "BUNDLE-2"):
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ambit-trust-bundle"},
                "data": {"ca.crt": version}}
        started = time.monotonic()
        if version == "BUNDLE-1":
            core.create_namespaced_config_map(NS, body)
        else:
            core.replace_namespaced_config_map("ambit-trust-bundle", NS, body)
        wait_for(lambda: states()[-1]["bundle"] == version, timeout=10, what=f"{version} in the file", diag=diag)
        assert time.monotonic() - started < RESYNC + 2.0
        assert states()[-1]["trust"] == ["ca.crt"]
    assert all(s["bundle"] in (None, "BUNDLE-1", "BUNDLE-2") for s in states())  # never a partial file

    # every byte lives under the pod's dir in the state dir
    volumes = layout.pod_dir(cfg, "node-1", uid) / "volumes"
    assert (volumes / "kubernetes.io~empty-dir" / "scratch" / "heartbeat").read_text() == "alive"
    assert (volumes / "kubernetes.io~configmap" / "trust" / "ca.crt").read_text() == "BUNDLE-2"
    assert host_state(watched) == before

    runtime.sync([])
    assert runtime.worker(uid) is None or runtime.worker(uid).done.wait(15)
    assert not layout.pod_dir(cfg, "node-1", uid).exists()
    assert host_state(watched) == before


def test_a_missing_configmap_keeps_the_pod_pending_until_it_is_created(node):
    cfg, core, runtime = node
    spec = {"containers": [{"name": "app", "command": ["sh", "-c", "cat /etc/app/conf/settings.ini; exec sleep 600"],
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/app/conf"}]}],
            "volumes": [{"name": "config", "configMap": {
                "name": "app-config", "items": [{"key": "settings", "path": "settings.ini"}]}}]}
    pod = create_pod(core, "app", spec)
    runtime.sync([pod])
    message = 'MountVolume.SetUp failed for volume "config" : configmap "app-config" not found'
    wait_for(lambda: ("Warning", "FailedMount", message) in events(core, "app"), what="a FailedMount event",
             diag=lambda: str(events(core, "app")))
    time.sleep(1.5)  # several retries: still waiting, nothing started, no sandbox made
    status = pod_status(core, "app")
    assert status["phase"] == "Pending" and "podIP" not in status
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert not layout.pod_log_path(cfg, "node-1", NS, "app", "app").exists()
    assert not netns.exists(cfg.pod_netns(pod["metadata"]["uid"]))
    assert len([e for e in events(core, "app") if e[1] == "FailedMount"]) == 1  # not one per retry
    assert not os.path.lexists("/etc/app")

    core.create_namespaced_config_map(NS, {"apiVersion": "v1", "kind": "ConfigMap",
                                           "metadata": {"name": "app-config"},
                                           "data": {"settings": "[server]\nport = 8080\n"}})
    status = wait_for(lambda: (s := pod_status(core, "app")) and ready(s) and s, what="Running after the create",
                      diag=lambda: str(events(core, "app")))
    assert status["phase"] == "Running"
    log = layout.pod_log_path(cfg, "node-1", NS, "app", "app")
    wait_for(lambda: log.exists() and "port = 8080" in log.read_text(), what="the file in the container")
    assert not os.path.lexists("/etc/app")  # /etc was shadowed in the container only


def test_unsupported_volumes_and_subpath_are_refused_with_events(node):
    cfg, core, runtime = node
    spec = {"containers": [{"name": "app", "command": ["sleep", "600"], "volumeMounts": [
                {"name": "scratch", "mountPath": "/tmp/x.conf", "subPath": "x.conf"}]}],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "automountServiceAccountToken": False}
    claim = {"containers": [{"name": "app", "command": ["sleep", "600"]}],
             "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}
    runtime.sync([create_pod(core, "subpath", spec), create_pod(core, "claim", claim)])

    state = wait_for(lambda: (s := pod_status(core, "subpath").get("containerStatuses")) and
                     s[0]["state"].get("waiting", {}).get("reason") == "CreateContainerConfigError" and s[0]["state"],
                     what="CreateContainerConfigError")
    assert "uses subPath 'x.conf', which the sandbox kubelet does not support" in state["waiting"]["message"]
    assert any(e[1] == "Failed" and "subPath" in e[2] for e in events(core, "subpath"))

    message = ('cannot mount the volumes of pod default/claim: volume "data": persistentVolumeClaim volumes are '
               "not supported by the sandbox kubelet; use one of projected, configMap, secret, emptyDir, hostPath")
    wait_for(lambda: ("Warning", "FailedMount", message) in events(core, "claim"), what="the claim's event",
             diag=lambda: str(events(core, "claim")))
    status = pod_status(core, "claim")
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}


# the node agent's use of its hostPaths: write beside the CNI config, and enter pod network
# namespaces through both mounts of /run/netns; every change is reported on stdout
HOST_AGENT = r"""
echo written-by-container > /host/x/hello && echo wrote
echo "run: $(cat "$2"/state)"
if touch /host/run/netns/probe 2>/dev/null; then echo "netns-ro: writable"; else echo "netns-ro: refused"; fi
last=""
while true; do
  seen=""
  for f in /var/run/netns/$1* /host/run/netns/$1*; do
    [ -e "$f" ] && nsenter --net="$f" true 2>/dev/null && seen="$seen $f"
  done
  [ "$seen" != "$last" ] && echo "netns:$seen" && last="$seen"
  sleep 0.1
done
"""


def netns_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("netns:")] if log.exists() else []


def test_host_paths_per_node_and_namespaces_mounted_later(node, tmp_path: Path):
    cfg, core, runtime = node
    tag = secrets.token_hex(3)
    late = f"{cfg.name}-late-{tag}"
    run = f"/var/run/ambit-e2e-{tag}"  # a new directory under /run, as the agent's /var/run/ambit
    host_dir = tmp_path / "nodes" / "node-1" / "x"
    (tmp_path / "nodes" / "node-1" / "run").mkdir(parents=True)
    (tmp_path / "nodes" / "node-1" / "run" / "state").write_text("node-1's run dir")
    watched = ["/host", run, str(tmp_path / "nodes" / "$(NODE_NAME)")]
    before = host_state(watched)
    spec = {
        # the Ambit chart's agent: on the node's network, with fields the sandbox accepts and ignores
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-node-critical",
        "tolerations": [{"operator": "Exists"}],
        "securityContext": {"runAsUser": 0},
        "containers": [{
            "name": "agent", "command": ["sh", "-c", HOST_AGENT, "sh", f"{cfg.name}-", run],
            "securityContext": {"privileged": False, "runAsUser": 0, "runAsNonRoot": False,
                                "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": True,
                                "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"], "drop": ["ALL"]}},
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
            "volumeMounts": [
                {"name": "x", "mountPath": "/host/x"},
                {"name": "run", "mountPath": run},
                {"name": "netns", "mountPath": "/var/run/netns", "mountPropagation": "HostToContainer"},
                {"name": "netns", "mountPath": "/host/run/netns", "mountPropagation": "HostToContainer",
                 "readOnly": True}]}],
        "volumes": [
            {"name": "x", "hostPath": {"path": f"{tmp_path}/nodes/$(NODE_NAME)/x", "type": "DirectoryOrCreate"}},
            {"name": "run", "hostPath": {"path": f"{tmp_path}/nodes/$(NODE_NAME)/run", "type": "DirectoryOrCreate"}},
            {"name": "netns", "hostPath": {"path": "/var/run/netns", "type": "DirectoryOrCreate"}}],
    }
    log = layout.pod_log_path(cfg, "node-1", NS, "agent", "agent")
    diag = lambda: (log.read_text() if log.exists() else "(no log)") + f"\nevents: {events(core, 'agent')}"
    try:
        pod = create_pod(core, "agent", spec)
        runtime.sync([pod])
        wait_for(lambda: ready(pod_status(core, "agent")), what="the agent Ready", diag=diag)

        # the file the container wrote is on the host, in this node's directory
        wait_for(lambda: (host_dir / "hello").exists(), what="the container's file on the host", diag=diag)
        assert (host_dir / "hello").read_text() == "written-by-container\n"
        assert oct(host_dir.stat().st_mode & 0o777) == oct(0o755)
        assert "netns-ro: refused" in log.read_text()  # readOnly: true holds for the bind
        assert "run: node-1's run dir" in log.read_text()

        # namespaces mounted before the container started are usable through both mounts...
        both = lambda name: {f"/var/run/netns/{name}", f"/host/run/netns/{name}"}
        node_ns = cfg.node_netns("node-1")
        wait_for(lambda: (lines := netns_lines(log)) and both(node_ns) <= set(lines[-1].split()[1:]),
                 what="the node's netns in both mounts", diag=diag)
        # ...and so is one created after it started (HostToContainer)
        netns.add(late)
        wait_for(lambda: (lines := netns_lines(log)) and both(late) <= set(lines[-1].split()[1:]),
                 timeout=10, what=f"{late} in both mounts", diag=diag)
        netns.delete(late)
        wait_for(lambda: (lines := netns_lines(log)) and not both(late) & set(lines[-1].split()[1:]),
                 timeout=10, what=f"{late} gone from both mounts", diag=diag)
    finally:
        netns.delete(late)
    runtime.sync([])
    uid = pod["metadata"]["uid"]
    assert runtime.worker(uid) is None or runtime.worker(uid).done.wait(15)
    assert (host_dir / "hello").exists()  # a hostPath outlives its pod, as on a real node
    assert host_state(watched) == before


def test_a_failed_host_path_check_keeps_the_pod_creating_until_the_path_is_right(node, tmp_path: Path):
    cfg, core, runtime = node
    wanted = tmp_path / "nodes" / "node-1" / "data"
    wanted.parent.mkdir(parents=True)
    wanted.write_text("a file, not the directory the pod asks for")
    spec = {"containers": [{"name": "app", "command": ["sh", "-c", "ls /data; exec sleep 600"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "hostPath": {"path": f"{tmp_path}/nodes/$(NODE_NAME)/data",
                                                      "type": "Directory"}}],
            "automountServiceAccountToken": False}
    untyped = {"containers": [{"name": "app", "command": ["sleep", "600"],
                               "volumeMounts": [{"name": "gone", "mountPath": "/gone"}]}],
               "volumes": [{"name": "gone", "hostPath": {"path": f"{tmp_path}/gone"}}],
               "automountServiceAccountToken": False}
    runtime.sync([create_pod(core, "app", spec), create_pod(core, "untyped", untyped)])

    message = (f'MountVolume.SetUp failed for volume "data" : hostPath type check failed: '
               f"{wanted} is not a directory")
    wait_for(lambda: ("Warning", "FailedMount", message) in events(core, "app"), what="the FailedMount event",
             diag=lambda: str(events(core, "app")))
    status = pod_status(core, "app")
    assert status["phase"] == "Pending" and "podIP" not in status
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}

    # an untyped hostPath is not created on the host: the container cannot be created meanwhile
    state = wait_for(lambda: (s := pod_status(core, "untyped").get("containerStatuses")) and
                     s[0]["state"].get("waiting", {}).get("reason") == "CreateContainerError" and s[0]["state"],
                     what="CreateContainerError", diag=lambda: str(events(core, "untyped")))
    assert f"hostPath {tmp_path}/gone does not exist" in state["waiting"]["message"]
    assert not (tmp_path / "gone").exists()

    wanted.unlink()
    (wanted / "inside").mkdir(parents=True)
    wait_for(lambda: ready(pod_status(core, "app")), what="Running once the directory exists",
             diag=lambda: str(events(core, "app")))
    log = layout.pod_log_path(cfg, "node-1", NS, "app", "app")
    wait_for(lambda: log.exists() and log.read_text().split() == ["inside"], what="the directory in the container",
             diag=lambda: log.read_text() if log.exists() else "(no log)")
