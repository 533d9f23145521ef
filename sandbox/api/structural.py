"""A CRD version's ``openAPIV3Schema`` applied to custom resources, as kube-apiserver applies it
(pure functions on dicts; the write path calls them in this order):

1. :func:`prune` removes the fields the schema does not declare (kept under
   ``x-kubernetes-preserve-unknown-fields: true``, in ``additionalProperties`` maps, and
   ``apiVersion``/``kind``/``metadata`` of the root and of ``x-kubernetes-embedded-resource``
   objects) and returns their paths: ``fieldValidation=Strict`` rejects them, ``Warn`` (the
   default) warns, ``Ignore`` is silent;
2. :func:`apply_defaults` fills every absent field whose schema has a ``default`` (also a
   ``null`` in a field that is not ``nullable``), then descends into it;
3. :class:`Validator` checks the value rules with the ``jsonschema`` library (OpenAPI v3.0 is
   JSON Schema draft 4 plus a few keywords, translated here: ``nullable``,
   ``x-kubernetes-int-or-string``, ``x-kubernetes-embedded-resource``) and the list rules
   (``x-kubernetes-list-type: map|set``: no duplicates), and words each failure as kube-apiserver
   does, as a ``details.causes`` entry.

``x-kubernetes-validations`` (CEL rules) are not evaluated: the sandbox has no CEL.
"""
from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
import uuid
from datetime import date, datetime
from typing import Any, Iterable

import jsonschema

Obj = dict[str, Any]
Cause = dict[str, str]
ROOT_KEPT = ("apiVersion", "kind", "metadata")


def _path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


# ---- pruning ---------------------------------------------------------------------------------


def prune(schema: Obj, obj: Obj) -> list[str]:
    """Remove undeclared fields from ``obj`` (in place); returns their paths (``spec.foo``,
    ``spec.listeners[0].bar``) in document order."""
    pruned: list[str] = []
    _prune(schema, obj, "", pruned, root=True)
    return pruned


def _prune(schema: Obj, value: Any, path: str, pruned: list[str], *, root: bool = False) -> None:
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        if schema.get("x-kubernetes-int-or-string"):
            return
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = root or bool(schema.get("x-kubernetes-embedded-resource"))
        for key in list(value):
            where = _path(path, key)
            if key in props:
                if not (root and key == "metadata"):
                    _prune(props[key], value[key], where, pruned)
            elif isinstance(extra, dict):
                _prune(extra, value[key], where, pruned)
            elif extra is True or preserve or (embedded and key in ROOT_KEPT):
                continue
            else:
                del value[key]
                pruned.append(where)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _prune(items, item, f"{path}[{i}]", pruned)


# ---- defaulting ------------------------------------------------------------------------------


def apply_defaults(schema: Obj, obj: Obj) -> None:
    """Fill defaults into ``obj`` (in place), outside-in, as structural defaulting does."""
    _default(schema, obj, root=True)


def _default(schema: Obj, value: Any, *, root: bool = False) -> None:
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if not isinstance(sub, dict) or (root and key == "metadata"):
                continue
            if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            if root and key == "metadata":
                continue
            sub = props.get(key) if key in props else schema.get("additionalProperties")
            if isinstance(sub, dict):
                _default(sub, item)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for item in value:
                _default(items, item)


# ---- validation ------------------------------------------------------------------------------

_FORMATS = jsonschema.FormatChecker(formats=())
_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _format(name: str):
    def register(fn):
        def check(value: Any) -> bool:
            return not isinstance(value, str) or fn(value)

        _FORMATS.checks(name)(check)
        return fn

    return register


def _parses(parse, value: str) -> bool:
    try:
        parse(value)
    except (ValueError, binascii.Error):
        return False
    return True


@_format("ipv4")
def _ipv4(v: str) -> bool:
    return _parses(ipaddress.IPv4Address, v)


@_format("ipv6")
def _ipv6(v: str) -> bool:
    return _parses(ipaddress.IPv6Address, v)


@_format("cidr")
def _cidr(v: str) -> bool:
    return _parses(lambda s: ipaddress.ip_network(s, strict=False), v)


@_format("date-time")
def _date_time(v: str) -> bool:
    return "T" in v.upper() and _parses(lambda s: datetime.fromisoformat(s.upper().replace("Z", "+00:00")), v)


@_format("date")
def _date(v: str) -> bool:
    return _parses(date.fromisoformat, v)


@_format("uuid")
def _uuid(v: str) -> bool:
    return _parses(uuid.UUID, v)


@_format("byte")
def _byte(v: str) -> bool:
    return _parses(lambda s: base64.b64decode(s, validate=True), v)


@_format("hostname")
def _hostname(v: str) -> bool:
    return len(v) <= 253 and bool(_HOSTNAME.match(v))


def to_json_schema(schema: Any) -> Any:
    """The OpenAPI v3.0 schema as draft-4 JSON Schema: ``nullable`` becomes a ``null`` type,
    int-or-string an ``anyOf``, embedded resources require ``apiVersion`` and ``kind``."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: Obj = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: to_json_schema(v) for k, v in value.items()} if isinstance(value, dict) else value
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = to_json_schema(value)
        elif key in ("default", "example", "description", "x-kubernetes-validations"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("x-kubernetes-embedded-resource"):
        out["required"] = sorted(set(out.get("required") or []) | {"apiVersion", "kind"})
    if schema.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


class Validator:
    """One schema, compiled once (when its CRD is registered); :meth:`causes` per object."""

    def __init__(self, schema: Obj) -> None:
        self.schema = schema
        translated = to_json_schema(schema)
        jsonschema.Draft4Validator.check_schema(translated)
        self._validator = jsonschema.Draft4Validator(translated, format_checker=_FORMATS)

    def causes(self, obj: Obj) -> list[Cause]:
        """Every rule ``obj`` breaks (``metadata`` is the API's to check, not the schema's)."""
        body = {k: v for k, v in obj.items() if k != "metadata"}
        out: list[Cause] = []
        seen: set[tuple[str, str]] = set()
        for err in sorted(self._validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path]):
            for cause in _causes(err):
                if (cause["field"], cause["message"]) not in seen:
                    seen.add((cause["field"], cause["message"]))
                    out.append(cause)
        out.extend(list_causes(self.schema, body))
        return out


def field_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out = f"{out}[{p}]" if isinstance(p, int) else _path(out, str(p))
    return out


def _shown(value: Any) -> str:
    """A value in a cause's message: scalars as JSON, objects and lists by their type."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value, ensure_ascii=False)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _cause(reason: str, field: str, message: str) -> Cause:
    return {"reason": reason, "message": message, "field": field}


def _causes(err: jsonschema.ValidationError) -> list[Cause]:
    field = field_path(err.absolute_path)
    where = field or "<root>"
    value, rule, kw = err.instance, err.validator_value, err.validator
    invalid = "FieldValueInvalid"
    if kw == "required":
        missing = [p for p in rule if isinstance(value, dict) and p not in value]
        return [_cause("FieldValueRequired", _path(field, p), "Required value") for p in missing]
    if kw == "type":
        want = rule if isinstance(rule, str) else ", ".join(t for t in rule if t != "null")
        got = _json_type(value)
        return [_cause("FieldValueTypeInvalid", where,
                       f'Invalid value: "{got}": {where} in body must be of type {want}: "{got}"')]
    if kw == "enum":
        allowed = ", ".join(json.dumps(v, ensure_ascii=False) for v in rule if v is not None)
        return [_cause("FieldValueNotSupported", where, f"Unsupported value: {_shown(value)}: supported values: {allowed}")]
    if kw == "pattern":
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body should match '{rule}'")]
    if kw in ("minimum", "maximum"):
        schema = err.schema if isinstance(err.schema, dict) else {}
        exclusive = schema.get("exclusiveMinimum" if kw == "minimum" else "exclusiveMaximum") is True
        words = {("minimum", False): "greater than or equal to", ("minimum", True): "greater than",
                 ("maximum", False): "less than or equal to", ("maximum", True): "less than"}[(kw, exclusive)]
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body should be {words} {rule}")]
    if kw == "minLength":
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body should be at least {rule} chars long")]
    if kw == "maxLength":
        return [_cause("FieldValueTooLong", where, f"Too long: may not be more than {rule} bytes")]
    if kw == "minItems":
        return [_cause(invalid, where, f"Invalid value: {len(value)}: {where} in body should have at least {rule} items")]
    if kw == "maxItems":
        return [_cause("FieldValueTooMany", where, f"Too many: {len(value)}: must have at most {rule} items")]
    if kw == "minProperties":
        return [_cause(invalid, where, f"Invalid value: {len(value)}: {where} in body should have at least {rule} properties")]
    if kw == "maxProperties":
        return [_cause("FieldValueTooMany", where, f"Too many: {len(value)}: must have at most {rule} items")]
    if kw == "uniqueItems":
        return [_cause("FieldValueDuplicate", where, f"Duplicate value: {where} in body shouldn't contain duplicates")]
    if kw == "format":
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body must be of type {rule}: {_shown(value)}")]
    if kw == "multipleOf":
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body should be a multiple of {rule}")]
    if kw == "oneOf":
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body must validate one and only one schema (oneOf)")]
    if kw == "anyOf":
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body must validate at least one schema (anyOf)")]
    if kw == "not":
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body must not validate the schema (not)")]
    if kw == "additionalProperties":
        return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {where} in body must not have additional properties")]
    return [_cause(invalid, where, f"Invalid value: {_shown(value)}: {err.message}")]


def list_causes(schema: Obj, value: Any, path: str = "") -> list[Cause]:
    """``x-kubernetes-list-type``: ``map`` items unique by their ``x-kubernetes-list-map-keys``,
    ``set`` items unique."""
    if not isinstance(schema, dict):
        return []
    out: list[Cause] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key) if key in props else extra
            if isinstance(sub, dict):
                out.extend(list_causes(sub, item, _path(path, key)))
    elif isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: list[Any] = []
        for i, item in enumerate(value):
            if list_type == "map" and isinstance(item, dict):
                ident = {k: item.get(k) for k in keys}
            elif list_type == "set":
                ident = item
            else:
                ident = None
            if ident is not None:
                if ident in seen:
                    out.append(_cause("FieldValueDuplicate", f"{path}[{i}]",
                                      f"Duplicate value: {json.dumps(ident, ensure_ascii=False, sort_keys=True)}"))
                else:
                    seen.append(ident)
            items = schema.get("items")
            if isinstance(items, dict):
                out.extend(list_causes(items, item, f"{path}[{i}]"))
    return out
