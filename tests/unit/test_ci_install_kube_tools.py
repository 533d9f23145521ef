"""`.ci/install-kube-tools --check`: which of kubectl and helm `make deps` would install, judged
from the versions that the tools on PATH (or already in the venv's bin/) report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "install-kube-tools"


def fake_kubectl(minor: str) -> str:
    doc = json.dumps({"clientVersion": {"major": "1", "minor": minor, "gitVersion": f"v1.{minor}.0"}})
    return f"#!/bin/sh\n[ \"$*\" = 'version --client -o json' ] && echo '{doc}' && exit 0\nexit 1\n"


def fake_helm(version: str) -> str:
    return f"#!/bin/sh\n[ \"$1 $2\" = 'version --template' ] && echo '{version}' && exit 0\nexit 1\n"


HELM2 = "#!/bin/sh\necho 'Error: unknown flag: --template' >&2\nexit 1\n"
BROKEN = "#!/bin/sh\nexit 127\n"


@pytest.mark.parametrize(
    "on_path,in_venv,expected",
    [
        pytest.param({}, {}, ["kubectl and helm: would install"], id="fresh-debian-without-either"),
        pytest.param({"kubectl": fake_kubectl("20")}, {}, ["kubectl and helm: would install"], id="debian-kubectl-1.20"),
        pytest.param({"kubectl": fake_kubectl("32+"), "helm": fake_helm("v3.15.2")}, {},
                     ["kubectl 1.32: PATH", "helm 3.15: PATH"], id="dispatcher-kubectl-and-helm3"),
        pytest.param({"kubectl": fake_kubectl("28")}, {}, ["kubectl 1.28: PATH", "helm: would install"],
                     id="kubectl-1.28-is-enough"),
        pytest.param({"kubectl": fake_kubectl("27"), "helm": HELM2}, {}, ["kubectl and helm: would install"],
                     id="kubectl-1.27-and-helm2"),
        pytest.param({"kubectl": BROKEN}, {"kubectl": fake_kubectl("33"), "helm": fake_helm("v4.1.4")},
                     ["kubectl 1.33: VENV", "helm 4.1: VENV"], id="already-in-the-venv"),
    ],
)
def test_check_reports_what_would_be_installed(tmp_path, on_path, in_venv, expected):
    path_dir, venv_bin = tmp_path / "path", tmp_path / "venv-bin"
    for directory, tools in ((path_dir, on_path), (venv_bin, in_venv)):
        directory.mkdir()
        for name, body in tools.items():
            (directory / name).write_text(body)
            (directory / name).chmod(0o755)
    out = subprocess.run([sys.executable, str(SCRIPT), str(venv_bin), "--check"], capture_output=True, text=True,
                         env={"PATH": str(path_dir)}, timeout=60)
    assert out.returncode == 0, out.stderr
    got = []
    for line in out.stdout.splitlines():
        for tool in ("kubectl", "helm"):
            line = line.replace(str(path_dir / tool), "PATH").replace(str(venv_bin / tool), "VENV")
        got.append(line.split(" into ")[0])
    assert got == expected, out.stdout
    assert sorted(p.name for p in venv_bin.iterdir()) == sorted(in_venv), "--check must change nothing"
