"""Ambit's own chart with the real helm, as a user with a cluster would run it (issue: the chart,
"Done when"): on `ambit up --no-mesh`, `helm install ... --wait` gives a working mesh (an enrolled
namespace's traffic between nodes is mutual TLS, by the agents' metrics), `helm upgrade --set
agent.logLevel=debug` rolls the agents, `helm list` shows the release, `helm uninstall` leaves no
Ambit object and no ambit-cni in any node's CNI config. Own sandbox (`hambt`), removed afterwards."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
AMBIT = [sys.executable, "-m", "ambitctl.cli"]
HELM = shutil.which("helm")
assert HELM, "helm is not installed; `make deps` installs it (these tests never skip)"
CHART = ROOT / "deploy" / "charts" / "ambit"
NS = "ambit-system"
SERVER = "import http.server as h; h.HTTPServer(('0.0.0.0', 8080), h.SimpleHTTPRequestHandler).serve_forever()"


class Cluster:
    def __init__(self, base: Path) -> None:
        self.env = dict(os.environ, AMBIT_SANDBOX="hambt", AMBIT_SANDBOX_INDEX="4",
                        AMBIT_SANDBOX_DIR=str(base / "sandbox"), HOME=str(base / "home"))
        sys.path.insert(0, str(ROOT))
        from sandbox.config import SandboxConfig

        self.cfg = SandboxConfig(name="hambt", index=4, base_dir=base / "sandbox")
        self.env["KUBECONFIG"] = str(self.cfg.kubeconfig_path)

    def run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        return out

    def helm(self, *args: str) -> str:
        return self.run(HELM or "helm", *args, "--kubeconfig", str(self.cfg.kubeconfig_path)).stdout

    def get(self, *args: str) -> list[dict]:
        return json.loads(self.run("kubectl", "get", *args, "-o", "json").stdout)["items"]

    def metrics(self, i: int) -> str:
        with urllib.request.urlopen(f"http://{self.cfg.node_ip(i)}:15020/metrics", timeout=5) as resp:
            return resp.read().decode()


def _wait(pred, *, timeout: float = 60, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("helm-ambit"))
    try:
        c.run(*AMBIT, "up", "--nodes", "2", "--no-mesh", "--no-demo", timeout=180)
        yield c
    finally:
        down = c.run(*AMBIT, "down", timeout=180, check=False)
        assert down.returncode == 0, down.stdout + down.stderr


def _conflist_plugins(c: Cluster, node: str) -> list[str]:
    (conf,) = sorted((c.cfg.state_dir / "nodes" / node / "cni" / "net.d").glob("*.conflist"))
    return [p["type"] for p in json.loads(conf.read_text())["plugins"]]


def test_helm_install_upgrade_uninstall(cluster):
    c = cluster
    c.helm("install", "ambit", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "120s",
           *HELM_VALUES(c))
    objs = [o for kind in ("serviceaccounts", "services", "deployments", "daemonsets", "roles", "rolebindings")
            for o in c.get(kind, "-n", NS) if o["metadata"]["name"] != "default"]
    assert objs and all("helm.sh/chart" in (o["metadata"].get("labels") or {}) for o in objs), \
        [o["metadata"]["name"] for o in objs if "helm.sh/chart" not in (o["metadata"].get("labels") or {})]
    assert re.search(r"^ambit\s+ambit-system\s+1\s+.*deployed", c.helm("list", "-n", NS), re.M)
    for node in ("node-1", "node-2"):
        assert _conflist_plugins(c, node)[-1] == "ambit-cni"

    # a working mesh: an enrolled namespace's traffic between nodes is mutual TLS
    c.run("kubectl", "create", "namespace", "shop")
    c.run("kubectl", "label", "namespace", "shop", "ambit.dev/dataplane-mode=ambient")
    for name, node, command in (("server", "node-2", ["python3", "-c", SERVER]), ("client", "node-1", ["sleep", "3600"])):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
               "spec": {"nodeName": node, "containers": [{"name": name, "image": "none", "command": command}]}}
        subprocess.run(["kubectl", "apply", "-f", "-"], input=json.dumps(pod), env=c.env, check=True,
                       capture_output=True, text=True)
    c.run("kubectl", "wait", "-n", "shop", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=60s")
    server_ip = c.get("pods", "-n", "shop", "--field-selector", "metadata.name=server")[0]["status"]["podIP"]
    _wait(lambda: c.run(*AMBIT, "sandbox", "exec", "shop/client", "--", "curl", "-s", "-m", "5", "-o", "/dev/null",
                        "-w", "%{http_code}", f"http://{server_ip}:8080/", check=False).stdout == "200",
          what="a request from client to server through the mesh")
    mtls = re.compile(r'ambit_tcp_connections_opened_total\{[^}]*connection_security_policy="mutual_tls"'
                      r'[^}]*reporter="destination"[^}]*source_workload="client"[^}]*\} [1-9]')
    _wait(lambda: mtls.search(c.metrics(2)), what="node-2's agent to count a mutual-TLS connection from client")

    # upgrade: a changed value rolls the agents
    before = {p["metadata"]["uid"] for p in c.get("pods", "-n", NS, "-l", "app.kubernetes.io/component=node-agent")}
    c.helm("upgrade", "ambit", str(CHART), "-n", NS, "--set", "agent.logLevel=debug", "--wait", "--timeout", "120s",
           *HELM_VALUES(c))
    agents = c.get("pods", "-n", NS, "-l", "app.kubernetes.io/component=node-agent")
    assert len(agents) == 2 and not before & {p["metadata"]["uid"] for p in agents}, "the agents were not rolled"
    for pod in agents:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["AMBIT_LOG_LEVEL"] == "debug"
    assert re.search(r"^ambit\s+ambit-system\s+2\s+.*deployed", c.helm("list", "-n", NS), re.M)

    # uninstall: nothing of Ambit's is left, every node's CNI config is as it was
    c.helm("uninstall", "ambit", "-n", NS, "--wait", "--timeout", "120s")
    _wait(lambda: all(_conflist_plugins(c, n) == ["ptp", "portmap"] for n in ("node-1", "node-2")),
          what="ambit-cni to be unchained from every node")
    def leftovers() -> list[str]:
        names = [f"{o['kind']}/{o['metadata']['name']}"
                 for kind in ("all", "secrets", "configmaps", "serviceaccounts", "roles", "rolebindings")
                 for o in c.get(kind, "-n", NS)
                 if o["metadata"]["name"] not in ("default", "kube-root-ca.crt")]
        names += [f"{kind}/{o['metadata']['name']}" for kind in ("clusterroles", "clusterrolebindings")
                  for o in c.get(kind) if o["metadata"]["name"].startswith("ambit-")]
        return names
    _wait(lambda: not leftovers(), what=f"nothing left after helm uninstall (still: {leftovers()})")


def HELM_VALUES(c: Cluster) -> list[str]:  # noqa: N802 - read as a constant of the test
    """The chart's defaults: nothing (the sandbox gives each node its own CNI and run dirs)."""
    return []
