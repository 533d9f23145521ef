"""What a DELETE asks for, and what it does to the object's finalizers (pure functions).

- ``parse_options``: ``DeleteOptions`` as clients send them — a JSON body (kubectl, the Python
  client), a protobuf body decoded by ``protobuf`` (client-go's typed clients: Helm deletes its
  release Secrets so), or, when there is no body, query parameters — become one frozen
  :class:`DeleteOptions`. ``orphanDependents`` (the old spelling) is folded into the policy.
- ``finalizers_after``: the garbage-collection finalizers a delete leaves on the object, as
  Kubernetes' registry sets them: ``Foreground`` adds ``foregroundDeletion`` (the owner stays,
  with a deletionTimestamp, until the garbage collector has deleted its dependents),
  ``Orphan`` adds ``orphan`` (it stays until its dependents no longer reference it),
  ``Background`` adds neither (it goes at once, the collector deletes the dependents after).
  With no policy, a GC finalizer already on the object decides. An owner without dependents
  gets no new GC finalizer: nothing would have to happen before it goes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

Propagation = Literal["Foreground", "Background", "Orphan"]
POLICIES: tuple[Propagation, ...] = ("Foreground", "Background", "Orphan")
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
GC_FINALIZERS = (FOREGROUND, ORPHAN)
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


class DeleteOptionsError(ValueError):
    """DeleteOptions that cannot be read (the API answers 400)."""


class DeleteOptionsInvalid(DeleteOptionsError):
    """DeleteOptions that are well-formed but not allowed (422); ``cause`` is the Status cause."""

    def __init__(self, field: str, *, reason: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.cause = {"reason": reason, "message": message, "field": field}


@dataclass(frozen=True)
class DeleteOptions:
    propagation: Propagation | None = None
    """None: not asked for (a GC finalizer already on the object decides, else Background)"""
    uid: str | None = None
    """precondition: delete only the object with this uid (409 otherwise)"""
    resource_version: str | None = None
    """precondition: delete only at this resourceVersion (409 otherwise)"""
    dry_run: bool = False
    grace_period_seconds: int | None = None
    """accepted and ignored: the sandbox removes pods at once"""


def parse_options(body: Mapping[str, Any] | None, query: Mapping[str, Sequence[str]]) -> DeleteOptions:
    """``body``: the decoded request body (None when the request had none); ``query``: every query
    parameter with all its values. Like kube-apiserver, the query is read only without a body."""
    if body is None:
        return _from_query(query)
    if not isinstance(body, Mapping):
        raise DeleteOptionsError(f"DeleteOptions must be an object, not {type(body).__name__}")
    kind = body.get("kind")
    if kind not in (None, "", "DeleteOptions"):
        raise DeleteOptionsError(f"the body of a DELETE must be DeleteOptions, not {kind}")
    policy = _typed(body, "propagationPolicy", str)
    orphan = _typed(body, "orphanDependents", bool)
    grace = _typed(body, "gracePeriodSeconds", int)
    pre = _typed(body, "preconditions", Mapping) or {}
    uid = _typed(pre, "uid", str, where="preconditions.")
    rv = _typed(pre, "resourceVersion", str, where="preconditions.")
    dry_run = body.get("dryRun")
    if dry_run is not None and not (isinstance(dry_run, list) and all(isinstance(v, str) for v in dry_run)):
        raise DeleteOptionsError('DeleteOptions.dryRun must be a list of strings, e.g. ["All"]')
    return DeleteOptions(propagation=_policy(policy, orphan), uid=uid or None, resource_version=rv or None,
                         dry_run=_dry_run(dry_run or []), grace_period_seconds=grace)


def _from_query(query: Mapping[str, Sequence[str]]) -> DeleteOptions:
    def one(name: str) -> str | None:
        values = query.get(name) or []
        return values[-1] if values else None

    orphan_text = one("orphanDependents")
    orphan = None
    if orphan_text is not None:
        if orphan_text.strip().lower() not in _BOOLS:
            raise DeleteOptionsError(f"invalid orphanDependents {orphan_text!r}; use true or false")
        orphan = _BOOLS[orphan_text.strip().lower()]
    grace_text = one("gracePeriodSeconds")
    grace = None
    if grace_text is not None:
        try:
            grace = int(grace_text)
        except ValueError:
            raise DeleteOptionsError(f"invalid gracePeriodSeconds {grace_text!r}; it must be a number of seconds") from None
    return DeleteOptions(propagation=_policy(one("propagationPolicy"), orphan),
                         dry_run=_dry_run(list(query.get("dryRun") or [])), grace_period_seconds=grace)


def _typed(obj: Mapping[str, Any], key: str, typ: type, *, where: str = "") -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        expected = {str: "a string", bool: "true or false", int: "an integer"}.get(typ, "an object")
        raise DeleteOptionsError(f"DeleteOptions.{where}{key} must be {expected}, not {value!r}")
    return value


def _policy(policy: str | None, orphan: bool | None) -> Propagation | None:
    if policy is not None and orphan is not None:
        raise DeleteOptionsInvalid("propagationPolicy", reason="FieldValueInvalid",
                                   message=f'Invalid value: "{policy}": orphanDependents and deletionPropagation cannot be both set')
    if orphan is not None:
        return "Orphan" if orphan else "Background"
    if policy in (None, ""):
        return None
    if policy not in POLICIES:
        supported = ", ".join(f'"{p}"' for p in POLICIES)
        raise DeleteOptionsInvalid("propagationPolicy", reason="FieldValueNotSupported",
                                   message=f'Unsupported value: "{policy}": supported values: {supported}')
    return policy  # type: ignore[return-value]


def _dry_run(values: list[str]) -> bool:
    for v in values:
        if v != "All":
            raise DeleteOptionsInvalid("dryRun", reason="FieldValueNotSupported",
                                       message=f'Unsupported value: "{v}": supported values: "All"')
    return bool(values)


def finalizers_after(finalizers: Sequence[str], propagation: Propagation | None, *, has_dependents: bool) -> list[str]:
    """The object's finalizers once this delete is applied (kube-apiserver's
    ``deletionFinalizersForGarbageCollection``), except that a GC finalizer is only added to an
    owner that ``has_dependents`` (False too for kinds no garbage collector judges as owners)."""
    if propagation is None:
        first = next((f for f in finalizers if f in GC_FINALIZERS), None)
        gc = [first] if first else []
    else:
        gc = {"Foreground": [FOREGROUND], "Orphan": [ORPHAN], "Background": []}[propagation]
    if not has_dependents:
        gc = [f for f in gc if f in finalizers]
    new = [f for f in finalizers if f not in GC_FINALIZERS] + gc
    return list(finalizers) if set(new) == set(finalizers) else new
