"""The resource types the API serves: the built-in kinds of :data:`RESOURCES` plus the kinds
CustomResourceDefinitions define, behind one :class:`Registry` (every lookup goes through it).

Adding a built-in kind is one line in :data:`RESOURCES`. A CRD's kinds are registered with
:meth:`Registry.set_custom` (``crds.served_types`` builds them) and go with
:meth:`Registry.remove_custom`; lookups, discovery and the iteration over every kind (namespace
deletion, dependents) see both alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import tables
from .tables import Column

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ScalePaths:
    """Where a kind keeps what its ``scale`` subresource reads and writes (JSON paths)."""

    spec_replicas: str = ".spec.replicas"
    status_replicas: str = ".status.replicas"
    label_selector: str | None = None
    """a path to a selector *string* (custom resources); None: built-ins' ``spec.selector`` object"""


@dataclass(frozen=True)
class Custom:
    """What a CustomResourceDefinition says about one served version of its kind."""

    crd: str
    """the CRD's name (``<plural>.<group>``)"""
    storage_version: str
    """objects are stored at this version and converted (strategy None) to the one asked for"""
    schema: dict[str, Any] = field(compare=False, repr=False)
    """this version's ``openAPIV3Schema``"""
    validator: Any = field(compare=False, repr=False, default=None)
    """the compiled schema (``structural.Validator``)"""
    list_kind: str = ""


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
    scale: ScalePaths | None = None
    """set when ``subresources`` has "scale" """
    custom: Custom | None = None
    """set for the kinds a CustomResourceDefinition defines"""

    def __post_init__(self) -> None:
        if not self.singular:
            object.__setattr__(self, "singular", self.kind.lower())
        if "scale" in self.subresources and self.scale is None:
            object.__setattr__(self, "scale", ScalePaths())

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_group_version(self) -> str:
        """The apiVersion objects of this kind are stored with."""
        if self.custom is None:
            return self.group_version
        return f"{self.group}/{self.custom.storage_version}"

    @property
    def key(self) -> str:
        """Storage key: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def list_kind(self) -> str:
        return (self.custom.list_kind if self.custom and self.custom.list_kind else "") or f"{self.kind}List"

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
    ResourceType("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", ("crd", "crds"), namespaced=False, subresources=_STATUS, columns=tables.CRD_COLUMNS, categories=("api-extensions",)),
)

_BUILTIN_BY_KEY = {r.key: r for r in RESOURCES}
NAMESPACE = _BUILTIN_BY_KEY["namespaces"]
POD = _BUILTIN_BY_KEY["pods"]
SERVICE = _BUILTIN_BY_KEY["services"]
SERVICE_ACCOUNT = _BUILTIN_BY_KEY["serviceaccounts"]
TOKEN_REVIEW = _BUILTIN_BY_KEY["tokenreviews.authentication.k8s.io"]
CRD = _BUILTIN_BY_KEY["customresourcedefinitions.apiextensions.k8s.io"]

_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple:
    """Kubernetes' version order, highest first when sorted: v2 > v1 > v1beta2 > v1beta1 >
    v1alpha1 > anything else (alphabetically)."""
    m = _VERSION.match(version)
    if not m:
        return (3, 0, 0, version)
    major, level, minor = int(m.group(1)), m.group(2), int(m.group(3) or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[level]
    return (rank, -major, -minor, version)


class Registry:
    """Built-in kinds plus the kinds of established CRDs; rebuilt indexes on every change."""

    def __init__(self, builtins: tuple[ResourceType, ...] = RESOURCES) -> None:
        self._builtins = tuple(builtins)
        self._custom: dict[str, tuple[ResourceType, ...]] = {}
        self._reindex()

    def _reindex(self) -> None:
        served = list(self._builtins) + [rt for types in self._custom.values() for rt in types]
        self._all = tuple(served)
        self._by_gvp = {(r.group, r.version, r.plural): r for r in served}
        kinds: dict[str, ResourceType] = {}
        for r in served:
            # one type per storage key: the storage version of a CRD's kind (any served version else)
            current = kinds.get(r.key)
            if current is None or (r.custom is not None and r.version == r.custom.storage_version):
                kinds[r.key] = r
        self._kinds = kinds
        versions: dict[str, list[str]] = {}
        for r in served:
            if r.version not in versions.setdefault(r.group, []):
                versions[r.group].append(r.version)
        self._versions = {g: sorted(vs, key=version_priority) for g, vs in versions.items()}

    # ---- changes -------------------------------------------------------------------------

    def set_custom(self, crd: str, types: tuple[ResourceType, ...]) -> None:
        """Serve ``types`` (every served version of one CRD's kind), replacing what it served."""
        if types:
            self._custom[crd] = tuple(types)
        else:
            self._custom.pop(crd, None)
        self._reindex()

    def remove_custom(self, crd: str) -> tuple[ResourceType, ...]:
        gone = self._custom.pop(crd, ())
        self._reindex()
        return gone

    def custom_of(self, crd: str) -> tuple[ResourceType, ...]:
        return self._custom.get(crd, ())

    def name_conflict(self, *, crd: str, group: str, plural: str, kind: str, short_names: tuple[str, ...] = ()) -> str:
        """Why a CRD's names cannot be accepted ("" if they can): another type already uses them."""
        for r in self._all:
            if r.custom is not None and r.custom.crd == crd:
                continue
            if r.group == group and r.plural == plural:
                return f'"{plural}" is already in use'
            if r.group == group and r.kind == kind and r.custom is not None:
                return f'"{kind}" is already in use'
            if r.group == group and set(short_names) & set(r.short_names):
                return f'"{sorted(set(short_names) & set(r.short_names))[0]}" is already in use'
        return ""

    # ---- lookups -------------------------------------------------------------------------

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_gvp.get((group, version, plural))

    def by_key(self, key: str) -> ResourceType:
        return self._kinds[key]

    def get_key(self, key: str) -> ResourceType | None:
        return self._kinds.get(key)

    def kinds(self) -> tuple[ResourceType, ...]:
        """One type per stored kind (each CRD's at its storage version): for "every kind" loops."""
        return tuple(self._kinds.values())

    def group_versions(self) -> list[tuple[str, str]]:
        """Every (group, version) served: core first, groups in registry order, each group's
        versions by priority (the preferred one first)."""
        return [(g, v) for g, versions in self._versions.items() for v in versions]

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [r for r in self._all if r.group == group and r.version == version]
