"""Where a sandbox node keeps its files, under ``cfg.node_dir(node)``.

```
nodes/<node>/cni/net.d/10-<name>.conflist   CNI config (Ambit's installer appends itself here);
                                            the node's /etc/cni/net.d
nodes/<node>/cni/bin/                       the node's /opt/cni/bin (ambit-cni), searched before the
                                            reference plugins in /usr/lib/cni
nodes/<node>/ambit/                         the node's /var/run/ambit (the agent's cni.sock, pod records)
nodes/<node>/cni/ipam/                      host-local IPAM allocations
nodes/<node>/cni/cache/results/             cached ADD results + configs (libcni's cache format)
nodes/<node>/pods/<uid>/pod.json            what the kubelet made for a pod (netns, sandbox id, pids)
nodes/<node>/pods/<uid>/serviceaccount/     token, ca.crt, namespace (bind-mounted into containers)
nodes/<node>/pods/<uid>/volumes/<plugin>/<volume>/  spec.volumes (kubernetes.io~projected, ~configmap,
                                            ~secret, ~empty-dir), bind-mounted at each mountPath
nodes/<node>/pods/<uid>/mnt/                scratch mount point of the container launcher
nodes/<node>/logs/<ns>_<pod>/<container>.log  container stdout+stderr
nodes/<node>/fs/holder.pid                  the process holding the node's filesystem (``nodefs``)
```
``NODE_LOCAL_PATHS`` says which paths of the node's filesystem are these directories.
Light on purpose: the CLI imports it to print logs.
"""
from __future__ import annotations

from pathlib import Path

from sandbox.config import SandboxConfig

NODE_LOCAL_PATHS: tuple[tuple[str, str], ...] = (
    ("/etc/cni/net.d", "cni/net.d"),  # the CNI config: the primary network, ambit-cni chained into it
    ("/opt/cni/bin", "cni/bin"),  # CNI plugins: ambit-cni is installed here
    ("/run/ambit", "ambit"),  # /var/run/ambit: the agent's CNI socket and pod records
)
"""Paths a real node has per machine: (path on the node, directory under ``cfg.node_dir(node)``).
Sandbox nodes share one filesystem, so each node's filesystem (``nodefs``) bind-mounts its own
directory at each of these paths; everything else is the host's."""


def node_local_mounts(cfg: SandboxConfig, node: str) -> list[tuple[Path, str]]:
    """(directory on the host, path on the node) for each of ``NODE_LOCAL_PATHS``."""
    return [(cfg.node_dir(node) / rel, path) for path, rel in NODE_LOCAL_PATHS]


def agent_run_dir(cfg: SandboxConfig, node: str) -> Path:
    """The node's /var/run/ambit, seen from the host."""
    return cfg.node_dir(node) / "ambit"


def nodefs_dir(cfg: SandboxConfig, node: str) -> Path:
    """The node filesystem holder's pid file, lock and scratch mount point."""
    return cfg.node_dir(node) / "fs"


def cni_ipam_dir(cfg: SandboxConfig, node: str) -> Path:
    return cfg.node_dir(node) / "cni" / "ipam"


def cni_cache_dir(cfg: SandboxConfig, node: str) -> Path:
    return cfg.node_dir(node) / "cni" / "cache"


def pods_dir(cfg: SandboxConfig, node: str) -> Path:
    return cfg.node_dir(node) / "pods"


def pod_dir(cfg: SandboxConfig, node: str, uid: str) -> Path:
    return pods_dir(cfg, node) / uid


def pod_log_dir(cfg: SandboxConfig, node: str, namespace: str, pod: str) -> Path:
    return cfg.node_dir(node) / "logs" / f"{namespace}_{pod}"


def pod_log_path(cfg: SandboxConfig, node: str, namespace: str, pod: str, container: str) -> Path:
    """The file holding ``container``'s stdout and stderr (appended across restarts)."""
    return pod_log_dir(cfg, node, namespace, pod) / f"{container}.log"
