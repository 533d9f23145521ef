"""``ambit explain [-n NS] SRC DST``: walk one path through the mesh hop by hop and name the first
broken link, with a reason code from one documented list (``docs/explain.md``).

SRC is ``pod/NAME`` or ``deploy/NAME`` (its first running pod); DST is ``svc/NAME[:PORT]``,
``pod/NAME[:PORT]`` or ``IP:PORT`` (a Service's ClusterIP or a pod's IP). The hops, in the order a
connection meets them: the source pod runs, is enrolled, its node's agent is ready and has captured
it with a valid certificate; the destination resolves to ready endpoints; each endpoint's agent is
ready and has captured it with a valid certificate (an endpoint that is not enrolled is reached in
plaintext, which is said, not judged). What the agents say is asked of them (``/debug/pods``), not
inferred from labels. Waypoints and authorization policies are not built yet: no hop for them.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from ambitctl.cluster import Cluster, agents_by_node, enrolled, ready, running, selector_of
from ambitctl.errors import AmbitctlError, ClusterError

REASONS = {
    "SOURCE_NOT_FOUND": "the source pod or deployment does not exist or has no running pod",
    "NOT_ENROLLED": "the source is not enrolled: its traffic does not enter the mesh",
    "AGENT_NOT_READY": "a node on the path has no ready node agent",
    "NOT_CAPTURED": "a pod on the path is enrolled but its agent does not hold it with complete redirection",
    "CERT_NOT_VALID": "a pod on the path has no valid certificate (pending or expired)",
    "NO_SERVICE": "the destination Service, pod or address does not exist, or not on that port",
    "NO_ENDPOINTS": "the destination Service has no ready endpoint",
    "WAYPOINT_NOT_READY": "the destination Service is bound to a waypoint (ambit.dev/use-waypoint) that does not exist "
                   "or has no ready pod: its connections are refused, never sent around it",
}
USE_WAYPOINT_LABEL = "ambit.dev/use-waypoint"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def waypoint_of(svc: dict, namespace: dict) -> str:
    """The waypoint a Service uses, as the node agent decides it (its label wins, ``none`` opts out)."""
    labels = _labels(svc)
    if GATEWAY_NAME_LABEL in labels:
        return ""
    name = labels.get(USE_WAYPOINT_LABEL) or _labels(namespace).get(USE_WAYPOINT_LABEL) or ""
    return "" if name == "none" else name


def _waypoint_hop(c: Cluster, out: Explanation, svc: dict) -> bool:
    ns = svc["metadata"]["namespace"]
    name = waypoint_of(svc, c.get("v1", "Namespace", ns) or {"metadata": {}})
    if not name:
        return True
    hop = f"waypoint {ns}/{name}"
    pods = [p for p in running(c.list("v1", "Pod", namespace=ns, selector=f"{GATEWAY_NAME_LABEL}={name}"))
            if ready(p)]
    if not pods:
        exists = c.get(GATEWAY_API, "Gateway", name, ns) is not None
        why = ("its Gateway has no ready pod: `ambit waypoint list -n " + ns + "`") if exists else \
            f"no Gateway {ns}/{name}: `ambit waypoint apply -n {ns} --name {name}`, or remove the label"
        return out.add(hop, False, why, "WAYPOINT_NOT_READY")
    return out.add(hop, True, f"{len(pods)} ready waypoint pod(s); it picks the endpoint and applies L7 rules")


GATEWAY_API = "gateway.networking.k8s.io/v1"


@dataclass(frozen=True)
class Hop:
    name: str
    ok: bool
    detail: str
    reason: str = ""


@dataclass
class Explanation:
    hops: list[Hop] = field(default_factory=list)

    @property
    def broken(self) -> Hop | None:
        return next((h for h in self.hops if not h.ok), None)

    def add(self, name: str, ok: bool, detail: str, reason: str = "") -> bool:
        self.hops.append(Hop(name, ok, detail, "" if ok else reason))
        return ok


def _labels(obj: dict) -> dict:
    return obj["metadata"].get("labels") or {}


def _source(c: Cluster, ns: str, ref: str) -> dict | None:
    kind, _, name = ref.partition("/")
    if kind in ("pod", "pods", "po"):
        pod = c.get("v1", "Pod", name, ns)
        return pod if pod and running([pod]) else None
    if kind in ("deploy", "deployment", "deployments"):
        deploy = c.get("apps/v1", "Deployment", name, ns)
        if deploy is None:
            return None
        pods = running(c.list("v1", "Pod", namespace=ns, selector=selector_of(deploy)))
        return sorted(pods, key=lambda p: p["metadata"]["name"])[0] if pods else None
    raise AmbitctlError(f"source {ref!r} must be pod/NAME or deploy/NAME")


def _split_port(text: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, None
    if not port.isdigit():
        raise AmbitctlError(f"{text!r}: the port must be a number")
    return host, int(port)


def _destination(c: Cluster, ns: str, ref: str) -> tuple[str, dict | None, dict | None, int | None]:
    """(description, Service or None, Pod or None, port)."""
    kind, sep, rest = ref.partition("/")
    if sep and kind in ("svc", "service", "services"):
        name, port = _split_port(rest)
        return f"svc/{name}", c.get("v1", "Service", name, ns), None, port
    if sep and kind in ("pod", "pods", "po"):
        name, port = _split_port(rest)
        return f"pod/{name}", None, c.get("v1", "Pod", name, ns), port
    ip, port = _split_port(ref)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise AmbitctlError(f"destination {ref!r} must be svc/NAME[:PORT], pod/NAME[:PORT] or IP:PORT") from None
    svc = next((s for s in c.list("v1", "Service") if s["spec"].get("clusterIP") == ip), None)
    if svc is not None:
        return f"svc/{svc['metadata']['name']} ({ip})", svc, None, port
    pod = next((p for p in c.list("v1", "Pod") if (p.get("status") or {}).get("podIP") == ip), None)
    return ip, None, pod, port


def _endpoint_pods(c: Cluster, svc: dict, port: int | None) -> tuple[list[dict], str]:
    """The Service's ready endpoints that are pods, and what is wrong when there are none."""
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    ports = svc["spec"].get("ports") or []
    if port is not None and not any(p.get("port") == port for p in ports):
        return [], f"svc/{name} has no port {port} (it has {', '.join(str(p.get('port')) for p in ports) or 'none'})"
    slices = c.list("discovery.k8s.io/v1", "EndpointSlice", namespace=ns, selector=f"kubernetes.io/service-name={name}")
    pods: list[dict] = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if (ep.get("conditions") or {}).get("ready") and ref.get("kind") == "Pod":
                pod = c.get("v1", "Pod", ref["name"], ref.get("namespace") or ns)
                if pod is not None:
                    pods.append(pod)
    return pods, "" if pods else f"svc/{name} has no ready endpoint"


def _pod_hops(c: Cluster, out: Explanation, pod: dict, role: str, *, must_be_enrolled: bool) -> bool:
    """The agent, capture and certificate hops for one pod; False at the first broken one."""
    meta = pod["metadata"]
    who = f"{role} {meta['namespace']}/{meta['name']}"
    ns_obj = c.get("v1", "Namespace", meta["namespace"]) or {"metadata": {}}
    if not enrolled(_labels(pod), _labels(ns_obj)):
        if must_be_enrolled:
            return out.add(f"{who} enrolled", False, "neither it nor its namespace is labelled "
                           "ambit.dev/dataplane-mode=ambient", "NOT_ENROLLED")
        return out.add(f"{who} enrolled", True, "not enrolled: reached in plaintext, outside the mesh")
    out.add(f"{who} enrolled", True, "ambit.dev/dataplane-mode=ambient")
    node = pod["spec"].get("nodeName")
    agent = agents_by_node(c).get(node)
    if agent is None or not ready(agent, "agent"):
        return out.add(f"agent on {node}", False, f"no ready node agent on {node}: `ambit check`", "AGENT_NOT_READY")
    out.add(f"agent on {node}", True, f"{agent['metadata']['name']} ready")
    try:
        report = c.agent_pods(agent["metadata"]["name"])
    except ClusterError as exc:
        return out.add(f"{who} captured", False, f"cannot ask {agent['metadata']['name']}: {exc}", "AGENT_NOT_READY")
    mine = next((p for p in report.get("pods") or [] if p.get("uid") == meta["uid"]), None)
    if mine is None or mine["redirection"] != "installed":
        state = "not held by the agent" if mine is None else f"redirection {mine['redirection']}"
        return out.add(f"{who} captured", False, state, "NOT_CAPTURED")
    out.add(f"{who} captured", True, "redirection installed")
    cert = mine.get("certificate") or {}
    if cert.get("state") not in ("valid", "renewing"):
        return out.add(f"{who} certificate", False, f"{mine.get('identity')}: {cert.get('state') or 'none'}",
                       "CERT_NOT_VALID")
    return out.add(f"{who} certificate", True, f"{mine.get('identity')}, {cert['state']} until {cert.get('not_after')}")


def explain(c: Cluster, *, namespace: str, source: str, destination: str) -> Explanation:
    out = Explanation()
    src = _source(c, namespace, source)
    if not out.add(f"source {source}", src is not None,
                   "running" if src else f"no running pod for {source} in {namespace}", "SOURCE_NOT_FOUND"):
        return out
    if not _pod_hops(c, out, src, "source", must_be_enrolled=True):
        return out
    what, svc, pod, port = _destination(c, namespace, destination)
    if svc is None and pod is None:
        out.add(f"destination {what}", False, f"{destination} does not exist in {namespace}", "NO_SERVICE")
        return out
    if svc is not None:
        endpoints, why = _endpoint_pods(c, svc, port)
        if not out.add(f"destination {what}", not why, why or f"{len(endpoints)} ready endpoint(s)",
                       "NO_SERVICE" if "no port" in why else "NO_ENDPOINTS"):
            return out
        if not _waypoint_hop(c, out, svc):
            return out
    else:
        endpoints = [pod]
        out.add(f"destination {what}", True, f"pod {pod['metadata']['name']} at {(pod.get('status') or {}).get('podIP')}")
    for endpoint in sorted(endpoints, key=lambda p: p["metadata"]["name"]):
        if not _pod_hops(c, out, endpoint, "endpoint", must_be_enrolled=False):
            return out
    return out


def render(result: Explanation, *, output: str) -> str:
    broken = result.broken
    if output == "json":
        return json.dumps({"verdict": "broken" if broken else "ok", "reason": broken.reason if broken else "",
                           "hops": [{"hop": h.name, "result": "ok" if h.ok else "broken", "detail": h.detail,
                                     "reason": h.reason} for h in result.hops]}, indent=2)
    lines = [f"{'✔' if h.ok else '×'} {h.name}: {h.detail}" for h in result.hops]
    if broken:
        lines.append(f"verdict: broken at \"{broken.name}\": {broken.reason} ({REASONS[broken.reason]}); "
                     f"see docs/explain.md#{broken.reason.lower().replace('_', '-')}")
    else:
        lines.append("verdict: ok")
    return "\n".join(lines)
