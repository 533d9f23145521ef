"""Run the sandbox API as a child process (for ``ambit up``-style supervisors and for tests).

``with ApiProcess(cfg) as api:`` starts ``python -m sandbox.api``, waits until ``/readyz``
answers over TLS, and on exit stops it with SIGTERM (SIGKILL after a grace period).
"""
from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Sequence

from sandbox.config import SandboxConfig

from .pki import ensure_pki


class ApiProcessError(Exception):
    """The API process did not come up (its log tail is in the message)."""


class ApiProcess:
    def __init__(
        self,
        cfg: SandboxConfig,
        *,
        bind: Sequence[str] = ("127.0.0.1",),
        log_path: Path | None = None,
        log_level: str = "info",
    ) -> None:
        self.cfg = cfg
        self.bind = list(bind)
        self.log_path = log_path or cfg.log_dir / "api.log"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.bind[0]}:{self.cfg.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.cfg.kubeconfig_path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "AMBIT_SANDBOX": self.cfg.name,
            "AMBIT_SANDBOX_INDEX": str(self.cfg.index),
            "AMBIT_SANDBOX_DIR": str(self.cfg.base_dir),
        })
        return env

    def start(self, *, timeout: float = 20.0) -> "ApiProcess":
        pki = ensure_pki(self.cfg)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "sandbox.api", "--log-level", self.log_level]
        for addr in self.bind:
            cmd += ["--bind", addr]
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(cmd, env=self.env(), cwd=root, stdout=self._log, stderr=subprocess.STDOUT)
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise ApiProcessError(f"the sandbox API exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise ApiProcessError(f"the sandbox API was not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, *, grace: float = 10.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()
        return proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "ApiProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
