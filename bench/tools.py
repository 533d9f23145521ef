"""The load generators, run inside the client pod's network namespace, and their parsed figures.

- ``iperf3``: bulk throughput (receiver's bits/s, bytes moved), 1 or more streams;
- ``wrk``: HTTP request rate and latency percentiles (``wrk_report.lua`` prints them as JSON);
  with ``close=True`` every request is a new connection (``Connection: close``): new conns/s;
- ``http_ok``: one request with curl, to check a path answers before it is measured.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.procs import Children, ToolError

WRK_SCRIPT = Path(__file__).with_name("wrk_report.lua")


def iperf3(children: Children, *, netns: str, host: str, port: int, seconds: int, streams: int) -> dict:
    argv = ["iperf3", "-J", "-c", host, "-p", str(port), "-t", str(seconds), "-P", str(streams)]
    rc, out, err = children.run(argv, netns=netns, timeout=seconds + 30)
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        raise ToolError(f"iperf3 to {host}:{port} printed no JSON (exit {rc}): {err.strip() or out[:200]}") from None
    if data.get("error"):
        raise ToolError(f"iperf3 to {host}:{port}: {data['error']}")
    received = data["end"]["sum_received"]
    return {"gbps": received["bits_per_second"] / 1e9, "bytes": received["bytes"],
            "retransmits": data["end"].get("sum_sent", {}).get("retransmits", 0)}


def wrk(children: Children, *, netns: str, url: str, connections: int, seconds: int, close: bool = False) -> dict:
    threads = 1 if connections == 1 else 2
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT)]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    rc, out, err = children.run(argv, netns=netns, timeout=seconds + 30)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCHJSON ")), None)
    if rc != 0 or line is None:
        raise ToolError(f"wrk against {url} failed (exit {rc}): {err.strip() or out[-300:]}")
    data = json.loads(line.split(" ", 1)[1])
    errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    if data["requests"] == 0:
        raise ToolError(f"wrk against {url} completed no request ({errors} errors)")
    return {"rps": data["requests"] / (data["duration_us"] / 1e6), "seconds": data["duration_us"] / 1e6,
            "p50_ms": data["p50_us"] / 1000,
            "p99_ms": data["p99_us"] / 1000, "errors": errors, "requests": data["requests"]}


def http_ok(children: Children, *, netns: str, url: str, timeout: float = 3.0) -> str | None:
    """None if ``url`` answers 200 with ``ok``, else why not."""
    rc, out, err = children.run(["curl", "-sS", "-m", str(timeout), "-o", "-", "-w", " %{http_code}", url],
                                netns=netns, timeout=timeout + 5)
    if rc == 0 and out.strip().endswith("200") and out.startswith("ok"):
        return None
    return (err.strip() or out.strip() or f"curl exit {rc}")[:200]
