"""The benchmark's report: the waypoint beside nginx-http, as ratios of one run's medians.

Only the arithmetic and what the report prints are tested here; speed itself lives in ``bench/``
(``make bench``), never in a test.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bench import nginx, report, settings
from bench.topology import sum_counter


def _results(medians: dict[str, dict[str, float]], *, paths=settings.PATHS, memory=None, layout=None) -> report.Results:
    """Results whose every figure has three samples with the given median (and spread around it)."""
    samples = {p: {f: [] for f in report.FIGURES} for p in settings.PATHS}
    for path, figures in medians.items():
        for figure, value in figures.items():
            samples[path][figure] = [value * 1.1, value, value * 0.9]
    meta = {"date": "2026-12-08", "commit": "abc1234", "cpu": "test cpu", "cores": 2, "memory_gib": 8.0,
            "kernel": "6.18", "python": "3.11", "repetitions": 3, "iperf_seconds": 5, "wrk_seconds": 5,
            "wrk_connections": 32, "scale_pods": 0, "idle_connections": 0, "cni_samples": 0,
            "paths": list(paths), "layout": layout or {}}
    return report.Results(meta=meta, samples=samples, errors={}, memory=memory or {}, cni={})


def _target(r: report.Results, name: str) -> dict:
    return next(t for t in report.targets(r) if t["target"] == name)


RPS = "waypoint requests/s at c=32 ÷ nginx-http"
ADDED = "waypoint added p50 latency at c=1 over direct ÷ nginx-http's"


@pytest.mark.parametrize(("waypoint_rps", "nginx_rps", "ratio", "met"), [
    pytest.param(6000, 10000, 0.6, True, id="above-half"),
    pytest.param(5000, 10000, 0.5, True, id="exactly-half"),
    pytest.param(3000, 10000, 0.3, False, id="below-half"),
])
def test_waypoint_rps_target_is_the_ratio_to_nginx_http_in_the_same_run(waypoint_rps, nginx_rps, ratio, met):
    r = _results({"waypoint": {"c32_rps": waypoint_rps}, "nginx-http": {"c32_rps": nginx_rps}})
    t = _target(r, RPS)
    assert t["value"] == pytest.approx(ratio)
    assert t["met"] is met
    assert t["goal"] == "≥ 0.5 ×"


@pytest.mark.parametrize(("direct", "nginx_http", "waypoint", "ratio", "met"), [
    pytest.param(0.080, 0.120, 0.150, 70 / 40, True, id="waypoint-adds-less-than-twice"),
    pytest.param(0.25, 0.5, 0.75, 2.0, True, id="exactly-twice"),
    pytest.param(0.080, 0.100, 0.300, 11.0, False, id="waypoint-adds-11x"),
])
def test_waypoint_added_latency_is_measured_over_direct(direct, nginx_http, waypoint, ratio, met):
    r = _results({"direct": {"c1_p50_ms": direct}, "nginx-http": {"c1_p50_ms": nginx_http},
                  "waypoint": {"c1_p50_ms": waypoint}})
    assert report.added_p50(r, "waypoint") == pytest.approx(waypoint - direct)
    t = _target(r, ADDED)
    assert t["value"] == pytest.approx(ratio)
    assert t["met"] is met


@pytest.mark.parametrize("missing", ["direct", "nginx-http", "waypoint"])
def test_a_path_that_was_not_measured_leaves_the_targets_unjudged(missing):
    medians = {"direct": {"c1_p50_ms": 0.08}, "nginx-http": {"c1_p50_ms": 0.12, "c32_rps": 10000},
               "waypoint": {"c1_p50_ms": 0.2, "c32_rps": 4000}}
    del medians[missing]
    r = _results(medians)
    assert _target(r, ADDED)["met"] is None
    if missing != "direct":
        assert _target(r, RPS)["met"] is None
    assert r.to_json()["targets"] == report.targets(r)  # the JSON carries the same judgement


def test_the_report_shows_the_waypoint_beside_nginx_http_with_placement_and_memory():
    r = _results({"direct": {"c1_p50_ms": 0.080, "c32_rps": 40000},
                  "ambit": {"c1_p50_ms": 0.200, "c32_rps": 15000},
                  "nginx-http": {"c1_p50_ms": 0.120, "c1_p99_ms": 0.2, "c1_rps": 8000, "c32_rps": 20000,
                                 "c32_proxy_cpu_us": 20.0, "c32_proxy_cores": 0.4},
                  "waypoint": {"c1_p50_ms": 0.400, "c1_p99_ms": 0.9, "c1_rps": 2500, "c32_rps": 4000,
                               "c32_proxy_cpu_us": 240.0, "c32_proxy_cores": 0.96,
                               "c32_upstream_conns_per_1k": 180.0}},
                 memory={"proxy_idle_kb": {"waypoint": 102400, "nginx-http": 4096},
                         "proxy_peak_kb": {"waypoint": 122880, "nginx-http": 5120}},
                 layout={"waypoint_node": "node-2", "nginx_http_node": "node-2", "nginx_http_workers": 1})
    md = report.render(r)
    assert "## Waypoint (L7, HTTP/1.1, one hop) beside nginx-http" in md
    assert "one `ambit-waypoint proxy` process, on node-2" in md
    assert "nginx `http` reverse proxy in node-2's network namespace (1 worker" in md
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert rows["wrk c=32 requests/s (req/s)"].endswith("| 40.0k | 15.0k | 20.0k | 4.0k | 0.20× | 0.10× |")
    assert rows["added p50 latency at c=1 over direct (ms)"] == \
        "| added p50 latency at c=1 over direct (ms) | — | 0.120 | 0.040 | 0.320 | 8.00× | — |"
    assert rows["L7 proxy CPU per request at c=32 (CPU µs)"].startswith(
        "| L7 proxy CPU per request at c=32 (CPU µs) | — | — | 20.0 | 240 | 12.00× |")
    assert rows["connections opened to the server per 1000 requests at c=32 (conns)"].startswith(
        "| connections opened to the server per 1000 requests at c=32 (conns) | — | — | — | 180 | — |")
    assert rows["RSS idle (MB)"] == "| RSS idle (MB) | — | — | 4.00 | 100 | 25.00× | — |"
    assert f"| {RPS} | ≥ 0.5 × | 0.200 × | **no** |" in md
    assert f"| {ADDED} | ≤ 2 × | 8.00 × | **no** |" in md
    # the proxy-only figures stay out of the data-path table, which has no column for them
    data_path = md.split("## Memory and CNI")[0]
    assert "L7 proxy CPU" not in data_path


def test_a_run_without_the_l7_paths_has_no_waypoint_section_and_leaves_their_targets_unmeasured():
    r = _results({"direct": {"c1_p50_ms": 0.08}}, paths=("direct", "ambit", "nginx-mtls"))
    md = report.render(r)
    assert "## Waypoint" not in md
    assert f"| {RPS} | ≥ 0.5 × | — | not measured |" in md
    json.dumps(r.to_json())  # serialisable with the new figures


@pytest.mark.parametrize(("argv", "paths"), [
    pytest.param(["--paths", "waypoint,nginx-http,direct"], ("waypoint", "nginx-http", "direct"), id="l7-only"),
    pytest.param([], (), id="all"),
])
def test_paths_select_the_waypoint_paths(argv, paths):
    assert settings.parse(argv).paths == paths


def test_an_unknown_path_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit):
        settings.parse(["--paths", "waypoint,l7"])
    err = capsys.readouterr().err
    assert "unknown l7" in err and "nginx-http, waypoint" in err


@pytest.mark.parametrize(("labels", "total"), [
    pytest.param({}, 15.0, id="all-series"),
    pytest.param({"reporter": "waypoint", "response_code": "200"}, 12.0, id="one-label-set"),
    pytest.param({"response_code": "503"}, 3.0, id="other-code"),
    pytest.param({"reporter": "destination"}, 0.0, id="none-match"),
])
def test_sum_counter_adds_the_matching_series(labels, total):
    page = "\n".join([
        "# HELP ambit_requests_total requests",
        "# TYPE ambit_requests_total counter",
        'ambit_requests_total{reporter="waypoint",destination_service="server.bench-waypoint.svc.cluster.local",'
        'response_code="200"} 12.0',
        'ambit_requests_total{reporter="waypoint",destination_service="server.bench-waypoint.svc.cluster.local",'
        'response_code="503"} 3.0',
        'ambit_requests_total_other{reporter="waypoint",response_code="200"} 100.0',
    ])
    assert sum_counter(page, "ambit_requests_total", **labels) == total


def test_nginx_http_proxies_with_upstream_keepalive_and_nginx_accepts_the_config(tmp_path):
    conf = nginx.write_http_proxy(tmp_path, listen_ip="127.0.0.1", port=nginx.HTTP_PROXY_PORT,
                                  server_ip="10.0.0.2", server_port=8080)
    text = conf.read_text()
    for directive in ("worker_processes 1;", "keepalive 32;", "server 10.0.0.2:8080;", "proxy_pass http://server;",
                      "proxy_http_version 1.1;", 'proxy_set_header Connection "";', "listen 127.0.0.1:20080"):
        assert directive in text
    assert shutil.which("nginx"), "nginx is installed by `make deps` (APT_PACKAGES)"
    out = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
