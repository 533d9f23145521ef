"""The controller manager against the real sandbox API (a child process on 127.0.0.1), with a
stand-in kubelet that marks bound pods Running and Ready: what ``kubectl`` would show."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import pytest
from kubernetes import client as k8s

from sandbox.api.process import ApiProcess
from sandbox.config import SandboxConfig
from sandbox.controllers.manager import ControllerManager
from sandbox.kube import api_client

MERGE = "application/merge-patch+json"


def wait_for(what: str, fn: Callable[[], Any], *, timeout: float = 60.0,
             state: Callable[[], Any] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = fn()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"; last saw {state()!r}" if state else ""))


def raw(resp) -> Any:
    return json.loads(resp.data)


class Cluster:
    def __init__(self, api: k8s.ApiClient) -> None:
        self.core, self.apps, self.disc = k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.DiscoveryV1Api(api)

    def items(self, fn, ns="demo") -> list[dict]:
        return raw(fn(ns, _preload_content=False))["items"]

    def pods(self, ns="demo") -> list[dict]:
        return self.items(self.core.list_namespaced_pod, ns)

    def deployment(self, name: str) -> dict:
        return raw(self.apps.read_namespaced_deployment(name, "demo", _preload_content=False))


def fake_kubelet(cluster: Cluster, stop: threading.Event) -> None:
    """Bound pods without an IP get one, phase Running and Ready=True."""
    n = 0
    while not stop.is_set():
        try:
            for ns in ("demo", "ambit-system"):
                for p in cluster.pods(ns):
                    if p["spec"].get("nodeName") and not (p.get("status") or {}).get("podIP"):
                        n += 1
                        cluster.core.patch_namespaced_pod_status(
                            p["metadata"]["name"], ns,
                            {"status": {"phase": "Running", "podIP": f"10.216.{n // 250}.{n % 250 + 2}",
                                        "conditions": [{"type": "Ready", "status": "True",
                                                        "lastTransitionTime": "2024-01-01T00:00:00Z"}]}},
                            _content_type=MERGE)
        except k8s.exceptions.ApiException:
            pass  # a pod deleted under us
        stop.wait(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cfg = SandboxConfig(name="ctlt", index=6, base_dir=tmp_path_factory.mktemp("sandbox"))
    with ApiProcess(cfg):
        api = api_client(cfg)
        c = Cluster(api)
        for node in ("node-1", "node-2"):
            c.core.create_node(k8s.V1Node.from_dict({"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}}))
            c.core.patch_node_status(node, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                                     _content_type=MERGE)
        for ns in ("demo", "ambit-system"):
            c.core.create_namespace(k8s.V1Namespace.from_dict({"metadata": {"name": ns}}))
        stop = threading.Event()
        manager = ControllerManager.for_sandbox(cfg)
        manager.start(stop)
        kubelet = threading.Thread(target=fake_kubelet, args=(c, stop), daemon=True)
        kubelet.start()
        try:
            assert manager.ready.wait(10), "the controller manager's caches never synced"
            yield c
        finally:
            stop.set()
            manager.join()
            kubelet.join(5)
            api.close()


WEB = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "web", "image": "ambit.dev/demo/web:latest",
                                                   "ports": [{"name": "http", "containerPort": 8080}]}]}}},
}


def test_deployment_becomes_ready_behind_its_service(cluster):
    cluster.apps.create_namespaced_deployment("demo", k8s.V1Deployment.from_dict(WEB))
    cluster.core.create_namespaced_service("demo", k8s.V1Service.from_dict({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}))

    def ready():
        st = cluster.deployment("web").get("status") or {}
        return st if st.get("readyReplicas") == 2 and st.get("availableReplicas") == 2 else None

    st = wait_for("web to be 2/2 ready", ready)
    assert st["updatedReplicas"] == 2 and st["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Available": "True", "Progressing": "True"}
    pods = cluster.pods()
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node-1", "node-2"]
    [rs] = cluster.items(cluster.apps.list_namespaced_replica_set)
    assert all(p["metadata"]["name"].startswith(rs["metadata"]["name"] + "-") for p in pods)

    def slice_ready():
        slices = cluster.items(cluster.disc.list_namespaced_endpoint_slice)
        if len(slices) == 1 and sum(e["conditions"]["ready"] for e in slices[0].get("endpoints") or []) == 2:
            return slices[0]
        return None

    s = wait_for("the EndpointSlice to list 2 ready endpoints", slice_ready)
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert sorted(e["targetRef"]["name"] for e in s["endpoints"]) == sorted(p["metadata"]["name"] for p in pods)


def test_rollout_replaces_every_pod(cluster):
    wait_for("web", lambda: (cluster.deployment("web").get("status") or {}).get("availableReplicas") == 2)
    before = {p["metadata"]["name"] for p in cluster.pods()}
    cluster.apps.patch_namespaced_deployment(
        "web", "demo", {"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}}, _content_type=MERGE)

    def rolled():
        d = cluster.deployment("web")
        st = d.get("status") or {}
        done = (st.get("observedGeneration") == d["metadata"]["generation"] and st.get("updatedReplicas") == 2
                and st.get("replicas") == 2 and st.get("availableReplicas") == 2)
        return done and len(cluster.pods()) == 2

    wait_for("the rollout to finish (what `kubectl rollout status` waits for)", rolled)
    assert not before & {p["metadata"]["name"] for p in cluster.pods()}
    replicas = sorted(rs["spec"]["replicas"] for rs in cluster.items(cluster.apps.list_namespaced_replica_set))
    assert replicas == [0, 2]


def test_scale_down_then_up(cluster):
    for n in (1, 3):
        cluster.apps.patch_namespaced_deployment("web", "demo", {"spec": {"replicas": n}}, _content_type=MERGE)
        wait_for(f"{n} ready pods", lambda: (cluster.deployment("web").get("status") or {}).get("readyReplicas") == n
                 and len(cluster.pods()) == n, state=lambda: cluster.deployment("web").get("status"))


def test_daemonset_runs_on_every_node(cluster):
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "ambit-system"},
          "spec": {"selector": {"matchLabels": {"app": "agent"}},
                   "template": {"metadata": {"labels": {"app": "agent"}},
                                "spec": {"containers": [{"name": "agent", "image": "ambit.dev/agent:latest"}]}}}}
    cluster.apps.create_namespaced_daemon_set("ambit-system", k8s.V1DaemonSet.from_dict(ds))

    def ready():
        st = raw(cluster.apps.read_namespaced_daemon_set("agent", "ambit-system", _preload_content=False)).get("status") or {}
        return st if st.get("numberReady") == 2 else None

    st = wait_for("the daemon set to be ready on both nodes", ready)
    assert st["desiredNumberScheduled"] == 2 and st["updatedNumberScheduled"] == 2
    assert sorted(p["spec"]["nodeName"] for p in cluster.pods("ambit-system")) == ["node-1", "node-2"]


def test_deleting_owners_collects_their_dependents(cluster):
    cluster.apps.delete_namespaced_deployment("web", "demo")
    cluster.core.delete_namespaced_service("web", "demo")
    cluster.apps.delete_namespaced_daemon_set("agent", "ambit-system")

    def left():
        return {
            "replicasets": len(cluster.items(cluster.apps.list_namespaced_replica_set)),
            "pods": len(cluster.pods()) + len(cluster.pods("ambit-system")),
            "endpointslices": len(cluster.items(cluster.disc.list_namespaced_endpoint_slice)),
        }

    wait_for("the garbage collector to remove ReplicaSets, pods and EndpointSlices",
             lambda: not any(left().values()), state=left)


def test_demo_application_comes_up(cluster):
    """The demo's manifests, applied as `ambit up --demo` does, become ready Deployments behind
    Services whose EndpointSlices list every replica on port 8080."""
    from sandbox.demo import manifests

    create = {
        "ServiceAccount": cluster.core.create_namespaced_service_account,
        "Service": cluster.core.create_namespaced_service,
        "Deployment": cluster.apps.create_namespaced_deployment,
    }
    for doc in manifests.load():
        if doc["kind"] == "Namespace":
            continue  # the fixture made it
        create[doc["kind"]]("demo", doc)

    def ready():
        deps = cluster.items(cluster.apps.list_namespaced_deployment)
        return {d["metadata"]["name"]: (d.get("status") or {}).get("readyReplicas") for d in deps}

    wait_for("every demo Deployment to be ready",
             lambda: ready() == {"emoji": 2, "voting": 2, "web": 2, "vote-bot": 1}, state=ready)

    def slices():
        out = {}
        for s in cluster.items(cluster.disc.list_namespaced_endpoint_slice):
            ready_eps = [e for e in s.get("endpoints") or [] if e["conditions"]["ready"]]
            out[s["metadata"]["labels"]["kubernetes.io/service-name"]] = (len(ready_eps), s.get("ports"))
        return out

    http = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    wait_for("EndpointSlices for emoji, voting and web",
             lambda: slices() == {"emoji": (2, http), "voting": (2, http), "web": (2, http)}, state=slices)
