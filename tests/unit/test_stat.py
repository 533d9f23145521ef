"""`ambit stat` from the agents' reports and metrics: MESHED counts what the agents hold, TCP_CONN
the connections open to the workload (opened minus closed, destination reporter, every node)."""
from __future__ import annotations

import json

import pytest

from ambitctl import stat
from ambitctl.errors import AmbitctlError

METRICS = {
    "agent-node-1": """# HELP ambit_tcp_connections_opened_total TCP connections opened
# TYPE ambit_tcp_connections_opened_total counter
ambit_tcp_connections_opened_total{reporter="destination",destination_workload="web",destination_workload_namespace="demo"} 7.0
ambit_tcp_connections_opened_total{reporter="source",destination_workload="web",destination_workload_namespace="demo"} 7.0
# HELP ambit_tcp_connections_closed_total TCP connections closed
# TYPE ambit_tcp_connections_closed_total counter
ambit_tcp_connections_closed_total{reporter="destination",destination_workload="web",destination_workload_namespace="demo"} 5.0
""",
    "agent-node-2": """# TYPE ambit_tcp_connections_opened_total counter
ambit_tcp_connections_opened_total{reporter="destination",destination_workload="web",destination_workload_namespace="demo"} 1.0
ambit_tcp_connections_opened_total{reporter="destination",destination_workload="db",destination_workload_namespace="demo"} 2.0
""",
}


def pod(name, uid, *, app="web", phase="Running"):
    return {"metadata": {"name": name, "namespace": "demo", "uid": uid, "labels": {"app": app}},
            "spec": {}, "status": {"phase": phase}}


class Fake:
    namespace = "ambit-system"
    pods = [pod("web-1", "u1"), pod("web-2", "u2"), pod("web-3", "u3", phase="Pending"), pod("db-1", "u4", app="db")]
    waypoints: list = []

    def list(self, api_version, kind, *, namespace=None, selector=""):
        if kind == "Deployment":
            return [{"metadata": {"name": n, "namespace": "demo"}, "spec": {"selector": {"matchLabels": {"app": n}}}}
                    for n in ("web", "db")]
        if kind == "Namespace":
            return [{"metadata": {"name": "demo"}}]
        if namespace == self.namespace:
            return [{"metadata": {"name": f"agent-{n}"}, "spec": {"nodeName": n}} for n in ("node-1", "node-2")]
        if selector == "gateway.networking.k8s.io/gateway-name":
            return self.waypoints
        app = selector.partition("=")[2]
        return [p for p in self.pods if not app or p["metadata"]["labels"]["app"] == app]

    def get(self, api_version, kind, name, namespace=None):
        return {"metadata": {"name": name}} if name == "demo" else None

    def agent_pods(self, name):
        return {"pods": [{"uid": "u1", "redirection": "installed"}, {"uid": "u4", "redirection": "partial"}]}

    def agent_metrics(self, name):
        return METRICS[name]


def test_deployments_meshed_and_open_connections():
    rows = {r.name: r for r in stat.stat(Fake(), kind="deploy", name=None, namespace="demo")}
    assert (rows["web"].meshed, rows["web"].tcp_connections) == ("1/2", 3)  # 7 + 1 opened - 5 closed
    assert (rows["db"].meshed, rows["db"].tcp_connections) == ("0/1", 2)
    assert rows["web"].success_rate is None and rows["web"].rps is None


def test_namespace_rows_and_outputs():
    [row] = stat.stat(Fake(), kind="ns", name="demo", namespace=None)
    assert (row.meshed, row.tcp_connections) == ("1/3", 5)
    table = stat.render([row], output="table", all_namespaces=True)
    assert table.splitlines()[0].split() == ["NAMESPACE", "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50",
                                             "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]
    assert table.splitlines()[2].split() == ["demo", "demo", "1/3", "-", "-", "-", "-", "-", "5"]
    assert "bind its service to a waypoint: `ambit waypoint apply -n NS --enroll-namespace`" in table
    [doc] = json.loads(stat.render([row], output="json", all_namespaces=False))
    assert set(doc) == {"name", "namespace", "meshed", "success_rate", "rps", "latency_p50_ms", "latency_p95_ms",
                        "latency_p99_ms", "tcp_connections"}


@pytest.mark.parametrize(("kind", "name", "words"), [("deploy", "nope", "deployment nope not found"),
                                                     ("ns", "nope", "namespace nope not found"),
                                                     ("svc", None, "takes deploy or ns")])
def test_unknown_names_are_refused(kind, name, words):
    with pytest.raises(AmbitctlError, match=words):
        stat.stat(Fake(), kind=kind, name=name, namespace="demo")


def _waypoint_text(ok: int, failed: int, fast: int, slow: int) -> str:
    """A waypoint's exposition: ``ok`` 200s and ``failed`` 503s to demo/web; ``fast`` took <= 5 ms, ``slow`` <= 100 ms."""
    labels = 'reporter="waypoint",destination_namespace="demo",destination_workload="web",grpc_response_status="-"'
    total = fast + slow
    buckets = "".join(
        f'ambit_request_duration_milliseconds_bucket{{{labels},le="{le}"}} {n}\n'
        for le, n in (("1.0", 0), ("5.0", fast), ("100.0", total), ("+Inf", total)))
    return (f"# TYPE ambit_requests_total counter\n"
            f'ambit_requests_total{{{labels},response_code="200"}} {ok}\n'
            f'ambit_requests_total{{{labels},response_code="503"}} {failed}\n'
            f"# TYPE ambit_request_duration_milliseconds histogram\n{buckets}"
            f'ambit_request_duration_milliseconds_count{{{labels}}} {total}\n'
            f'ambit_request_duration_milliseconds_sum{{{labels}}} 1.0\n')


def test_http_figures_are_the_difference_of_two_waypoint_reads():
    """Before: 10 requests; after 5 s: 60 (45 ok, 5 failed in the window; 40 fast, 10 slow)."""
    fake = Fake()
    fake.waypoints = [{"metadata": {"name": "waypoint-1", "namespace": "demo"}, "status": {"phase": "Running"}}]
    reads = iter([_waypoint_text(9, 1, 10, 0), _waypoint_text(54, 6, 50, 10)])
    fake.pod_metrics = lambda ns, name: next(reads)
    slept = []
    rows = {r.name: r for r in stat.stat(fake, kind="deploy", name=None, namespace="demo", window=5.0,
                                         sleep=slept.append)}
    assert slept == [5.0]
    web = rows["web"]
    assert (web.success_rate, web.rps) == (0.9, 10.0)
    assert web.latency_p50_ms == 3.5  # rank 25 of 40 in (1, 5] ms: 1 + 4 * 25/40
    assert web.latency_p95_ms == 76.2  # rank 47.5 in (5, 100]: 5 + 95 * (47.5 - 40) / 10
    assert rows["db"].success_rate is None and rows["db"].rps is None
    table = stat.render(list(rows.values()), output="table", all_namespaces=False)
    assert "90.00%" in table and "3.5ms" in table
    assert json.loads(stat.render([web], output="json", all_namespaces=False))[0]["success_rate"] == 0.9


def test_without_waypoints_there_is_no_wait():
    slept = []
    stat.stat(Fake(), kind="deploy", name=None, namespace="demo", window=5.0, sleep=slept.append)
    assert slept == []
