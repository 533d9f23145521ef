"""The applier against a loopback HTTP stand-in: paths, verbs, content types, error mapping."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client as k8s

from sandbox.controllers.actions import Create, Delete, DeleteCollection, FinalizeNamespace, Patch
from sandbox.controllers.applier import Applier
from sandbox.controllers.errors import ApplyError, ConflictError
from sandbox.controllers.objects import Resource


class FakeApi:
    """Records requests; answers from ``responses[(method, path)]`` = (status, body), else 200 echo."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.responses: dict[tuple[str, str], tuple[int, dict]] = {}
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                api.requests.append({"method": self.command, "path": self.path,
                                     "content_type": self.headers.get("Content-Type"),
                                     "body": json.loads(raw) if raw else None})
                status, body = api.responses.get((self.command, path), (200, None))
                if body is None:
                    body = json.loads(raw) if raw else {}
                    if isinstance(body, dict):
                        body.setdefault("metadata", {})["resourceVersion"] = "42"
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api():
    fake = FakeApi()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def applier(api):
    conf = k8s.Configuration()
    conf.host = api.url
    client = k8s.ApiClient(conf)
    yield Applier(client, timeout=5)
    client.close()


def status_body(code, reason, message="nope"):
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


def test_create_pod_posts_the_body(api, applier):
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-abc-x1", "namespace": "demo", "labels": {"app": "web"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                                              "uid": "u1", "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"containers": [{"name": "web", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]}}
    result = applier.apply(Create(kind="Pod", namespace="demo", body=body, why="scale up"))
    [req] = api.requests
    assert (req["method"], req["path"]) == ("POST", "/api/v1/namespaces/demo/pods")
    assert req["body"] == body
    assert result["metadata"]["resourceVersion"] == "42"


def test_create_endpointslice_keeps_false_conditions(api, applier):
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-bcdfg", "namespace": "demo"},
            "endpoints": [{"addresses": ["10.210.1.5"], "conditions": {"ready": False, "serving": False,
                                                                      "terminating": False}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
    applier.apply(Create(kind="EndpointSlice", namespace="demo", body=body, why="x"))
    [req] = api.requests
    assert req["path"] == "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
    assert req["body"]["endpoints"][0]["conditions"] == {"ready": False, "serving": False, "terminating": False}


def patch(kind, ns, name, body, **kw):
    return Patch(kind=kind, namespace=ns, name=name, body=body, why="x", **kw)


@pytest.mark.parametrize(
    "action,path,content_type",
    [
        pytest.param(patch("ReplicaSet", "demo", "web-abc", {"spec": {"replicas": 3}}),
                     "/apis/apps/v1/namespaces/demo/replicasets/web-abc", "application/merge-patch+json", id="merge"),
        pytest.param(patch("Deployment", "demo", "web", {"status": {"replicas": 2}}, subresource="status"),
                     "/apis/apps/v1/namespaces/demo/deployments/web/status", "application/merge-patch+json",
                     id="status-subresource"),
        pytest.param(patch("Pod", "demo", "p", {"metadata": {"labels": {"a": "b"}}}, patch_type="strategic"),
                     "/api/v1/namespaces/demo/pods/p", "application/strategic-merge-patch+json", id="strategic"),
        pytest.param(patch("DaemonSet", "sys", "agent", [{"op": "remove", "path": "/metadata/labels/a"}],
                           patch_type="json"),
                     "/apis/apps/v1/namespaces/sys/daemonsets/agent", "application/json-patch+json", id="json"),
    ],
)
def test_patch(api, applier, action, path, content_type):
    applier.apply(action)
    [req] = api.requests
    assert (req["method"], req["path"], req["content_type"]) == ("PATCH", path, content_type)
    assert req["body"] == action.body


def test_delete_sends_uid_precondition_and_propagation(api, applier):
    applier.apply(Delete(kind="Pod", namespace="demo", name="p", why="gc", uid="uid-p"))
    [req] = api.requests
    assert (req["method"], req["path"]) == ("DELETE", "/api/v1/namespaces/demo/pods/p")
    assert req["body"]["preconditions"] == {"uid": "uid-p"}
    assert req["body"]["propagationPolicy"] == "Background"


@pytest.mark.parametrize(
    "status,reason",
    [pytest.param(404, "NotFound", id="already-gone"), pytest.param(409, "Conflict", id="uid-precondition-failed")],
)
def test_delete_that_is_already_done(api, applier, status, reason):
    api.responses[("DELETE", "/api/v1/namespaces/demo/pods/p")] = (status, status_body(status, reason))
    assert applier.apply(Delete(kind="Pod", namespace="demo", name="p", why="x", uid="uid-p")) is None


def test_create_of_a_taken_name_is_not_an_error(api, applier):
    api.responses[("POST", "/apis/apps/v1/namespaces/demo/replicasets")] = (409, status_body(409, "AlreadyExists"))
    body = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-abc", "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}}}}
    assert applier.apply(Create(kind="ReplicaSet", namespace="demo", body=body, why="x")) is None


def test_conflict_and_errors(api, applier):
    path = "/apis/apps/v1/namespaces/demo/replicasets/web-abc"
    api.responses[("PATCH", path)] = (409, status_body(409, "Conflict", "the object has been modified"))
    with pytest.raises(ConflictError, match="the object has been modified"):
        applier.apply(patch("ReplicaSet", "demo", "web-abc", {"spec": {"replicas": 1}}))
    api.responses[("PATCH", path)] = (500, status_body(500, "InternalError", "disk full"))
    with pytest.raises(ApplyError, match="HTTP 500 InternalError: disk full"):
        applier.apply(patch("ReplicaSet", "demo", "web-abc", {"spec": {"replicas": 1}}))


def test_unreachable_api_is_an_apply_error():
    conf = k8s.Configuration()
    conf.host = "http://127.0.0.1:9"  # discard port: nothing listens
    conf.retries = 0
    client = k8s.ApiClient(conf)
    try:
        with pytest.raises(ApplyError, match="cannot reach the API server"):
            Applier(client, timeout=2).apply(Patch(kind="Pod", namespace="demo", name="p", body={}, why="x"))
    finally:
        client.close()


def test_owner_lookup_compares_uids(api, applier):
    path = "/apis/apps/v1/namespaces/demo/replicasets/web-abc"
    api.responses[("GET", path)] = (200, {"metadata": {"name": "web-abc", "uid": "uid-rs"}})
    assert applier.owner_exists("demo", {"kind": "ReplicaSet", "name": "web-abc", "uid": "uid-rs"})
    assert not applier.owner_exists("demo", {"kind": "ReplicaSet", "name": "web-abc", "uid": "uid-old"})
    api.responses[("GET", path)] = (404, status_body(404, "NotFound"))
    assert not applier.owner_exists("demo", {"kind": "ReplicaSet", "name": "web-abc", "uid": "uid-rs"})
    assert applier.owner_exists("demo", {"kind": "Job", "name": "x", "uid": "u"}), "unknown kinds are kept"


# ---- the namespace controller's calls ---------------------------------------------------------
def resource_list(group_version, *entries):
    return {"kind": "APIResourceList", "groupVersion": group_version,
            "resources": [{"name": n, "namespaced": ns, "kind": n.title(), "verbs": verbs} for n, ns, verbs in entries]}


ALL = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def test_namespace_content_lists_every_namespaced_resource_from_discovery(api, applier):
    api.responses[("GET", "/apis")] = (200, {"kind": "APIGroupList", "groups": [
        {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}},
        {"name": "authentication.k8s.io", "preferredVersion": {"version": "v1"}}]})
    api.responses[("GET", "/api/v1")] = (200, resource_list(
        "v1", ("namespaces", False, ALL), ("namespaces/finalize", False, ["update"]), ("configmaps", True, ALL),
        ("pods", True, ALL), ("pods/status", True, ["get", "patch", "update"])))
    api.responses[("GET", "/apis/apps/v1")] = (200, resource_list("apps/v1", ("deployments", True, ALL)))
    api.responses[("GET", "/apis/authentication.k8s.io/v1")] = (200, resource_list(
        "authentication.k8s.io/v1", ("tokenreviews", False, ["create"])))
    api.responses[("GET", "/api/v1/namespaces/shop/configmaps")] = (200, {"items": [{"metadata": {"name": "a"}}]})
    api.responses[("GET", "/api/v1/namespaces/shop/pods")] = (200, {"items": []})
    api.responses[("GET", "/apis/apps/v1/namespaces/shop/deployments")] = (404, status_body(404, "NotFound"))
    content = applier.namespace_content("shop")
    assert content == {Resource("", "v1", "configmaps"): [{"metadata": {"name": "a"}}], Resource("", "v1", "pods"): []}
    assert all(r["method"] == "GET" for r in api.requests)


def test_delete_collection_deletes_in_the_background(api, applier):
    applier.apply(DeleteCollection(resource=Resource("apps", "v1", "replicasets"), namespace="shop", why="x"))
    [req] = api.requests
    assert (req["method"], req["path"]) == ("DELETE", "/apis/apps/v1/namespaces/shop/replicasets")
    assert req["body"] == {"propagationPolicy": "Background"}
    api.responses[("DELETE", "/api/v1/namespaces/shop/pods")] = (404, status_body(404, "NotFound"))
    assert applier.apply(DeleteCollection(resource=Resource("", "v1", "pods"), namespace="shop", why="x")) is None


def test_finalize_puts_the_remaining_finalizers(api, applier):
    action = FinalizeNamespace(name="shop", finalizers=("example.com/other",), resource_version="41", why="x")
    result = applier.apply(action)
    [req] = api.requests
    assert (req["method"], req["path"]) == ("PUT", "/api/v1/namespaces/shop/finalize")
    assert req["body"]["spec"] == {"finalizers": ["example.com/other"]}
    assert req["body"]["metadata"] == {"name": "shop", "resourceVersion": "41"}
    assert result["metadata"]["resourceVersion"] == "42"
    path = "/api/v1/namespaces/shop/finalize"
    api.responses[("PUT", path)] = (404, status_body(404, "NotFound"))
    assert applier.apply(action) is None, "a namespace gone already is finalized"
    api.responses[("PUT", path)] = (409, status_body(409, "Conflict", "the object has been modified"))
    with pytest.raises(ConflictError, match="finalize Namespace shop"):
        applier.apply(action)
    api.responses[("PUT", path)] = (403, status_body(403, "Forbidden", "no"))
    with pytest.raises(ApplyError, match="HTTP 403 Forbidden: no"):
        applier.apply(action)
