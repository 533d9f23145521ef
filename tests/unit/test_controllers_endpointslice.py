"""endpointslice.reconcile: endpoints, conditions, ports, updates, deletion."""
from __future__ import annotations

import pytest

from sandbox.controllers.actions import Create, Delete, Patch
from sandbox.controllers.endpointslice import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    EndpointSliceController,
    reconcile,
    resolve_target_port,
)


def service(*, selector=None, ports=None, labels=None, publish_not_ready=False, svc_type=None, cluster_ip="10.220.0.9"):
    spec = {"selector": {"app": "web"} if selector is None else selector, "clusterIP": cluster_ip,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080, "targetPort": "http",
                                                       "protocol": "TCP"}]}
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    if svc_type:
        spec["type"] = svc_type
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "demo", "uid": "uid-svc", "labels": labels or {}},
            "spec": spec}


def pod(name, ip="10.210.1.5", *, ready=True, deleting=False, labels=None, port=8080, phase="Running",
        node="node-1", ns="demo"):
    meta = {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels or {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T11:59:00Z"
    status = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "web", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": status}


def only_create(actions):
    [create] = actions
    assert isinstance(create, Create)
    return create.body


def test_slice_for_a_service():
    body = only_create(reconcile(service(labels={"app": "web"}), [pod("web-1")], slices=[]))
    meta = body["metadata"]
    assert meta["name"].startswith("web-") and len(meta["name"]) == len("web-") + 5
    assert meta["namespace"] == "demo"
    assert meta["labels"] == {"app": "web", SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: MANAGED_BY}
    assert meta["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "uid-svc",
                                        "controller": True, "blockOwnerDeletion": True}]
    assert body["addressType"] == "IPv4"
    assert body["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert body["endpoints"] == [{
        "addresses": ["10.210.1.5"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": "node-1",
        "targetRef": {"kind": "Pod", "namespace": "demo", "name": "web-1", "uid": "uid-web-1"},
    }]


def test_slice_name_is_stable_for_the_same_service():
    a = only_create(reconcile(service(), [pod("web-1")], slices=[]))
    b = only_create(reconcile(service(), [pod("web-2", "10.210.1.6")], slices=[]))
    assert a["metadata"]["name"] == b["metadata"]["name"]


@pytest.mark.parametrize(
    "p,conditions",
    [
        pytest.param(pod("p"), {"ready": True, "serving": True, "terminating": False}, id="ready"),
        pytest.param(pod("p", ready=False), {"ready": False, "serving": False, "terminating": False}, id="not-ready"),
        pytest.param(pod("p", deleting=True), {"ready": False, "serving": True, "terminating": True},
                     id="terminating-still-serving"),
        pytest.param(pod("p", deleting=True, ready=False), {"ready": False, "serving": False, "terminating": True},
                     id="terminating-not-serving"),
    ],
)
def test_endpoint_conditions(p, conditions):
    [ep] = only_create(reconcile(service(), [p], slices=[]))["endpoints"]
    assert ep["conditions"] == conditions


def test_publish_not_ready_addresses():
    [ep] = only_create(reconcile(service(publish_not_ready=True), [pod("p", ready=False)], slices=[]))["endpoints"]
    assert ep["conditions"]["ready"] is True


@pytest.mark.parametrize(
    "p",
    [
        pytest.param(pod("p", ip=""), id="no-ip-yet"),
        pytest.param(pod("p", labels={"app": "db"}), id="selector-mismatch"),
        pytest.param(pod("p", phase="Failed"), id="finished"),
        pytest.param(pod("p", ip="fd00::5"), id="not-ipv4"),
        pytest.param(pod("p", ns="other"), id="other-namespace"),
    ],
)
def test_pods_left_out(p):
    body = only_create(reconcile(service(), [p], slices=[]))
    assert body["endpoints"] == [] and body["ports"] == []


@pytest.mark.parametrize(
    "target,expected",
    [
        pytest.param("http", 9090, id="named"),
        pytest.param(7000, 7000, id="number"),
        pytest.param("7001", 7001, id="number-as-string"),
        pytest.param(None, 80, id="defaults-to-port"),
        pytest.param("grpc", None, id="unknown-name"),
    ],
)
def test_resolve_target_port(target, expected):
    sp = {"name": "web", "port": 80, "protocol": "TCP"}
    if target is not None:
        sp["targetPort"] = target
    assert resolve_target_port(sp, pod("p", port=9090)) == expected


def test_ports_named_like_the_service_ports():
    ports = [{"name": "web", "port": 80, "targetPort": "http"}, {"name": "admin", "port": 9000, "targetPort": 9001}]
    body = only_create(reconcile(service(ports=ports), [pod("p", port=8081)], slices=[]))
    assert body["ports"] == [{"name": "web", "port": 8081, "protocol": "TCP"},
                             {"name": "admin", "port": 9001, "protocol": "TCP"}]


def test_pods_resolving_a_named_port_differently_get_separate_slices():
    actions = reconcile(service(), [pod("a", "10.210.1.5", port=8080), pod("b", "10.210.1.6", port=9090)], slices=[])
    bodies = sorted((a.body for a in actions), key=lambda b: b["ports"][0]["port"])
    assert [(b["ports"][0]["port"], [e["targetRef"]["name"] for e in b["endpoints"]]) for b in bodies] == \
        [(8080, ["a"]), (9090, ["b"])]
    assert bodies[0]["metadata"]["name"] != bodies[1]["metadata"]["name"]


def _existing(body, name="web-abcde"):
    body = {**body, "metadata": {**body["metadata"], "name": name, "uid": "uid-slice"}}
    return body


def test_unchanged_slice_is_left_alone():
    body = only_create(reconcile(service(), [pod("a")], slices=[]))
    assert reconcile(service(), [pod("a")], slices=[_existing(body)]) == []


def test_slice_updated_when_a_pod_becomes_ready():
    body = only_create(reconcile(service(), [pod("a", ready=False)], slices=[]))
    [patch] = reconcile(service(), [pod("a")], slices=[_existing(body)])
    assert isinstance(patch, Patch) and patch.name == "web-abcde"
    assert patch.body["endpoints"][0]["conditions"]["ready"] is True
    assert patch.why == "1/1 endpoints ready"


def test_slice_emptied_when_the_last_pod_goes():
    body = only_create(reconcile(service(), [pod("a")], slices=[]))
    [patch] = reconcile(service(), [], slices=[_existing(body)])
    assert isinstance(patch, Patch) and patch.body["endpoints"] == [] and patch.body["ports"] == []


def test_slices_of_services_without_selector_are_deleted():
    body = only_create(reconcile(service(), [pod("a")], slices=[]))
    [delete] = reconcile(service(selector={}), [pod("a")], slices=[_existing(body)])
    assert isinstance(delete, Delete) and delete.name == "web-abcde" and delete.uid == "uid-slice"


def test_foreign_slices_are_not_touched():
    body = only_create(reconcile(service(), [pod("a")], slices=[]))
    foreign = _existing(body, name="web-manual")
    foreign["metadata"]["labels"] = {SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: "someone-else"}
    actions = reconcile(service(), [pod("a")], slices=[foreign])
    assert [type(a) for a in actions] == [Create]


def test_external_name_service_gets_no_slice():
    assert reconcile(service(svc_type="ExternalName"), [pod("a")], slices=[]) == []


def test_headless_service_label():
    body = only_create(reconcile(service(cluster_ip="None"), [pod("a")], slices=[]))
    assert body["metadata"]["labels"]["service.kubernetes.io/headless"] == ""


def test_pod_events_wake_services_of_its_namespace():
    class Store:
        def list(self, kind, namespace=None):
            assert (kind, namespace) == ("Service", "demo")
            return [service(), {**service(selector={}), "metadata": {"name": "manual", "namespace": "demo"}}]

    assert list(EndpointSliceController().keys_for("Pod", pod("a"), etype="MODIFIED", store=Store())) == [("demo", "web")]
