"""Ambit's chart as `ambit install --dry-run` prints it, fed to the real kubectl against the sandbox
API: `ambit install --dry-run | kubectl apply --dry-run=client -f -` (and the server's dry run) accept
every object, and nothing is created."""
from __future__ import annotations

import subprocess
import sys

SANDBOX = ("chrtk", 7)  # the api and kubectl fixtures: tests/integration/conftest.py


def _rendered(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "ambitctl.cli", "install", "--dry-run", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dry_run_output_is_accepted_by_kubectl(kubectl):
    rendered = _rendered("--set", "trustDomain=example.org")
    assert "example.org" in rendered
    kubectl("create", "namespace", "ambit-system")
    # as with `helm template | kubectl apply`: the chart's CRDs first (the GatewayClass needs them)
    from ambitctl.chart import DEFAULT_CHART

    kubectl("apply", "--server-side", "-f", str(DEFAULT_CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")
    for mode, said in (("client", "(dry run)"), ("server", "(server dry run)")):
        out = kubectl("apply", f"--dry-run={mode}", "-f", "-", stdin=rendered)
        lines = [line for line in out.stdout.splitlines() if line.strip()]
        assert lines and all(line.endswith(said) for line in lines), out.stdout
        assert "daemonset.apps/ambit-node-agent created" in out.stdout
    assert kubectl("get", "daemonsets", "-n", "ambit-system", "-o", "name").stdout == "", "a dry run created objects"


def test_bad_value_fails_naming_the_key_and_prints_nothing():
    out = subprocess.run([sys.executable, "-m", "ambitctl.cli", "install", "--dry-run", "--set", "agent.logLevel=loud"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "logLevel" in out.stderr and "value must be one of 'error', 'warn', 'info', 'debug'" in out.stderr
    assert out.stdout == ""
