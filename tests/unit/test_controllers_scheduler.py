"""scheduler.reconcile: feasibility, spreading, PodScheduled."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from sandbox.controllers.actions import Patch
from sandbox.controllers.scheduler import Scheduler, reconcile

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def node(name, *, ready=True, labels=None, taints=None, unschedulable=False):
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(name, *, owner="rs-a", node_name="", selector=None, created="2024-05-01T11:00:00Z",
        phase="Pending", tolerations=None, scheduler="", affinity=None, deleting=False):
    meta = {"name": name, "namespace": "demo", "uid": f"uid-{name}", "creationTimestamp": created}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "uid": f"uid-{owner}", "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T11:59:00Z"
    spec = {"containers": [{"name": "c"}]}
    if node_name:
        spec["nodeName"] = node_name
    if selector:
        spec["nodeSelector"] = selector
    if tolerations:
        spec["tolerations"] = tolerations
    if scheduler:
        spec["schedulerName"] = scheduler
    if affinity:
        spec["affinity"] = affinity
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def bindings(actions):
    return {a.name: a.body["spec"]["nodeName"] for a in actions if isinstance(a, Patch) and not a.subresource}


def scheduled_conditions(actions):
    return {a.name: a.body["status"]["conditions"][0] for a in actions if isinstance(a, Patch) and a.subresource == "status"}


TWO = [node("node-1"), node("node-2")]


@pytest.mark.parametrize(
    "pods,nodes,expected",
    [
        pytest.param([pod("a-1")], TWO, {"a-1": "node-1"}, id="tie-goes-to-name-order"),
        pytest.param([pod("a-1", created="2024-05-01T11:00:00Z"), pod("a-2", created="2024-05-01T11:00:01Z")],
                     TWO, {"a-1": "node-1", "a-2": "node-2"}, id="replicas-of-one-owner-spread"),
        pytest.param([pod("x", owner="rs-b", node_name="node-1"), pod("y", owner="rs-b", node_name="node-1"),
                      pod("a-1")], TWO, {"a-1": "node-2"}, id="least-pods-overall-breaks-owner-tie"),
        pytest.param([pod("a-0", node_name="node-2"), pod("x", owner="rs-b", node_name="node-1"),
                      pod("y", owner="rs-b", node_name="node-1"), pod("a-1")], TWO, {"a-1": "node-1"},
                     id="owner-spread-beats-overall-load"),
        pytest.param([pod("a-0", node_name="node-2", phase="Succeeded"), pod("x", owner="rs-b", node_name="node-1"),
                      pod("a-1")], TWO, {"a-1": "node-2"}, id="finished-pods-do-not-count"),
        pytest.param([pod("a-1")], [node("node-1", ready=False), node("node-2")], {"a-1": "node-2"},
                     id="not-ready-node-skipped"),
        pytest.param([pod("a-1")], [node("node-1", unschedulable=True), node("node-2")], {"a-1": "node-2"},
                     id="cordoned-node-skipped"),
        pytest.param([pod("a-1", selector={"disk": "ssd"}), pod("a-2", selector={"disk": "ssd"})],
                     [node("node-1"), node("node-2", labels={"disk": "ssd"})], {"a-1": "node-2", "a-2": "node-2"},
                     id="node-selector-overrides-spreading"),
        pytest.param([pod("a-1")], [node("node-1", taints=[{"key": "gpu", "effect": "NoSchedule"}]), node("node-2")],
                     {"a-1": "node-2"}, id="untolerated-taint"),
        pytest.param([pod("a-1", tolerations=[{"key": "gpu", "operator": "Exists"}])],
                     [node("node-1", taints=[{"key": "gpu", "effect": "NoSchedule"}]), node("node-2")],
                     {"a-1": "node-1"}, id="tolerated-taint"),
        pytest.param([pod("a-1", affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                         "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                                 "values": ["node-2"]}]}]}}})],
                     TWO, {"a-1": "node-2"}, id="required-node-affinity-match-fields"),
        pytest.param([pod("a-1", node_name="node-1")], TWO, {}, id="already-bound-left-alone"),
        pytest.param([pod("a-1", scheduler="other-scheduler")], TWO, {}, id="other-scheduler-left-alone"),
        pytest.param([pod("a-1", deleting=True)], TWO, {}, id="deleting-pod-left-alone"),
        pytest.param([pod("a-1", phase="Failed")], TWO, {}, id="finished-pod-left-alone"),
    ],
)
def test_binding(pods, nodes, expected):
    assert bindings(reconcile(pods, nodes, now=NOW)) == expected


def test_three_replicas_on_two_nodes_split_two_and_one():
    pods = [pod(f"a-{i}", created=f"2024-05-01T11:00:0{i}Z") for i in range(3)]
    placed = bindings(reconcile(pods, TWO, now=NOW))
    assert sorted(placed.values()) == ["node-1", "node-1", "node-2"]


def test_bind_sets_pod_scheduled_before_binding():
    actions = reconcile([pod("a-1")], TWO, now=NOW)
    assert [(a.subresource, a.name) for a in actions] == [("status", "a-1"), ("", "a-1")]
    cond = actions[0].body["status"]["conditions"][0]
    assert cond["type"] == "PodScheduled" and cond["status"] == "True"
    assert cond["lastTransitionTime"] == "2024-05-01T12:00:00Z"


def test_unschedulable_pod_gets_reasons_once():
    nodes = [node("node-1", ready=False), node("node-2", labels={"disk": "hdd"})]
    p = pod("a-1", selector={"disk": "ssd"})
    actions = reconcile([p], nodes, now=NOW)
    assert bindings(actions) == {}
    cond = scheduled_conditions(actions)["a-1"]
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    assert cond["message"] == (
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were not ready."
    )
    # the same verdict again writes nothing (no event loop with our own status writes)
    p["status"]["conditions"] = [cond]
    assert reconcile([p], nodes, now=NOW) == []


def test_other_conditions_are_carried_over():
    p = pod("a-1")
    p["status"]["conditions"] = [{"type": "Custom", "status": "True"}]
    conds = reconcile([p], TWO, now=NOW)[0].body["status"]["conditions"]
    assert [c["type"] for c in conds] == ["PodScheduled", "Custom"]


def test_no_nodes_message():
    cond = scheduled_conditions(reconcile([pod("a-1")], [], now=NOW))["a-1"]
    assert cond["message"] == "0/0 nodes are available: no nodes registered."


@pytest.mark.parametrize(
    "kind,etype,obj,keys",
    [
        pytest.param("Pod", "ADDED", pod("a"), ("*",), id="pending-pod"),
        pytest.param("Pod", "MODIFIED", pod("a", node_name="node-1"), (), id="bound-pod"),
        pytest.param("Pod", "DELETED", pod("a"), (), id="deleted-pod"),
        pytest.param("Node", "MODIFIED", node("node-1"), ("*",), id="node"),
    ],
)
def test_events_that_wake_the_scheduler(kind, etype, obj, keys):
    assert tuple(Scheduler().keys_for(kind, obj, etype=etype, store=None)) == keys
