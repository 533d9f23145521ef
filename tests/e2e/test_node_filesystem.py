"""Each sandbox node has its own filesystem (sandbox/node/nodefs.py), as separate machines do:
containers with hostPath /etc/cni/net.d and /var/run/ambit see their node's directories, pod network
namespaces made after they started still appear, nothing is mounted on the host, and `ambit down`
leaves no holder process and no mount. Own sandbox (`nodef`, index 2), removed afterwards."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from sandbox.config import SandboxConfig
from sandbox.kube import api_client
from sandbox.node import layout, netns

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

AMBIT = [sys.executable, "-m", "ambitctl.cli"]
NAME, INDEX = "nodef", 2
NODES = ("node-1", "node-2")
NODE_LOCAL = [path for path, _ in layout.NODE_LOCAL_PATHS]

# what a node agent does with its hostPaths, reporting on stdout
SCRIPT = r"""
echo "conf: $(grep -h -o '"subnet": "[^"]*"' /etc/cni/net.d/*.conflist)"
echo "host-conf: $(grep -h -o '"subnet": "[^"]*"' /host/etc/cni/net.d/*.conflist)"
echo "run: $(cat /var/run/ambit/who)"
echo "bin: $(ls /opt/cni/bin)"
while true; do
  [ -e "/var/run/netns/$1" ] && nsenter --net="/var/run/netns/$1" true && echo "late: $1" && exec sleep 600
  sleep 0.1
done
"""


def mounts() -> list[str]:
    """The host's mount points (the fifth field of /proc/self/mountinfo)."""
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def holders(cfg: SandboxConfig) -> list[int]:
    """Live processes holding one of this sandbox's node filesystems."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"sandbox.node.nodefs" in argv and any(str(cfg.state_dir).encode() in a for a in argv):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    base = tmp_path_factory.mktemp("nodefs")
    env = dict(os.environ, AMBIT_SANDBOX=NAME, AMBIT_SANDBOX_INDEX=str(INDEX), AMBIT_SANDBOX_DIR=str(base))
    cfg = SandboxConfig(name=NAME, index=INDEX, nodes=2, base_dir=base)
    before = {"mounts": mounts(), "paths": {p: os.path.lexists(p) for p in NODE_LOCAL},
              "etc-cni": sorted(os.listdir("/etc/cni/net.d")) if os.path.isdir("/etc/cni/net.d") else None}
    try:
        up = subprocess.run([*AMBIT, "up", "--nodes", "2", "--no-mesh", "--no-demo"], env=env,
                            capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        yield env, cfg, before
    finally:
        down = subprocess.run([*AMBIT, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def _pod(node: str, late: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"agent-{node}"}, "spec": {
        "nodeName": node, "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "agent", "image": "ambit", "command": ["sh", "-c", SCRIPT, "sh", late],
                        "volumeMounts": [
                            {"name": "cni-conf", "mountPath": "/etc/cni/net.d"},
                            {"name": "cni-conf", "mountPath": "/host/etc/cni/net.d", "readOnly": True},
                            {"name": "cni-bin", "mountPath": "/opt/cni/bin"},
                            {"name": "run", "mountPath": "/var/run/ambit"},
                            {"name": "netns", "mountPath": "/var/run/netns",
                             "mountPropagation": "HostToContainer"}]}],
        "volumes": [{"name": "cni-conf", "hostPath": {"path": "/etc/cni/net.d", "type": "DirectoryOrCreate"}},
                    {"name": "cni-bin", "hostPath": {"path": "/opt/cni/bin", "type": "DirectoryOrCreate"}},
                    {"name": "run", "hostPath": {"path": "/var/run/ambit", "type": "DirectoryOrCreate"}},
                    {"name": "netns", "hostPath": {"path": "/var/run/netns", "type": "DirectoryOrCreate"}}]}}


def _wait(fn, *, what: str, timeout: float = 30.0, diag=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := fn():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{diag()}")


def test_containers_see_their_nodes_paths_and_namespaces_made_later(sandbox):
    env, cfg, before = sandbox
    assert len(holders(cfg)) == 2  # one per node, held since the kubelets started
    for node in NODES:
        (layout.agent_run_dir(cfg, node) / "who").write_text(f"{node}'s run dir")
        (cfg.cni_bin_dir(node) / f"plugin-of-{node}").write_text("")
    late = f"{NAME}-late-{secrets.token_hex(3)}"  # the sandbox's prefix: ambit down removes it whatever happens
    core = client.CoreV1Api(api_client(cfg))
    for node in NODES:
        core.create_namespaced_pod("default", _pod(node, late))
    logs = {node: layout.pod_log_path(cfg, node, "default", f"agent-{node}", "agent") for node in NODES}
    read = lambda node: logs[node].read_text() if logs[node].exists() else ""
    diag = lambda: "\n".join(f"{n}: {read(n)!r}" for n in NODES)
    for node in NODES:
        _wait(lambda: "bin:" in read(node), what=f"the container on {node} to report", diag=diag)

    for i, node in enumerate(NODES, start=1):
        subnet = f'"subnet": "{cfg.pod_cidr(i)}"'
        assert f"conf: {subnet}\n" in read(node), diag()  # the node's conflist, not the host's nor the other's
        assert f"host-conf: {subnet}\n" in read(node), diag()  # the same through a bind elsewhere
        assert f"run: {node}'s run dir\n" in read(node), diag()
        assert f"bin: plugin-of-{node}\n" in read(node), diag()

    # the pods' network namespaces were made by the kubelets after the holders started: a new one is
    # seen in running containers (host -> node filesystem -> container, each a slave of the one before)
    netns.add(late)
    for node in NODES:
        _wait(lambda: f"late: {late}" in read(node), what=f"{late} in the container on {node}", diag=diag)

    # nothing of it is mounted or made on the host
    now = mounts()
    assert not [m for m in now if m in NODE_LOCAL or m.startswith(str(cfg.state_dir))], now
    assert {p: os.path.lexists(p) for p in NODE_LOCAL} == before["paths"]
    assert (sorted(os.listdir("/etc/cni/net.d")) if os.path.isdir("/etc/cni/net.d") else None) == before["etc-cni"]


def test_a_kubelet_restart_finds_the_same_node_filesystem(sandbox):
    env, cfg, _ = sandbox
    first = sorted(holders(cfg))
    pid = int((cfg.pid_dir / "kubelet-node-1.pid").read_text())
    log = cfg.log_dir / "kubelet-node-1.log"
    os.kill(pid, 15)
    _wait(lambda: not Path(f"/proc/{pid}").exists(), what="the kubelet to exit")
    from sandbox import procs
    from sandbox.node.kubelet import kubelet_argv

    seen = len(log.read_text())
    procs.start(cfg, name="kubelet-node-1", argv=kubelet_argv(cfg, "node-1", 1))
    _wait(lambda: "the node's filesystem is the mount namespace of pid" in log.read_text()[seen:],
          what="the new kubelet to find the node's filesystem", diag=lambda: log.read_text()[seen:])
    assert sorted(holders(cfg)) == first


def test_down_leaves_no_holder_and_no_mount(sandbox):
    env, cfg, before = sandbox
    assert holders(cfg)
    down = subprocess.run([*AMBIT, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not holders(cfg)
    assert not [n for n in netns.list_names(f"{NAME}-")]
    # mounts other sandboxes make meanwhile (their pod namespaces) are not ours to compare
    ours = lambda points: [m for m in points if not m.startswith("/run/netns/") or m.startswith(f"/run/netns/{NAME}-")]
    assert ours(mounts()) == ours(before["mounts"])
    assert {p: os.path.lexists(p) for p in NODE_LOCAL} == before["paths"]
    assert not cfg.state_dir.exists()
