"""The waypoint's HTTP/1.1 engine on a real loopback listener, real asyncio backends, real clients.

Each test starts the engine and its backends (``waypoint_harness.mesh``) and drives them with curl,
wrk or a raw socket; it asserts what a user sees: status codes, bodies, the split, how often a
backend was reached, metrics and access lines.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path

from waypoint.accrual import AccrualSettings
from waypoint.budget import BudgetSettings
from waypoint.http_proxy import HttpSettings
from waypoint_harness import SOURCE, codes, curl, mesh, run, samples

# ------------------------------------------------------------------- tests


def test_retries_turn_a_backend_failing_every_other_request_into_successes(caplog) -> None:
    async def main() -> None:
        async with mesh() as (wp, b):
            with caplog.at_level(logging.INFO, logger="ambit.access"):
                # every first attempt meets the 503 (the backend alternates): 100 retries, within the
                # default budget's 10/s reserve plus 20% of the requests
                got = await codes(wp.url("flaky", "/items?id=7"), 100)
            assert Counter(got)["200"] >= 99, Counter(got)
            assert b["flaky"].hits >= 199  # the 503s were there, the retries hid them
            lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ambit.access"]
            assert len(lines) == 100
            retried = [line for line in lines if line["retries"] == 1]
            assert len(retried) >= 99
            line = retried[0]
            assert {k: line[k] for k in ("method", "authority", "path", "status", "upstream", "dst_service", "route",
                                         "src_principal", "flags")} == {
                "method": "GET", "authority": f"127.0.0.1:{wp.ports['flaky']}", "path": "/items", "status": 200,
                "upstream": f"127.0.0.1:{b['flaky'].port}", "dst_service": "flaky.demo.svc.cluster.local",
                "route": "demo/flaky", "src_principal": SOURCE.source_principal, "flags": "-"}
            s = samples(wp.proxy)
            ok = [x for x in s["ambit_requests_total"] if x.labels["response_code"] == "200"]
            assert sum(x.value for x in ok) >= 99
            assert ok[0].labels == {
                "reporter": "waypoint", "source_workload": "client", "source_namespace": "demo",
                "source_principal": SOURCE.source_principal, "destination_service": "flaky.demo.svc.cluster.local",
                "destination_workload": "flaky", "destination_namespace": "demo", "request_protocol": "http",
                "response_code": "200", "grpc_response_status": "-", "response_flags": "-"}
            retries, = s["ambit_request_retries_total"]
            assert retries.value == sum(line["retries"] for line in lines)

    run(main())


def test_a_request_timeout_answers_504_within_a_second() -> None:
    async def main() -> None:
        async with mesh() as (wp, b):
            started = time.monotonic()
            rc, out, err = await curl("-o", "/dev/null", "-w", "%{http_code}", wp.url("slow"))
            elapsed = time.monotonic() - started
            assert (rc, out) == (0, "504"), err
            assert elapsed < 1.0, elapsed
            s = samples(wp.proxy)
            answered, = s["ambit_requests_total"]
            assert (answered.labels["response_code"], answered.labels["response_flags"]) == ("504", "UT")
            timeouts, = s["ambit_request_timeouts_total"]
            assert (timeouts.labels["timeout"], timeouts.value) == ("request", 1)

    run(main())


def test_weights_80_20_split_300_requests() -> None:
    async def main() -> None:
        async with mesh() as (wp, b):
            got = await codes(wp.url("split"), 300)
            assert Counter(got) == {"200": 300}
            share = b["v1"].hits / 300
            assert b["v1"].hits + b["v2"].hits == 300
            assert 0.72 <= share <= 0.88, share
            by_workload = {x.labels["destination_workload"]: x.value for x in samples(wp.proxy)["ambit_requests_total"]}
            assert by_workload == {"v1": b["v1"].hits, "v2": b["v2"].hits}

    run(main())


def test_the_retry_budget_bounds_what_an_always_failing_backend_receives() -> None:
    budget = BudgetSettings(retry_ratio=0.2, min_retries_per_second=1.0, ttl=10.0)  # 10 in reserve

    async def main() -> None:
        # accrual would stop sending to the backend after 7 failures; here the budget alone is measured
        async with mesh(HttpSettings(budget=budget, accrual=AccrualSettings(failures=10_000))) as (wp, b):
            got = await codes(wp.url("down"), 100)
            assert Counter(got) == {"503": 100}
            allowed_retries = 1.0 * 10.0 + 0.2 * 100
            assert 100 < b["down"].hits <= 100 + allowed_retries, b["down"].hits
            flags = Counter({x.labels["response_flags"]: x.value for x in samples(wp.proxy)["ambit_requests_total"]})
            assert flags["UO"] >= 60, flags  # the budget said no
            assert flags["URX"] + flags["UO"] == 100, flags

    run(main())


def test_failure_accrual_rests_a_failing_endpoint_and_503s_without_reaching_it() -> None:
    async def main() -> None:
        async with mesh() as (wp, b):
            got = await codes(wp.url("down"), 30)
            assert Counter(got) == {"503": 30}
            # 7 consecutive failures eject the one endpoint for ~1 s: the rest never reach it
            assert b["down"].hits == 7, b["down"].hits
            rc, out, _ = await curl(wp.url("down"))
            assert out == "no healthy upstream\n"
            await asyncio.sleep(1.6)  # the penalty (1 s + up to 50% jitter) is over: one probe goes through
            await codes(wp.url("down"), 3)
            assert b["down"].hits == 8, b["down"].hits

    run(main())


def test_large_bodies_both_ways_chunked_and_keep_alive(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()

    async def main() -> None:
        async with mesh() as (wp, b):
            out_file = tmp_path / "echoed"
            rc, out, err = await curl("--data-binary", f"@{payload}", "-o", str(out_file), "-D", "-",
                                      wp.url("echo", "/upload"))
            assert rc == 0, err
            assert out.startswith("HTTP/1.1 100 Continue") or out.startswith("HTTP/1.1 200"), out
            assert f"x-sha256: {digest}" in out.lower()
            assert hashlib.sha256(out_file.read_bytes()).hexdigest() == digest
            rc, out, err = await curl("--data-binary", f"@{payload}", "-H", "Transfer-Encoding: chunked",
                                      "-o", "/dev/null", "-D", "-", wp.url("echo", "/chunked"))
            assert rc == 0 and f"x-sha256: {digest}" in out.lower(), (out, err)
            size = 20 * 1024 * 1024
            rc, out, err = await curl("-w", "%{size_download} %{num_connects}\n",
                                      "-o", "/dev/null", wp.url("echo", f"/download?size={size}"),
                                      "-o", "/dev/null", wp.url("echo", "/again?size=5"))
            assert rc == 0, err
            assert out.split("\n")[:2] == [f"{size} 1", "5 0"]  # the second request reused the connection

    run(main())


def test_pipelined_and_http_1_0_requests() -> None:
    async def main() -> None:
        async with mesh() as (wp, b):
            reader, writer = await asyncio.open_connection("127.0.0.1", wp.ports["split"])
            writer.write(b"GET /a HTTP/1.1\r\nHost: split\r\n\r\nGET /b HTTP/1.1\r\nHost: split\r\n\r\n"
                         b"GET /c HTTP/1.0\r\n\r\n")
            data = await asyncio.wait_for(reader.read(-1), 10)  # the 1.0 request ends the connection
            writer.close()
            assert data.count(b"HTTP/1.1 200 OK") == 3, data
            assert b["v1"].hits + b["v2"].hits == 3
            reader, writer = await asyncio.open_connection("127.0.0.1", wp.ports["split"])
            writer.write(b"GET / HTTP/1.1\r\nHost: split\r\nX: " + b"a" * 70_000 + b"\r\n\r\n")
            data = await asyncio.wait_for(reader.read(-1), 10)
            writer.close()
            assert data.startswith(b"HTTP/1.1 431 "), data[:100]

    run(main())


def test_wrk_short_run_without_errors() -> None:
    tool = shutil.which("wrk")
    assert tool, "wrk is not installed (make deps installs it; these tests never skip)"

    async def main() -> None:
        async with mesh() as (wp, b):
            proc = await asyncio.create_subprocess_exec(tool, "-t1", "-c8", "-d1s", wp.url("split"),
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            text = out.decode()
            assert proc.returncode == 0, text + err.decode()
            assert "Non-2xx" not in text and "Socket errors" not in text, text
            total = int(text.split(" requests in ")[0].split()[-1])
            assert total > 100, text
            assert b["v1"].hits + b["v2"].hits >= total

    run(main())


def test_cancelling_and_client_disconnects_leave_no_connection_or_task_behind() -> None:
    """A request stuck on a silent backend is cut by cancelling the waypoint's connection task (its
    shutdown path); a client that goes away mid-download makes the waypoint drop the upstream."""

    async def main() -> None:
        closed = asyncio.Event()
        got_request = asyncio.Event()
        writers: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await reader.readuntil(b"\r\n\r\n")
            got_request.set()
            await reader.read()  # until the waypoint closes its side
            closed.set()
            writer.close()

        silent_server = await asyncio.start_server(silent, "127.0.0.1", 0)
        try:
            async with mesh() as (wp, b):
                wp.backends.add("silent", name="silent", port=silent_server.sockets[0].getsockname()[1])
                await wp.listen("silent")
                reader, writer = await asyncio.open_connection("127.0.0.1", wp.ports["silent"])
                writer.write(b"GET / HTTP/1.1\r\nHost: silent\r\n\r\n")
                await asyncio.wait_for(got_request.wait(), 10)
                task, = [t for t in wp.tasks if t.get_name() == "test-waypoint-silent"]
                task.cancel()
                await asyncio.wait({task}, timeout=5)
                assert task.cancelled()
                await asyncio.wait_for(closed.wait(), 5)  # the upstream was closed
                assert await asyncio.wait_for(reader.read(), 5) == b""  # and the client's connection
                writer.close()

                # a client that leaves in the middle of a 50 MB download
                reader, writer = await asyncio.open_connection("127.0.0.1", wp.ports["echo"])
                writer.write(b"GET /download?size=52428800 HTTP/1.1\r\nHost: echo\r\n\r\n")
                await reader.readexactly(1024 * 1024)
                writer.transport.abort()
                for _ in range(100):
                    if not [t for t in wp.tasks if t.get_name() == "test-waypoint-echo"]:
                        break
                    await asyncio.sleep(0.05)
                assert not [t for t in wp.tasks if t.get_name() == "test-waypoint-echo"]
                assert wp.proxy.pool.idle((("127.0.0.1", b["echo"].port))) == 0  # not pooled mid-body
                flags = {x.labels["response_flags"] for x in samples(wp.proxy)["ambit_requests_total"]
                         if x.labels["destination_workload"] == "echo"}
                assert flags == {"DC"}, flags
        finally:
            for w in writers:
                w.close()
            silent_server.close()
            await silent_server.wait_closed()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, leftover

    run(main())
