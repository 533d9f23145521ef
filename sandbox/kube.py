"""The official Kubernetes client, pointed at the sandbox API with the admin kubeconfig."""
from __future__ import annotations

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from sandbox.config import SandboxConfig


def api_client(cfg: SandboxConfig, *, server: str | None = None) -> k8s_client.ApiClient:
    """An ApiClient from the sandbox kubeconfig; ``server`` overrides the URL (e.g. ``cfg.api_url_nodes``
    for processes inside node network namespaces, where 127.0.0.1 is the node's own loopback)."""
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(cfg.kubeconfig_path), client_configuration=configuration)
    if server:
        # the loader's refresh hook re-applies the kubeconfig's server on every request; the admin
        # token is static, so drop the hook to keep the override
        configuration.refresh_api_key_hook = None
        configuration.host = server
    return k8s_client.ApiClient(configuration)
