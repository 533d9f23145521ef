"""The real helm against a sandbox with a kubelet, as a user runs it: `helm install --wait` returns
once the workloads are ready (Helm 4 watches the status fields), `helm upgrade --wait` with a
changed value rolls the Deployment's and the DaemonSet's pods, `helm list` shows the release and
`helm uninstall` leaves nothing of it. Own sandbox (`helme`, index 4), removed afterwards."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

AMBIT = [str(Path(sys.executable).with_name("ambit"))]
HELM = shutil.which("helm")
assert HELM, "helm is not installed; `make deps` installs it (these tests never skip)"
CHART = Path(__file__).resolve().parents[1] / "charts" / "tiny"
NS = "tiny"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("helm")
    env = dict(os.environ, AMBIT_SANDBOX="helme", AMBIT_SANDBOX_INDEX="4", AMBIT_SANDBOX_DIR=str(base / "sandbox"),
               HOME=str(base / "home"))
    try:
        up = subprocess.run([*AMBIT, "up", "--nodes", "1", "--no-mesh", "--no-demo"], env=env, capture_output=True,
                            text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        kubeconfig = subprocess.run([*AMBIT, "sandbox", "kubeconfig"], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip()
        yield {**env, "KUBECONFIG": kubeconfig}
    finally:
        down = subprocess.run([*AMBIT, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def run(env, *argv: str) -> str:
    out = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


def get(env, what: str) -> list[dict]:
    return json.loads(run(env, "kubectl", "get", what, "-n", NS, "-o", "json"))["items"]


def pods(env, component: str) -> list[dict]:
    return [p for p in get(env, "pods") if p["metadata"]["labels"].get("app.kubernetes.io/component") == component]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def message(pod: dict) -> str:
    [env] = pod["spec"]["containers"][0]["env"]
    return env["value"]


def test_install_upgrade_uninstall(env):
    started = time.monotonic()
    run(env, HELM or "helm", "install", "t1", str(CHART), "-n", NS, "--create-namespace", "--wait", "--timeout", "60s")
    # --wait returned: what it waited for is true now, without polling
    [deploy] = get(env, "deployments")
    assert deploy["status"]["readyReplicas"] == deploy["status"]["availableReplicas"] == 2
    [ds] = get(env, "daemonsets")
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == 1
    web, agent = pods(env, "web"), pods(env, "agent")
    assert len(web) == 2 and len(agent) == 1 and all(ready(p) for p in web + agent)
    before = {p["metadata"]["uid"] for p in web + agent}

    run(env, HELM or "helm", "upgrade", "t1", str(CHART), "-n", NS, "--set", "message=bye", "--wait", "--timeout", "60s")
    [deploy] = get(env, "deployments")
    assert deploy["status"]["observedGeneration"] == deploy["metadata"]["generation"] == 2
    assert deploy["status"]["updatedReplicas"] == deploy["status"]["readyReplicas"] == 2
    [ds] = get(env, "daemonsets")
    assert ds["status"]["updatedNumberScheduled"] == ds["status"]["numberReady"] == 1
    web, agent = pods(env, "web"), pods(env, "agent")
    live = [p for p in web + agent if not p["metadata"].get("deletionTimestamp")]
    assert {message(p) for p in live} == {"bye"} and all(ready(p) for p in live) and len(live) == 3
    assert not before & {p["metadata"]["uid"] for p in live}, "the upgrade did not replace every pod"

    [release] = json.loads(run(env, HELM or "helm", "list", "-n", NS, "-o", "json"))
    assert (release["name"], release["revision"], release["status"]) == ("t1", "2", "deployed")

    assert run(env, HELM or "helm", "uninstall", "t1", "-n", NS, "--wait").strip() == 'release "t1" uninstalled'
    kinds = "deployments,replicasets,daemonsets,pods,services,endpointslices,configmaps,secrets"
    deadline = time.monotonic() + 20
    while (left := [o["metadata"]["name"] for o in get(env, kinds)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"left behind by helm uninstall: {left}"
    assert time.monotonic() - started < 60
