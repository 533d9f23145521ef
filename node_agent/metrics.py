"""TCP metrics of the node agent, named and labelled after Istio's (``istio_tcp_*`` → ``ambit_tcp_*``).

Label children are resolved once per connection (:meth:`TcpMetrics.connection`); the byte pump
only adds to counters it already holds, so the hot path does no label lookups.
Cardinality is bounded by workloads and services, never by pods, ports or peers' addresses.
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_service",
    "destination_principal",
    "connection_security_policy",
    "response_flags",
)


@dataclass(frozen=True, slots=True)
class ConnectionLabels:
    reporter: str  # "source" | "destination"
    source_workload: str = "unknown"
    source_workload_namespace: str = "unknown"
    source_principal: str = "unknown"
    destination_workload: str = "unknown"
    destination_workload_namespace: str = "unknown"
    destination_service: str = "unknown"
    destination_principal: str = "unknown"
    connection_security_policy: str = "none"  # "mutual_tls" | "none"
    response_flags: str = "-"

    def values(self) -> tuple[str, ...]:
        return tuple(getattr(self, name) or "unknown" for name in LABELS)


class ConnectionMetrics:
    """The counters of one connection, resolved once."""

    __slots__ = ("opened", "closed", "sent", "received", "failed")

    def __init__(self, metrics: "TcpMetrics", labels: ConnectionLabels) -> None:
        values = labels.values()
        self.opened = metrics.opened.labels(*values)
        self.closed = metrics.closed.labels(*values)
        self.sent = metrics.sent.labels(*values)
        self.received = metrics.received.labels(*values)
        self.failed = metrics.failed.labels(*values)


class TcpMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.opened = Counter("ambit_tcp_connections_opened", "TCP connections opened", LABELS, registry=r)
        self.closed = Counter("ambit_tcp_connections_closed", "TCP connections closed", LABELS, registry=r)
        self.sent = Counter("ambit_tcp_sent_bytes", "Bytes sent by the source workload on TCP connections",
                            LABELS, registry=r)
        self.received = Counter("ambit_tcp_received_bytes",
                                "Bytes received by the source workload on TCP connections", LABELS, registry=r)
        self.failed = Counter("ambit_tcp_connections_failed",
                              "TCP connections that failed before or while being established "
                              "(refused, no route, handshake or identity failure)", LABELS, registry=r)

    def connection(self, labels: ConnectionLabels) -> ConnectionMetrics:
        return ConnectionMetrics(self, labels)
