"""Ambit itself, installed into the sandbox the way the Helm chart installs it on a real cluster.

Namespace ``ambit-system``; the identity CA as a Deployment behind a Service; the node agent as a
hostNetwork DaemonSet whose second container runs the CNI installer against the node's CNI
config directory. Paths that are per node on a real machine (/etc/cni/net.d, /opt/cni/bin,
/var/run/ambit) are per node *directory* here, chosen with Kubernetes' ``$(NODE_NAME)``
expansion, because all sandbox nodes share one filesystem.
"""
from __future__ import annotations

import ipaddress
import sys

from sandbox.config import SandboxConfig

NAMESPACE = "ambit-system"
CA_PORT = 15012
AGENT_SA = "ambit-node-agent"
CA_SA = "ambit-identity"


def ca_cluster_ip(cfg: SandboxConfig) -> str:
    """A fixed ClusterIP for the CA (the sandbox has no DNS); it is in the CA's serving certificate."""
    return str(ipaddress.ip_address(int(cfg.service_cidr.network_address) + 10))


def _env_field(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def objects(cfg: SandboxConfig) -> list[dict]:
    python = sys.executable
    node_dir = f"{cfg.state_dir}/nodes/$(NODE_NAME)"
    agent_socket = f"{node_dir}/ambit/cni.sock"
    ca_ip = ca_cluster_ip(cfg)
    labels_agent = {"app": "ambit-node-agent"}
    labels_ca = {"app": "ambit-identity"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT_SA, "namespace": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": CA_SA, "namespace": NAMESPACE}},
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "ambit-identity", "namespace": NAMESPACE, "labels": labels_ca},
            "spec": {"clusterIP": ca_ip, "selector": labels_ca,
                     "ports": [{"name": "https", "port": CA_PORT, "targetPort": CA_PORT}]},
        },
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "ambit-identity", "namespace": NAMESPACE, "labels": labels_ca},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels_ca},
                "template": {
                    "metadata": {"labels": labels_ca},
                    "spec": {
                        "serviceAccountName": CA_SA,
                        "containers": [{
                            "name": "ca",
                            "image": "ambit.dev/ambit:latest",
                            "command": [python, "-m", "node_agent.cli", "identity", "serve",
                                        "--namespace", NAMESPACE, "--trust-domain", cfg.trust_domain,
                                        "--port", str(CA_PORT), "--extra-ip", ca_ip],
                            "ports": [{"name": "https", "containerPort": CA_PORT}],
                            "readinessProbe": {"tcpSocket": {"port": CA_PORT}, "periodSeconds": 1},
                        }],
                    },
                },
            },
        },
        {
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "ambit-node-agent", "namespace": NAMESPACE, "labels": labels_agent},
            "spec": {
                "selector": {"matchLabels": labels_agent},
                "template": {
                    "metadata": {"labels": labels_agent},
                    "spec": {
                        "hostNetwork": True,
                        "serviceAccountName": AGENT_SA,
                        "terminationGracePeriodSeconds": 5,
                        "containers": [
                            {
                                "name": "agent",
                                "image": "ambit.dev/ambit:latest",
                                "command": [python, "-m", "node_agent.cli", "node-agent"],
                                "env": [
                                    _env_field("NODE_NAME", "spec.nodeName"),
                                    _env_field("POD_NAMESPACE", "metadata.namespace"),
                                    {"name": "AMBIT_TRUST_DOMAIN", "value": cfg.trust_domain},
                                    {"name": "AMBIT_CA_URL", "value": f"https://{ca_ip}:{CA_PORT}"},
                                    {"name": "AMBIT_CA_TOKEN", "value": "/var/run/secrets/ambit/tokens/ambit-identity"},
                                    {"name": "AMBIT_CNI_SOCKET", "value": agent_socket},
                                    {"name": "AMBIT_STATE_DIR", "value": f"{node_dir}/ambit"},
                                ],
                                "ports": [{"name": "metrics", "containerPort": 15020},
                                          {"name": "health", "containerPort": 15021}],
                                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021},
                                                   "periodSeconds": 1},
                                "volumeMounts": [{"name": "ca-token", "mountPath": "/var/run/secrets/ambit/tokens",
                                                  "readOnly": True},
                                                 {"name": "trust-bundle", "mountPath": "/var/run/ambit/trust",
                                                  "readOnly": True}],
                            },
                            {
                                "name": "install-cni",
                                "image": "ambit.dev/ambit:latest",
                                "command": [python, "-m", "node_agent.cli", "cni-install",
                                            "--conf-dir", f"{node_dir}/cni/net.d", "--bin-dir", f"{node_dir}/cni/bin",
                                            "--python", python, "--agent-socket", agent_socket,
                                            "--agent-namespace", NAMESPACE],
                                "env": [_env_field("NODE_NAME", "spec.nodeName")],
                            },
                        ],
                        "volumes": [
                            {"name": "ca-token",
                             "projected": {"sources": [{"serviceAccountToken": {
                                 "audience": "ambit-identity", "expirationSeconds": 3600, "path": "ambit-identity"}}]}},
                            # optional: on first install the CA creates it; until then the agent reads it via the API
                            {"name": "trust-bundle", "configMap": {"name": "ambit-trust-bundle", "optional": True}},
                        ],
                    },
                },
            },
        },
    ]
