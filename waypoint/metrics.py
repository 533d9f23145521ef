"""The waypoint's golden request metrics (named after Istio's ``istio_requests_*``) and its access line.

- ``RequestRecord``: one request as the engine saw it, filled as it goes and handed over once.
- ``RequestMetrics.record``: counts the request, observes its duration, counts its retries and a
  timeout, and logs one JSON line on ``ambit.access`` (the node agent's logger, same shape).
- Labels are those of ``LABELS`` with ``reporter="waypoint"``; the path and query are never labels,
  so cardinality is bounded by workloads, services and status codes. Unknown values are "unknown".
- ``registry`` is what the plumbing serves on :15020/metrics.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

disable_created_metrics()  # Istio-shaped series only, as the node agent's

REPORTER = "waypoint"
LABELS = (
    "reporter",
    "source_workload",
    "source_namespace",
    "source_principal",
    "destination_service",
    "destination_workload",
    "destination_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
)
RETRY_LABELS = ("reporter", "source_workload", "source_namespace", "destination_service")
TIMEOUT_LABELS = (*RETRY_LABELS, "timeout")
BUCKETS_MS = (0.5, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000)


class Flag:
    """``response_flags`` values (Envoy's); several are joined with "," as Envoy does."""

    NONE = "-"
    TIMEOUT = "UT"  # timeouts.request or timeouts.backendRequest expired
    RETRIES_EXHAUSTED = "URX"  # every allowed attempt failed
    OVERFLOW = "UO"  # the retry budget refused a retry
    UPSTREAM_FAILURE = "UF"  # no endpoint could be connected to (or none healthy)
    NO_ROUTE = "NR"  # no rule matched, or the rule has no backend to send to
    DENIED = "DENY"  # refused by L7 authorization
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"  # the client sent something that is not HTTP/1.1 we accept
    UPSTREAM_PROTOCOL_ERROR = "UPE"  # the upstream answered something that is not HTTP/1.1
    DOWNSTREAM_DISCONNECT = "DC"  # the client went away before the response was complete
    UPSTREAM_RESET = "UR"  # the upstream closed before the response was complete


class RequestRecord:
    """One request (see the module docstring); ``status`` 0 means no response reached the client."""

    __slots__ = (
        "started", "duration", "method", "authority", "path", "protocol", "status", "grpc_status", "retries",
        "upstream", "destination_service", "destination_workload", "destination_namespace", "route", "flags",
        "detail", "timeout", "source_workload", "source_namespace", "source_principal",
    )

    def __init__(self, *, started: float, source_workload: str, source_namespace: str, source_principal: str,
                 destination_service: str) -> None:
        self.started = started
        self.duration = 0.0
        self.method = ""
        self.authority = ""
        self.path = ""
        self.protocol = "http"  # "http" | "grpc"
        self.status = 0
        self.grpc_status = ""
        self.retries = 0
        self.upstream = ""  # ip:port of the endpoint that answered (or was tried last)
        self.destination_service = destination_service  # FQDN of the backend Service
        self.destination_workload = ""
        self.destination_namespace = ""
        self.route = ""  # namespace/name of the HTTPRoute, "" for the default rule
        self.flags: list[str] = []
        self.detail = ""
        self.timeout = ""  # "request" | "backend_request" when one expired
        self.source_workload = source_workload
        self.source_namespace = source_namespace
        self.source_principal = source_principal

    def flag(self, flag: str, detail: str = "") -> None:
        if flag not in self.flags:
            self.flags.append(flag)
        if detail and not self.detail:
            self.detail = detail

    @property
    def response_flags(self) -> str:
        return ",".join(self.flags) if self.flags else Flag.NONE


@dataclass(slots=True)
class _Children:
    requests: object
    duration: object


class RequestMetrics:
    """The waypoint's request metrics in their own registry (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("ambit_requests", "Requests the waypoint answered or gave up on", LABELS, registry=r)
        self.duration = Histogram("ambit_request_duration_milliseconds",
                                  "Time from the request's first byte to the response's last, milliseconds",
                                  LABELS, buckets=BUCKETS_MS, registry=r)
        self.retries = Counter("ambit_request_retries", "Retries the waypoint made (each one a new attempt)",
                               RETRY_LABELS, registry=r)
        self.timeouts = Counter("ambit_request_timeouts",
                                "Requests ended by timeouts.request or timeouts.backendRequest", TIMEOUT_LABELS,
                                registry=r)
        self._children: dict[tuple[str, ...], _Children] = {}
        self._log = logging.getLogger("ambit.access")

    def record(self, rec: RequestRecord) -> None:
        values = (
            REPORTER,
            rec.source_workload or "unknown",
            rec.source_namespace or "unknown",
            rec.source_principal or "unknown",
            rec.destination_service or "unknown",
            rec.destination_workload or "unknown",
            rec.destination_namespace or "unknown",
            rec.protocol,
            str(rec.status),
            rec.grpc_status or "-",
            rec.response_flags,
        )
        children = self._children.get(values)
        if children is None:
            children = self._children[values] = _Children(self.requests.labels(*values),
                                                          self.duration.labels(*values))
        children.requests.inc()  # type: ignore[attr-defined]
        children.duration.observe(rec.duration * 1000.0)  # type: ignore[attr-defined]
        short = (REPORTER, values[1], values[2], values[4])
        if rec.retries:
            self.retries.labels(*short).inc(rec.retries)
        if rec.timeout:
            self.timeouts.labels(*short, rec.timeout).inc()
        if self._log.isEnabledFor(logging.INFO):
            self._log.info("%s", access_line(rec))


def access_line(rec: RequestRecord) -> str:
    """The JSON access line of one request (keys as the node agent's connection line where they overlap).

    ``path`` is without the query string, which may carry secrets."""
    return json.dumps({
        "msg": "request",
        "reporter": REPORTER,
        "src_workload": f"{rec.source_namespace}/{rec.source_workload}" if rec.source_workload else "",
        "src_principal": rec.source_principal,
        "method": rec.method,
        "authority": rec.authority,
        "path": rec.path,
        "protocol": rec.protocol,
        "status": rec.status,
        **({"grpc_status": rec.grpc_status} if rec.grpc_status else {}),
        "duration_ms": round(rec.duration * 1000, 1),
        "retries": rec.retries,
        "upstream": rec.upstream,
        "dst_workload": f"{rec.destination_namespace}/{rec.destination_workload}" if rec.destination_workload else "",
        "dst_service": rec.destination_service,
        "route": rec.route,
        "flags": rec.response_flags,
        "detail": rec.detail or None,
    }, separators=(",", ":"))
