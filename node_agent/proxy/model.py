"""What the proxy needs to know about the mesh: frozen values, and the Protocols that hand them over.

The discovery/state layer builds these from Kubernetes objects into immutable snapshots; the proxy
reads the current snapshot through ``Resolver`` without awaiting or locking (STYLE: frozen values,
one writer). ``Authorizer`` is the policy layer's decision point.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NewType, Protocol

from node_agent.identity.spiffe import SpiffeId

WorkloadUid = NewType("WorkloadUid", str)


@dataclass(frozen=True, slots=True)
class Workload:
    """One pod as the mesh sees it."""

    uid: WorkloadUid
    name: str  # the pod's name
    namespace: str
    service_account: str
    ips: tuple[str, ...]  # pod IPs, primary first (dual-stack pods have two)
    node: str  # name of the node the pod runs on
    workload_name: str = ""  # owning workload (Deployment, StatefulSet ...) for metrics; pod name if empty
    trust_domain: str = "cluster.local"
    enrolled: bool = True  # captured by an ambit agent: reachable through its 15008 tunnel listener
    identity: SpiffeId = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ips:
            raise ValueError(f"workload {self.namespace}/{self.name} has no IP; only running pods belong in a snapshot")
        object.__setattr__(self, "identity", SpiffeId(self.trust_domain, self.namespace, self.service_account))
        if not self.workload_name:
            object.__setattr__(self, "workload_name", self.name)

    @property
    def ip(self) -> str:
        return self.ips[0]


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """The Service a connection was addressed to (its ClusterIP and port), for metrics and the header."""

    name: str
    namespace: str
    hostname: str  # e.g. cart.shop.svc.cluster.local
    vip: str
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A destination pod and the port the application listens on (the Service's targetPort)."""

    workload: Workload
    port: int

    @property
    def key(self) -> tuple[str, int]:
        """How the balancer tells endpoints apart."""
        return (self.workload.ip, self.port)


@dataclass(frozen=True, slots=True)
class MeshRoute:
    """Connect to one of ``endpoints`` (empty: no route). ``service`` is None when a pod IP was dialled.

    ``waypoint`` (``<namespace>/<name>``) says the service is bound to a waypoint: ``endpoints`` are
    the waypoint's pods (their tunnel port), the tunnel header names the service, and an empty
    ``endpoints`` means the waypoint is missing, never "go direct"."""

    endpoints: tuple[Endpoint, ...]
    service: ServiceTarget | None = None
    waypoint: str = ""


@dataclass(frozen=True, slots=True)
class WaypointGuard:
    """A pod port behind a waypoint: only the waypoint's identities may connect to it."""

    waypoint: str
    """``<namespace>/<name>`` of the Gateway"""
    identities: frozenset[str]
    """SPIFFE IDs (URIs) of the waypoint's pods; empty while it has none, and then nobody may connect"""

    def refusal(self, target: Workload, port: int) -> str:
        """Why someone else's connection to ``target:port`` is refused (the same words everywhere)."""
        return (f"{target.namespace}/{target.name} port {port} is behind waypoint {self.waypoint}: only the "
                "waypoint may connect to it; dial the service (its ClusterIP), not the pod")


@dataclass(frozen=True, slots=True)
class Passthrough:
    """Not a mesh destination: connect to the original destination as plain TCP from the pod."""

    service: ServiceTarget | None = None


Route = MeshRoute | Passthrough


class Resolver(Protocol):
    """Read-only view of the current mesh snapshot; every call is a dictionary lookup, never an await."""

    def route(self, *, source: Workload, ip: str, port: int) -> Route:
        """Where a connection from ``source`` to ``ip:port`` (a ClusterIP or a pod IP) should go."""
        ...

    def workload_by_ip(self, ip: str) -> Workload | None:
        """The pod with this IP, if the snapshot knows one (for metrics labels)."""
        ...

    def waypoint_guard(self, ip: str, port: int) -> WaypointGuard | None:
        """Set when ``ip:port`` backs a Service bound to a waypoint: only that waypoint may connect."""
        ...


class Authorizer(Protocol):
    """May ``source`` (None: plaintext, unauthenticated) reach ``destination`` on ``port``?"""

    def allows(self, *, source: SpiffeId | None, source_ip: str, destination: Workload, port: int) -> bool: ...


class AllowAll:
    """The authorizer used until the policy layer is wired in."""

    __slots__ = ()

    def allows(self, *, source: SpiffeId | None, source_ip: str, destination: Workload, port: int) -> bool:
        return True
