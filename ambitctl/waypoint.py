"""``ambit waypoint apply|list|delete``: waypoints are Gateways of class ``ambit-waypoint``
(Gateway API v1, a listener ``{name: mesh, port: 15008, protocol: HBONE}``), as Istio's are; the
controller in Ambit's namespace turns each into a Deployment. Services opt in with the label
``ambit.dev/use-waypoint=<name>`` on themselves or their Namespace (``--enroll-namespace``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ambitctl import tables
from ambitctl.apply import Applier, Ref, wait_until
from ambitctl.errors import AmbitctlError

GATEWAY_API = "gateway.networking.k8s.io/v1"
GATEWAY_CLASS = "ambit-waypoint"
USE_WAYPOINT_LABEL = "ambit.dev/use-waypoint"
FIELD_MANAGER = "ambit-waypoint"


def gateway(name: str, namespace: str) -> dict:
    return {
        "apiVersion": GATEWAY_API, "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"gatewayClassName": GATEWAY_CLASS,
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }


def _condition(gw: dict, kind: str) -> dict:
    return next((c for c in (gw.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def programmed(gw: dict | None) -> str | None:
    """None once the controller says Programmed=True, else what it says (for ``wait_until``)."""
    if gw is None:
        return "the Gateway does not exist"
    cond = _condition(gw, "Programmed")
    if cond.get("status") == "True":
        return None
    if not cond:
        return ("no status from the waypoint controller yet; is it installed "
                "(`ambit install --set waypoint.enabled=true`) and running?")
    return f"Programmed={cond.get('status')} ({cond.get('reason')}: {cond.get('message')})"


def apply(applier: Applier, *, name: str, namespace: str, enroll_namespace: bool, wait: float | None) -> list[str]:
    """Create or update the waypoint's Gateway; optionally bind the namespace to it; wait until Programmed."""
    said = [f"gateway {namespace}/{name} {applier.apply(gateway(name, namespace))}"]
    if enroll_namespace:
        applier.apply({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": namespace, "labels": {USE_WAYPOINT_LABEL: name}}})
        said.append(f"namespace {namespace} labelled {USE_WAYPOINT_LABEL}={name}")
    if wait:
        ref = Ref(GATEWAY_API, "Gateway", namespace, name)
        wait_until(lambda: programmed(applier.get(ref)), timeout=wait, what=f"waypoint {namespace}/{name}")
        said.append(f"waypoint {namespace}/{name} is ready")
    return said


@dataclass(frozen=True)
class Row:
    namespace: str
    name: str
    programmed: str
    address: str
    bound: str
    """what uses it: ``namespace`` (the namespace label) and/or service names"""


def rows(applier: Applier, *, namespace: str | None) -> list[Row]:
    try:
        gateways = applier.list(GATEWAY_API, "Gateway", selector="", namespace=namespace)
    except AmbitctlError as exc:
        raise AmbitctlError(f"{exc}; are the Gateway API CRDs installed (`ambit install` ships them)?") from exc
    out = []
    for gw in sorted(gateways, key=lambda g: (g["metadata"]["namespace"], g["metadata"]["name"])):
        if (gw.get("spec") or {}).get("gatewayClassName") != GATEWAY_CLASS:
            continue
        ns, name = gw["metadata"]["namespace"], gw["metadata"]["name"]
        users = []
        ns_obj = applier.get(Ref("v1", "Namespace", None, ns)) or {}
        if (ns_obj.get("metadata", {}).get("labels") or {}).get(USE_WAYPOINT_LABEL) == name:
            users.append("namespace")
        users += sorted(s["metadata"]["name"] for s in
                        applier.list("v1", "Service", selector=f"{USE_WAYPOINT_LABEL}={name}", namespace=ns))
        cond = _condition(gw, "Programmed")
        address = ",".join(a.get("value", "") for a in (gw.get("status") or {}).get("addresses") or [])
        out.append(Row(namespace=ns, name=name, programmed=cond.get("status", "Unknown"), address=address or "-",
                       bound=",".join(users) or "-"))
    return out


def delete(applier: Applier, *, name: str, namespace: str) -> list[str]:
    """Delete the Gateway (its Deployment, Service and the rest go with it) and the namespace label
    that pointed at it: a label naming a missing waypoint refuses the namespace's traffic."""
    said = []
    if not applier.delete(Ref(GATEWAY_API, "Gateway", namespace, name)):
        raise AmbitctlError(f"waypoint {namespace}/{name} does not exist (ambit waypoint list -A shows them)")
    said.append(f"gateway {namespace}/{name} deleted")
    ns_obj = applier.get(Ref("v1", "Namespace", None, namespace)) or {}
    if (ns_obj.get("metadata", {}).get("labels") or {}).get(USE_WAYPOINT_LABEL) == name:
        applier.patch_labels(Ref("v1", "Namespace", None, namespace), {USE_WAYPOINT_LABEL: None})
        said.append(f"namespace {namespace}: label {USE_WAYPOINT_LABEL} removed")
    services = applier.list("v1", "Service", selector=f"{USE_WAYPOINT_LABEL}={name}", namespace=namespace)
    if services:
        names = ", ".join(s["metadata"]["name"] for s in services)
        said.append(f"warning: services {names} still carry {USE_WAYPOINT_LABEL}={name}; their connections are "
                    "refused until you remove the label or apply the waypoint again")
    return said


def render(rows: list[Row], *, output: str) -> str:
    if output == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    if not rows:
        return "no waypoints (create one with `ambit waypoint apply -n NAMESPACE`)"
    return tables.render(("NAMESPACE", "NAME", "PROGRAMMED", "ADDRESS", "USED BY"),
                         ((r.namespace, r.name, r.programmed, r.address, r.bound) for r in rows))
