"""`ambit check`'s checks against a cluster described in memory: what each says, the 60-day
warning, gates that stop the run, and the table, short and JSON outputs."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambitctl import check
from ambitctl.errors import ClusterError

NOW = datetime(2026, 12, 8, tzinfo=timezone.utc)
NS = "ambit-system"


def pem(days_left: float, *, cn: str = "root") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=400)).not_valid_after(NOW + timedelta(days=days_left))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def agent(node: str, *, agent_ready=True, cni_ready=True) -> dict:
    return {"metadata": {"name": f"ambit-node-agent-{node}"}, "spec": {"nodeName": node},
            "status": {"containerStatuses": [{"name": "agent", "ready": agent_ready},
                                             {"name": "install-cni", "ready": cni_ready}]}}


def app_pod(name, *, node="node-1", ns="shop", labels=None, host_network=False, phase="Running") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {}},
            "spec": {"nodeName": node, "hostNetwork": host_network}, "status": {"phase": phase}}


def report(*pods: tuple[str, str, str]) -> dict:
    """(pod name, redirection, certificate state) -> an agent's /debug/pods."""
    return {"pods": [{"namespace": "shop", "name": n, "uid": f"uid-{n}", "redirection": r, "identity": f"spiffe://x/{n}",
                      "certificate": {"state": cert, "not_after": "2026-12-09T00:00:00+00:00"} if cert else None}
                     for n, r, cert in pods]}


ENROLLED_NS = [{"metadata": {"name": "shop", "labels": {"ambit.dev/dataplane-mode": "ambient"}}},
               {"metadata": {"name": "plain", "labels": {}}}]
APPS = [app_pod("web"), app_pod("db", node="node-2"), app_pod("legacy", labels={"ambit.dev/dataplane-mode": "none"}),
        app_pod("loner", ns="plain"), app_pod("hostnet", host_network=True), app_pod("done", phase="Succeeded")]
CAPTURED = {"node-1": report(("web", "installed", "valid")), "node-2": report(("db", "installed", "renewing"))}


class FakeCluster(check.Cluster):
    def __init__(self, *, objects=None, nodes=("node-1", "node-2"), agents=None, version=("1", "30"),
                 unreachable=False, secret_forbidden=False, apps=(), reports=None):
        self.namespace, self.now = NS, NOW
        self.objects = objects if objects is not None else healthy()
        self.nodes, self.agents = nodes, agents if agents is not None else [agent(n) for n in nodes]
        self._version, self.unreachable, self.secret_forbidden = version, unreachable, secret_forbidden
        self.apps, self.reports = list(apps), reports or {}
        self.gateways: list[dict] = []
        self.services: list[dict] = []
        self.waypoint_pods: list[dict] = []
        self.namespaces = ENROLLED_NS

    def agent_pods(self, agent_pod):
        node = agent_pod.removeprefix("ambit-node-agent-")
        if node not in self.reports:
            raise ClusterError(f"HTTP 503 from pods/{agent_pod}:15020/proxy/debug/pods")
        return self.reports[node]

    def version(self):
        if self.unreachable:
            raise ClusterError("cannot reach the Kubernetes API at https://10.0.0.1:6443: connection refused")
        return {"major": self._version[0], "minor": self._version[1], "git_version": "v1.x"}

    def get(self, api_version, kind, name, namespace=None):
        if kind == "Secret" and self.secret_forbidden:
            raise ClusterError("reading Secret ambit-system/ambit-ca: HTTP 403 forbidden")
        return self.objects.get((kind, name))

    def list(self, api_version, kind, *, namespace=None, selector=""):
        if kind == "Node":
            return [{"metadata": {"name": n, "labels": {"kubernetes.io/os": "linux"}}} for n in self.nodes]
        if kind == "Namespace":
            return self.namespaces
        if kind == "Gateway":
            return self.gateways
        if kind == "Service":
            return [s for s in self.services if namespace in (None, s["metadata"]["namespace"])
                    and (not selector or selector in (s["metadata"].get("labels") or {}))]
        if selector == "gateway.networking.k8s.io/gateway-name":
            return self.waypoint_pods
        return self.agents if namespace == NS else self.apps


def healthy(*, root_days=3650, issuer_days=3650, replicas=1, available=1) -> dict:
    objs = {(kind, name): {"metadata": {"name": name}} for kind, name in [
        ("Namespace", NS), ("ServiceAccount", "ambit-node-agent"), ("ServiceAccount", "ambit-identity"),
        ("ClusterRole", f"ambit-node-agent-{NS}"), ("ClusterRoleBinding", f"ambit-node-agent-{NS}"),
        ("ClusterRole", f"ambit-identity-{NS}"), ("ClusterRoleBinding", f"ambit-identity-{NS}"),
        ("Role", "ambit-node-agent"), ("RoleBinding", "ambit-node-agent"), ("Role", "ambit-identity"),
        ("RoleBinding", "ambit-identity"), ("DaemonSet", "ambit-node-agent"), ("Service", "ambit-identity")]}
    objs[("Deployment", "ambit-identity")] = {"metadata": {"name": "ambit-identity"}, "spec": {"replicas": replicas},
                                              "status": {"availableReplicas": available}}
    objs[("ConfigMap", "ambit-trust-bundle")] = {"data": {"root-cert.pem": pem(root_days)}}
    objs[("Secret", "ambit-ca")] = {"data": {"ca.crt": base64.b64encode(pem(issuer_days, cn="issuer").encode()).decode()}}
    return objs


def results(cluster) -> dict[str, check.Result]:
    return {r.description: r for cat in check.run(cluster) for r in cat.checks}


def test_a_healthy_install_passes_every_check():
    out = results(FakeCluster(apps=APPS, reports=CAPTURED))
    assert len(out) == 16 and all(r.result == "success" for r in out.values())
    assert results(FakeCluster())["every enrolled pod is captured (asked of its node's agent)"].result == "success"


@pytest.mark.parametrize(
    ("reports", "description", "words"),
    [
        ({"node-1": report(), "node-2": CAPTURED["node-2"]}, "every enrolled pod is captured (asked of its node's agent)",
         "shop/web on node-1: not captured by its node's agent"),
        ({"node-1": report(("web", "partial", "valid")), "node-2": CAPTURED["node-2"]},
         "every enrolled pod is captured (asked of its node's agent)", "shop/web on node-1: redirection partial"),
        ({"node-2": CAPTURED["node-2"]}, "every enrolled pod is captured (asked of its node's agent)",
         "cannot ask the agent on node-1 (HTTP 503 from pods/ambit-node-agent-node-1:15020/proxy/debug/pods)"),
        ({"node-1": report(("web", "installed", "expired")), "node-2": CAPTURED["node-2"]},
         "every captured pod holds a valid certificate", "shop/web (spiffe://x/web): certificate expired"),
        ({"node-1": report(("web", "installed", None)), "node-2": CAPTURED["node-2"]},
         "every captured pod holds a valid certificate", "certificate missing"),
    ],
    ids=["not-captured", "rules-partial", "agent-unreachable", "cert-expired", "no-cert"],
)
def test_the_agents_are_asked_about_every_enrolled_pod(reports, description, words):
    """Only the enrolled, running, non-hostNetwork pods count: opt-outs and other namespaces do not."""
    r = results(FakeCluster(apps=APPS, reports=reports))[description]
    assert r.result == "error" and words in r.error, r
    others = [x for x in results(FakeCluster(apps=APPS, reports=reports)).values() if x.description != description]
    assert all(x.result == "success" for x in others if "captured" not in x.description)


def without(*keys):
    objs = healthy()
    for key in keys:
        del objs[key]
    return objs


@pytest.mark.parametrize(
    ("cluster", "description", "result", "words"),
    [
        (FakeCluster(version=("1", "27")), "runs Kubernetes 1.28 or newer", "error", "1.27 is older than 1.28"),
        (FakeCluster(objects=without(("Role", "ambit-identity"))), "cluster roles, roles and bindings exist", "error",
         "missing: Role ambit-identity"),
        (FakeCluster(objects=healthy(replicas=0, available=0)), "the identity CA is ready", "error", "scaled to 0"),
        (FakeCluster(objects=healthy(available=0)), "the identity CA is ready", "error", "0/1 available replicas"),
        (FakeCluster(objects=healthy(root_days=30)), "trust anchors are published and valid", "warning",
         "trust anchor CN=root expires on 2027-01-07 (in less than 60 days)"),
        (FakeCluster(objects=healthy(root_days=-2)), "trust anchors are published and valid", "error", "expired at"),
        (FakeCluster(objects=without(("ConfigMap", "ambit-trust-bundle"))), "trust anchors are published and valid",
         "error", "has no root-cert.pem yet"),
        (FakeCluster(objects=healthy(issuer_days=10)), "the issuer certificate is valid", "warning", "CN=issuer expires"),
        (FakeCluster(secret_forbidden=True), "the issuer certificate is valid", "warning", "HTTP 403"),
        (FakeCluster(agents=[agent("node-2")]), "a node agent runs on every node", "error", "no node agent on node-1"),
        (FakeCluster(agents=[agent("node-1", agent_ready=False), agent("node-2")]), "every node agent is ready",
         "error", "not ready on node-1 (ambit-node-agent-node-1)"),
        (FakeCluster(agents=[agent("node-1"), agent("node-2", cni_ready=False)]), "ambit-cni is chained on every node",
         "error", "not chained into the CNI config on node-2"),
    ],
    ids=["old-kubernetes", "missing-role", "ca-scaled-to-0", "ca-unavailable", "root-expires-soon", "root-expired",
         "no-trust-bundle", "issuer-expires-soon", "secret-forbidden", "agent-missing", "agent-not-ready",
         "cni-not-chained"],
)
def test_each_problem_is_named_with_a_hint(cluster, description, result, words):
    r = results(cluster)[description]
    assert r.result == result and words in r.error, r
    assert r.hint.startswith("see docs/checks.md#")
    assert check.succeeded(check.run(cluster)) is (result == "warning")


@pytest.mark.parametrize(
    ("cluster", "ran"),
    [(FakeCluster(unreachable=True), 1), (FakeCluster(objects=without(("Namespace", NS))), 3)],
    ids=["api-unreachable", "no-namespace"],
)
def test_a_failed_gate_stops_the_run(cluster, ran):
    out = results(cluster)
    assert len(out) == ran and list(out.values())[-1].result == "error"


def test_outputs():
    broken = FakeCluster(agents=[agent("node-2")])
    table = check.render(check.run(broken), output="table")
    assert "✔ can reach the Kubernetes API" in table
    assert "× a node agent runs on every node\n    no node agent on node-1" in table
    assert table.endswith("Status check results are × (15 passed, 0 warnings, 1 failed)")
    short = check.render(check.run(broken), output="short")
    assert "✔" not in short.split("Status")[0] and "× a node agent runs on every node" in short
    doc = json.loads(check.render(check.run(broken), output="json"))
    assert doc["success"] is False
    assert [c["name"] for c in doc["categories"]] == ["kubernetes-api", "ambit-install", "ambit-identity", "ambit-agents",
                                                      "ambit-data-plane", "ambit-waypoints"]
    failed = [c for cat in doc["categories"] for c in cat["checks"] if c["result"] == "error"]
    assert failed == [{"description": "a node agent runs on every node", "result": "error",
                       "error": failed[0]["error"], "hint": "see docs/checks.md#agent-on-every-node"}]


def test_every_hint_names_a_section_of_the_docs():
    from pathlib import Path

    doc = (Path(check.__file__).resolve().parents[1] / "docs" / "checks.md").read_text()
    anchors = {anchor for _, checks in check.CATEGORIES for _, anchor, _ in checks}
    assert all(f"### {a}\n" in doc for a in anchors), sorted(a for a in anchors if f"### {a}\n" not in doc)


def test_waypoints_unprogrammed_or_missing_are_named():
    c = FakeCluster(reports={"node-1": {"pods": []}, "node-2": {"pods": []}})
    c.gateways = [{"metadata": {"name": "waypoint", "namespace": "shop"},
                   "spec": {"gatewayClassName": "ambit-waypoint"},
                   "status": {"conditions": [{"type": "Programmed", "status": "False", "reason": "Pending",
                                              "message": "waiting for a waypoint pod to become ready"}]}}]
    c.namespaces = [{"metadata": {"name": "shop", "labels": {"ambit.dev/use-waypoint": "waypoint"}}}]
    c.services = [{"metadata": {"name": "web", "namespace": "shop", "labels": {}}},
                  {"metadata": {"name": "waypoint", "namespace": "shop",
                                "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}}},
                  {"metadata": {"name": "db", "namespace": "other", "labels": {"ambit.dev/use-waypoint": "none"}}}]
    out = {r.description: r for cat in check.run(c) for r in cat.checks}
    prog = out["every waypoint Gateway is programmed"]
    assert prog.result == "error" and "shop/waypoint: Programmed=False (Pending" in prog.error
    assert prog.hint == "see docs/checks.md#waypoints-programmed"
    bound = out["every service bound to a waypoint finds it ready"]
    assert bound.result == "error"
    assert bound.error == ("waypoint shop/waypoint has no ready pod, so connections to web are refused "
                           "(WAYPOINT_NOT_READY): `ambit waypoint list -n shop`")
    c.waypoint_pods = [{"metadata": {"name": "waypoint-1", "namespace": "shop",
                                     "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
                        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}]
    c._cache = {}
    out = {r.description: r for cat in check.run(c) for r in cat.checks}
    assert out["every service bound to a waypoint finds it ready"].result == "success"
