"""Results -> medians, ratios, the Markdown report and the JSON beside it (pure, no I/O but writing).

``Results`` is the raw record of one run (every repetition's sample per path and figure, memory
and CNI readings, errors); ``render`` turns it into the Markdown tables ``docs/benchmarks.md``
explains (the data path, memory and CNI, the waypoint beside nginx-http, the targets); ``targets``
holds the goals as ratios against the baselines of the same run; ``machine`` describes the machine
the figures belong to.
"""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.settings import PATHS

FIGURES = {
    # key: (label, unit, higher is better)
    "iperf1_gbps": ("iperf3 throughput, 1 stream", "Gb/s", True),
    "iperf4_gbps": ("iperf3 throughput, 4 streams", "Gb/s", True),
    "cpu_s_per_gb": ("relay CPU per GB moved (1 stream)", "CPU s/GB", False),
    "c1_p50_ms": ("wrk c=1 latency p50", "ms", False),
    "c1_p99_ms": ("wrk c=1 latency p99", "ms", False),
    "c1_rps": ("wrk c=1 requests/s", "req/s", True),
    "c32_rps": ("wrk c=32 requests/s", "req/s", True),
    "c32_p99_ms": ("wrk c=32 latency p99", "ms", False),
    "conn_rate": ("new connections/s (Connection: close, c=32)", "conn/s", True),
    "c32_relay_cpu_us": ("relay CPU per request at c=32", "CPU µs", False),
    "c32_proxy_cpu_us": ("L7 proxy CPU per request at c=32", "CPU µs", False),
    "c32_proxy_cores": ("L7 proxy CPU use at c=32", "cores", False),
    "c32_upstream_conns_per_1k": ("connections opened to the server per 1000 requests at c=32", "conns", False),
}
PROXY_FIGURES = ("c32_proxy_cpu_us", "c32_proxy_cores", "c32_upstream_conns_per_1k")
"""only the one-hop L7 proxies have them (the waypoint process; nginx-http): not in the data-path table"""
L7_PATHS = ("waypoint", "nginx-http")
L7_FIGURES = ("c1_p50_ms", "c1_p99_ms", "c1_rps", "c32_rps", "c32_p99_ms", "c32_relay_cpu_us", *PROXY_FIGURES)


@dataclass
class Results:
    meta: dict
    samples: dict  # path -> figure -> [value per repetition]
    errors: dict  # path -> [message]
    memory: dict
    cni: dict

    def median(self, path: str, figure: str) -> float | None:
        values = [v for v in self.samples.get(path, {}).get(figure, []) if v is not None]
        return statistics.median(values) if values else None

    def to_json(self) -> dict:
        medians = {p: {f: self.median(p, f) for f in FIGURES} for p in PATHS}
        return {"meta": self.meta, "medians": medians, "samples": self.samples, "errors": self.errors,
                "memory": self.memory, "cni": self.cni, "targets": targets(self)}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit in ("req/s", "conn/s"):
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def added_p50(r: Results, path: str) -> float | None:
    """Latency ``path`` adds at c=1: its p50 minus the p50 of ``direct`` (no proxy) in the same run."""
    p50, direct = r.median(path, "c1_p50_ms"), r.median("direct", "c1_p50_ms")
    return None if p50 is None or direct is None else p50 - direct


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def memory_figures(mem: dict) -> dict[str, float | None]:
    """MB/KB figures derived from the raw /proc readings (max over the two nodes where per node)."""
    out: dict[str, float | None] = {}
    idle = mem.get("agent_idle_kb") or {}
    out["agent_idle_mb"] = max(idle.values()) / 1024 if idle else None
    nginx_idle = mem.get("nginx_idle_kb") or {}
    out["nginx_idle_mb"] = max(nginx_idle.values()) / 1024 if nginx_idle else None
    scale = mem.get("scale") or {}
    per_pod = [(v["after_kb"] - v["before_kb"]) / v["pods"] for v in scale.values() if v.get("pods")]
    out["agent_kb_per_pod"] = max(per_pod) if per_pod else None
    for relay in ("ambit", "nginx-mtls"):
        conns = (mem.get("idle_connections") or {}).get(relay) or {}
        n = conns.get("count") or 0
        nodes = conns.get("nodes") or {}
        per_conn = [(v["after_kb"] - v["before_kb"]) / n for v in nodes.values()] if n else []
        out[f"{relay}_kb_per_conn"] = max(per_conn) if per_conn else None
        out[f"{relay}_with_conns_mb"] = max(v["after_kb"] for v in nodes.values()) / 1024 if nodes else None
    peak = mem.get("agent_peak_kb") or {}
    out["agent_peak_mb"] = max(peak.values()) / 1024 if peak else None
    after = mem.get("agent_after_load_kb") or {}
    out["agent_after_load_mb"] = max(after.values()) / 1024 if after else None
    before = mem.get("agent_before_load_kb") or {}
    out["agent_before_load_mb"] = max(before.values()) / 1024 if before else None
    reps = mem.get("agent_after_rep_kb") or []
    out["agent_growth"] = (max(reps[-1].values()) / max(reps[0].values())) if len(reps) >= 2 else None
    nginx_peak = mem.get("nginx_peak_kb") or {}
    out["nginx_peak_mb"] = max(nginx_peak.values()) / 1024 if nginx_peak else None
    for proxy in L7_PATHS:  # one process or one nginx (master + worker) each
        for when in ("idle", "before_load", "peak", "after_load"):
            kb = (mem.get(f"proxy_{when}_kb") or {}).get(proxy)
            out[f"{proxy}_{when}_mb"] = kb / 1024 if kb else None
    return out


def targets(r: Results) -> list[dict]:
    m = r.median
    mem = memory_figures(r.memory)
    added = {p: added_p50(r, p) for p in ("ambit", "nginx-mtls", *L7_PATHS)}
    cni_en, cni_not = r.cni.get("enrolled_ms") or [], r.cni.get("not_enrolled_ms") or []
    rows = [
        ("cross-node throughput (1 stream) ÷ nginx-mtls", ">=", 1.1,
         _ratio(m("ambit", "iperf1_gbps"), m("nginx-mtls", "iperf1_gbps")), "×"),
        ("requests/s at c=32 ÷ nginx-mtls", ">=", 1.0, _ratio(m("ambit", "c32_rps"), m("nginx-mtls", "c32_rps")), "×"),
        ("added p50 latency at c=1 over direct ÷ nginx-mtls's", "<=", 1.0,
         _ratio(added["ambit"], added["nginx-mtls"]), "×"),
        ("new connections/s ÷ nginx-mtls", ">=", 3.0, _ratio(m("ambit", "conn_rate"), m("nginx-mtls", "conn_rate")), "×"),
        ("same-node throughput (1 stream) ÷ direct same-node", ">=", 0.5,
         _ratio(m("ambit-same-node", "iperf1_gbps"), m("direct-same-node", "iperf1_gbps")), "×"),
        ("agent RSS idle", "<=", 40.0, mem["agent_idle_mb"], "MB"),
        ("agent RSS per enrolled pod", "<=", 0.2, None if mem["agent_kb_per_pod"] is None
         else mem["agent_kb_per_pod"] / 1024, "MB"),
        ("agent RSS bounded under load: RSS after the last repetition ÷ after the first", "<=", 1.1,
         mem["agent_growth"], "×"),
        ("CNI ADD p99, enrolled pods", "<=", 50.0, percentile(cni_en, 99), "ms"),
        ("CNI ADD p99, other pods", "<=", 10.0, percentile(cni_not, 99), "ms"),
        ("waypoint requests/s at c=32 ÷ nginx-http", ">=", 0.5,
         _ratio(m("waypoint", "c32_rps"), m("nginx-http", "c32_rps")), "×"),
        ("waypoint added p50 latency at c=1 over direct ÷ nginx-http's", "<=", 2.0,
         _ratio(added["waypoint"], added["nginx-http"]), "×"),
    ]
    out = []
    for name, op, goal, value, unit in rows:
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        out.append({"target": name, "goal": f"{'≥' if op == '>=' else '≤'} {goal:g} {unit}".strip(),
                    "value": value, "unit": unit, "met": met})
    return out


def render(r: Results) -> str:
    meta = r.meta
    m = r.median
    lines = [
        f"# Ambit benchmark, {meta['date']}, commit {meta['commit']}{' (with uncommitted changes)' if meta.get('dirty') else ''}",
        "",
        f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']:.0f} GiB, kernel {meta['kernel']}",
        f"- software: Python {meta['python']}, uvloop {meta.get('uvloop', '?')}, {meta.get('openssl', '?')}, "
        f"{meta.get('nginx', '?')}, {meta.get('iperf3', '?')}, {meta.get('wrk', '?')}",
        f"- run: {meta['repetitions']} interleaved repetitions, medians shown; iperf3 -t {meta['iperf_seconds']}, "
        f"wrk -d {meta['wrk_seconds']}s (c=1: 1 thread; c={meta['wrk_connections']}: 2 threads); "
        f"{meta['scale_pods']} enrolled idle pods, {meta['idle_connections']} idle connections, "
        f"{meta['cni_samples']} CNI ADDs per kind; total {meta.get('elapsed_s', 0) / 60:.1f} min",
        f"- other work on the machine: {meta.get('busy_before', 0):.0%} of CPU busy before the run, "
        f"{r.memory.get('others_cpu_share', 0):.0%} used by processes outside the rig during the load runs"
        + (" -- figures skewed, compare with care" if max(meta.get("busy_before", 0),
                                                          r.memory.get("others_cpu_share", 0)) > 0.05 else ""),
        "- what each figure means and how it is measured: docs/benchmarks.md",
        "",
        "## Data path (cross-node unless marked same-node)",
        "",
        "| figure | direct | nginx-mtls | ambit | ambit ÷ nginx-mtls | ambit ÷ direct | direct same-node "
        "| ambit same-node | same-node ambit ÷ direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, (label, unit, _) in FIGURES.items():
        if key in PROXY_FIGURES:
            continue
        v = {p: m(p, key) for p in PATHS}
        lines.append(
            f"| {label} ({unit}) | {_fmt(v['direct'], unit)} | {_fmt(v['nginx-mtls'], unit)} | {_fmt(v['ambit'], unit)} "
            f"| {_fmt_ratio(_ratio(v['ambit'], v['nginx-mtls']))} | {_fmt_ratio(_ratio(v['ambit'], v['direct']))} "
            f"| {_fmt(v['direct-same-node'], unit)} | {_fmt(v['ambit-same-node'], unit)} "
            f"| {_fmt_ratio(_ratio(v['ambit-same-node'], v['direct-same-node']))} |")
    mem = memory_figures(r.memory)
    cni_en, cni_not = r.cni.get("enrolled_ms") or [], r.cni.get("not_enrolled_ms") or []
    n_conn = (r.memory.get("idle_connections") or {}).get("ambit", {}).get("count", 0)
    lines += [
        "",
        "## Memory and CNI (per node: the larger of the two nodes)",
        "",
        "| figure | ambit (node agent) | nginx-mtls (nginx per node) | ambit ÷ nginx-mtls |",
        "|---|---:|---:|---:|",
        f"| RSS idle (MB) | {_fmt(mem['agent_idle_mb'])} | {_fmt(mem['nginx_idle_mb'])} "
        f"| {_fmt_ratio(_ratio(mem['agent_idle_mb'], mem['nginx_idle_mb']))} |",
        f"| RSS added per enrolled pod (KB) | {_fmt(mem['agent_kb_per_pod'])} | — | — |",
        f"| RSS with {n_conn} idle connections (MB) | {_fmt(mem['ambit_with_conns_mb'])} "
        f"| {_fmt(mem['nginx-mtls_with_conns_mb'])} | {_fmt_ratio(_ratio(mem['ambit_with_conns_mb'], mem['nginx-mtls_with_conns_mb']))} |",
        f"| RSS added per idle connection (KB) | {_fmt(mem['ambit_kb_per_conn'])} | {_fmt(mem['nginx-mtls_kb_per_conn'])} "
        f"| {_fmt_ratio(_ratio(mem['ambit_kb_per_conn'], mem['nginx-mtls_kb_per_conn']))} |",
        f"| RSS before the load runs (MB) | {_fmt(mem['agent_before_load_mb'])} | — | — |",
        f"| peak RSS during the load runs (MB) | {_fmt(mem['agent_peak_mb'])} | {_fmt(mem['nginx_peak_mb'])} "
        f"| {_fmt_ratio(_ratio(mem['agent_peak_mb'], mem['nginx_peak_mb']))} |",
        f"| RSS after all load runs (MB) | {_fmt(mem['agent_after_load_mb'])} | — | — |",
        f"| CNI ADD p50 / p99, enrolled pods (ms) | {_fmt(percentile(cni_en, 50))} / {_fmt(percentile(cni_en, 99))} | — | — |",
        f"| CNI ADD p50 / p99, other pods (ms) | {_fmt(percentile(cni_not, 50))} / {_fmt(percentile(cni_not, 99))} | — | — |",
    ]
    if any(p in meta.get("paths", PATHS) for p in L7_PATHS):
        lines += render_l7(r)
    lines += [
        "",
        "## Targets",
        "",
        "| target | goal | measured | met |",
        "|---|---|---:|---|",
    ]
    for t in targets(r):
        value = "—" if t["value"] is None else f"{_fmt(t['value'])} {t['unit']}"
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['goal']} | {value} | {met} |")
    problems = [(p, e) for p, errs in r.errors.items() for e in errs]
    if problems:
        lines += ["", "## Errors during the run", ""]
        lines += [f"- {p}: {e}" for p, e in problems[:40]]
        if len(problems) > 40:
            lines.append(f"- … and {len(problems) - 40} more (see the JSON file)")
    return "\n".join(lines) + "\n"


def render_l7(r: Results) -> list[str]:
    """The waypoint beside nginx-http: HTTP/1.1 through one L7 proxy hop, and what the proxy costs."""
    m, mem, layout = r.median, memory_figures(r.memory), r.meta.get("layout") or {}
    wp_node, nh_node = layout.get("waypoint_node", "?"), layout.get("nginx_http_node", "?")
    lines = [
        "",
        "## Waypoint (L7, HTTP/1.1, one hop) beside nginx-http",
        "",
        f"- waypoint: bench-waypoint/client (node-1) -> its agent -> mTLS -> the waypoint (one `ambit-waypoint "
        f"proxy` process, on {wp_node}) -> mTLS -> the server's agent -> bench-waypoint/server (node-2), "
        "addressed by the Service's ClusterIP",
        f"- nginx-http: bench-direct/client (node-1) -> nginx `http` reverse proxy in {nh_node}'s network "
        f"namespace ({layout.get('nginx_http_workers', '?')} worker, upstream keepalive 32, HTTP/1.1 upstream) "
        "-> bench-direct/server (node-2), plaintext",
        "- relay CPU: every process on the path (waypoint path: both agents and the waypoint); L7 proxy CPU: "
        "the waypoint process alone, nginx-http's master and worker",
        "- connections opened to the server: the server's agent's count of new tunnels (each a TLS handshake on "
        "both ends); the waypoint keeps idle upstream connections alive, nginx-http keeps 32",
        "- ambit (L4): the mesh without a waypoint (agent to agent, mTLS; bench-mesh), for what the waypoint hop "
        "adds on top of it",
        "",
        "| figure | direct | ambit (L4) | nginx-http | waypoint | waypoint ÷ nginx-http | waypoint ÷ direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in L7_FIGURES:
        label, unit, _ = FIGURES[key]
        v = {p: m(p, key) for p in ("direct", "ambit", *L7_PATHS)}
        lines.append(f"| {label} ({unit}) | {_fmt(v['direct'], unit)} | {_fmt(v['ambit'], unit)} "
                     f"| {_fmt(v['nginx-http'], unit)} | {_fmt(v['waypoint'], unit)} "
                     f"| {_fmt_ratio(_ratio(v['waypoint'], v['nginx-http']))} "
                     f"| {_fmt_ratio(_ratio(v['waypoint'], v['direct']))} |")
    added = {p: added_p50(r, p) for p in ("ambit", *L7_PATHS)}
    lines.append(f"| added p50 latency at c=1 over direct (ms) | — | {_fmt(added['ambit'])} "
                 f"| {_fmt(added['nginx-http'])} | {_fmt(added['waypoint'])} "
                 f"| {_fmt_ratio(_ratio(added['waypoint'], added['nginx-http']))} | — |")
    for when, label in (("idle", "RSS idle"), ("peak", "peak RSS during the load runs"),
                        ("after_load", "RSS after all load runs")):
        wp, nh = mem[f"waypoint_{when}_mb"], mem[f"nginx-http_{when}_mb"]
        lines.append(f"| {label} (MB) | — | — | {_fmt(nh)} | {_fmt(wp)} | {_fmt_ratio(_ratio(wp, nh))} | — |")
    return lines


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def machine() -> dict:
    import ssl

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal")).split()[1])
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_kb / 1024 / 1024, "kernel": platform.release(),
            "python": platform.python_version(), "uvloop": uv, "openssl": ssl.OPENSSL_VERSION,
            "nginx": _cmd(["nginx", "-v"]).replace("nginx version: ", ""), "iperf3": _cmd(["iperf3", "-v"]),
            "wrk": _cmd(["wrk", "-v"]).split(" Copyright")[0]}


def write(r: Results, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{r.meta['date']}-{r.meta['commit']}"
    md, js = directory / f"{stem}.md", directory / f"{stem}.json"
    md.write_text(render(r))
    js.write_text(json.dumps(r.to_json(), indent=1, sort_keys=True) + "\n")
    return md, js
