"""The node agent's settings from the environment the chart's DaemonSet gives it."""
from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.cli import _log_level
from node_agent.settings import AgentSettings, SettingsError

CHART_ENV = {
    "NODE_NAME": "node-1", "POD_NAMESPACE": "ambit-system", "AMBIT_LOG_LEVEL": "info",
    "AMBIT_TRUST_DOMAIN": "example.org", "AMBIT_REDIRECTION_MODE": "iptables",
    "AMBIT_CA_URL": "https://ambit-identity.ambit-system.svc:15012",
    "AMBIT_CA_TOKEN": "/var/run/secrets/ambit/tokens/ambit-identity",
    "AMBIT_TRUST_BUNDLE": "/var/run/secrets/ambit/trust/root-cert.pem",
    "AMBIT_CNI_SOCKET": "/var/run/ambit/cni.sock", "AMBIT_STATE_DIR": "/var/run/ambit",
}


def test_the_charts_environment_gives_these_settings():
    s = AgentSettings.from_env(CHART_ENV)
    assert (s.node_name, s.namespace, s.trust_domain, s.redirection_mode) == ("node-1", "ambit-system", "example.org", "iptables")
    assert s.identity.agent.root_cert_path == Path("/var/run/secrets/ambit/trust/root-cert.pem")
    assert s.cni_socket == Path("/var/run/ambit/cni.sock")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"AMBIT_REDIRECTION_MODE": "ebpf"}, "AMBIT_REDIRECTION_MODE='ebpf'"),
        ({"NODE_NAME": ""}, "NODE_NAME is empty"),
        ({"AMBIT_METRICS_PORT": "http"}, "AMBIT_METRICS_PORT='http'"),
        ({"AMBIT_CNI_WAIT_FOR_POD": "-1"}, "must be positive"),
    ],
    ids=["unbuilt-backend", "no-node", "bad-port", "bad-seconds"],
)
def test_bad_settings_name_the_variable(env, words):
    with pytest.raises(SettingsError, match=words):
        AgentSettings.from_env({**CHART_ENV, **env})


@pytest.mark.parametrize(("raw", "level"), [("error", 40), ("warn", 30), ("INFO", 20), ("debug", 10)])
def test_log_levels(monkeypatch, raw, level):
    monkeypatch.setenv("AMBIT_LOG_LEVEL", raw)
    assert _log_level(False) == level


def test_unknown_log_level_is_refused(monkeypatch):
    monkeypatch.setenv("AMBIT_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit, match="AMBIT_LOG_LEVEL='loud'"):
        _log_level(False)
