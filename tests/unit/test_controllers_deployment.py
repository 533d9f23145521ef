"""deployment.reconcile: the ReplicaSet per template hash, rolling steps, scaling, status."""
from __future__ import annotations

import copy
import itertools
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.controllers.actions import Create, Delete, Patch
from sandbox.controllers.deployment import DeploymentController, reconcile
from sandbox.controllers.objects import REVISION_ANNOTATION, template_hash

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
TEMPLATE_V1 = {"metadata": {"labels": {"app": "web"}},
               "spec": {"containers": [{"name": "web", "image": "ambit.dev/demo/web:latest"}]}}
TEMPLATE_V2 = copy.deepcopy(TEMPLATE_V1)
TEMPLATE_V2["spec"]["containers"][0]["env"] = [{"name": "COLOR", "value": "blue"}]
H1, H2 = template_hash(TEMPLATE_V1), template_hash(TEMPLATE_V2)


def deploy(replicas=4, *, template=TEMPLATE_V1, strategy=None, generation=2, status=None, revision=None,
           deleting=False, history=None, paused=False):
    meta = {"name": "web", "namespace": "demo", "uid": "uid-deploy", "generation": generation}
    if revision:
        meta["annotations"] = {REVISION_ANNOTATION: str(revision)}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T11:00:00Z"
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": copy.deepcopy(template)}
    if strategy:
        spec["strategy"] = strategy
    if history is not None:
        spec["revisionHistoryLimit"] = history
    if paused:
        spec["paused"] = True
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec, "status": status or {}}


_uids = itertools.count()


def rs(h, replicas, *, available=None, ready=None, revision=1, created="2024-05-01T10:00:00Z", uid=None):
    available = replicas if available is None else available
    return {
        "metadata": {"name": f"web-{h}", "namespace": "demo", "uid": uid or f"uid-rs-{h}-{next(_uids)}",
                     "creationTimestamp": created, "labels": {"app": "web", "pod-template-hash": h},
                     "annotations": {REVISION_ANNOTATION: str(revision)},
                     "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "uid-deploy", "controller": True}]},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "readyReplicas": available if ready is None else ready,
                   "availableReplicas": available},
    }


def scales(actions):
    return {a.name: a.body["spec"]["replicas"] for a in actions
            if isinstance(a, Patch) and a.kind == "ReplicaSet" and "replicas" in a.body.get("spec", {})}


def status_of(actions):
    [patch] = [a for a in actions if isinstance(a, Patch) and a.subresource == "status"]
    return patch.body["status"]


def test_hash_looks_like_kubernetes():
    assert 1 <= len(H1) <= 10 and set(H1) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert H1 != H2
    assert template_hash(copy.deepcopy(TEMPLATE_V1)) == H1
    labelled = copy.deepcopy(TEMPLATE_V1)
    labelled["metadata"]["labels"]["pod-template-hash"] = H1
    assert template_hash(labelled) == H1, "the RS's own hash label must not change its hash"


def test_new_deployment_creates_its_replicaset():
    actions = reconcile(deploy(3), [], now=NOW)
    [create] = [a for a in actions if isinstance(a, Create)]
    body = create.body
    assert create.kind == "ReplicaSet" and body["metadata"]["name"] == f"web-{H1}"
    assert body["metadata"]["labels"] == {"app": "web", "pod-template-hash": H1}
    assert body["metadata"]["annotations"] == {REVISION_ANNOTATION: "1"}
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                                    "uid": "uid-deploy", "controller": True,
                                                    "blockOwnerDeletion": True}]
    assert body["spec"]["replicas"] == 3
    assert body["spec"]["selector"] == {"matchLabels": {"app": "web", "pod-template-hash": H1}}
    assert body["spec"]["template"]["metadata"]["labels"] == {"app": "web", "pod-template-hash": H1}
    assert body["spec"]["template"]["spec"] == TEMPLATE_V1["spec"]
    annotate = [a for a in actions if isinstance(a, Patch) and a.kind == "Deployment" and not a.subresource]
    assert annotate[0].body == {"metadata": {"annotations": {REVISION_ANNOTATION: "1"}}}


def test_template_change_creates_new_replicaset_within_surge():
    actions = reconcile(deploy(4, template=TEMPLATE_V2, revision=1), [rs(H1, 4)], now=NOW)
    [create] = [a for a in actions if isinstance(a, Create)]
    assert create.name == f"web-{H2}"
    assert create.body["spec"]["replicas"] == 1  # maxSurge 25% of 4
    assert create.body["metadata"]["annotations"][REVISION_ANNOTATION] == "2"
    assert scales(actions) == {}  # the old one waits for the next pass


@pytest.mark.parametrize(
    "rss,expected",
    [
        pytest.param([rs(H1, 4), rs(H2, 1, available=0, revision=2)], {f"web-{H1}": 3},
                     id="old-scaled-down-within-max-unavailable"),
        pytest.param([rs(H1, 3), rs(H2, 1, revision=2)], {f"web-{H2}": 2},
                     id="new-scaled-up-within-max-surge"),
        pytest.param([rs(H1, 1), rs(H2, 4, revision=2)], {f"web-{H1}": 0}, id="last-old-replica-goes"),
        pytest.param([rs(H1, 3), rs(H2, 2, available=0, revision=2)], {},
                     id="no-step-while-new-pods-are-unavailable"),
        pytest.param([rs(H1, 4, available=2), rs(H2, 1, available=0, revision=2)], {f"web-{H1}": 3},
                     id="unhealthy-old-replica-removed-within-budget"),
        pytest.param([rs(H1, 4, available=1), rs(H2, 1, available=1, revision=2)], {f"web-{H1}": 2},
                     id="unhealthy-old-replicas-cleaned-first"),
    ],
)
def test_rolling_steps(rss, expected):
    assert scales(reconcile(deploy(4, template=TEMPLATE_V2, revision=2), rss, now=NOW)) == expected


@pytest.mark.parametrize(
    "replicas,current,expected",
    [
        pytest.param(4, 2, {f"web-{H1}": 4}, id="scale-up"),
        pytest.param(1, 4, {f"web-{H1}": 1}, id="scale-down"),
        pytest.param(0, 4, {f"web-{H1}": 0}, id="scale-to-zero"),
        pytest.param(2, 2, {}, id="steady"),
    ],
)
def test_scaling(replicas, current, expected):
    assert scales(reconcile(deploy(replicas, revision=1), [rs(H1, current)], now=NOW)) == expected


def test_recreate_stops_old_pods_before_starting_new():
    strategy = {"type": "Recreate"}
    old = rs(H1, 2)
    first = reconcile(deploy(2, template=TEMPLATE_V2, strategy=strategy, revision=1), [old], now=NOW)
    [create] = [a for a in first if isinstance(a, Create)]
    assert create.body["spec"]["replicas"] == 0
    new = rs(H2, 0, revision=2)
    assert scales(reconcile(deploy(2, template=TEMPLATE_V2, strategy=strategy, revision=2), [old, new], now=NOW)) == \
        {f"web-{H1}": 0}
    draining = rs(H1, 0)
    draining["status"]["replicas"] = 1
    assert scales(reconcile(deploy(2, template=TEMPLATE_V2, strategy=strategy, revision=2), [draining, new],
                            now=NOW)) == {}
    gone = rs(H1, 0)
    assert scales(reconcile(deploy(2, template=TEMPLATE_V2, strategy=strategy, revision=2), [gone, new], now=NOW)) == \
        {f"web-{H2}": 2}


def test_status_while_rolling_and_when_complete():
    rolling = status_of(reconcile(deploy(4, template=TEMPLATE_V2, revision=2),
                                  [rs(H1, 3), rs(H2, 2, available=1, revision=2)], now=NOW))
    assert {k: rolling[k] for k in ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas",
                                    "availableReplicas")} == \
        {"observedGeneration": 2, "replicas": 5, "updatedReplicas": 2, "readyReplicas": 4, "availableReplicas": 4}
    conds = {c["type"]: c for c in rolling["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "ReplicaSetUpdated"

    done = status_of(reconcile(deploy(4, template=TEMPLATE_V2, revision=2),
                               [rs(H1, 0), rs(H2, 4, revision=2)], now=NOW))
    assert (done["replicas"], done["updatedReplicas"], done["availableReplicas"]) == (4, 4, 4)
    conds = {c["type"]: c for c in done["conditions"]}
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert conds["Progressing"]["message"] == f'ReplicaSet "web-{H2}" has successfully progressed.'


def test_unavailable_deployment_condition():
    st_ = status_of(reconcile(deploy(2, revision=1), [rs(H1, 2, available=0)], now=NOW))
    conds = {c["type"]: c for c in st_["conditions"]}
    assert conds["Available"]["status"] == "False"
    assert conds["Available"]["reason"] == "MinimumReplicasUnavailable"


def test_status_not_rewritten_when_unchanged():
    d = deploy(2, revision=1)
    rss = [rs(H1, 2)]
    d["status"] = status_of(reconcile(d, rss, now=NOW))
    assert reconcile(d, rss, now=datetime(2024, 5, 1, 13, 0, tzinfo=timezone.utc)) == []


def test_rollback_to_an_old_template_reuses_its_replicaset():
    old = rs(H1, 0, revision=1)
    newer = rs(H2, 2, revision=2)
    actions = reconcile(deploy(2, template=TEMPLATE_V1, revision=2), [old, newer], now=NOW)
    assert not [a for a in actions if isinstance(a, Create)]
    revs = [a for a in actions if isinstance(a, Patch) and a.name == f"web-{H1}"]
    assert revs[0].body == {"metadata": {"annotations": {REVISION_ANNOTATION: "3"}}}


def test_revision_history_limit_deletes_oldest_idle_replicasets():
    olds = [rs(f"old{i}", 0, revision=i + 1, created=f"2024-05-01T0{i}:00:00Z") for i in range(4)]
    current = rs(H1, 2, revision=5)
    actions = reconcile(deploy(2, revision=5, history=2), [*olds, current], now=NOW)
    assert [a.name for a in actions if isinstance(a, Delete)] == ["web-old0", "web-old1"]


def test_paused_deployment_does_not_roll():
    actions = reconcile(deploy(2, template=TEMPLATE_V2, revision=1, paused=True), [rs(H1, 2)], now=NOW)
    assert not [a for a in actions if isinstance(a, (Create, Delete))]
    assert scales(actions) == {}


def test_deleting_deployment_does_nothing():
    assert reconcile(deploy(2, deleting=True), [], now=NOW) == []


def test_replicasets_of_other_deployments_are_ignored():
    foreign = rs(H1, 5)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "uid-other"
    actions = reconcile(deploy(2), [foreign], now=NOW)
    assert [a.name for a in actions if isinstance(a, Create)] == [f"web-{H1}"]


def test_keys_for_replicaset_events_map_to_the_deployment():
    assert list(DeploymentController().keys_for("ReplicaSet", rs(H1, 1), etype="MODIFIED", store=None)) == [("demo", "web")]


# ---- a whole rollout, with a stand-in for the ReplicaSet controller and kubelets ------------
def _simulate_rollout(desired, surge, unavailable):
    """Run reconcile to a fixed point; pods become available one pass after they are asked for.
    Returns the maximum total and the minimum available pods seen along the way."""
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
    d = deploy(desired, template=TEMPLATE_V2, strategy=strategy, revision=1)
    sets = {f"web-{H1}": rs(H1, desired, revision=1, uid="uid-old")}
    max_total, min_available = desired, desired
    for _ in range(200):
        actions = reconcile(d, list(sets.values()), now=NOW)
        steps = [a for a in actions if not (isinstance(a, Patch) and a.kind == "Deployment")]
        for a in actions:
            if isinstance(a, Create):
                body = copy.deepcopy(a.body)
                body["metadata"].update(uid=f"uid-{a.name}", creationTimestamp="2024-05-01T11:00:00Z")
                body["status"] = {"replicas": 0, "availableReplicas": 0}
                sets[a.name] = body
            elif isinstance(a, Patch) and a.kind == "ReplicaSet":
                target = sets[a.name]
                target["spec"].update(a.body.get("spec", {}))
                target["metadata"].setdefault("annotations", {}).update(a.body.get("metadata", {}).get("annotations", {}))
            elif isinstance(a, Patch) and a.kind == "Deployment" and a.subresource == "status":
                d["status"] = a.body["status"]
            elif isinstance(a, Patch) and a.kind == "Deployment":
                d["metadata"].setdefault("annotations", {}).update(a.body["metadata"]["annotations"])
            elif isinstance(a, Delete):
                sets.pop(a.name)
        # ReplicaSet controller + kubelet: scale-downs are immediate; new pods are up next pass
        for s in sets.values():
            want, st_ = s["spec"]["replicas"], s["status"]
            st_["availableReplicas"] = min(want, st_["replicas"])
            st_["replicas"] = want
            st_["readyReplicas"] = st_["availableReplicas"]
        max_total = max(max_total, sum(s["status"]["replicas"] for s in sets.values()))
        min_available = min(min_available, sum(s["status"]["availableReplicas"] for s in sets.values()))
        if not steps and not actions:
            break
    else:
        raise AssertionError("rollout did not converge")
    return d, sets, max_total, min_available


@settings(max_examples=60)
@given(desired=st.integers(1, 12), surge=st.sampled_from([0, 1, 2, "25%", "50%"]),
       unavailable=st.sampled_from([0, 1, "25%", "50%"]))
def test_rolling_update_converges_within_its_limits(desired, surge, unavailable):
    from sandbox.controllers.objects import int_or_percent

    d, sets, max_total, min_available = _simulate_rollout(desired, surge, unavailable)
    s = int_or_percent(surge, total=desired, default="25%", round_up=True)
    u = int_or_percent(unavailable, total=desired, default="25%", round_up=False)
    if s == 0 and u == 0:
        u = 1
    assert max_total <= desired + s
    assert min_available >= desired - u
    live = {n: x["spec"]["replicas"] for n, x in sets.items() if x["spec"]["replicas"]}
    assert live == {f"web-{H2}": desired}
    st_ = d["status"]
    assert (st_["replicas"], st_["updatedReplicas"], st_["availableReplicas"]) == (desired, desired, desired)
    assert st_["observedGeneration"] == 2
