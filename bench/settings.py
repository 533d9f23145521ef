"""The benchmark's one settings value: durations, repetitions and sizes, read from flags in one place."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

PATHS = ("direct", "nginx-mtls", "ambit", "direct-same-node", "ambit-same-node", "nginx-http", "waypoint")
"""``direct``/``ambit``/``nginx-mtls`` are cross-node (client on node-1, server on node-2);
``waypoint`` (L7, through the namespace's waypoint, by Service ClusterIP) and ``nginx-http`` (its C
peer: one nginx ``http`` reverse proxy hop) are HTTP-only and measured with wrk alone."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchSettings:
    sandbox: str = "bench"
    """name of the sandbox the rig builds (never the demo's ``ambit``); every namespace/link starts with it"""
    index: int = 2
    """sandbox address block (0 is the demo's; the tests use 4-8)"""
    repetitions: int = 3
    """interleaved repetitions; the report shows medians"""
    iperf_seconds: int = 5
    """length of each iperf3 run (-t)"""
    wrk_seconds: int = 5
    """length of each wrk run (-d)"""
    wrk_connections: int = 32
    """wrk -c for the loaded request-rate and the connection-rate runs"""
    scale_pods: int = 100
    """tiny enrolled pods created to measure the agent's memory per pod"""
    idle_connections: int = 1000
    """idle connections held open through the relays to measure memory per connection"""
    cni_samples: int = 100
    """ambit-cni ADD invocations timed per kind (enrolled, not enrolled)"""
    paths: tuple[str, ...] = ()
    """measure only these paths (empty: all); ratios need their reference paths too"""
    keep: bool = False
    """leave the sandbox up afterwards (for debugging the rig); the default removes everything"""
    results_dir: str = "bench/results"
    """where the Markdown and JSON results go"""

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 9:
            raise ValueError(f"--index {self.index} must be 0-9 (the sandbox address block)")
        if self.index == 0 or self.sandbox == "ambit":
            raise ValueError("the benchmark must not use the demo sandbox (name 'ambit', index 0); "
                             "pick another --sandbox/--index")
        for name in ("repetitions", "iperf_seconds", "wrk_seconds", "wrk_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        unknown = [p for p in self.paths if p not in PATHS]
        if unknown:
            raise ValueError(f"--paths: unknown {', '.join(unknown)}; pick from {', '.join(PATHS)}")


def parse(argv: list[str] | None = None) -> BenchSettings:
    p = argparse.ArgumentParser(prog="python -m bench", description="Ambit's benchmark rig (see docs/benchmarks.md)")
    d = BenchSettings()
    p.add_argument("--sandbox", default=os.environ.get("AMBIT_BENCH_SANDBOX", d.sandbox),
                   help=f"sandbox name (default {d.sandbox}, env AMBIT_BENCH_SANDBOX)")
    p.add_argument("--index", type=int, default=int(os.environ.get("AMBIT_BENCH_INDEX", d.index)),
                   help=f"sandbox index 1-9 (default {d.index}, env AMBIT_BENCH_INDEX)")
    for name in ("repetitions", "iperf_seconds", "wrk_seconds", "wrk_connections", "scale_pods",
                 "idle_connections", "cni_samples"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"default {getattr(d, name)}")
    p.add_argument("--paths", default="", help="comma-separated subset of: " + ", ".join(PATHS))
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 repetition, 2 s runs, 10 pods, 100 connections, 20 CNI ADDs "
                        "(explicit flags still win; results not comparable)")
    p.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    p.add_argument("--results-dir", default=d.results_dir)
    a = p.parse_args(argv)
    kw: dict = dict(sandbox=a.sandbox, index=a.index, keep=a.keep, results_dir=a.results_dir)
    if a.quick:
        kw.update(repetitions=1, iperf_seconds=2, wrk_seconds=2, scale_pods=10, idle_connections=100,
                  cni_samples=20)
    for name in ("repetitions", "iperf_seconds", "wrk_seconds", "wrk_connections", "scale_pods",
                 "idle_connections", "cni_samples"):
        if getattr(a, name) is not None:
            kw[name] = getattr(a, name)
    if a.paths:
        kw["paths"] = tuple(x.strip() for x in a.paths.split(",") if x.strip())
    try:
        return BenchSettings(**kw)
    except ValueError as exc:
        p.error(str(exc))
        raise  # not reached
