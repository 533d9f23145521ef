"""Ambit on the sandbox: the chart's values for it, and nothing else (every object comes from
``deploy/charts/ambit``, rendered and applied by ``ambit install``'s code).

What differs from a real cluster, and why:
- the CA's Service has a fixed ClusterIP that agents dial directly: the sandbox has no DNS;
- the agents' grace period is 5 s (the sandbox kubelet caps every grace period at 5 s anyway).

The node paths keep their defaults (/etc/cni/net.d, /opt/cni/bin, /var/run/ambit): each sandbox
node has its own filesystem where they are its own directories (``sandbox.node.nodefs``), and
ambit-cni runs with the default ``/usr/bin/python3`` (Debian's 3.11; the plugin needs only the
standard library).
"""
from __future__ import annotations

import ipaddress

from sandbox.config import SandboxConfig

NAMESPACE = "ambit-system"


def ca_cluster_ip(cfg: SandboxConfig) -> str:
    """A fixed ClusterIP for the CA (the sandbox has no DNS); it is in the CA's serving certificate."""
    return str(ipaddress.ip_address(int(cfg.service_cidr.network_address) + 10))


def values(cfg: SandboxConfig) -> dict:
    return {
        "trustDomain": cfg.trust_domain,
        "agent": {"terminationGracePeriodSeconds": 5},
        "identity": {"service": {"clusterIP": ca_cluster_ip(cfg)}},
    }
