"""The mesh core as a user tries it, on a sandbox of its own (issue: mesh core, "Done when").

Two pods on different nodes; a request carrying a unique marker crosses the underlay in plaintext
before the namespace is labelled, and only as TLS 1.3 to port 15008 after; removing the label
restores plaintext; no pod restarts. Certificates, refusals, metrics, agent and CA outages,
garbage on 15008.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from e2e_sandbox import AMBIT, ECHO_SERVER, Sandbox  # tests/e2e is on sys.path

pytestmark = pytest.mark.root

NAME, INDEX = "mesht", 3

@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    s = Sandbox(tmp_path_factory.mktemp("mesh"), name=NAME, index=INDEX)
    try:
        s.ambit("up", "--nodes", "2", "--no-demo", timeout=180)
        s.kubectl("create", "namespace", "shop")
        for name, node, command in (
            ("server", "node-2", ["python3", "-c", ECHO_SERVER]),
            ("client", "node-1", ["sleep", "3600"]),
        ):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
                   "spec": {"nodeName": node, "serviceAccountName": "default",
                            "containers": [{"name": name, "image": "none", "command": command}]}}
            if name == "server":
                pod["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
            s.kubectl("apply", "-f", "-", input=json.dumps(pod))
        s.kubectl("create", "service", "clusterip", "server", "-n", "shop", "--tcp=80:8080")
        s.kubectl("wait", "-n", "shop", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=60s")
        yield s
    finally:
        s.ambit("down", check=False, timeout=180)


def _server_ip(sb: Sandbox) -> str:
    return sb.get("pod", "-n", "shop", "server")["status"]["podIP"]


def _service_ip(sb: Sandbox) -> str:
    return sb.get("service", "-n", "shop", "server")["spec"]["clusterIP"]


class Capture:
    """tcpdump on node-1's link to the underlay (the host side of its veth)."""

    def __init__(self, sb: Sandbox, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(["tcpdump", "--immediate-mode", "-i", sb.cfg.node_host_veth(1), "-U", "-s", "0", "-w", str(path),
                                      "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "listening on <if>, ..." once the capture is attached
        assert "listening on" in line, line

    def stop(self) -> bytes:
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=10)
        return self.path.read_bytes()


def _wait(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _captured(sb: Sandbox, node: str, pod: str) -> bool:
    return any(p.get("name") == pod and p.get("redirection") == "installed"
               for p in sb.config_dump(node).get("redirection", []))


def _request(sb: Sandbox, marker: str, target: str | None = None):
    target = target or f"{_service_ip(sb)}:80"
    return sb.pod_exec("client", "curl", "-s", "-m", "10", f"http://{target}/{marker}")


def _label(sb: Sandbox, on: bool) -> None:
    if on:
        sb.kubectl("label", "namespace", "shop", "ambit.dev/dataplane-mode=ambient", "--overwrite")
        _wait(lambda: _captured(sb, "node-1", "client") and _captured(sb, "node-2", "server"), what="pods captured")
    else:
        sb.kubectl("label", "namespace", "shop", "ambit.dev/dataplane-mode-")
        _wait(lambda: not _captured(sb, "node-1", "client") and not _captured(sb, "node-2", "server"),
              what="pods released")


def _restarts(sb: Sandbox) -> dict:
    return {p["metadata"]["name"]: (p["metadata"]["uid"], sum(c.get("restartCount", 0)
                                                               for c in p["status"].get("containerStatuses", [])))
            for p in sb.get("pods", "-n", "shop")["items"]}


TLS13_SERVER_HELLO = b"\x00\x2b\x00\x02\x03\x04"  # supported_versions = TLS 1.3 in a ServerHello


def test_label_moves_traffic_to_mtls_and_back_without_restarts(sb, tmp_path):
    before = _restarts(sb)

    marker = f"plain-{uuid.uuid4().hex}"
    cap = Capture(sb, tmp_path / "plain.pcap")
    out = _request(sb, marker)
    wire = cap.stop()
    assert out.returncode == 0 and marker in out.stdout, out.stderr
    assert marker.encode() in wire, "before enrolment the request should cross the underlay in plaintext"

    _label(sb, True)
    marker = f"secret-{uuid.uuid4().hex}"
    cap = Capture(sb, tmp_path / "mtls.pcap")
    out = _request(sb, marker)
    wire = cap.stop()
    assert out.returncode == 0 and f"echo /{marker}" in out.stdout, out.stdout + out.stderr
    assert marker.encode() not in wire, "the marker crossed the underlay in plaintext after enrolment"
    assert TLS13_SERVER_HELLO in wire, "no TLS 1.3 ServerHello on the wire"
    tcpdump = subprocess.run(["tcpdump", "-nr", str(tmp_path / "mtls.pcap")], capture_output=True, text=True).stdout
    assert f"{_server_ip(sb)}.15008" in tcpdump, tcpdump[-2000:]
    assert ".8080" not in tcpdump and ".80:" not in tcpdump

    _label(sb, False)
    marker = f"plain-again-{uuid.uuid4().hex}"
    cap = Capture(sb, tmp_path / "plain2.pcap")
    out = _request(sb, marker)
    wire = cap.stop()
    assert out.returncode == 0 and marker in out.stdout
    assert marker.encode() in wire
    assert _restarts(sb) == before, "enrolment must not restart or recreate pods"


def _trust_bundle(sb: Sandbox, path: Path) -> Path:
    cm = sb.get("configmap", "-n", "ambit-system", "ambit-trust-bundle")
    path.write_text(cm["data"]["root-cert.pem"])
    return path


def test_tunnel_presents_the_pods_spiffe_id_and_refuses_strangers(sb, tmp_path):
    _label(sb, True)
    server_ip = _server_ip(sb)
    root = _trust_bundle(sb, tmp_path / "root.pem")
    # no client certificate: the handshake shows the server's certificate, then the server refuses us
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{sb.cfg.node_netns('node-1')}", "--", "openssl", "s_client", "-connect",
         f"{server_ip}:15008", "-showcerts", "-tls1_3"], input="hello\n", capture_output=True, text=True, timeout=20)
    certs = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out.stdout, re.S)
    assert certs, out.stdout + out.stderr
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(certs[0] + "\n")
    chain = tmp_path / "chain.pem"
    chain.write_text("\n".join(certs[1:]) + "\n")
    san = subprocess.run(["openssl", "x509", "-in", str(leaf), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True).stdout
    assert "URI:spiffe://cluster.local/ns/shop/sa/default" in san
    verify_args = ["openssl", "verify", "-CAfile", str(root)]
    if certs[1:]:
        verify_args += ["-untrusted", str(chain)]
    verify = subprocess.run([*verify_args, str(leaf)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "hello" not in out.stdout
    # a client with a certificate from another root is refused too
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/O=intruder",
                    "-addext", "subjectAltName=URI:spiffe://cluster.local/ns/shop/sa/default"],
                   check=True, capture_output=True)
    out2 = subprocess.run(
        ["nsenter", f"--net=/run/netns/{sb.cfg.node_netns('node-1')}", "--", "openssl", "s_client", "-connect",
         f"{server_ip}:15008", "-cert", str(crt), "-key", str(key), "-tls1_3"],
        input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=20)
    assert "echo" not in out2.stdout
    metrics = _metrics(sb, 2)
    assert re.search(r'ambit_tcp_connections_failed_total\{[^}]*reporter="destination"[^}]*\} [1-9]', metrics), \
        "refused tunnel clients are counted"


def _metrics(sb: Sandbox, i: int) -> str:
    with urllib.request.urlopen(f"http://{sb.cfg.node_ip(i)}:15020/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_metrics_label_the_mtls_connection_and_pass_promtool(sb, tmp_path):
    _label(sb, True)
    assert _request(sb, "metrics-probe").returncode == 0
    for i, reporter in ((1, "source"), (2, "destination")):
        text = _metrics(sb, i)
        line = next((l for l in text.splitlines() if l.startswith("ambit_tcp_connections_opened_total{")
                     and f'reporter="{reporter}"' in l and 'source_workload="client"' in l), None)
        assert line, text
        assert 'destination_workload="server"' in line
        assert 'source_workload_namespace="shop"' in line and 'destination_workload_namespace="shop"' in line
        assert 'connection_security_policy="mutual_tls"' in line
        assert 'source_principal="spiffe://cluster.local/ns/shop/sa/default"' in line
        assert 'destination_service="server.shop.svc.cluster.local"' in line
        f = tmp_path / f"m{i}.txt"
        f.write_text(text)
        check = subprocess.run(["promtool", "check", "metrics"], stdin=f.open(), capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def _set_agent_on(sb: Sandbox, node: str, on: bool) -> None:
    """Take the agent off a node the way an operator would: a nodeSelector on the DaemonSet."""
    selector = {"kubernetes.io/hostname": node} if on else {"ambit.dev/no-such-node": "true"}
    sb.kubectl("patch", "daemonset", "-n", "ambit-system", "ambit-node-agent", "--type=merge",
               "-p", json.dumps({"spec": {"template": {"spec": {"nodeSelector": selector}}}}))


def _agent_running(sb: Sandbox, node: str) -> bool:
    pods = sb.get("pods", "-n", "ambit-system", "-l", "app.kubernetes.io/component=node-agent")["items"]
    return any(p["spec"].get("nodeName") == node and p["status"].get("phase") == "Running"
               and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
               for p in pods)


def _check(sb: Sandbox, *args: str):
    return sb.ambit("check", "--kubeconfig", str(sb.cfg.kubeconfig_path), *args, check=False, timeout=120)


def test_check_passes_on_a_healthy_mesh_and_sees_a_pod_lose_its_rules(sb):
    _label(sb, True)
    out = _check(sb, "--wait", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("✔") >= 14 and "×" not in out.stdout.split("Status")[0]
    assert "✔ every enrolled pod is captured (asked of its node's agent)" in out.stdout
    doc = json.loads(_check(sb, "-o", "json").stdout)
    assert doc["success"] is True
    # someone deletes the client's redirection by hand: the agent, asked, reports it
    client_uid = sb.get("pod", "-n", "shop", "client")["metadata"]["uid"]
    flushed = subprocess.run(["nsenter", f"--net=/run/netns/{sb.cfg.pod_netns(client_uid)}", "--",
                              "iptables", "-t", "nat", "-F"], capture_output=True, text=True)
    assert flushed.returncode == 0, flushed.stderr
    try:
        out = _check(sb, "-o", "short")
        assert out.returncode == 1 and "× every enrolled pod is captured" in out.stdout, out.stdout
        assert "shop/client on node-1: redirection " in out.stdout and "see docs/checks.md#pods-captured" in out.stdout
    finally:
        _label(sb, False)  # releasing and enrolling again installs the rules afresh
        _label(sb, True)
    assert _check(sb, "--wait", "30").returncode == 0


def test_agent_down_fails_closed_and_recovers_without_pod_restarts(sb, tmp_path):
    _label(sb, True)
    before = _restarts(sb)
    try:
        _set_agent_on(sb, "node-2", True)  # node-1 loses its agent; node-2 keeps one
        _wait(lambda: not _agent_running(sb, "node-1"), what="node-1 agent gone")
        out = _check(sb, "-o", "short")
        assert out.returncode == 1 and "× a node agent runs on every node" in out.stdout, out.stdout
        assert "no node agent on node-1" in out.stdout and "see docs/checks.md#agent-on-every-node" in out.stdout
        marker = f"down-{uuid.uuid4().hex}"
        cap = Capture(sb, tmp_path / "down.pcap")
        out = _request(sb, marker)
        wire = cap.stop()
        assert out.returncode != 0 or "echo" not in out.stdout, "connection succeeded without the agent"
        assert marker.encode() not in wire, "plaintext leaked while the agent was down"
    finally:
        sb.kubectl("patch", "daemonset", "-n", "ambit-system", "ambit-node-agent", "--type=json",
                   "-p", '[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]')
    _wait(lambda: _agent_running(sb, "node-1") and _captured(sb, "node-1", "client"), timeout=40,
          what="node-1 agent back")
    out = _wait(lambda: (r := _request(sb, "after-restart")).returncode == 0 and "echo" in r.stdout and r,
                what="traffic restored")
    assert "after-restart" in out.stdout
    assert _restarts(sb) == before


def test_ca_down_does_not_break_traffic(sb):
    _label(sb, True)
    sb.kubectl("scale", "deployment", "-n", "ambit-system", "ambit-identity", "--replicas=0")
    try:
        _wait(lambda: not sb.get("pods", "-n", "ambit-system", "-l", "app.kubernetes.io/component=identity")["items"],
              what="CA gone")
        out = _check(sb, "-o", "short")
        assert out.returncode == 1 and "× the identity CA is ready" in out.stdout and "scaled to 0" in out.stdout, \
            out.stdout
        out = _request(sb, "ca-down")
        assert out.returncode == 0 and "echo /ca-down" in out.stdout
    finally:
        sb.kubectl("scale", "deployment", "-n", "ambit-system", "ambit-identity", "--replicas=1")


HALF_THEN_FINISH = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=10)
s.sendall(b"GET /survivor HTTP/1.0\r\n")
time.sleep(float(sys.argv[2]))
s.sendall(b"\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk: break
    data += chunk
print(data.decode(errors="replace"))
"""


def test_garbage_on_15008_is_refused_and_harms_no_one(sb):
    _label(sb, True)
    server_ip = _server_ip(sb)
    survivor = subprocess.Popen([*AMBIT, "sandbox", "exec", "shop/client", "--", "python3", "-c", HALF_THEN_FINISH,
                                 _service_ip(sb), "2"], env=sb.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    time.sleep(0.5)
    send_raw = ("import socket, sys\n"
                "s = socket.create_connection((sys.argv[1], 15008), timeout=5)\n"
                "s.sendall(bytes.fromhex(sys.argv[2]))\n"
                "try:\n    print(repr(s.recv(4096)))\nexcept OSError as e:\n    print('closed', e)\n")
    for payload in (os.urandom(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello",
                    b"AMBT\x01\x00\x00\x13" + b"\x00" * 11):
        r = subprocess.run(["nsenter", f"--net=/run/netns/{sb.cfg.node_netns('node-1')}", "--", sys.executable, "-c",
                            send_raw, server_ip, payload.hex()], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert "echo" not in r.stdout
    out, err = survivor.communicate(timeout=30)
    assert "echo /survivor" in out, out + err
    assert _request(sb, "after-garbage").returncode == 0


def _agent_pid(sb: Sandbox, node: str) -> int | None:
    pids = subprocess.run(["ip", "netns", "pids", sb.cfg.node_netns(node)], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"node-agent" in cmdline:
            return int(pid)
    return None


def test_agent_crash_never_leaks_plaintext(sb, tmp_path):
    """kill -9: the rules stay in the pods, nothing listens, connections fail until the kubelet restarts it."""
    _label(sb, True)
    pid = _agent_pid(sb, "node-1")
    assert pid, "no node agent process on node-1"
    cap = Capture(sb, tmp_path / "crash.pcap")
    os.kill(pid, signal.SIGKILL)
    markers = []
    for i in range(5):
        marker = f"crash-{i}-{uuid.uuid4().hex}"
        markers.append(marker)
        _request(sb, marker)
    wire = cap.stop()
    for marker in markers:
        assert marker.encode() not in wire, "plaintext leaked while the agent was dead"
    _wait(lambda: (p := _agent_pid(sb, "node-1")) and p != pid and _captured(sb, "node-1", "client"), timeout=40,
          what="the kubelet to restart the agent")
    out = _wait(lambda: (r := _request(sb, "after-crash")).returncode == 0 and "echo" in r.stdout and r,
                what="traffic restored after the crash")
    assert "after-crash" in out.stdout


def _conflist_plugins(sb: Sandbox, node: str) -> list[str]:
    conf_dir = sb.cfg.state_dir / "nodes" / node / "cni" / "net.d"
    (conf,) = sorted(conf_dir.glob("*.conflist"))
    return [p["type"] for p in json.loads(conf.read_text())["plugins"]]


def _mtls_only(sb: Sandbox, tmp_path: Path, pod: str, name: str) -> None:
    marker = f"{name}-{uuid.uuid4().hex}"
    cap = Capture(sb, tmp_path / f"{name}.pcap")
    out = sb.pod_exec(pod, "curl", "-s", "-m", "10", f"http://{_service_ip(sb)}:80/{marker}")
    wire = cap.stop()
    assert out.returncode == 0 and f"echo /{marker}" in out.stdout, out.stdout + out.stderr
    assert marker.encode() not in wire, f"{pod}'s request crossed the underlay in plaintext"
    assert TLS13_SERVER_HELLO in wire


def test_uninstall_then_install_again(sb, tmp_path):
    """ambit uninstall leaves no Ambit object and unchains ambit-cni (new pods start in plaintext);
    ambit install brings mTLS back to the running pods without restarting them; a second install
    changes nothing. Runs last: it reinstalls Ambit with the sandbox's values."""
    _label(sb, True)
    before = _restarts(sb)
    kubeconfig = str(sb.cfg.kubeconfig_path)
    out = sb.ambit("uninstall", "--kubeconfig", kubeconfig, timeout=180)
    assert "Ambit is uninstalled" in out.stdout
    assert "namespaces shop are still labelled" in out.stdout, out.stdout
    assert sb.kubectl("get", "namespace", "ambit-system", check=False).returncode != 0
    for kind in ("clusterroles", "clusterrolebindings"):
        names = [i["metadata"]["name"] for i in sb.get(kind)["items"]]
        assert not [n for n in names if n.startswith("ambit-")], names
    for node in ("node-1", "node-2"):
        assert _conflist_plugins(sb, node) == ["ptp", "portmap"], "ambit-cni is still chained on " + node

    # new pods in the still-labelled namespace start, uncaptured (running ones stay as they were:
    # captured, failing closed until Ambit is back)
    for name, node, command in (("late", "node-1", ["sleep", "3600"]), ("late-server", "node-2", ["python3", "-c", ECHO_SERVER])):
        late = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none", "command": command}]}}
        sb.kubectl("apply", "-f", "-", input=json.dumps(late))
    sb.kubectl("wait", "-n", "shop", "--for=condition=Ready", "pod/late", "pod/late-server", "--timeout=60s")
    late_server = sb.get("pod", "-n", "shop", "late-server")["status"]["podIP"]
    marker = f"uninstalled-{uuid.uuid4().hex}"
    cap = Capture(sb, tmp_path / "uninstalled.pcap")
    out = _wait(lambda: (r := sb.pod_exec("late", "curl", "-s", "-m", "10", f"http://{late_server}:8080/{marker}"))
                .returncode == 0 and r, what="the new server to answer")
    wire = cap.stop()
    assert out.returncode == 0 and marker in out.stdout, out.stdout + out.stderr
    assert marker.encode() in wire, "without Ambit a new pod talks plaintext"

    out = sb.ambit("install", "--kubeconfig", kubeconfig, "-f", str(sb.cfg.values_path), timeout=240)
    assert "Ambit is installed" in out.stdout and "created" in out.stdout, out.stdout
    for node in ("node-1", "node-2"):
        assert _conflist_plugins(sb, node) == ["ptp", "portmap", "ambit-cni"]
    _wait(lambda: _captured(sb, "node-1", "client") and _captured(sb, "node-1", "late")
          and _captured(sb, "node-2", "server"), timeout=40, what="the new agents to capture the running pods")
    _wait(lambda: _request(sb, "warm-up").returncode == 0, what="traffic through the new agents")
    _mtls_only(sb, tmp_path, "client", "reinstalled")
    _mtls_only(sb, tmp_path, "late", "late-reinstalled")
    after = _restarts(sb)
    assert {k: v for k, v in after.items() if not k.startswith("late")} == before, "reinstalling must not restart pods"

    out = sb.ambit("install", "--kubeconfig", kubeconfig, "-f", str(sb.cfg.values_path), timeout=240)
    assert re.search(r"\(\d+ unchanged\)", out.stdout) and "created" not in out.stdout and "pruned" not in out.stdout \
        and "configured" not in out.stdout, out.stdout
