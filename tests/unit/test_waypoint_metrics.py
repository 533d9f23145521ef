"""Request metrics and the access line (waypoint.metrics): label sets, promtool's lint, one JSON line."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from waypoint.metrics import BUCKETS_MS, LABELS, Flag, RequestMetrics, RequestRecord, access_line


def record(*, status: int = 200, flags: tuple[str, ...] = (), retries: int = 0, timeout: str = "",
           duration: float = 0.012, grpc: str = "") -> RequestRecord:
    rec = RequestRecord(started=0.0, source_workload="client", source_namespace="demo",
                        source_principal="spiffe://cluster.local/ns/demo/sa/client",
                        destination_service="web.demo.svc.cluster.local")
    rec.method, rec.authority, rec.path = "GET", "web.demo:80", "/api/items"
    rec.status, rec.duration, rec.retries, rec.timeout = status, duration, retries, timeout
    rec.destination_workload, rec.destination_namespace, rec.upstream = "web-v1", "demo", "10.0.0.7:8080"
    rec.route = "demo/web-split"
    if grpc:
        rec.protocol, rec.grpc_status = "grpc", grpc
    for f in flags:
        rec.flag(f, "why")
    return rec


def samples(metrics: RequestMetrics) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_labels_of_every_series() -> None:
    metrics = RequestMetrics()
    metrics.record(record())
    metrics.record(record())
    metrics.record(record(status=504, flags=(Flag.TIMEOUT,), timeout="request", duration=0.3))
    metrics.record(record(status=503, flags=(Flag.UPSTREAM_FAILURE, Flag.RETRIES_EXHAUSTED), retries=2))
    metrics.record(record(status=200, grpc="14"))
    got = samples(metrics)
    requests = {(s.labels["response_code"], s.labels["response_flags"], s.labels["request_protocol"],
                 s.labels["grpc_response_status"]): s.value for s in got["ambit_requests_total"]}
    assert requests == {("200", "-", "http", "-"): 2, ("504", "UT", "http", "-"): 1,
                        ("503", "UF,URX", "http", "-"): 1, ("200", "-", "grpc", "14"): 1}
    first = got["ambit_requests_total"][0].labels
    assert set(first) == set(LABELS)
    assert {k: first[k] for k in LABELS if k not in ("response_code", "response_flags", "request_protocol",
                                                      "grpc_response_status")} == {
        "reporter": "waypoint", "source_workload": "client", "source_namespace": "demo",
        "source_principal": "spiffe://cluster.local/ns/demo/sa/client",
        "destination_service": "web.demo.svc.cluster.local", "destination_workload": "web-v1",
        "destination_namespace": "demo"}
    assert not any("path" in k or "query" in k for k in first)
    buckets = [s for s in got["ambit_request_duration_milliseconds_bucket"]
               if s.labels["response_code"] == "200" and s.labels["request_protocol"] == "http"]
    assert [float(s.labels["le"]) for s in buckets][:-1] == [float(b) for b in BUCKETS_MS]
    assert {float(s.labels["le"]): s.value for s in buckets}[15.0] == 2  # 12 ms twice
    assert {float(s.labels["le"]): s.value for s in buckets}[10.0] == 0
    retries, = got["ambit_request_retries_total"]
    assert (retries.labels, retries.value) == ({"reporter": "waypoint", "source_workload": "client",
                                                "source_namespace": "demo",
                                                "destination_service": "web.demo.svc.cluster.local"}, 2)
    timeouts, = got["ambit_request_timeouts_total"]
    assert timeouts.labels["timeout"] == "request" and timeouts.value == 1


def test_unknown_identities_are_labelled_unknown() -> None:
    metrics = RequestMetrics()
    rec = RequestRecord(started=0.0, source_workload="", source_namespace="", source_principal="",
                        destination_service="web.demo.svc.cluster.local")
    rec.flag(Flag.NO_ROUTE)
    rec.status = 404
    metrics.record(rec)
    s, = samples(metrics)["ambit_requests_total"]
    assert s.labels["source_workload"] == s.labels["destination_workload"] == "unknown"
    assert s.labels["response_flags"] == "NR"


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus (make deps installs it)"
    metrics = RequestMetrics()
    metrics.record(record())
    metrics.record(record(status=503, flags=(Flag.RETRIES_EXHAUSTED,), retries=3, timeout="backend_request"))
    done = subprocess.run([promtool, "check", "metrics"], input=generate_latest(metrics.registry),
                          capture_output=True, timeout=60)
    output = (done.stdout + done.stderr).decode()
    # The one lint finding is deliberate: the histogram keeps Istio's name (and unit) that dashboards
    # and ``ambit stat`` query. Exit 3 is "lint problems"; a parse error would be 1.
    deliberate = 'ambit_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"'
    assert [line for line in output.splitlines() if line.strip()] == [deliberate], output
    assert done.returncode == 3, output


def test_one_access_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    metrics = RequestMetrics()
    with caplog.at_level(logging.INFO, logger="ambit.access"):
        metrics.record(record(status=503, flags=(Flag.OVERFLOW,), retries=1))
    line, = [r.getMessage() for r in caplog.records if r.name == "ambit.access"]
    entry = json.loads(line)
    assert entry == {
        "msg": "request", "reporter": "waypoint", "src_workload": "demo/client",
        "src_principal": "spiffe://cluster.local/ns/demo/sa/client", "method": "GET", "authority": "web.demo:80",
        "path": "/api/items", "protocol": "http", "status": 503, "duration_ms": 12.0, "retries": 1,
        "upstream": "10.0.0.7:8080", "dst_workload": "demo/web-v1", "dst_service": "web.demo.svc.cluster.local",
        "route": "demo/web-split", "flags": "UO", "detail": "why"}
    assert json.loads(access_line(record(grpc="0")))["grpc_status"] == "0"
