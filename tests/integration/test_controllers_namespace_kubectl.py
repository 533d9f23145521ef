"""Namespace deletion with the real API, the controller manager and the real kubectl: what a user
who deletes a namespace, or a file that holds one, types and sees."""
from __future__ import annotations

import json
import textwrap
import time

import pytest


SANDBOX = ("nsct", 5)  # the api, cfg (with controllers) and kubectl fixtures: tests/integration/conftest.py
pytestmark = pytest.mark.usefixtures("cfg")


def app(namespace: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: v1
        kind: Namespace
        metadata:
          name: {namespace}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
          namespace: {namespace}
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
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namespace: {namespace}
        spec:
          selector: {{app: web}}
          ports:
          - port: 8080
    """)


def wait_for(what: str, fn, *, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = fn()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def names(kubectl, what: str, namespace: str) -> list[str]:
    return kubectl("get", what, "-n", namespace, "-o", "name").stdout.split()


def test_delete_file_with_a_namespace_and_its_content(kubectl):
    kubectl("apply", "-f", "-", stdin=app("shop"))
    wait_for("the deployment's pods", lambda: len(names(kubectl, "pods", "shop")) == 2)
    assert names(kubectl, "serviceaccounts", "shop") == ["serviceaccount/default"]

    started = time.monotonic()
    res = kubectl("delete", "-f", "-", stdin=app("shop"), check=False)
    took = time.monotonic() - started
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout.splitlines() == ['namespace "shop" deleted', 'deployment.apps "web" deleted', 'service "web" deleted']
    assert took < 15, f"kubectl waited {took:.1f}s for the namespace to go"

    gone = kubectl("get", "namespace", "shop", check=False)
    assert gone.returncode == 1 and 'namespaces "shop" not found' in gone.stderr
    for what in ("pods", "replicasets", "endpointslices", "serviceaccounts"):
        assert names(kubectl, what, "shop") == [], what


def test_terminating_namespace_refuses_new_content_until_it_is_gone(kubectl):
    kubectl("create", "namespace", "held")
    held = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "held", "namespace": "held", "finalizers": ["example.com/hold"]}}
    kubectl("apply", "-f", "-", stdin=json.dumps(held))
    assert kubectl("delete", "namespace", "held", "--wait=false").stdout.strip() == 'namespace "held" deleted'
    assert kubectl("get", "namespace", "held", "--no-headers").stdout.split()[:2] == ["held", "Terminating"]

    refused = kubectl("apply", "-f", "-", stdin=app("held"), check=False)
    assert refused.returncode == 1
    assert ('Error from server (Forbidden): error when creating "STDIN": deployments.apps "web" is forbidden: '
            "unable to create new content in namespace held because it is being terminated") in refused.stderr

    # the controller deletes the config map, whose own finalizer keeps it (and so the namespace)
    wait_for("the config map to be deleted", lambda: kubectl(
        "get", "cm", "held", "-n", "held", "-o", "jsonpath={.metadata.deletionTimestamp}").stdout)
    assert names(kubectl, "serviceaccounts", "held") == []
    assert kubectl("get", "namespace", "held", "--no-headers").stdout.split()[:2] == ["held", "Terminating"]

    kubectl("patch", "cm", "held", "-n", "held", "--type=merge", "-p", '{"metadata": {"finalizers": null}}')
    kubectl("wait", "--for=delete", "namespace/held", "--timeout=20s")
    kubectl("create", "namespace", "held")  # the name is free again
    assert names(kubectl, "configmaps", "held") == []
