"""The EndpointSlice controller: the pods behind each Service with a selector.

- One IPv4 slice ``<svc>-<5 chars>`` per Service (more only when pods resolve a named port to
  different numbers: one slice per distinct port list). The suffix derives from the Service's uid
  and the port list, so acting twice on a stale cache collides instead of duplicating.
- Labels ``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by`` (plus the
  Service's own labels), and a controller reference to the Service.
- Endpoints: pods of the namespace matching the selector that have an IPv4 podIP and are not
  finished. Conditions: ready = Ready and not terminating (or publishNotReadyAddresses),
  serving = Ready, terminating = being deleted. nodeName and a targetRef to the pod.
- Ports: one per Service port, named like it; targetPort is a number, or a name looked up in the
  pod's container ports (a pod without it gets no entry for that port). No endpoints at all:
  one empty placeholder slice, as Kubernetes keeps.
- Services without a selector (or ExternalName) get no managed slices; slices the controller
  made for them are deleted. A deleted Service's slices go with the garbage collector.
"""
from __future__ import annotations

import ipaddress
import json
from datetime import datetime
from typing import Any, Iterable

from sandbox.controllers.actions import Action, Create, Delete, Patch
from sandbox.controllers.objects import (
    EndpointSlice,
    Kind,
    Pod,
    Service,
    Store,
    controller_ref,
    is_deleting,
    labels_of,
    map_selector_matches,
    name_of,
    namespace_of,
    owner_reference,
    pod_is_ready,
    pod_is_terminal,
    stable_suffix,
    uid_of,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"

PortList = tuple[tuple[str, int, str, str], ...]
"""(name, port, protocol, appProtocol) per Service port that resolved"""


def reconcile(service: Service, pods: Iterable[Pod], *, slices: Iterable[EndpointSlice]) -> list[Action]:
    """``pods`` and ``slices``: those of the Service's namespace (others are ignored)."""
    if is_deleting(service):
        return []
    spec = service.get("spec") or {}
    ours = [s for s in slices if namespace_of(s) == namespace_of(service) and _managed_for(s, service)]
    if not spec.get("selector") or spec.get("type") == "ExternalName":
        return [_delete(s, why="service has no selector") for s in ours]

    groups: dict[PortList, list[dict]] = {}
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    for pod in sorted(pods, key=name_of):
        if namespace_of(pod) != namespace_of(service) or not _serves(pod, spec["selector"]):
            continue
        ports = _resolve_ports(spec.get("ports") or [], pod)
        groups.setdefault(ports, []).append(_endpoint(pod, publish_not_ready=publish_not_ready))
    if not groups:
        groups[()] = []

    labels = _labels(service)
    existing: dict[PortList, EndpointSlice] = {}
    unmatched_existing: list[EndpointSlice] = []
    for s in sorted(ours, key=name_of):
        sig = _port_list(s)
        if sig in groups and sig not in existing:
            existing[sig] = s
        else:
            unmatched_existing.append(s)
    actions: list[Action] = []
    for sig, endpoints in sorted(groups.items()):
        current = existing.get(sig) or (unmatched_existing.pop(0) if unmatched_existing else None)
        ports = [_port_json(p) for p in sig]
        if current is None:
            actions.append(Create(kind="EndpointSlice", namespace=namespace_of(service),
                                  body=_slice(service, sig, labels=labels, endpoints=endpoints, ports=ports),
                                  why=_summary(endpoints)))
        elif not _same(current, labels=labels, endpoints=endpoints, ports=ports):
            stale = {k: None for k in labels_of(current) if k not in labels}
            actions.append(Patch(
                kind="EndpointSlice", namespace=namespace_of(current), name=name_of(current),
                body={"metadata": {"labels": {**labels, **stale}}, "endpoints": endpoints, "ports": ports},
                why=_summary(endpoints),
            ))
    actions.extend(_delete(s, why="no longer needed") for s in unmatched_existing)
    return actions


def _managed_for(s: EndpointSlice, service: Service) -> bool:
    lbl = labels_of(s)
    if lbl.get(SERVICE_NAME_LABEL) != name_of(service) or lbl.get(MANAGED_BY_LABEL) != MANAGED_BY:
        return False
    ref = controller_ref(s)
    return ref is None or ref.get("uid") == uid_of(service)  # a previous namesake's slices are the GC's


def _serves(pod: Pod, selector: dict[str, str]) -> bool:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip or pod_is_terminal(pod) or not map_selector_matches(selector, labels_of(pod)):
        return False
    try:
        return ipaddress.ip_address(ip).version == 4
    except ValueError:
        return False


def _endpoint(pod: Pod, *, publish_not_ready: bool) -> dict[str, Any]:
    terminating = is_deleting(pod)
    ready = pod_is_ready(pod)
    ep: dict[str, Any] = {
        "addresses": [pod["status"]["podIP"]],
        "conditions": {
            "ready": publish_not_ready or (ready and not terminating),
            "serving": publish_not_ready or ready,
            "terminating": terminating,
        },
        "targetRef": {"kind": "Pod", "namespace": namespace_of(pod), "name": name_of(pod), "uid": uid_of(pod)},
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        ep["nodeName"] = node
    return ep


def resolve_target_port(service_port: dict[str, Any], pod: Pod) -> int | None:
    """The pod's port number for a Service port, or None when the pod lacks the named port."""
    target = service_port.get("targetPort")
    if target is None or target == "" or target == 0:
        return int(service_port["port"])
    if isinstance(target, int):
        return target
    if str(target).isdigit():
        return int(target)
    protocol = service_port.get("protocol") or "TCP"
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for port in container.get("ports") or []:
            if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
                return int(port["containerPort"])
    return None


def _resolve_ports(service_ports: list[dict[str, Any]], pod: Pod) -> PortList:
    out = []
    for sp in service_ports:
        number = resolve_target_port(sp, pod)
        if number is not None:
            out.append((sp.get("name") or "", number, sp.get("protocol") or "TCP", sp.get("appProtocol") or ""))
    return tuple(out)


def _port_json(p: tuple[str, int, str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p[0], "port": p[1], "protocol": p[2]}
    if p[3]:
        out["appProtocol"] = p[3]
    return out


def _port_list(s: EndpointSlice) -> PortList:
    return tuple(
        (p.get("name") or "", int(p.get("port") or 0), p.get("protocol") or "TCP", p.get("appProtocol") or "")
        for p in s.get("ports") or []
    )


def _labels(service: Service) -> dict[str, str]:
    labels = {**labels_of(service), SERVICE_NAME_LABEL: name_of(service), MANAGED_BY_LABEL: MANAGED_BY}
    if (service.get("spec") or {}).get("clusterIP") == "None":
        labels[HEADLESS_LABEL] = ""
    return labels


def _slice(service: Service, sig: PortList, *, labels: dict[str, str], endpoints: list[dict],
           ports: list[dict]) -> dict:
    seed = uid_of(service) + json.dumps(sig)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name_of(service)}-{stable_suffix(seed)}",
            "namespace": namespace_of(service),
            "labels": labels,
            "ownerReferences": [owner_reference(service, api_version="v1", kind="Service")],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }


def _endpoint_view(ep: dict[str, Any]) -> tuple:
    cond = ep.get("conditions") or {}
    ref = ep.get("targetRef") or {}
    return (
        tuple(ep.get("addresses") or ()),
        cond.get("ready"), cond.get("serving"), cond.get("terminating"),
        ep.get("nodeName") or "",
        (ref.get("kind"), ref.get("namespace"), ref.get("name"), ref.get("uid")),
    )


def _same(current: EndpointSlice, *, labels: dict[str, str], endpoints: list[dict], ports: list[dict]) -> bool:
    return (
        labels_of(current) == labels
        and sorted(map(_endpoint_view, current.get("endpoints") or [])) == sorted(map(_endpoint_view, endpoints))
        and sorted(_port_list(current)) == sorted(_port_list({"ports": ports}))
    )


def _summary(endpoints: list[dict]) -> str:
    ready = sum(1 for ep in endpoints if ep["conditions"]["ready"])
    return f"{ready}/{len(endpoints)} endpoints ready"


def _delete(s: EndpointSlice, *, why: str) -> Delete:
    return Delete(kind="EndpointSlice", namespace=namespace_of(s), name=name_of(s), uid=uid_of(s), why=why)


class EndpointSliceController:
    name = "endpointslice"
    kinds: tuple[Kind, ...] = ("Service", "Pod", "EndpointSlice")

    def keys_for(self, kind: Kind, obj: dict, *, etype: str, store: Store) -> Iterable[tuple[str, str]]:
        ns = namespace_of(obj)
        if kind == "Service":
            return ((ns, name_of(obj)),)
        if kind == "EndpointSlice":
            svc = labels_of(obj).get(SERVICE_NAME_LABEL)
            return ((ns, svc),) if svc and labels_of(obj).get(MANAGED_BY_LABEL) == MANAGED_BY else ()
        # a pod: every Service of its namespace with a selector (old labels are unknown here, and
        # a pod that stopped matching must leave the slices it was in)
        return [(ns, name_of(s)) for s in store.list("Service", ns) if (s.get("spec") or {}).get("selector")]

    def sync(self, key: tuple[str, str], store: Store, *, now: datetime) -> list[Action]:
        service = store.get("Service", key)
        if service is None:
            return []
        return reconcile(service, store.list("Pod", key[0]), slices=store.list("EndpointSlice", key[0]))
