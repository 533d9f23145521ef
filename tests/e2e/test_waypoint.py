"""Waypoints as a user meets them, on a sandbox of its own (issue: the waypoint, "Done when").

`ambit waypoint apply -n shop --enroll-namespace` makes the controller create the waypoint; the
shop's service traffic then goes client -> its agent -> the waypoint (mTLS, the waypoint's own
SPIFFE identity) -> the server's agent, visible in the waypoint's access log and metrics; the
server refuses anyone else (no silent bypass); without a ready waypoint the connection is refused
rather than sent around it; deleting the waypoint removes the namespace label and traffic flows
directly again.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from e2e_sandbox import ECHO_SERVER, Sandbox  # tests/e2e is on sys.path

pytestmark = pytest.mark.root

NAME, INDEX = "wayp", 3

# who answers (NAME), /slow after 3 s, /flaky with 503 every other time
BACKEND = r"""
import http.server, os, socketserver, threading, time
NAME = os.environ["NAME"]; lock = threading.Lock(); count = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        status = 200
        if self.path.startswith("/slow"):
            time.sleep(3)
        if self.path.startswith("/flaky"):
            with lock:
                count[0] += 1
                status = 503 if count[0] % 2 else 200
        body = (NAME + "\n").encode()
        self.send_response(status); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True; allow_reuse_address = True
S(("0.0.0.0", 8080), H).serve_forever()
"""


class WaypointSandbox(Sandbox):
    def waypoint_cmd(self, *args, timeout=60):
        return self.ambit("waypoint", *args, "--kubeconfig", str(self.cfg.kubeconfig_path), timeout=timeout)

    def curl(self, url: str) -> str:
        out = self.pod_exec("client", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", url)
        return out.stdout.strip()

    def waypoint_pod(self) -> str:
        pods = self.get("pods", "-n", "shop", "-l", "gateway.networking.k8s.io/gateway-name=waypoint")["items"]
        running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert running, "no waypoint pod"
        return running[0]["metadata"]["name"]


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    s = WaypointSandbox(tmp_path_factory.mktemp("waypoint"), name=NAME, index=INDEX)
    try:
        s.ambit("up", "--nodes", "2", "--no-demo", timeout=180)
        s.kubectl("create", "namespace", "shop")
        s.kubectl("label", "namespace", "shop", "ambit.dev/dataplane-mode=ambient")
        for name, node, command in (
            ("server", "node-2", ["python3", "-c", ECHO_SERVER]),
            ("client", "node-1", ["sleep", "3600"]),
        ):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
                   "spec": {"nodeName": node, "containers": [{"name": name, "image": "none", "command": command}]}}
            if name == "server":
                pod["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
            s.kubectl("apply", "-f", "-", input=json.dumps(pod))
        s.kubectl("create", "service", "clusterip", "server", "-n", "shop", "--tcp=80:8080")
        s.kubectl("wait", "-n", "shop", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=60s")
        yield s
    finally:
        s.ambit("down", check=False, timeout=180)


def _service_ip(sb: Sandbox) -> str:
    return sb.get("service", "-n", "shop", "server")["spec"]["clusterIP"]


def _eventually(check, *, timeout=20.0, what=""):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_gateway_class_is_accepted_and_a_waypoint_comes_up(sb):
    gc = sb.get("gatewayclass", "ambit-waypoint")
    assert {c["type"]: c["status"] for c in gc["status"]["conditions"]}["Accepted"] == "True"
    out = sb.waypoint_cmd("apply", "-n", "shop", "--enroll-namespace", timeout=150)
    assert "waypoint shop/waypoint is ready" in out.stdout
    gw = sb.get("gateway", "-n", "shop", "waypoint")
    assert {c["type"]: c["status"] for c in gw["status"]["conditions"]} == {"Accepted": "True", "Programmed": "True"}
    svc = sb.get("service", "-n", "shop", "waypoint")
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": svc["spec"]["clusterIP"]}]
    owners = {(o["kind"], o["name"]) for o in sb.get("deployment", "-n", "shop", "waypoint")["metadata"]["ownerReferences"]}
    assert owners == {("Gateway", "waypoint")}
    listed = sb.waypoint_cmd("list", "-n", "shop", "-o", "json")
    assert json.loads(listed.stdout) == [{"namespace": "shop", "name": "waypoint", "programmed": "True",
                                          "address": svc["spec"]["clusterIP"], "bound": "namespace"}]


def test_service_traffic_goes_through_the_waypoint(sb):
    vip = _service_ip(sb)
    assert sb.curl(f"http://{vip}/through") == "200"
    waypoint = sb.waypoint_pod()

    def access_line():
        logs = sb.ambit("sandbox", "logs", f"shop/{waypoint}", check=False).stdout
        lines = [json.loads(line.split("ambit.access: ", 1)[1]) for line in logs.splitlines() if "ambit.access: " in line]
        return [line for line in lines if line["msg"] == "request"]  # one per HTTP request

    lines = _eventually(access_line, what="the waypoint's access line")
    last = lines[-1]
    assert last["src_principal"] == "spiffe://cluster.local/ns/shop/sa/default"
    assert last["dst_service"] == "server.shop.svc.cluster.local" and last["dst_workload"] == "shop/server"
    assert (last["method"], last["path"], last["status"], last["flags"]) == ("GET", "/through", 200, "-")
    metrics = sb.pod_exec(waypoint, "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics").stdout
    assert 'reporter="waypoint"' in metrics and 'destination_service="server.shop.svc.cluster.local"' in metrics


def _backends(sb: WaypointSandbox) -> None:
    for name, node in (("v1", "node-1"), ("v2", "node-2")):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
               "spec": {"nodeName": node, "containers": [{
                   "name": name, "image": "none", "command": ["python3", "-c", BACKEND], "env": [{"name": "NAME", "value": name}],
                   "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}
        sb.kubectl("apply", "-f", "-", input=json.dumps(pod))
        sb.kubectl("create", "service", "clusterip", name, "-n", "shop", "--tcp=80:8080")
    sb.kubectl("wait", "-n", "shop", "--for=condition=Ready", "pod/v1", "pod/v2", "--timeout=60s")


def _route(sb: WaypointSandbox, rules: list[dict]) -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "v1", "namespace": "shop"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "v1", "port": 80}], "rules": rules}}
    sb.kubectl("apply", "-f", "-", input=json.dumps(route))


def _codes(sb: WaypointSandbox, url: str, count: int) -> list[str]:
    """``count`` requests on one keep-alive connection (curl's URL globbing); their status codes."""
    out = sb.pod_exec("client", "curl", "-s", "-m", "60", "-o", "/dev/null", "-w", "%{http_code}\n",
                      f"{url}?n=[1-{count}]", timeout=90)
    return out.stdout.split()


def test_http_routes_split_retry_and_time_out_through_the_waypoint(sb):
    """The issue's checks with real curl through the real data path (client agent -> waypoint ->
    backend agents): weights 80/20 over 300 requests, a backend failing every other request retried
    to success, a 3 s backend cut at 300 ms with 504."""
    _backends(sb)
    vip = sb.get("service", "-n", "shop", "v1")["spec"]["clusterIP"]
    _route(sb, [{"backendRefs": [{"name": "v1", "port": 80, "weight": 80}, {"name": "v2", "port": 80, "weight": 20}]}])
    time.sleep(1.5)  # the waypoint's watch
    bodies = sb.pod_exec("client", "curl", "-s", "-m", "60", f"http://{vip}/split?n=[1-300]", timeout=90).stdout.split()
    assert len(bodies) == 300 and set(bodies) == {"v1", "v2"}
    assert 0.72 <= bodies.count("v1") / 300 <= 0.88, f"{bodies.count('v1')} of 300 went to v1"

    _route(sb, [{"matches": [{"path": {"type": "PathPrefix", "value": "/flaky"}}],
                 "backendRefs": [{"name": "v1", "port": 80}], "retry": {"attempts": 2, "codes": [503]}},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                 "backendRefs": [{"name": "v1", "port": 80}], "timeouts": {"request": "300ms"}}])
    time.sleep(1.5)
    codes = _codes(sb, f"http://{vip}/flaky", 100)
    assert len(codes) == 100 and codes.count("200") >= 99, codes
    slow = sb.pod_exec("client", "curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                       f"http://{vip}/slow").stdout.split()
    assert slow[0] == "504" and float(slow[1]) < 1.0, slow  # the backend would have taken 3 s
    metrics = sb.pod_exec(sb.waypoint_pod(), "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics").stdout
    assert re.search(r'ambit_request_retries_total\{[^}]*destination_service="v1.shop.svc.cluster.local"[^}]*\} [1-9]',
                     metrics), metrics
    assert 'response_code="504"' in metrics and 'response_flags="UT"' in metrics
    sb.kubectl("delete", "httproute", "-n", "shop", "v1")


def test_the_server_refuses_anyone_but_the_waypoint(sb):
    server_ip = sb.get("pod", "-n", "shop", "server")["status"]["podIP"]
    assert sb.curl(f"http://{server_ip}:8080/around") == "000"
    node2_agent = [p for p in sb.get("pods", "-n", "ambit-system")["items"]
                   if p["spec"].get("nodeName") == "node-2" and "node-agent" in p["metadata"]["name"]][0]
    logs = sb.ambit("sandbox", "logs", f"ambit-system/{node2_agent['metadata']['name']}", "-c", "agent").stdout
    assert '"flags":"WAYPOINT_BYPASS"' in logs and "behind waypoint shop/waypoint" in logs


def test_without_a_ready_waypoint_connections_are_refused_not_sent_around_it(sb):
    vip = _service_ip(sb)
    sb.kubectl("scale", "deployment", "-n", "shop", "waypoint", "--replicas=0")
    try:
        _eventually(lambda: sb.curl(f"http://{vip}/") == "000", what="refusal without a waypoint")
        gw = _eventually(lambda: (g := sb.get("gateway", "-n", "shop", "waypoint")) and
                         {c["type"]: c["status"] for c in g["status"]["conditions"]}["Programmed"] == "False" and g,
                         what="Programmed=False")
        assert gw
    finally:
        sb.kubectl("scale", "deployment", "-n", "shop", "waypoint", "--replicas=1")
    _eventually(lambda: sb.curl(f"http://{vip}/") == "200", timeout=40, what="the waypoint back")


def test_deleting_the_waypoint_unbinds_the_namespace(sb):
    out = sb.waypoint_cmd("delete", "-n", "shop")
    assert "label ambit.dev/use-waypoint removed" in out.stdout
    _eventually(lambda: not sb.get("deployments", "-n", "shop", "-l",
                                   "gateway.networking.k8s.io/gateway-name=waypoint")["items"],
                what="the waypoint's Deployment to go with its Gateway")
    vip = _service_ip(sb)
    _eventually(lambda: sb.curl(f"http://{vip}/direct") == "200", what="direct traffic again")
