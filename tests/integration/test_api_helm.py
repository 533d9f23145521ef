"""The real helm (and kubectl's cascading deletes) against the sandbox API and its controllers,
without kubelets: what `helm install|upgrade|list|uninstall` send — server-side apply, release
Secrets and their DeleteOptions in protobuf, deletes with a propagation policy — and that
nothing of a release is left once it is uninstalled. Readiness (`--wait`) needs kubelets: see
tests/e2e/test_helm.py."""
from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest


SANDBOX = ("helmt", 6)  # the api, cfg (with controllers), helm and kubectl fixtures: tests/integration/conftest.py
pytestmark = pytest.mark.usefixtures("cfg")
CHART = Path(__file__).resolve().parents[1] / "charts" / "tiny"
RELEASE_KINDS = ("deployments", "replicasets", "daemonsets", "pods", "services", "endpointslices", "configmaps", "secrets")


def items(kubectl, what: str, namespace: str, *selector: str) -> list[dict]:
    return json.loads(kubectl("get", what, "-n", namespace, *selector, "-o", "json").stdout)["items"]


def names(kubectl, what: str, namespace: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in items(kubectl, what, namespace))


def wait_for(what: str, fn, *, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = fn()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def left_over(kubectl, namespace: str) -> dict[str, list[str]]:
    found = {kind: names(kubectl, kind, namespace) for kind in RELEASE_KINDS}
    return {kind: found_names for kind, found_names in found.items() if found_names}


@pytest.mark.parametrize("cascade", ["background", "foreground"])
def test_install_upgrade_list_uninstall_leaves_nothing(helm, kubectl, cascade):
    ns = f"tiny-{cascade}"
    out = helm("install", "t1", str(CHART), "-n", ns, "--create-namespace").stdout
    assert "STATUS: deployed" in out
    pods = wait_for("the web pods", lambda: len(items(kubectl, "pods", ns)) == 2 and items(kubectl, "pods", ns))
    first_hash = {p["metadata"]["labels"]["pod-template-hash"] for p in pods}
    assert len(first_hash) == 1
    assert names(kubectl, "configmaps", ns) == ["t1-config"]

    helm("upgrade", "t1", str(CHART), "-n", ns, "--set", "message=bye")
    deploy = items(kubectl, "deployments", ns)[0]
    assert deploy["metadata"]["generation"] == 2
    assert deploy["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "MESSAGE", "value": "bye"}]
    replicasets = wait_for("a second ReplicaSet", lambda: len(items(kubectl, "replicasets", ns)) == 2 and items(kubectl, "replicasets", ns))
    assert {rs["metadata"]["labels"]["pod-template-hash"] for rs in replicasets} > first_hash
    assert json.loads(kubectl("get", "cm", "t1-config", "-n", ns, "-o", "json").stdout)["data"] == {"message": "bye"}

    [release] = json.loads(helm("list", "-n", ns, "-o", "json").stdout)
    assert (release["name"], release["revision"], release["status"]) == ("t1", "2", "deployed")
    assert len(items(kubectl, "secrets", ns, "-l", "owner=helm,name=t1")) == 2

    res = helm("uninstall", "t1", "-n", ns, "--cascade", cascade, "--wait")
    assert res.stdout.strip() == 'release "t1" uninstalled', res.stdout + res.stderr
    assert json.loads(helm("list", "-n", ns, "-o", "json").stdout) == []
    wait_for("every object of the release to go", lambda: not left_over(kubectl, ns), timeout=15)


APP = textwrap.dedent("""
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      namespace: {ns}
    spec:
      replicas: 2
      selector:
        matchLabels: {{app: web}}
      template:
        metadata:
          labels: {{app: web}}
        spec:
          containers:
          - name: web
            image: ambit.dev/demo/web:latest
""")


@pytest.mark.parametrize(
    "cascade,kept",
    [
        pytest.param("background", [], id="background"),
        pytest.param("foreground", [], id="foreground"),
        pytest.param("orphan", ["pods", "replicasets"], id="orphan"),
    ],
)
def test_kubectl_cascading_delete_of_a_deployment(kubectl, cascade, kept):
    ns = f"cascade-{cascade}"
    kubectl("create", "namespace", ns)
    kubectl("apply", "-f", "-", stdin=APP.format(ns=ns))
    wait_for("the pods", lambda: len(items(kubectl, "pods", ns)) == 2)

    out = kubectl("delete", "deployment", "web", "-n", ns, f"--cascade={cascade}", "--timeout=20s").stdout
    assert out.strip() == 'deployment.apps "web" deleted'
    assert names(kubectl, "deployments", ns) == []  # kubectl waits until the Deployment itself is gone
    wait_for(f"the {cascade} deletion to settle",
             lambda: sorted(k for k in ("replicasets", "pods") if names(kubectl, k, ns)) == kept)
    time.sleep(1)  # the garbage collector has had its chance to (wrongly) remove what is kept
    assert sorted(k for k in ("replicasets", "pods") if names(kubectl, k, ns)) == kept
    if kept:
        [rs] = items(kubectl, "replicasets", ns)
        assert "ownerReferences" not in rs["metadata"], "orphaned ReplicaSet still names its Deployment"


def test_foreground_delete_keeps_the_owner_until_its_dependents_are_gone(kubectl):
    ns = "cascade-watch"
    kubectl("create", "namespace", ns)
    kubectl("apply", "-f", "-", stdin=APP.format(ns=ns))
    wait_for("the pods", lambda: len(items(kubectl, "pods", ns)) == 2)
    kubectl("delete", "deployment", "web", "-n", ns, "--cascade=foreground", "--wait=false")
    deploy = json.loads(kubectl("get", "deployment", "web", "-n", ns, "-o", "json", check=False).stdout or "{}")
    if deploy:  # caught before the collector finished: held by the finalizer, marked for deletion
        assert deploy["metadata"]["finalizers"] == ["foregroundDeletion"]
        assert deploy["metadata"]["deletionTimestamp"]
    wait_for("the Deployment and everything it owned to go",
             lambda: not any(names(kubectl, k, ns) for k in ("deployments", "replicasets", "pods")))
