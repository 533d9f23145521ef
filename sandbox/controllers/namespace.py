"""The namespace controller: a deleted namespace's content goes first, then the namespace.

- A Namespace with a ``deletionTimestamp`` is Terminating (the API refuses new content in it)
  and still carries the ``kubernetes`` finalizer in ``spec.finalizers``.
- After a grace period (``GRACE``), every object of every namespaced resource in it is deleted:
  one ``deletecollection`` per resource that still has objects, workloads before pods so that
  no controller replaces a pod meanwhile. Pods are deleted like any object (kubelets tear them
  down on DELETED).
- Once a live list finds nothing left, the ``kubernetes`` finalizer is removed with
  ``PUT /api/v1/namespaces/{name}/finalize``; the API then removes the namespace (the DELETED
  that ``kubectl delete namespace`` waits for). Objects held by finalizers of their own are
  waited for (checked every ``RECHECK`` seconds).
- The content is read live, not from the caches, and the namespaced resources come from the
  API's discovery: a kind added to the API's registry is covered without a change here.

Why a grace period: ``kubectl delete -f app.yaml`` deletes the namespace, then the objects of
the file in it, one request after another; each must still find its object. Kubernetes waits
5 s (``namespaceDeletionGracePeriod``); the sandbox's one API server needs less.
"""
from __future__ import annotations

from datetime import datetime
from typing import Hashable, Iterable, Mapping, Protocol, Sequence

from sandbox.controllers.actions import Action, DeleteCollection, FinalizeNamespace, Requeue
from sandbox.controllers.objects import Kind, Resource, Store, is_deleting, meta, name_of, parse_time

FINALIZER = "kubernetes"
GRACE = 2.0
"""seconds between a namespace's deletionTimestamp and the deletion of its content (the
timestamp has whole seconds, so the wait is between GRACE - 1 and GRACE)"""
DELETED_AGAIN = 0.2
"""seconds until the next look after deleting content: to finalize as soon as it is gone"""
RECHECK = 2.0
"""seconds between looks while objects with finalizers of their own are on their way out"""

# deleted first, in this order: owners before what they own (a ReplicaSet left alive would
# replace its deleted pods); deleted last: what the others may still use or report on
_FIRST = ("deployments.apps", "daemonsets.apps", "replicasets.apps", "pods")
_LAST = ("events", "events.events.k8s.io", "serviceaccounts")


class NamespaceContent(Protocol):
    """Live reads of what is in a namespace (the applier provides them)."""

    def namespace_content(self, namespace: str) -> Mapping[Resource, Sequence[dict]]:
        """Every object in ``namespace``, by namespaced resource the API serves."""
        ...


def finalizers_of(namespace: Mapping) -> list[str]:
    return list((namespace.get("spec") or {}).get("finalizers") or [])


def seconds_until_due(namespace: Mapping, *, now: datetime, grace: float = GRACE) -> float | None:
    """None when this controller has nothing to do for ``namespace`` (not Terminating, or
    finalized already); else the seconds until its content is to be deleted (0: now)."""
    if not is_deleting(namespace) or FINALIZER not in finalizers_of(namespace):
        return None
    since = parse_time(meta(namespace).get("deletionTimestamp"))
    if since is None:
        return 0.0
    return max(0.0, grace - (now - since).total_seconds())


def _order(resource: Resource) -> tuple[int, int, str]:
    name = str(resource)
    if name in _FIRST:
        return (0, _FIRST.index(name), name)
    if name in _LAST:
        return (2, _LAST.index(name), name)
    return (1, 0, name)


def reconcile(
    namespace: Mapping,
    content: Mapping[Resource, Sequence[dict]],
    *,
    now: datetime,
    grace: float = GRACE,
) -> list[Action]:
    """``content``: every object in the namespace by resource, read live after the grace period."""
    wait = seconds_until_due(namespace, now=now, grace=grace)
    if wait is None:
        return []
    name = name_of(namespace)
    if wait > 0:
        return [Requeue(after=wait, why="grace period before deleting the namespace's content")]
    left = {r: list(objs) for r, objs in content.items() if objs}
    if not left:
        return [FinalizeNamespace(
            name=name,
            finalizers=tuple(f for f in finalizers_of(namespace) if f != FINALIZER),
            resource_version=meta(namespace).get("resourceVersion") or "",
            why="all content deleted",
        )]
    actions: list[Action] = []
    for resource in sorted(left, key=_order):
        alive = [o for o in left[resource] if not is_deleting(o)]
        if alive:
            actions.append(DeleteCollection(resource=resource, namespace=name,
                                            why=f"namespace is terminating; {len(alive)} left"))
    if actions:
        actions.append(Requeue(after=DELETED_AGAIN, why="see that the content is gone"))
    else:
        held = sum(len(objs) for objs in left.values())
        kinds = ", ".join(str(r) for r in sorted(left, key=_order))
        actions.append(Requeue(after=RECHECK, why=f"waiting for {held} object(s) with finalizers ({kinds})"))
    return actions


class NamespaceController:
    """One key per Terminating namespace: its name."""

    name = "namespace"
    kinds: tuple[Kind, ...] = ("Namespace",)

    def __init__(self, content: NamespaceContent, *, grace: float = GRACE) -> None:
        self._content = content
        self._grace = grace

    def keys_for(self, kind: Kind, obj: dict, *, etype: str, store: Store) -> Iterable[Hashable]:
        if etype != "DELETED" and is_deleting(obj):
            return (name_of(obj),)
        return ()

    def sync(self, key: Hashable, store: Store, *, now: datetime) -> list[Action]:
        namespace = store.get("Namespace", ("", str(key)))
        if namespace is None:
            return []
        wait = seconds_until_due(namespace, now=now, grace=self._grace)
        if wait is None:
            return []
        content = self._content.namespace_content(str(key)) if wait == 0 else {}
        return reconcile(namespace, content, now=now, grace=self._grace)
