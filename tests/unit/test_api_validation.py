"""Kubernetes name and label rules, as the sandbox API enforces them (422 causes)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.api.validation import (
    check_dns1123_label,
    check_dns1123_subdomain,
    check_label_value,
    check_qualified_name,
    object_meta_causes,
)

NAME_CASES = [
    ("simple", "web", True, True),
    ("digits-first", "123-abc", True, True),
    ("dotted", "web.example.com", False, True),
    ("uppercase", "Web", False, False),
    ("underscore", "my_name", False, False),
    ("leading-dash", "-web", False, False),
    ("trailing-dash", "web-", False, False),
    ("empty", "", False, False),
    ("label-64", "a" * 64, False, True),
    ("subdomain-254", "a" * 254, False, False),
    ("double-dot", "a..b", False, False),
]


@pytest.mark.parametrize("name,label_ok,subdomain_ok", [c[1:] for c in NAME_CASES], ids=[c[0] for c in NAME_CASES])
def test_names(name, label_ok, subdomain_ok):
    assert (not check_dns1123_label(name)) is label_ok
    assert (not check_dns1123_subdomain(name)) is subdomain_ok


KEY_CASES = [
    ("plain", "app", True),
    ("prefixed", "app.kubernetes.io/name", True),
    ("mixed-case-name", "MyKey", True),
    ("underscore-dot", "a_b.c", True),
    ("name-63", "a" * 63, True),
    ("name-64", "a" * 64, False),
    ("empty-prefix", "/app", False),
    ("uppercase-prefix", "Example.com/app", False),
    ("two-slashes", "a/b/c", False),
    ("empty-name", "example.com/", False),
    ("bad-start", "_app", False),
    ("space", "my app", False),
]


@pytest.mark.parametrize("key,ok", [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_label_keys(key, ok):
    assert (not check_qualified_name(key)) is ok


VALUE_CASES = [
    ("empty", "", True),
    ("plain", "web", True),
    ("mixed", "My_value.1-2", True),
    ("63", "a" * 63, True),
    ("64", "a" * 64, False),
    ("space", "bad value", False),
    ("bang", "bad!", False),
    ("trailing-dot", "a.", False),
    ("slash", "a/b", False),
]


@pytest.mark.parametrize("value,ok", [c[1:] for c in VALUE_CASES], ids=[c[0] for c in VALUE_CASES])
def test_label_values(value, ok):
    assert (not check_label_value(value)) is ok


def test_object_meta_causes_read_like_kubernetes():
    causes = object_meta_causes({"name": "Bad_Name", "labels": {"app": "bad value!"}}, name_rule="label")
    assert [c["field"] for c in causes] == ["metadata.name", "metadata.labels"]
    assert causes[0]["message"].startswith('Invalid value: "Bad_Name": a lowercase RFC 1123 label must consist of')
    assert causes[1]["message"].startswith('Invalid value: "bad value!": a valid label must be an empty string')
    assert all(c["reason"] == "FieldValueInvalid" for c in causes)


def test_object_meta_requires_a_name():
    assert object_meta_causes({})[0] == {
        "reason": "FieldValueRequired",
        "message": "Required value: name or generateName is required",
        "field": "metadata.name",
    }


@given(st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z"))
def test_every_dns_label_is_a_valid_label_value_and_subdomain(name):
    assert not check_dns1123_label(name)
    assert not check_dns1123_subdomain(name)
    assert not check_label_value(name)
    assert not check_qualified_name(name)


@given(st.text(max_size=80))
def test_validators_never_raise(text):
    for check in (check_dns1123_label, check_dns1123_subdomain, check_label_value, check_qualified_name):
        assert isinstance(check(text), list)


@pytest.mark.parametrize("value_bytes,too_long", [(256 * 1024 - 3, False), (256 * 1024 - 2, True)], ids=["at-the-limit", "one-byte-over"])
def test_annotations_hold_256_kib_in_all(value_bytes, too_long):
    """Why client-side `kubectl apply` of a big CRD fails on a cluster: its last-applied copy does not fit."""
    causes = object_meta_causes({"name": "x", "annotations": {"a/b": "v" * value_bytes}})
    assert causes == ([{"reason": "FieldValueTooLong", "field": "metadata.annotations",
                        "message": "Too long: may not be more than 262144 bytes"}] if too_long else [])
