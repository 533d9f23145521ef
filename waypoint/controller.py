"""The waypoint controller (``ambit-waypoint controller``, the chart's ``ambit-waypoint-controller``).

For every Gateway of class ``ambit-waypoint`` (Gateway API v1, a listener ``{name: mesh, port:
15008, protocol: HBONE}``) it server-side-applies, each owned by the Gateway (so they go with it):
- a ServiceAccount ``<gateway>`` (the waypoint's identity: ``spiffe://<td>/ns/<ns>/sa/<gateway>``);
- a RoleBinding to the ClusterRole ``ambit-waypoint`` (read Pods, Services, EndpointSlices and
  HTTPRoutes of that namespace only);
- a ConfigMap ``<gateway>-trust-bundle``: a copy of Ambit's trust bundle, kept in step;
- a Deployment ``<gateway>`` running ``ambit-waypoint proxy`` (pods labelled
  ``gateway.networking.k8s.io/gateway-name`` and ``ambit.dev/dataplane-mode: none``: never
  captured themselves) and a Service ``<gateway>`` with port 15008;
then sets the Gateway's status: ``Accepted``, ``Programmed`` (True once a waypoint pod is ready)
and ``addresses`` (the Service's ClusterIP), and the GatewayClass's ``Accepted``.

``desired(...)`` is pure (raw dicts in, manifests out); ``Controller`` watches and applies.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from node_agent.discovery.reflector import Reflector
from node_agent.state.snapshot import DATAPLANE_LABEL, GATEWAY_NAME_LABEL, OPT_OUT

log = logging.getLogger(__name__)

GATEWAY_CLASS = "ambit-waypoint"
CONTROLLER_NAME = "ambit.dev/waypoint-controller"
FIELD_MANAGER = "ambit-waypoint-controller"
TRUST_BUNDLE_CONFIGMAP = "ambit-trust-bundle"
WAYPOINT_CLUSTER_ROLE = "ambit-waypoint"
TUNNEL_PORT = 15008
GATEWAY_API = "gateway.networking.k8s.io/v1"


@dataclass(frozen=True)
class WaypointConfig:
    """What every waypoint Deployment gets (the chart passes it as flags)."""

    namespace: str = "ambit-system"
    """Ambit's namespace: the trust bundle ConfigMap and the CA's Service live there"""
    image: str = "ambit.dev/ambit:latest"
    """the chart passes its own ``image`` (``--image``); this default matches the chart's repository"""
    trust_domain: str = "cluster.local"
    ca_url: str = "https://ambit-identity.ambit-system.svc:15012"
    ca_service: str = "ambit-identity"
    log_level: str = "info"
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"


def is_waypoint(gateway: dict) -> bool:
    return (gateway.get("spec") or {}).get("gatewayClassName") == GATEWAY_CLASS


def _owner(gateway: dict) -> dict:
    meta = gateway["metadata"]
    return {"apiVersion": GATEWAY_API, "kind": "Gateway", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def desired(gateway: dict, *, config: WaypointConfig, trust_bundle: str, ca_ip: str) -> list[dict]:
    """The objects one waypoint Gateway needs, each owned by it."""
    meta = gateway["metadata"]
    name, ns = meta["name"], meta["namespace"]
    labels = {GATEWAY_NAME_LABEL: name, "app.kubernetes.io/name": "ambit-waypoint",
              "app.kubernetes.io/managed-by": "ambit-waypoint-controller"}
    common = {"namespace": ns, "labels": labels, "ownerReferences": [_owner(gateway)]}
    pod_labels = {GATEWAY_NAME_LABEL: name, DATAPLANE_LABEL: OPT_OUT}

    def field(path: str) -> dict:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "GATEWAY_NAME", "value": name},
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "NODE_NAME", **field("spec.nodeName")},
        {"name": "SERVICE_ACCOUNT", **field("spec.serviceAccountName")},
        {"name": "AMBIT_TRUST_DOMAIN", "value": config.trust_domain},
        {"name": "AMBIT_CA_URL", "value": config.ca_url},
        {"name": "AMBIT_CA_IP", "value": ca_ip},
        {"name": "AMBIT_LOG_LEVEL", "value": config.log_level},
    ]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, **common},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 15,
                    "containers": [{
                        "name": "waypoint",
                        "image": config.image,
                        "command": ["ambit-waypoint", "proxy"],
                        "env": env,
                        "ports": [{"name": "mesh", "containerPort": TUNNEL_PORT},
                                  {"name": "metrics", "containerPort": 15020},
                                  {"name": "health", "containerPort": 15021}],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021},
                                           "periodSeconds": 2, "failureThreshold": 3},
                        "resources": {"requests": {"cpu": config.cpu_request, "memory": config.memory_request},
                                      "limits": {"memory": config.memory_limit}},
                        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True,
                                            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "ambit-token", "mountPath": "/var/run/secrets/ambit/tokens", "readOnly": True},
                            {"name": "trust-bundle", "mountPath": "/var/run/secrets/ambit/trust", "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        {"name": "ambit-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": "ambit-identity", "expirationSeconds": 3600, "path": "ambit-identity"}}]}},
                        {"name": "trust-bundle", "configMap": {"name": f"{name}-trust-bundle"}},
                    ],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, **common}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{name}-ambit-waypoint", **common},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": WAYPOINT_CLUSTER_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-trust-bundle", **common},
         "data": {"root-cert.pem": trust_bundle}},
        deployment,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, **common},
         "spec": {"selector": {GATEWAY_NAME_LABEL: name},
                  "ports": [{"name": "mesh", "port": TUNNEL_PORT, "targetPort": TUNNEL_PORT, "protocol": "TCP"}]}},
    ]


def gateway_status(gateway: dict, *, ready_replicas: int, address: str, problem: str = "") -> dict:
    """The Gateway's ``status`` (Accepted, Programmed, addresses), per Gateway API conventions."""
    generation = gateway["metadata"].get("generation", 1)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = {c.get("type"): c for c in (gateway.get("status") or {}).get("conditions") or []}

    def condition(kind: str, ok: bool, reason: str, message: str) -> dict:
        status = "True" if ok else "False"
        prev = old.get(kind) or {}
        since = prev.get("lastTransitionTime") if prev.get("status") == status else now
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "observedGeneration": generation, "lastTransitionTime": since or now}

    if problem:
        accepted = condition("Accepted", False, "Invalid", problem)
        programmed = condition("Programmed", False, "Invalid", problem)
    else:
        accepted = condition("Accepted", True, "Accepted", "the waypoint controller manages this Gateway")
        programmed = (condition("Programmed", True, "Programmed", f"{ready_replicas} waypoint pod(s) ready")
                      if ready_replicas > 0 else
                      condition("Programmed", False, "Pending", "waiting for a waypoint pod to become ready"))
    status: dict = {"conditions": [accepted, programmed]}
    if address:
        status["addresses"] = [{"type": "IPAddress", "value": address}]
    return status


def listener_problem(gateway: dict) -> str:
    """Why the Gateway cannot be a waypoint ("" if it can): it needs the ``mesh`` HBONE listener on 15008."""
    listeners = (gateway.get("spec") or {}).get("listeners") or []
    if not any(lst.get("port") == TUNNEL_PORT and lst.get("protocol") == "HBONE" for lst in listeners):
        return ("a waypoint Gateway needs a listener {name: mesh, port: 15008, protocol: HBONE}; "
                "`ambit waypoint apply` writes one")
    return ""


class Controller:
    def __init__(self, *, api_client: k8s.ApiClient, config: WaypointConfig, resync: float = 30.0) -> None:
        self.config = config
        self._api = api_client
        self._dyn = DynamicClient(api_client)
        self._dirty = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resync = resync
        custom = k8s.CustomObjectsApi(api_client)
        core = k8s.CoreV1Api(api_client)
        apps = k8s.AppsV1Api(api_client)
        self.reflectors = {
            "gateways": Reflector(name="gateways", list_fn=custom.list_cluster_custom_object,
                                  list_kwargs={"group": "gateway.networking.k8s.io", "version": "v1",
                                               "plural": "gateways"}, on_event=self._on_event),
            "deployments": Reflector(name="deployments", list_fn=apps.list_deployment_for_all_namespaces,
                                     list_kwargs={"label_selector": GATEWAY_NAME_LABEL}, on_event=self._on_event),
            "services": Reflector(name="services", list_fn=core.list_service_for_all_namespaces,
                                  list_kwargs={"label_selector": GATEWAY_NAME_LABEL}, on_event=self._on_event),
            "ambit": Reflector(name="ambit-configmaps", list_fn=core.list_namespaced_config_map,
                               list_kwargs={"namespace": config.namespace,
                                            "field_selector": f"metadata.name={TRUST_BUNDLE_CONFIGMAP}"},
                               on_event=self._on_event),
            "ca": Reflector(name="ca-service", list_fn=core.list_namespaced_service,
                            list_kwargs={"namespace": config.namespace,
                                         "field_selector": f"metadata.name={config.ca_service}"},
                            on_event=self._on_event),
        }
        self._applied: dict[tuple[str, str], str] = {}  # (namespace, gateway) -> fingerprint of what was applied

    def _on_event(self, etype: str, obj: dict) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dirty.set)

    def _store(self, name: str) -> list[dict]:
        return list(self.reflectors[name].store.values())

    def reconcile_once(self) -> None:
        bundle = next((cm.get("data", {}).get("root-cert.pem", "") for cm in self._store("ambit")), "")
        ca_ip = next(((svc.get("spec") or {}).get("clusterIP", "") for svc in self._store("ca")), "")
        deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in self._store("deployments")}
        services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in self._store("services")}
        for gw in self._store("gateways"):
            if not is_waypoint(gw) or gw["metadata"].get("deletionTimestamp"):
                continue
            key = (gw["metadata"]["namespace"], gw["metadata"]["name"])
            problem = listener_problem(gw)
            if not problem and not bundle:
                problem = (f"Ambit's trust bundle (ConfigMap {self.config.namespace}/{TRUST_BUNDLE_CONFIGMAP}) "
                           "does not exist yet; is the identity CA running?")
            if not problem:
                fingerprint = repr((gw["metadata"].get("uid"), gw["metadata"].get("generation"), bundle, ca_ip))
                if self._applied.get(key) != fingerprint:
                    try:
                        for obj in desired(gw, config=self.config, trust_bundle=bundle, ca_ip=ca_ip):
                            self._apply(obj)
                    except DynamicApiError as exc:
                        log.warning("applying waypoint %s/%s: %s", *key, exc.summary())
                        continue
                    self._applied[key] = fingerprint
                    log.info("waypoint %s/%s applied", *key)
            dep = deployments.get(key) or {}
            ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
            address = ((services.get(key) or {}).get("spec") or {}).get("clusterIP", "")
            status = gateway_status(gw, ready_replicas=ready, address=address, problem=problem)
            if _conditions_differ((gw.get("status") or {}), status):
                self._patch_status(gw, status)

    def _apply(self, obj: dict) -> None:
        resource = self._dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.server_side_apply(body=obj, name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"],
                                   field_manager=FIELD_MANAGER, force_conflicts=True)

    def _patch_status(self, gw: dict, status: dict) -> None:
        resource = self._dyn.resources.get(api_version=GATEWAY_API, kind="Gateway")
        try:
            resource.status.patch(name=gw["metadata"]["name"], namespace=gw["metadata"]["namespace"],
                                  body={"status": status}, content_type="application/merge-patch+json")
        except DynamicApiError as exc:
            log.warning("status of gateway %s/%s: %s", gw["metadata"]["namespace"], gw["metadata"]["name"],
                        exc.summary())

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        threads_stop = threading.Event()
        for r in self.reflectors.values():
            r.start(threads_stop)
        try:
            while not all(r.synced.is_set() for r in self.reflectors.values()):
                if stop.is_set():
                    return
                await asyncio.sleep(0.1)
            self._accept_class()
            log.info("waypoint controller running (class %s)", GATEWAY_CLASS)
            while not stop.is_set():
                self._dirty.clear()
                try:
                    await asyncio.to_thread(self.reconcile_once)
                except Exception:
                    log.exception("reconcile failed; retrying")
                waiter = asyncio.create_task(self._dirty.wait(), name="waypoint-controller-dirty")
                stopper = asyncio.create_task(stop.wait(), name="waypoint-controller-stop")
                await asyncio.wait({waiter, stopper}, timeout=self._resync, return_when=asyncio.FIRST_COMPLETED)
                for task in (waiter, stopper):
                    task.cancel()
                await asyncio.sleep(0.05)
        finally:
            threads_stop.set()

    def _accept_class(self) -> None:
        """Mark the GatewayClass Accepted (the chart creates it; absent: nothing to do)."""
        try:
            resource = self._dyn.resources.get(api_version=GATEWAY_API, kind="GatewayClass")
            gc = resource.get(name=GATEWAY_CLASS).to_dict()
        except DynamicApiError as exc:
            log.warning("GatewayClass %s: %s", GATEWAY_CLASS, exc.summary())
            return
        except Exception as exc:  # the kind is not served: the Gateway API CRDs are missing
            log.warning("GatewayClass %s cannot be read (%s); are the Gateway API CRDs installed?", GATEWAY_CLASS, exc)
            return
        if (gc.get("spec") or {}).get("controllerName") != CONTROLLER_NAME:
            log.warning("GatewayClass %s names controller %s, not %s; not accepting it", GATEWAY_CLASS,
                        (gc.get("spec") or {}).get("controllerName"), CONTROLLER_NAME)
            return
        status = gateway_status(gc, ready_replicas=1, address="")
        status["conditions"] = [c for c in status["conditions"] if c["type"] == "Accepted"]
        status["conditions"][0]["message"] = "Ambit's waypoint controller handles Gateways of this class"
        try:
            resource.status.patch(name=GATEWAY_CLASS, body={"status": status},
                                  content_type="application/merge-patch+json")
        except DynamicApiError as exc:
            log.warning("status of GatewayClass %s: %s", GATEWAY_CLASS, exc.summary())


def _conditions_differ(old: dict, new: dict) -> bool:
    def key(status: dict) -> tuple:
        conds = tuple(sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message"),
                              c.get("observedGeneration")) for c in status.get("conditions") or []))
        return conds, tuple((a.get("type"), a.get("value")) for a in status.get("addresses") or [])
    return key(old) != key(new)


def main(config: WaypointConfig) -> int:
    from node_agent import lifecycle

    async def body(api: k8s.ApiClient, stop: asyncio.Event) -> None:
        await Controller(api_client=api, config=config).run(stop)

    return lifecycle.run(body)
