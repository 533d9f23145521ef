"""What `kubectl get` prints from the sandbox API's Tables: columns, cells and AGE."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sandbox.api import registry
from sandbox.api.tables import human_duration, render_table

AGE_CASES = [
    ("negative-is-invalid", -5, "<invalid>"),
    ("clock-skew", -1, "0s"),
    ("zero", 0, "0s"),
    ("seconds", 5, "5s"),
    ("under-two-minutes", 119, "119s"),
    ("two-minutes", 120, "2m"),
    ("minutes-seconds", 3 * 60 + 2, "3m2s"),
    ("ten-minutes", 10 * 60 + 30, "10m"),
    ("under-three-hours", 179 * 60, "179m"),
    ("hours-minutes", 3 * 3600 + 4 * 60, "3h4m"),
    ("whole-hours", 5 * 3600, "5h"),
    ("nine-hours", 9 * 3600 + 59 * 60, "9h"),
    ("two-days", 48 * 3600, "2d"),
    ("days-hours", 2 * 86400 + 3 * 3600, "2d3h"),
    ("thirty-days", 30 * 86400 + 5 * 3600, "30d"),
    ("two-years", 2 * 365 * 86400 + 5 * 86400, "2y5d"),
    ("nine-years", 9 * 365 * 86400, "9y"),
]


@pytest.mark.parametrize("seconds,want", [c[1:] for c in AGE_CASES], ids=[c[0] for c in AGE_CASES])
def test_age_like_kubectl(seconds, want):
    assert human_duration(seconds) == want


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def ts(ago: timedelta) -> str:
    return (NOW - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def cells(kind_key, obj, *, wide=False):
    rt = registry.Registry().by_key(kind_key)
    table = render_table(rt.columns, [obj], resource_version="7", now=NOW)
    names = [c["name"] for c in table["columnDefinitions"] if wide or c["priority"] == 0]
    row = dict(zip([c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"]))
    return {n: row[n] for n in names}, table


POD = {
    "metadata": {"name": "web-1", "namespace": "shop", "creationTimestamp": ts(timedelta(minutes=3, seconds=2)), "labels": {"app": "web"}},
    "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}]},
    "status": {
        "phase": "Running",
        "podIP": "10.210.1.5",
        "containerStatuses": [{"name": "a", "ready": True, "restartCount": 2, "state": {"running": {}}}, {"name": "b", "ready": False, "restartCount": 1, "state": {"running": {}}}],
    },
}

ROW_CASES = [
    ("pod", "pods", POD, False, {"Name": "web-1", "Ready": "1/2", "Status": "Running", "Restarts": 3, "Age": "3m2s"}),
    ("pod-wide", "pods", POD, True, {"Name": "web-1", "Ready": "1/2", "Status": "Running", "Restarts": 3, "Age": "3m2s", "IP": "10.210.1.5", "Node": "node-1", "Nominated Node": "<none>", "Readiness Gates": "<none>"}),
    (
        "pod-terminating",
        "pods",
        {**POD, "metadata": {**POD["metadata"], "deletionTimestamp": ts(timedelta(0))}},
        False,
        {"Name": "web-1", "Ready": "1/2", "Status": "Terminating", "Restarts": 3, "Age": "3m2s"},
    ),
    (
        "pod-crashloop",
        "pods",
        {**POD, "status": {"phase": "Running", "containerStatuses": [{"ready": False, "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}},
        False,
        {"Name": "web-1", "Ready": "0/2", "Status": "CrashLoopBackOff", "Restarts": 5, "Age": "3m2s"},
    ),
    (
        "service",
        "services",
        {"metadata": {"name": "web", "creationTimestamp": ts(timedelta(days=2, hours=3))}, "spec": {"type": "ClusterIP", "clusterIP": "10.220.0.7", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}},
        False,
        {"Name": "web", "Type": "ClusterIP", "Cluster-IP": "10.220.0.7", "External-IP": "<none>", "Port(s)": "80/TCP,53/UDP", "Age": "2d3h"},
    ),
    (
        "service-nodeport",
        "services",
        {"metadata": {"name": "web", "creationTimestamp": ts(timedelta(seconds=5))}, "spec": {"type": "LoadBalancer", "clusterIP": "10.220.0.7", "ports": [{"port": 80, "nodePort": 30080}]}},
        False,
        {"Name": "web", "Type": "LoadBalancer", "Cluster-IP": "10.220.0.7", "External-IP": "<pending>", "Port(s)": "80:30080/TCP", "Age": "5s"},
    ),
    (
        "deployment",
        "deployments.apps",
        {"metadata": {"name": "web", "creationTimestamp": ts(timedelta(hours=1))}, "spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}},
        False,
        {"Name": "web", "Ready": "2/3", "Up-to-date": 3, "Available": 2, "Age": "60m"},
    ),
    (
        "replicaset",
        "replicasets.apps",
        {"metadata": {"name": "web-abc", "creationTimestamp": ts(timedelta(seconds=30))}, "spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 1}},
        False,
        {"Name": "web-abc", "Desired": 2, "Current": 2, "Ready": 1, "Age": "30s"},
    ),
    (
        "node",
        "nodes",
        {
            "metadata": {"name": "node-1", "creationTimestamp": ts(timedelta(minutes=5)), "labels": {"node-role.kubernetes.io/worker": ""}},
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.32.0-ambit"}, "addresses": [{"type": "InternalIP", "address": "10.200.0.11"}]},
        },
        False,
        {"Name": "node-1", "Status": "Ready,SchedulingDisabled", "Roles": "worker", "Age": "5m", "Version": "v1.32.0-ambit"},
    ),
    ("namespace", "namespaces", {"metadata": {"name": "shop", "creationTimestamp": ts(timedelta(days=40))}, "status": {"phase": "Active"}}, False, {"Name": "shop", "Status": "Active", "Age": "40d"}),
    ("namespace-terminating", "namespaces", {"metadata": {"name": "shop", "creationTimestamp": ts(timedelta(days=40)), "deletionTimestamp": ts(timedelta(seconds=1))}, "status": {"phase": "Terminating"}}, False, {"Name": "shop", "Status": "Terminating", "Age": "40d"}),
    (
        "endpointslice",
        "endpointslices.discovery.k8s.io",
        {"metadata": {"name": "web-x", "creationTimestamp": ts(timedelta(seconds=1))}, "addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [{"addresses": [f"10.0.0.{i}"]} for i in range(5)]},
        False,
        {"Name": "web-x", "AddressType": "IPv4", "Ports": "80", "Endpoints": "10.0.0.0,10.0.0.1,10.0.0.2 + 2 more...", "Age": "1s"},
    ),
    (
        "endpoints",
        "endpoints",
        {"metadata": {"name": "web", "creationTimestamp": ts(timedelta(seconds=9))}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}]}]},
        False,
        {"Name": "web", "Endpoints": "10.0.0.1:80,10.0.0.2:80", "Age": "9s"},
    ),
    ("generic-missing-timestamp", "configmaps", {"metadata": {"name": "c"}, "data": {"a": "1"}}, False, {"Name": "c", "Data": 1, "Age": "<unknown>"}),
]


@pytest.mark.parametrize("key,obj,wide,want", [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_table_rows(key, obj, wide, want):
    got, _ = cells(key, obj, wide=wide)
    assert got == want


def test_table_rows_carry_partial_object_metadata_for_namespace_and_labels():
    _, table = cells("pods", POD)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "7"}
    assert table["rows"][0]["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": POD["metadata"]}


def test_table_include_object():
    rt = registry.POD
    assert render_table(rt.columns, [POD], resource_version="1", include_object="Object", now=NOW)["rows"][0]["object"] is POD
    assert "object" not in render_table(rt.columns, [POD], resource_version="1", include_object="None", now=NOW)["rows"][0]
