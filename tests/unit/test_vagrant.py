"""The VM cluster's recipe (vagrant/) and the image's (deploy/image/) as far as this machine can check them.

No VM runs here, so these are static checks with the real tools: `vagrant validate` loads the
Vagrantfile and validates every machine's provisioners, synced folder, network and provider
settings (no box is downloaded) for the libvirt provider, and `shellcheck` reads every
provisioning script. The tools are Debian packages that `make deps` installs (vagrant,
vagrant-libvirt: validation needs a usable provider, and VirtualBox is not in Debian; shellcheck);
a missing one fails the test with the package to install, it never skips (docs/vagrant.md says
what has not been run).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"
SCRIPT_DIRS = (ROOT / "vagrant", ROOT / "deploy" / "image")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make deps` installs it (apt-get install {package})")
    return path


def _is_shell_script(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    with path.open("rb") as f:
        first = f.readline(200)
    return first.startswith(b"#!") and any(sh in first for sh in (b"bash", b"/sh"))


def _scripts() -> list[Path]:
    found = set()
    for top in SCRIPT_DIRS:
        for path in top.rglob("*"):
            if ".vagrant" not in path.parts and path.is_file() and _is_shell_script(path):
                found.add(path)
    return sorted(found)


SCRIPTS = _scripts()


def test_the_provisioning_scripts_are_found():
    names = {p.name for p in SCRIPTS}
    assert {"node.sh", "build-image.sh", "control-plane.sh", "worker.sh", "join.sh", "ambit.sh"} <= names


def _vagrant(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The vagrant command and its environment: Vagrant's own state and the cluster's bootstrap token in tmp_path, not in the tree; the
    libvirt provider, whose settings are then validated too (VirtualBox is not in Debian)."""
    vagrant = _tool("vagrant", "vagrant")
    plugins = subprocess.run([vagrant, "plugin", "list"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant-home")})
    if "vagrant-libvirt" not in plugins.stdout:
        pytest.fail("vagrant validate needs a usable provider; `make deps` installs one (apt-get install vagrant-libvirt)")
    return vagrant, {
        **os.environ,
        "VAGRANT_HOME": str(tmp_path / "vagrant-home"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
        "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }


def test_vagrant_validate(tmp_path):
    vagrant, env = _vagrant(tmp_path)
    out = subprocess.run([vagrant, "validate"], cwd=VAGRANT_DIR, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, f"vagrant validate failed:\n{out.stdout}\n{out.stderr}"
    assert "validated successfully" in out.stdout
    token = (tmp_path / "dotfile" / "ambit-bootstrap-token").read_text().strip()
    assert len(token) == 23 and token[6] == "." and token.replace(".", "").isalnum() and token.islower()


def test_vagrant_validate_catches_a_missing_script(tmp_path):
    """The check above can fail: a Vagrantfile whose provisioning script is gone does not validate."""
    vagrant, env = _vagrant(tmp_path)
    copy = tmp_path / "vagrant"
    shutil.copytree(VAGRANT_DIR, copy, ignore=shutil.ignore_patterns(".vagrant"))
    (copy / "provision" / "ambit.sh").unlink()
    out = subprocess.run([vagrant, "validate"], cwd=copy, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode != 0
    assert "ambit.sh" in out.stdout + out.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SCRIPTS])
def test_shellcheck(script):
    shellcheck = _tool("shellcheck", "shellcheck")
    out = subprocess.run([shellcheck, "--external-sources", str(script)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"shellcheck {script.relative_to(ROOT)}:\n{out.stdout}{out.stderr}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SCRIPTS])
def test_scripts_stop_at_the_first_error(script):
    assert "set -euo pipefail" in script.read_text(), f"{script.relative_to(ROOT)} must `set -euo pipefail`"
