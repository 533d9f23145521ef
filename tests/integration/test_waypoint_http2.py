"""HTTP/2 with prior knowledge through the waypoint: curl to HTTP/1.1-only backends (aiohttp), grpcio's
unary and streaming calls to grpcio's server (h2c upstream, ``appProtocol: grpc``), retries of gRPC
UNAVAILABLE and of streams an h2c server refuses, and curl HTTP/1.1 to an h2c-only server."""
from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import shutil
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from waypoint_harness import curl, mesh, route, run, samples


def test_curl_http2_prior_knowledge_to_http1_backends(tmp_path: Path) -> None:
    """curl --http2-prior-knowledge to aiohttp backends, whose server speaks HTTP/1.1 only."""
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


_BIG = 4 * 1024 * 1024  # gRPC's default message limit; both ends allow a little more below
_GRPC_OPTIONS = [("grpc.max_receive_message_length", 8 * 1024 * 1024),
                 ("grpc.max_send_message_length", 8 * 1024 * 1024)]


class Streams(grpc.GenericRpcHandler):
    """``/demo.Stream/Count`` answers N messages (``N`` in the request), then one of ``_BIG`` bytes;
    ``Sum`` answers the count and SHA-256 of what it received; ``Echo`` answers each message as it comes."""

    def __init__(self, big: bytes) -> None:
        self.big = big

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        def count(request: bytes, context: grpc.ServicerContext):
            for i in range(int(request)):
                yield b"%d" % i
            yield self.big

        def total(requests, context: grpc.ServicerContext) -> bytes:
            digest, n = hashlib.sha256(), 0
            for message in requests:
                digest.update(message)
                n += 1
            return b"%d %s" % (n, digest.hexdigest().encode())

        def echo(requests, context: grpc.ServicerContext):
            yield from requests

        return {"/demo.Stream/Count": grpc.unary_stream_rpc_method_handler(count),
                "/demo.Stream/Sum": grpc.stream_unary_rpc_method_handler(total),
                "/demo.Stream/Echo": grpc.stream_stream_rpc_method_handler(echo)}.get(details.method)


def _grpc_server(*handlers: grpc.GenericRpcHandler) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_GRPC_OPTIONS)
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_grpc_streaming_calls_through_the_waypoint() -> None:
    """Server-, client- and bidirectional streaming: 2,000 messages and one of 4 MiB each way, in order,
    through h2 downstream and h2c upstream; a ping-pong shows each answer arrives before the next
    request is sent (nothing waits for the end of the stream)."""
    big = os.urandom(_BIG)
    numbers = [b"%d" % i for i in range(2000)]

    async def main() -> None:
        server, port = _grpc_server(Streams(big))
        try:
            async with mesh() as (wp, _):
                assert wp.backends is not None
                wp.backends.add("streams", name="streams", port=port, app_protocol="grpc")
                listen = await wp.listen("streams")
                # closed before the mesh stops, also when an assertion fails (its connection would hold the listener)
                with grpc.insecure_channel(f"127.0.0.1:{listen}", options=_GRPC_OPTIONS) as channel:
                    await _streaming_calls(channel, big, numbers)
                series = {(x.labels["request_protocol"], x.labels["response_code"], x.labels["grpc_response_status"],
                           x.labels["response_flags"]): x.value for x in samples(wp.proxy)["ambit_requests_total"]
                          if x.labels["destination_service"] == "streams.demo.svc.cluster.local"}
                assert series == {("grpc", "200", "0", "-"): 4}
        finally:
            server.stop(grace=None).wait(5)

    run(main())


async def _streaming_calls(channel: grpc.Channel, big: bytes, numbers: list[bytes]) -> None:
    count = channel.unary_stream("/demo.Stream/Count")
    total = channel.stream_unary("/demo.Stream/Sum")
    echo = channel.stream_stream("/demo.Stream/Echo")

    got = await asyncio.to_thread(lambda: list(count(b"2000", timeout=30)))
    assert got[:-1] == numbers and got[-1] == big

    answer = await asyncio.to_thread(total, iter([*numbers, big]), timeout=30)
    digest = hashlib.sha256(b"".join([*numbers, big])).hexdigest()
    assert answer == f"2001 {digest}".encode()

    got = await asyncio.to_thread(lambda: list(echo(iter([*numbers, big]), timeout=30)))
    assert got[:-1] == numbers and got[-1] == big

    def ping_pong() -> list[bytes]:
        outbox: queue.Queue[bytes | None] = queue.Queue()
        call = echo(iter(outbox.get, None), timeout=30)
        answers = []
        for i in range(20):
            outbox.put(b"ping %d" % i)
            answers.append(next(call))  # blocks until this one came back
        outbox.put(None)
        assert list(call) == []
        return answers

    assert await asyncio.to_thread(ping_pong) == [b"ping %d" % i for i in range(20)]


class Flaky(grpc.GenericRpcHandler):
    """``/demo.Echo/Say`` answers UNAVAILABLE on every other call (the 1st, 3rd, ...); ``b"fail"`` always."""

    def __init__(self) -> None:
        self.calls = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        def say(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls += 1
            if request == b"fail" or self.calls % 2:
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
            return b"echo: " + request

        return grpc.unary_unary_rpc_method_handler(say) if details.method == "/demo.Echo/Say" else None


def test_grpc_unavailable_is_retried_when_the_route_asks() -> None:
    flaky_route = route("grpc-flaky", "grpc-flaky", {"backendRefs": [{"name": "grpc-flaky", "port": 80}],
                                                     "retry": {"attempts": 2, "backoff": "1ms"}})

    async def main() -> None:
        flaky = Flaky()
        server, port = _grpc_server(flaky)
        try:
            async with mesh(routes=(flaky_route,)) as (wp, _):
                assert wp.backends is not None
                wp.backends.add("grpc-flaky", name="grpc-flaky", port=port, app_protocol="grpc")
                listen = await wp.listen("grpc-flaky")
                with grpc.insecure_channel(f"127.0.0.1:{listen}") as channel:
                    say = channel.unary_unary("/demo.Echo/Say")
                    answers = [await asyncio.to_thread(say, f"hi {i}".encode(), timeout=10) for i in range(10)]
                    assert answers == [f"echo: hi {i}".encode() for i in range(10)]
                    assert flaky.calls == 20  # each call met the UNAVAILABLE once: the retries hid them
                    try:
                        await asyncio.to_thread(say, b"fail", timeout=10)
                    except grpc.RpcError as exc:
                        assert (exc.code(), exc.details()) == (grpc.StatusCode.UNAVAILABLE, "try again")
                    else:
                        raise AssertionError("the failing call succeeded")
                    assert flaky.calls == 23  # the first try and both retries
                s = samples(wp.proxy)
                series = {(x.labels["request_protocol"], x.labels["grpc_response_status"],
                           x.labels["response_flags"]): x.value for x in s["ambit_requests_total"]
                          if x.labels["destination_service"] == "grpc-flaky.demo.svc.cluster.local"}
                assert series == {("grpc", "0", "-"): 10, ("grpc", "14", "URX"): 1}
                retries, = [x.value for x in s["ambit_request_retries_total"]
                            if x.labels["destination_service"] == "grpc-flaky.demo.svc.cluster.local"]
                assert retries == 12
        finally:
            server.stop(grace=None).wait(5)

    run(main())


class H2cServer:
    """An h2c-only server (the ``h2`` library on a socket; it cannot speak HTTP/1.1): refuses its first
    ``refuse`` streams with RST_STREAM REFUSED_STREAM; answers the others 200 with the request's body
    echoed (no content-length, as windows allow), ``x-method``, ``x-path`` and ``x-sha256`` of the body,
    and the trailer ``x-trailer: done``."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.streams = 0
        self.refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        refused: set[int] = set()
        heads: dict[int, dict[bytes, bytes]] = {}
        bodies: dict[int, bytearray] = {}
        outgoing: dict[int, memoryview] = {}  # response bodies still to send

        def pump() -> None:
            for sid, view in list(outgoing.items()):
                while view:
                    n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(view))
                    if n <= 0:
                        break
                    conn.send_data(sid, bytes(view[:n]))
                    view = view[n:]
                outgoing[sid] = view
                if not view:
                    del outgoing[sid]
                    conn.send_headers(sid, [(b"x-trailer", b"done")], end_stream=True)

        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.streams += 1
                        if self.refused < self.refuse:
                            self.refused += 1
                            refused.add(event.stream_id)
                            conn.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
                        heads[event.stream_id] = dict(event.headers)
                        bodies[event.stream_id] = bytearray()
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id not in refused:
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id not in refused:
                        sid, head, body = event.stream_id, heads.pop(event.stream_id), bodies.pop(event.stream_id)
                        conn.send_headers(sid, [(b":status", b"200"), (b"x-method", head[b":method"]),
                                                (b"x-path", head[b":path"]),
                                                (b"x-sha256", hashlib.sha256(body).hexdigest().encode())])
                        outgoing[sid] = memoryview(bytes(body))
                pump()
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()


def test_a_refused_h2c_stream_is_retried() -> None:
    """REFUSED_STREAM means the upstream processed nothing: the request goes to another attempt (with the
    route's retry within its budget); when every attempt is refused the client gets 503 ``UR,URX``."""
    rule = {"backendRefs": [{"name": "refusing", "port": 80}], "retry": {"attempts": 2, "backoff": "1ms"}}

    async def main() -> None:
        upstream = H2cServer(refuse=1)
        await upstream.start()
        try:
            async with mesh(routes=(route("refusing", "refusing", rule),)) as (wp, _):
                assert wp.backends is not None
                wp.backends.add("refusing", name="refusing", port=upstream.port, app_protocol="kubernetes.io/h2c")
                await wp.listen("refusing")
                rc, out, err = await curl("--http2-prior-knowledge", "-w", "%{http_code}", wp.url("refusing"))
                assert (rc, out) == (0, "200"), err
                assert (upstream.streams, upstream.refused) == (2, 1)
                upstream.refuse = 4  # three more refusals: the first try and both retries
                rc, out, err = await curl("-w", " %{http_code}", wp.url("refusing"))
                assert rc == 0, err
                assert out.startswith("upstream connect error or disconnect/reset before headers: upstream refused")
                assert out.endswith(" 503"), out
                s = samples(wp.proxy)
                flags = {x.labels["response_flags"]: (x.labels["response_code"], x.value)
                         for x in s["ambit_requests_total"]}
                assert flags == {"-": ("200", 1), "UR,URX": ("503", 1)}, flags
                retries, = s["ambit_request_retries_total"]
                assert retries.value == 3
        finally:
            await upstream.stop()

    run(main())


def test_curl_http1_to_an_h2c_only_backend(tmp_path: Path) -> None:
    """An HTTP/1.1 client and a backend port of ``appProtocol: kubernetes.io/h2c`` served by an h2c-only
    server: the waypoint translates both ways (bodies of known and unknown length up, a response without
    a length chunked down with its trailers, both bodies larger than the HTTP/2 windows)."""
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(1024 * 1024 + 3))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()

    async def main() -> None:
        upstream = H2cServer()
        await upstream.start()
        try:
            async with mesh() as (wp, _):
                assert wp.backends is not None
                wp.backends.add("h2c-only", name="h2c-only", port=upstream.port, app_protocol="kubernetes.io/h2c")
                await wp.listen("h2c-only")
                rc, out, err = await curl("-D", "-", wp.url("h2c-only", "/items?id=7"))
                assert rc == 0, err
                head, _, body = out.partition("\r\n\r\n")
                assert head.startswith("HTTP/1.1 200"), out
                assert "x-method: GET" in head and "x-path: /items?id=7" in head, head
                assert "transfer-encoding: chunked" in head.lower(), head
                assert "x-trailer: done" in body, out  # curl prints the trailers after the (empty) body
                for extra in ((), ("-H", "Transfer-Encoding: chunked")):  # a length known, then unknown
                    echoed = tmp_path / "echoed"
                    rc, out, err = await curl("--data-binary", f"@{payload}", *extra, "-D", "-", "-o", str(echoed),
                                              wp.url("h2c-only", "/upload"))
                    assert rc == 0, err
                    assert "HTTP/1.1 200 OK" in out, out  # after curl's 100 Continue, answered by the waypoint
                    assert "x-method: POST" in out and f"x-sha256: {digest}" in out, out
                    assert "x-trailer: done" in out, out
                    assert hashlib.sha256(echoed.read_bytes()).hexdigest() == digest
                assert upstream.streams == 3
                series = {(x.labels["request_protocol"], x.labels["response_code"], x.labels["response_flags"]): x.value
                          for x in samples(wp.proxy)["ambit_requests_total"]}
                assert series == {("http", "200", "-"): 3}
        finally:
            await upstream.stop()

    run(main())
