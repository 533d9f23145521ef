"""The byte pump over plain TCP on loopback, under stock asyncio and uvloop.

Each test runs a tiny relay: accept a client, connect to a target server, ``relay`` the two.
"""
from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from node_agent.proxy import pump
from node_agent.proxy.pump import PumpEnd, PumpResult, Stream, relay

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable], object]:
    def runner(coro: Awaitable) -> object:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(asyncio.wait_for(coro, 30))

    return runner


class Relay:
    """Accepts on 127.0.0.1:<random>, relays every client to ``target``; collects results."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.results: list[PumpResult] = []
        self.streams: list[Stream] = []
        self.tasks: set[asyncio.Task] = set()
        self.server: asyncio.AbstractServer | None = None
        self.finished = asyncio.Event()

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Stream(on_connected=self._accepted, paused=True), "127.0.0.1", 0
        )
        return self.server.sockets[0].getsockname()[:2]

    def _accepted(self, client: Stream) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(client), name="test-relay")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, client: Stream) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(Stream, *self.target)
        except OSError:
            client.abort()
            raise
        self.streams += [client, upstream]
        self.results.append(await relay(client, upstream))
        self.finished.set()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def echo_server(*, reply_after_eof: bytes = b"") -> tuple[asyncio.AbstractServer, tuple[str, int]]:
    """Echoes everything; at EOF writes ``reply_after_eof`` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write(reply_after_eof)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


def test_bytes_flow_both_ways_and_half_close(run) -> None:
    async def main() -> None:
        server, addr = await echo_server(reply_after_eof=b"bye")
        proxy = Relay(addr)
        reader, writer = await asyncio.open_connection(*await proxy.start())
        payload = bytes(range(256)) * 4096  # 1 MiB
        writer.write(payload)
        await writer.drain()
        assert await reader.readexactly(len(payload)) == payload
        writer.write_eof()  # half-close: we still get the reply the server sends after our EOF
        assert await reader.read() == b"bye"
        writer.close()
        await proxy.finished.wait()
        (result,) = proxy.results
        assert (result.from_client, result.from_server) == (len(payload), len(payload) + 3)
        assert result.end is PumpEnd.COMPLETE and result.error is None
        assert result.duration > 0
        await proxy.stop()
        server.close()

    run(main())


def test_server_that_closes_first_half_closes_the_client(run) -> None:
    async def main() -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            writer.write_eof()
            assert await reader.read() == b"late request"  # we still receive after our EOF
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        proxy = Relay(server.sockets[0].getsockname()[:2])
        reader, writer = await asyncio.open_connection(*await proxy.start())
        assert await reader.read() == b"hello"
        writer.write(b"late request")
        writer.write_eof()
        await proxy.finished.wait()
        assert proxy.results[0].end is PumpEnd.COMPLETE
        assert proxy.results[0].from_client == len(b"late request")
        writer.close()
        await proxy.stop()
        server.close()

    run(main())


def test_reset_by_the_server_is_a_normal_close(run) -> None:
    async def main() -> None:
        async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(4)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()

        server = await asyncio.start_server(reset, "127.0.0.1", 0)
        proxy = Relay(server.sockets[0].getsockname()[:2])
        reader, writer = await asyncio.open_connection(*await proxy.start())
        writer.write(b"ping")
        assert await reader.read() == b""  # the client sees the connection end
        await proxy.finished.wait()
        assert proxy.results[0].end is PumpEnd.RESET
        writer.close()
        await proxy.stop()
        server.close()

    run(main())


def test_cancelling_the_relay_closes_both_sides(run) -> None:
    async def main() -> None:
        server, addr = await echo_server()
        proxy = Relay(addr)
        reader, writer = await asyncio.open_connection(*await proxy.start())
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        await proxy.stop()  # cancels the handler blocked in relay()
        assert await reader.read() == b""
        await asyncio.sleep(0)
        assert all(s.is_lost for s in proxy.streams)
        writer.close()
        server.close()

    run(main())


def test_slow_reader_keeps_buffered_bytes_bounded(run) -> None:
    """50 MB from a fast writer to a slow reader: the proxy holds at most ~one buffer per direction."""
    total = 50 * 1024 * 1024

    async def main() -> None:
        loop = asyncio.get_running_loop()
        received = 0
        done = asyncio.Event()

        async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal received
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            while received < total:
                data = await reader.read(512 * 1024)
                if not data:
                    break
                received += len(data)
                await asyncio.sleep(0.001)
            done.set()
            writer.close()

        server = await asyncio.start_server(slow_reader, "127.0.0.1", 0)
        proxy = Relay(server.sockets[0].getsockname()[:2])
        host, port = await proxy.start()
        client = socket.create_connection((host, port))
        client.setblocking(False)
        chunk = b"\xab" * (1024 * 1024)
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                for stream in proxy.streams:
                    if stream.transport is not None:
                        peak = max(peak, stream.transport.get_write_buffer_size())
                await asyncio.sleep(0.0005)

        sampler = loop.create_task(sample())
        tracemalloc.start()
        try:
            for _ in range(total // len(chunk)):
                await loop.sock_sendall(client, chunk)
            await done.wait()
            _, traced_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await sampler
        assert received == total
        bound = pump.WRITE_HIGH_WATER + pump.READ_BUFFER_SIZE
        assert 0 < peak <= bound, peak
        # the writer's own 1 MiB chunk plus the relay's buffers; nowhere near the 50 MB sent
        assert traced_peak < 4 * 1024 * 1024, traced_peak
        client.close()
        await proxy.stop()
        server.close()

    run(main())


def test_drain_bounds_what_a_preamble_writer_queues(run) -> None:
    """A writer that awaits ``drain`` after each ``write`` (the waypoint's engine, before any relay)
    never has more than the high-water mark plus one chunk queued for a slow reader, and ``drain``
    raises once the connection is gone instead of waiting forever."""
    total = 8 * 1024 * 1024
    chunk = b"\xcd" * (64 * 1024)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        received = 0
        release = asyncio.Event()

        async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal received
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            await release.wait()
            while received < total:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                received += len(data)
                await asyncio.sleep(0.001)
            writer.close()

        server = await asyncio.start_server(slow_reader, "127.0.0.1", 0)
        _, stream = await loop.create_connection(Stream, *server.sockets[0].getsockname()[:2])
        peak = 0
        try:
            sent = 0
            while sent < total:
                stream.write(chunk)
                sent += len(chunk)
                assert stream.transport is not None
                peak = max(peak, stream.transport.get_write_buffer_size())
                if sent == 16 * len(chunk):
                    release.set()  # the reader starts only after the writer had to wait
                await stream.drain()
            while received < total:
                await asyncio.sleep(0.005)
            assert received == total
            assert pump.WRITE_HIGH_WATER <= peak <= pump.WRITE_HIGH_WATER + len(chunk), peak
            stream.abort()
            with pytest.raises(pump.StreamClosedError):
                for _ in range(100):
                    await stream.drain()
                    await asyncio.sleep(0.001)
        finally:
            stream.abort()
            server.close()
            await server.wait_closed()

    run(main())


def test_take_buffered_returns_what_arrived_without_waiting(run) -> None:
    async def main() -> None:
        async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"idle frames")
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(talk, "127.0.0.1", 0)
        _, stream = await asyncio.get_running_loop().create_connection(Stream, *server.sockets[0].getsockname()[:2])
        try:
            for _ in range(200):
                if stream.buffered:
                    break
                await asyncio.sleep(0.005)
            assert stream.buffered == len(b"idle frames")
            assert stream.take_buffered() == b"idle frames"
            assert stream.buffered == 0 and stream.take_buffered() == b""
        finally:
            stream.abort()
            server.close()
            await server.wait_closed()

    run(main())


_PEER_SCRIPT = r"""
import asyncio, sys

async def main():
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    count, port = map(int, sys.stdin.readline().split())
    writers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await reader.readexactly(1)
        writers.append(writer)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def test_idle_connection_memory_is_small(run) -> None:
    """Python memory the relay holds per open, idle connection (clients and echo server in a child)."""
    count = 200

    async def main() -> None:
        import sys

        peer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PEER_SCRIPT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert peer.stdout is not None and peer.stdin is not None
            echo_port = int(await peer.stdout.readline())
            proxy = Relay(("127.0.0.1", echo_port))
            _, port = await proxy.start()
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            peer.stdin.write(f"{count} {port}\n".encode())
            assert await peer.stdout.readline() == b"ready\n"
            await asyncio.sleep(0.05)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            assert len(proxy.streams) == 2 * count
            grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
            per_connection = grown / count
            print(f"relay python memory per idle connection: {per_connection:.0f} bytes")
            assert per_connection < 8 * 1024, per_connection
            await proxy.stop()
        finally:
            if peer.stdin is not None:
                peer.stdin.close()
            await peer.wait()

    run(main())
