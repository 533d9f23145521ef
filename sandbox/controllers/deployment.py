"""The Deployment controller: one ReplicaSet per pod template, rolled like Kubernetes does.

- The new ReplicaSet is ``<deploy>-<pod-template-hash>``; the hash label goes on the RS, its
  selector and its template, so the RS's pods carry it too. An RS whose hash label matches the
  current template is "new" (a template changed back brings its old RS back, as a rollback).
- RollingUpdate (default; maxSurge and maxUnavailable default to 25%): scale the new RS up within
  ``replicas + maxSurge``; then scale old ones down while at least ``replicas - maxUnavailable``
  pods stay available, unhealthy old pods first. One step per pass, as Kubernetes does; the RS
  events this step causes trigger the next one.
- Recreate: old ReplicaSets to zero, and the new one up once no old pod is left.
- Old ReplicaSets at zero beyond ``revisionHistoryLimit`` (default 10) are deleted.
- Status: replicas, updatedReplicas, readyReplicas, availableReplicas, unavailableReplicas,
  observedGeneration and the Available/Progressing conditions: enough for ``kubectl get deploy``
  and ``kubectl rollout status``. No progress deadline: a stuck rollout stays Progressing.
"""
from __future__ import annotations

import copy
from datetime import datetime
from typing import Iterable

from sandbox.controllers.actions import Action, Create, Delete, Patch
from sandbox.controllers.objects import (
    HASH_LABEL,
    REVISION_ANNOTATION,
    Kind,
    Store,
    Workload,
    condition,
    creation_order,
    format_time,
    generation_of,
    int_or_percent,
    is_controlled_by,
    is_deleting,
    labels_of,
    meta,
    name_of,
    namespace_of,
    owner_keys,
    owner_reference,
    template_hash,
    uid_of,
)


def reconcile(deploy: Workload, replicasets: Iterable[Workload], *, now: datetime) -> list[Action]:
    """``replicasets``: those of the Deployment's namespace (others are filtered out here)."""
    if is_deleting(deploy):
        return []
    spec = deploy.get("spec") or {}
    owned = sorted((rs for rs in replicasets if is_controlled_by(rs, deploy)), key=creation_order)
    collisions = int((deploy.get("status") or {}).get("collisionCount") or 0)
    h = template_hash(spec.get("template") or {}, collision_count=collisions)
    new = next((rs for rs in owned if labels_of(rs).get(HASH_LABEL) == h and not is_deleting(rs)), None)
    olds = [rs for rs in owned if rs is not new]
    desired = int(spec.get("replicas", 1))
    rolling = _strategy(deploy) == "RollingUpdate"
    surge, unavailable = _rolling_limits(deploy) if rolling else (0, 0)

    actions: list[Action] = []
    next_revision = max((_revision(rs) for rs in owned), default=0) + 1
    if new is None:
        if spec.get("paused"):
            return _status(deploy, new=None, olds=olds, new_name=f"{name_of(deploy)}-{h}", now=now)
        if rolling:
            replicas = max(0, min(desired + surge - _spec_sum(olds), desired))
        else:
            replicas = 0 if _pods_left(olds) else desired
        body = _new_replicaset(deploy, h, replicas=replicas, revision=next_revision)
        actions.append(Create(kind="ReplicaSet", namespace=namespace_of(deploy), body=body,
                              why=f"new pod template {h}, {replicas} of {desired} replicas"))
        actions.extend(_annotate_revision(deploy, next_revision))
        return actions + _status(deploy, new=None, olds=olds, new_name=name_of(body), now=now)

    if _revision(new) < next_revision - 1 or not _revision(new):
        # an old template came back (rollback): it becomes the newest revision again
        actions.append(Patch(kind="ReplicaSet", namespace=namespace_of(new), name=name_of(new),
                             body={"metadata": {"annotations": {REVISION_ANNOTATION: str(next_revision)}}},
                             why=f"revision {next_revision}"))
        actions.extend(_annotate_revision(deploy, next_revision))
        return actions
    actions.extend(_annotate_revision(deploy, _revision(new)))

    min_ready = int(spec.get("minReadySeconds") or 0)
    if int((new.get("spec") or {}).get("minReadySeconds") or 0) != min_ready:
        actions.append(_patch_rs(new, {"spec": {"minReadySeconds": min_ready}}, why=f"minReadySeconds {min_ready}"))

    if spec.get("paused"):
        steps: list[Action] = []
    elif rolling:
        steps = _rolling_step(new, olds, desired=desired, surge=surge, unavailable=unavailable)
    else:
        steps = _recreate_step(new, olds, desired=desired)
    actions.extend(steps)
    if not steps and not spec.get("paused"):
        actions.extend(_cleanup(olds, limit=int(spec.get("revisionHistoryLimit", 10))))
    actions.extend(_status(deploy, new=new, olds=olds, new_name=name_of(new), now=now))
    return actions


# ---- rollout steps -----------------------------------------------------------------------
def _rolling_step(new: Workload, olds: list[Workload], *, desired: int, surge: int, unavailable: int) -> list[Action]:
    # 1. the new ReplicaSet, within desired + maxSurge
    new_spec = _replicas(new)
    if new_spec > desired:
        return [_scale(new, desired, why=f"scale down to {desired}")]
    if new_spec < desired:
        room = desired + surge - (new_spec + _spec_sum(olds))
        if room > 0:
            target = new_spec + min(room, desired - new_spec)
            return [_scale(new, target, why=f"rolling update: new replicas {new_spec} -> {target} of {desired}")]

    # 2. old ReplicaSets, keeping desired - maxUnavailable available
    if _spec_sum(olds) == 0:
        return []
    everyone = [new, *olds]
    min_available = desired - unavailable
    new_unavailable = new_spec - _available(new)
    budget = _spec_sum(everyone) - min_available - new_unavailable
    if budget <= 0:
        return []
    actions: list[Action] = []
    targets = {uid_of(rs): _replicas(rs) for rs in olds}
    for rs in olds:  # oldest first: unhealthy replicas cost no availability
        if budget <= 0:
            break
        unhealthy = targets[uid_of(rs)] - _available(rs)
        if unhealthy <= 0:
            continue
        cut = min(budget, unhealthy)
        targets[uid_of(rs)] -= cut
        budget -= cut
    available = sum(_available(rs) for rs in everyone)
    allowed = available - min_available
    for rs in olds:
        if allowed <= 0:
            break
        cut = min(targets[uid_of(rs)], allowed)
        targets[uid_of(rs)] -= cut
        allowed -= cut
    for rs in olds:
        target, was = targets[uid_of(rs)], _replicas(rs)
        if target != was:
            actions.append(_scale(rs, target, why=f"rolling update: old replicas {was} -> {target}"))
    return actions


def _recreate_step(new: Workload, olds: list[Workload], *, desired: int) -> list[Action]:
    downs = [_scale(rs, 0, why="recreate: stop old pods") for rs in olds if _replicas(rs) > 0]
    if downs:
        return downs
    if _pods_left(olds):
        return []  # wait for the old pods to go
    if _replicas(new) != desired:
        return [_scale(new, desired, why=f"recreate: scale to {desired}")]
    return []


def _cleanup(olds: list[Workload], *, limit: int) -> list[Action]:
    idle = [rs for rs in olds if _replicas(rs) == 0 and int((rs.get("status") or {}).get("replicas") or 0) == 0
            and not is_deleting(rs)]
    extra = len(idle) - max(0, limit)
    return [
        Delete(kind="ReplicaSet", namespace=namespace_of(rs), name=name_of(rs), uid=uid_of(rs),
               why=f"revision history limit {limit}")
        for rs in idle[: max(0, extra)]
    ]


# ---- status --------------------------------------------------------------------------------
def _status(deploy: Workload, *, new: Workload | None, olds: list[Workload], new_name: str,
            now: datetime) -> list[Action]:
    everyone = ([new] if new else []) + olds
    desired = int((deploy.get("spec") or {}).get("replicas", 1))
    rolling = _strategy(deploy) == "RollingUpdate"
    max_unavailable = _rolling_limits(deploy)[1] if rolling and desired else 0
    st = lambda rs, k: int((rs.get("status") or {}).get(k) or 0)  # noqa: E731
    replicas = sum(st(rs, "replicas") for rs in everyone)
    updated = st(new, "replicas") if new else 0
    ready = sum(st(rs, "readyReplicas") for rs in everyone)
    available = sum(st(rs, "availableReplicas") for rs in everyone)
    status: dict = {
        "observedGeneration": generation_of(deploy),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": max(0, sum(_replicas(rs) for rs in everyone) - available),
    }
    if available >= desired - max_unavailable:
        avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    else:
        avail = ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
    complete = new is not None and updated == desired and replicas == desired and available >= desired
    if (deploy.get("spec") or {}).get("paused"):
        prog = ("Unknown", "DeploymentPaused", "Deployment is paused")
    elif complete:
        prog = ("True", "NewReplicaSetAvailable", f'ReplicaSet "{new_name}" has successfully progressed.')
    elif new is None:
        prog = ("True", "NewReplicaSetCreated", f'Created new replica set "{new_name}".')
    else:
        prog = ("True", "ReplicaSetUpdated", f'ReplicaSet "{new_name}" is progressing.')
    status["conditions"] = [
        _condition(deploy, "Available", verdict=avail, now=now),
        _condition(deploy, "Progressing", verdict=prog, now=now),
    ]
    current = deploy.get("status") or {}
    same = all(int(current.get(k) or 0) == v for k, v in status.items() if k != "conditions") and _same_conditions(
        current.get("conditions") or [], status["conditions"]
    )
    if same:
        return []
    return [
        Patch(kind="Deployment", namespace=namespace_of(deploy), name=name_of(deploy), body={"status": status},
              subresource="status", why=f"{ready}/{desired} ready, {updated} up-to-date, {available} available")
    ]


def _condition(obj: Workload, ctype: str, *, verdict: tuple[str, str, str], now: datetime) -> dict:
    """A condition of ``ctype`` with (status, reason, message), keeping timestamps that still hold."""
    status, reason, message = verdict
    old = condition(obj, ctype) or {}
    unchanged = old.get("status") == status and old.get("reason") == reason and old.get("message") == message
    stamp = format_time(now)
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": old.get("lastUpdateTime", stamp) if unchanged else stamp,
        "lastTransitionTime": old.get("lastTransitionTime", stamp) if old.get("status") == status else stamp,
    }


def _same_conditions(old: list[dict], new: list[dict]) -> bool:
    """Equal but for timestamps (rewriting only timestamps would loop on our own events)."""
    def proj(conds: list[dict]) -> list[tuple]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in conds)

    return proj(old) == proj(new)


# ---- helpers -------------------------------------------------------------------------------
def _strategy(deploy: Workload) -> str:
    return (((deploy.get("spec") or {}).get("strategy") or {}).get("type")) or "RollingUpdate"


def _rolling_limits(deploy: Workload) -> tuple[int, int]:
    spec = deploy.get("spec") or {}
    desired = int(spec.get("replicas", 1))
    ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge = int_or_percent(ru.get("maxSurge"), total=desired, default="25%", round_up=True)
    unavailable = int_or_percent(ru.get("maxUnavailable"), total=desired, default="25%", round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # Kubernetes' rule: a rollout must be able to make progress
    return surge, min(unavailable, desired)


def _replicas(rs: Workload) -> int:
    return int((rs.get("spec") or {}).get("replicas", 1))


def _available(rs: Workload) -> int:
    return int((rs.get("status") or {}).get("availableReplicas") or 0)


def _spec_sum(rss: Iterable[Workload]) -> int:
    return sum(_replicas(rs) for rs in rss)


def _pods_left(rss: Iterable[Workload]) -> bool:
    return any(_replicas(rs) > 0 or int((rs.get("status") or {}).get("replicas") or 0) > 0 for rs in rss)


def _revision(obj: Workload) -> int:
    try:
        return int((meta(obj).get("annotations") or {}).get(REVISION_ANNOTATION) or 0)
    except ValueError:
        return 0


def _annotate_revision(deploy: Workload, revision: int) -> list[Action]:
    if _revision(deploy) == revision:
        return []
    return [Patch(kind="Deployment", namespace=namespace_of(deploy), name=name_of(deploy),
                  body={"metadata": {"annotations": {REVISION_ANNOTATION: str(revision)}}}, why=f"revision {revision}")]


def _scale(rs: Workload, replicas: int, *, why: str) -> Patch:
    return _patch_rs(rs, {"spec": {"replicas": replicas}}, why=why)


def _patch_rs(rs: Workload, body: dict, *, why: str) -> Patch:
    return Patch(kind="ReplicaSet", namespace=namespace_of(rs), name=name_of(rs), body=body, why=why)


def _new_replicaset(deploy: Workload, h: str, *, replicas: int, revision: int) -> dict:
    spec = deploy.get("spec") or {}
    template = copy.deepcopy(spec.get("template") or {})
    tmeta = template.setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), HASH_LABEL: h}
    selector = copy.deepcopy(spec.get("selector") or {})
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: h}
    rs_spec: dict = {"replicas": replicas, "selector": selector, "template": template}
    if spec.get("minReadySeconds"):
        rs_spec["minReadySeconds"] = int(spec["minReadySeconds"])
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{name_of(deploy)}-{h}",
            "namespace": namespace_of(deploy),
            "labels": dict(tmeta["labels"]),
            "annotations": {REVISION_ANNOTATION: str(revision)},
            "ownerReferences": [owner_reference(deploy, api_version="apps/v1", kind="Deployment")],
        },
        "spec": rs_spec,
    }


class DeploymentController:
    name = "deployment"
    kinds: tuple[Kind, ...] = ("Deployment", "ReplicaSet")

    def keys_for(self, kind: Kind, obj: dict, *, etype: str, store: Store) -> Iterable[tuple[str, str]]:
        if kind == "Deployment":
            return ((namespace_of(obj), name_of(obj)),)
        return owner_keys(obj, "Deployment")

    def sync(self, key: tuple[str, str], store: Store, *, now: datetime) -> list[Action]:
        deploy = store.get("Deployment", key)
        if deploy is None:
            return []
        return reconcile(deploy, store.list("ReplicaSet", key[0]), now=now)
