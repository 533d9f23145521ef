"""What the proxy tells the rest of the agent about each connection.

- ``ConnectionRecord``: who talked to whom, how it was secured and how it ended; filled once per
  connection (never per chunk) and handed to the injected ``Observer`` (metrics and logs live
  there): ``opened(record)`` once the upstream is connected or has definitively failed, then
  ``closed(record, result)``; exactly once each for every accepted connection.
- ``ResponseFlag``: short reasons after Envoy/Istio's ``response_flags``.
- ``ConnectionRegistry``: the open connections, for the admin endpoint's dump.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Protocol

from node_agent.proxy.model import ServiceTarget, Workload
from node_agent.proxy.pump import PumpResult


class ResponseFlag:
    """Values of ``ConnectionRecord.response_flags``."""

    NONE = "-"
    UPSTREAM_FAILURE = "UF"  # could not connect / handshake / verify the upstream (as Envoy)
    NO_ROUTE = "NR"  # no endpoint for the destination, or a destination that would loop (as Envoy)
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"  # the client sent something that is not TLS or a tunnel header (as Envoy)
    UPSTREAM_PROTOCOL_ERROR = "UPE"  # the tunnel peer answered something that is not a tunnel answer (as Envoy)
    DENIED = "RBAC"  # refused by authorization policy or by the destination's checks
    WAYPOINT_NOT_READY = "WAYPOINT_NOT_READY"  # the service is bound to a waypoint that has no ready pod: refused, not sent around it
    WAYPOINT_BYPASS = "WAYPOINT_BYPASS"  # a pod behind a waypoint was reached by someone other than the waypoint


class SecurityPolicy:
    MUTUAL_TLS = "mutual_tls"
    NONE = "none"


class Reporter:
    SOURCE = "source"
    DESTINATION = "destination"


_ids = itertools.count(1)


class ConnectionRecord:
    """One proxied connection as seen by one reporter (mutable while the connection is set up)."""

    __slots__ = (
        "id",
        "listener",
        "reporter",
        "started",
        "source",
        "source_ip",
        "source_principal",
        "source_workload_name",
        "source_namespace",
        "destination",
        "destination_principal",
        "destination_service",
        "destination_address",
        "original_dst",
        "security_policy",
        "tls_resumed",
        "response_flags",
        "detail",
        "waypoint",
    )

    def __init__(self, *, listener: str, reporter: str, source_ip: str = "") -> None:
        self.id = next(_ids)
        self.listener = listener  # "outbound" | "inbound" | "inbound_plaintext"
        self.reporter = reporter  # Reporter.SOURCE | Reporter.DESTINATION
        self.started = time.time()
        self.source: Workload | None = None
        self.source_ip = source_ip
        self.source_principal = ""  # SPIFFE URI, "" when not authenticated
        self.source_workload_name = ""  # from ``source``, or from the tunnel header when ``source`` is unknown
        self.source_namespace = ""
        self.destination: Workload | None = None
        self.destination_principal = ""
        self.destination_service: ServiceTarget | None = None
        self.destination_address: tuple[str, int] | None = None  # where bytes were actually sent
        self.original_dst: tuple[str, int] | None = None  # what the application dialled
        self.security_policy = SecurityPolicy.NONE
        self.tls_resumed = False  # the tunnel's TLS session was resumed (no full handshake)
        self.response_flags = ResponseFlag.NONE
        self.detail: str | None = None  # a lowercase reason when response_flags is not "-"
        self.waypoint = ""  # ``<namespace>/<name>`` of the waypoint the connection was sent through

    def set_source(self, workload: Workload | None) -> None:
        self.source = workload
        if workload is not None:
            self.source_workload_name = workload.workload_name
            self.source_namespace = workload.namespace

    def fail(self, flag: str, detail: str) -> None:
        """Record why the connection failed; the first reason wins."""
        if self.response_flags == ResponseFlag.NONE:
            self.response_flags = flag
            self.detail = detail

    def copy(self, *, reporter: str) -> ConnectionRecord:
        """The same connection as seen by the other reporter (same-node connections have both)."""
        other = ConnectionRecord(listener=self.listener, reporter=reporter, source_ip=self.source_ip)
        for name in self.__slots__:
            if name not in ("id", "reporter"):
                setattr(other, name, getattr(self, name))
        return other

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for the admin dump."""
        return {
            "id": self.id,
            "listener": self.listener,
            "reporter": self.reporter,
            "started": self.started,
            "source_ip": self.source_ip,
            "source_workload": self.source_workload_name,
            "source_namespace": self.source_namespace,
            "source_principal": self.source_principal,
            "destination_workload": self.destination.workload_name if self.destination else "",
            "destination_namespace": self.destination.namespace if self.destination else "",
            "destination_principal": self.destination_principal,
            "destination_service": self.destination_service.hostname if self.destination_service else "",
            "destination_address": "%s:%d" % self.destination_address if self.destination_address else "",
            "original_dst": "%s:%d" % self.original_dst if self.original_dst else "",
            "security_policy": self.security_policy,
            "tls_resumed": self.tls_resumed,
            "response_flags": self.response_flags,
            "detail": self.detail,
            "waypoint": self.waypoint,
        }


class Observer(Protocol):
    """Metrics and logs for connections (the agent's metrics layer implements it)."""

    def opened(self, record: ConnectionRecord) -> None: ...

    def closed(self, record: ConnectionRecord, result: PumpResult) -> None:
        """``result.from_client`` is what Istio calls received bytes, ``from_server`` sent bytes."""
        ...


class NullObserver:
    __slots__ = ()

    def opened(self, record: ConnectionRecord) -> None:
        pass

    def closed(self, record: ConnectionRecord, result: PumpResult) -> None:
        pass


class ConnectionRegistry:
    """Open connections by id; read by the admin endpoint, written by the listeners."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[int, ConnectionRecord] = {}

    def add(self, record: ConnectionRecord) -> None:
        self._open[record.id] = record

    def discard(self, record: ConnectionRecord) -> None:
        self._open.pop(record.id, None)

    def __len__(self) -> int:
        return len(self._open)

    def dump(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for record in list(self._open.values()):
            entry = record.as_dict()
            entry["age_seconds"] = round(now - record.started, 3)
            out.append(entry)
        return out
