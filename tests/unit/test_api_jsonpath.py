"""The JSONPath subset of CRD printer columns (sandbox.api.jsonpath): parsing, evaluation, errors."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.api import jsonpath
from sandbox.api.jsonpath import Field, Filter, Index, JSONPathError, Wildcard

GATEWAY = {
    "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"gatewayClassName": "demo", "listeners": [{"name": "http", "port": 80}, {"name": "mesh", "port": 15008}]},
    "status": {
        "addresses": [{"type": "IPAddress", "value": "10.0.0.7"}, {"value": "10.0.0.8"}],
        "conditions": [{"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "False"}],
    },
}

FIND_CASES = [
    ("field", ".spec.gatewayClassName", ["demo"]),
    ("braces-accepted", "{.spec.gatewayClassName}", ["demo"]),
    ("missing-field", ".spec.nothing", []),
    ("index", ".spec.listeners[1].port", [15008]),
    ("negative-index", ".spec.listeners[-1].name", ["mesh"]),
    ("index-out-of-range", ".spec.listeners[5].name", []),
    ("wildcard", ".status.addresses[*].value", ["10.0.0.7", "10.0.0.8"]),
    ("filter-equals", '.status.conditions[?(@.type=="Programmed")].status', ["False"]),
    ("filter-single-quotes", ".status.conditions[?(@.type=='Accepted')].status", ["True"]),
    ("filter-not-equals", '.status.conditions[?(@.type!="Programmed")].type', ["Accepted"]),
    ("filter-number", ".spec.listeners[?(@.port>=1000)].name", ["mesh"]),
    ("filter-exists", ".status.addresses[?(@.type)].value", ["10.0.0.7"]),
    ("escaped-dots", r".metadata.labels.app\.kubernetes\.io/name", ["web"]),
    ("quoted-name", ".metadata.labels['app.kubernetes.io/name']", ["web"]),
    ("map-wildcard", ".metadata.labels.*", ["web"]),
    ("a-whole-list", ".spec.listeners", [GATEWAY["spec"]["listeners"]]),
]


@pytest.mark.parametrize("path,expected", [c[1:] for c in FIND_CASES], ids=[c[0] for c in FIND_CASES])
def test_find(path, expected):
    assert jsonpath.find(jsonpath.parse(path), GATEWAY) == expected


ERROR_CASES = [
    ("empty", "", "empty JSONPath"),
    ("recursive-descent", "..name", "recursive descent"),
    ("slice", ".a[1:2]", "slices and unions"),
    ("union", ".a[0,1]", "slices and unions"),
    ("unclosed-bracket", ".a[0", "unclosed"),
    ("filter-without-at", ".a[?(type==\"x\")]", "starts with @"),
    ("bad-literal", ".a[?(@.type==Ready)]", "expected a string, number or boolean"),
    ("trailing-garbage", ".a b", "unexpected"),
]


@pytest.mark.parametrize("path,message", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_unsupported_paths_say_what_to_write(path, message):
    with pytest.raises(JSONPathError, match=message):
        jsonpath.parse(path)


def test_set_value_creates_the_path():
    obj: dict = {"spec": {}}
    jsonpath.set_value(jsonpath.parse(".spec.scale.replicas"), obj, 3)
    assert obj == {"spec": {"scale": {"replicas": 3}}}
    with pytest.raises(JSONPathError, match="plain field path"):
        jsonpath.set_value(jsonpath.parse(".spec.items[0]"), obj, 1)


NAMES = st.text(alphabet="abcXYZ019_-./", min_size=1, max_size=8)
LITERALS = st.text(alphabet="abc Ready-", max_size=6) | st.integers(-50, 50) | st.booleans()
SIMPLE = st.lists(st.one_of(st.builds(Field, NAMES), st.builds(Index, st.integers(-3, 3)), st.just(Wildcard())),
                  min_size=1, max_size=4)
STEPS = st.lists(
    st.one_of(st.builds(Field, NAMES), st.builds(Index, st.integers(-3, 3)), st.just(Wildcard()),
              st.builds(lambda p, op, v: Filter(tuple(p), op, v if op else None), SIMPLE.filter(lambda p: isinstance(p[0], Field)),
                        st.sampled_from([None, "==", "!=", "<", ">=", "<="]), LITERALS)),
    min_size=1, max_size=5,
).filter(lambda steps: isinstance(steps[0], (Field, Filter, Index, Wildcard)))


@given(STEPS)
def test_render_then_parse_gives_the_same_path(steps):
    assert jsonpath.parse(jsonpath.render(tuple(steps))) == tuple(steps)


@given(st.text(max_size=30))
def test_any_text_parses_or_says_why_not(text):
    try:
        steps = jsonpath.parse(text)
    except JSONPathError as exc:
        assert str(exc)
    else:
        assert steps and jsonpath.find(steps, GATEWAY) is not None


@given(st.lists(st.text(alphabet="abcdef", min_size=1, max_size=4), min_size=1, max_size=4), st.integers())
def test_a_plain_path_finds_what_was_set_there(names, value):
    steps = tuple(Field(n) for n in names)
    obj: dict = {}
    jsonpath.set_value(steps, obj, value)
    assert jsonpath.find(jsonpath.parse(jsonpath.render(steps)), obj) == [value]
