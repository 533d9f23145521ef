"""The official Kubernetes client, configured the way a pod expects: in-cluster, else a kubeconfig."""
from __future__ import annotations

from kubernetes import client as k8s
from kubernetes import config as k8s_config


class KubeConfigError(Exception):
    """no usable Kubernetes configuration"""


def load_api_client() -> k8s.ApiClient:
    """In-cluster configuration (a pod's service-account token), else the default kubeconfig."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        try:
            k8s_config.load_kube_config(client_configuration=configuration)
        except (k8s_config.ConfigException, OSError) as exc:
            raise KubeConfigError(f"no Kubernetes configuration ({exc}); run in a pod or set KUBECONFIG") from exc
    return k8s.ApiClient(configuration)
