"""`ambit node redirection|certs`: rows from an agent's /debug/pods, the table and JSON a user reads,
and how a pod or node names the agent to ask."""
from __future__ import annotations

import json

import pytest

from ambitctl import node
from ambitctl.errors import AmbitctlError

DOC = {"node": "node-1", "pods": [
    {"namespace": "demo", "name": "web-1", "uid": "u1", "redirection": "installed", "error": None,
     "identity": "spiffe://cluster.local/ns/demo/sa/web",
     "certificate": {"state": "valid", "not_after": "2026-12-09T01:13:35+00:00"}},
    {"namespace": "demo", "name": "emoji-1", "uid": "u2", "redirection": "partial", "error": None,
     "identity": "spiffe://cluster.local/ns/demo/sa/emoji", "certificate": None},
    {"uid": "u3", "redirection": "failed", "error": "no netns /var/run/netns/cni-x"},
]}


def test_redirection_rows_say_captured_or_why_not():
    rows = node.redirection_rows(DOC, node="node-1")
    assert [(r["pod"], r["state"], r["reason"]) for r in rows] == [
        ("u3", "failed", "no netns /var/run/netns/cni-x"), ("emoji-1", "partial", ""), ("web-1", "captured", "")]
    table = node.render(rows, what="redirection", output="table")
    lines = table.splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "NODE", "BACKEND", "STATE"]
    assert lines[-1].split() == ["demo", "web-1", "node-1", "iptables", "captured"]
    assert "REASON" in node.render(rows, what="redirection", output="wide")


def test_cert_rows_show_identity_state_and_expiry():
    rows = node.cert_rows(DOC, node="node-1")
    web = next(r for r in rows if r["pod"] == "web-1")
    assert web == {"namespace": "demo", "pod": "web-1", "node": "node-1", "identity": "spiffe://cluster.local/ns/demo/sa/web",
                   "state": "valid", "expires": "2026-12-09T01:13:35+00:00"}
    assert next(r for r in rows if r["pod"] == "emoji-1")["state"] == "missing"
    assert json.loads(node.render(rows, what="certs", output="json")) == rows


class FakeCluster:
    namespace = "ambit-system"

    def get(self, api_version, kind, name, namespace=None):
        return {"web-1": {"spec": {"nodeName": "node-1"}}, "pending": {"spec": {}}}.get(name)

    def list(self, api_version, kind, *, namespace=None, selector=""):
        return [{"metadata": {"name": "agent-a"}, "spec": {"nodeName": "node-1"}}]  # the agents

    def agent_pods(self, name):
        assert name == "agent-a"
        return DOC


@pytest.mark.parametrize(
    ("node_name", "pod", "words"),
    [(None, None, "name a node"), ("node-1", "web-1", "not both"), (None, "demo/nope", "pod demo/nope not found"),
     (None, "pending", "not scheduled to a node yet")],
    ids=["neither", "both", "unknown-pod", "unscheduled"],
)
def test_resolve_refuses_clearly(node_name, pod, words):
    with pytest.raises(AmbitctlError, match=words):
        node.resolve(FakeCluster(), node=node_name, pod_ref=pod, namespace="demo")


def test_a_pod_names_its_node_and_filters_the_rows():
    target = node.resolve(FakeCluster(), node=None, pod_ref="web-1", namespace="demo")
    assert target == node.Target(node="node-1", pod=("demo", "web-1"))
    assert [p["name"] for p in node.report(FakeCluster(), target)["pods"]] == ["web-1"]
    with pytest.raises(AmbitctlError, match="no Ambit node agent on node node-2"):
        node.report(FakeCluster(), node.Target(node="node-2"))
