"""What the L7 engine is given: frozen values, and the Protocols through which the plumbing hands them over.

- ``RequestContext``: one downstream connection's facts, filled by the plumbing from the tunnel:
  which Service port it was sent to, and who sent it (SPIFFE principal, workload, namespace).
- ``Connector``: opens a ``Stream`` to one endpoint (production: the mTLS tunnel under the
  waypoint's identity; tests: plain TCP). Raises ``UpstreamError``.
- ``Backends``: the Services' ready endpoints and ``appProtocol`` per port, read from the current
  snapshot without awaiting.
- ``RouteSource``: the current ``RouteTable`` (rebuilt by the one writer when HTTPRoutes change).
- ``Clock``: monotonic seconds (``time.monotonic`` in production).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from node_agent.proxy.model import Endpoint
from node_agent.proxy.pump import Stream

from waypoint.routes import RouteTable

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One downstream connection: the Service port it was sent to and its authenticated source."""

    namespace: str
    service: str
    port: int
    source_principal: str = ""  # SPIFFE URI of the peer that opened the tunnel
    source_workload: str = ""
    source_namespace: str = ""
    cluster_domain: str = "cluster.local"

    def hostname(self, service: str | None = None) -> str:
        """FQDN of ``service`` (default: the one addressed) in this namespace, e.g. ``web.demo.svc.cluster.local``."""
        return f"{service or self.service}.{self.namespace}.svc.{self.cluster_domain}"


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A backend Service port: where a request is sent (a route's backendRef, or the Service itself)."""

    namespace: str
    name: str
    port: int


class Connector(Protocol):
    async def connect(self, endpoint: Endpoint, *, service: ServiceRef) -> Stream:
        """A new stream to ``endpoint`` (``endpoint.port`` is the target port), for ``service``.

        Raises ``node_agent.proxy.errors.UpstreamError`` (``retryable``: another endpoint may be tried)."""
        ...


class Backends(Protocol):
    def endpoints(self, service: ServiceRef) -> Sequence[Endpoint] | None:
        """The ready endpoints behind ``service`` (empty: none ready); ``None`` when the Service or the
        port does not exist (a route pointing at it answers 500, as Gateway API asks)."""
        ...

    def app_protocol(self, service: ServiceRef) -> str:
        """The port's ``appProtocol`` ("" when unset): ``kubernetes.io/h2c`` or ``grpc`` make the engine
        speak h2c to the endpoints, anything HTTP/1.1-like or unset HTTP/1.1."""
        ...


class RouteSource(Protocol):
    def route_table(self) -> RouteTable:
        """The current routes; a plain read, never an await."""
        ...
