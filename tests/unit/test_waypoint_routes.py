"""HTTPRoute parsing, precedence and matching (waypoint.routes)."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.errors import RouteError
from waypoint.routes import BackendRef, RouteTable, parse_duration, parse_route


@dataclass(frozen=True)
class Req:
    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n.lower() == name]
        return b", ".join(values) if values else None


def route(name: str, rules: list, *, ns: str = "demo", parent: str = "web", port: int | None = None,
          created: str = "2026-01-01T00:00:00Z", **spec) -> dict:
    ref = {"group": "", "kind": "Service", "name": parent}
    if port is not None:
        ref["port"] = port
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": {"parentRefs": [ref], "rules": rules, **spec}}


def to(backend: str, port: int = 80, **extra) -> dict:
    return {"backendRefs": [{"name": backend, "port": port}], **extra}


def chosen(table: RouteTable, req: Req, *, port: int = 80) -> str | None:
    rule = table.select(namespace="demo", service="web", port=port, request=req)
    if rule is None:
        return None
    return rule.backends[0].name if rule.backends else "<none>"


# ------------------------------------------------------------------- durations

@pytest.mark.parametrize(("text", "seconds"), [
    ("300ms", 0.3), ("10s", 10.0), ("1m", 60.0), ("1h", 3600.0), ("1h30m", 5400.0), ("1m30s500ms", 90.5),
    ("0s", 0.0), ("99999ms", 99.999),
], ids=str)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1.5s", "-1s", "1d", "100000s", "1s1s1s1s1s", "1 s", "ms", 5],
                         ids=str)
def test_bad_durations(text) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


_units = st.sampled_from([("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)])


@given(parts=st.lists(st.tuples(st.integers(min_value=0, max_value=99999), _units), min_size=1, max_size=4))
def test_duration_is_the_sum_of_its_parts(parts) -> None:
    text = "".join(f"{n}{unit}" for n, (unit, _) in parts)
    assert parse_duration(text) == pytest.approx(sum(n * scale for n, (_, scale) in parts))


@given(st.text(max_size=12))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        assert parse_duration(text) >= 0
    except ValueError:
        pass


# ------------------------------------------------------------------- parsing

PARSED = {
    "weights-timeouts-retry": route("r", [{
        "backendRefs": [{"name": "v1", "port": 80, "weight": 80}, {"name": "v2", "port": 8080, "weight": 20}],
        "timeouts": {"request": "2s", "backendRequest": "500ms"},
        "retry": {"attempts": 2, "codes": [503, 502], "backoff": "100ms"}}]),
}


def test_a_route_with_everything_supported() -> None:
    parsed = parse_route(PARSED["weights-timeouts-retry"])
    assert parsed is not None
    (rule, matches), = parsed.rules
    assert rule.route == "demo/r"
    assert rule.backends == (BackendRef("v1", "demo", 80, 80), BackendRef("v2", "demo", 8080, 20))
    assert (rule.request_timeout, rule.backend_timeout) == (2.0, 0.5)
    assert rule.retry is not None
    assert (rule.retry.attempts, rule.retry.codes, rule.retry.backoff) == (2, frozenset({502, 503}), 0.1)
    assert matches[0].path.kind == "PathPrefix" and matches[0].path.value == "/"


def test_a_route_for_a_gateway_only_is_not_a_mesh_route() -> None:
    raw = route("r", [to("v1")])
    raw["spec"]["parentRefs"] = [{"name": "ingress"}]  # group/kind default to Gateway
    assert parse_route(raw) is None


BAD = [
    pytest.param([{"filters": [{"type": "RequestHeaderModifier"}], **to("v1")}], {},
                 "spec.rules[0].filters: is not supported", id="filters"),
    pytest.param([{"backendRefs": [{"name": "v1", "port": 80, "filters": [{"type": "X"}]}]}], {},
                 "spec.rules[0].backendRefs[0].filters: is not supported", id="backend-filters"),
    pytest.param([{"backendRefs": [{"name": "v1"}]}], {}, "spec.rules[0].backendRefs[0].port: a Service backend "
                 "needs its port", id="backend-without-port"),
    pytest.param([{"backendRefs": [{"name": "v1", "port": 80, "namespace": "other"}]}], {},
                 "need a ReferenceGrant", id="cross-namespace-backend"),
    pytest.param([{"backendRefs": [{"name": "b", "port": 80, "kind": "Bucket", "group": "s3"}]}], {},
                 "backend kind s3/Bucket is not supported", id="backend-kind"),
    pytest.param([{"backendRefs": [{"name": "v1", "port": 80, "weight": -1}]}], {},
                 "weight: expected an integer from 0 to 1000000", id="negative-weight"),
    pytest.param([{"matches": [{"path": {"type": "Glob", "value": "/*"}}], **to("v1")}], {},
                 "spec.rules[0].matches[0].path.type: 'Glob' is not a path match type", id="path-type"),
    pytest.param([{"matches": [{"path": {"type": "PathPrefix", "value": "api"}}], **to("v1")}], {},
                 "must start with /", id="relative-prefix"),
    pytest.param([{"matches": [{"path": {"type": "RegularExpression", "value": "/(a"}}], **to("v1")}], {},
                 "invalid regular expression", id="bad-regex"),
    pytest.param([{"matches": [{"headers": [{"name": "x", "type": "Prefix", "value": "a"}]}], **to("v1")}], {},
                 "headers[0].type: 'Prefix' is not a match type", id="header-type"),
    pytest.param([{"matches": [{"method": "FETCH"}], **to("v1")}], {}, "'FETCH' is not an HTTP method", id="method"),
    pytest.param([to("v1", timeouts={"request": "1.5s"})], {}, "timeouts.request: '1.5s' is not a duration",
                 id="bad-timeout"),
    pytest.param([to("v1", timeouts={"request": "1s", "backendRequest": "2s"})], {},
                 "must not be longer than timeouts.request", id="backend-timeout-longer"),
    pytest.param([to("v1", retry={"attempts": 2, "codes": [200]})], {}, "codes[0]: expected an integer from 400",
                 id="retry-code"),
    pytest.param([to("v1", sessionPersistence={"type": "Cookie"})], {}, "sessionPersistence: is not supported",
                 id="session-persistence"),
]


@pytest.mark.parametrize(("rules", "spec", "message"), BAD)
def test_unsupported_or_invalid_routes_say_what_and_where(rules, spec, message) -> None:
    with pytest.raises(RouteError) as info:
        parse_route(route("bad", rules, **spec))
    assert str(info.value).startswith("httproute demo/bad: ")
    assert message in str(info.value)


def test_a_consumer_route_is_refused_and_the_table_keeps_the_good_ones() -> None:
    consumer = route("consumer", [to("v1")], ns="client")
    consumer["spec"]["parentRefs"][0]["namespace"] = "demo"
    table = RouteTable.build([consumer, route("good", [to("v2")])])
    assert [str(e) for e in table.errors] == [
        "httproute client/consumer: spec.parentRefs[0].namespace: routes for a service of another namespace "
        "(demo) are not supported yet; create the route in the service's namespace"]
    assert chosen(table, Req()) == "v2"


# ------------------------------------------------------------------- selecting

def m(**match) -> dict:
    return match


PRECEDENCE = [
    pytest.param([route("a", [{"matches": [m(path={"type": "PathPrefix", "value": "/api"})], **to("prefix")},
                              {"matches": [m(path={"type": "Exact", "value": "/api/v1"})], **to("exact")}])],
                 Req(path="/api/v1"), "exact", id="exact-beats-prefix"),
    pytest.param([route("a", [{"matches": [m(path={"type": "PathPrefix", "value": "/api"})], **to("short")},
                              {"matches": [m(path={"type": "PathPrefix", "value": "/api/v1"})], **to("long")}])],
                 Req(path="/api/v1/x"), "long", id="longest-prefix"),
    pytest.param([route("a", [{"matches": [m(path={"type": "RegularExpression", "value": "/api/.*"})],
                               **to("regex")},
                              {"matches": [m(path={"type": "PathPrefix", "value": "/"})], **to("root")}])],
                 Req(path="/api/v1"), "root", id="prefix-beats-regex"),
    pytest.param([route("a", [{"matches": [m(path={"type": "RegularExpression", "value": "/api/v[0-9]+"})],
                               **to("regex")},
                              {"matches": [m(path={"type": "Exact", "value": "/other"})], **to("exact")}])],
                 Req(path="/api/v2"), "regex", id="regex-when-nothing-else"),
    pytest.param([route("a", [{"matches": [m()], **to("any")}, {"matches": [m(method="POST")], **to("post")}])],
                 Req(method="POST"), "post", id="method-beats-none"),
    pytest.param([route("a", [{"matches": [m(headers=[{"name": "a", "value": "1"}])], **to("one")},
                              {"matches": [m(headers=[{"name": "a", "value": "1"}, {"name": "b", "value": "2"}])],
                               **to("two")}])],
                 Req(headers=((b"A", b"1"), (b"b", b"2"))), "two", id="more-headers"),
    pytest.param([route("a", [{"matches": [m(queryParams=[{"name": "x", "value": "1"}])], **to("q")},
                              {"matches": [m(headers=[{"name": "h", "value": "1"}])], **to("h")}])],
                 Req(query="x=1", headers=((b"h", b"1"),)), "h", id="headers-before-query"),
    pytest.param([route("young", [to("young")], created="2026-02-01T00:00:00Z"),
                  route("old", [to("old")], created="2026-01-01T00:00:00Z")],
                 Req(), "old", id="oldest-route"),
    pytest.param([route("b", [to("b")]), route("a", [to("a")])], Req(), "a", id="then-by-name"),
    pytest.param([route("a", [to("first"), to("second")])], Req(), "first", id="then-rule-order"),
    pytest.param([route("a", [{"matches": [m(path={"type": "Exact", "value": "/x"})], **to("x")}])],
                 Req(path="/y"), None, id="no-match-is-none"),
    pytest.param([route("a", [{"matches": [m(path={"type": "Exact", "value": "/x"})], **to("x")}], port=8080)],
                 Req(path="/y"), "web", id="other-port-gets-the-default"),
    pytest.param([route("a", [to("all")]), route("b", [{"matches": [m(path={"type": "Exact", "value": "/p"})],
                                                        **to("port")}], port=80)],
                 Req(path="/p"), "port", id="port-and-portless-routes-merge"),
    pytest.param([route("a", [{"matches": [], "backendRefs": []}])], Req(), "<none>", id="no-backends"),
]


@pytest.mark.parametrize(("routes", "req", "backend"), PRECEDENCE)
def test_precedence(routes: list, req: Req, backend: str | None) -> None:
    assert chosen(RouteTable.build(routes), req) == backend


MATCHING = [
    ({"path": {"type": "PathPrefix", "value": "/abc"}}, Req(path="/abc"), True),
    ({"path": {"type": "PathPrefix", "value": "/abc"}}, Req(path="/abc/"), True),
    ({"path": {"type": "PathPrefix", "value": "/abc"}}, Req(path="/abc/def"), True),
    ({"path": {"type": "PathPrefix", "value": "/abc"}}, Req(path="/abcd"), False),
    ({"path": {"type": "PathPrefix", "value": "/abc/"}}, Req(path="/abc"), True),
    ({"path": {"type": "Exact", "value": "/abc"}}, Req(path="/abc/"), False),
    ({"path": {"type": "RegularExpression", "value": "/a.c"}}, Req(path="/abcd"), False),  # fullmatch
    ({"headers": [{"name": "X-Env", "value": "prod"}]}, Req(headers=((b"x-env", b"prod"),)), True),
    ({"headers": [{"name": "x-env", "value": "prod"}]}, Req(headers=((b"x-env", b"Prod"),)), False),
    ({"headers": [{"name": "x-env", "type": "RegularExpression", "value": "p.*"}]},
     Req(headers=((b"x-env", b"prod"),)), True),
    ({"headers": [{"name": "x-env", "value": "a"}]}, Req(), False),
    ({"queryParams": [{"name": "v", "value": "2"}]}, Req(query="v=2&w=3"), True),
    ({"queryParams": [{"name": "v", "value": "2"}]}, Req(query="v=1&v=2"), False),  # the first value counts
    ({"queryParams": [{"name": "v", "value": "a b"}]}, Req(query="v=a%20b"), True),
    ({"queryParams": [{"name": "V", "value": "2"}]}, Req(query="v=2"), False),  # names are case-sensitive
    ({"method": "GET"}, Req(method="HEAD"), False),
]


@pytest.mark.parametrize(("match", "req", "expected"), MATCHING, ids=lambda v: repr(v)[:40])
def test_matching(match: dict, req: Req, expected: bool) -> None:
    table = RouteTable.build([route("a", [{"matches": [match], **to("hit")}])])
    assert (chosen(table, req) == "hit") is expected


def test_no_route_means_the_service_itself() -> None:
    rule = RouteTable.build([]).select(namespace="demo", service="web", port=8080, request=Req())
    assert rule is not None and rule.backends == (BackendRef("web", "demo", 8080, 1),)
    assert (rule.retry, rule.request_timeout, rule.backend_timeout) == (None, None, None)


def test_weights_split_traffic_and_zero_is_never_chosen() -> None:
    raw = route("r", [{"backendRefs": [{"name": "v1", "port": 80, "weight": 80},
                                       {"name": "v2", "port": 80, "weight": 20},
                                       {"name": "off", "port": 80, "weight": 0}]}])
    rule = RouteTable.build([raw]).select(namespace="demo", service="web", port=80, request=Req())
    assert rule is not None
    rng = random.Random(7)
    counts = Counter(rule.pick_backend(rng).name for _ in range(10_000))
    assert counts["off"] == 0
    assert 7700 <= counts["v1"] <= 8300
    zero = route("z", [{"backendRefs": [{"name": "v1", "port": 80, "weight": 0}]}])
    rule = RouteTable.build([zero]).select(namespace="demo", service="web", port=80, request=Req())
    assert rule is not None and rule.pick_backend(rng) is None


# ------------------------------------------------------------------- properties

_segment = st.text(alphabet="abc", min_size=1, max_size=3)
_paths = st.lists(_segment, max_size=4).map(lambda s: "/" + "/".join(s))


@given(prefix=_paths, path=_paths, slash=st.booleans())
def test_prefix_matches_whole_segments_only(prefix: str, path: str, slash: bool) -> None:
    table = RouteTable.build([route("a", [{"matches": [{"path": {"type": "PathPrefix",
                                                                  "value": prefix + ("/" if slash else "")}}],
                                           **to("hit")}])])
    p = prefix.strip("/").split("/") if prefix != "/" else []
    q = path.strip("/").split("/") if path != "/" else []
    assert (chosen(table, Req(path=path)) == "hit") == (q[:len(p)] == p)


_matches = st.fixed_dictionaries({}, optional={
    "path": st.fixed_dictionaries({"type": st.sampled_from(["Exact", "PathPrefix"]), "value": _paths}),
    "method": st.sampled_from(["GET", "POST"]),
    "headers": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b"]), "value": st.sampled_from(["1", "2"])}),
                        max_size=2),
})


@settings(max_examples=150)
@given(specs=st.lists(st.lists(_matches, min_size=1, max_size=2), min_size=1, max_size=5), seed=st.integers(),
       path=_paths, method=st.sampled_from(["GET", "POST"]), a=st.sampled_from(["1", "2"]))
def test_selection_does_not_depend_on_the_order_routes_are_listed(specs, seed, path, method, a) -> None:
    routes = [route(f"r{i}", [{"matches": ms, **to(f"b{i}")}], created=f"2026-01-0{1 + i % 3}T00:00:00Z")
              for i, ms in enumerate(specs)]
    shuffled = routes[:]
    random.Random(seed).shuffle(shuffled)
    req = Req(method=method, path=path, headers=((b"a", a.encode()),))
    assert chosen(RouteTable.build(routes), req) == chosen(RouteTable.build(shuffled), req)
