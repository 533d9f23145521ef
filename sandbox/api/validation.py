"""Kubernetes' name and label rules, as pure functions returning ``details.causes`` entries.

Each ``check_*`` returns a list of messages (empty when valid), worded like the real API server so
that users see familiar errors; :func:`object_meta_causes` turns them into causes for a 422.
"""
from __future__ import annotations

import json
import re
from typing import Any

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
QUALIFIED_NAME_MAX = 63
ANNOTATIONS_MAX_BYTES = 256 * 1024
"""all annotation keys and values together (why client-side ``kubectl apply`` of a large CRD fails:
its last-applied-configuration copy does not fit; ``--server-side`` does)"""

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_QUALIFIED_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def check_dns1123_label(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_LABEL_MAX:
        errs.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _DNS1123_LABEL.match(value):
        errs.append(_LABEL_MSG)
    return errs


def check_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        errs.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        errs.append(_SUBDOMAIN_MSG)
    return errs


def check_qualified_name(value: str) -> list[str]:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS-1123 subdomain, name ≤ 63."""
    errs: list[str] = []
    prefix, sep, name = value.rpartition("/")
    if sep and not prefix:
        return ["prefix part must be non-empty"]
    if "/" in prefix:
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character with an optional DNS subdomain prefix "
            "and '/' (e.g. 'example.com/MyName')"
        ]
    if prefix:
        errs.extend(f"prefix part {m}" for m in check_dns1123_subdomain(prefix))
    if not name:
        errs.append("name part must be non-empty")
    else:
        if len(name) > QUALIFIED_NAME_MAX:
            errs.append(f"name part must be no more than {QUALIFIED_NAME_MAX} characters")
        if not _QUALIFIED_NAME.match(name):
            errs.append(_QUALIFIED_MSG)
    return errs


def check_label_value(value: str) -> list[str]:
    errs = []
    if len(value) > LABEL_VALUE_MAX:
        errs.append(f"must be no more than {LABEL_VALUE_MAX} characters")
    if not _LABEL_VALUE.match(value):
        errs.append(_VALUE_MSG)
    return errs


def _cause(field: str, value: Any, message: str) -> dict[str, str]:
    return {
        "reason": "FieldValueInvalid",
        "message": f"Invalid value: {json.dumps(value)}: {message}",
        "field": field,
    }


def required(field: str) -> dict[str, str]:
    return {"reason": "FieldValueRequired", "message": "Required value", "field": field}


def invalid_cause(field: str, value: Any, message: str) -> dict[str, str]:
    return _cause(field, value, message)


def object_meta_causes(meta: dict[str, Any], *, name_rule: str = "subdomain") -> list[dict[str, str]]:
    """Causes for ``metadata``: name (``label`` or ``subdomain`` rule), labels and annotation keys."""
    causes: list[dict[str, str]] = []
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        causes.append({"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"})
    else:
        check = check_dns1123_label if name_rule == "label" else check_dns1123_subdomain
        causes.extend(_cause("metadata.name", name, m) for m in check(name))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(_cause("metadata.labels", labels, "must be a map of string keys to string values"))
    else:
        for key, value in labels.items():
            causes.extend(_cause("metadata.labels", key, m) for m in check_qualified_name(key))
            if not isinstance(value, str):
                causes.append(_cause(f"metadata.labels[{key}]", value, "label values must be strings"))
            else:
                causes.extend(_cause("metadata.labels", value, m) for m in check_label_value(value))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        causes.append(_cause("metadata.annotations", annotations, "must be a map of string keys to string values"))
    else:
        for key, value in annotations.items():
            causes.extend(_cause("metadata.annotations", key, m) for m in check_qualified_name(key))
            if not isinstance(value, str):
                causes.append(_cause(f"metadata.annotations[{key}]", value, "annotation values must be strings"))
        size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
        if size > ANNOTATIONS_MAX_BYTES:
            causes.append({"reason": "FieldValueTooLong", "field": "metadata.annotations",
                           "message": f"Too long: may not be more than {ANNOTATIONS_MAX_BYTES} bytes"})
    return causes
