"""The cluster as the CLI's diagnostics read it: one ``Cluster`` per command run, each API answer
read at most once (a run asks many questions of the same objects), and the agents' own reports
(``/debug/pods`` on port 15020, through the API server's pod proxy).

Helpers shared by ``check``, ``node`` and ``explain``: which pods are enrolled (as the agent
decides), each node's agent pod, whether a pod or one of its containers is ready.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from ambitctl.errors import ClusterError

AGENT = "ambit-node-agent"
IDENTITY = "ambit-identity"
AGENT_SELECTOR = "app.kubernetes.io/component=node-agent"


class Cluster:
    """What the diagnostics read, each read at most once per run (the API answers are cached)."""

    def __init__(self, api_client, *, namespace: str, now: datetime | None = None) -> None:
        from ambitctl.apply import Applier

        self.api_client = api_client
        self.namespace = namespace
        self.now = now or datetime.now(timezone.utc)
        self._applier = Applier(api_client)
        self._cache: dict[tuple, object] = {}

    def version(self) -> dict:
        from kubernetes import client

        def read():
            try:
                return client.VersionApi(self.api_client).get_code().to_dict()
            except Exception as exc:  # the first contact: any failure means "cannot talk to the API"
                raise ClusterError(f"cannot reach the Kubernetes API at {self.api_client.configuration.host}: {exc}") from exc
        return self._once(("version",), read)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        from ambitctl.apply import Ref

        return self._once(("get", api_version, kind, name, namespace),
                          lambda: self._applier.get(Ref(api_version, kind, namespace, name)))

    def list(self, api_version: str, kind: str, *, namespace: str | None = None, selector: str = "") -> list[dict]:
        return self._once(("list", api_version, kind, namespace, selector),
                          lambda: self._applier.list(api_version, kind, namespace=namespace, selector=selector))

    def agent_pods(self, agent_pod: str) -> dict:
        """An agent's ``/debug/pods``: the pods it captured, their redirection and certificates."""
        import json

        def read() -> dict:
            data = self._agent_get(agent_pod, "debug/pods")
            try:
                return json.loads(data)
            except ValueError as exc:
                raise ClusterError(f"pods/{agent_pod}:15020/proxy/debug/pods: {exc}") from exc
        return self._once(("agent", agent_pod), read)

    def agent_metrics(self, agent_pod: str) -> str:
        """An agent's Prometheus text (``/metrics``)."""
        return self._once(("metrics", agent_pod), lambda: self._agent_get(agent_pod, "metrics").decode())

    def pod_metrics(self, namespace: str, pod: str) -> str:
        """A pod's Prometheus text on port 15020 (a waypoint's), read fresh on every call."""
        return self._pod_get(namespace, pod, "metrics").decode()

    def _agent_get(self, agent_pod: str, path: str) -> bytes:
        """GET ``path`` on an agent's port 15020, through the API server's pod proxy."""
        return self._pod_get(self.namespace, agent_pod, path)

    def _pod_get(self, namespace: str, pod: str, path: str) -> bytes:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        where = f"pods/{pod}:15020/proxy/{path}"
        try:
            return client.CoreV1Api(self.api_client).connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:15020", namespace, path, _request_timeout=10, _preload_content=False).data
        except ApiException as exc:
            raise ClusterError(f"HTTP {exc.status} from {where}") from exc
        except OSError as exc:
            raise ClusterError(f"{where}: {exc}") from exc

    def _once(self, key: tuple, read: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = read()
        return self._cache[key]


def running(pods: list[dict]) -> list[dict]:
    """The pods that run now (not going away)."""
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def selector_of(deploy: dict) -> str:
    """A Deployment's ``matchLabels`` as a label selector string."""
    return ",".join(f"{k}={v}" for k, v in (deploy["spec"]["selector"].get("matchLabels") or {}).items())


def ready(pod: dict, container: str | None = None) -> bool:
    status = pod.get("status") or {}
    if container is None:
        return any(cond["type"] == "Ready" and cond["status"] == "True" for cond in status.get("conditions") or [])
    return any(cs["name"] == container and cs.get("ready") for cs in status.get("containerStatuses") or [])


def linux_nodes(c: Cluster) -> list[str]:
    return sorted(n["metadata"]["name"] for n in c.list("v1", "Node")
                  if (n["metadata"].get("labels") or {}).get("kubernetes.io/os", "linux") == "linux")


def agents_by_node(c: Cluster) -> dict[str, dict]:
    pods = c.list("v1", "Pod", namespace=c.namespace, selector=AGENT_SELECTOR)
    return {p["spec"].get("nodeName"): p for p in pods if not p["metadata"].get("deletionTimestamp")}


ENROL_LABEL = "ambit.dev/dataplane-mode"


def enrolled(pod_labels: dict, namespace_labels: dict) -> bool:
    """As the agent decides (node_agent.state.snapshot.is_enrolled): the pod's label wins."""
    mode = pod_labels.get(ENROL_LABEL)
    if mode in ("none", "ambient"):
        return mode == "ambient"
    return namespace_labels.get(ENROL_LABEL) == "ambient"


def enrolled_pods(c: Cluster) -> list[dict]:
    """Running, non-hostNetwork pods that Ambit should have captured (Ambit's own never are)."""
    ns_labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in c.list("v1", "Namespace")}
    return [p for p in running(c.list("v1", "Pod"))
            if p["metadata"]["namespace"] not in (c.namespace, "kube-system") and not p["spec"].get("hostNetwork")
            and enrolled(p["metadata"].get("labels") or {}, ns_labels.get(p["metadata"]["namespace"], {}))]
