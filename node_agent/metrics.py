"""TCP metrics of the node agent, named and labelled after Istio's (``istio_tcp_*`` → ``ambit_tcp_*``).

Label children are resolved once per connection (:meth:`TcpMetrics.connection`); the byte pump
only adds to counters it already holds, so the hot path does no label lookups.
Cardinality is bounded by workloads and services, never by pods, ports or peers' addresses.
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics

disable_created_metrics()  # Istio-shaped counters only: no *_created gauge beside every series

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
        # only label sets with a response flag fail: no zero-valued failed series beside every success
        self.failed = metrics.failed.labels(*values) if labels.response_flags != "-" else None


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


class MetricsObserver:
    """The proxy's ``Observer``: counters per connection, and one log line when it closes."""

    __slots__ = ("_metrics", "_open", "_children", "_log")

    def __init__(self, metrics: TcpMetrics) -> None:
        import logging

        self._metrics = metrics
        self._open: dict[int, ConnectionMetrics] = {}
        # label children per label set: a connection looks its counters up once, in a dict; the set
        # of label values is bounded by workloads and services, so is this cache
        self._children: dict[ConnectionLabels, ConnectionMetrics] = {}
        self._log = logging.getLogger("ambit.access")

    def _counters(self, labels: ConnectionLabels) -> ConnectionMetrics:
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = self._metrics.connection(labels)
        return children

    @staticmethod
    def labels(record) -> ConnectionLabels:
        dst = record.destination
        svc = record.destination_service
        return ConnectionLabels(
            reporter=record.reporter,
            source_workload=record.source_workload_name or "unknown",
            source_workload_namespace=record.source_namespace or "unknown",
            source_principal=record.source_principal or "unknown",
            destination_workload=dst.workload_name if dst is not None else "unknown",
            destination_workload_namespace=dst.namespace if dst is not None else "unknown",
            destination_service=svc.hostname if svc is not None else (
                "%s:%d" % record.original_dst if record.original_dst and dst is None else "unknown"),
            destination_principal=record.destination_principal or "unknown",
            connection_security_policy=record.security_policy,
            response_flags=record.response_flags,
        )

    def opened(self, record) -> None:
        children = self._counters(self.labels(record))
        children.opened.inc()
        if children.failed is not None:
            children.failed.inc()
        self._open[record.id] = children

    def closed(self, record, result) -> None:
        children = self._open.pop(record.id, None)
        if children is None:  # the proxy promises opened() first; count it anyway rather than lose it
            children = self._counters(self.labels(record))
            children.opened.inc()
        children.closed.inc()
        children.received.inc(result.from_client)
        children.sent.inc(result.from_server)
        if self._log.isEnabledFor(20):
            self._log.info("%s", _access_line(record, result))


def _access_line(record, result) -> str:
    import json

    dst = record.destination
    return json.dumps({
        "msg": "connection closed",
        "reporter": record.reporter,
        "listener": record.listener,
        "src": record.source_ip,
        "src_workload": f"{record.source_namespace}/{record.source_workload_name}" if record.source_workload_name else "",
        "src_principal": record.source_principal,
        "dst": "%s:%d" % record.destination_address if record.destination_address else "",
        "dst_workload": f"{dst.namespace}/{dst.workload_name}" if dst is not None else "",
        "dst_service": record.destination_service.hostname if record.destination_service else "",
        "dst_principal": record.destination_principal,
        "security": record.security_policy,
        "bytes_in": result.from_client,
        "bytes_out": result.from_server,
        "duration_ms": round(result.duration * 1000, 1),
        "flags": record.response_flags,
        "detail": record.detail,
        **({"waypoint": record.waypoint} if record.waypoint else {}),
    }, separators=(",", ":"))
