"""The one table of resource types the API serves; adding a kind is one line in :data:`RESOURCES`."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import tables
from .tables import Column

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    short_names: tuple[str, ...] = ()
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    """"status" (spec/status split, like Kubernetes), "scale" (autoscaling/v1 Scale), "token"
    (ServiceAccount TokenRequest) and "finalize" (Namespace ``spec.finalizers``)"""
    columns: tuple[Column, ...] = tables.GENERIC
    field_selectors: tuple[str, ...] = ()
    """fields beyond metadata.name / metadata.namespace that ``fieldSelector`` may name"""
    verbs: tuple[str, ...] = ALL_VERBS
    categories: tuple[str, ...] = ()
    name_rule: str = "subdomain"
    """"label" (DNS-1123 label, ≤63) or "subdomain" (DNS-1123 subdomain, ≤253)"""
    singular: str = field(default="")

    def __post_init__(self) -> None:
        if not self.singular:
            object.__setattr__(self, "singular", self.kind.lower())

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """Storage key: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def allowed_fields(self) -> tuple[str, ...]:
        base = ("metadata.name", "metadata.namespace") if self.namespaced else ("metadata.name",)
        return base + self.field_selectors

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"
        ns = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{prefix}{ns}/{self.plural}" + (f"/{name}" if name else "")


_POD_FIELDS = (
    "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
    "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
    "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
    "reason", "reportingComponent", "source", "type",
)
_STATUS = ("status",)
_STATUS_SCALE = ("status", "scale")
_ALL = ("all",)

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", ("ns",), namespaced=False, subresources=("status", "finalize"), columns=tables.NAMESPACE_COLUMNS, field_selectors=("status.phase",), name_rule="label"),
    ResourceType("", "v1", "Pod", "pods", ("po",), subresources=_STATUS, columns=tables.POD_COLUMNS, field_selectors=_POD_FIELDS, categories=_ALL),
    ResourceType("", "v1", "Service", "services", ("svc",), subresources=_STATUS, columns=tables.SERVICE_COLUMNS, categories=_ALL, name_rule="label"),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", ("sa",), subresources=("token",), columns=tables.SERVICEACCOUNT_COLUMNS),
    ResourceType("", "v1", "Node", "nodes", ("no",), namespaced=False, subresources=_STATUS, columns=tables.NODE_COLUMNS, field_selectors=("spec.unschedulable",)),
    ResourceType("", "v1", "Secret", "secrets", (), columns=tables.SECRET_COLUMNS, field_selectors=("type",)),
    ResourceType("", "v1", "ConfigMap", "configmaps", ("cm",), columns=tables.CONFIGMAP_COLUMNS),
    ResourceType("", "v1", "Endpoints", "endpoints", ("ep",), columns=tables.ENDPOINTS_COLUMNS, singular="endpoints"),
    ResourceType("", "v1", "Event", "events", ("ev",), columns=tables.EVENT_COLUMNS, field_selectors=_EVENT_FIELDS),
    ResourceType("apps", "v1", "Deployment", "deployments", ("deploy",), subresources=_STATUS_SCALE, columns=tables.DEPLOYMENT_COLUMNS, categories=_ALL),
    ResourceType("apps", "v1", "ReplicaSet", "replicasets", ("rs",), subresources=_STATUS_SCALE, columns=tables.REPLICASET_COLUMNS, categories=_ALL),
    ResourceType("apps", "v1", "DaemonSet", "daemonsets", ("ds",), subresources=_STATUS, columns=tables.DAEMONSET_COLUMNS, categories=_ALL),
    ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", (), columns=tables.ENDPOINTSLICE_COLUMNS, field_selectors=("addressType",)),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", (), columns=tables.LEASE_COLUMNS),
    # RBAC objects are stored and served (charts and kubectl apply them) but not enforced: any valid token may do anything
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", (), namespaced=False, columns=tables.GENERIC),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", (), namespaced=False, columns=tables.GENERIC),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", (), columns=tables.GENERIC),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", (), columns=tables.GENERIC),
    ResourceType("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", ("pc",), namespaced=False, columns=tables.GENERIC),
    ResourceType("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", (), namespaced=False, columns=tables.GENERIC, verbs=("create",)),
    ResourceType("gateway.networking.k8s.io", "v1", "Gateway", "gateways", ("gtw",), subresources=_STATUS, columns=tables.GATEWAY_COLUMNS, categories=("gateway-api",)),
    ResourceType("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", (), subresources=_STATUS, columns=tables.HTTPROUTE_COLUMNS, categories=("gateway-api",)),
)

_BY_GV_PLURAL = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KEY = {r.key: r for r in RESOURCES}
_BY_KIND = {(r.group, r.kind): r for r in RESOURCES}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_GV_PLURAL.get((group, version, plural))


def by_key(key: str) -> ResourceType:
    return _BY_KEY[key]


def by_kind(group: str, kind: str) -> ResourceType | None:
    return _BY_KIND.get((group, kind))


def group_versions() -> list[tuple[str, str]]:
    """Every (group, version) served, core first, in registry order."""
    seen: list[tuple[str, str]] = []
    for r in RESOURCES:
        if (r.group, r.version) not in seen:
            seen.append((r.group, r.version))
    return seen


def in_group_version(group: str, version: str) -> list[ResourceType]:
    return [r for r in RESOURCES if r.group == group and r.version == version]


NAMESPACE = _BY_KEY["namespaces"]
POD = _BY_KEY["pods"]
SERVICE = _BY_KEY["services"]
SERVICE_ACCOUNT = _BY_KEY["serviceaccounts"]
TOKEN_REVIEW = _BY_KEY["tokenreviews.authentication.k8s.io"]
