"""replicaset.reconcile: names, owner references, scale order, replacement, status."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from sandbox.controllers.actions import Create, Delete, Patch, Requeue
from sandbox.controllers.objects import format_time
from sandbox.controllers.replicaset import ReplicaSetController, reconcile

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def rs(replicas=2, *, min_ready=0, generation=3, status=None, deleting=False, restart_policy=None):
    spec = {"containers": [{"name": "web", "image": "ambit.dev/demo/web:latest"}]}
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    meta = {"name": "web-abc", "namespace": "demo", "uid": "uid-rs", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T11:00:00Z"
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "minReadySeconds": min_ready,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"},
                                      "annotations": {"note": "x"}}, "spec": spec},
        },
        "status": status or {},
    }


def pod(name, *, node="node-1", phase="Running", ready=True, ready_since=None, created="2024-05-01T10:00:00Z",
        restarts=0, owner_uid="uid-rs", deleting=False, labels=None):
    meta = {"name": name, "namespace": "demo", "uid": f"uid-{name}", "creationTimestamp": created,
            "labels": labels if labels is not None else {"app": "web", "pod-template-hash": "abc"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "uid": owner_uid, "controller": True}]}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T11:59:00Z"
    conds = [{"type": "Ready", "status": "True" if ready else "False",
              "lastTransitionTime": ready_since or "2024-05-01T10:00:05Z"}]
    return {"metadata": meta, "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "conditions": conds, "containerStatuses": [{"restartCount": restarts}]}}


def names():
    counter = itertools.count(1)
    return lambda: f"s{next(counter):04d}"


def run(replicaset, pods):
    return reconcile(replicaset, pods, now=NOW, suffix=names())


def creates(actions):
    return [a for a in actions if isinstance(a, Create)]


def deleted(actions):
    return [a.name for a in actions if isinstance(a, Delete)]


def status(actions):
    patches = [a for a in actions if isinstance(a, Patch) and a.subresource == "status"]
    return patches[0].body["status"] if patches else None


def test_scale_up_creates_named_owned_pods_from_the_template():
    actions = run(rs(2), [])
    made = creates(actions)
    assert [a.name for a in made] == ["web-abc-s0001", "web-abc-s0002"]
    body = made[0].body
    assert body["metadata"]["namespace"] == "demo"
    assert body["metadata"]["labels"] == {"app": "web", "pod-template-hash": "abc"}
    assert body["metadata"]["annotations"] == {"note": "x"}
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "uid-rs",
        "controller": True, "blockOwnerDeletion": True}]
    assert body["spec"]["containers"][0]["image"] == "ambit.dev/demo/web:latest"
    assert "nodeName" not in body["spec"]  # the scheduler's job


def test_random_suffix_by_default():
    made = creates(reconcile(rs(1), [], now=NOW))
    suffix = made[0].name.removeprefix("web-abc-")
    assert len(suffix) == 5 and set(suffix) <= set("bcdfghjklmnpqrstvwxz2456789")


def test_steady_state_writes_nothing():
    pods = [pod("a"), pod("b")]
    current = {"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
               "observedGeneration": 3}
    assert run(rs(2, status=current), pods) == []


def test_pods_of_other_owners_are_not_counted():
    actions = run(rs(1), [pod("stranger", owner_uid="uid-other")])
    assert len(creates(actions)) == 1 and deleted(actions) == []


@pytest.mark.parametrize(
    "pods,replicas,expected",
    [
        pytest.param([pod("old", created="2024-05-01T09:00:00Z"), pod("new", created="2024-05-01T10:00:00Z")], 1,
                     ["new"], id="newest-first"),
        pytest.param([pod("running"), pod("unscheduled", node="", phase="Pending", ready=False)], 1,
                     ["unscheduled"], id="unscheduled-first"),
        pytest.param([pod("ready", created="2024-05-01T11:00:00Z"), pod("notready", ready=False)], 1,
                     ["notready"], id="not-ready-before-ready"),
        pytest.param([pod("running", created="2024-05-01T11:00:00Z"), pod("pending", phase="Pending", ready=False)],
                     1, ["pending"], id="pending-before-running"),
        pytest.param([pod("long", ready_since="2024-05-01T10:00:00Z"), pod("short", ready_since="2024-05-01T11:00:00Z")],
                     1, ["short"], id="ready-more-recently-first"),
        pytest.param([pod("calm"), pod("flappy", restarts=4)], 1, ["flappy"], id="more-restarts-first"),
        pytest.param([pod("a"), pod("b"), pod("c")], 0, ["a", "b", "c"], id="to-zero"),
    ],
)
def test_scale_down_order(pods, replicas, expected):
    assert sorted(deleted(run(rs(replicas), pods))) == sorted(expected)


def test_scale_down_deletes_with_uid_precondition():
    [action] = [a for a in run(rs(0), [pod("a")]) if isinstance(a, Delete)]
    assert action.uid == "uid-a"


@pytest.mark.parametrize("phase", ["Failed", "Succeeded"])
def test_finished_pods_are_replaced_and_deleted(phase):
    actions = run(rs(2), [pod("ok"), pod("dead", phase=phase, ready=False)])
    assert deleted(actions) == ["dead"]
    assert len(creates(actions)) == 1


def test_finished_pods_kept_for_inspection_when_not_restart_always():
    actions = run(rs(1, restart_policy="Never"), [pod("dead", phase="Failed", ready=False)])
    assert deleted(actions) == [] and len(creates(actions)) == 1


def test_terminating_pods_do_not_count():
    actions = run(rs(2), [pod("a"), pod("going", deleting=True)])
    assert len(creates(actions)) == 1 and deleted(actions) == []


def test_status_counts():
    pods = [pod("ready"), pod("notready", ready=False), pod("unlabeled", labels={"app": "web"}),
            pod("dead", phase="Failed", ready=False)]
    st = status(run(rs(3), pods))
    assert st == {"replicas": 3, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                  "observedGeneration": 3}


def test_min_ready_seconds_delays_availability_and_requeues():
    just_ready = format_time(NOW - timedelta(seconds=4))
    actions = run(rs(1, min_ready=10), [pod("a", ready_since=just_ready)])
    st = status(actions)
    assert st["readyReplicas"] == 1 and st["availableReplicas"] == 0
    [requeue] = [a for a in actions if isinstance(a, Requeue)]
    assert 6.0 <= requeue.after <= 6.2


def test_deleting_replicaset_is_left_to_the_garbage_collector():
    assert run(rs(3, deleting=True), []) == []


def test_keys_for_pod_events_map_to_the_owner():
    c = ReplicaSetController()
    assert list(c.keys_for("Pod", pod("a"), etype="MODIFIED", store=None)) == [("demo", "web-abc")]
    orphan = pod("b")
    orphan["metadata"]["ownerReferences"] = []
    assert list(c.keys_for("Pod", orphan, etype="MODIFIED", store=None)) == []
