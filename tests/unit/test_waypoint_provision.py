"""The waypoint controller's pure parts and the waypoint's protocol sniffing and settings."""
from __future__ import annotations

import kubernetes_validate
import pytest

from waypoint.controller import WaypointConfig, desired, gateway_status, is_waypoint, listener_problem
from waypoint.server import detect
from waypoint.settings import SettingsError, WaypointSettings

GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "shop", "uid": "uid-gw", "generation": 2},
    "spec": {"gatewayClassName": "ambit-waypoint",
             "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
}


def test_desired_objects_are_owned_by_the_gateway_and_valid_kubernetes():
    objs = desired(GATEWAY, config=WaypointConfig(image="registry.example/ambit:1"), trust_bundle="PEM",
                   ca_ip="10.96.0.5")
    assert [o["kind"] for o in objs] == ["ServiceAccount", "RoleBinding", "ConfigMap", "Deployment", "Service"]
    for obj in objs:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        assert obj["metadata"]["namespace"] == "shop"
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "waypoint",
                         "uid": "uid-gw", "controller": True, "blockOwnerDeletion": True}
    dep = objs[3]
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"] == {"gateway.networking.k8s.io/gateway-name": "waypoint",
                                         "ambit.dev/dataplane-mode": "none"}  # never captured itself
    assert pod["spec"]["serviceAccountName"] == "waypoint"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["GATEWAY_NAME"] == "waypoint" and env["AMBIT_CA_IP"] == "10.96.0.5"
    assert objs[2]["data"] == {"root-cert.pem": "PEM"}
    assert objs[1]["roleRef"]["name"] == "ambit-waypoint" and objs[1]["kind"] == "RoleBinding"
    assert objs[4]["spec"]["ports"][0]["port"] == 15008


def test_status_says_programmed_only_with_a_ready_pod():
    pending = gateway_status(GATEWAY, ready_replicas=0, address="10.96.0.9")
    assert [(c["type"], c["status"], c["observedGeneration"]) for c in pending["conditions"]] == \
        [("Accepted", "True", 2), ("Programmed", "False", 2)]
    assert pending["addresses"] == [{"type": "IPAddress", "value": "10.96.0.9"}]
    ready = gateway_status({**GATEWAY, "status": pending}, ready_replicas=1, address="10.96.0.9")
    assert ready["conditions"][1]["status"] == "True"
    # Accepted did not change: its transition time is kept
    assert ready["conditions"][0]["lastTransitionTime"] == pending["conditions"][0]["lastTransitionTime"]
    bad = gateway_status(GATEWAY, ready_replicas=0, address="", problem="no mesh listener")
    assert [c["reason"] for c in bad["conditions"]] == ["Invalid", "Invalid"] and "addresses" not in bad


@pytest.mark.parametrize(
    "spec, waypoint, problem",
    [
        (GATEWAY["spec"], True, ""),
        ({"gatewayClassName": "istio", "listeners": []}, False, "needs a listener"),
        ({"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
         True, "needs a listener {name: mesh, port: 15008, protocol: HBONE}"),
    ],
    ids=["waypoint", "other-class", "no-hbone-listener"],
)
def test_which_gateways_are_waypoints(spec, waypoint, problem):
    gw = {**GATEWAY, "spec": spec}
    assert is_waypoint(gw) is waypoint
    assert (problem in listener_problem(gw)) and (bool(listener_problem(gw)) == bool(problem))


@pytest.mark.parametrize(
    "first, expected",
    [
        (b"GET / HTTP/1.1\r\n", "http1"), (b"POST /x HTTP/1.1\r\n", "http1"), (b"GE", "http1"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2"), (b"PRI", "http2"),
        (b"\x16\x03\x01\x00", "tcp"), (b"SSH-2.0-OpenSSH", "tcp"), (b"", "tcp"), (b"get / HTTP/1.1", "tcp"),
    ],
    ids=["get", "post", "partial-method", "h2-preface", "partial-preface", "tls", "ssh", "nothing", "lowercase"],
)
def test_protocol_detection(first, expected):
    assert detect(first) == expected


def test_settings_name_what_is_missing():
    env = {"GATEWAY_NAME": "waypoint", "POD_NAMESPACE": "shop", "POD_NAME": "waypoint-1", "SERVICE_ACCOUNT": "waypoint"}
    s = WaypointSettings.from_env(env)
    assert s.spiffe_id.uri == "spiffe://cluster.local/ns/shop/sa/waypoint"
    with pytest.raises(SettingsError, match="GATEWAY_NAME is empty"):
        WaypointSettings.from_env({**env, "GATEWAY_NAME": ""})
    with pytest.raises(SettingsError, match="AMBIT_DRAIN_TIMEOUT='soon' must be a number"):
        WaypointSettings.from_env({**env, "AMBIT_DRAIN_TIMEOUT": "soon"})


def test_ambit_waypoint_gateway_and_readiness_words():
    from ambitctl import waypoint as cli

    gw = cli.gateway("waypoint", "shop")
    assert listener_problem(gw) == "" and is_waypoint(gw)
    assert "is it installed" in cli.programmed(gw)
    gw["status"] = gateway_status(GATEWAY, ready_replicas=0, address="")
    assert cli.programmed(gw) == "Programmed=False (Pending: waiting for a waypoint pod to become ready)"
    gw["status"] = gateway_status(GATEWAY, ready_replicas=1, address="10.96.0.9")
    assert cli.programmed(gw) is None
    table = cli.render([cli.Row("shop", "waypoint", "True", "10.96.0.9", "namespace,cart")], output="table")
    assert table.splitlines()[0].split() == ["NAMESPACE", "NAME", "PROGRAMMED", "ADDRESS", "USED", "BY"]
    assert table.splitlines()[-1].split() == ["shop", "waypoint", "True", "10.96.0.9", "namespace,cart"]
