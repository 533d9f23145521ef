"""Background processes of a sandbox: start them detached, find them again, stop them.

Every process ``ambit up`` starts carries ``AMBIT_SANDBOX_MEMBER=<sandbox name>`` in its
environment and has a pid file, so ``ambit down`` finds it even when the pid files are gone
(a crash, a killed ``up``): it scans ``/proc/*/environ``.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sandbox.config import SandboxConfig

log = logging.getLogger(__name__)

MEMBER_ENV = "AMBIT_SANDBOX_MEMBER"


def sandbox_env(cfg: SandboxConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AMBIT_SANDBOX=cfg.name,
        AMBIT_SANDBOX_INDEX=str(cfg.index),
        AMBIT_SANDBOX_DIR=str(cfg.base_dir),
        AMBIT_SANDBOX_NODES=str(cfg.nodes),
        PYTHONUNBUFFERED="1",
    )
    env[MEMBER_ENV] = cfg.name
    return env


def start(cfg: SandboxConfig, *, name: str, argv: list[str]) -> int:
    """Start ``argv`` detached (own session), logging to ``<log_dir>/<name>.log``; returns the pid."""
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    cfg.pid_dir.mkdir(parents=True, exist_ok=True)
    logf = open(cfg.log_dir / f"{name}.log", "ab")
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            env=sandbox_env(cfg), start_new_session=True, close_fds=True,
        )
    finally:
        logf.close()
    (cfg.pid_dir / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def pid_of(cfg: SandboxConfig, name: str) -> int | None:
    try:
        pid = int((cfg.pid_dir / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def members(cfg: SandboxConfig) -> list[int]:
    """Pids of every live process started for this sandbox (found by environment marker)."""
    marker = f"{MEMBER_ENV}={cfg.name}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def stop_pids(pids: list[int], *, grace: float = 5.0) -> list[int]:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left; returns the pids signalled."""
    signalled = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in signalled):
        time.sleep(0.05)
    for pid in signalled:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(alive(p) for p in signalled):
        time.sleep(0.05)
    return signalled
