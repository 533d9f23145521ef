"""The real kubectl against the sandbox API: what a user types and what they see."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import textwrap
import time



KUBECTL = shutil.which("kubectl")
SANDBOX = ("apit", 7)  # the api and kubectl fixtures: tests/integration/conftest.py


APP = textwrap.dedent("""
    apiVersion: v1
    kind: Namespace
    metadata:
      name: shop
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      namespace: shop
    spec:
      replicas: 2
      selector:
        matchLabels: {app: web}
      template:
        metadata:
          labels: {app: web}
        spec:
          containers:
          - name: web
            image: nginx:1.27
            ports:
            - containerPort: 80
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web
      namespace: shop
    spec:
      selector: {app: web}
      ports:
      - port: 80
""")


def test_apply_creates_then_strategic_merge_keeps_container_ports(kubectl):
    first = kubectl("apply", "-f", "-", stdin=APP)
    assert first.stdout.split("\n")[:3] == ["namespace/shop created", "deployment.apps/web created", "service/web created"]
    second = kubectl("apply", "-f", "-", stdin=APP.replace("nginx:1.27", "nginx:1.28"))
    assert "deployment.apps/web configured" in second.stdout
    assert "service/web unchanged" in second.stdout
    deploy = json.loads(kubectl("get", "deploy", "web", "-n", "shop", "-o", "json").stdout)
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "nginx:1.28"
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert deploy["metadata"]["generation"] == 2
    svc = json.loads(kubectl("get", "svc", "web", "-n", "shop", "-o", "json").stdout)
    assert svc["spec"]["clusterIP"].startswith("10.227.")
    assert svc["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]


def test_server_side_apply_creates_and_updates(kubectl):
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: default\ndata:\n  a: '1'\n"
    assert kubectl("apply", "--server-side", "-f", "-", stdin=cm).stdout.strip() == "configmap/ssa serverside-applied"
    kubectl("apply", "--server-side", "-f", "-", stdin=cm.replace("'1'", "'2'"))
    out = kubectl("get", "cm", "ssa", "-o", "jsonpath={.data.a}").stdout
    assert out == "2"


def configmap(name: str, *, namespace: str = "default", data: dict[str, str] | None = None) -> str:
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data or {}}
    return json.dumps(doc)


def _header_and_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line.split() for line in text.strip().splitlines()]
    return lines[0], lines[1:]


def test_get_pods_all_namespaces_wide_shows_columns(kubectl):
    kubectl("run", "probe", "-n", "default", "--image", "busybox:1.36", "--restart=Never")
    header, rows = _header_and_rows(kubectl("get", "pods", "-A", "-o", "wide").stdout)
    assert header == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]
    probe = next(r for r in rows if r[1] == "probe")
    assert probe[0] == "default"
    assert probe[2:5] == ["0/1", "Pending", "0"]
    assert probe[5].endswith("s")
    header, _ = _header_and_rows(kubectl("get", "svc", "-A").stdout)
    assert header == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    header, rows = _header_and_rows(kubectl("get", "ns").stdout)
    assert header == ["NAME", "STATUS", "AGE"]
    assert {r[0] for r in rows} >= {"default", "kube-system", "kube-public"}


def test_label_overwrite_and_removal(kubectl):
    kubectl("apply", "-f", "-", stdin=configmap("labelled"))
    assert kubectl("label", "cm", "labelled", "team=a").stdout.strip() == "configmap/labelled labeled"
    refused = kubectl("label", "cm", "labelled", "team=b", check=False)
    assert refused.returncode == 1 and "--overwrite is false" in refused.stderr
    kubectl("label", "cm", "labelled", "team=b", "--overwrite")
    assert "team=b" in kubectl("get", "cm", "labelled", "--show-labels").stdout
    assert kubectl("get", "cm", "-l", "team=b", "-o", "name").stdout.strip() == "configmap/labelled"
    assert kubectl("label", "cm", "labelled", "team-").stdout.strip() == "configmap/labelled unlabeled"
    assert kubectl("get", "cm", "labelled", "-o", "jsonpath={.metadata.labels}").stdout in ("", "{}")
    invalid = kubectl("label", "cm", "labelled", "team=bad!value", check=False)
    assert invalid.returncode == 1


def test_get_watch_prints_new_objects(api, kubectl, tmp_path):
    watcher = subprocess.Popen(
        [KUBECTL or "kubectl", "--kubeconfig", str(api.kubeconfig), "get", "cm", "-n", "default", "-w"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        seen = ""
        deadline = time.monotonic() + 60  # a patient wait, not a timing: kubectl starts slowly on a loaded machine
        created = False
        while time.monotonic() < deadline and "watched-cm" not in seen:
            ready, _, _ = select.select([watcher.stdout], [], [], 0.5)
            if ready:
                seen += watcher.stdout.readline()
            if not created and "NAME" in seen:
                kubectl("apply", "-f", "-", stdin=configmap("watched-cm", data={"a": "1"}))
                created = True
        lines = [line for line in seen.splitlines() if "watched-cm" in line]
        assert lines, f"kubectl get -w printed no watched-cm (created: {created}); it printed:\n{seen}"
        assert lines[0].split()[:2] == ["watched-cm", "1"]
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=10)
        watcher.stdout.close()


def test_delete_and_delete_missing(kubectl):
    kubectl("apply", "-f", "-", stdin=configmap("doomed"))
    assert kubectl("delete", "cm", "doomed").stdout.strip() == 'configmap "doomed" deleted'
    missing = kubectl("delete", "cm", "doomed", check=False)
    assert missing.returncode == 1
    assert 'Error from server (NotFound): configmaps "doomed" not found' in missing.stderr


def test_deleted_namespace_is_terminating_until_finalized(kubectl):
    """Without the controllers (the namespace controller empties and finalizes namespaces), a
    deleted namespace stays Terminating; finalizing it by hand removes it and what is left in it."""
    kubectl("apply", "-f", "-", stdin='{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp-ns"}}')
    kubectl("apply", "-f", "-", stdin=configmap("inside", namespace="tmp-ns"))
    assert kubectl("delete", "namespace", "tmp-ns", "--wait=false").stdout.strip() == 'namespace "tmp-ns" deleted'
    header, rows = _header_and_rows(kubectl("get", "namespace", "tmp-ns").stdout)
    assert header == ["NAME", "STATUS", "AGE"] and rows[0][:2] == ["tmp-ns", "Terminating"]
    refused = kubectl("apply", "-f", "-", stdin=configmap("late", namespace="tmp-ns"), check=False)
    assert refused.returncode == 1
    assert ('Error from server (Forbidden): error when creating "STDIN": configmaps "late" is forbidden: '
            "unable to create new content in namespace tmp-ns because it is being terminated") in refused.stderr
    assert kubectl("get", "cm", "inside", "-n", "tmp-ns", "-o", "name").stdout.strip() == "configmap/inside"

    ns = json.loads(kubectl("get", "namespace", "tmp-ns", "-o", "json").stdout)
    assert ns["spec"]["finalizers"] == ["kubernetes"] and ns["metadata"]["deletionTimestamp"]
    ns["spec"]["finalizers"] = []
    kubectl("replace", "--raw", "/api/v1/namespaces/tmp-ns/finalize", "-f", "-", stdin=json.dumps(ns))
    gone = kubectl("get", "namespace", "tmp-ns", check=False)
    assert gone.returncode == 1 and 'namespaces "tmp-ns" not found' in gone.stderr
    assert kubectl("get", "cm", "-A", "--field-selector", "metadata.namespace=tmp-ns", "-o", "name").stdout.strip() == ""


def test_unknown_resource_type(kubectl):
    res = kubectl("get", "frobnicators", check=False)
    assert res.returncode == 1
    assert 'the server doesn\'t have a resource type "frobnicators"' in res.stderr


def test_version_and_api_resources(kubectl):
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.32.0-ambit"
    names = {line.split()[0] for line in kubectl("api-resources", "--no-headers").stdout.splitlines()}
    assert {"pods", "services", "deployments", "endpointslices", "customresourcedefinitions", "tokenreviews"} <= names
    assert not {"gateways", "httproutes"} & names, "the Gateway API kinds come with their CRDs (the chart's crds/)"


def test_imperative_create_commands_send_protobuf_and_work(kubectl):
    assert kubectl("create", "namespace", "imp").stdout.strip() == "namespace/imp created"
    kubectl("create", "configmap", "c", "-n", "imp", "--from-literal=a=1")
    kubectl("create", "secret", "generic", "s", "-n", "imp", "--from-literal=p=pw")
    kubectl("create", "deployment", "web", "-n", "imp", "--image=nginx:1.27", "--replicas=3", "--port=80")
    kubectl("create", "service", "clusterip", "web", "-n", "imp", "--tcp=80:8080")
    assert kubectl("get", "cm", "c", "-n", "imp", "-o", "jsonpath={.data.a}").stdout == "1"
    assert kubectl("get", "secret", "s", "-n", "imp", "-o", "jsonpath={.data.p}").stdout == "cHc="
    deploy = json.loads(kubectl("get", "deploy", "web", "-n", "imp", "-o", "json").stdout)
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert deploy["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    svc = json.loads(kubectl("get", "svc", "web", "-n", "imp", "-o", "json").stdout)
    assert svc["spec"]["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]
    token = kubectl("create", "token", "default", "-n", "imp", "--audience=ambit").stdout.strip()
    assert token.count(".") == 2


def test_scale(kubectl):
    kubectl("create", "deployment", "scaled", "--image=nginx:1.27")
    assert kubectl("scale", "deploy", "scaled", "--replicas=4").stdout.strip() == "deployment.apps/scaled scaled"
    header, rows = _header_and_rows(kubectl("get", "deploy", "scaled").stdout)
    assert header[:2] == ["NAME", "READY"] and rows[0][:2] == ["scaled", "0/4"]
