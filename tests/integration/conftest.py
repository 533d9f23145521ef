"""Fixtures shared by the integration tests: one sandbox API per module, the controller manager
on it when a module asks, and the real kubectl and helm pointed at it.

A module names its sandbox with ``SANDBOX = ("name", index)`` (the index picks the address block
and port; modules run one after another, so two may share one). Modules whose tests need the
controllers (deployments, garbage collection, namespace deletion) use the ``cfg`` fixture, or
``pytestmark = pytest.mark.usefixtures("cfg")``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable

import pytest

from sandbox.api.process import ApiProcess
from sandbox.config import SandboxConfig

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="module")
def api(request, tmp_path_factory):
    """A running sandbox API server (``ApiProcess``) for the module's ``SANDBOX``."""
    name, index = request.module.SANDBOX
    proc = ApiProcess(SandboxConfig(name=name, index=index, base_dir=tmp_path_factory.mktemp("sandbox")))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def cfg(api):
    """The module's sandbox config, with the controller manager running against its API."""
    from sandbox.controllers.manager import ControllerManager

    stop = threading.Event()
    manager = ControllerManager.for_sandbox(api.cfg)
    manager.start(stop)
    try:
        assert manager.ready.wait(10), "the controller manager's caches never synced"
        yield api.cfg
    finally:
        stop.set()
        manager.join()


def tool_runner(name: str, kubeconfig: Path, home: Path) -> Runner:
    """``run(*args, stdin=None, check=True)``: the real ``name`` (kubectl, helm) on the sandbox;
    a failure (when checked) shows its output. These tools are required: tests never skip."""
    tool = shutil.which(name)
    assert tool, f"{name} is not installed; `make deps` installs it (these tests never skip)"

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([tool, "--kubeconfig", str(kubeconfig), *args], input=stdin, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "HOME": str(home)})
        if check and res.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    return run


@pytest.fixture
def kubectl(api, tmp_path) -> Runner:
    return tool_runner("kubectl", api.kubeconfig, tmp_path)


@pytest.fixture
def helm(api, tmp_path) -> Runner:
    return tool_runner("helm", api.kubeconfig, tmp_path)
