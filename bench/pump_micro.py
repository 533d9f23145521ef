"""In-process microbenchmark of the byte pump: CPU per relayed message, without the sandbox.

``python -m bench.pump_micro [--messages N] [--concurrency C] [--size B] [--bulk MB]``

One process, one uvloop: clients -> relay A (plain in, TLS 1.3 client out) -> relay B (TLS
server in, plain out) -> an echo server, all on 127.0.0.1, using ``node_agent.proxy.pump``
exactly as the listeners do. Reports round trips per second and CPU microseconds per round trip
(process CPU time: clients, echo, both relays and the kernel's loopback work), so a change to the
pump shows up as a change in CPU per message -- compare before/after on the same machine; the
absolute numbers are not the rig's. ``--bulk`` instead sends that many MB one way and reports
CPU seconds per GB.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import tempfile
import time
from pathlib import Path

import uvloop

from bench.pki import write_pki
from node_agent.proxy.pump import Pump, Stream


def _contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = write_pki(directory)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.load_verify_locations(pki["ca.crt"])
    client.load_cert_chain(pki["node-1.crt"], pki["node-1.key"])
    client.check_hostname = False
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(pki["ca.crt"])
    server.load_cert_chain(pki["node-2.crt"], pki["node-2.key"])
    return client, server


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.t.write(data)


class Sink(asyncio.Protocol):
    def __init__(self, done: asyncio.Future, want: int) -> None:
        self.done, self.want, self.got = done, want, 0

    def data_received(self, data):
        self.got += len(data)
        if self.got >= self.want and not self.done.done():
            self.done.set_result(None)


class PingClient(asyncio.Protocol):
    def __init__(self, *, size: int, count: int, done: asyncio.Future) -> None:
        self.msg = b"x" * size
        self.left = count
        self.got = 0
        self.done = done

    def connection_made(self, transport):
        self.t = transport
        transport.write(self.msg)

    def data_received(self, data):
        self.got += len(data)
        if self.got < len(self.msg):
            return
        self.got = 0
        self.left -= 1
        if self.left:
            self.t.write(self.msg)
        elif not self.done.done():
            self.done.set_result(None)


async def _relays(client_ctx, server_ctx, target: tuple[str, int]) -> tuple[int, list]:
    loop = asyncio.get_running_loop()
    keep: list = []

    async def b_side(stream: Stream) -> None:
        await stream.start_tls(server_ctx, server_side=True, timeout=5)
        _, app = await loop.create_connection(Stream, *target)
        await Pump(stream, app).run()

    async def a_side(stream: Stream, b_port: int) -> None:
        _, up = await loop.create_connection(lambda: Stream(paused=True), "127.0.0.1", b_port)
        await up.start_tls(client_ctx, server_side=False, timeout=5)
        await Pump(stream, up).run()

    def spawn(coro) -> None:
        task = loop.create_task(coro)
        keep.append(task)

    b = await loop.create_server(lambda: Stream(on_connected=lambda s: spawn(b_side(s)), paused=True),
                                 "127.0.0.1", 0)
    b_port = b.sockets[0].getsockname()[1]
    a = await loop.create_server(lambda: Stream(on_connected=lambda s: spawn(a_side(s, b_port)), paused=True),
                                 "127.0.0.1", 0)
    keep += [a, b]
    return a.sockets[0].getsockname()[1], keep


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="ambit-pump-micro-") as tmp:
        client_ctx, server_ctx = _contexts(Path(tmp))
    if args.bulk:
        want = args.bulk * 1024 * 1024
        done = loop.create_future()
        sink = await loop.create_server(lambda: Sink(done, want), "127.0.0.1", 0)
        port, keep = await _relays(client_ctx, server_ctx, sink.sockets[0].getsockname()[:2])
        t, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        chunk = b"y" * (256 * 1024)
        wall, cpu = time.perf_counter(), _cpu()
        sent = 0
        while sent < want:
            t.write(chunk)
            sent += len(chunk)
            while t.get_write_buffer_size() > 4 * len(chunk):
                await asyncio.sleep(0)
        await done
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        print(f"bulk {args.bulk} MB: {want * 8 / wall / 1e9:.2f} Gb/s, {cpu / (want / 1e9):.2f} CPU s/GB")
        t.close()
        return
    echo = await loop.create_server(Echo, "127.0.0.1", 0)
    port, keep = await _relays(client_ctx, server_ctx, echo.sockets[0].getsockname()[:2])
    per_client = args.messages // args.concurrency
    for label, count in (("warm-up", max(1, per_client // 10)), ("measured", per_client)):
        dones = [loop.create_future() for _ in range(args.concurrency)]
        wall, cpu = time.perf_counter(), _cpu()
        transports = []
        for d in dones:
            t, _ = await loop.create_connection(lambda d=d: PingClient(size=args.size, count=count, done=d),
                                                "127.0.0.1", port)
            transports.append(t)
        await asyncio.gather(*dones)
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        n = count * args.concurrency
        if label == "measured":
            print(f"c={args.concurrency} size={args.size}: {n / wall:,.0f} round trips/s, "
                  f"{cpu / n * 1e6:.1f} CPU us per round trip")
        for t in transports:
            t.close()
        await asyncio.sleep(0.2)


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pump_micro")
    p.add_argument("--messages", type=int, default=40000)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--bulk", type=int, default=0, help="MB to send one way instead of round trips")
    uvloop.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
