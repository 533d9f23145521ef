"""Container logs for ``ambit sandbox logs NS/POD``: the API serves no logs, the CLI reads files."""
from __future__ import annotations

from pathlib import Path

from sandbox.config import SandboxConfig
from sandbox.node.layout import pod_log_dir, pod_log_path

__all__ = ["pod_log_path", "find_pod_logs", "read_log"]


def find_pod_logs(cfg: SandboxConfig, namespace: str, pod: str, *,
                  node: str | None = None) -> dict[str, Path]:
    """container name -> log file for a pod, looking on ``node`` or on every node of the sandbox."""
    nodes = [node] if node else [cfg.node_name(i) for i in range(1, cfg.nodes + 1)]
    found: dict[str, Path] = {}
    for n in nodes:
        d = pod_log_dir(cfg, n, namespace, pod)
        if d.is_dir():
            for f in sorted(d.glob("*.log")):
                found.setdefault(f.stem, f)
    return found


def read_log(path: Path, *, tail: int | None = None) -> str:
    """The log's text (undecodable bytes replaced), or its last ``tail`` lines."""
    data = path.read_bytes().decode("utf-8", errors="replace")
    if tail is not None:
        lines = data.splitlines(keepends=True)
        data = "".join(lines[-tail:]) if tail > 0 else ""
    return data
