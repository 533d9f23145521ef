"""Gateway API HTTPRoutes (``gateway.networking.k8s.io/v1``) in the mesh profile (GAMMA), as frozen values.

- ``parse_route`` turns one raw HTTPRoute into an ``HttpRoute`` or raises ``RouteError`` naming the
  route, the field (``spec.rules[0].filters``) and what to change. Routes attach to a Service with
  ``parentRefs: [{group: "", kind: Service, name, port?}]``; other parents (Gateways) are not ours.
- ``RouteTable.build`` parses a snapshot of routes once (bad routes are left out and listed in
  ``errors``) and orders every match per Service port by the spec's precedence: Exact path, then
  the longest PathPrefix, then RegularExpression; then method, most header matches, most query
  matches; then the oldest route, then ``namespace/name``; then rule and match order.
- ``RouteTable.select`` is what the engine calls per request (pure, no awaits): the first match
  wins; a Service port no route attaches to gets ``default_rule`` (everything to the Service itself);
  ``None`` means routes exist and none matched (404).
- ``parse_duration`` reads GEP-1742 durations (``300ms``, ``1m30s``) into seconds.
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict
from urllib.parse import parse_qsl

from waypoint.errors import RouteError

DEFAULT_RETRY_ATTEMPTS = 1
"""GEP-1731 leaves the default to the implementation: one retry when ``retry`` names no ``attempts``."""
DEFAULT_RETRY_BACKOFF = 0.025
"""Seconds before the first retry when ``retry.backoff`` is not set (Envoy's base interval); doubles per retry."""
MAX_WEIGHT = 1_000_000
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

_DURATION = re.compile(r"^(?:[0-9]{1,5}(?:h|ms|m|s)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class ParentRefObject(TypedDict, total=False):
    group: str
    kind: str
    name: str
    namespace: str
    port: int
    sectionName: str


class HTTPRouteObject(TypedDict, total=False):
    """The fields of a raw HTTPRoute this module reads (as the API server returns them)."""

    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    spec: dict[str, Any]


def parse_duration(text: str) -> float:
    """GEP-1742 duration (``^([0-9]{1,5}(h|m|s|ms)){1,4}$``) in seconds; raises ``ValueError``."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration; write e.g. 300ms, 10s, 1m or 1h30m")
    return sum(int(n) * _UNIT[unit] for n, unit in _DURATION_PART.findall(text))


# ------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class PathMatch:
    kind: str  # "Exact" | "PathPrefix" | "RegularExpression"
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False)

    def matches(self, path: str) -> bool:
        if self.kind == "Exact":
            return path == self.value
        if self.kind == "PathPrefix":
            prefix = self.value.rstrip("/")  # "a trailing / is ignored": /abc/ is /abc
            return not prefix or path == prefix or path.startswith(prefix + "/")
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """One header or query parameter match: ``name`` (lowercase for headers), Exact or RegularExpression."""

    name: str
    kind: str
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False)

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(actual) is not None
        return actual == self.value


@dataclass(frozen=True, slots=True)
class Match:
    path: PathMatch = PathMatch("PathPrefix", "/")
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A Service of the route's namespace and its port; ``weight`` 0 is never chosen."""

    name: str
    namespace: str
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int  # retries after the first attempt (GEP-1731)
    codes: frozenset[int]  # response codes to retry; connect failures are always retried
    backoff: float  # seconds before the first retry; doubles per retry


@dataclass(frozen=True, slots=True)
class Rule:
    route: str  # "namespace/name" of its HTTPRoute ("" for the default rule)
    index: int  # position in ``spec.rules``
    backends: tuple[BackendRef, ...]
    request_timeout: float | None = None  # whole transaction incl. retries; None: none
    backend_timeout: float | None = None  # per attempt
    retry: Retry | None = None

    def pick_backend(self, rng: random.Random) -> BackendRef | None:
        """A backend by weight; ``None`` when there is none with weight > 0 (answer 500)."""
        total = sum(b.weight for b in self.backends)
        if total <= 0:
            return None
        point = rng.random() * total
        for backend in self.backends:
            point -= backend.weight
            if point < 0 and backend.weight > 0:
                return backend
        return next(b for b in reversed(self.backends) if b.weight > 0)  # float rounding at the top end


@dataclass(frozen=True, slots=True)
class ParentRef:
    namespace: str
    name: str
    port: int | None  # None: every port of the Service


@dataclass(frozen=True, slots=True)
class HttpRoute:
    namespace: str
    name: str
    created: str  # metadata.creationTimestamp (RFC 3339, sorts as text); "" when unknown
    parents: tuple[ParentRef, ...]
    rules: tuple[tuple[Rule, tuple[Match, ...]], ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def default_rule(*, namespace: str, service: str, port: int) -> Rule:
    """What a Service port without routes does: everything to the Service itself, no retries or timeouts."""
    return Rule(route="", index=0, backends=(BackendRef(name=service, namespace=namespace, port=port),))


# ------------------------------------------------------------------- parsing


class _Reader:
    """Reads a raw object and raises ``RouteError`` naming the route and the field."""

    __slots__ = ("route",)

    def __init__(self, route: str) -> None:
        self.route = route

    def fail(self, where: str, message: str) -> RouteError:
        return RouteError(f"httproute {self.route}: {where}: {message}")

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected an object, got {type(value).__name__}")
        return value

    def items(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {type(value).__name__}")
        return value

    def string(self, value: Any, where: str, *, default: str | None = None) -> str:
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or not value:
            raise self.fail(where, "expected a non-empty string")
        return value

    def integer(self, value: Any, where: str, *, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(where, f"expected an integer from {low} to {high}, got {value!r}")
        return value

    def regex(self, value: str, where: str) -> re.Pattern[str]:
        try:
            return re.compile(value)
        except re.error as exc:
            raise self.fail(where, f"invalid regular expression {value!r}: {exc}") from exc

    def duration(self, value: Any, where: str) -> float | None:
        """Seconds; ``None`` for no timeout (absent or zero, as GEP-1742 says)."""
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from exc
        return seconds or None

    def unsupported(self, obj: Mapping[str, Any], where: str, known: set[str]) -> None:
        for key, value in obj.items():
            if key not in known and value not in (None, [], {}):
                raise self.fail(f"{where}.{key}" if where else key,
                                "is not supported by the ambit waypoint yet; remove it (docs/waypoint.md lists "
                                "what is supported)")


def parse_route(raw: Mapping[str, Any]) -> HttpRoute | None:
    """One raw HTTPRoute; ``None`` when none of its parents is a Service (not a mesh route).

    Raises ``RouteError`` for what the waypoint does not support or cannot read."""
    meta = raw.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")
    r = _Reader(f"{namespace}/{name}")
    spec = r.mapping(raw.get("spec"), "spec")
    parents = []
    for i, ref in enumerate(r.items(spec.get("parentRefs"), "spec.parentRefs")):
        where = f"spec.parentRefs[{i}]"
        ref = r.mapping(ref, where)
        if ref.get("kind") != "Service" or ref.get("group", "") not in ("", "core"):
            continue  # a Gateway (or anything else) is not ours to serve
        r.unsupported(ref, where, {"group", "kind", "name", "namespace", "port"})
        ref_ns = r.string(ref.get("namespace"), f"{where}.namespace", default=namespace)
        if ref_ns != namespace:
            raise r.fail(f"{where}.namespace", f"routes for a service of another namespace ({ref_ns}) are not "
                                               "supported yet; create the route in the service's namespace")
        port = ref.get("port")
        parents.append(ParentRef(namespace=ref_ns, name=r.string(ref.get("name"), f"{where}.name"),
                                 port=None if port is None else r.integer(port, f"{where}.port", low=1, high=65535)))
    if not parents:
        return None
    r.unsupported(spec, "spec", {"parentRefs", "rules", "hostnames"})  # hostnames do not apply to mesh routes
    raw_rules = r.items(spec.get("rules"), "spec.rules") or [{}]
    rules = tuple(_rule(r, rule, i, namespace) for i, rule in enumerate(raw_rules))
    return HttpRoute(namespace=namespace, name=name, created=str(meta.get("creationTimestamp") or ""),
                     parents=tuple(parents), rules=rules)


def _rule(r: _Reader, raw: Any, index: int, namespace: str) -> tuple[Rule, tuple[Match, ...]]:
    where = f"spec.rules[{index}]"
    raw = r.mapping(raw, where)
    r.unsupported(raw, where, {"name", "matches", "backendRefs", "timeouts", "retry"})
    matches = tuple(_match(r, m, f"{where}.matches[{j}]") for j, m in enumerate(r.items(raw.get("matches"),
                                                                                       f"{where}.matches")))
    backends = []
    for j, ref in enumerate(r.items(raw.get("backendRefs"), f"{where}.backendRefs")):
        bw = f"{where}.backendRefs[{j}]"
        ref = r.mapping(ref, bw)
        r.unsupported(ref, bw, {"group", "kind", "name", "namespace", "port", "weight"})
        if ref.get("group", "") not in ("", "core") or ref.get("kind", "Service") != "Service":
            raise r.fail(bw, f"backend kind {ref.get('group', '')}/{ref.get('kind')} is not supported; use a Service")
        ns = r.string(ref.get("namespace"), f"{bw}.namespace", default=namespace)
        if ns != namespace:
            raise r.fail(f"{bw}.namespace", "backends in another namespace need a ReferenceGrant, which is not "
                                            "supported yet; use a Service of the route's namespace")
        if ref.get("port") is None:
            raise r.fail(f"{bw}.port", "a Service backend needs its port")
        backends.append(BackendRef(name=r.string(ref.get("name"), f"{bw}.name"), namespace=ns,
                                   port=r.integer(ref.get("port"), f"{bw}.port", low=1, high=65535),
                                   weight=r.integer(ref.get("weight", 1), f"{bw}.weight", low=0, high=MAX_WEIGHT)))
    timeouts = r.mapping(raw.get("timeouts"), f"{where}.timeouts")
    r.unsupported(timeouts, f"{where}.timeouts", {"request", "backendRequest"})
    request = r.duration(timeouts.get("request"), f"{where}.timeouts.request")
    backend = r.duration(timeouts.get("backendRequest"), f"{where}.timeouts.backendRequest")
    if request is not None and backend is not None and backend > request:
        raise r.fail(f"{where}.timeouts.backendRequest", "must not be longer than timeouts.request")
    retry = None
    if raw.get("retry") is not None:
        rw = f"{where}.retry"
        spec = r.mapping(raw.get("retry"), rw)
        r.unsupported(spec, rw, {"attempts", "codes", "backoff"})
        codes = frozenset(r.integer(c, f"{rw}.codes[{k}]", low=400, high=599)
                          for k, c in enumerate(r.items(spec.get("codes"), f"{rw}.codes")))
        backoff = r.duration(spec.get("backoff"), f"{rw}.backoff")
        retry = Retry(attempts=r.integer(spec.get("attempts", DEFAULT_RETRY_ATTEMPTS), f"{rw}.attempts", low=0,
                                         high=100),
                      codes=codes, backoff=DEFAULT_RETRY_BACKOFF if backoff is None else backoff)
    rule = Rule(route=r.route, index=index, backends=tuple(backends), request_timeout=request,
                backend_timeout=backend, retry=retry)
    return rule, matches or (Match(),)


def _match(r: _Reader, raw: Any, where: str) -> Match:
    raw = r.mapping(raw, where)
    r.unsupported(raw, where, {"path", "headers", "queryParams", "method"})
    path = Match().path
    if raw.get("path") is not None:
        pw = f"{where}.path"
        p = r.mapping(raw["path"], pw)
        kind = p.get("type", "PathPrefix")
        value = r.string(p.get("value"), f"{pw}.value", default="/")
        if kind in ("Exact", "PathPrefix"):
            if not value.startswith("/"):
                raise r.fail(f"{pw}.value", f"{value!r} must start with /")
            path = PathMatch(kind, value)
        elif kind == "RegularExpression":
            path = PathMatch(kind, value, r.regex(value, f"{pw}.value"))
        else:
            raise r.fail(f"{pw}.type", f"{kind!r} is not a path match type; use Exact, PathPrefix or "
                                       "RegularExpression")
    headers = _values(r, raw.get("headers"), f"{where}.headers", lower=True)
    query = _values(r, raw.get("queryParams"), f"{where}.queryParams", lower=False)
    method = raw.get("method")
    if method is not None and method not in METHODS:
        raise r.fail(f"{where}.method", f"{method!r} is not an HTTP method; use one of {', '.join(sorted(METHODS))}")
    return Match(path=path, headers=headers, query=query, method=method)


def _values(r: _Reader, raw: Any, where: str, *, lower: bool) -> tuple[ValueMatch, ...]:
    out: list[ValueMatch] = []
    seen: set[str] = set()
    for i, item in enumerate(r.items(raw, where)):
        iw = f"{where}[{i}]"
        item = r.mapping(item, iw)
        name = r.string(item.get("name"), f"{iw}.name")
        name = name.lower() if lower else name
        kind = item.get("type", "Exact")
        value = item.get("value")
        if not isinstance(value, str):
            raise r.fail(f"{iw}.value", "expected a string")
        if name in seen:
            continue  # "only the first entry with an equivalent name MUST be considered"
        seen.add(name)
        if kind == "Exact":
            out.append(ValueMatch(name, kind, value))
        elif kind == "RegularExpression":
            out.append(ValueMatch(name, kind, value, r.regex(value, f"{iw}.value")))
        else:
            raise r.fail(f"{iw}.type", f"{kind!r} is not a match type; use Exact or RegularExpression")
    return tuple(out)


# ------------------------------------------------------------------- selecting


class MatchInput(Protocol):
    """What matching reads of a request (``http1.RequestHead`` has it)."""

    method: str
    path: str
    query: str

    def header(self, name: bytes) -> bytes | None: ...


def matches(match: Match, request: MatchInput) -> bool:
    if match.method is not None and match.method != request.method:
        return False
    if not match.path.matches(request.path):
        return False
    for h in match.headers:
        raw = request.header(h.name.encode("latin-1"))
        if not h.matches(None if raw is None else raw.decode("latin-1")):
            return False
    if match.query:
        params: dict[str, str] = {}
        for k, v in parse_qsl(request.query, keep_blank_values=True):
            params.setdefault(k, v)  # the first value of a repeated parameter
        for q in match.query:
            if not q.matches(params.get(q.name)):
                return False
    return True


def _precedence(route: HttpRoute, rule: Rule, j: int, match: Match) -> tuple:
    rank = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}[match.path.kind]
    length = len(match.path.value.rstrip("/") or "/") if match.path.kind != "RegularExpression" else 0
    return (rank, -length, match.method is None, -len(match.headers), -len(match.query),
            route.created, route.key, rule.index, j)


@dataclass(frozen=True, slots=True)
class _Entry:
    match: Match
    rule: Rule


@dataclass(frozen=True)
class RouteTable:
    """Every Service port's matches in precedence order; built once per snapshot, read per request."""

    by_port: Mapping[tuple[str, str, int | None], tuple[_Entry, ...]] = field(default_factory=dict)
    errors: tuple[RouteError, ...] = ()
    routes: tuple[HttpRoute, ...] = ()

    @classmethod
    def build(cls, raw_routes: Iterable[Mapping[str, Any]]) -> RouteTable:
        routes: list[HttpRoute] = []
        errors: list[RouteError] = []
        for raw in raw_routes:
            try:
                route = parse_route(raw)
            except RouteError as exc:
                errors.append(exc)
                continue
            if route is not None:
                routes.append(route)
        keyed: dict[tuple[str, str, int | None], list[tuple[tuple, _Entry]]] = {}
        for route in routes:
            for parent in route.parents:
                for rule, route_matches in route.rules:
                    for j, match in enumerate(route_matches):
                        key = (parent.namespace, parent.name, parent.port)
                        keyed.setdefault(key, []).append((_precedence(route, rule, j, match), _Entry(match, rule)))
        # a port-specific list also holds the port-less routes of its Service
        for (ns, name, port), entries in list(keyed.items()):
            if port is not None:
                entries.extend(keyed.get((ns, name, None), ()))
        by_port = {key: tuple(e for _, e in sorted(entries, key=lambda pe: pe[0])) for key, entries in keyed.items()}
        return cls(by_port=by_port, errors=tuple(errors), routes=tuple(routes))

    def attached(self, *, namespace: str, service: str, port: int) -> bool:
        return (namespace, service, port) in self.by_port or (namespace, service, None) in self.by_port

    def select(self, *, namespace: str, service: str, port: int, request: MatchInput) -> Rule | None:
        """The rule for ``request`` to ``service:port``: the default rule when no route attaches there,
        ``None`` when routes attach and none matches (answer 404)."""
        entries = self.by_port.get((namespace, service, port))
        if entries is None:
            entries = self.by_port.get((namespace, service, None))
            if entries is None:
                return default_rule(namespace=namespace, service=service, port=port)
        for entry in entries:
            if matches(entry.match, request):
                return entry.rule
        return None
