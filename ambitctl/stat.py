"""``ambit stat deploy|ns [NAME] [-n NS | -A]``: golden figures per workload (Linkerd's ``viz stat``),
for now from the node agents themselves: no Prometheus is installed yet (``viz.enabled``).

- MESHED: meshed/total running pods, "meshed" meaning captured with complete redirection, as each
  pod's node agent reports it (``/debug/pods``), not as the labels suggest;
- TCP_CONN: TCP connections open now to the workload, from every agent's metrics (``/metrics``,
  ``reporter="destination"``: opened minus closed), scraped through the API server's pod proxy;
- SUCCESS, RPS, LATENCY_P50/P95/P99 are HTTP figures: they need a waypoint (not built yet), so they
  are ``-`` (``null`` in JSON), and the table says so.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass

from ambitctl import tables
from ambitctl.cluster import Cluster, agents_by_node, running, selector_of
from ambitctl.errors import AmbitctlError, ClusterError

HTTP_HINT = ("SUCCESS, RPS and LATENCY need HTTP metrics, which come from a waypoint (not built yet); "
             "TCP figures come from the node agents")


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


def stat(c: Cluster, *, kind: str, name: str | None, namespace: str | None) -> list[Row]:
    """``namespace`` None: every namespace (``-A``)."""
    captured = _captured(c)
    conns = open_connections(c)

    def row(ns: str, rname: str, pods: list[dict], workloads: list[str]) -> Row:
        pods = running(pods)
        meshed = sum(1 for p in pods if p["metadata"]["uid"] in captured)
        tcp = sum(conns.get((ns, w), 0) for w in workloads)
        return Row(rname, ns, f"{meshed}/{len(pods)}", None, None, None, None, None, tcp)

    rows: list[Row] = []
    if kind in ("deploy", "deployment", "deployments"):
        deploys = c.list("apps/v1", "Deployment", namespace=namespace)
        if name:
            deploys = [d for d in deploys if d["metadata"]["name"] == name]
            if not deploys:
                raise AmbitctlError(f"deployment {name} not found in {namespace or 'any namespace'}")
        for d in deploys:
            ns = d["metadata"]["namespace"]
            rows.append(row(ns, d["metadata"]["name"], c.list("v1", "Pod", namespace=ns, selector=selector_of(d)),
                            [d["metadata"]["name"]]))
    elif kind in ("ns", "namespace", "namespaces"):
        names = [name] if name else sorted(n["metadata"]["name"] for n in c.list("v1", "Namespace"))
        for ns in names:
            if c.get("v1", "Namespace", ns) is None:
                raise AmbitctlError(f"namespace {ns} not found")
            workloads = sorted({w for (wns, w) in conns if wns == ns})
            rows.append(row(ns, ns, c.list("v1", "Pod", namespace=ns), workloads))
    else:
        raise AmbitctlError(f"ambit stat takes deploy or ns, not {kind!r} (pods, services: not yet)")
    return sorted(rows, key=lambda r: (r.namespace, r.name))


def _cell(value) -> str:
    return "-" if value is None else str(value)


def render(rows: list[Row], *, output: str, all_namespaces: bool) -> str:
    if output == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    columns = (["NAMESPACE"] if all_namespaces else []) + [
        "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]
    lines = [([r.namespace] if all_namespaces else []) + [
        r.name, r.meshed, _cell(r.success_rate), _cell(r.rps), _cell(r.latency_p50_ms),
        _cell(r.latency_p95_ms), _cell(r.latency_p99_ms), _cell(r.tcp_connections)] for r in rows]
    return tables.render(columns, lines) + f"\n\n{HTTP_HINT}"
