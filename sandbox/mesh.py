"""Ambit on the sandbox: the chart's values for it, and nothing else (every object comes from
``deploy/charts/ambit``, rendered and applied by ``ambit install``'s code).

What differs from the defaults, and why: the agents' grace period is 5 s (the sandbox kubelet
caps every grace period at 5 s anyway); the trust domain is the sandbox's.

The sandbox has no DNS, and needs none here: agents find the CA's ClusterIP by its Service name
from their own watch of Services. The node paths keep their defaults (/etc/cni/net.d, /opt/cni/bin, /var/run/ambit): each sandbox
node has its own filesystem where they are its own directories (``sandbox.node.nodefs``), and
ambit-cni runs with the default ``/usr/bin/python3`` (Debian's 3.11; the plugin needs only the
standard library).
"""
from __future__ import annotations

from sandbox.config import SandboxConfig

NAMESPACE = "ambit-system"


def values(cfg: SandboxConfig) -> dict:
    return {
        "trustDomain": cfg.trust_domain,
        "agent": {"terminationGracePeriodSeconds": 5},
    }
