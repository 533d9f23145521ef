"""Where a sandbox node keeps its files, under ``cfg.node_dir(node)``.

```
nodes/<node>/cni/net.d/10-<name>.conflist   CNI config (Ambit's installer appends itself here)
nodes/<node>/cni/bin/                       extra CNI plugins, searched before the reference ones
nodes/<node>/cni/ipam/                      host-local IPAM allocations
nodes/<node>/cni/cache/results/             cached ADD results + configs (libcni's cache format)
nodes/<node>/pods/<uid>/pod.json            what the kubelet made for a pod (netns, sandbox id, pids)
nodes/<node>/pods/<uid>/serviceaccount/     token, ca.crt, namespace (bind-mounted into containers)
nodes/<node>/pods/<uid>/volumes/<plugin>/<volume>/  spec.volumes (kubernetes.io~projected, ~configmap,
                                            ~secret, ~empty-dir), bind-mounted at each mountPath
nodes/<node>/pods/<uid>/mnt/                scratch mount point of the container launcher
nodes/<node>/logs/<ns>_<pod>/<container>.log  container stdout+stderr
```
Light on purpose: the CLI imports it to print logs.
"""
from __future__ import annotations

from pathlib import Path

from sandbox.config import SandboxConfig


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
