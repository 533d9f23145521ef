"""What the end-to-end tests share: a sandbox of their own driven as a user drives it (the ``ambit``
CLI, kubectl with the sandbox's kubeconfig, commands in a pod's or node's network namespace), and a
tiny HTTP echo server to run in pods. Imported by the tests (``tests/e2e`` is on ``sys.path``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AMBIT = [sys.executable, "-m", "ambitctl.cli"]

ECHO_SERVER = r"""
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("echo " + self.path + "\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True; allow_reuse_address = True
S(("0.0.0.0", 8080), H).serve_forever()
"""


class Sandbox:
    """Sandbox ``name`` on address block ``index`` under ``base``; pods live in namespace ``shop``."""

    def __init__(self, base: Path, *, name: str, index: int) -> None:
        self.env = dict(os.environ, AMBIT_SANDBOX=name, AMBIT_SANDBOX_INDEX=str(index), AMBIT_SANDBOX_DIR=str(base))
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from sandbox.config import SandboxConfig

        self.cfg = SandboxConfig(name=name, index=index, base_dir=base)

    def ambit(self, *args, check=True, timeout=60):
        out = subprocess.run([*AMBIT, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, f"ambit {' '.join(args)}: {out.stdout}{out.stderr}"
        return out

    def kubectl(self, *args, check=True, input=None):
        out = subprocess.run(["kubectl", "--kubeconfig", str(self.cfg.kubeconfig_path), *args], capture_output=True,
                             text=True, timeout=60, input=input)
        if check:
            assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
        return out

    def get(self, *args) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def node_exec(self, node: str, *cmd, timeout=30, check=False):
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.cfg.node_netns(node)}", "--", *cmd],
                              capture_output=True, text=True, timeout=timeout, check=check)

    def pod_exec(self, pod: str, *cmd, timeout=30):
        return self.ambit("sandbox", "exec", f"shop/{pod}", "--", *cmd, check=False, timeout=timeout)

    def config_dump(self, node: str) -> dict:
        out = self.node_exec(node, "curl", "-s", "-m", "5", "http://127.0.0.1:15000/config_dump")
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}
