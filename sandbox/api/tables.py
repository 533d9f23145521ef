"""Server-side printing for ``kubectl get``: per-kind columns and ``meta.k8s.io/v1`` Tables.

Columns are declared here as :class:`Column` tuples and attached to kinds in ``registry``; a
CRD's ``additionalPrinterColumns`` become columns with :func:`printer_column`. Cells are computed
from the stored object at response time, so AGE is always current.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from . import jsonpath

Obj = dict[str, Any]


@dataclass(frozen=True)
class Column:
    name: str
    cell: Callable[[Obj, datetime], Any]
    type: str = "string"
    priority: int = 0
    description: str = ""
    format: str = ""

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description or self.name,
            "priority": self.priority,
        }


# ---- AGE -------------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """kubectl's ``duration.HumanDuration``: 5s, 119s, 3m2s, 12m, 3h4m, 9h, 2d3h, 30d, 2y5d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rem = s % 60
        return f"{minutes}m" if rem == 0 else f"{minutes}m{rem}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rem = minutes % 60
        return f"{hours}h" if rem == 0 else f"{hours}h{rem}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rem = hours % 24
        return f"{hours // 24}d" if rem == 0 else f"{hours // 24}d{rem}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(ts: str | None, now: datetime) -> str:
    t = parse_time(ts)
    if t is None:
        return "<unknown>"
    return human_duration((now - t).total_seconds())


# ---- cell helpers ----------------------------------------------------------------------------


def _get(obj: Obj, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, dict):
            return default
        cur = cur.get(p)
        if cur is None:
            return default
    return cur


def _name(obj: Obj, now: datetime) -> str:
    return _get(obj, "metadata", "name", default="")


def _age(obj: Obj, now: datetime) -> str:
    return age(_get(obj, "metadata", "creationTimestamp"), now)


def _selector_text(sel: Any) -> str:
    if not isinstance(sel, dict) or not sel:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op = e.get("operator")
        vals = ",".join(e.get("values") or [])
        if op == "In":
            parts.append(f"{e.get('key')} in ({vals})")
        elif op == "NotIn":
            parts.append(f"{e.get('key')} notin ({vals})")
        elif op == "Exists":
            parts.append(str(e.get("key")))
        elif op == "DoesNotExist":
            parts.append(f"!{e.get('key')}")
    if "matchLabels" not in sel and "matchExpressions" not in sel:
        parts = [f"{k}={v}" for k, v in sorted(sel.items())]
    return ",".join(parts) or "<none>"


def _containers(path: tuple[str, ...]) -> Callable[[Obj, datetime], str]:
    return lambda o, now: ",".join(c.get("name", "") for c in _get(o, *path, default=[])) or "<none>"


def _images(path: tuple[str, ...]) -> Callable[[Obj, datetime], str]:
    return lambda o, now: ",".join(c.get("image", "") for c in _get(o, *path, default=[])) or "<none>"


NAME = Column("Name", _name, format="name", description="Name must be unique within a namespace.")
AGE = Column("Age", _age, description="CreationTimestamp is a timestamp representing the server time when this object was created.")
GENERIC = (NAME, AGE)

# ---- pods ------------------------------------------------------------------------------------


def pod_ready(o: Obj, now: datetime) -> str:
    total = len(_get(o, "spec", "containers", default=[]))
    ready = sum(1 for c in _get(o, "status", "containerStatuses", default=[]) if c.get("ready"))
    return f"{ready}/{total}"


def pod_status(o: Obj, now: datetime) -> str:
    reason = _get(o, "status", "reason") or _get(o, "status", "phase", default="Unknown")
    for c in _get(o, "status", "initContainerStatuses", default=[]):
        st = c.get("state") or {}
        if "terminated" in st and st["terminated"].get("exitCode", 0) != 0:
            return f"Init:{st['terminated'].get('reason') or 'Error'}"
        if "waiting" in st and st["waiting"].get("reason") not in (None, "PodInitializing"):
            return f"Init:{st['waiting']['reason']}"
    for c in reversed(_get(o, "status", "containerStatuses", default=[])):
        st = c.get("state") or {}
        if "waiting" in st and st["waiting"].get("reason"):
            reason = st["waiting"]["reason"]
        elif "terminated" in st:
            reason = st["terminated"].get("reason") or f"ExitCode:{st['terminated'].get('exitCode', 0)}"
    if _get(o, "metadata", "deletionTimestamp"):
        return "Terminating"
    return reason


def pod_restarts(o: Obj, now: datetime) -> int:
    return sum(int(c.get("restartCount", 0)) for c in _get(o, "status", "containerStatuses", default=[]))


POD_COLUMNS = (
    NAME,
    Column("Ready", pod_ready, description="The aggregate readiness state of this pod for accepting traffic."),
    Column("Status", pod_status, description="The aggregate status of the containers in this pod."),
    Column("Restarts", pod_restarts, type="string", description="The number of times the containers in this pod have been restarted."),
    AGE,
    Column("IP", lambda o, now: _get(o, "status", "podIP", default="<none>"), priority=1, description="IP address allocated to the pod."),
    Column("Node", lambda o, now: _get(o, "spec", "nodeName", default="<none>"), priority=1, description="Name of the Node this pod is assigned to."),
    Column("Nominated Node", lambda o, now: _get(o, "status", "nominatedNodeName", default="<none>"), priority=1),
    Column("Readiness Gates", lambda o, now: _readiness_gates(o), priority=1),
)


def _readiness_gates(o: Obj) -> str:
    gates = _get(o, "spec", "readinessGates", default=[])
    if not gates:
        return "<none>"
    conds = {c.get("type"): c.get("status") for c in _get(o, "status", "conditions", default=[])}
    return f"{sum(1 for g in gates if conds.get(g.get('conditionType')) == 'True')}/{len(gates)}"


# ---- services --------------------------------------------------------------------------------


def service_external_ip(o: Obj, now: datetime) -> str:
    typ = _get(o, "spec", "type", default="ClusterIP")
    external = list(_get(o, "spec", "externalIPs", default=[]))
    if typ == "ExternalName":
        return _get(o, "spec", "externalName", default="<none>")
    if typ == "LoadBalancer":
        ingress = [i.get("ip") or i.get("hostname") for i in _get(o, "status", "loadBalancer", "ingress", default=[])]
        external += [i for i in ingress if i]
        return ",".join(external) if external else "<pending>"
    return ",".join(external) if external else "<none>"


def service_ports(o: Obj, now: datetime) -> str:
    parts = []
    for p in _get(o, "spec", "ports", default=[]):
        proto = p.get("protocol", "TCP")
        if p.get("nodePort"):
            parts.append(f"{p.get('port')}:{p['nodePort']}/{proto}")
        else:
            parts.append(f"{p.get('port')}/{proto}")
    return ",".join(parts) or "<none>"


SERVICE_COLUMNS = (
    NAME,
    Column("Type", lambda o, now: _get(o, "spec", "type", default="ClusterIP")),
    Column("Cluster-IP", lambda o, now: _get(o, "spec", "clusterIP", default="<none>")),
    Column("External-IP", service_external_ip),
    Column("Port(s)", service_ports),
    AGE,
    Column("Selector", lambda o, now: _selector_text(_get(o, "spec", "selector")), priority=1),
)

# ---- workloads -------------------------------------------------------------------------------

_TEMPLATE_CONTAINERS = ("spec", "template", "spec", "containers")
_WORKLOAD_WIDE = (
    Column("Containers", _containers(_TEMPLATE_CONTAINERS), priority=1),
    Column("Images", _images(_TEMPLATE_CONTAINERS), priority=1),
    Column("Selector", lambda o, now: _selector_text(_get(o, "spec", "selector")), priority=1),
)


def _int(o: Obj, *path: str) -> int:
    return int(_get(o, *path, default=0) or 0)


DEPLOYMENT_COLUMNS = (
    NAME,
    Column("Ready", lambda o, now: f"{_int(o, 'status', 'readyReplicas')}/{_get(o, 'spec', 'replicas', default=1)}"),
    Column("Up-to-date", lambda o, now: _int(o, "status", "updatedReplicas"), type="integer"),
    Column("Available", lambda o, now: _int(o, "status", "availableReplicas"), type="integer"),
    AGE,
    *_WORKLOAD_WIDE,
)
REPLICASET_COLUMNS = (
    NAME,
    Column("Desired", lambda o, now: _get(o, "spec", "replicas", default=1), type="integer"),
    Column("Current", lambda o, now: _int(o, "status", "replicas"), type="integer"),
    Column("Ready", lambda o, now: _int(o, "status", "readyReplicas"), type="integer"),
    AGE,
    *_WORKLOAD_WIDE,
)
DAEMONSET_COLUMNS = (
    NAME,
    Column("Desired", lambda o, now: _int(o, "status", "desiredNumberScheduled"), type="integer"),
    Column("Current", lambda o, now: _int(o, "status", "currentNumberScheduled"), type="integer"),
    Column("Ready", lambda o, now: _int(o, "status", "numberReady"), type="integer"),
    Column("Up-to-date", lambda o, now: _int(o, "status", "updatedNumberScheduled"), type="integer"),
    Column("Available", lambda o, now: _int(o, "status", "numberAvailable"), type="integer"),
    Column("Node Selector", lambda o, now: ",".join(f"{k}={v}" for k, v in sorted(_get(o, "spec", "template", "spec", "nodeSelector", default={}).items())) or "<none>"),
    AGE,
    *_WORKLOAD_WIDE,
)

# ---- nodes, namespaces -----------------------------------------------------------------------


def node_status(o: Obj, now: datetime) -> str:
    ready = next((c for c in _get(o, "status", "conditions", default=[]) if c.get("type") == "Ready"), None)
    text = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    if _get(o, "spec", "unschedulable"):
        text += ",SchedulingDisabled"
    return text


def node_roles(o: Obj, now: datetime) -> str:
    roles = []
    for key, value in (_get(o, "metadata", "labels", default={}) or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key.split("/", 1)[1]:
            roles.append(key.split("/", 1)[1])
        elif key == "kubernetes.io/role" and value:
            roles.append(value)
    return ",".join(sorted(set(roles))) or "<none>"


def _node_address(kind: str) -> Callable[[Obj, datetime], str]:
    return lambda o, now: next(
        (a.get("address") for a in _get(o, "status", "addresses", default=[]) if a.get("type") == kind), "<none>"
    )


NODE_COLUMNS = (
    NAME,
    Column("Status", node_status),
    Column("Roles", node_roles),
    AGE,
    Column("Version", lambda o, now: _get(o, "status", "nodeInfo", "kubeletVersion", default="")),
    Column("Internal-IP", _node_address("InternalIP"), priority=1),
    Column("External-IP", _node_address("ExternalIP"), priority=1),
    Column("OS-Image", lambda o, now: _get(o, "status", "nodeInfo", "osImage", default="<unknown>"), priority=1),
    Column("Kernel-Version", lambda o, now: _get(o, "status", "nodeInfo", "kernelVersion", default="<unknown>"), priority=1),
    Column("Container-Runtime", lambda o, now: _get(o, "status", "nodeInfo", "containerRuntimeVersion", default="<unknown>"), priority=1),
)
NAMESPACE_COLUMNS = (NAME, Column("Status", lambda o, now: _get(o, "status", "phase", default="Active")), AGE)

# ---- other kinds -----------------------------------------------------------------------------


def endpointslice_ports(o: Obj, now: datetime) -> str:
    ports = _get(o, "ports", default=None)
    if not ports:
        return "<unset>"
    return ",".join(str(p.get("port", "<unset>")) for p in ports)


def endpointslice_endpoints(o: Obj, now: datetime) -> str:
    addrs = [a for e in _get(o, "endpoints", default=[]) for a in e.get("addresses", [])]
    if not addrs:
        return "<unset>"
    shown = ",".join(addrs[:3])
    return shown if len(addrs) <= 3 else f"{shown} + {len(addrs) - 3} more..."


ENDPOINTSLICE_COLUMNS = (
    NAME,
    Column("AddressType", lambda o, now: _get(o, "addressType", default="")),
    Column("Ports", endpointslice_ports),
    Column("Endpoints", endpointslice_endpoints),
    AGE,
)
def endpoints_text(o: Obj, now: datetime) -> str:
    pairs = [
        f"{a.get('ip')}:{p.get('port')}"
        for sub in _get(o, "subsets", default=[])
        for p in (sub.get("ports") or [{}])
        for a in sub.get("addresses") or []
    ]
    if not pairs:
        return "<none>"
    shown = ",".join(pairs[:3])
    return shown if len(pairs) <= 3 else f"{shown} + {len(pairs) - 3} more..."


ENDPOINTS_COLUMNS = (NAME, Column("Endpoints", endpoints_text), AGE)
LEASE_COLUMNS = (NAME, Column("Holder", lambda o, now: _get(o, "spec", "holderIdentity", default="")), AGE)
CONFIGMAP_COLUMNS = (
    NAME,
    Column("Data", lambda o, now: len(_get(o, "data", default={})) + len(_get(o, "binaryData", default={})), type="integer"),
    AGE,
)
SECRET_COLUMNS = (
    NAME,
    Column("Type", lambda o, now: _get(o, "type", default="Opaque")),
    Column("Data", lambda o, now: len(_get(o, "data", default={})), type="integer"),
    AGE,
)
SERVICEACCOUNT_COLUMNS = (NAME, Column("Secrets", lambda o, now: len(_get(o, "secrets", default=[])), type="integer"), AGE)


def _event_object(o: Obj, now: datetime) -> str:
    ref = _get(o, "involvedObject", default={}) or _get(o, "regarding", default={})
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


EVENT_COLUMNS = (
    Column("Last Seen", lambda o, now: age(_get(o, "lastTimestamp") or _get(o, "eventTime") or _get(o, "metadata", "creationTimestamp"), now)),
    Column("Type", lambda o, now: _get(o, "type", default="")),
    Column("Reason", lambda o, now: _get(o, "reason", default="")),
    Column("Object", _event_object),
    Column("Message", lambda o, now: str(_get(o, "message", default="")).strip()),
    Column("Count", lambda o, now: _get(o, "count", default=1), type="integer", priority=1),
    Column("Name", _name, priority=1, format="name"),
)


CRD_COLUMNS = (
    NAME,
    Column("Created At", lambda o, now: _get(o, "metadata", "creationTimestamp", default=""), type="date",
           description="CreationTimestamp is a timestamp representing the server time when this object was created."),
)

# ---- custom resources ------------------------------------------------------------------------


def _go_text(value: Any) -> str:
    """A JSON value as client-go's jsonpath prints it: maps and lists as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "" if value is None else str(value)


def printer_cell(type_: str, value: Any, now: datetime) -> Any:
    """A printer column's cell as kube-apiserver's CRD table convertor makes it (None: ``<none>``)."""
    if value is None:
        return None
    if type_ == "string":
        return _go_text(value)
    if type_ == "integer":
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if type_ == "number":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if type_ == "boolean":
        return value if isinstance(value, bool) else None
    if type_ == "date":
        if not isinstance(value, str):
            return None
        return age(value, now) if parse_time(value) is not None else "<invalid>"
    return None


def printer_column(*, name: str, type_: str, json_path: str, format_: str = "", priority: int = 0,
                   description: str = "") -> Column:
    """A column from a CRD's ``additionalPrinterColumns`` entry (the path parsed once, here)."""
    steps = jsonpath.parse(json_path)

    def cell(o: Obj, now: datetime) -> Any:
        found = jsonpath.find(steps, o)
        return printer_cell(type_, found[0] if found else None, now)

    return Column(name, cell, type=type_, priority=priority, description=description or name, format=format_)


# ---- rendering -------------------------------------------------------------------------------


def partial_metadata(obj: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def table_row(columns: Iterable[Column], obj: Obj, *, now: datetime, include_object: str) -> Obj:
    row: Obj = {"cells": [c.cell(obj, now) for c in columns]}
    if include_object == "Object":
        row["object"] = obj
    elif include_object != "None":
        row["object"] = partial_metadata(obj)
    return row


def render_table(
    columns: tuple[Column, ...],
    objs: Iterable[Obj],
    *,
    resource_version: str,
    include_object: str = "Metadata",
    now: datetime | None = None,
) -> Obj:
    """A ``meta.k8s.io/v1`` Table of ``objs``; ``include_object`` is None, Metadata or Object."""
    now = now or datetime.now(timezone.utc)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [c.definition() for c in columns],
        "rows": [table_row(columns, o, now=now, include_object=include_object) for o in objs],
    }
