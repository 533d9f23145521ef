"""What a reconcile function returns: creates, patches, deletes, namespace finalization and
requeues, as plain data.

The reconcile functions never talk to the API; the runtime's applier turns these into client
calls, in order, and logs each one with its ``why``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

from sandbox.controllers.objects import Kind, OwnerReference, Resource

PatchType = Literal["merge", "strategic", "json"]


@dataclass(frozen=True, kw_only=True)
class Create:
    kind: Kind
    namespace: str
    body: dict[str, Any]
    why: str

    @property
    def name(self) -> str:
        return (self.body.get("metadata") or {}).get("name") or ""

    def describe(self) -> str:
        return f"create {self.kind} {_ref(self.namespace, self.name)} ({self.why})"


@dataclass(frozen=True, kw_only=True)
class Patch:
    kind: Kind
    namespace: str
    name: str
    body: dict[str, Any] | list[dict[str, Any]]
    why: str
    subresource: Literal["", "status"] = ""
    patch_type: PatchType = "merge"

    def describe(self) -> str:
        target = f"{self.kind} {_ref(self.namespace, self.name)}"
        if self.subresource:
            target += f" {self.subresource}"
        return f"patch {target} ({self.why})"


@dataclass(frozen=True, kw_only=True)
class Delete:
    kind: Kind
    namespace: str
    name: str
    why: str
    uid: str = ""
    """precondition: only delete the object with this uid (not a namesake created since)"""
    propagation: Literal["Background", "Foreground", "Orphan"] = "Background"
    unless_owners_exist: tuple[OwnerReference, ...] = field(default=())
    """garbage collection: look these owners up live first and keep the object if any exists"""

    def describe(self) -> str:
        return f"delete {self.kind} {_ref(self.namespace, self.name)} ({self.why})"


@dataclass(frozen=True, kw_only=True)
class DeleteCollection:
    """Delete every object of one resource in a namespace (``deletecollection``)."""

    resource: Resource
    namespace: str
    why: str

    def describe(self) -> str:
        return f"delete all {self.resource} in {self.namespace} ({self.why})"


@dataclass(frozen=True, kw_only=True)
class FinalizeNamespace:
    """Set a Terminating namespace's ``spec.finalizers`` (``PUT .../finalize``); the API removes
    the namespace once no finalizer is left."""

    name: str
    finalizers: tuple[str, ...]
    resource_version: str
    """optimistic concurrency: the version the decision was made on"""
    why: str

    def describe(self) -> str:
        return f"finalize Namespace {self.name} (spec.finalizers {list(self.finalizers)}; {self.why})"


@dataclass(frozen=True, kw_only=True)
class Requeue:
    """Run this key's reconcile again after ``after`` seconds even if nothing changes
    (e.g. a pod that becomes available once minReadySeconds have passed)."""

    after: float
    why: str

    def describe(self) -> str:
        return f"requeue in {self.after:.1f}s ({self.why})"


Action = Union[Create, Patch, Delete, DeleteCollection, FinalizeNamespace, Requeue]


def _ref(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name
