"""The ReplicaSet controller: keep ``spec.replicas`` active pods from the template.

- Pods are the RS's when their controller reference carries its uid (no adoption of orphans).
- Active pods are neither Succeeded/Failed nor being deleted; finished pods are replaced, and
  deleted when the template's restartPolicy is Always (the only one a ReplicaSet allows).
- Too few: create ``<rs>-<5 random chars>`` pods from the template with a controller reference.
- Too many: delete in Kubernetes' order: unscheduled, then Pending before Running, not ready
  before ready, ready more recently, more restarts, newest.
- Status: replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (ready for at least
  minReadySeconds), observedGeneration; written only when it changes.
"""
from __future__ import annotations

import copy
from datetime import datetime
from typing import Callable, Iterable

from sandbox.controllers.actions import Action, Create, Delete, Patch, Requeue
from sandbox.controllers.objects import (
    Kind,
    Pod,
    Store,
    Workload,
    condition,
    epoch,
    generation_of,
    is_controlled_by,
    is_deleting,
    labels_of,
    meta,
    name_of,
    namespace_of,
    owner_keys,
    owner_reference,
    pod_is_active,
    pod_is_available,
    pod_is_ready,
    pod_is_terminal,
    pod_phase,
    random_suffix,
    seconds_until_available,
    uid_of,
)

BURST = 100
"""most pods created or deleted in one pass (Kubernetes: 500)"""

_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def reconcile(
    rs: Workload,
    pods: Iterable[Pod],
    *,
    now: datetime,
    suffix: Callable[[], str] = random_suffix,
) -> list[Action]:
    """``pods``: the pods of the RS's namespace (others are filtered out here)."""
    if is_deleting(rs):
        return []  # the garbage collector owns what happens next
    spec = rs.get("spec") or {}
    template = spec.get("template") or {}
    desired = int(spec.get("replicas", 1))
    min_ready = int(spec.get("minReadySeconds") or 0)
    owned = [p for p in pods if is_controlled_by(p, rs)]
    active = [p for p in owned if pod_is_active(p)]

    actions: list[Action] = []
    restart_policy = (template.get("spec") or {}).get("restartPolicy") or "Always"
    if restart_policy == "Always":
        for pod in owned:
            if pod_is_terminal(pod) and not is_deleting(pod):
                actions.append(_delete(pod, why=f"replace {pod_phase(pod)} pod"))

    diff = desired - len(active)
    if diff > 0:
        for _ in range(min(diff, BURST)):
            actions.append(
                Create(
                    kind="Pod",
                    namespace=namespace_of(rs),
                    body=pod_from_template(rs, name=f"{name_of(rs)}-{suffix()}"),
                    why=f"scale up to {desired} (have {len(active)})",
                )
            )
    elif diff < 0:
        victims = sorted(active, key=lambda p: deletion_rank(p, now=now))[: min(-diff, BURST)]
        for pod in victims:
            actions.append(_delete(pod, why=f"scale down to {desired} (have {len(active)})"))

    actions.extend(_status(rs, active, min_ready=min_ready, now=now))
    waits = [w for p in active if (w := seconds_until_available(p, min_ready_seconds=min_ready, now=now))]
    if waits:
        actions.append(Requeue(after=min(waits) + 0.1, why="a pod becomes available after minReadySeconds"))
    return actions


def pod_from_template(owner: Workload, *, name: str, kind: str = "ReplicaSet", node: str = "",
                      extra_labels: dict[str, str] | None = None) -> dict:
    """A new pod from ``owner``'s template (shared with the DaemonSet controller)."""
    template = (owner.get("spec") or {}).get("template") or {}
    tmeta = template.get("metadata") or {}
    metadata: dict = {
        "name": name,
        "namespace": namespace_of(owner),
        "labels": {**(tmeta.get("labels") or {}), **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner, api_version="apps/v1", kind=kind)],
    }
    if tmeta.get("annotations"):
        metadata["annotations"] = dict(tmeta["annotations"])
    spec = copy.deepcopy(template.get("spec") or {})
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def deletion_rank(pod: Pod, *, now: datetime) -> tuple:
    """Sort key: the pod to delete first sorts first (k8s ``controller.ActivePods``)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    ready = pod_is_ready(pod)
    ready_since = epoch((condition(pod, "Ready") or {}).get("lastTransitionTime")) if ready else 0.0
    restarts = sum(int(cs.get("restartCount") or 0) for cs in status.get("containerStatuses") or [])
    return (
        bool(spec.get("nodeName")),
        _PHASE_RANK.get(pod_phase(pod), 0),
        ready,
        -ready_since,
        -restarts,
        -epoch(meta(pod).get("creationTimestamp")),
        name_of(pod),
    )


def _delete(pod: Pod, *, why: str) -> Delete:
    return Delete(kind="Pod", namespace=namespace_of(pod), name=name_of(pod), uid=uid_of(pod), why=why)


def _status(rs: Workload, active: list[Pod], *, min_ready: int, now: datetime) -> list[Action]:
    template_labels = ((rs.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
    new = {
        "replicas": len(active),
        "fullyLabeledReplicas": sum(
            1 for p in active if all(labels_of(p).get(k) == v for k, v in template_labels.items())
        ),
        "readyReplicas": sum(1 for p in active if pod_is_ready(p)),
        "availableReplicas": sum(1 for p in active if pod_is_available(p, min_ready_seconds=min_ready, now=now)),
        "observedGeneration": generation_of(rs),
    }
    current = rs.get("status") or {}
    if all(int(current.get(k) or 0) == v for k, v in new.items()):
        return []
    return [
        Patch(
            kind="ReplicaSet",
            namespace=namespace_of(rs),
            name=name_of(rs),
            body={"status": new},
            subresource="status",
            why=f"{new['readyReplicas']}/{(rs.get('spec') or {}).get('replicas', 1)} ready",
        )
    ]


class ReplicaSetController:
    name = "replicaset"
    kinds: tuple[Kind, ...] = ("ReplicaSet", "Pod")

    def keys_for(self, kind: Kind, obj: dict, *, etype: str, store: Store) -> Iterable[tuple[str, str]]:
        if kind == "ReplicaSet":
            return ((namespace_of(obj), name_of(obj)),)
        return owner_keys(obj, "ReplicaSet")

    def sync(self, key: tuple[str, str], store: Store, *, now: datetime) -> list[Action]:
        rs = store.get("ReplicaSet", key)
        if rs is None:
            return []
        return reconcile(rs, store.list("Pod", key[0]), now=now)
