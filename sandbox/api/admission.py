"""Per-kind defaulting and validation, applied on every write (pure functions on dicts).

:func:`apply_defaults` fills what the Kubernetes API server fills (pod spec defaults, service
ports, deployment strategy, namespace label, ...; for a custom resource: pruning and defaults
from its CRD's schema); :func:`validate` returns ``details.causes``.
"""
from __future__ import annotations

import base64
from typing import Any, Callable

from . import crds, structural
from .registry import ResourceType
from .selectors import SelectorError, label_selector_from_dict
from .validation import check_dns1123_label, invalid_cause, object_meta_causes, required

Obj = dict[str, Any]

# ---- defaults --------------------------------------------------------------------------------


def _container_defaults(c: Obj) -> None:
    image = str(c.get("image", ""))
    tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
    if "imagePullPolicy" not in c:
        c["imagePullPolicy"] = "IfNotPresent" if tagged and not image.endswith(":latest") else "Always"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for p in c.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")


def pod_spec_defaults(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    if "serviceAccountName" not in spec:
        spec["serviceAccountName"] = spec.get("serviceAccount") or "default"
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _container_defaults(c)


def _template_defaults(obj: Obj) -> None:
    tmpl = obj.setdefault("spec", {}).setdefault("template", {})
    if isinstance(tmpl, dict):
        tmpl.setdefault("metadata", {})
        if isinstance(tmpl.setdefault("spec", {}), dict):
            pod_spec_defaults(tmpl["spec"])


def _pod(obj: Obj) -> None:
    if isinstance(obj.setdefault("spec", {}), dict):
        pod_spec_defaults(obj["spec"])
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Pending")


def _deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
    _template_defaults(obj)


def _replicaset(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("replicas", 1)
    _template_defaults(obj)


def _daemonset(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("revisionHistoryLimit", 10)
    strategy = spec.setdefault("updateStrategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {"maxUnavailable": 1, "maxSurge": 0})
    _template_defaults(obj)


def _service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            if "targetPort" not in p and "port" in p:
                p["targetPort"] = p["port"]
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def _namespace(obj: Obj) -> None:
    meta = obj["metadata"]
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def _secret(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()


_DEFAULTS: dict[str, Callable[[Obj], None]] = {
    "Pod": _pod,
    "Deployment": _deployment,
    "ReplicaSet": _replicaset,
    "DaemonSet": _daemonset,
    "Service": _service,
    "Namespace": _namespace,
    "Secret": _secret,
    "CustomResourceDefinition": crds.apply_defaults,
}


def apply_defaults(rt: ResourceType, obj: Obj) -> list[str]:
    """Default ``obj`` in place; returns the fields pruned as unknown (custom resources only)."""
    if rt.custom is not None:
        unknown = structural.prune(rt.custom.schema, obj)
        structural.apply_defaults(rt.custom.schema, obj)
        return unknown
    fn = _DEFAULTS.get(rt.kind)
    if fn is not None:
        fn(obj)
    return []


# ---- validation ------------------------------------------------------------------------------


def _containers(spec: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(spec, dict):
        return [required(field)]
    causes: list[dict[str, str]] = []
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [required(f"{field}.containers")]
    seen: set[str] = set()
    for i, c in enumerate(containers):
        where = f"{field}.containers[{i}]"
        if not isinstance(c, dict):
            causes.append(invalid_cause(where, c, "must be an object"))
            continue
        name = c.get("name")
        if not isinstance(name, str) or not name:
            causes.append(required(f"{where}.name"))
        else:
            causes.extend(invalid_cause(f"{where}.name", name, m) for m in check_dns1123_label(name))
            if name in seen:
                causes.append({"reason": "FieldValueDuplicate", "message": f"Duplicate value: {name!r}", "field": f"{where}.name"})
            seen.add(name)
        if not c.get("image"):
            causes.append(required(f"{where}.image"))
        for j, p in enumerate(c.get("ports") or []):
            port = p.get("containerPort") if isinstance(p, dict) else None
            if not isinstance(port, int) or not 0 < port < 65536:
                causes.append(invalid_cause(f"{where}.ports[{j}].containerPort", port, "must be between 1 and 65535, inclusive"))
    return causes


def _workload(obj: Obj) -> list[dict[str, str]]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[dict[str, str]] = []
    tmpl = spec.get("template") if isinstance(spec.get("template"), dict) else {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    selector = spec.get("selector")
    if not selector:
        causes.append(required("spec.selector"))
    else:
        try:
            sel = label_selector_from_dict(selector)
        except (SelectorError, AttributeError, TypeError) as exc:
            causes.append(invalid_cause("spec.selector", selector, str(exc)))
        else:
            if sel.empty:
                causes.append(invalid_cause("spec.selector", selector, "empty selector is invalid for deployment"))
            elif not sel.matches(labels):
                causes.append(invalid_cause("spec.template.metadata.labels", labels, "`selector` does not match template `labels`"))
    causes.extend(_containers(tmpl.get("spec"), "spec.template.spec"))
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        causes.append(invalid_cause("spec.replicas", replicas, "must be greater than or equal to 0"))
    return causes


def _service_causes(obj: Obj) -> list[dict[str, str]]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    causes: list[dict[str, str]] = []
    typ = spec.get("type", "ClusterIP")
    if typ not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        causes.append({"reason": "FieldValueNotSupported", "message": f'Unsupported value: "{typ}": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"', "field": "spec.type"})
    ports = spec.get("ports") or []
    if not ports and typ != "ExternalName" and spec.get("clusterIP") != "None":
        causes.append(required("spec.ports"))
    names: set[str] = set()
    for i, p in enumerate(ports):
        if not isinstance(p, dict):
            causes.append(invalid_cause(f"spec.ports[{i}]", p, "must be an object"))
            continue
        port = p.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            causes.append(invalid_cause(f"spec.ports[{i}].port", port, "must be between 1 and 65535, inclusive"))
        if len(ports) > 1 and not p.get("name"):
            causes.append(required(f"spec.ports[{i}].name"))
        if p.get("name") in names:
            causes.append({"reason": "FieldValueDuplicate", "message": f"Duplicate value: {p['name']!r}", "field": f"spec.ports[{i}].name"})
        names.add(p.get("name"))
        if p.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            causes.append({"reason": "FieldValueNotSupported", "message": f'Unsupported value: "{p.get("protocol")}": supported values: "SCTP", "TCP", "UDP"', "field": f"spec.ports[{i}].protocol"})
    return causes


_VALIDATORS: dict[str, Callable[[Obj], list[dict[str, str]]]] = {
    "Pod": lambda o: _containers(o.get("spec"), "spec"),
    "Deployment": _workload,
    "ReplicaSet": _workload,
    "DaemonSet": _workload,
    "Service": _service_causes,
    "CustomResourceDefinition": crds.validate,
}


def validate(rt: ResourceType, obj: Obj) -> list[dict[str, str]]:
    causes = object_meta_causes(obj.get("metadata") or {}, name_rule=rt.name_rule)
    if rt.custom is not None:
        causes.extend(rt.custom.validator.causes(obj))
        return causes
    fn = _VALIDATORS.get(rt.kind)
    if fn is not None:
        causes.extend(fn(obj))
    return causes
