"""CustomResourceDefinitions (``apiextensions.k8s.io/v1``): what a CRD object means to the API.

- :func:`apply_defaults` / :func:`validate` / :func:`immutable_causes` — the CRD object itself,
  as kube-apiserver defaults and checks it (names, scope, versions with exactly one storage
  version, schemas, printer columns, scale paths; scope, group and plural never change);
- :func:`status` — ``acceptedNames``, the ``NamesAccepted`` and ``Established`` conditions and
  ``storedVersions``, computed on each write (at once, where Kubernetes' controllers take a moment);
- :func:`served_types` — one :class:`~sandbox.api.registry.ResourceType` per served version of an
  established CRD (schema compiled, printer columns parsed), for ``Registry.set_custom``;
- :func:`as_served` — an object stored at the storage version, as a client of another served
  version reads it (conversion strategy ``None``: only ``apiVersion`` changes).
"""
from __future__ import annotations

import re
from typing import Any

from . import jsonpath, tables
from .registry import CRD, Custom, Registry, ResourceType, ScalePaths
from .store import Stored, dumps
from .structural import Validator
from .validation import check_dns1123_label, check_dns1123_subdomain, invalid_cause, required

Obj = dict[str, Any]
Cause = dict[str, str]
COLUMN_TYPES = ("integer", "number", "string", "boolean", "date")
_KIND = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_APPROVAL_GROUPS = re.compile(r"(^|\.)(k8s\.io|kubernetes\.io)$")


def _spec(crd: Obj) -> Obj:
    spec = crd.get("spec")
    return spec if isinstance(spec, dict) else {}


def _names(crd: Obj) -> Obj:
    names = _spec(crd).get("names")
    return names if isinstance(names, dict) else {}


def _versions(crd: Obj) -> list[Obj]:
    versions = _spec(crd).get("versions")
    return [v for v in versions if isinstance(v, dict)] if isinstance(versions, list) else []


def storage_version(crd: Obj) -> str:
    return next((v.get("name", "") for v in _versions(crd) if v.get("storage")), "")


# ---- defaults and validation of the CRD object -------------------------------------------


def apply_defaults(crd: Obj) -> None:
    spec = crd.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    names = spec.get("names")
    if isinstance(names, dict) and isinstance(names.get("kind"), str):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
    conversion = spec.setdefault("conversion", {})
    if isinstance(conversion, dict):
        conversion.setdefault("strategy", "None")


def validate(crd: Obj) -> list[Cause]:
    """Causes for the CRD's spec (its metadata is checked like any object's)."""
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[Cause] = []
    group, names = spec.get("group"), _names(crd)
    if not isinstance(group, str) or not group:
        causes.append(required("spec.group"))
    elif "." not in group:
        causes.append(invalid_cause("spec.group", group, "should be a domain with at least one dot"))
    else:
        causes.extend(invalid_cause("spec.group", group, m) for m in check_dns1123_subdomain(group))
    plural, kind = names.get("plural"), names.get("kind")
    for field in ("plural", "singular"):
        value = names.get(field)
        if field == "plural" and not value:
            causes.append(required("spec.names.plural"))
        elif value is not None:
            causes.extend(invalid_cause(f"spec.names.{field}", value, m) for m in check_dns1123_label(str(value)))
    if not kind:
        causes.append(required("spec.names.kind"))
    elif not isinstance(kind, str) or not _KIND.match(kind):
        causes.append(invalid_cause("spec.names.kind", kind, "must start with an upper-case letter and hold only letters and digits"))
    for field in ("shortNames", "categories"):
        value = names.get(field)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
            causes.append(invalid_cause(f"spec.names.{field}", value, "must be a list of non-empty strings"))
    if plural and isinstance(group, str) and crd.get("metadata", {}).get("name") != f"{plural}.{group}":
        causes.append(invalid_cause("metadata.name", crd.get("metadata", {}).get("name"), "must be spec.names.plural+\".\"+spec.group"))
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        causes.append({"reason": "FieldValueNotSupported", "field": "spec.scope",
                       "message": f'Unsupported value: "{scope}": supported values: "Cluster", "Namespaced"'})
    strategy = (spec.get("conversion") or {}).get("strategy", "None") if isinstance(spec.get("conversion"), dict) else "None"
    if strategy != "None":
        causes.append({"reason": "FieldValueNotSupported", "field": "spec.conversion.strategy",
                       "message": f'Unsupported value: "{strategy}": supported values: "None" (the sandbox API has no conversion webhooks)'})
    causes.extend(_version_causes(spec))
    return causes


def immutable_causes(crd: Obj, old: Obj) -> list[Cause]:
    """An update may not move a CRD's kind to another scope, group or plural."""
    causes = []
    for field in ("scope", "group"):
        if field in _spec(old) and _spec(crd).get(field) != _spec(old).get(field):
            causes.append(invalid_cause(f"spec.{field}", _spec(crd).get(field), "field is immutable"))
    if _names(old).get("plural") and _names(crd).get("plural") != _names(old).get("plural"):
        causes.append(invalid_cause("spec.names.plural", _names(crd).get("plural"), "field is immutable"))
    return causes


def _version_causes(spec: Obj) -> list[Cause]:
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        return [required("spec.versions")]
    causes: list[Cause] = []
    seen: set[str] = set()
    storage = 0
    for i, v in enumerate(versions):
        where = f"spec.versions[{i}]"
        if not isinstance(v, dict):
            causes.append(invalid_cause(where, v, "must be an object"))
            continue
        name = v.get("name")
        if not isinstance(name, str) or not name:
            causes.append(required(f"{where}.name"))
        else:
            causes.extend(invalid_cause(f"{where}.name", name, m) for m in check_dns1123_label(name))
            if name in seen:
                causes.append({"reason": "FieldValueDuplicate", "field": f"{where}.name", "message": f'Duplicate value: "{name}"'})
            seen.add(name)
        for flag in ("served", "storage"):
            if not isinstance(v.get(flag), bool):
                causes.append(required(f"{where}.{flag}"))
        storage += v.get("storage") is True
        schema = (v.get("schema") or {}).get("openAPIV3Schema") if isinstance(v.get("schema"), dict) else None
        if not isinstance(schema, dict):
            causes.append({"reason": "FieldValueRequired", "field": f"{where}.schema.openAPIV3Schema",
                           "message": "Required value: schemas are required"})
        elif schema.get("type") != "object":
            causes.append(invalid_cause(f"{where}.schema.openAPIV3Schema.type", schema.get("type"), "must be object at the root"))
        else:
            try:
                Validator(schema)
            except Exception as exc:  # jsonschema's SchemaError: the schema itself is malformed
                causes.append(invalid_cause(f"{where}.schema.openAPIV3Schema", "object", f"not a valid schema: {getattr(exc, 'message', exc)}"))
        for j, col in enumerate(v.get("additionalPrinterColumns") or []):
            causes.extend(_column_causes(col, f"{where}.additionalPrinterColumns[{j}]"))
        scale = (v.get("subresources") or {}).get("scale") if isinstance(v.get("subresources"), dict) else None
        if isinstance(scale, dict):
            for key, prefix in (("specReplicasPath", ".spec."), ("statusReplicasPath", ".status."), ("labelSelectorPath", ".status.")):
                path = scale.get(key)
                if path is None and key == "labelSelectorPath":
                    continue
                if not isinstance(path, str) or not path.startswith(prefix) and not (key == "labelSelectorPath" and path.startswith(".spec.")):
                    causes.append(invalid_cause(f"{where}.subresources.scale.{key}", path, f"should be a json path under {prefix.rstrip('.')}"))
    if not any(isinstance(v, dict) and v.get("served") for v in versions):
        causes.append(invalid_cause("spec.versions", "array", "must have at least one served version"))
    if storage != 1:
        causes.append(invalid_cause("spec.versions", "array", "must have exactly one version marked as storage version"))
    return causes


def _column_causes(col: Any, where: str) -> list[Cause]:
    if not isinstance(col, dict):
        return [invalid_cause(where, col, "must be an object")]
    causes: list[Cause] = []
    if not col.get("name"):
        causes.append(required(f"{where}.name"))
    if col.get("type") not in COLUMN_TYPES:
        causes.append({"reason": "FieldValueNotSupported", "field": f"{where}.type",
                       "message": f'Unsupported value: "{col.get("type")}": supported values: ' + ", ".join(f'"{t}"' for t in COLUMN_TYPES)})
    path = col.get("jsonPath")
    if not isinstance(path, str) or not path:
        causes.append(required(f"{where}.jsonPath"))
    else:
        try:
            jsonpath.parse(path)
        except jsonpath.JSONPathError as exc:
            causes.append(invalid_cause(f"{where}.jsonPath", path, str(exc)))
    return causes


# ---- status ------------------------------------------------------------------------------


def _condition(type_: str, ok: bool, reason: str, message: str, *, old: list[Obj], now: str) -> Obj:
    status = "True" if ok else "False"
    prev = next((c for c in old if isinstance(c, dict) and c.get("type") == type_), {})
    since = prev.get("lastTransitionTime") if prev.get("status") == status else None
    return {"type": type_, "status": status, "lastTransitionTime": since or now, "reason": reason, "message": message}


def accepted_names(crd: Obj) -> Obj:
    names = _names(crd)
    out: Obj = {k: names[k] for k in ("plural", "singular", "shortNames", "kind", "listKind", "categories") if names.get(k)}
    return out


def status(crd: Obj, *, old_status: Obj | None, conflict: str, now: str) -> Obj:
    """The CRD's status after this write: names accepted unless ``conflict`` says why not."""
    old_status = old_status if isinstance(old_status, dict) else {}
    old_conditions = [c for c in old_status.get("conditions") or [] if isinstance(c, dict)]
    stored = [v for v in old_status.get("storedVersions") or [] if isinstance(v, str)]
    if storage_version(crd) and storage_version(crd) not in stored:
        stored.append(storage_version(crd))
    conditions = [
        _condition("NamesAccepted", not conflict, "ConflictFound" if conflict else "NoConflicts",
                   conflict or "no conflicts found", old=old_conditions, now=now),
        _condition("Established", not conflict, "NotAccepted" if conflict else "InitialNamesAccepted",
                   "not all names are accepted" if conflict else "the initial names have been accepted",
                   old=old_conditions, now=now),
    ]
    group = str(_spec(crd).get("group") or "")
    if _APPROVAL_GROUPS.search(group):
        note = ((crd.get("metadata") or {}).get("annotations") or {}).get("api-approved.kubernetes.io", "")
        approved = note.startswith(("http://", "https://"))
        conditions.append(_condition(
            "KubernetesAPIApprovalPolicyConformant", approved,
            "ApprovedAnnotation" if approved else ("UnapprovedAnnotation" if note else "MissingAnnotation"),
            f"approved in {note}" if approved else
            f"protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111",
            old=old_conditions, now=now))
    out: Obj = {"conditions": conditions, "storedVersions": stored}
    out["acceptedNames"] = accepted_names(crd) if not conflict else (old_status.get("acceptedNames") or {"plural": "", "kind": ""})
    return out


def established(crd: Obj) -> bool:
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (crd.get("status") or {}).get("conditions") or [] if isinstance(c, dict))


def conflict_of(crd: Obj, registry: Registry) -> str:
    names = _names(crd)
    return registry.name_conflict(crd=crd["metadata"]["name"], group=str(_spec(crd).get("group") or ""),
                                  plural=str(names.get("plural") or ""), kind=str(names.get("kind") or ""),
                                  short_names=tuple(names.get("shortNames") or ()))


# ---- serving ------------------------------------------------------------------------------


def served_types(crd: Obj) -> tuple[ResourceType, ...]:
    """The types an established CRD serves: one per served version (none if not established)."""
    if not established(crd):
        return ()
    spec, names = _spec(crd), _names(crd)
    storage = storage_version(crd)
    out = []
    for v in _versions(crd):
        if not v.get("served"):
            continue
        schema = (v.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"}
        subs = v.get("subresources") or {}
        scale_doc = subs.get("scale") if isinstance(subs.get("scale"), dict) else None
        subresources = tuple(s for s in ("status", "scale") if isinstance(subs.get(s), dict))
        columns = tuple(
            tables.printer_column(name=c["name"], type_=c["type"], json_path=c["jsonPath"], format_=c.get("format", ""),
                                  priority=int(c.get("priority") or 0), description=c.get("description", ""))
            for c in v.get("additionalPrinterColumns") or []
        )
        out.append(ResourceType(
            str(spec["group"]), v["name"], names["kind"], names["plural"],
            tuple(names.get("shortNames") or ()),
            namespaced=spec.get("scope") == "Namespaced",
            subresources=subresources,
            columns=(tables.NAME, *columns) if columns else tables.GENERIC,
            categories=tuple(names.get("categories") or ()),
            singular=names.get("singular") or names["kind"].lower(),
            scale=ScalePaths(scale_doc["specReplicasPath"], scale_doc["statusReplicasPath"],
                             scale_doc.get("labelSelectorPath") or "") if scale_doc else None,
            custom=Custom(crd=crd["metadata"]["name"], storage_version=storage, schema=schema,
                          validator=Validator(schema), list_kind=names.get("listKind", "")),
        ))
    return tuple(out)


def as_served(rt: ResourceType, stored: Stored) -> Stored:
    """``stored`` as the version ``rt`` serves reads it (conversion strategy None)."""
    if rt.custom is None or stored.obj.get("apiVersion") == rt.group_version:
        return stored
    obj = dict(stored.obj)
    obj["apiVersion"] = rt.group_version
    return Stored(obj, dumps(obj), stored.rv)


__all__ = ["CRD", "apply_defaults", "validate", "status", "served_types", "as_served", "established", "conflict_of"]
