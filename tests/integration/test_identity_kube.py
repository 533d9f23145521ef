"""The Kubernetes adapters with the real ``kubernetes`` client against a small fake API on 127.0.0.1."""
import asyncio
import base64
import json
import re
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client as k8s

from node_agent.identity.bootstrap import load_or_create_ca, publish_trust_bundle
from node_agent.identity.ca import CertificateAuthority
from node_agent.identity.clock import SystemClock
from node_agent.identity.errors import ClusterApiError
from node_agent.identity.kube import KubeCaSecretStore, KubeClusterApi
from node_agent.identity.settings import IdentitySettings


class FakeApi:
    """Just enough of the API server: TokenReview, pods, secrets, configmaps; ``fail`` forces HTTP 500."""

    def __init__(self):
        self.objects = {}  # (kind, ns, name) -> dict
        self.requests = []
        self.fail = False
        self.create_conflict = None  # a kind whose next create answers 409 after another writer wins
        self.lock = threading.Lock()

    def handle(self, method, path, query, body):
        self.requests.append((method, path, query, body))
        if self.fail:
            return 500, {"kind": "Status", "code": 500, "message": "etcd is down"}
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" and method == "POST":
            token, audiences = body["spec"]["token"], body["spec"].get("audiences") or []
            if token != "good":
                return 201, {**body, "status": {"authenticated": False, "error": "invalid bearer token"}}
            return 201, {**body, "status": {
                "authenticated": True, "audiences": audiences,
                "user": {"username": "system:serviceaccount:ambit-system:ambit-node-agent", "uid": "u1",
                         "extra": {"authentication.kubernetes.io/pod-name": ["agent-1"],
                                   "authentication.kubernetes.io/pod-uid": ["uid-a1"]}}}}
        m = re.fullmatch(r"/apis?/(?:v1|apps/v1)/namespaces/([^/]+)/(pods|secrets|configmaps|deployments)(?:/([^/]+))?",
                         path)
        if not m:
            return 404, {"kind": "Status", "code": 404}
        ns, kind, name = m.groups()
        with self.lock:
            if method == "GET" and name:
                obj = self.objects.get((kind, ns, name))
                return (200, obj) if obj else (404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            if method == "GET":
                items = [o for (k, n, _), o in self.objects.items() if k == kind and n == ns]
                selector = query.get("fieldSelector", [""])[0]
                if selector:
                    field, _, value = selector.partition("=")
                    assert field == "spec.nodeName"
                    items = [o for o in items if o["spec"].get("nodeName") == value]
                return 200, {"kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}
            if method == "POST":
                key = (kind, ns, body["metadata"]["name"])
                if self.create_conflict == kind:
                    self.create_conflict = None
                    self.objects[key] = self.winner
                if key in self.objects:
                    return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
                body["metadata"]["resourceVersion"] = "1"
                self.objects[key] = body
                return 201, body
            if method == "PUT":
                key = (kind, ns, name)
                current = self.objects.get(key)
                if current is None:
                    return 404, {"kind": "Status", "code": 404}
                if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    return 409, {"kind": "Status", "code": 409, "reason": "Conflict"}
                body["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
                self.objects[key] = body
                return 200, body
        return 405, {"kind": "Status", "code": 405}


@pytest.fixture
def api():
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, answer = fake.handle(self.command, parts.path, parse_qs(parts.query), body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-api", daemon=True)
    thread.start()
    configuration = k8s.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    fake.client = k8s.ApiClient(configuration)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        fake.client.close()


def pod(ns, name, *, node, sa, phase="Running", uid=None):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "resourceVersion": "1"},
            "spec": {"nodeName": node, "serviceAccountName": sa}, "status": {"phase": phase}}


def test_token_review_sends_the_audience_and_reads_the_pod_binding(api):
    cluster = KubeClusterApi(api.client, timeout=5)
    good = asyncio.run(cluster.review_token("good", audience="ambit-identity"))
    assert good.authenticated and good.username == "system:serviceaccount:ambit-system:ambit-node-agent"
    assert good.audiences == ("ambit-identity",)
    assert good.extra["authentication.kubernetes.io/pod-name"] == ("agent-1",)
    method, path, _, body = api.requests[0]
    assert body["kind"] == "TokenReview" and body["apiVersion"] == "authentication.k8s.io/v1"
    assert body["spec"] == {"token": "good", "audiences": ["ambit-identity"]}
    bad = asyncio.run(cluster.review_token("bad", audience="ambit-identity"))
    assert not bad.authenticated and bad.error == "invalid bearer token"


def test_pod_reads(api):
    api.objects[("pods", "ambit-system", "agent-1")] = pod("ambit-system", "agent-1", node="node-1",
                                                           sa="ambit-node-agent", uid="uid-a1")
    api.objects[("pods", "shop", "web-1")] = pod("shop", "web-1", node="node-1", sa="web")
    api.objects[("pods", "shop", "web-2")] = pod("shop", "web-2", node="node-2", sa="web", phase="Pending")
    cluster = KubeClusterApi(api.client, timeout=5)

    async def go():
        return (await cluster.get_pod(namespace="ambit-system", name="agent-1"),
                await cluster.get_pod(namespace="ambit-system", name="gone"),
                await cluster.list_pods_on_node(namespace="shop", node_name="node-2"))

    agent, gone, on_node_2 = asyncio.run(go())
    assert (agent.uid, agent.node_name, agent.service_account, agent.phase) == ("uid-a1", "node-1",
                                                                                "ambit-node-agent", "Running")
    assert gone is None
    assert [(p.name, p.phase) for p in on_node_2] == [("web-2", "Pending")]
    assert api.requests[-1][2] == {"fieldSelector": ["spec.nodeName=node-2"]}


def test_api_failures_become_cluster_api_errors(api):
    api.fail = True
    cluster = KubeClusterApi(api.client, timeout=5)
    store = KubeCaSecretStore(api.client, timeout=5)
    with pytest.raises(ClusterApiError, match="TokenReview failed: HTTP 500.*system:auth-delegator"):
        asyncio.run(cluster.review_token("good", audience="ambit-identity"))
    with pytest.raises(ClusterApiError, match="reading pod shop/web-1 failed: HTTP 500"):
        asyncio.run(cluster.get_pod(namespace="shop", name="web-1"))
    with pytest.raises(ClusterApiError, match="reading secret ambit-system/ambit-ca failed: HTTP 500"):
        asyncio.run(store.read_secret(namespace="ambit-system", name="ambit-ca"))


def test_unreachable_api_is_a_cluster_api_error():
    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    configuration.retries = 0
    with k8s.ApiClient(configuration) as client:
        with pytest.raises(ClusterApiError, match="is the Kubernetes API reachable"):
            asyncio.run(KubeClusterApi(client, timeout=2).get_pod(namespace="shop", name="web-1"))


def test_bootstrap_through_the_api_creates_secret_and_config_map(api):
    store = KubeCaSecretStore(api.client, timeout=5)
    settings = IdentitySettings()

    async def go():
        ca = await load_or_create_ca(store, settings=settings, clock=SystemClock())
        await publish_trust_bundle(store, ca, settings=settings)
        again = await load_or_create_ca(store, settings=settings, clock=SystemClock())
        return ca, again

    ca, again = asyncio.run(go())
    secret = api.objects[("secrets", "ambit-system", "ambit-ca")]
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["root-cert.pem"]).decode() == ca.roots_pem
    assert base64.b64decode(secret["data"]["ca.key"]).startswith(b"-----BEGIN PRIVATE KEY-----")
    assert api.objects[("configmaps", "ambit-system", "ambit-trust-bundle")]["data"] == {"root-cert.pem": ca.roots_pem}
    assert again.roots == ca.roots


def test_what_the_ca_creates_is_owned_by_its_deployment(api):
    """So that uninstalling Ambit (helm or ambit uninstall) garbage-collects the generated root."""
    api.objects[("deployments", "ambit-system", "ambit-identity")] = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ambit-identity", "namespace": "ambit-system", "uid": "uid-deploy",
                     "labels": {"helm.sh/chart": "ambit-0.1.0", "app.kubernetes.io/instance": "ambit", "team": "x"}}}
    store = KubeCaSecretStore(api.client, timeout=5, owner_deployment="ambit-identity")
    settings = IdentitySettings()

    async def go():
        ca = await load_or_create_ca(store, settings=settings, clock=SystemClock())
        await publish_trust_bundle(store, ca, settings=settings)

    asyncio.run(go())
    for key in (("secrets", "ambit-system", "ambit-ca"), ("configmaps", "ambit-system", "ambit-trust-bundle")):
        meta = api.objects[key]["metadata"]
        assert meta["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "ambit-identity",
                                            "uid": "uid-deploy"}]
        assert meta["labels"] == {"app.kubernetes.io/part-of": "ambit", "helm.sh/chart": "ambit-0.1.0",
                                  "app.kubernetes.io/instance": "ambit"}
    missing = KubeCaSecretStore(api.client, timeout=5, owner_deployment="renamed")
    del api.objects[("secrets", "ambit-system", "ambit-ca")]
    with pytest.raises(ClusterApiError, match="ambit-system/renamed, the owner of what it creates, does not exist"):
        asyncio.run(load_or_create_ca(missing, settings=settings, clock=SystemClock()))


def test_create_race_and_config_map_update(api):
    winner = CertificateAuthority.generate(trust_domain="cluster.local", ttl=timedelta(days=1), clock=SystemClock())
    api.winner = {"metadata": {"name": "ambit-ca", "namespace": "ambit-system", "resourceVersion": "1"},
                  "data": {k: base64.b64encode(v).decode() for k, v in winner.secret_data().items()}}
    api.create_conflict = "secrets"
    api.objects[("configmaps", "ambit-system", "ambit-trust-bundle")] = {
        "metadata": {"name": "ambit-trust-bundle", "namespace": "ambit-system", "resourceVersion": "7"},
        "data": {"root-cert.pem": "stale"}}
    store = KubeCaSecretStore(api.client, timeout=5)
    settings = IdentitySettings()

    async def go():
        ca = await load_or_create_ca(store, settings=settings, clock=SystemClock())
        await publish_trust_bundle(store, ca, settings=settings)
        return ca

    ca = asyncio.run(go())
    assert ca.roots == winner.roots  # 409 on create: the other replica's material is used
    cm = api.objects[("configmaps", "ambit-system", "ambit-trust-bundle")]
    assert cm["data"] == {"root-cert.pem": winner.roots_pem} and cm["metadata"]["resourceVersion"] == "8"


def test_main_exits_1_with_the_reason_when_the_api_is_unreachable(caplog):
    from node_agent.identity.server import main

    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"
    configuration.retries = 0
    with k8s.ApiClient(configuration) as client:
        assert main(IdentitySettings(), api_client=client) == 1
    assert any("identity CA: reading secret ambit-system/ambit-ca failed" in r.getMessage()
               and "is the Kubernetes API reachable?" in r.getMessage() for r in caplog.records)
