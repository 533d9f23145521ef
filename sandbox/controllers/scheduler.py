"""The scheduler: give every pending pod a Ready node, spreading each owner's replicas.

A pod is pending when it has no ``spec.nodeName``, is not finished or being deleted, and asks for
the default scheduler. Feasible nodes are Ready, not cordoned, match the pod's ``nodeSelector``
and required node affinity, and carry no NoSchedule/NoExecute taint the pod does not tolerate.
Among them the pod goes to the node with the fewest pods of the same owner (its controller
reference), then the fewest pods overall, then the first by name. Pods are placed oldest first
and each placement counts for the next, so one pass spreads a whole new ReplicaSet.

Binding patches ``spec.nodeName`` (the sandbox API allows it, like a pods/binding call) after
setting the ``PodScheduled`` condition, so the kubelet, which starts once the pod is bound, never
races the scheduler's status write. A pod that fits nowhere gets ``PodScheduled=False`` with the
reason per node, as ``kubectl describe`` shows it.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Iterable

from sandbox.controllers.actions import Action, Patch
from sandbox.controllers.objects import (
    Kind,
    Node,
    Pod,
    Store,
    condition,
    controller_ref,
    creation_order,
    format_time,
    is_deleting,
    labels_of,
    map_selector_matches,
    name_of,
    namespace_of,
    node_affinity_matches,
    node_is_ready,
    pod_is_terminal,
    uid_of,
    untolerated_taints,
)

DEFAULT_SCHEDULER = "default-scheduler"
CLUSTER_KEY = "*"


def reconcile(pods: Iterable[Pod], nodes: Iterable[Node], *, now: datetime) -> list[Action]:
    nodes = sorted(nodes, key=name_of)
    node_names = {name_of(n) for n in nodes}
    total: Counter[str] = Counter()
    per_owner: Counter[tuple[str, str]] = Counter()
    pending: list[Pod] = []
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            if not pod_is_terminal(pod) and node in node_names:
                total[node] += 1
                per_owner[(_spread_key(pod), node)] += 1
        elif _wants_scheduling(pod):
            pending.append(pod)

    actions: list[Action] = []
    for pod in sorted(pending, key=creation_order):
        feasible, reasons = _filter(pod, nodes)
        if not feasible:
            message = _unschedulable_message(len(nodes), reasons)
            actions.extend(_set_scheduled(pod, status="False", reason="Unschedulable", message=message, now=now))
            continue
        owner = _spread_key(pod)
        best = min(feasible, key=lambda n: (per_owner[(owner, name_of(n))], total[name_of(n)], name_of(n)))
        node = name_of(best)
        per_owner[(owner, node)] += 1
        total[node] += 1
        actions.extend(_set_scheduled(pod, status="True", reason="", message="", now=now))
        actions.append(
            Patch(
                kind="Pod",
                namespace=namespace_of(pod),
                name=name_of(pod),
                body={"spec": {"nodeName": node}},
                why=f"bind to {node}",
            )
        )
    return actions


def _wants_scheduling(pod: Pod) -> bool:
    spec = pod.get("spec") or {}
    return (
        not pod_is_terminal(pod)
        and not is_deleting(pod)
        and (spec.get("schedulerName") or DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
    )


def _spread_key(pod: Pod) -> str:
    """Replicas of one controller spread together; a bare pod only counts against itself."""
    ref = controller_ref(pod)
    return ref.get("uid", "") if ref else f"pod:{uid_of(pod) or name_of(pod)}"


def _filter(pod: Pod, nodes: list[Node]) -> tuple[list[Node], Counter[str]]:
    spec = pod.get("spec") or {}
    feasible: list[Node] = []
    reasons: Counter[str] = Counter()
    for node in nodes:
        if not node_is_ready(node):
            reasons["node(s) were not ready"] += 1
        elif (node.get("spec") or {}).get("unschedulable"):
            reasons["node(s) were unschedulable"] += 1
        elif not (map_selector_matches(spec.get("nodeSelector"), labels_of(node))
                  and node_affinity_matches(pod, node)):
            reasons["node(s) didn't match Pod's node affinity/selector"] += 1
        elif taints := untolerated_taints(pod, node):
            t = taints[0]
            value = f"={t['value']}" if t.get("value") else ""
            reasons[f"node(s) had untolerated taint {{{t.get('key')}{value}}}"] += 1
        else:
            feasible.append(node)
    return feasible, reasons


def _unschedulable_message(n_nodes: int, reasons: Counter[str]) -> str:
    if not n_nodes:
        return "0/0 nodes are available: no nodes registered."
    detail = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
    return f"0/{n_nodes} nodes are available: {detail}."


def _set_scheduled(pod: Pod, *, status: str, reason: str, message: str, now: datetime) -> list[Action]:
    """Status patch for PodScheduled, or nothing if it already says so."""
    current = condition(pod, "PodScheduled")
    if (
        current is not None
        and current.get("status") == status
        and (current.get("reason") or "") == reason
        and (current.get("message") or "") == message
    ):
        return []
    new: dict = {"type": "PodScheduled", "status": status, "lastProbeTime": None}
    if current is not None and current.get("status") == status and current.get("lastTransitionTime"):
        new["lastTransitionTime"] = current["lastTransitionTime"]
    else:
        new["lastTransitionTime"] = format_time(now)
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    # A merge patch replaces the whole list, so carry the other conditions over unchanged. The pod
    # is unbound here, so no kubelet writes its status concurrently.
    others = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") != "PodScheduled"]
    return [
        Patch(
            kind="Pod",
            namespace=namespace_of(pod),
            name=name_of(pod),
            body={"status": {"conditions": [new, *others]}},
            subresource="status",
            why="scheduled" if status == "True" else f"unschedulable: {message}",
        )
    ]


class Scheduler:
    """Runs :func:`reconcile` over the whole cluster whenever a pending pod or a node changes."""

    name = "scheduler"
    kinds: tuple[Kind, ...] = ("Pod", "Node")

    def keys_for(self, kind: Kind, obj: dict, *, etype: str, store: Store) -> Iterable[str]:
        if kind == "Node":
            return (CLUSTER_KEY,)
        if etype != "DELETED" and not (obj.get("spec") or {}).get("nodeName") and _wants_scheduling(obj):
            return (CLUSTER_KEY,)
        return ()

    def sync(self, key: str, store: Store, *, now: datetime) -> list[Action]:
        return reconcile(store.list("Pod"), store.list("Node"), now=now)
