"""Raw Kubernetes JSON as the controllers see it, and the small rules they share.

Objects are plain dicts in camelCase (what the API sends and the reflectors store); the
``TypedDict``s below document the fields the controllers read or write. Helpers here are pure:
label selectors, node selectors and tolerations, readiness and availability, owner references,
the pod-template hash, and timestamps.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Protocol, TypedDict

Kind = Literal["Pod", "Node", "Service", "EndpointSlice", "Deployment", "ReplicaSet", "DaemonSet", "Namespace",
               "Secret", "ConfigMap", "ServiceAccount", "RoleBinding", "Gateway"]
Key = tuple[str, str]
"""(namespace or "", name), as in the reflector's store"""

HASH_LABEL = "pod-template-hash"
DS_HASH_LABEL = "controller-revision-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"

# Kubernetes' "safe" alphabet (k8s.io/apimachinery/pkg/util/rand): no vowels, no 0/1/3 lookalikes.
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


# ---- raw JSON shapes -------------------------------------------------------------------
class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]
    finalizers: list[str]


class LabelSelectorRequirement(TypedDict, total=False):
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: list[str]


class LabelSelector(TypedDict, total=False):
    matchLabels: dict[str, str]
    matchExpressions: list[LabelSelectorRequirement]


class Condition(TypedDict, total=False):
    type: str
    status: str  # "True", "False", "Unknown"
    reason: str
    message: str
    lastTransitionTime: str
    lastUpdateTime: str
    lastProbeTime: str | None


class PodTemplate(TypedDict, total=False):
    metadata: ObjectMeta
    spec: dict[str, Any]


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]  # nodeName, nodeSelector, affinity, tolerations, containers, restartPolicy
    status: dict[str, Any]  # phase, podIP, conditions, containerStatuses


class Node(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]  # unschedulable, taints
    status: dict[str, Any]  # conditions


class Workload(TypedDict, total=False):
    """Deployment, ReplicaSet or DaemonSet: the fields the three controllers share."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]  # replicas, selector, template, strategy/updateStrategy, minReadySeconds
    status: dict[str, Any]


class Service(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]  # selector, ports, clusterIP, type, publishNotReadyAddresses


class EndpointSlice(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    addressType: str
    endpoints: list[dict[str, Any]]
    ports: list[dict[str, Any]]


class Namespace(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]  # finalizers
    status: dict[str, Any]  # phase: Active or Terminating


API_GROUPS: dict[Kind, str] = {
    "Pod": "", "Node": "", "Service": "", "Namespace": "", "Secret": "", "ConfigMap": "", "ServiceAccount": "",
    "EndpointSlice": "discovery.k8s.io", "Deployment": "apps", "ReplicaSet": "apps", "DaemonSet": "apps",
    "RoleBinding": "rbac.authorization.k8s.io", "Gateway": "gateway.networking.k8s.io",
}
"""each kind's API group: an owner reference names a kind only together with its group"""


@dataclass(frozen=True)
class CustomKind:
    """A kind a CustomResourceDefinition defines: served only once that CRD is installed."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str, name: str = "") -> str:
        return f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}" + (f"/{name}" if name else "")


CUSTOM_KINDS: dict[Kind, CustomKind] = {
    "Gateway": CustomKind("gateway.networking.k8s.io", "v1", "gateways"),
}
"""the CRD kinds the controllers cache and write (through paths, not the typed API classes)"""


def group_of(api_version: str) -> str:
    """``apps/v1`` -> ``apps``; ``v1`` -> "" (the core group)."""
    return api_version.rpartition("/")[0]


@dataclass(frozen=True, order=True)
class Resource:
    """A resource type as the API's discovery names it (any kind, not only those of ``Kind``)."""

    group: str
    version: str
    plural: str

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str) -> str:
        """The collection path of this resource in ``namespace``."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"


class Store(Protocol):
    """Read access to the controllers' caches (the reflectors' stores)."""

    def list(self, kind: Kind, namespace: str | None = None) -> list[dict]: ...

    def get(self, kind: Kind, key: Key) -> dict | None: ...


# ---- metadata ----------------------------------------------------------------------------
def meta(obj: Mapping[str, Any]) -> ObjectMeta:
    return obj.get("metadata") or {}  # type: ignore[return-value]


def name_of(obj: Mapping[str, Any]) -> str:
    return meta(obj).get("name") or ""


def namespace_of(obj: Mapping[str, Any]) -> str:
    return meta(obj).get("namespace") or ""


def uid_of(obj: Mapping[str, Any]) -> str:
    return meta(obj).get("uid") or ""


def key_of(obj: Mapping[str, Any]) -> Key:
    return (namespace_of(obj), name_of(obj))


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return meta(obj).get("labels") or {}


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def generation_of(obj: Mapping[str, Any]) -> int:
    return int(meta(obj).get("generation") or 0)


def controller_ref(obj: Mapping[str, Any]) -> OwnerReference | None:
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def owner_keys(obj: Mapping[str, Any], owner_kind: str) -> tuple[tuple[str, str], ...]:
    """The work-queue key of ``obj``'s controller when that is an ``owner_kind``; else none."""
    ref = controller_ref(obj)
    if ref and ref.get("kind") == owner_kind:
        return ((namespace_of(obj), ref.get("name", "")),)
    return ()


def is_controlled_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    ref = controller_ref(obj)
    return ref is not None and bool(ref.get("uid")) and ref.get("uid") == uid_of(owner)


def owner_reference(owner: Mapping[str, Any], *, api_version: str, kind: str) -> OwnerReference:
    """The controller reference a controller puts on what it creates."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": True,
        "blockOwnerDeletion": True,
    }


# ---- selectors -------------------------------------------------------------------------
def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: ``None`` matches nothing, ``{}`` matches everything."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for req in selector.get("matchExpressions") or []:
        if not _requirement_matches(req, labels.get(req.get("key", ""))):
            return False
    return True


def _requirement_matches(req: Mapping[str, Any], value: str | None) -> bool:
    op = req.get("operator")
    values = req.get("values") or []
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):  # node selector requirements only
        try:
            have, want = int(value or ""), int(values[0])
        except (ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False  # unknown operator: match nothing, as the API would have rejected it


def map_selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service's (or nodeSelector's) plain map: every pair must be present."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def node_affinity_matches(pod: Pod, node: Node) -> bool:
    """spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution: terms are ORed,
    a term's requirements ANDed; ``matchFields`` supports ``metadata.name``."""
    required = (
        (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    if not required:
        return True
    node_labels = labels_of(node)
    for term in required.get("nodeSelectorTerms") or []:
        exprs = term.get("matchExpressions") or []
        fields = term.get("matchFields") or []
        if not exprs and not fields:
            continue  # an empty term matches no objects
        if all(_requirement_matches(r, node_labels.get(r.get("key", ""))) for r in exprs) and all(
            _requirement_matches(r, name_of(node) if r.get("key") == "metadata.name" else None)
            for r in fields
        ):
            return True
    return False


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        op = tol.get("operator") or "Equal"
        key = tol.get("key") or ""
        if op == "Exists" and (not key or key == taint.get("key")):
            return True
        if op == "Equal" and key == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def untolerated_taints(pod: Pod, node: Node, *, extra_tolerations: Iterable[Mapping[str, Any]] = ()) -> list[dict]:
    """Taints with effect NoSchedule/NoExecute on the node that the pod does not tolerate."""
    tolerations = list((pod.get("spec") or {}).get("tolerations") or []) + list(extra_tolerations)
    return [
        t
        for t in (node.get("spec") or {}).get("taints") or []
        if t.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, t)
    ]


# ---- readiness -------------------------------------------------------------------------
def condition(obj: Mapping[str, Any], ctype: str) -> Condition | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def node_is_ready(node: Node) -> bool:
    cond = condition(node, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_phase(pod: Pod) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def pod_is_terminal(pod: Pod) -> bool:
    return pod_phase(pod) in ("Succeeded", "Failed")


def pod_is_active(pod: Pod) -> bool:
    """Counts towards a controller's replicas: not finished and not being deleted."""
    return not pod_is_terminal(pod) and not is_deleting(pod)


def pod_is_ready(pod: Pod) -> bool:
    cond = condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_is_available(pod: Pod, *, min_ready_seconds: int, now: datetime) -> bool:
    """Ready, and has been for at least ``min_ready_seconds``."""
    if not pod_is_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    return since is not None and (now - since).total_seconds() >= min_ready_seconds


def seconds_until_available(pod: Pod, *, min_ready_seconds: int, now: datetime) -> float | None:
    """For a ready pod still inside its minReadySeconds window: how long until it counts."""
    if min_ready_seconds <= 0 or not pod_is_ready(pod):
        return None
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    if since is None:
        return None
    left = min_ready_seconds - (now - since).total_seconds()
    return left if left > 0 else None


# ---- time ------------------------------------------------------------------------------
def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def epoch(raw: str | None) -> float:
    t = parse_time(raw)
    return t.timestamp() if t else 0.0


def creation_order(obj: Mapping[str, Any]) -> tuple[float, str]:
    """Oldest first, name breaks ties (creationTimestamp has one-second resolution)."""
    return (epoch(meta(obj).get("creationTimestamp")), name_of(obj))


# ---- names and hashes ------------------------------------------------------------------
def safe_encode(raw: str) -> str:
    """k8s ``rand.SafeEncodeString``: map each byte onto the safe alphabet."""
    return "".join(_SAFE[b % len(_SAFE)] for b in raw.encode())


def random_suffix(length: int = 5) -> str:
    """Like the API server's generateName suffix."""
    return "".join(secrets.choice(_SAFE) for _ in range(length))


def stable_suffix(seed: str, length: int = 5) -> str:
    """A suffix in the same alphabet, derived from ``seed``: the same seed gives the same name,
    so a controller that acts twice on a stale cache collides with itself instead of duplicating."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_SAFE[b % len(_SAFE)] for b in digest[:length])


def template_hash(template: Mapping[str, Any], *, collision_count: int = 0) -> str:
    """The pod-template hash: FNV-1a 32 over a canonical form of the template (plus the collision
    count), printed in decimal and safe-encoded, as Kubernetes does (up to 10 characters).

    The canonical form is sorted JSON rather than Go's spew dump, so the values differ from a real
    cluster's, but they have the same shape and the same stability: equal templates, equal hashes.
    The ``pod-template-hash`` label itself is ignored so a ReplicaSet's template hashes like its
    Deployment's."""
    canon = json.loads(json.dumps(template))
    labels = (canon.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
        labels.pop(DS_HASH_LABEL, None)
    data = json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += collision_count.to_bytes(4, "little")
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return safe_encode(str(h))


def int_or_percent(value: int | str | None, *, total: int, default: str, round_up: bool) -> int:
    """Resolve an IntOrString like maxSurge ("25%") against ``total``."""
    if value is None:
        value = default
    if isinstance(value, int):
        return max(0, value)
    text = str(value).strip()
    if text.endswith("%"):
        pct = int(text[:-1])
        scaled = pct * total
        return max(0, -(-scaled // 100) if round_up else scaled // 100)
    return max(0, int(text))
