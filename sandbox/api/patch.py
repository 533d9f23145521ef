"""The four PATCH flavours as pure functions on JSON values (no I/O, inputs never mutated).

- :func:`merge_patch` — RFC 7386 ``application/merge-patch+json``
- :func:`json_patch` — RFC 6902 ``application/json-patch+json`` (add/remove/replace/move/copy/test)
- :func:`strategic_merge_patch` — ``application/strategic-merge-patch+json``: lists merged by the
  same keys Kubernetes uses (:func:`list_merge_key`), with the ``$patch``, ``$retainKeys``,
  ``$setElementOrder/…`` and ``$deleteFromPrimitiveList/…`` directives
- :func:`apply_patch` — server-side apply without field ownership: the applied configuration is
  merged strategic-style onto the live object
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

JSON = Any


class PatchError(ValueError):
    """Base of patch failures."""


class PatchFormatError(PatchError):
    """The patch document itself is malformed (HTTP 400)."""


class PatchApplyError(PatchError):
    """The patch is well-formed but cannot be applied to this object (HTTP 422)."""


# ---- RFC 7386 --------------------------------------------------------------------------------


def merge_patch(target: JSON, patch: JSON) -> JSON:
    """Apply a JSON merge patch: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---- RFC 6902 --------------------------------------------------------------------------------


def parse_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchFormatError(f"json pointer {pointer!r} must be empty or start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _json_equal(a: JSON, b: JSON) -> bool:
    """JSON equality: unlike Python's ==, true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    return a == b


def _index(token: str, length: int, *, pointer: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return length
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchApplyError(f"json pointer {pointer!r}: {token!r} is not a valid array index")
    idx = int(token)
    if idx > length or (idx == length and not allow_end):
        raise PatchApplyError(f"json pointer {pointer!r}: index {idx} is out of bounds (array has {length} elements)")
    return idx


def _resolve(doc: JSON, tokens: list[str], pointer: str) -> JSON:
    cur = doc
    for tok in tokens:
        if isinstance(cur, dict):
            if tok not in cur:
                raise PatchApplyError(f"json pointer {pointer!r}: key {tok!r} does not exist")
            cur = cur[tok]
        elif isinstance(cur, list):
            cur = cur[_index(tok, len(cur), pointer=pointer, allow_end=False)]
        else:
            raise PatchApplyError(f"json pointer {pointer!r}: cannot descend into a {type(cur).__name__}")
    return cur


def _add(doc: JSON, tokens: list[str], value: JSON, pointer: str) -> JSON:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), pointer=pointer, allow_end=True), value)
    else:
        raise PatchApplyError(f"json pointer {pointer!r}: parent is a {type(parent).__name__}, not an object or array")
    return doc


def _remove(doc: JSON, tokens: list[str], pointer: str) -> tuple[JSON, JSON]:
    if not tokens:
        raise PatchApplyError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchApplyError(f"json pointer {pointer!r}: key {last!r} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(last, len(parent), pointer=pointer, allow_end=False))
    raise PatchApplyError(f"json pointer {pointer!r}: parent is a {type(parent).__name__}, not an object or array")


def json_patch(doc: JSON, operations: Sequence[JSON]) -> JSON:
    """Apply RFC 6902 operations atomically; any failing operation leaves nothing applied."""
    if not isinstance(operations, list):
        raise PatchFormatError("a json patch must be a JSON array of operations")
    result = copy.deepcopy(doc)
    for n, op in enumerate(operations):
        if not isinstance(op, dict):
            raise PatchFormatError(f"json patch operation {n} must be an object, got {type(op).__name__}")
        kind = op.get("op")
        path = op.get("path")
        if not isinstance(path, str):
            raise PatchFormatError(f"json patch operation {n} ({kind}) is missing a string 'path'")
        tokens = parse_pointer(path)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchFormatError(f"json patch operation {n} ({kind} {path}) is missing 'value'")
        if kind == "add":
            result = _add(result, tokens, copy.deepcopy(op["value"]), path)
        elif kind == "remove":
            result, _ = _remove(result, tokens, path)
        elif kind == "replace":
            if tokens:
                _resolve(result, tokens, path)
                result, _ = _remove(result, tokens, path)
            result = _add(result, tokens, copy.deepcopy(op["value"]), path)
        elif kind in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise PatchFormatError(f"json patch operation {n} ({kind} {path}) is missing a string 'from'")
            src_tokens = parse_pointer(src)
            if kind == "move":
                if tokens[: len(src_tokens)] == src_tokens and len(tokens) > len(src_tokens):
                    raise PatchApplyError(f"cannot move {src!r} into its own child {path!r}")
                result, value = _remove(result, src_tokens, src)
            else:
                value = copy.deepcopy(_resolve(result, src_tokens, src))
            result = _add(result, tokens, value, path)
        elif kind == "test":
            have = _resolve(result, tokens, path)
            if not _json_equal(have, op["value"]):
                raise PatchApplyError(f"json patch test operation failed: value at {path!r} is not {op['value']!r}")
        else:
            raise PatchFormatError(
                f"json patch operation {n} has unknown op {kind!r}; use add, remove, replace, move, copy or test"
            )
    return result


# ---- strategic merge patch -------------------------------------------------------------------

PRIMITIVE_MERGE = "$primitive"
"""Marker from :func:`list_merge_key` for a list of scalars merged as a set (e.g. finalizers)."""

_CONTAINER_LISTS = {"containers", "initContainers", "ephemeralContainers"}
_BY_FIELD = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "schedulingGates": "name",
    "topologySpreadConstraints": "topologyKey",
    "ownerReferences": "uid",
    "podIPs": "ip",
    "conditions": "type",
}
_IN_CONTAINER = {
    "ports": "containerPort",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "resizePolicy": "resourceName",
}
_PRIMITIVE = {("metadata", "finalizers"), ("spec", "podCIDRs")}


def list_merge_key(path: tuple[str, ...], *, kind: str) -> str | None:
    """How the list at ``path`` (field names from the root, indices left out) merges.

    A merge key (``"name"``), :data:`PRIMITIVE_MERGE`, or ``None`` for "replace the whole list".
    """
    if not path:
        return None
    if path in _PRIMITIVE:
        return PRIMITIVE_MERGE
    last = path[-1]
    if len(path) >= 2 and path[-2] in _CONTAINER_LISTS and last in _IN_CONTAINER:
        return _IN_CONTAINER[last]
    if kind == "Service" and path == ("spec", "ports"):
        return "port"
    if kind == "Node" and path == ("status", "addresses"):
        return "type"
    if last == "conditions" and (len(path) < 2 or path[-2] != "status"):
        return None
    return _BY_FIELD.get(last)


def _clean(value: JSON) -> JSON:
    """Drop directive keys from a value that is inserted whole."""
    if isinstance(value, dict):
        return {
            k: _clean(v)
            for k, v in value.items()
            if not k.startswith("$") and v is not None
        }
    if isinstance(value, list):
        return [_clean(v) for v in value if not (isinstance(v, dict) and set(v) == {"$patch"})]
    return value


_DELETE = object()


def _merge_map(orig: dict, patch: dict, path: tuple[str, ...], kind: str) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return _clean(patch)
    if directive == "delete":
        return _DELETE
    if directive is not None:
        raise PatchFormatError(f"unknown $patch directive {directive!r} at {'.'.join(path) or '<root>'}; use replace or delete")
    result = dict(orig)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, dict):
            merged = _merge_map(current if isinstance(current, dict) else {}, value, path + (key,), kind)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(current if isinstance(current, list) else [], value, path + (key,), kind)
        else:
            result[key] = value
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise PatchFormatError(f"{key} must be a list")
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in value]
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            field = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise PatchFormatError(f"{key} must be a list")
            if isinstance(result.get(field), list):
                result[field] = _reorder(result[field], value, list_merge_key(path + (field,), kind=kind))
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchFormatError(f"$retainKeys at {'.'.join(path) or '<root>'} must be a list of field names")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _reorder(items: list, order: list, key: str | None) -> list:
    def ident(x: Any) -> Any:
        if key and key != PRIMITIVE_MERGE and isinstance(x, dict):
            return x.get(key)
        return x

    wanted = [ident(o) for o in order]
    placed = [x for w in wanted for x in items if ident(x) == w]
    rest = [x for x in items if not any(x is p for p in placed)]
    return placed + rest


def _merge_list(orig: list, patch: list, path: tuple[str, ...], kind: str) -> list:
    key = list_merge_key(path, kind=kind)
    if key is None:
        return _clean(patch)
    if key == PRIMITIVE_MERGE:
        result = list(orig)
        for item in patch:
            if item not in result:
                result.append(item)
        return result
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return _clean([x for x in patch if not (isinstance(x, dict) and x.get("$patch") == "replace")])
    result = list(orig)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchFormatError(f"{'.'.join(path)}: list items must be objects merged by {key!r}, got {item!r}")
        if key not in item:
            raise PatchFormatError(f"{'.'.join(path)}: item {item!r} does not contain the merge key {key!r}")
        at = next((i for i, x in enumerate(result) if isinstance(x, dict) and x.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            result = [x for x in result if not (isinstance(x, dict) and x.get(key) == item[key])]
            continue
        merged = _merge_map(result[at] if at is not None else {}, item, path, kind)
        if merged is _DELETE:
            continue
        if at is None:
            result.append(merged)
        else:
            result[at] = merged
    return result


def strategic_merge_patch(original: dict, patch: dict, *, kind: str) -> dict:
    """Apply a strategic merge patch to an object of ``kind`` (Pod, Deployment, Service, ...)."""
    if not isinstance(patch, dict):
        raise PatchFormatError("a strategic merge patch must be a JSON object")
    merged = _merge_map(copy.deepcopy(original) if isinstance(original, dict) else {}, patch, (), kind)
    if merged is _DELETE:
        raise PatchApplyError("a $patch: delete at the top level cannot delete the whole object; use DELETE")
    return copy.deepcopy(merged)


def apply_patch(live: dict | None, applied: dict, *, kind: str) -> dict:
    """Server-side apply without managedFields: the applied config merged onto the live object."""
    if not isinstance(applied, dict):
        raise PatchFormatError("an applied configuration must be an object")
    return strategic_merge_patch(live or {}, applied, kind=kind)
