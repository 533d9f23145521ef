"""DeleteOptions as clients send them, and the garbage-collection finalizers a delete leaves."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.api.deletion import (
    FOREGROUND,
    ORPHAN,
    DeleteOptions,
    DeleteOptionsError,
    DeleteOptionsInvalid,
    finalizers_after,
    parse_options,
)
from sandbox.api.protobuf import MAGIC, decode_object
from sandbox.api.resources import COLLECTED_OWNERS
from sandbox.controllers.garbagecollector import OWNER_KINDS

# what Helm 4 (client-go's typed Secret client) sends to delete a release Secret, byte for byte
HELM_SECRET_DELETE = b'k8s\x00\n\x13\n\x02v1\x12\rDeleteOptions\x12\x00\x1a\x00"\x00'


@pytest.mark.parametrize(
    "body,query,expected",
    [
        pytest.param(None, {}, DeleteOptions(), id="nothing"),
        pytest.param({"propagationPolicy": "Background"}, {}, DeleteOptions(propagation="Background"),
                     id="kubectl-and-helm-json"),
        pytest.param({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}, {},
                     DeleteOptions(propagation="Foreground"), id="typed-foreground"),
        pytest.param({"orphanDependents": True}, {}, DeleteOptions(propagation="Orphan"), id="orphan-dependents-true"),
        pytest.param({"orphanDependents": False}, {}, DeleteOptions(propagation="Background"),
                     id="orphan-dependents-false-is-background"),
        pytest.param({"preconditions": {"uid": "u1", "resourceVersion": "7"}}, {},
                     DeleteOptions(uid="u1", resource_version="7"), id="preconditions"),
        pytest.param({"dryRun": ["All"], "gracePeriodSeconds": 0}, {},
                     DeleteOptions(dry_run=True, grace_period_seconds=0), id="dry-run-and-grace"),
        pytest.param({"propagationPolicy": "Orphan"}, {"propagationPolicy": ["Foreground"]},
                     DeleteOptions(propagation="Orphan"), id="body-wins-over-query"),
        pytest.param(None, {"propagationPolicy": ["Foreground"]}, DeleteOptions(propagation="Foreground"),
                     id="query-policy"),
        pytest.param(None, {"orphanDependents": ["true"], "gracePeriodSeconds": ["30"], "dryRun": ["All"]},
                     DeleteOptions(propagation="Orphan", grace_period_seconds=30, dry_run=True), id="query-legacy"),
        pytest.param(decode_object(HELM_SECRET_DELETE), {}, DeleteOptions(), id="helm-protobuf"),
    ],
)
def test_parse_options(body, query, expected):
    assert parse_options(body, query) == expected


@pytest.mark.parametrize(
    "body,query,invalid,words",
    [
        pytest.param({"propagationPolicy": "Sideways"}, {}, True, 'Unsupported value: "Sideways"', id="unknown-policy"),
        pytest.param({"propagationPolicy": "Orphan", "orphanDependents": True}, {}, True, "cannot be both set",
                     id="policy-and-orphan-dependents"),
        pytest.param({"dryRun": ["Some"]}, {}, True, 'Unsupported value: "Some"', id="dry-run-value"),
        pytest.param({"propagationPolicy": 1}, {}, False, "propagationPolicy must be a string", id="policy-type"),
        pytest.param({"orphanDependents": "yes"}, {}, False, "orphanDependents must be true or false",
                     id="orphan-dependents-type"),
        pytest.param({"gracePeriodSeconds": True}, {}, False, "gracePeriodSeconds must be an integer", id="grace-bool"),
        pytest.param({"preconditions": {"uid": 5}}, {}, False, "preconditions.uid must be a string", id="uid-type"),
        pytest.param({"dryRun": "All"}, {}, False, "dryRun must be a list", id="dry-run-not-list"),
        pytest.param({"kind": "Pod"}, {}, False, "must be DeleteOptions, not Pod", id="wrong-kind"),
        pytest.param(["Background"], {}, False, "must be an object", id="not-an-object"),
        pytest.param(None, {"orphanDependents": ["maybe"]}, False, "invalid orphanDependents", id="query-bool"),
        pytest.param(None, {"gracePeriodSeconds": ["soon"]}, False, "invalid gracePeriodSeconds", id="query-grace"),
    ],
)
def test_parse_options_refuses(body, query, invalid, words):
    with pytest.raises(DeleteOptionsError, match=words) as exc:
        parse_options(body, query)
    assert isinstance(exc.value, DeleteOptionsInvalid) is invalid


def test_invalid_options_carry_a_status_cause():
    with pytest.raises(DeleteOptionsInvalid) as exc:
        parse_options({"propagationPolicy": "Sideways"}, {})
    assert exc.value.cause == {
        "reason": "FieldValueNotSupported", "field": "propagationPolicy",
        "message": 'Unsupported value: "Sideways": supported values: "Foreground", "Background", "Orphan"',
    }


def _ld(num: int, payload: bytes) -> bytes:
    return bytes([num << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize(
    "fields,expected",
    [
        pytest.param(b"", {}, id="empty"),
        pytest.param(_ld(4, b"Foreground"), {"propagationPolicy": "Foreground"}, id="policy"),
        pytest.param(bytes([3 << 3, 0]), {"orphanDependents": False}, id="orphan-false-is-kept"),
        pytest.param(bytes([3 << 3, 1]) + bytes([1 << 3, 0]), {"orphanDependents": True, "gracePeriodSeconds": 0},
                     id="orphan-and-zero-grace"),
        pytest.param(_ld(2, _ld(1, b"u1")) + _ld(5, b"All"), {"preconditions": {"uid": "u1"}, "dryRun": ["All"]},
                     id="preconditions-and-dry-run"),
    ],
)
def test_protobuf_delete_options(fields, expected):
    body = MAGIC + _ld(1, _ld(1, b"v1") + _ld(2, b"DeleteOptions")) + _ld(2, fields)
    assert decode_object(body) == {"apiVersion": "v1", "kind": "DeleteOptions", **expected}


@pytest.mark.parametrize(
    "finalizers,propagation,has_dependents,expected",
    [
        pytest.param([], None, True, [], id="default-is-background"),
        pytest.param([], "Background", True, [], id="background"),
        pytest.param([], "Foreground", True, [FOREGROUND], id="foreground"),
        pytest.param([], "Orphan", True, [ORPHAN], id="orphan"),
        pytest.param([], "Foreground", False, [], id="foreground-without-dependents-goes-at-once"),
        pytest.param([], "Orphan", False, [], id="orphan-without-dependents-goes-at-once"),
        pytest.param(["example.com/keep"], "Foreground", True, ["example.com/keep", FOREGROUND], id="keeps-others"),
        pytest.param([ORPHAN], "Foreground", True, [FOREGROUND], id="policy-switches-orphan-to-foreground"),
        pytest.param([FOREGROUND], "Background", True, [], id="background-drops-foreground"),
        pytest.param([FOREGROUND], None, False, [FOREGROUND], id="no-policy-keeps-the-objects-own"),
        pytest.param([ORPHAN, FOREGROUND], None, True, [ORPHAN], id="no-policy-first-gc-finalizer-wins"),
        pytest.param(["b", "a"], "Background", True, ["b", "a"], id="order-kept-when-unchanged"),
    ],
)
def test_finalizers_after(finalizers, propagation, has_dependents, expected):
    assert finalizers_after(finalizers, propagation, has_dependents=has_dependents) == expected


@given(
    finalizers=st.lists(st.sampled_from([FOREGROUND, ORPHAN, "a", "b"]), unique=True),
    propagation=st.sampled_from([None, "Foreground", "Background", "Orphan"]),
    has_dependents=st.booleans(),
)
def test_finalizers_after_keeps_foreign_finalizers_and_at_most_one_gc_finalizer(finalizers, propagation, has_dependents):
    after = finalizers_after(finalizers, propagation, has_dependents=has_dependents)
    assert [f for f in after if f in ("a", "b")] == [f for f in finalizers if f in ("a", "b")]
    assert len([f for f in after if f in (FOREGROUND, ORPHAN)]) <= 1
    assert set(after) - set(finalizers) <= ({FOREGROUND, ORPHAN} if has_dependents else set())


def test_api_keeps_owners_only_of_kinds_the_garbage_collector_judges():
    assert {key.split(".")[0] for key in COLLECTED_OWNERS} == {f"{kind.lower()}s" for kind in OWNER_KINDS}
