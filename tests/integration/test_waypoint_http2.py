"""HTTP/2 with prior knowledge through the waypoint: curl to HTTP/1.1 backends, and a gRPC unary call
from grpcio's client to grpcio's server (h2c upstream, ``appProtocol: grpc``)."""
from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events

from waypoint_harness import curl, mesh, run, samples


def test_curl_http2_prior_knowledge_to_http1_backends(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()

    async def main() -> None:
        async with mesh() as (wp, b):
            rc, out, err = await curl("--http2-prior-knowledge", "-w", " %{http_version} %{http_code}", wp.url("split"))
            assert rc == 0, err
            assert out in ("v1\n 2 200", "v2\n 2 200"), out
            # many streams at once on two connections (curl 7.88 cannot reuse an h2c connection: h2load)
            tool = shutil.which("h2load")
            assert tool, "h2load is not installed (make deps installs nghttp2-client; these tests never skip)"
            proc = await asyncio.create_subprocess_exec(tool, "-n", "200", "-c", "2", "-m", "10", wp.url("split"),
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            report = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
            assert proc.returncode == 0, report
            assert "requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed, 0 errored" in report, report
            assert "status codes: 200 2xx" in report, report
            assert b["v1"].hits + b["v2"].hits == 201
            share = b["v1"].hits / 201
            assert 0.7 <= share <= 0.9, share
            # a body bigger than the HTTP/2 windows, both ways: flow control has to work
            echoed = tmp_path / "echoed"
            rc, out, err = await curl("--http2-prior-knowledge", "--data-binary", f"@{payload}", "-D", "-",
                                      "-o", str(echoed), wp.url("echo", "/upload"))
            assert rc == 0, err
            assert out.startswith("HTTP/2 200"), out
            assert f"x-sha256: {digest}" in out
            assert hashlib.sha256(echoed.read_bytes()).hexdigest() == digest
            size = 10 * 1024 * 1024
            rc, out, err = await curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{size_download}",
                                      wp.url("echo", f"/download?size={size}"))
            assert (rc, out) == (0, str(size)), err
            rc, out, err = await curl("--http2-prior-knowledge", "-w", "%{http_code}", "-o", "/dev/null",
                                      wp.url("slow"))
            assert (rc, out) == (0, "504"), err  # timeouts.request holds for HTTP/2 clients too

    run(main())


class Echo(grpc.GenericRpcHandler):
    """``/demo.Echo/Say`` returns its request; a request of ``b"fail"`` ends UNAVAILABLE."""

    def __init__(self) -> None:
        self.calls = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != "/demo.Echo/Say":
            return None

        def say(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls += 1
            if request == b"fail":
                context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
            return b"echo: " + request

        return grpc.unary_unary_rpc_method_handler(say)


def test_grpc_unary_calls_through_the_waypoint() -> None:
    async def main() -> None:
        echo = Echo()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((echo,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        channel: grpc.Channel | None = None
        try:
            async with mesh() as (wp, _):
                assert wp.backends is not None
                wp.backends.add("greeter", name="greeter", port=port, app_protocol="grpc")
                listen = await wp.listen("greeter")
                channel = grpc.insecure_channel(f"127.0.0.1:{listen}")
                say = channel.unary_unary("/demo.Echo/Say")
                answers = [await asyncio.to_thread(say, f"hi {i}".encode(), timeout=10) for i in range(5)]
                assert answers == [f"echo: hi {i}".encode() for i in range(5)]
                try:
                    await asyncio.to_thread(say, b"fail", timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    assert exc.details() == "asked to fail"
                else:
                    raise AssertionError("the failing call succeeded")
                assert echo.calls == 6
                series = {(x.labels["request_protocol"], x.labels["response_code"], x.labels["grpc_response_status"]):
                          x.value for x in samples(wp.proxy)["ambit_requests_total"]
                          if x.labels["destination_service"] == "greeter.demo.svc.cluster.local"}
                assert series == {("grpc", "200", "0"): 5, ("grpc", "200", "14"): 1}
                channel.close()
                channel = None
        finally:
            if channel is not None:
                channel.close()
            server.stop(grace=None).wait(5)

    run(main())


def test_streams_are_independent_and_a_reset_stream_is_dropped() -> None:
    """One stream waiting on its unfinished upload does not hold up another; the client resetting it
    ends that request (flag DC) and leaves the connection serving."""
    async def main() -> None:
        async with mesh() as (wp, b):
            reader, writer = await asyncio.open_connection("127.0.0.1", wp.ports["echo"])
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            conn.initiate_connection()

            def request(sid: int, method: bytes, path: bytes, *, end: bool) -> None:
                conn.send_headers(sid, [(b":method", method), (b":scheme", b"http"), (b":authority", b"echo"),
                                        (b":path", path)], end_stream=end)

            async def until(predicate) -> list:
                seen: list = []
                while not predicate(seen):
                    writer.write(conn.data_to_send())
                    data = await asyncio.wait_for(reader.read(65536), 10)
                    assert data, "the waypoint closed the connection"
                    seen += conn.receive_data(data)
                writer.write(conn.data_to_send())
                return seen

            try:
                request(1, b"POST", b"/upload", end=False)
                conn.send_data(1, b"part of a body that never ends")
                request(3, b"GET", b"/download?size=5", end=True)
                events = await until(lambda ev: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 3
                                                    for e in ev))
                body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == 3)
                assert body == b"zzzzz"
                assert not any(getattr(e, "stream_id", None) == 1 for e in events
                               if isinstance(e, h2.events.StreamEnded))
                conn.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
                request(5, b"GET", b"/download?size=3", end=True)
                await until(lambda ev: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 5 for e in ev))
                flags = Counter(x.labels["response_flags"] for x in samples(wp.proxy)["ambit_requests_total"]
                                for _ in range(int(x.value)))
                assert flags == {"-": 2, "DC": 1}, flags
            finally:
                writer.close()
            for _ in range(100):  # the client is gone: so is the connection's task
                if not [t for t in wp.tasks if t.get_name() == "test-waypoint-echo"]:
                    break
                await asyncio.sleep(0.05)
            assert not [t for t in wp.tasks if t.get_name() == "test-waypoint-echo"]

    run(main())
