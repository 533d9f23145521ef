"""Frozen snapshots of the mesh as this node sees it, built from raw Kubernetes objects.

One writer (the discovery thread) calls :func:`build` with the reflectors' stores and publishes
the result; readers (the proxy, the CNI server, admin) take ``holder.current`` and never wait or
lock. Everything here is pure: dicts in, frozen values out.
"""
from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from node_agent.proxy import model

DATAPLANE_LABEL = "ambit.dev/dataplane-mode"
AMBIENT = "ambient"
OPT_OUT = "none"
USE_WAYPOINT_LABEL = "ambit.dev/use-waypoint"
"""on a Namespace or a Service: the name of the waypoint (a Gateway in the same namespace); ``none`` on a
Service opts it out of its namespace's waypoint"""
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
"""on a waypoint's Service and pods: the Gateway they were made for"""


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    pod: str
    namespace: str
    workload: str
    """the owning workload's name (Deployment, DaemonSet, …), for metrics; the pod name otherwise"""
    service_account: str
    node: str
    ip: str
    enrolled: bool
    identity: str
    """the SPIFFE ID the workload's certificate carries"""
    phase: str = "Pending"
    host_network: bool = False


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int | str
    protocol: str = "TCP"
    name: str = ""
    app_protocol: str = ""
    """``appProtocol`` (e.g. ``http``, ``kubernetes.io/h2c``, ``grpc``): how the waypoint talks upstream"""


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    ports: Mapping[str, int]
    """service port name -> endpoint port"""
    ready: bool
    node: str
    pod_uid: str


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    waypoint: str = ""
    """the waypoint (Gateway name, same namespace) this Service's traffic must pass through; "" for none"""
    gateway: str = ""
    """for a waypoint's own Service: the Gateway it serves (label ``gateway.networking.k8s.io/gateway-name``)"""

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc"

    def port(self, port: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == port:
                return p
        return None

    def targets(self, port: int, *, ready_only: bool = True) -> list[tuple[Endpoint, int]]:
        """(ready) endpoints with the endpoint port serving service port ``port``"""
        sp = self.port(port)
        if sp is None:
            return []
        out = []
        for ep in self.endpoints:
            if ready_only and not ep.ready:
                continue
            target = ep.ports.get(sp.name)
            if target is None and isinstance(sp.target_port, int) and len(self.ports) == 1:
                target = sp.target_port
            if target is not None:
                out.append((ep, target))
        return out


WaypointGuard = model.WaypointGuard


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(d)


@dataclass(frozen=True)
class Snapshot:
    node: str
    trust_domain: str
    workloads_by_uid: Mapping[str, Workload] = field(default_factory=lambda: _frozen({}))
    workloads_by_ip: Mapping[str, Workload] = field(default_factory=lambda: _frozen({}))
    services_by_vip: Mapping[str, Service] = field(default_factory=lambda: _frozen({}))
    services_by_name: Mapping[tuple[str, str], Service] = field(default_factory=lambda: _frozen({}))
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: _frozen({}))
    mesh_by_ip: Mapping[str, model.Workload] = field(default_factory=lambda: _frozen({}))
    """the proxy's view of every addressable pod, built once per snapshot"""
    waypoints: Mapping[tuple[str, str], Service] = field(default_factory=lambda: _frozen({}))
    """(namespace, gateway name) -> the waypoint's Service"""
    waypoint_guards: Mapping[tuple[str, int], WaypointGuard] = field(default_factory=lambda: _frozen({}))
    """(pod ip, port) of pods behind a waypoint -> who may connect to them"""
    version: int = 0

    def local_workloads(self) -> list[Workload]:
        return [w for w in self.workloads_by_uid.values() if w.node == self.node]

    def enrolled_local(self) -> list[Workload]:
        return [w for w in self.local_workloads() if w.enrolled and not w.host_network]


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def is_enrolled(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
    """Pod label wins (``none`` opts out, ``ambient`` opts in); else the namespace label decides."""
    pod_mode = pod_labels.get(DATAPLANE_LABEL)
    if pod_mode == OPT_OUT:
        return False
    if pod_mode == AMBIENT:
        return True
    return namespace_labels.get(DATAPLANE_LABEL) == AMBIENT


def waypoint_of(service_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> str:
    """The waypoint a Service uses: its own label wins (``none`` opts out), else its namespace's.
    A waypoint's own Service never uses one (it would loop)."""
    if GATEWAY_NAME_LABEL in service_labels:
        return ""
    name = service_labels.get(USE_WAYPOINT_LABEL) or namespace_labels.get(USE_WAYPOINT_LABEL) or ""
    return "" if name == OPT_OUT else name


def workload_name(pod: dict) -> str:
    """Deployment name for ReplicaSet-owned pods (strip the pod-template-hash), else owner, else pod."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        owner = ref.get("name", "")
        if ref.get("kind") == "ReplicaSet":
            h = (meta.get("labels") or {}).get("pod-template-hash")
            if h and owner.endswith("-" + h):
                return owner[: -len(h) - 1]
        return owner
    return meta.get("name", "")


def _pod_ip(pod: dict) -> str:
    status = pod.get("status") or {}
    ip = status.get("podIP") or ""
    if not ip:
        for entry in status.get("podIPs") or []:
            if entry.get("ip"):
                return entry["ip"]
    return ip


def build(
    *,
    node: str,
    trust_domain: str,
    namespaces: Iterable[dict],
    pods: Iterable[dict],
    services: Iterable[dict],
    endpoint_slices: Iterable[dict],
    version: int = 0,
) -> Snapshot:
    ns_labels: dict[str, Mapping[str, str]] = {}
    for ns in namespaces:
        meta = ns.get("metadata") or {}
        ns_labels[meta.get("name", "")] = _frozen(dict(meta.get("labels") or {}))

    by_uid: dict[str, Workload] = {}
    by_ip: dict[str, Workload] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        namespace = meta.get("namespace", "")
        sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        host_network = bool(spec.get("hostNetwork"))
        w = Workload(
            uid=meta.get("uid", ""),
            pod=meta.get("name", ""),
            namespace=namespace,
            workload=workload_name(pod),
            service_account=sa,
            node=spec.get("nodeName") or "",
            ip=_pod_ip(pod),
            enrolled=(not host_network) and meta.get("deletionTimestamp") is None
            and is_enrolled(meta.get("labels") or {}, ns_labels.get(namespace, {})),
            identity=spiffe_id(trust_domain, namespace, sa),
            phase=status.get("phase") or "Pending",
            host_network=host_network,
        )
        if not w.uid:
            continue
        by_uid[w.uid] = w
        # host-network pods share the node's IP: they are not addressable workloads
        if w.ip and not host_network and w.phase not in ("Succeeded", "Failed"):
            by_ip[w.ip] = w

    slices_by_service: dict[tuple[str, str], list[dict]] = {}
    for es in endpoint_slices:
        meta = es.get("metadata") or {}
        svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if svc:
            slices_by_service.setdefault((meta.get("namespace", ""), svc), []).append(es)

    by_vip: dict[str, Service] = {}
    by_name: dict[tuple[str, str], Service] = {}
    for svc in services:
        meta = svc.get("metadata") or {}
        spec = svc.get("spec") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        ports = tuple(
            ServicePort(
                port=int(p.get("port")),
                target_port=_int_or_str(p.get("targetPort", p.get("port"))),
                protocol=p.get("protocol") or "TCP",
                name=p.get("name") or "",
                app_protocol=p.get("appProtocol") or "",
            )
            for p in spec.get("ports") or []
            if p.get("port") is not None
        )
        endpoints = []
        for es in slices_by_service.get(key, []):
            es_ports = {p.get("name") or "": int(p["port"]) for p in es.get("ports") or [] if p.get("port") is not None}
            for ep in es.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                ready = cond.get("ready") is not False
                for addr in ep.get("addresses") or []:
                    endpoints.append(Endpoint(
                        ip=addr,
                        ports=_frozen(dict(es_ports)),
                        ready=ready,
                        node=ep.get("nodeName") or "",
                        pod_uid=((ep.get("targetRef") or {}).get("uid") or ""),
                    ))
        labels = meta.get("labels") or {}
        service = Service(name=key[1], namespace=key[0], cluster_ip=spec.get("clusterIP") or "",
                          ports=ports, endpoints=tuple(endpoints),
                          waypoint=waypoint_of(labels, ns_labels.get(key[0], {})),
                          gateway=labels.get(GATEWAY_NAME_LABEL, ""))
        by_name[key] = service
        if _is_ip(service.cluster_ip):
            by_vip[service.cluster_ip] = service

    mesh_by_ip = {
        ip: model.Workload(
            uid=model.WorkloadUid(w.uid), name=w.pod, namespace=w.namespace, service_account=w.service_account,
            ips=(ip,), node=w.node, workload_name=w.workload, trust_domain=trust_domain, enrolled=w.enrolled,
        )
        for ip, w in by_ip.items()
    }
    waypoints = {(svc.namespace, svc.gateway): svc for svc in by_name.values() if svc.gateway}
    return Snapshot(
        node=node,
        trust_domain=trust_domain,
        workloads_by_uid=_frozen(by_uid),
        workloads_by_ip=_frozen(by_ip),
        services_by_vip=_frozen(by_vip),
        services_by_name=_frozen(by_name),
        namespace_labels=_frozen(ns_labels),
        mesh_by_ip=_frozen(mesh_by_ip),
        waypoints=_frozen(waypoints),
        waypoint_guards=_frozen(_waypoint_guards(by_name.values(), waypoints, by_ip)),
        version=version,
    )


def _waypoint_guards(
    services: Iterable[Service], waypoints: Mapping[tuple[str, str], Service], pods_by_ip: Mapping[str, Workload]
) -> dict[tuple[str, int], WaypointGuard]:
    """Every (pod ip, target port) that backs a Service bound to a waypoint, with the identities of
    that waypoint's pods: the destination agent lets only them in (no silent bypass)."""
    guards: dict[tuple[str, int], WaypointGuard] = {}
    for svc in services:
        if not svc.waypoint:
            continue
        wp = waypoints.get((svc.namespace, svc.waypoint))
        identities = frozenset(
            pods_by_ip[ep.ip].identity for ep in (wp.endpoints if wp else ()) if ep.ip in pods_by_ip
        )
        guard = WaypointGuard(waypoint=f"{svc.namespace}/{svc.waypoint}", identities=identities)
        for sp in svc.ports:
            for ep, target in svc.targets(sp.port, ready_only=False):
                guards[(ep.ip, target)] = guard
    return guards


def _int_or_str(value) -> int | str:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return str(value)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class SnapshotHolder:
    """The one place the current snapshot lives. One writer publishes; readers read ``current``.

    Subscribers are called (on the writer's thread) after each publish, with the new snapshot;
    subscribe before reading ``current`` so no update is missed.
    """

    def __init__(self, initial: Snapshot) -> None:
        self.current = initial
        self._subscribers: list[Callable[[Snapshot], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Callable[[Snapshot], None]) -> None:
        with self._lock:
            self._subscribers.append(fn)

    def publish(self, snap: Snapshot) -> None:
        self.current = snap
        with self._lock:
            subs = list(self._subscribers)
        for fn in subs:
            fn(snap)
