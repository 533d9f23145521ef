"""manifests.yaml: what `ambit up --demo` applies must be consistent with the demo's code."""
from __future__ import annotations

import importlib.util

import pytest

from sandbox.controllers.endpointslice import resolve_target_port
from sandbox.controllers.objects import selector_matches
from sandbox.demo import manifests

DOCS = manifests.load()
BY_KIND: dict[str, dict[str, dict]] = {}
for _doc in DOCS:
    BY_KIND.setdefault(_doc["kind"], {})[_doc["metadata"]["name"]] = _doc

DEPLOYMENTS = {"emoji": 2, "voting": 2, "web": 2, "vote-bot": 1}


def test_inventory():
    assert DOCS[0]["kind"] == "Namespace" and DOCS[0]["metadata"]["name"] == "demo"
    assert set(BY_KIND["ServiceAccount"]) == {"web", "emoji", "voting", "vote-bot"}
    assert {n: d["spec"]["replicas"] for n, d in BY_KIND["Deployment"].items()} == DEPLOYMENTS
    assert set(BY_KIND["Service"]) == {"emoji", "voting", "web"}
    assert all(d["metadata"].get("namespace", "demo") == "demo" for d in DOCS)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment(name):
    d = BY_KIND["Deployment"][name]
    template = d["spec"]["template"]
    assert template["metadata"]["labels"]["app"] == name
    assert d["metadata"]["labels"]["app"] == name
    assert selector_matches(d["spec"]["selector"], template["metadata"]["labels"])
    spec = template["spec"]
    assert spec["serviceAccountName"] == name
    [c] = spec["containers"]
    assert c["image"] == f"ambit.dev/demo/{name}:latest"
    module = name.replace("-", "_")
    assert c["command"] == ["python3", "-m", f"sandbox.demo.{module}"]
    assert importlib.util.find_spec(f"sandbox.demo.{module}") is not None
    if name != "vote-bot":
        assert c["ports"] == [{"name": "http", "containerPort": 8080}]
        assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


@pytest.mark.parametrize("name", ["emoji", "voting", "web"])
def test_service_reaches_its_pods(name):
    svc = BY_KIND["Service"][name]
    [port] = svc["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8080, "http")
    template = BY_KIND["Deployment"][name]["spec"]["template"]
    assert all(template["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
    assert resolve_target_port(port, template) == 8080


def test_web_and_bot_name_the_services_they_resolve():
    env = {e["name"]: e["value"] for e in BY_KIND["Deployment"]["web"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["EMOJI_SERVICE"], env["VOTING_SERVICE"]) == ("emoji", "voting")
    bot = {e["name"]: e["value"] for e in BY_KIND["Deployment"]["vote-bot"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert bot == {"RATE": "5", "WEB_SERVICE": "web", "FAILING_SHARE": "0.15"}
