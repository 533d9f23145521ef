"""garbagecollector.reconcile: orphans, unknown owners, foreground and orphan finalizers."""
from __future__ import annotations

import pytest

from sandbox.controllers.actions import Delete, Patch
from sandbox.controllers.garbagecollector import GarbageCollector, reconcile
from sandbox.controllers.objects import API_GROUPS


def api_version(kind):
    group = API_GROUPS.get(kind, "batch")
    return f"{group}/v1" if group else "v1"


def obj(kind, name, *, uid=None, owners=(), ns="demo", deleting=False, finalizers=None, rv="7"):
    meta = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "resourceVersion": rv}
    if owners:
        meta["ownerReferences"] = [
            {"apiVersion": api_version(k), "kind": k, "name": n, "uid": f"uid-{n}", "controller": i == 0}
            for i, (k, n) in enumerate(owners)
        ]
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T12:00:00Z"
    if finalizers:
        meta["finalizers"] = finalizers
    return {"kind": kind, "metadata": meta}


def world(*objs):
    out: dict = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def deletes(actions):
    return sorted((a.kind, a.name) for a in actions if isinstance(a, Delete))


DEPLOY = obj("Deployment", "web")
RS = obj("ReplicaSet", "web-abc", owners=[("Deployment", "web")])
POD = obj("Pod", "web-abc-x1", owners=[("ReplicaSet", "web-abc")])
SVC = obj("Service", "web")
SLICE = obj("EndpointSlice", "web-q2w4z", owners=[("Service", "web")])


@pytest.mark.parametrize(
    "objects,expected",
    [
        pytest.param(world(DEPLOY, RS, POD, SVC, SLICE), [], id="everything-owned"),
        pytest.param(world(RS, POD), [("ReplicaSet", "web-abc")], id="deployment-gone"),
        pytest.param(world(POD), [("Pod", "web-abc-x1")], id="replicaset-gone"),
        pytest.param(world(SLICE), [("EndpointSlice", "web-q2w4z")], id="service-gone"),
        pytest.param(world(obj("Deployment", "web", uid="uid-new"), RS), [("ReplicaSet", "web-abc")],
                     id="owner-recreated-with-new-uid"),
        pytest.param(world(obj("Deployment", "web", ns="other"), RS), [("ReplicaSet", "web-abc")],
                     id="owner-in-another-namespace-does-not-count"),
        pytest.param(world(obj("Secret", "ambit-ca", owners=[("Deployment", "ambit-identity")]),
                           obj("ConfigMap", "ambit-trust-bundle", owners=[("Deployment", "ambit-identity")])),
                     [("ConfigMap", "ambit-trust-bundle"), ("Secret", "ambit-ca")], id="secret-and-configmap-of-a-gone-deployment"),
        pytest.param(world(obj("Deployment", "ambit-identity"),
                           obj("Secret", "ambit-ca", owners=[("Deployment", "ambit-identity")])), [],
                     id="secret-of-a-live-deployment-kept"),
        pytest.param(world(obj("Pod", "bare")), [], id="no-owners"),
        pytest.param(world(obj("Pod", "job-pod", owners=[("Job", "nightly")])), [], id="unknown-owner-kind-kept"),
        pytest.param(world(obj("Pod", "p", owners=[("ReplicaSet", "web-abc"), ("DaemonSet", "agent")]),
                           obj("DaemonSet", "agent")), [], id="one-live-owner-is-enough"),
        pytest.param(world(obj("Pod", "p", owners=[("ReplicaSet", "gone-1"), ("DaemonSet", "gone-2")])),
                     [("Pod", "p")], id="all-owners-gone"),
        pytest.param(world(obj("Pod", "p", owners=[("ReplicaSet", "gone")], deleting=True)), [],
                     id="already-deleting"),
    ],
)
def test_orphans(objects, expected):
    assert deletes(reconcile(objects)) == expected


def test_orphan_delete_is_background_with_uid_and_live_owner_check():
    [action] = reconcile(world(POD))
    assert action.propagation == "Background"
    assert action.uid == "uid-web-abc-x1"
    assert [r["uid"] for r in action.unless_owners_exist] == ["uid-web-abc"]


def test_cascade_through_generations_needs_one_pass_per_level():
    # the Deployment is gone: first the ReplicaSet goes; its pods only once it has gone
    assert deletes(reconcile(world(RS, POD))) == [("ReplicaSet", "web-abc")]
    assert deletes(reconcile(world(POD))) == [("Pod", "web-abc-x1")]


def test_foreground_deletion_deletes_dependents_then_drops_the_finalizer():
    owner = obj("Deployment", "web", deleting=True, finalizers=["foregroundDeletion"])
    actions = reconcile(world(owner, RS))
    assert [(type(a).__name__, a.name, getattr(a, "propagation", "")) for a in actions] == \
        [("Delete", "web-abc", "Foreground")]
    [patch] = reconcile(world(owner))
    assert isinstance(patch, Patch) and patch.name == "web"
    assert patch.body == {"metadata": {"finalizers": None, "resourceVersion": "7"}}


def test_orphan_finalizer_removes_owner_references_then_itself():
    owner = obj("Deployment", "web", deleting=True, finalizers=["orphan", "example.com/keep"])
    [patch] = reconcile(world(owner, RS))
    assert patch.kind == "ReplicaSet" and patch.body["metadata"]["ownerReferences"] is None
    [patch] = reconcile(world(owner, obj("ReplicaSet", "web-abc")))
    assert patch.kind == "Deployment"
    assert patch.body["metadata"]["finalizers"] == ["example.com/keep"]


FG = ["foregroundDeletion"]


@pytest.mark.parametrize(
    "objects,expected",
    [
        pytest.param(world(obj("Deployment", "web", deleting=True, finalizers=FG), RS, POD),
                     [("Delete", "ReplicaSet", "web-abc", "Foreground")], id="deployment-waits-replicaset-goes-first"),
        pytest.param(world(obj("Deployment", "web", deleting=True, finalizers=FG),
                           obj("ReplicaSet", "web-abc", owners=[("Deployment", "web")], deleting=True, finalizers=FG), POD),
                     [("Delete", "Pod", "web-abc-x1", "Foreground")], id="replicaset-waits-for-its-pods"),
        pytest.param(world(obj("Deployment", "web", deleting=True, finalizers=FG),
                           obj("ReplicaSet", "web-abc", owners=[("Deployment", "web")], deleting=True, finalizers=FG)),
                     [("Patch", "ReplicaSet", "web-abc", "")], id="replicaset-released-deployment-still-referenced"),
        pytest.param(world(obj("ReplicaSet", "web-abc", deleting=True, finalizers=FG), obj("DaemonSet", "agent"),
                           obj("Pod", "p", owners=[("ReplicaSet", "web-abc"), ("DaemonSet", "agent")])),
                     [("Patch", "Pod", "p", "")], id="second-owner-keeps-the-dependent"),
    ],
)
def test_foreground_cascade(objects, expected):
    got = [(type(a).__name__, a.kind, a.name, getattr(a, "propagation", "")) for a in reconcile(objects)]
    assert got == expected


def test_dependent_kept_by_another_owner_loses_only_the_waiting_reference():
    pod = obj("Pod", "p", owners=[("ReplicaSet", "web-abc"), ("DaemonSet", "agent")])
    [patch] = reconcile(world(obj("ReplicaSet", "web-abc", deleting=True, finalizers=FG), obj("DaemonSet", "agent"), pod))
    assert [r["name"] for r in patch.body["metadata"]["ownerReferences"]] == ["agent"]
    assert patch.body["metadata"]["resourceVersion"] == "7"


def test_deleting_owner_without_our_finalizers_is_left_alone():
    owner = obj("Deployment", "web", deleting=True, finalizers=["example.com/keep"])
    assert reconcile(world(owner, RS)) == []


@pytest.mark.parametrize(
    "etype,o,wakes",
    [
        pytest.param("ADDED", POD, True, id="dependent"),
        pytest.param("ADDED", obj("Gateway", "waypoint"), False, id="new-owner"),
        pytest.param("DELETED", DEPLOY, True, id="owner-deleted"),
        pytest.param("MODIFIED", obj("Deployment", "web", deleting=True), True, id="owner-deleting"),
        pytest.param("MODIFIED", obj("ReplicaSet", "web-abc"), True, id="dependent-just-orphaned"),
        pytest.param("MODIFIED", obj("Gateway", "waypoint"), False, id="owner-changed"),
        pytest.param("MODIFIED", obj("Gateway", "waypoint", deleting=True), True, id="gateway-deleting"),
    ],
)
def test_events_that_wake_the_collector(etype, o, wakes):
    assert bool(list(GarbageCollector().keys_for(o["kind"], o, etype=etype, store=None))) is wakes


# ---- Gateways (a CRD kind) own what a waypoint controller creates for them -------------------

GW = obj("Gateway", "waypoint")
WAYPOINT = [obj(kind, "waypoint", owners=[("Gateway", "waypoint")])
            for kind in ("Deployment", "Service", "ServiceAccount", "RoleBinding", "ConfigMap")]


def test_a_live_gateway_keeps_what_it_owns():
    assert reconcile(world(GW, *WAYPOINT)) == []


def test_a_gone_gateway_takes_what_it_owns_with_it():
    actions = reconcile(world(*WAYPOINT))
    assert deletes(actions) == sorted((k, "waypoint") for k in ("Deployment", "Service", "ServiceAccount", "RoleBinding", "ConfigMap"))
    assert all(a.propagation == "Background" and a.unless_owners_exist[0]["kind"] == "Gateway" for a in actions)


def test_a_gateway_in_foreground_deletion_waits_for_its_dependents():
    owner = obj("Gateway", "waypoint", deleting=True, finalizers=FG)
    assert {(a.kind, a.propagation) for a in reconcile(world(owner, *WAYPOINT))} == {
        (k, "Foreground") for k in ("Deployment", "Service", "ServiceAccount", "RoleBinding", "ConfigMap")}
    [patch] = reconcile(world(owner))
    assert (patch.kind, patch.name, patch.body["metadata"]["finalizers"]) == ("Gateway", "waypoint", None)


def test_an_owner_of_another_group_with_the_same_kind_is_not_judged():
    istio = obj("Deployment", "proxy")
    istio["metadata"]["ownerReferences"] = [{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "name": "ingress", "uid": "uid-i"}]
    assert reconcile(world(istio)) == []
