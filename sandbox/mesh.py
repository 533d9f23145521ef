"""Ambit on the sandbox: the chart's values for it, and nothing else (every object comes from
``deploy/charts/ambit``, rendered and applied by ``ambit install``'s code).

What differs from a real cluster, and why:
- node paths: sandbox nodes share one filesystem, so each node's CNI config and bin dirs and the
  agent's run dir are per-node directories under the state dir. The sandbox kubelet expands
  ``$(NODE_NAME)`` in hostPath paths (a real kubelet does not; docs/sandbox-nodes.md), and the
  installer's ``--agent-socket`` gets the same expansion as every container argument;
- the CA's Service has a fixed ClusterIP that agents dial directly: the sandbox has no DNS;
- ambit-cni runs with this interpreter (the node "has" it: the kubelet runs every image from the
  host, and this Python is the one with Ambit installed).
"""
from __future__ import annotations

import ipaddress
import sys

from sandbox.config import SandboxConfig

NAMESPACE = "ambit-system"


def ca_cluster_ip(cfg: SandboxConfig) -> str:
    """A fixed ClusterIP for the CA (the sandbox has no DNS); it is in the CA's serving certificate."""
    return str(ipaddress.ip_address(int(cfg.service_cidr.network_address) + 10))


def values(cfg: SandboxConfig) -> dict:
    node_dir = f"{cfg.state_dir}/nodes/$(NODE_NAME)"
    return {
        "trustDomain": cfg.trust_domain,
        "agent": {"runDir": f"{node_dir}/ambit", "terminationGracePeriodSeconds": 5},
        "cni": {"binDir": f"{node_dir}/cni/bin", "confDir": f"{node_dir}/cni/net.d",
                "pluginInterpreter": sys.executable},
        "identity": {"service": {"clusterIP": ca_cluster_ip(cfg)}},
    }
