"""daemonset.reconcile: one pod per eligible node, rolling replacement, status."""
from __future__ import annotations

import copy
import itertools
from datetime import datetime, timezone

import pytest

from sandbox.controllers.actions import Create, Delete, Patch
from sandbox.controllers.daemonset import DaemonSetController, reconcile
from sandbox.controllers.objects import DS_HASH_LABEL, template_hash

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
TEMPLATE = {"metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "agent", "image": "ambit.dev/node-agent:latest"}]}}
H = template_hash(TEMPLATE)


def ds(*, template=TEMPLATE, node_selector=None, strategy=None, generation=1, status=None, tolerations=None):
    template = copy.deepcopy(template)
    if node_selector:
        template["spec"]["nodeSelector"] = node_selector
    if tolerations:
        template["spec"]["tolerations"] = tolerations
    spec = {"selector": {"matchLabels": {"app": "agent"}}, "template": template}
    if strategy:
        spec["updateStrategy"] = strategy
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "ambit-system", "uid": "uid-ds", "generation": generation},
            "spec": spec, "status": status or {}}


def node(name, *, ready=True, labels=None, taints=None, unschedulable=False):
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name, node_name, *, h=H, ready=True, phase="Running", created="2024-05-01T10:00:00Z"):
    return {"metadata": {"name": name, "namespace": "ambit-system", "uid": f"uid-{name}", "creationTimestamp": created,
                         "labels": {"app": "agent", DS_HASH_LABEL: h},
                         "ownerReferences": [{"kind": "DaemonSet", "name": "agent", "uid": "uid-ds", "controller": True}]},
            "spec": {"nodeName": node_name},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def run(daemonset, pods, nodes):
    counter = itertools.count(1)
    return reconcile(daemonset, pods, nodes=nodes, now=NOW, suffix=lambda: f"s{next(counter):04d}")


def created_on(actions):
    return sorted(a.body["spec"]["nodeName"] for a in actions if isinstance(a, Create))


def deleted(actions):
    return sorted(a.name for a in actions if isinstance(a, Delete))


def status(actions):
    patches = [a for a in actions if isinstance(a, Patch) and a.subresource == "status"]
    return patches[0].body["status"] if patches else None


NODES = [node("node-1"), node("node-2"), node("node-3")]


def test_one_pod_per_ready_node_bound_directly():
    actions = run(ds(), [], NODES)
    assert created_on(actions) == ["node-1", "node-2", "node-3"]
    body = next(a for a in actions if isinstance(a, Create)).body
    assert body["metadata"]["name"] == "agent-s0001"
    assert body["metadata"]["labels"] == {"app": "agent", DS_HASH_LABEL: H}
    assert body["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    assert body["metadata"]["ownerReferences"][0]["controller"] is True


@pytest.mark.parametrize(
    "daemonset,nodes,expected",
    [
        pytest.param(ds(), [node("node-1"), node("node-2", ready=False)], ["node-1"], id="not-ready-node-skipped"),
        pytest.param(ds(node_selector={"role": "edge"}), [node("node-1"), node("node-2", labels={"role": "edge"})],
                     ["node-2"], id="node-selector"),
        pytest.param(ds(), [node("node-1", unschedulable=True)], ["node-1"], id="cordoned-node-still-gets-a-daemon"),
        pytest.param(ds(), [node("node-1", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])], [],
                     id="untolerated-taint"),
        pytest.param(ds(tolerations=[{"operator": "Exists"}]),
                     [node("node-1", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])],
                     ["node-1"], id="tolerate-everything"),
    ],
)
def test_eligible_nodes(daemonset, nodes, expected):
    assert created_on(run(daemonset, [], nodes)) == expected


def test_steady_state_writes_nothing():
    pods = [pod("a", "node-1"), pod("b", "node-2"), pod("c", "node-3")]
    current = {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberMisscheduled": 0, "numberReady": 3,
               "updatedNumberScheduled": 3, "numberAvailable": 3, "numberUnavailable": 0, "observedGeneration": 1}
    assert run(ds(status=current), pods, NODES) == []


def test_pods_on_ineligible_or_vanished_nodes_and_duplicates_are_deleted():
    daemonset = ds(node_selector={"agent": "yes"})
    h = template_hash(daemonset["spec"]["template"])
    pods = [pod("a", "node-1", h=h), pod("a2", "node-1", h=h, created="2024-05-01T11:00:00Z"),
            pod("gone", "node-9", h=h), pod("wrong", "node-2", h=h)]
    actions = run(daemonset, pods, [node("node-1", labels={"agent": "yes"}), node("node-2")])
    assert deleted(actions) == ["a2", "gone", "wrong"]
    assert created_on(actions) == []
    assert status(actions)["numberMisscheduled"] == 2


@pytest.mark.parametrize("phase", ["Failed", "Succeeded"])
def test_finished_daemon_pod_is_replaced(phase):
    actions = run(ds(), [pod("dead", "node-1", phase=phase, ready=False)], [node("node-1")])
    assert deleted(actions) == ["dead"] and created_on(actions) == ["node-1"]


def test_rolling_update_replaces_one_available_pod_at_a_time():
    old = "oldhash"
    pods = [pod("a", "node-1", h=old), pod("b", "node-2", h=old), pod("c", "node-3", h=old)]
    assert deleted(run(ds(), pods, NODES)) == ["a"]
    # node-1's replacement is not ready yet: nothing more goes down
    pods = [pod("a-new", "node-1", ready=False), pod("b", "node-2", h=old), pod("c", "node-3", h=old)]
    assert deleted(run(ds(), pods, NODES)) == []


def test_rolling_update_replaces_unavailable_outdated_pods_regardless():
    old = "oldhash"
    pods = [pod("a", "node-1", h=old, ready=False), pod("b", "node-2", h=old, ready=False), pod("c", "node-3", h=old)]
    assert deleted(run(ds(), pods, NODES)) == ["a", "b"]


def test_rolling_update_max_unavailable_percentage():
    old = "oldhash"
    nodes = [node(f"node-{i}") for i in range(4)]
    pods = [pod(f"p{i}", f"node-{i}", h=old) for i in range(4)]
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "50%"}}
    assert deleted(run(ds(strategy=strategy), pods, nodes)) == ["p0", "p1"]


def test_on_delete_strategy_keeps_outdated_pods():
    pods = [pod("a", "node-1", h="oldhash")]
    assert deleted(run(ds(strategy={"type": "OnDelete"}), pods, [node("node-1")])) == []


def test_status_counts():
    pods = [pod("a", "node-1"), pod("b", "node-2", ready=False), pod("c", "node-3", h="oldhash")]
    st = status(run(ds(strategy={"type": "OnDelete"}, generation=4), pods, NODES))
    assert st == {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberMisscheduled": 0,
                  "numberReady": 2, "updatedNumberScheduled": 2, "numberAvailable": 2, "numberUnavailable": 1,
                  "observedGeneration": 4}


def test_node_events_wake_every_daemonset():
    class Store:
        def list(self, kind, namespace=None):
            return [ds()] if kind == "DaemonSet" else []

    keys = DaemonSetController().keys_for("Node", node("node-4"), etype="ADDED", store=Store())
    assert list(keys) == [("ambit-system", "agent")]
