"""ambitctl's pure parts: Helm's value coalescing, the readiness rules `ambit install` waits on."""
from __future__ import annotations

import copy

import pytest

from ambitctl.apply import established, gone, ready, wait_until
from ambitctl.chart import merge
from ambitctl.errors import ClusterError


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}, {"a": {"b": 3, "c": 2}}),
        ({"a": {"b": 1}}, {"a": None}, {}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": {"b": 1}}, {"a": "flat"}, {"a": "flat"}),
        ({}, {"x": {"y": {"z": True}}}, {"x": {"y": {"z": True}}}),
    ],
    ids=["maps-merge", "null-removes", "lists-replace", "scalar-replaces-map", "new-keys"],
)
def test_values_coalesce_as_helm_does(base, override, expected):
    before = copy.deepcopy(base)
    assert merge(base, override) == expected
    assert base == before  # not mutated: the caller's base values stay as they were


def ds(*, generation=2, observed=2, desired=2, updated=2, ready_n=2):
    return {"kind": "DaemonSet", "metadata": {"generation": generation},
            "status": {"observedGeneration": observed, "desiredNumberScheduled": desired,
                       "updatedNumberScheduled": updated, "numberReady": ready_n}}


def deploy(*, replicas=1, updated=1, available=1, generation=1, observed=1):
    return {"kind": "Deployment", "metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "availableReplicas": available}}


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (ds(), None),
        (ds(observed=1), "its controller has not seen the latest spec yet"),
        (ds(updated=1), "2/2 pods ready, 1/2 updated"),
        (ds(ready_n=1), "1/2 pods ready, 2/2 updated"),
        (deploy(), None),
        (deploy(available=0), "0/1 replicas available, 1/1 updated"),
        (deploy(replicas=2, updated=1, available=2), "2/2 replicas available, 1/2 updated"),
        (None, "not found"),
    ],
    ids=["ds-ready", "ds-stale", "ds-rolling", "ds-not-ready", "deploy-ready", "deploy-unavailable",
         "deploy-rolling", "missing"],
)
def test_ready_as_helm_wait_sees_it(obj, reason):
    assert ready(obj) == reason


def crd(*conditions):
    return {"kind": "CustomResourceDefinition", "metadata": {"name": "gateways.gateway.networking.k8s.io"},
            "status": {"conditions": [{"type": t, "status": s, "message": m} for t, s, m in conditions]}}


@pytest.mark.parametrize(
    "obj,reason",
    [
        (None, "not found"),
        (crd(("NamesAccepted", "True", ""), ("Established", "True", "")), None),
        (crd(), "not Established yet"),
        (crd(("NamesAccepted", "False", '"gtw" is already in use'), ("Established", "False", "")),
         'its names are not accepted: "gtw" is already in use'),
    ],
    ids=["missing", "established", "no-status-yet", "names-conflict"],
)
def test_established_as_helm_waits_for_crds(obj, reason):
    assert established(obj) == reason


def test_gone_and_waiting_says_what_is_missing():
    assert gone(None) is None and gone({"kind": "Secret"}) == "still exists"
    with pytest.raises(ClusterError, match="Ambit is not ready after 0s: DaemonSet x: 1/2 pods ready"):
        wait_until(lambda: "DaemonSet x: 1/2 pods ready", timeout=0, what="Ambit is not ready")
    wait_until(lambda: None, timeout=0, what="never raised")
