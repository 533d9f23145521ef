"""The DaemonSet controller: one pod per eligible node, bound directly by ``spec.nodeName``.

- Eligible nodes are Ready, match the template's nodeSelector and required node affinity, and
  carry no NoSchedule/NoExecute taint the template does not tolerate (cordoned nodes are fine, as
  in Kubernetes, which tolerates ``node.kubernetes.io/unschedulable`` for daemons).
- Missing pod on an eligible node: create ``<ds>-<5 random chars>`` with the node set; extra pods
  on a node, pods on nodes no longer eligible (or gone), and finished pods are deleted (and so
  replaced).
- Pods carry ``controller-revision-hash``, the template's hash. RollingUpdate (default,
  maxUnavailable 1, or an int/percentage) deletes outdated pods while the number of unavailable
  nodes stays within the limit, unavailable outdated pods first; their replacements come from the
  current template. OnDelete only replaces pods someone deleted. maxSurge is not supported.
- Status: desiredNumberScheduled, currentNumberScheduled, numberMisscheduled, numberReady,
  updatedNumberScheduled, numberAvailable, numberUnavailable, observedGeneration.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Callable, Iterable

from sandbox.controllers.actions import Action, Create, Delete, Patch, Requeue
from sandbox.controllers.objects import (
    DS_HASH_LABEL,
    Kind,
    Node,
    Pod,
    Store,
    Workload,
    creation_order,
    generation_of,
    int_or_percent,
    is_controlled_by,
    is_deleting,
    labels_of,
    map_selector_matches,
    name_of,
    namespace_of,
    node_affinity_matches,
    node_is_ready,
    owner_keys,
    pod_is_available,
    pod_is_ready,
    pod_is_terminal,
    pod_phase,
    random_suffix,
    seconds_until_available,
    template_hash,
    uid_of,
    untolerated_taints,
)
from sandbox.controllers.replicaset import pod_from_template

_DAEMON_TOLERATIONS = (
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
)


def reconcile(
    ds: Workload,
    pods: Iterable[Pod],
    *,
    nodes: Iterable[Node],
    now: datetime,
    suffix: Callable[[], str] = random_suffix,
) -> list[Action]:
    """``pods``: the pods of the DaemonSet's namespace (others are filtered out here)."""
    if is_deleting(ds):
        return []
    spec = ds.get("spec") or {}
    template = spec.get("template") or {}
    h = template_hash(template)
    min_ready = int(spec.get("minReadySeconds") or 0)
    probe: Pod = {"metadata": template.get("metadata") or {}, "spec": template.get("spec") or {}}
    eligible = sorted((name_of(n) for n in nodes if _eligible(probe, n)))

    by_node: dict[str, list[Pod]] = defaultdict(list)
    actions: list[Action] = []
    for pod in sorted((p for p in pods if is_controlled_by(p, ds) and not is_deleting(p)), key=creation_order):
        if pod_is_terminal(pod):
            actions.append(_delete(pod, why=f"replace {pod_phase(pod)} daemon pod"))
            continue
        by_node[(pod.get("spec") or {}).get("nodeName") or ""].append(pod)

    misscheduled = 0
    for node, node_pods in sorted(by_node.items()):
        if node not in eligible:
            misscheduled += len(node_pods)
            why = f"node {node} is not eligible" if node else "daemon pod without a node"
            actions.extend(_delete(p, why=why) for p in node_pods)
        elif len(node_pods) > 1:
            # keep one, preferring an up-to-date pod, then the oldest
            keep = min(node_pods, key=lambda p: (labels_of(p).get(DS_HASH_LABEL) != h, creation_order(p)))
            actions.extend(_delete(p, why=f"extra daemon pod on {node}") for p in node_pods if p is not keep)
            by_node[node] = [keep]

    current = {node: by_node[node][0] for node in eligible if by_node.get(node)}
    for node in eligible:
        if node not in current:
            body = pod_from_template(ds, name=f"{name_of(ds)}-{suffix()}", kind="DaemonSet", node=node,
                                     extra_labels={DS_HASH_LABEL: h})
            actions.append(Create(kind="Pod", namespace=namespace_of(ds), body=body, why=f"daemon pod for {node}"))

    available = {n for n, p in current.items() if pod_is_available(p, min_ready_seconds=min_ready, now=now)}
    outdated = [n for n, p in current.items() if labels_of(p).get(DS_HASH_LABEL) != h]
    strategy = spec.get("updateStrategy") or {}
    if outdated and (strategy.get("type") or "RollingUpdate") == "RollingUpdate":
        max_unavailable = int_or_percent((strategy.get("rollingUpdate") or {}).get("maxUnavailable"),
                                         total=len(eligible), default="1", round_up=True) or 1
        budget = max_unavailable - (len(eligible) - len(available))
        for node in sorted(outdated, key=lambda n: (n in available, n)):
            if node in available:
                if budget <= 0:
                    break
                budget -= 1
            actions.append(_delete(current[node], why=f"rolling update on {node}"))

    actions.extend(_status(ds, eligible=eligible, current=current, available=available,
                           misscheduled=misscheduled, h=h, now=now))
    waits = [w for p in current.values() if (w := seconds_until_available(p, min_ready_seconds=min_ready, now=now))]
    if waits:
        actions.append(Requeue(after=min(waits) + 0.1, why="a daemon pod becomes available after minReadySeconds"))
    return actions


def _eligible(probe: Pod, node: Node) -> bool:
    return (
        node_is_ready(node)
        and map_selector_matches((probe.get("spec") or {}).get("nodeSelector"), labels_of(node))
        and node_affinity_matches(probe, node)
        and not untolerated_taints(probe, node, extra_tolerations=_DAEMON_TOLERATIONS)
    )


def _delete(pod: Pod, *, why: str) -> Delete:
    return Delete(kind="Pod", namespace=namespace_of(pod), name=name_of(pod), uid=uid_of(pod), why=why)


def _status(ds: Workload, *, eligible: list[str], current: dict[str, Pod], available: set[str],
            misscheduled: int, h: str, now: datetime) -> list[Action]:
    new = {
        "desiredNumberScheduled": len(eligible),
        "currentNumberScheduled": len(current),
        "numberMisscheduled": misscheduled,
        "numberReady": sum(1 for p in current.values() if pod_is_ready(p)),
        "updatedNumberScheduled": sum(1 for p in current.values() if labels_of(p).get(DS_HASH_LABEL) == h),
        "numberAvailable": len(available),
        "numberUnavailable": len(eligible) - len(available),
        "observedGeneration": generation_of(ds),
    }
    old = ds.get("status") or {}
    if all(int(old.get(k) or 0) == v for k, v in new.items()):
        return []
    return [Patch(kind="DaemonSet", namespace=namespace_of(ds), name=name_of(ds), body={"status": new},
                  subresource="status", why=f"{new['numberReady']}/{len(eligible)} ready")]


class DaemonSetController:
    name = "daemonset"
    kinds: tuple[Kind, ...] = ("DaemonSet", "Pod", "Node")

    def keys_for(self, kind: Kind, obj: dict, *, etype: str, store: Store) -> Iterable[tuple[str, str]]:
        if kind == "DaemonSet":
            return ((namespace_of(obj), name_of(obj)),)
        if kind == "Node":
            return [(namespace_of(ds), name_of(ds)) for ds in store.list("DaemonSet")]
        return owner_keys(obj, "DaemonSet")

    def sync(self, key: tuple[str, str], store: Store, *, now: datetime) -> list[Action]:
        ds = store.get("DaemonSet", key)
        if ds is None:
            return []
        return reconcile(ds, store.list("Pod", key[0]), nodes=store.list("Node"), now=now)
