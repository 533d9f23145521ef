"""Label and field selectors as the sandbox API parses and matches them."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.api.selectors import (
    SelectorError,
    label_selector_from_dict,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "web", "tier": "front", "version": "3", "example.com/team": "a"}

LABEL_CASES = [
    ("empty-matches-all", "", True),
    ("equals", "app=web", True),
    ("double-equals", "app==web", True),
    ("equals-miss", "app=api", False),
    ("not-equals", "app!=api", True),
    ("not-equals-missing-key", "nope!=x", True),
    ("in", "tier in (front,back)", True),
    ("in-miss", "tier in (back)", False),
    ("notin", "tier notin (back)", True),
    ("notin-miss", "tier notin (front, back)", False),
    ("exists", "app", True),
    ("exists-miss", "nope", False),
    ("not-exists", "!nope", True),
    ("not-exists-miss", "!app", False),
    ("prefixed-key", "example.com/team=a", True),
    ("and", "app=web,tier!=back,!nope", True),
    ("and-one-fails", "app=web,tier=back", False),
    ("spaces", " app = web , tier in ( front ) ", True),
    ("gt", "version>2", True),
    ("lt", "version<3", False),
    ("empty-value", "nope=", False),
]


@pytest.mark.parametrize("text,want", [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_label_selector_matching(text, want):
    assert parse_label_selector(text).matches(LABELS) is want


LABEL_ERRORS = [
    ("dangling-operator", "app="[:-1] + "!"),
    ("in-without-parens", "app in web"),
    ("unclosed-set", "app in (a,b"),
    ("empty-set", "app in ()"),
    ("bad-key", "-app=web"),
    ("bad-value", "app=we b"),
    ("trailing-comma", "app=web,"),
    ("double-operator", "app==!web"),
    ("gt-not-int", "version>abc"),
]


@pytest.mark.parametrize("text", [c[1] for c in LABEL_ERRORS], ids=[c[0] for c in LABEL_ERRORS])
def test_label_selector_errors(text):
    with pytest.raises(SelectorError, match="unable to parse requirement"):
        parse_label_selector(text)


@pytest.mark.parametrize(
    "sel,want",
    [
        ({"matchLabels": {"app": "web"}}, True),
        ({"matchLabels": {"app": "api"}}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, False),
        ({"matchExpressions": [{"key": "nope", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
    ],
    ids=["matchLabels", "matchLabels-miss", "In", "NotIn", "DoesNotExist", "Exists"],
)
def test_label_selector_from_dict(sel, want):
    assert label_selector_from_dict(sel).matches(LABELS) is want


def test_label_selector_from_dict_rejects_unknown_operator():
    with pytest.raises(SelectorError, match="not a valid operator"):
        label_selector_from_dict({"matchExpressions": [{"key": "a", "operator": "Near"}]})


POD = {"metadata": {"name": "web-1", "namespace": "shop"}, "spec": {"nodeName": "node-1", "hostNetwork": False}, "status": {"phase": "Running"}}

FIELD_CASES = [
    ("name", "metadata.name=web-1", True),
    ("name-double-equals", "metadata.name==web-1", True),
    ("namespace-miss", "metadata.namespace=default", False),
    ("node", "spec.nodeName=node-1", True),
    ("node-not", "spec.nodeName!=node-1", False),
    ("unscheduled-is-empty", "spec.nodeName=", False),
    ("phase", "status.phase=Running", True),
    ("bool-as-text", "spec.hostNetwork=false", True),
    ("and", "metadata.name=web-1,status.phase!=Pending", True),
    ("escaped-comma", "metadata.name=a\\,b", False),
]


@pytest.mark.parametrize("text,want", [c[1:] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES])
def test_field_selector(text, want):
    assert parse_field_selector(text).matches(POD) is want


def test_field_selector_missing_field_matches_empty_value():
    assert parse_field_selector("spec.nodeName=").matches({"metadata": {"name": "p"}, "spec": {}})


@pytest.mark.parametrize("text", ["metadata.name", "=x", "a=b=c"], ids=["no-operator", "no-field", "unescaped-equals"])
def test_field_selector_errors(text):
    with pytest.raises(SelectorError):
        parse_field_selector(text)


label_keys = st.from_regex(r"\A([a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?\.[a-z]{2,4}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?\Z")
label_values = st.from_regex(r"\A([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?\Z")


@st.composite
def selectors(draw):
    reqs = []
    for _ in range(draw(st.integers(1, 4))):
        key = draw(label_keys)
        op = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!"]))
        if op in ("=", "!="):
            reqs.append(f"{key}{op}{draw(label_values)}")
        elif op in ("in", "notin"):
            vals = draw(st.lists(label_values.filter(bool), min_size=1, max_size=3))
            reqs.append(f"{key} {op} ({','.join(vals)})")
        elif op == "exists":
            reqs.append(key)
        else:
            reqs.append(f"!{key}")
    return ",".join(reqs)


@given(selectors())
def test_label_selector_round_trips_through_its_string_form(text):
    sel = parse_label_selector(text)
    assert parse_label_selector(str(sel)) == sel


@given(st.text(max_size=30))
def test_label_selector_parser_only_raises_selector_error(text):
    try:
        parse_label_selector(text)
    except SelectorError:
        pass


@given(st.text(max_size=30))
def test_field_selector_parser_only_raises_selector_error(text):
    try:
        parse_field_selector(text)
    except SelectorError:
        pass


@given(st.dictionaries(label_keys, label_values, max_size=4), selectors())
def test_label_selector_negation_pairs_disagree(labels, text):
    sel = parse_label_selector(text)
    for req in sel.requirements:
        if req.op in ("=", "!="):
            flipped = f"{req.key}{'!=' if req.op == '=' else '='}{req.values[0]}"
            assert parse_label_selector(flipped).matches(labels) != parse_label_selector(str(req)).matches(labels)
