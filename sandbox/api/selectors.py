"""Label and field selectors: pure parsers over query strings, and matchers over objects.

- :func:`parse_label_selector` — ``a=b,c!=d,e in (x,y),f notin (z),g,!h,n>3`` → :class:`LabelSelector`
- :func:`label_selector_from_dict` — ``{matchLabels, matchExpressions}`` (a spec's selector) → the same
- :func:`parse_field_selector` — ``metadata.name=web,spec.nodeName!=`` → :class:`FieldSelector`
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .validation import check_label_value, check_qualified_name


class SelectorError(ValueError):
    """A selector string or dict cannot be parsed; the message says which part and why."""



@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        if op in ("=", "in"):
            return self.key in labels and labels[self.key] in self.values
        if op in ("!=", "notin"):
            return self.key not in labels or labels[self.key] not in self.values
        value = labels.get(self.key)
        if value is None:
            return False
        try:
            have, want = int(value), int(self.values[0])
        except ValueError:
            return False
        return have > want if op == "gt" else have < want

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        if self.op in ("gt", "lt"):
            return f"{self.key}{'>' if self.op == 'gt' else '<'}{self.values[0]}"
        return f"{self.key}{self.op}{self.values[0]}"


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


EVERYTHING = LabelSelector()

# ---- label selector strings ---------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(==|!=|=|!|\(|\)|,|>|<)|([^\s!=(),<>]+))")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unable to parse requirement: unexpected character at position {pos} in {text!r}")
        out.append(m.group(1) or m.group(2))
        pos = m.end()
    return out


_SPECIAL = {"==", "!=", "=", "!", "(", ")", ",", ">", "<"}


def _check_key(key: str) -> str:
    errs = check_qualified_name(key)
    if errs:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}: {'; '.join(errs)}")
    return key


def _check_value(value: str) -> str:
    errs = check_label_value(value)
    if errs:
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r}: {'; '.join(errs)}")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse the ``labelSelector`` query parameter the way the Kubernetes API server does."""
    if text is None or not text.strip():
        return EVERYTHING
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def peek() -> str | None:
        return toks[i] if i < len(toks) else None

    while True:
        tok = peek()
        if tok is None:
            raise SelectorError(f"unable to parse requirement: found end of input, expected a label key in {text!r}")
        if tok == "!":
            i += 1
            key = peek()
            if key is None or key in _SPECIAL:
                raise SelectorError(f"unable to parse requirement: expected a label key after '!' in {text!r}")
            i += 1
            reqs.append(Requirement(_check_key(key), "!"))
        elif tok in _SPECIAL:
            raise SelectorError(f"unable to parse requirement: found {tok!r}, expected a label key in {text!r}")
        else:
            key = _check_key(tok)
            i += 1
            op = peek()
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
            elif op in ("=", "==", "!="):
                i += 1
                value = peek()
                if value is None or value == ",":
                    value = ""
                elif value in _SPECIAL:
                    raise SelectorError(f"unable to parse requirement: found {value!r}, expected a value for {key!r}")
                else:
                    i += 1
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (_check_value(value),)))
            elif op in ("in", "notin"):
                i += 1
                if peek() != "(":
                    raise SelectorError(f"unable to parse requirement: expected '(' after {op!r} for {key!r}")
                i += 1
                values: list[str] = []
                expect_value = True
                while True:
                    tok2 = peek()
                    if tok2 is None:
                        raise SelectorError(f"unable to parse requirement: missing ')' in {text!r}")
                    if tok2 == ")":
                        if expect_value and values:
                            values.append("")
                        i += 1
                        break
                    if tok2 == ",":
                        if expect_value:
                            values.append("")
                        expect_value = True
                        i += 1
                        continue
                    if tok2 in _SPECIAL or not expect_value:
                        raise SelectorError(f"unable to parse requirement: found {tok2!r} in the value set of {key!r}")
                    values.append(_check_value(tok2))
                    expect_value = False
                    i += 1
                if not values:
                    raise SelectorError(f"unable to parse requirement: for 'in', 'notin' operators, values set can't be empty ({key!r})")
                reqs.append(Requirement(key, op, tuple(sorted(set(values)))))
            elif op in (">", "<"):
                i += 1
                value = peek()
                if value is None or value in _SPECIAL or not re.fullmatch(r"-?\d+", value):
                    raise SelectorError(f"unable to parse requirement: for 'gt', 'lt' operators, the value must be an integer ({key!r})")
                i += 1
                reqs.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
            else:
                raise SelectorError(f"unable to parse requirement: found {op!r}, expected one of '=', '!=', 'in', 'notin', ',' after {key!r}")
        tok = peek()
        if tok is None:
            break
        if tok != ",":
            raise SelectorError(f"unable to parse requirement: found {tok!r}, expected ',' in {text!r}")
        i += 1
    return LabelSelector(tuple(reqs))


def label_selector_from_dict(selector: Mapping[str, Any] | None) -> LabelSelector:
    """A ``metav1.LabelSelector`` (matchLabels + matchExpressions) as a :class:`LabelSelector`."""
    if not selector:
        return EVERYTHING
    reqs: list[Requirement] = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        reqs.append(Requirement(_check_key(key), "=", (_check_value(str(value)),)))
    for expr in selector.get("matchExpressions") or []:
        key = _check_key(str(expr.get("key", "")))
        op = expr.get("operator")
        values = [_check_value(str(v)) for v in expr.get("values") or []]
        if op in ("In", "NotIn"):
            if not values:
                raise SelectorError(f"matchExpressions for {key!r}: values must be non-empty for {op}")
            reqs.append(Requirement(key, op.lower(), tuple(sorted(set(values)))))
        elif op in ("Exists", "DoesNotExist"):
            if values:
                raise SelectorError(f"matchExpressions for {key!r}: values must be empty for {op}")
            reqs.append(Requirement(key, "exists" if op == "Exists" else "!"))
        else:
            raise SelectorError(f"matchExpressions for {key!r}: {op!r} is not a valid operator; use In, NotIn, Exists or DoesNotExist")
    return LabelSelector(tuple(reqs))


# ---- field selectors ----------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negate: bool
    value: str


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def fields(self) -> set[str]:
        return {r.field for r in self.requirements}

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for r in self.requirements:
            have = field_value(obj, r.field)
            if (have == r.value) == r.negate:
                return False
        return True

    def __str__(self) -> str:
        return ",".join(f"{r.field}{'!=' if r.negate else '='}{_escape(r.value)}" for r in self.requirements)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise SelectorError(f"invalid field selector value {value!r}: '\\' must escape one of '\\', ',' or '='")
            out.append(value[i + 1])
            i += 2
            continue
        if c in ",=":
            raise SelectorError(f"invalid field selector value {value!r}: ',' and '=' must be escaped")
        out.append(c)
        i += 1
    return "".join(out)


def parse_field_selector(text: str | None) -> FieldSelector:
    if text is None or not text.strip():
        return FieldSelector()
    reqs: list[FieldRequirement] = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            continue
        m = re.match(r"^([^=!\\]+?)\s*(!=|==|=)(.*)$", term.strip())
        if not m:
            raise SelectorError(f"invalid field selector term {term!r}: expected field=value, field==value or field!=value")
        reqs.append(FieldRequirement(m.group(1).strip(), m.group(2) == "!=", _unescape(m.group(3))))
    return FieldSelector(tuple(reqs))


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a field selector compares: a dotted path, missing → "", booleans lowercase."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
        if cur is None:
            return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, (dict, list)):
        return ""
    return str(cur)


def unsupported_fields(selector: FieldSelector, allowed: Iterable[str]) -> list[str]:
    allowed_set = set(allowed)
    return sorted(f for f in selector.fields() if f not in allowed_set)
