"""The JSONPath subset of CRD printer columns and scale paths, parsed and evaluated (pure).

What ``additionalPrinterColumns[].jsonPath`` uses in practice, as kube-apiserver's (client-go's
``jsonpath``) reads it without the surrounding braces:

- fields: ``.spec.replicas``, ``.metadata.labels.app\\.kubernetes\\.io/name`` (``\\.`` escapes a
  dot), ``['app.kubernetes.io/name']``;
- list items: ``[0]``, ``[-1]``, ``[*]`` (and ``.*`` for every value of a map);
- filters: ``[?(@.type=="Ready")]``, ``[?(@.port>=80)]``, ``[?(@.ready)]`` (the field exists);
  string, number and boolean literals, ``== != < <= > >=``.

Not supported (:class:`JSONPathError` at CRD creation, with what to write instead): recursive
descent ``..``, slices ``[1:3]``, unions ``[0,1]``, ``range``/``end`` templates, functions.
:func:`find` returns every value a path reaches, in document order; a column shows the first.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Union


class JSONPathError(ValueError):
    """A path outside the supported subset, or malformed."""


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Index:
    index: int


@dataclass(frozen=True)
class Wildcard:
    """``[*]`` on a list, ``.*`` on a map: every element."""


@dataclass(frozen=True)
class Filter:
    """``[?(@<path> <op> <literal>)]``; ``op`` None tests that the path exists."""

    path: tuple["Step", ...]
    op: str | None
    value: Any = None


Step = Union[Field, Index, Wildcard, Filter]

_NAME = re.compile(r"(?:[A-Za-z0-9_$/-]|\\.)+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_OPS = ("==", "!=", "<=", ">=", "<", ">")


def parse(text: str) -> tuple[Step, ...]:
    """``.spec.x[0].y`` (an optional ``{...}`` around it is accepted) -> steps."""
    src = text.strip()
    if src.startswith("{") and src.endswith("}"):
        src = src[1:-1].strip()
    if not src:
        raise JSONPathError("empty JSONPath; write a field path such as .spec.replicas")
    if src.startswith("$"):
        src = src[1:]
    steps, pos = _steps(src, 0, stop="")
    if pos != len(src):
        raise JSONPathError(f"unexpected {src[pos:]!r} in JSONPath {text!r}")
    if not steps:
        raise JSONPathError(f"JSONPath {text!r} names no field; write a field path such as .spec.replicas")
    return tuple(steps)


def _steps(src: str, pos: int, *, stop: str) -> tuple[list[Step], int]:
    steps: list[Step] = []
    while pos < len(src) and src[pos] not in stop:
        ch = src[pos]
        if src.startswith("..", pos):
            raise JSONPathError(f"recursive descent '..' is not supported (in {src!r}); name each field")
        if ch == ".":
            pos += 1
            if pos < len(src) and src[pos] == "*":
                steps.append(Wildcard())
                pos += 1
                continue
            m = _NAME.match(src, pos)
            if not m:
                raise JSONPathError(f"expected a field name after '.' at {src[pos - 1:]!r}")
            steps.append(Field(re.sub(r"\\(.)", r"\1", m.group())))
            pos = m.end()
        elif ch == "[":
            step, pos = _bracket(src, pos)
            steps.append(step)
        elif not steps and _NAME.match(src, pos):
            m = _NAME.match(src, pos)
            assert m is not None
            steps.append(Field(re.sub(r"\\(.)", r"\1", m.group())))
            pos = m.end()
        else:
            raise JSONPathError(f"unexpected {ch!r} at {src[pos:]!r}; paths look like .spec.x[0].y")
    return steps, pos


def _bracket(src: str, pos: int) -> tuple[Step, int]:
    end_of = src.find("]", pos)
    if end_of < 0:
        raise JSONPathError(f"unclosed '[' in {src!r}")
    inner_start = pos + 1
    if src.startswith("?(", inner_start):
        return _filter(src, inner_start + 2)
    if src[inner_start:inner_start + 1] in ("'", '"'):
        quote = src[inner_start]
        close = src.find(quote, inner_start + 1)
        if close < 0 or src[close + 1:close + 2] != "]":
            raise JSONPathError(f"unclosed quoted name in {src!r}")
        return Field(src[inner_start + 1:close]), close + 2
    inner = src[inner_start:end_of].strip()
    if inner == "*":
        return Wildcard(), end_of + 1
    if re.fullmatch(r"-?\d+", inner):
        return Index(int(inner)), end_of + 1
    if ":" in inner or "," in inner:
        raise JSONPathError(f"slices and unions ([{inner}]) are not supported; use [N], [*] or a filter")
    raise JSONPathError(f"invalid subscript [{inner}]; use [N], [*], ['name'] or [?(@.field==\"value\")]")


def _filter(src: str, pos: int) -> tuple[Step, int]:
    while pos < len(src) and src[pos] == " ":
        pos += 1
    if not src.startswith("@", pos):
        raise JSONPathError(f"a filter starts with @ (e.g. [?(@.type==\"Ready\")]), not {src[pos:]!r}")
    path, pos = _steps(src, pos + 1, stop=" =!<>)")
    while pos < len(src) and src[pos] == " ":
        pos += 1
    op = next((o for o in _OPS if src.startswith(o, pos)), None)
    value: Any = None
    if op is not None:
        pos += len(op)
        while pos < len(src) and src[pos] == " ":
            pos += 1
        value, pos = _literal(src, pos)
        while pos < len(src) and src[pos] == " ":
            pos += 1
    if not src.startswith(")]", pos):
        raise JSONPathError(f"a filter ends with )], at {src[pos:]!r}")
    return Filter(tuple(path), op, value), pos + 2


def _literal(src: str, pos: int) -> tuple[Any, int]:
    if pos < len(src) and src[pos] in ("'", '"'):
        quote = src[pos]
        close = src.find(quote, pos + 1)
        if close < 0:
            raise JSONPathError(f"unclosed string in filter {src!r}")
        return src[pos + 1:close], close + 1
    for word, value in (("true", True), ("false", False)):
        if src.startswith(word, pos):
            return value, pos + len(word)
    m = _NUMBER.match(src, pos)
    if m:
        text = m.group()
        return (float(text) if "." in text else int(text)), m.end()
    raise JSONPathError(f"expected a string, number or boolean in the filter at {src[pos:]!r}")


def render(steps: tuple[Step, ...]) -> str:
    """The path back as text (``parse(render(p)) == p``)."""
    out = []
    for s in steps:
        if isinstance(s, Field):
            out.append(f".{s.name}" if re.fullmatch(r"[A-Za-z0-9_$/-]+", s.name) else f"['{s.name}']")
        elif isinstance(s, Index):
            out.append(f"[{s.index}]")
        elif isinstance(s, Wildcard):
            out.append("[*]")
        else:
            cond = "@" + render(s.path)
            if s.op is not None:
                cond += s.op + (json.dumps(s.value) if not isinstance(s.value, bool) else str(s.value).lower())
            out.append(f"[?({cond})]")
    return "".join(out)


def find(steps: tuple[Step, ...], obj: Any) -> list[Any]:
    """Every value ``steps`` reach in ``obj`` (missing fields reach nothing)."""
    current = [obj]
    for step in steps:
        nxt: list[Any] = []
        for value in current:
            if isinstance(step, Field):
                if isinstance(value, dict) and step.name in value:
                    nxt.append(value[step.name])
            elif isinstance(step, Index):
                if isinstance(value, list) and -len(value) <= step.index < len(value):
                    nxt.append(value[step.index])
            elif isinstance(step, Wildcard):
                if isinstance(value, list):
                    nxt.extend(value)
                elif isinstance(value, dict):
                    nxt.extend(value.values())
            else:
                items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
                nxt.extend(item for item in items if _holds(step, item))
        current = nxt
    return current


def _holds(f: Filter, item: Any) -> bool:
    found = find(f.path, item)
    if f.op is None:
        return bool(found)
    if not found:
        return False
    have, want = found[0], f.value
    if f.op in ("==", "!="):
        same = _same(have, want)
        return same if f.op == "==" else not same
    numbers = (int, float)
    if isinstance(have, bool) or isinstance(want, bool):
        return False
    if isinstance(have, numbers) and isinstance(want, numbers) or isinstance(have, str) and isinstance(want, str):
        return {"<": have < want, "<=": have <= want, ">": have > want, ">=": have >= want}[f.op]
    return False


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def set_value(steps: tuple[Step, ...], obj: dict, value: Any) -> None:
    """Set the field a plain ``.a.b.c`` path names, creating objects on the way (scale paths)."""
    if not steps or not all(isinstance(s, Field) for s in steps):
        raise JSONPathError(f"{render(steps)} is not a plain field path; write it as .spec.replicas")
    cur = obj
    for s in steps[:-1]:
        assert isinstance(s, Field)
        nxt = cur.get(s.name)
        if not isinstance(nxt, dict):
            nxt = cur[s.name] = {}
        cur = nxt
    last = steps[-1]
    assert isinstance(last, Field)
    cur[last.name] = value
