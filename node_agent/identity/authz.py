"""Who may have which identity: Istio's node authorization, on TokenReview and the pod API.

1. authenticate: the bearer token goes to TokenReview with the CA's audience; it must be accepted,
   for that audience, belong to a service account, and be bound to a pod (a projected token);
2. the caller's pod must still exist (same UID as the token names) and be scheduled; its nodeName is
   the caller's node;
3. the node agent's service account may obtain an identity ns/sa when at least one Running or
   Pending pod with that service account is on that node;
4. any other caller (a waypoint) may obtain only its own identity (its token's ns/sa), while its
   pod is Running or Pending.
A node agent can therefore only obtain identities of workloads that run beside it: a compromised
node leaks the identities of its own pods, not the mesh's; a workload gets nothing it does not
already hold (its service account token).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from node_agent.identity.errors import ForbiddenError, UnauthenticatedError
from node_agent.identity.spiffe import SpiffeId

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
_SA_PREFIX = "system:serviceaccount:"
_ACTIVE_PHASES = frozenset({"Running", "Pending"})


@dataclass(frozen=True)
class TokenReviewResult:
    """The parts of a TokenReview status the CA uses."""

    authenticated: bool
    username: str = ""
    uid: str = ""
    extra: Mapping[str, Sequence[str]] = field(default_factory=dict)
    audiences: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class PodInfo:
    """The parts of a Pod the CA uses."""

    namespace: str
    name: str
    uid: str
    node_name: str
    service_account: str
    phase: str


class ClusterApi(Protocol):
    """The Kubernetes calls authorization needs (``kube.KubeClusterApi`` in production).

    Implementations raise ``ClusterApiError`` when the API cannot answer; the CA then answers 503.
    """

    async def review_token(self, token: str, *, audience: str) -> TokenReviewResult: ...

    async def get_pod(self, *, namespace: str, name: str) -> PodInfo | None: ...

    async def list_pods_on_node(self, *, namespace: str, node_name: str) -> Sequence[PodInfo]: ...


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a service account whose token is bound to a pod."""

    username: str
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service_account} (pod {self.pod_name})"


class NodeAuthorizer:
    def __init__(self, *, cluster: ClusterApi, audience: str, node_agent_username: str) -> None:
        self._cluster = cluster
        self._audience = audience
        self._node_agent = node_agent_username

    async def authenticate(self, token: str) -> Caller:
        """The caller behind a bearer token, or ``UnauthenticatedError``/``ForbiddenError``."""
        if not token:
            raise UnauthenticatedError("missing bearer token; send 'Authorization: Bearer <projected token>'")
        review = await self._cluster.review_token(token, audience=self._audience)
        if not review.authenticated:
            detail = f": {review.error}" if review.error else ""
            raise UnauthenticatedError(f"the token was rejected by TokenReview{detail}")
        if self._audience not in review.audiences:
            raise UnauthenticatedError(
                f"the token is not for audience {self._audience!r}; mount a projected service-account token "
                f"with that audience"
            )
        if not review.username.startswith(_SA_PREFIX):
            raise ForbiddenError(f"caller {review.username!r} is not a service account")
        namespace, _, service_account = review.username[len(_SA_PREFIX):].partition(":")
        pod_names = list(review.extra.get(POD_NAME_EXTRA, ()))
        if len(pod_names) != 1 or not pod_names[0]:
            raise ForbiddenError(
                f"the token of {review.username} is not bound to a pod; use a projected service-account token"
            )
        pod_uids = list(review.extra.get(POD_UID_EXTRA, ()))
        return Caller(
            username=review.username,
            namespace=namespace,
            service_account=service_account,
            pod_name=pod_names[0],
            pod_uid=pod_uids[0] if len(pod_uids) == 1 else "",
        )

    async def authorize(self, caller: Caller, identity: SpiffeId) -> str:
        """Check that ``caller`` may obtain ``identity``; return the node it was authorized for."""
        if caller.username != self._node_agent:
            return await self._own_identity(caller, identity)
        node = await self._caller_node(caller)
        pods = await self._cluster.list_pods_on_node(namespace=identity.namespace, node_name=node)
        if not any(
            p.node_name == node and p.service_account == identity.service_account and p.phase in _ACTIVE_PHASES
            for p in pods
        ):
            raise ForbiddenError(
                f"no Running or Pending pod with service account {identity.service_account!r} in namespace "
                f"{identity.namespace!r} is on node {node!r}; a node agent gets only its own node's identities"
            )
        return node

    async def _own_identity(self, caller: Caller, identity: SpiffeId) -> str:
        """Any other caller (a waypoint) gets only its own identity, while its pod runs: the same
        node rule, since that pod is on the caller's node by definition."""
        if (identity.namespace, identity.service_account) != (caller.namespace, caller.service_account):
            raise ForbiddenError(
                f"caller {caller.username} may obtain only its own identity "
                f"(ns/{caller.namespace}/sa/{caller.service_account}), not {identity}; only the node agent "
                f"({self._node_agent}) obtains identities for other workloads"
            )
        node = await self._caller_node(caller)
        pod = await self._cluster.get_pod(namespace=caller.namespace, name=caller.pod_name)
        if pod is None or pod.phase not in _ACTIVE_PHASES:
            raise ForbiddenError(f"the caller's pod {caller.namespace}/{caller.pod_name} is not Running or Pending")
        return node

    async def _caller_node(self, caller: Caller) -> str:
        pod = await self._cluster.get_pod(namespace=caller.namespace, name=caller.pod_name)
        if pod is None:
            raise ForbiddenError(f"the caller's pod {caller.namespace}/{caller.pod_name} no longer exists")
        if caller.pod_uid and pod.uid != caller.pod_uid:
            raise ForbiddenError(
                f"the token is bound to pod {caller.namespace}/{caller.pod_name} with uid {caller.pod_uid}, "
                f"which has been replaced (uid now {pod.uid})"
            )
        if not pod.node_name:
            raise ForbiddenError(f"the caller's pod {caller.namespace}/{caller.pod_name} is not scheduled on a node")
        return pod.node_name
