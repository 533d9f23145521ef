"""``ambit stat deploy|ns [NAME] [-n NS | -A] [-t WINDOW]``: golden figures per workload (Linkerd's
``viz stat``), for now from the node agents and waypoints themselves: no Prometheus is installed yet
(``viz.enabled``).

- MESHED: meshed/total running pods, "meshed" meaning captured with complete redirection, as each
  pod's node agent reports it (``/debug/pods``), not as the labels suggest;
- TCP_CONN: TCP connections open now to the workload, from every agent's metrics (``/metrics``,
  ``reporter="destination"``: opened minus closed), scraped through the API server's pod proxy;
- SUCCESS, RPS, LATENCY_P50/P95/P99: HTTP figures of the requests waypoints sent to the workload
  during the window: every waypoint's ``/metrics`` is read twice, ``WINDOW`` apart, and the
  difference of ``ambit_requests_total`` (success: not 5xx, and gRPC status not a failure) and of
  the ``ambit_request_duration_milliseconds`` buckets (percentiles interpolated within a bucket, as
  Prometheus' ``histogram_quantile``) gives them. A workload no waypoint serves, or that got no
  request in the window, shows ``-`` (``null`` in JSON).

Waypoints themselves (pods labelled ``gateway.networking.k8s.io/gateway-name``) are left out: they are
the mesh's, never captured; ``ambit waypoint list`` shows them.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from ambitctl import tables
from ambitctl.cluster import Cluster, agents_by_node, running, selector_of
from ambitctl.errors import AmbitctlError, ClusterError

HTTP_HINT = ("SUCCESS, RPS and LATENCY are the requests waypoints sent to the workload in the window; '-': no "
             "request (bind its service to a waypoint: `ambit waypoint apply -n NS --enroll-namespace`); "
             "TCP figures come from the node agents")
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GRPC_FAILURES = frozenset({"2", "4", "13", "14", "15"})
"""UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS (Linkerd's classifier)"""


@dataclass
class Http:
    """Requests to one workload in a window: counts and the duration histogram's buckets."""

    requests: float = 0.0
    failures: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    """upper bound in ms (inf last) -> cumulative count"""

    def minus(self, before: Http) -> Http:
        return Http(self.requests - before.requests, self.failures - before.failures,
                    {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    def quantile(self, q: float) -> float | None:
        """Prometheus' ``histogram_quantile``: linear within the bucket; the +Inf bucket answers its lower bound."""
        bounds = sorted(self.buckets)
        if not bounds or self.buckets[bounds[-1]] <= 0:
            return None
        rank = q * self.buckets[bounds[-1]]
        lower, below = 0.0, 0.0
        for le in bounds:
            count = self.buckets[le]
            if count >= rank:
                if le == float("inf"):
                    return lower
                return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 0.0)
            lower, below = le, count
        return lower


def _is_waypoint(pod: dict) -> bool:
    return GATEWAY_NAME_LABEL in ((pod.get("metadata") or {}).get("labels") or {})


def parse_http(text: str) -> dict[tuple[str, str], Http]:
    """(destination namespace, workload) -> what one waypoint's ``/metrics`` says so far."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], Http] = defaultdict(Http)
    for family in text_string_to_metric_families(text):
        if family.name == "ambit_requests":
            for s in family.samples:
                if s.name != "ambit_requests_total" or s.labels.get("reporter") != "waypoint":
                    continue
                h = out[(s.labels.get("destination_namespace", ""), s.labels.get("destination_workload", ""))]
                h.requests += s.value
                if s.labels.get("response_code", "").startswith("5") or \
                        s.labels.get("grpc_response_status") in GRPC_FAILURES:
                    h.failures += s.value
        elif family.name == "ambit_request_duration_milliseconds":
            for s in family.samples:
                if s.name.endswith("_bucket") and s.labels.get("reporter") == "waypoint":
                    h = out[(s.labels.get("destination_namespace", ""), s.labels.get("destination_workload", ""))]
                    le = float(s.labels["le"])
                    h.buckets[le] = h.buckets.get(le, 0.0) + s.value
    return out


def http_window(c: Cluster, *, window: float, sleep=time.sleep) -> dict[tuple[str, str], Http]:
    """Every waypoint's request figures over ``window`` seconds (two reads, the difference);
    no waypoint: nothing, at once."""
    waypoints = running(c.list("v1", "Pod", selector=GATEWAY_NAME_LABEL))

    def read() -> dict[tuple[str, str], Http]:
        total: dict[tuple[str, str], Http] = defaultdict(Http)
        for pod in waypoints:
            try:
                text = c.pod_metrics(pod["metadata"]["namespace"], pod["metadata"]["name"])
            except ClusterError:
                continue  # a waypoint that cannot be read: its requests are missing, not invented
            for key, h in parse_http(text).items():
                t = total[key]
                t.requests += h.requests
                t.failures += h.failures
                for le, n in h.buckets.items():
                    t.buckets[le] = t.buckets.get(le, 0.0) + n
        return total

    if not waypoints:
        return {}
    before = read()
    sleep(window)
    return {key: h.minus(before.get(key, Http())) for key, h in read().items()}


@dataclass
class Row:
    name: str
    namespace: str
    meshed: str
    success_rate: float | None
    rps: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    tcp_connections: int | None


def _captured(c: Cluster) -> set[str]:
    """UIDs of the pods some agent holds with complete redirection."""
    uids: set[str] = set()
    for agent in agents_by_node(c).values():
        try:
            report = c.agent_pods(agent["metadata"]["name"])
        except ClusterError:
            continue  # that node's pods show as not meshed; `ambit check` says why
        uids |= {p["uid"] for p in report.get("pods") or [] if p.get("redirection") == "installed"}
    return uids


def open_connections(c: Cluster) -> dict[tuple[str, str], int]:
    """(namespace, workload) -> TCP connections open to it now, summed over every agent."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[tuple[str, str], float] = defaultdict(float)
    for agent in agents_by_node(c).values():
        try:
            text = c.agent_metrics(agent["metadata"]["name"])
        except ClusterError:
            continue
        for family in text_string_to_metric_families(text):
            sign = {"ambit_tcp_connections_opened": 1, "ambit_tcp_connections_closed": -1}.get(family.name)
            if sign is None:
                continue
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("reporter") == "destination":
                    key = (s.labels.get("destination_workload_namespace", ""), s.labels.get("destination_workload", ""))
                    totals[key] += sign * s.value
    return {k: max(0, int(v)) for k, v in totals.items()}


def stat(c: Cluster, *, kind: str, name: str | None, namespace: str | None, window: float = 5.0,
         sleep=time.sleep) -> list[Row]:
    """``namespace`` None: every namespace (``-A``); HTTP figures over ``window`` seconds."""
    captured = _captured(c)
    conns = open_connections(c)
    http = http_window(c, window=window, sleep=sleep)

    def row(ns: str, rname: str, pods: list[dict], workloads: list[str]) -> Row:
        pods = [p for p in running(pods) if not _is_waypoint(p)]
        meshed = sum(1 for p in pods if p["metadata"]["uid"] in captured)
        tcp = sum(conns.get((ns, w), 0) for w in workloads)
        h = Http()
        for w in workloads:
            one = http.get((ns, w))
            if one is not None:
                h.requests += one.requests
                h.failures += one.failures
                for le, n in one.buckets.items():
                    h.buckets[le] = h.buckets.get(le, 0.0) + n
        if h.requests <= 0:
            return Row(rname, ns, f"{meshed}/{len(pods)}", None, None, None, None, None, tcp)

        def ms(q: float) -> float | None:
            v = h.quantile(q)
            return None if v is None else round(v, 1)
        return Row(rname, ns, f"{meshed}/{len(pods)}", round(1 - h.failures / h.requests, 4),
                   round(h.requests / window, 2), ms(0.5), ms(0.95), ms(0.99), tcp)

    rows: list[Row] = []
    if kind in ("deploy", "deployment", "deployments"):
        deploys = c.list("apps/v1", "Deployment", namespace=namespace)
        if name:
            deploys = [d for d in deploys if d["metadata"]["name"] == name]
            if not deploys:
                raise AmbitctlError(f"deployment {name} not found in {namespace or 'any namespace'}")
        for d in deploys:
            if _is_waypoint((d.get("spec") or {}).get("template") or {}):
                continue  # mesh infrastructure, never captured itself: `ambit waypoint list`
            ns = d["metadata"]["namespace"]
            rows.append(row(ns, d["metadata"]["name"], c.list("v1", "Pod", namespace=ns, selector=selector_of(d)),
                            [d["metadata"]["name"]]))
    elif kind in ("ns", "namespace", "namespaces"):
        names = [name] if name else sorted(n["metadata"]["name"] for n in c.list("v1", "Namespace"))
        for ns in names:
            if c.get("v1", "Namespace", ns) is None:
                raise AmbitctlError(f"namespace {ns} not found")
            workloads = sorted({w for (wns, w) in conns if wns == ns} | {w for (wns, w) in http if wns == ns})
            rows.append(row(ns, ns, c.list("v1", "Pod", namespace=ns), workloads))
    else:
        raise AmbitctlError(f"ambit stat takes deploy or ns, not {kind!r} (pods, services: not yet)")
    return sorted(rows, key=lambda r: (r.namespace, r.name))


def _cell(value, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def render(rows: list[Row], *, output: str, all_namespaces: bool) -> str:
    if output == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    columns = (["NAMESPACE"] if all_namespaces else []) + [
        "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]
    lines = [([r.namespace] if all_namespaces else []) + [
        r.name, r.meshed, "-" if r.success_rate is None else f"{r.success_rate * 100:.2f}%", _cell(r.rps),
        _cell(r.latency_p50_ms, "ms"), _cell(r.latency_p95_ms, "ms"), _cell(r.latency_p99_ms, "ms"),
        _cell(r.tcp_connections)] for r in rows]
    return tables.render(columns, lines) + f"\n\n{HTTP_HINT}"
