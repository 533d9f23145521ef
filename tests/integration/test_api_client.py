"""The official Python client (and raw HTTPS) against the sandbox API."""
from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException



SANDBOX = ("apit", 7)  # the api fixture: tests/integration/conftest.py


@pytest.fixture(scope="module")
def api_client(api):
    c = config.new_client_from_config(config_file=str(api.kubeconfig))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def core(api_client):
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="module")
def apps(api_client):
    return client.AppsV1Api(api_client)


def raw_request(api, method: str, path: str, *, body: bytes | None = None, token: str | None = None, headers: dict | None = None):
    """(status, parsed JSON body) of one HTTPS request, bypassing every client library."""
    ctx = ssl.create_default_context(cafile=str(api.cfg.pki_dir / "ca.crt"))
    if token is None:
        token = (api.cfg.pki_dir / "admin.token").read_text().strip()
    req = urllib.request.Request(f"{api.url}{path}", data=body, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null"), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def cm(name: str, **data: str) -> dict:
    return {"metadata": {"name": name}, "data": data}


def test_list_has_kind_and_resource_version(api):
    status, body, _ = raw_request(api, "GET", "/api/v1/namespaces?limit=500")
    assert status == 200
    assert body["kind"] == "NamespaceList" and body["apiVersion"] == "v1"
    assert int(body["metadata"]["resourceVersion"]) > 0
    assert {n["metadata"]["name"] for n in body["items"]} >= {"default", "kube-system", "kube-public"}


def test_list_with_selectors_and_limit(core):
    for i in range(5):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"sel-{i}", "labels": {"grp": "sel", "n": str(i)}}})
    names = lambda resp: [c.metadata.name for c in resp.items]  # noqa: E731
    assert names(core.list_namespaced_config_map("default", label_selector="grp=sel,n in (1,3)")) == ["sel-1", "sel-3"]
    assert names(core.list_namespaced_config_map("default", label_selector="grp=sel,n notin (0,1,2)")) == ["sel-3", "sel-4"]
    assert names(core.list_namespaced_config_map("default", label_selector="grp,!nope,n!=0", field_selector="metadata.name!=sel-4")) == ["sel-1", "sel-2", "sel-3"]
    assert names(core.list_config_map_for_all_namespaces(field_selector="metadata.name=sel-2")) == ["sel-2"]
    page = core.list_namespaced_config_map("default", label_selector="grp=sel", limit=2)
    assert names(page) == ["sel-0", "sel-1"] and page.metadata._continue
    rest = core.list_namespaced_config_map("default", label_selector="grp=sel", limit=10, _continue=page.metadata._continue)
    assert names(rest) == ["sel-2", "sel-3", "sel-4"] and not rest.metadata._continue
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map("default", field_selector="spec.nodeName=x")
    assert err.value.status == 400 and "field label not supported" in json.loads(err.value.body)["message"]


def test_watch_resumes_from_a_resource_version(core):
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", cm("w1", a="1"))
    core.patch_namespaced_config_map("w1", "default", {"data": {"a": "2"}})
    core.delete_namespaced_config_map("w1", "default")
    events = [
        (e["type"], e["object"].metadata.name, (e["object"].data or {}).get("a"))
        for e in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=1)
    ]
    assert events == [("ADDED", "w1", "1"), ("MODIFIED", "w1", "2"), ("DELETED", "w1", "2")]


def test_watch_from_zero_lists_current_state_first(core):
    core.create_namespaced_config_map("default", cm("w0"))
    seen = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version="0", field_selector="metadata.name=w0", timeout_seconds=1)
    ]
    assert seen == [("ADDED", "w0")]


def test_watch_delivers_deleted_when_an_object_stops_matching(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "mover", "labels": {"stage": "a"}}})
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.patch_namespaced_config_map("mover", "default", {"metadata": {"labels": {"stage": "b"}}})
    core.patch_namespaced_config_map("mover", "default", {"metadata": {"labels": {"stage": "a"}}})
    seen = [
        e["type"]
        for e in watch.Watch().stream(core.list_namespaced_config_map, "default", label_selector="stage=a", resource_version=rv, timeout_seconds=1)
    ]
    assert seen == ["DELETED", "ADDED"]


def test_watch_sees_live_events_and_bookmarks(core):
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    timer = threading.Timer(0.3, lambda: core.create_namespaced_config_map("default", cm("live")))
    timer.start()
    try:
        events = []
        for e in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=2):
            events.append(e)
    finally:
        timer.join()
    types = [e["type"] for e in events]
    assert types[0] == "BOOKMARK", "a bookmark right after catching up"
    assert ("ADDED", "live") in [(e["type"], e["object"].metadata.name) for e in events if e["type"] != "BOOKMARK"]
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert bookmark["raw_object"] == {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": bookmark["raw_object"]["metadata"]["resourceVersion"]}}


def test_raw_watch_stream_is_one_compact_json_object_per_line(core):
    resp = core.list_namespace(watch=True, resource_version="0", timeout_seconds=1, _preload_content=False)
    body = resp.data.decode()
    resp.release_conn()
    assert resp.status == 200
    assert len(body.strip().splitlines()) >= 3, "one ADDED line per namespace"
    for line in body.strip().splitlines():
        event = json.loads(line)
        assert set(event) == {"type", "object"} and ": " not in line


def test_status_subresource_separates_spec_and_status(apps):
    dep = {
        "metadata": {"name": "sub"},
        "spec": {"selector": {"matchLabels": {"app": "sub"}}, "template": {"metadata": {"labels": {"app": "sub"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}},
        "status": {"replicas": 7},
    }
    created = apps.create_namespaced_deployment("default", dep)
    assert created.status.replicas == 7, "create keeps the status it was given"
    apps.patch_namespaced_deployment_status("sub", "default", {"status": {"readyReplicas": 1}, "spec": {"replicas": 9}})
    after = apps.read_namespaced_deployment("sub", "default")
    assert after.status.ready_replicas == 1 and after.spec.replicas == 1
    apps.patch_namespaced_deployment("sub", "default", {"status": {"readyReplicas": 5}, "spec": {"replicas": 3}})
    after = apps.read_namespaced_deployment("sub", "default")
    assert after.status.ready_replicas == 1 and after.spec.replicas == 3
    assert after.metadata.generation == 2


def test_each_patch_type_through_the_client(core, apps):
    core.create_namespaced_config_map("default", cm("patched", a="1", b="2"))
    assert core.patch_namespaced_config_map("patched", "default", {"data": {"c": "3"}}).data == {"a": "1", "b": "2", "c": "3"}
    assert core.patch_namespaced_config_map("patched", "default", [{"op": "remove", "path": "/data/a"}]).data == {"b": "2", "c": "3"}
    merged = core.patch_namespaced_config_map("patched", "default", {"data": {"b": None}}, _content_type="application/merge-patch+json")
    assert merged.data == {"c": "3"}
    apps.create_namespaced_deployment("default", {
        "metadata": {"name": "smp"},
        "spec": {"selector": {"matchLabels": {"app": "smp"}}, "template": {"metadata": {"labels": {"app": "smp"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]}]}}},
    })
    patched = apps.patch_namespaced_deployment("smp", "default", {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}})
    [container] = patched.spec.template.spec.containers
    assert container.image == "nginx:2" and container.ports[0].container_port == 80


def test_server_side_apply_creates_with_201(api):
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa-raw"}, "data": {"x": "1"}}).encode()
    path = "/api/v1/namespaces/default/configmaps/ssa-raw?fieldManager=test&force=true"
    status, obj, _ = raw_request(api, "PATCH", path, body=body, headers={"Content-Type": "application/apply-patch+yaml"})
    assert status == 201 and obj["data"] == {"x": "1"}
    yaml_body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa-raw\ndata:\n  y: '2'\n"
    status, obj, _ = raw_request(api, "PATCH", path, body=yaml_body, headers={"Content-Type": "application/apply-patch+yaml"})
    assert status == 200 and obj["data"] == {"x": "1", "y": "2"}


def test_optimistic_concurrency_conflict(core):
    created = core.create_namespaced_config_map("default", cm("occ"))
    stale = created.metadata.resource_version
    core.patch_namespaced_config_map("occ", "default", {"data": {"k": "v"}})
    body = {"metadata": {"name": "occ", "resourceVersion": stale}, "data": {"k": "other"}}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("occ", "default", body)
    status = json.loads(err.value.body)
    assert err.value.status == 409 and status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]


BAD_INPUT = [
    ("malformed-json", "POST", "/api/v1/namespaces/default/configmaps", b'{"metadata": {"name": "x",}}', 400, "BadRequest", "not valid JSON"),
    ("unknown-resource", "GET", "/api/v1/namespaces/default/frobnicators", None, 404, "NotFound", "could not find the requested resource"),
    ("unknown-group", "GET", "/apis/nope.example.com/v1/things", None, 404, "NotFound", "could not find the requested resource"),
    ("unknown-object", "GET", "/api/v1/namespaces/default/pods/web", None, 404, "NotFound", 'pods "web" not found'),
    ("missing-namespace", "POST", "/api/v1/namespaces/nope/configmaps", b'{"metadata": {"name": "x"}}', 404, "NotFound", 'namespaces "nope" not found'),
    ("duplicate", "POST", "/api/v1/namespaces", b'{"metadata": {"name": "default"}}', 409, "AlreadyExists", 'namespaces "default" already exists'),
    ("invalid-label-value", "POST", "/api/v1/namespaces/default/configmaps", b'{"metadata": {"name": "x", "labels": {"a": "bad value!"}}}', 422, "Invalid", 'ConfigMap "x" is invalid: metadata.labels: Invalid value: "bad value!"'),
    ("invalid-name", "POST", "/api/v1/namespaces", b'{"metadata": {"name": "Bad_Name"}}', 422, "Invalid", "a lowercase RFC 1123 label"),
    ("wrong-kind", "POST", "/api/v1/namespaces/default/configmaps", b'{"kind": "Secret", "metadata": {"name": "x"}}', 400, "BadRequest", "does not match the expected kind"),
    ("bad-selector", "GET", "/api/v1/pods?labelSelector=a%20in%20b", None, 400, "BadRequest", "unable to parse requirement"),
    ("bad-patch-type", "PATCH", "/api/v1/namespaces/default", b"{}", 415, "UnsupportedMediaType", "unknown format"),
    ("delete-default-namespace", "DELETE", "/api/v1/namespaces/default", None, 403, "Forbidden", "may not be deleted"),
]


@pytest.mark.parametrize("method,path,body,code,reason,message", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_a_status(api, method, path, body, code, reason, message):
    headers = {"Content-Type": "text/x-nonsense"} if reason == "UnsupportedMediaType" else {}
    status, obj, _ = raw_request(api, method, path, body=body, headers=headers)
    assert status == code
    assert obj["kind"] == "Status" and obj["status"] == "Failure"
    assert obj["reason"] == reason and obj["code"] == code
    assert message in obj["message"]


def test_invalid_status_lists_causes(api):
    status, obj, _ = raw_request(api, "POST", "/api/v1/namespaces/default/configmaps", body=b'{"metadata": {"name": "x", "labels": {"a": "bad value!"}}}')
    assert obj["details"]["causes"][0]["field"] == "metadata.labels"
    assert obj["details"]["causes"][0]["reason"] == "FieldValueInvalid"


def test_service_gets_a_cluster_ip_and_releases_it(core, api):
    svc = core.create_namespaced_service("default", {"metadata": {"name": "ip"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    assert svc.spec.cluster_ip in {str(ip) for ip in api.cfg.service_cidr}
    assert svc.spec.ports[0].protocol == "TCP" and svc.spec.ports[0].target_port == 8080
    core.delete_namespaced_service("ip", "default")
    again = core.create_namespaced_service("default", {"metadata": {"name": "ip2"}, "spec": {"clusterIP": svc.spec.cluster_ip, "ports": [{"port": 80}]}})
    assert again.spec.cluster_ip == svc.spec.cluster_ip
    headless = core.create_namespaced_service("default", {"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})
    assert headless.spec.cluster_ip == "None"


def test_new_namespace_gets_a_default_service_account(core):
    core.create_namespace({"metadata": {"name": "fresh"}})
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        names = [sa.metadata.name for sa in core.list_namespaced_service_account("fresh").items]
        if names:
            break
    assert names == ["default"]


def test_generate_name(core):
    made = core.create_namespaced_config_map("default", {"metadata": {"generateName": "gen-"}})
    assert made.metadata.name.startswith("gen-") and len(made.metadata.name) == 9
    assert made.metadata.uid and made.metadata.creation_timestamp and int(made.metadata.resource_version) > 0


def test_discovery_for_the_dynamic_client(api_client):
    from kubernetes.dynamic import DynamicClient

    dyn = DynamicClient(api_client)
    leases = dyn.resources.get(api_version="coordination.k8s.io/v1", kind="Lease")
    assert leases.namespaced and leases.name == "leases"
    pods = dyn.resources.get(api_version="v1", kind="Pod")
    assert "po" in pods.short_names


def test_aggregated_discovery_content_type(api):
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    status, body, headers = raw_request(api, "GET", "/apis", headers={"Accept": accept})
    assert status == 200
    assert headers["Content-Type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    assert body["kind"] == "APIGroupDiscoveryList"
    apps_group = next(i for i in body["items"] if i["metadata"].get("name") == "apps")
    deploy = next(r for r in apps_group["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deploy["shortNames"] == ["deploy"] and deploy["subresources"][0]["subresource"] == "status"


# ---- tokens ------------------------------------------------------------------------------------


def token_review(core_client, token: str, audiences: list[str] | None = None):
    auth = client.AuthenticationV1Api(core_client.api_client)
    return auth.create_token_review({"spec": {"token": token, "audiences": audiences}}).status


def test_token_request_then_token_review(core):
    core.create_namespaced_service_account("default", {"metadata": {"name": "agent"}})
    pod = core.create_namespaced_pod("default", {"metadata": {"name": "agent-pod"}, "spec": {"serviceAccountName": "agent", "containers": [{"name": "c", "image": "i:1"}]}})
    req = core.create_namespaced_service_account_token("agent", "default", {
        "spec": {"audiences": ["ambit-identity"], "expirationSeconds": 3600, "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "agent-pod", "uid": pod.metadata.uid}},
    })
    token = req.status.token
    assert req.status.expiration_timestamp is not None
    ok = token_review(core, token, ["ambit-identity"])
    assert ok.authenticated is True
    assert ok.user.username == "system:serviceaccount:default:agent"
    assert set(ok.user.groups) == {"system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"}
    assert ok.user.extra["authentication.kubernetes.io/pod-name"] == ["agent-pod"]
    assert ok.user.extra["authentication.kubernetes.io/pod-uid"] == [pod.metadata.uid]
    assert ok.audiences == ["ambit-identity"]
    wrong = token_review(core, token, ["someone-else"])
    assert wrong.authenticated is False and "audience" in wrong.error
    core.delete_namespaced_pod("agent-pod", "default")
    gone = token_review(core, token, ["ambit-identity"])
    assert gone.authenticated is False and "no longer exists" in gone.error


def test_expired_token_is_rejected(core, api):
    from sandbox.api.server import issuer_url
    from sandbox.api.tokens import TokenIssuer

    sa = core.create_namespaced_service_account("default", {"metadata": {"name": "old"}})
    issuer = TokenIssuer(key_pem=(api.cfg.pki_dir / "sa.key").read_bytes(), issuer=issuer_url(api.cfg), api_audiences=[issuer_url(api.cfg)])
    token, _ = issuer.issue(namespace="default", service_account="old", service_account_uid=sa.metadata.uid, audiences=["x"], expiration_seconds=600, now=time.time() - 3600)
    review = token_review(core, token, ["x"])
    assert review.authenticated is False and "expired" in review.error


def test_bearer_tokens_on_the_api_itself(core, api):
    status, obj, _ = raw_request(api, "GET", "/api/v1/namespaces", token="not-a-real-token")
    assert status == 401 and obj["reason"] == "Unauthorized" and obj["kind"] == "Status"
    status, _, _ = raw_request(api, "GET", "/api/v1/namespaces", token="")
    assert status == 401
    status, body, _ = raw_request(api, "GET", "/version", token="")
    assert status == 200 and body["gitVersion"] == "v1.32.0-ambit"
    sa_token = core.create_namespaced_service_account_token("default", "default", {"spec": {}}).status.token
    status, body, _ = raw_request(api, "GET", "/api/v1/namespaces/default/configmaps", token=sa_token)
    assert status == 200 and body["kind"] == "ConfigMapList"
    audience_token = core.create_namespaced_service_account_token("default", "default", {"spec": {"audiences": ["other"]}}).status.token
    status, _, _ = raw_request(api, "GET", "/api/v1/namespaces", token=audience_token)
    assert status == 401, "a token for another audience does not authenticate to the API"


def test_token_request_rejects_short_expiry(core):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account_token("default", "default", {"spec": {"expirationSeconds": 60}})
    assert err.value.status == 422


def test_finalizers_hold_deletion_until_removed(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    core.delete_namespaced_config_map("held", "default")
    held = core.read_namespaced_config_map("held", "default")
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("held", "default")
    assert err.value.status == 404


def test_namespace_deletion_waits_for_its_finalizers(core, api):
    """DELETE marks a namespace Terminating (no new content); /finalize removes the ``kubernetes``
    finalizer (what the namespace controller does once the namespace is empty), and it goes."""
    rv = core.list_namespace().metadata.resource_version
    core.create_namespace({"metadata": {"name": "fin"}})
    core.create_namespaced_config_map("fin", cm("kept"))
    status, first, _ = raw_request(api, "DELETE", "/api/v1/namespaces/fin", body=b'{"propagationPolicy": "Background"}')
    assert status == 200
    assert first["metadata"]["deletionTimestamp"] and first["status"]["phase"] == "Terminating"
    assert first["spec"]["finalizers"] == ["kubernetes"]
    status, again, _ = raw_request(api, "DELETE", "/api/v1/namespaces/fin")
    assert status == 200 and again["metadata"] == first["metadata"], "deleting again changes nothing"

    status, refused, _ = raw_request(api, "POST", "/api/v1/namespaces/fin/configmaps", body=b'{"metadata": {"name": "new"}}')
    assert (status, refused["reason"]) == (403, "Forbidden")
    assert refused["message"] == 'configmaps "new" is forbidden: unable to create new content in namespace fin because it is being terminated'
    assert refused["details"]["causes"] == [{"reason": "NamespaceTerminating", "message": "namespace fin is being terminated", "field": "metadata.namespace"}]
    core.patch_namespaced_config_map("kept", "fin", {"data": {"a": "1"}})  # existing content may change

    # only /finalize changes spec.finalizers, and only with PUT
    core.patch_namespace("fin", {"spec": {"finalizers": []}, "metadata": {"labels": {"x": "y"}}})
    assert core.read_namespace("fin").spec.finalizers == ["kubernetes"]
    status, _, _ = raw_request(api, "GET", "/api/v1/namespaces/fin/finalize")
    assert status == 405
    status, bad, _ = raw_request(api, "PUT", "/api/v1/namespaces/fin/finalize", body=b'{"metadata": {"name": "fin"}, "spec": {"finalizers": [7]}}')
    assert (status, bad["reason"]) == (422, "Invalid")

    core.replace_namespace_finalize("fin", {"metadata": {"name": "fin"}, "spec": {"finalizers": []}})
    with pytest.raises(ApiException) as err:
        core.read_namespace("fin")
    assert err.value.status == 404
    assert core.list_namespaced_config_map("fin").items == [], "nothing is left behind"
    events = [(e["type"], e["raw_object"]["status"].get("phase"))
              for e in watch.Watch().stream(core.list_namespace, resource_version=rv, field_selector="metadata.name=fin",
                                            timeout_seconds=1)]
    assert events[0] == ("ADDED", "Active") and ("MODIFIED", "Terminating") in events
    assert events[-1] == ("DELETED", "Terminating")


def test_delete_collection_and_dry_run(core):
    for i in range(3):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"dc-{i}", "labels": {"dc": "yes"}}})
    core.create_namespaced_config_map("default", {"metadata": {"name": "dry"}}, dry_run="All")
    with pytest.raises(ApiException):
        core.read_namespaced_config_map("dry", "default")
    core.delete_collection_namespaced_config_map("default", label_selector="dc=yes")
    assert core.list_namespaced_config_map("default", label_selector="dc=yes").items == []


def test_node_status_and_raw_watch_events(core):
    rv = core.list_node().metadata.resource_version
    core.create_node({"metadata": {"name": "node-9"}})
    core.patch_node_status("node-9", {"status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "10.207.0.19"}]}})
    events = list(watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=1, deserialize=False))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "node-9"), ("MODIFIED", "node-9")]
    assert events[1]["object"]["status"]["addresses"] == [{"type": "InternalIP", "address": "10.207.0.19"}]
