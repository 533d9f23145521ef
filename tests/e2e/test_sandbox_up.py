"""`ambit up` / `ambit down` as a user runs them, on a sandbox of its own (never the demo's)."""
import json
import os
from datetime import datetime, timezone
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

AMBIT = [sys.executable, "-m", "ambitctl.cli"]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    env = dict(os.environ, AMBIT_SANDBOX="upt", AMBIT_SANDBOX_INDEX="5",
               AMBIT_SANDBOX_DIR=str(tmp_path_factory.mktemp("sandbox")))
    try:
        up = subprocess.run([*AMBIT, "up", "--nodes", "2", "--demo"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        down = subprocess.run([*AMBIT, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def kubectl(env, *args, check=True):
    kubeconfig = subprocess.run([*AMBIT, "sandbox", "kubeconfig"], env=env, capture_output=True, text=True,
                                check=True).stdout.strip()
    out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], env=env, capture_output=True, text=True,
                         timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_ambit_is_installed_from_its_chart(sandbox):
    """make demo installs Ambit through the Helm chart: every object of Ambit's carries its labels."""
    kinds = "all,serviceaccounts,secrets,configmaps,roles,rolebindings,endpointslices"
    items = json.loads(kubectl(sandbox, "get", kinds, "-n", "ambit-system", "-o", "json").stdout)["items"]
    ours = [o for o in items if o["metadata"]["name"] not in ("default", "kube-root-ca.crt")]
    assert {o["kind"] for o in ours} >= {"DaemonSet", "Deployment", "Pod", "Service", "Secret", "ConfigMap"}
    unlabelled = [f"{o['kind']}/{o['metadata']['name']}" for o in ours
                  if "helm.sh/chart" not in (o["metadata"].get("labels") or {})]
    assert not unlabelled, unlabelled


def test_node_commands_show_what_each_agent_captured(sandbox):
    """The demo is enrolled: every demo pod on node-1 is listed as captured by node-1's agent, and
    `ambit node certs` names each pod's SPIFFE identity and expiry."""
    pods = json.loads(kubectl(sandbox, "get", "pods", "-n", "demo", "-o", "json").stdout)["items"]
    on_node_1 = sorted(p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == "node-1")
    kubeconfig = subprocess.run([*AMBIT, "sandbox", "kubeconfig"], env=sandbox, capture_output=True, text=True,
                                check=True).stdout.strip()
    out = subprocess.run([*AMBIT, "node", "redirection", "--node", "node-1", "--kubeconfig", kubeconfig],
                         env=sandbox, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert sorted(r[1] for r in rows) == on_node_1 and all(r[2:] == ["node-1", "iptables", "captured"] for r in rows), \
        out.stdout
    certs = subprocess.run([*AMBIT, "node", "certs", "-o", "json", "--node", "node-1", "--kubeconfig", kubeconfig],
                           env=sandbox, capture_output=True, text=True, timeout=30)
    assert certs.returncode == 0, certs.stderr
    for row in json.loads(certs.stdout):
        sa = next(p["spec"].get("serviceAccountName", "default") for p in pods if p["metadata"]["name"] == row["pod"])
        assert row["identity"] == f"spiffe://cluster.local/ns/demo/sa/{sa}" and row["state"] == "valid"
        assert datetime.fromisoformat(row["expires"]) > datetime.now(timezone.utc)


def test_a_bad_chart_value_stops_up_before_anything_is_built(tmp_path):
    env = dict(os.environ, AMBIT_SANDBOX="badv", AMBIT_SANDBOX_INDEX="4", AMBIT_SANDBOX_DIR=str(tmp_path))
    up = subprocess.run([*AMBIT, "up", "--nodes", "1", "--set", "agent.logLevel=loud"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 1
    assert "/agent/logLevel': value must be one of" in up.stderr and "partly up" not in up.stderr, up.stderr
    assert not (tmp_path / "badv").exists()
    assert "badv" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_demo_pods_run_on_both_nodes_with_ips(sandbox):
    table = kubectl(sandbox, "get", "pods", "-A", "-o", "wide").stdout
    rows = [line.split() for line in table.splitlines()[1:]]
    demo = [r for r in rows if r[0] == "demo"]
    assert len(demo) == 8, table  # 7 of the demo's own and its waypoint
    assert sum(r[1].startswith("waypoint-") for r in demo) == 1, table
    assert all(r[3] == "Running" and r[2] == "1/1" for r in demo), table
    assert {r[7] for r in demo} == {"node-1", "node-2"}, table
    assert all(r[6].startswith(f"10.{210 + int(sandbox['AMBIT_SANDBOX_INDEX'])}.") for r in demo), table


def test_exec_in_web_pod_reaches_emoji_clusterip(sandbox):
    pods = json.loads(kubectl(sandbox, "get", "pods", "-n", "demo", "-l", "app=web", "-o", "json").stdout)["items"]
    svc = json.loads(kubectl(sandbox, "get", "svc", "-n", "demo", "emoji", "-o", "json").stdout)
    ip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]
    for pod in pods:
        out = subprocess.run([*AMBIT, "sandbox", "exec", f"demo/{pod['metadata']['name']}", "--",
                              "curl", "-s", "-m", "5", f"http://{ip}:{port}/api/list"],
                             env=sandbox, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert ":doughnut:" in out.stdout


def test_logs_show_the_vote_bot_and_its_failures(sandbox):
    pod = json.loads(kubectl(sandbox, "get", "pods", "-n", "demo", "-l", "app=vote-bot", "-o", "json").stdout)["items"][0]
    out = subprocess.run([*AMBIT, "sandbox", "logs", f"demo/{pod['metadata']['name']}"], env=sandbox,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "voting" in out.stdout, out.stdout + out.stderr


def test_down_leaves_nothing(tmp_path):
    env = dict(os.environ, AMBIT_SANDBOX="dnt", AMBIT_SANDBOX_INDEX="4", AMBIT_SANDBOX_DIR=str(tmp_path))
    up = subprocess.run([*AMBIT, "up", "--nodes", "1", "--no-demo"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # a crash: kill -9 the API server, then down must still clean up
        pid = int((tmp_path / "dnt" / "pids" / "apiserver.pid").read_text())
        os.kill(pid, 9)
    finally:
        down = subprocess.run([*AMBIT, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if n.startswith("dnt-")]
    assert "dnt" not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    marker = b"AMBIT_SANDBOX_MEMBER=dnt"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert marker not in (proc / "environ").read_bytes().split(b"\0"), f"pid {proc.name} left running"
            except OSError:
                pass
    assert not (tmp_path / "dnt").exists()
    again = subprocess.run([*AMBIT, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing" in again.stdout


def test_stat_shows_every_demo_deployment_meshed(sandbox):
    kubeconfig = subprocess.run([*AMBIT, "sandbox", "kubeconfig"], env=sandbox, capture_output=True, text=True,
                                check=True).stdout.strip()
    deploys = json.loads(kubectl(sandbox, "get", "deployments", "-n", "demo", "-o", "json").stdout)["items"]
    out = subprocess.run([*AMBIT, "stat", "deploy", "-n", "demo", "-o", "json", "-t", "10s", "--kubeconfig", kubeconfig],
                         env=sandbox, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"web", "emoji", "voting", "vote-bot"}, "the demo's waypoint is not a row"
    for d in deploys:
        if d["metadata"]["name"] == "waypoint":
            continue
        want = d["spec"]["replicas"]
        assert rows[d["metadata"]["name"]]["meshed"] == f"{want}/{want}", rows
        assert rows[d["metadata"]["name"]]["tcp_connections"] >= 0
    # the seed's picture, from the demo's waypoint: 15% of votes fail on purpose at voting, web passes them on
    assert 0 < rows["voting"]["success_rate"] < 1 and rows["emoji"]["success_rate"] == 1.0, rows
    assert 0 < rows["web"]["success_rate"] < 1 and rows["web"]["rps"] > 1 and rows["web"]["latency_p50_ms"] > 0
    assert rows["vote-bot"]["rps"] is None, "nobody calls the bot"
    table = subprocess.run([*AMBIT, "stat", "deploy", "-n", "demo", "--kubeconfig", kubeconfig], env=sandbox,
                           capture_output=True, text=True, timeout=30).stdout
    assert table.splitlines()[0].split() == ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95",
                                             "LATENCY_P99", "TCP_CONN"]


def test_explain_walks_web_to_emoji_and_names_a_missing_endpoint(sandbox):
    """Runs last on the demo: it scales emoji to 0 (and back)."""
    kubeconfig = subprocess.run([*AMBIT, "sandbox", "kubeconfig"], env=sandbox, capture_output=True, text=True,
                                check=True).stdout.strip()
    web = json.loads(kubectl(sandbox, "get", "pods", "-n", "demo", "-l", "app=web", "-o", "json").stdout)["items"][0]

    def explain(*args):
        return subprocess.run([*AMBIT, "explain", "-n", "demo", *args, "--kubeconfig", kubeconfig], env=sandbox,
                              capture_output=True, text=True, timeout=30)

    ok = explain(f"pod/{web['metadata']['name']}", "svc/emoji")
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "verdict: ok", ok.stdout + ok.stderr
    assert "✔ destination svc/emoji: 2 ready endpoint(s)" in ok.stdout
    kubectl(sandbox, "scale", "-n", "demo", "deployment/emoji", "--replicas=0")
    try:
        deadline = time.monotonic() + 30
        while (out := explain("deploy/web", "svc/emoji", "-o", "json")).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        doc = json.loads(out.stdout)
        assert out.returncode == 1 and doc["verdict"] == "broken" and doc["reason"] == "NO_ENDPOINTS", out.stdout
    finally:
        kubectl(sandbox, "scale", "-n", "demo", "deployment/emoji", "--replicas=2")
        kubectl(sandbox, "rollout", "status", "-n", "demo", "deployment/emoji", "--timeout=60s")
