"""The garbage collector: dependents go when their owners are gone.

- Dependents (:data:`DEPENDENT_KINDS`): ReplicaSets, Pods, EndpointSlices, Secrets, ConfigMaps,
  Deployments, Services, ServiceAccounts and RoleBindings with ownerReferences (a Deployment may
  own what its pods create, e.g. Ambit's CA owns the root it generates; a waypoint Gateway owns
  the Deployment, Service, ServiceAccount, RoleBinding and ConfigMap its controller makes). Owners
  it can judge (:data:`OWNERS`, kind and API group): Deployments, ReplicaSets, DaemonSets, Services
  and Gateways (a CRD kind: while its CRD is not installed the cache is empty and the live check
  below keeps every dependent). An object with any other owner is left alone, since the collector
  cannot see whether that owner exists.
- An object none of whose owners exists (by uid, in its namespace) is deleted with Background
  propagation, so a Deployment's ReplicaSets go, then their pods. The cache may lag, so each such
  delete carries its owners and the applier looks them up live first, as Kubernetes' collector
  does before it deletes.
- Owners deleted with ``propagationPolicy: Foreground`` (``--cascade=foreground``; the API keeps
  them with a deletionTimestamp and the ``foregroundDeletion`` finalizer while they have
  dependents) have their dependents deleted first, themselves in the foreground (so a
  Deployment waits for its ReplicaSets, which wait for their pods), then the finalizer
  removed. A dependent that another, living owner keeps only loses its reference to the
  waiting owner. ``Orphan`` (``--cascade=orphan``, ``orphanDependents: true``; finalizer
  ``orphan``) has the owner reference removed from each dependent, then the finalizer.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Mapping

from sandbox.controllers.actions import Action, Delete, Patch
from sandbox.controllers.objects import (
    API_GROUPS,
    Kind,
    Store,
    group_of,
    is_deleting,
    meta,
    name_of,
    namespace_of,
    uid_of,
)

OWNER_KINDS: tuple[Kind, ...] = ("Deployment", "ReplicaSet", "DaemonSet", "Service", "Gateway")
DEPENDENT_KINDS: tuple[Kind, ...] = ("ReplicaSet", "Pod", "EndpointSlice", "Secret", "ConfigMap",
                                     "Deployment", "Service", "ServiceAccount", "RoleBinding")
OWNERS = {kind: API_GROUPS[kind] for kind in OWNER_KINDS}
"""owner kind -> its API group: a reference is judged only when both match"""
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
CLUSTER_KEY = "*"


def reconcile(objects: Mapping[Kind, Iterable[dict]]) -> list[Action]:
    """``objects``: every cached object of the owner and dependent kinds, by kind."""
    lists = {kind: list(objects.get(kind) or ()) for kind in set(OWNER_KINDS) | set(DEPENDENT_KINDS)}
    owners: dict[tuple[str, str, str], dict] = {}
    for kind in OWNER_KINDS:
        for obj in lists[kind]:
            owners[(kind, namespace_of(obj), uid_of(obj))] = obj

    actions: list[Action] = []
    referenced: set[tuple[str, str, str]] = set()
    for kind in DEPENDENT_KINDS:
        for obj in lists[kind]:
            refs = meta(obj).get("ownerReferences") or []
            if not refs:
                continue
            ns = namespace_of(obj)
            for ref in refs:
                referenced.add((ref.get("kind", ""), ns, ref.get("uid", "")))
            if is_deleting(obj) or not all(_judged(ref) for ref in refs):
                continue
            alive = [(ref, owners.get((ref.get("kind", ""), ns, ref.get("uid", "")))) for ref in refs]
            living = [(ref, o) for ref, o in alive if o is not None]
            if not living:
                gone = ", ".join(f"{r.get('kind')} {r.get('name')}" for r in refs)
                actions.append(Delete(kind=kind, namespace=ns, name=name_of(obj), uid=uid_of(obj),
                                      why=f"owner {gone} is gone", unless_owners_exist=tuple(refs)))
                continue
            orphaning = [ref for ref, o in living if is_deleting(o) and ORPHAN in _finalizers(o)]
            if orphaning:
                keep = [r for r in refs if r not in orphaning]
                actions.append(Patch(kind=kind, namespace=ns, name=name_of(obj),
                                     body={"metadata": {"ownerReferences": keep or None,
                                                        "resourceVersion": meta(obj).get("resourceVersion")}},
                                     why=f"orphaned by {', '.join(r.get('name', '') for r in orphaning)}"))
                continue
            waiting = [ref for ref, o in living if is_deleting(o) and FOREGROUND in _finalizers(o)]
            if not waiting:
                continue
            if len(waiting) == len(living):
                actions.append(Delete(kind=kind, namespace=ns, name=name_of(obj), uid=uid_of(obj),
                                      propagation="Foreground",
                                      why=f"foreground deletion of {', '.join(r.get('name', '') for r in waiting)}"))
            else:  # another owner keeps it: only let go of the owners that wait for it
                keep = [r for r in refs if r not in waiting]
                actions.append(Patch(kind=kind, namespace=ns, name=name_of(obj),
                                     body={"metadata": {"ownerReferences": keep,
                                                        "resourceVersion": meta(obj).get("resourceVersion")}},
                                     why=f"released from the foreground deletion of {', '.join(r.get('name', '') for r in waiting)}"))

    # owners waiting on their dependents: drop the finalizer once none references them
    for (kind, ns, uid), owner in sorted(owners.items()):
        if not is_deleting(owner) or (kind, ns, uid) in referenced:
            continue
        fins = _finalizers(owner)
        left = [f for f in fins if f not in (FOREGROUND, ORPHAN)]
        if left != fins:
            actions.append(Patch(kind=kind, namespace=ns, name=name_of(owner),
                                 body={"metadata": {"finalizers": left or None,
                                                    "resourceVersion": meta(owner).get("resourceVersion")}},
                                 why="dependents handled"))
    return actions


def _judged(ref: dict) -> bool:
    kind = ref.get("kind", "")
    return kind in OWNERS and group_of(ref.get("apiVersion", "")) == OWNERS[kind]


def _finalizers(obj: dict) -> list[str]:
    return list(meta(obj).get("finalizers") or [])


class GarbageCollector:
    """Scans every cached owner and dependent on any change to them (the sandbox is small)."""

    name = "garbagecollector"
    kinds: tuple[Kind, ...] = tuple(dict.fromkeys(OWNER_KINDS + DEPENDENT_KINDS))

    def keys_for(self, kind: Kind, obj: dict, *, etype: str, store: Store) -> Iterable[str]:
        # any dependent's change: also one whose owner references were just removed (orphaned),
        # after which its former owner may drop its finalizer
        if kind in DEPENDENT_KINDS or etype == "DELETED" or is_deleting(obj):
            return (CLUSTER_KEY,)
        return ()

    def sync(self, key: str, store: Store, *, now: datetime) -> list[Action]:
        return reconcile({kind: store.list(kind) for kind in self.kinds})
