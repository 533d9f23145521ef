"""Kubelet pieces that need no API or root: Node object, pod records, token refresh timing."""
from __future__ import annotations

from pathlib import Path

from sandbox.config import SandboxConfig
from sandbox.node import kubelet, layout, serviceaccount
from sandbox.node.logs import find_pod_logs, read_log
from sandbox.node.pods import PodRecord, pod_ref

CFG = SandboxConfig(name="nodet", index=8, nodes=2, base_dir=Path("/tmp/unused"))


def test_node_object_and_status():
    obj = kubelet.node_object(CFG, "node-2", 2)
    assert obj["metadata"]["labels"]["kubernetes.io/hostname"] == "node-2"
    assert obj["metadata"]["labels"]["kubernetes.io/os"] == "linux"
    assert obj["spec"] == {"podCIDR": "10.218.2.0/24", "podCIDRs": ["10.218.2.0/24"]}
    status = kubelet.node_status(CFG, "node-2", 2, now="t2", ready_since="t1")
    assert status["addresses"] == [{"type": "InternalIP", "address": "10.208.0.12"},
                                   {"type": "Hostname", "address": "node-2"}]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastHeartbeatTime"], ready["lastTransitionTime"]) == ("True", "t2", "t1")
    assert status["nodeInfo"]["kubeletVersion"] == "v1.32.0-ambit"


def test_kubelet_argv_enters_only_the_network_namespace():
    argv = kubelet.kubelet_argv(CFG, "node-1", 1)
    assert argv[:2] == ["nsenter", "--net=/run/netns/nodet-node-1"]
    assert argv[-5:] == ["sandbox.node.kubelet", "--node", "node-1", "--index", "1"]


def test_pod_record_round_trip(tmp_path):
    rec = PodRecord(namespace="n", name="p", uid="u", host_network=False, netns="nodet-pod-u", sandbox_id="ab",
                    pids={"web": [123, 456]})
    rec.save(tmp_path)
    assert PodRecord.load(tmp_path) == rec


def test_pod_ref_defaults_the_namespace():
    assert pod_ref({"metadata": {"name": "p", "uid": "u"}}) == ("default", "p", "u")


def test_token_refresh_at_80_percent():
    assert serviceaccount.refresh_after(1000.0, 4600.0) == 1000.0 + 2880.0
    assert serviceaccount.wants_token({"spec": {}}) and not serviceaccount.wants_token(
        {"spec": {"automountServiceAccountToken": False}})


def test_logs_are_found_on_any_node(tmp_path):
    cfg = SandboxConfig(name="nodet", index=8, nodes=2, base_dir=tmp_path)
    path = layout.pod_log_path(cfg, "node-2", "shop", "web-1", "app")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"one\ntwo\nthree\n")
    assert find_pod_logs(cfg, "shop", "web-1") == {"app": path}
    assert find_pod_logs(cfg, "shop", "other") == {}
    assert read_log(path, tail=2) == "two\nthree\n"


def test_api_errors_become_one_line_with_the_apis_message():
    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=404, reason="Not Found")
    exc.body = '{"kind":"Status","message":"serviceaccounts \\"agent\\" not found","code":404}'
    err = kubelet.api_error(exc, "TokenRequest for ns/agent")
    assert str(err) == 'TokenRequest for ns/agent: the API answered 404 Not Found: serviceaccounts "agent" not found'
    assert err.status == 404
    bare = ApiException(status=503, reason="Service Unavailable")
    assert str(kubelet.api_error(bare, "reading ns/x")) == "reading ns/x: the API answered 503 Service Unavailable"
