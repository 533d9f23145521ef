"""`ambit explain` against a cluster described in memory: a healthy path, and each broken link named
with its reason code, as the user reads it (table and JSON)."""
from __future__ import annotations

import json

import pytest

from ambitctl import explain
from ambitctl.errors import AmbitctlError

ENROLLED = {"ambit.dev/dataplane-mode": "ambient"}


def pod(name, node, *, ns="demo", labels=None, ip="10.210.1.5", phase="Running"):
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {"app": name}},
            "spec": {"nodeName": node}, "status": {"phase": phase, "podIP": ip}}


def agent(node, ready=True):
    return {"metadata": {"name": f"agent-{node}"}, "spec": {"nodeName": node},
            "status": {"containerStatuses": [{"name": "agent", "ready": ready}]}}


def captured(*names, redirection="installed", cert="valid"):
    return {"pods": [{"uid": f"uid-{n}", "redirection": redirection, "identity": f"spiffe://cluster.local/ns/demo/sa/{n}",
                      "certificate": {"state": cert, "not_after": "2026-12-09T00:00:00+00:00"}} for n in names]}


class Fake:
    namespace = "ambit-system"

    def __init__(self, *, ns_labels=ENROLLED, endpoints=("emoji-1",), agents=None, reports=None, pods=None):
        self.ns_labels = ns_labels
        self.pods = pods or {"web-1": pod("web-1", "node-1"), "emoji-1": pod("emoji-1", "node-2", ip="10.210.2.7")}
        self.endpoints = endpoints
        self.agents = agents if agents is not None else [agent("node-1"), agent("node-2")]
        self.reports = reports if reports is not None else {"agent-node-1": captured("web-1"),
                                                            "agent-node-2": captured("emoji-1")}

    def get(self, api_version, kind, name, namespace=None):
        if kind == "Namespace":
            return {"metadata": {"name": name, "labels": self.ns_labels}}
        if kind == "Service":
            return {"metadata": {"name": name, "namespace": namespace},
                    "spec": {"clusterIP": "10.220.0.5", "ports": [{"port": 8080}]}} if name == "emoji" else None
        if kind == "Pod":
            return self.pods.get(name)
        return None

    def list(self, api_version, kind, *, namespace=None, selector=""):
        if kind == "EndpointSlice":
            return [{"endpoints": [{"conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": n}}
                                   for n in self.endpoints]}]
        if kind == "Service":
            return [self.get("v1", "Service", "emoji", "demo")]
        if kind == "Pod" and namespace == self.namespace:
            return self.agents
        return list(self.pods.values())

    def agent_pods(self, name):
        return self.reports[name]


def run(fake, src="pod/web-1", dst="svc/emoji"):
    return explain.explain(fake, namespace="demo", source=src, destination=dst)


def test_a_healthy_path_is_ok_hop_by_hop():
    result = run(Fake())
    assert result.broken is None
    text = explain.render(result, output="table")
    assert text.splitlines()[-1] == "verdict: ok"
    assert "✔ endpoint demo/emoji-1 certificate: spiffe://cluster.local/ns/demo/sa/emoji-1, valid until" in text
    assert run(Fake(), dst="10.220.0.5:8080").broken is None
    assert run(Fake(), dst="pod/emoji-1").broken is None


@pytest.mark.parametrize(
    ("fake", "src", "dst", "reason", "words"),
    [
        (Fake(), "pod/nope", "svc/emoji", "SOURCE_NOT_FOUND", "no running pod for pod/nope"),
        (Fake(ns_labels={}), "pod/web-1", "svc/emoji", "NOT_ENROLLED", "neither it nor its namespace"),
        (Fake(agents=[agent("node-1", ready=False), agent("node-2")]), "pod/web-1", "svc/emoji", "AGENT_NOT_READY",
         "no ready node agent on node-1"),
        (Fake(reports={"agent-node-1": captured("web-1", redirection="partial"), "agent-node-2": captured("emoji-1")}),
         "pod/web-1", "svc/emoji", "NOT_CAPTURED", "redirection partial"),
        (Fake(reports={"agent-node-1": captured(), "agent-node-2": captured("emoji-1")}), "pod/web-1", "svc/emoji",
         "NOT_CAPTURED", "not held by the agent"),
        (Fake(reports={"agent-node-1": captured("web-1", cert="pending"), "agent-node-2": captured("emoji-1")}),
         "pod/web-1", "svc/emoji", "CERT_NOT_VALID", "pending"),
        (Fake(), "pod/web-1", "svc/nope", "NO_SERVICE", "svc/nope does not exist"),
        (Fake(), "pod/web-1", "svc/emoji:9999", "NO_SERVICE", "has no port 9999 (it has 8080)"),
        (Fake(endpoints=()), "pod/web-1", "svc/emoji", "NO_ENDPOINTS", "no ready endpoint"),
        (Fake(reports={"agent-node-1": captured("web-1"), "agent-node-2": captured("emoji-1", cert="expired")}),
         "pod/web-1", "svc/emoji", "CERT_NOT_VALID", "expired"),
    ],
    ids=["no-source", "not-enrolled", "agent-not-ready", "rules-partial", "not-held", "cert-pending", "no-service",
         "no-port", "no-endpoints", "endpoint-cert-expired"],
)
def test_the_first_broken_link_is_named(fake, src, dst, reason, words):
    result = run(fake, src, dst)
    assert result.broken is not None and result.broken.reason == reason and words in result.broken.detail
    doc = json.loads(explain.render(result, output="json"))
    assert doc["verdict"] == "broken" and doc["reason"] == reason
    assert doc["hops"][-1]["result"] == "broken" and all(h["result"] == "ok" for h in doc["hops"][:-1])
    assert f"see docs/explain.md#{reason.lower().replace('_', '-')}" in explain.render(result, output="table")


def test_an_endpoint_outside_the_mesh_is_said_not_judged():
    fake = Fake(pods={"web-1": pod("web-1", "node-1", labels=ENROLLED),
                      "emoji-1": pod("emoji-1", "node-2", ns="plain", ip="10.210.2.7")}, ns_labels={})
    result = run(fake)
    assert result.broken is None
    assert any("reached in plaintext" in h.detail for h in result.hops)


def test_bad_references_are_refused():
    with pytest.raises(AmbitctlError, match="must be pod/NAME or deploy/NAME"):
        run(Fake(), src="web-1")
    with pytest.raises(AmbitctlError, match="must be svc/NAME"):
        run(Fake(), dst="emoji")


def test_every_reason_has_its_section():
    from pathlib import Path

    doc = (Path(explain.__file__).resolve().parents[1] / "docs" / "explain.md").read_text()
    assert all(f"### {r.lower().replace('_', '-')}\n" in doc for r in explain.REASONS)


class WaypointFake(Fake):
    def __init__(self, *, waypoint_pods=(), gateway=True):
        super().__init__(ns_labels={**ENROLLED, "ambit.dev/use-waypoint": "waypoint"})
        self.waypoint_pods = list(waypoint_pods)
        self.gateway = gateway

    def get(self, api_version, kind, name, namespace=None):
        if kind == "Gateway":
            return {"metadata": {"name": name}} if self.gateway else None
        return super().get(api_version, kind, name, namespace)

    def list(self, api_version, kind, *, namespace=None, selector=""):
        if kind == "Pod" and selector.startswith("gateway.networking.k8s.io/gateway-name="):
            return self.waypoint_pods
        return super().list(api_version, kind, namespace=namespace, selector=selector)


def test_a_service_behind_a_missing_or_unready_waypoint_is_broken_there():
    result = run(WaypointFake(gateway=False))
    assert result.broken.reason == "WAYPOINT_NOT_READY" and result.broken.name == "waypoint demo/waypoint"
    assert "ambit waypoint apply -n demo --name waypoint" in result.broken.detail
    unready = pod("waypoint-1", "node-1")
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert "no ready pod" in run(WaypointFake(waypoint_pods=[unready])).broken.detail
    ready_pod = pod("waypoint-1", "node-1")
    ready_pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    result = run(WaypointFake(waypoint_pods=[ready_pod]))
    assert result.broken is None
    assert "✔ waypoint demo/waypoint: 1 ready waypoint pod(s)" in explain.render(result, output="table")
