"""The per-endpoint keep-alive pool (waypoint.pool) over real loopback connections."""
from __future__ import annotations

import asyncio

import pytest

from node_agent.proxy.pump import Stream
from waypoint.pool import ConnectionPool, PoolSettings

KEY = ("127.0.0.1", 1)


def run(coro) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(30):
            await coro

    asyncio.run(bounded())


async def connections(n: int):
    """``n`` client streams to a server that keeps its side of each (to close or write to)."""
    peers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    streams = []
    for _ in range(n):
        _, stream = await loop.create_connection(Stream, *server.sockets[0].getsockname()[:2])
        streams.append(stream)
    while len(peers) < n:
        await asyncio.sleep(0.01)
    return server, streams, peers


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


def test_last_in_first_out_and_bounded() -> None:
    async def main() -> None:
        server, streams, peers = await connections(3)
        pool = ConnectionPool(settings=PoolSettings(max_idle=2, idle_timeout=30))
        try:
            for s in streams:
                pool.give(KEY, s)
            assert pool.idle(KEY) == 2
            await settle()
            assert streams[2].is_lost  # over max_idle: closed
            assert pool.take(KEY) is streams[1]
            assert pool.take(KEY) is streams[0]
            assert pool.take(KEY) is None
        finally:
            pool.close()
            for s in streams:
                s.abort()
            server.close()

    run(main())


@pytest.mark.parametrize("how", ["server-closed", "server-wrote", "idle-timeout"])
def test_unclean_or_expired_connections_are_not_handed_out(how: str) -> None:
    async def main() -> None:
        server, (stream,), (peer,) = await connections(1)
        pool = ConnectionPool(settings=PoolSettings(max_idle=4, idle_timeout=0.05 if how == "idle-timeout" else 30))
        try:
            pool.give(KEY, stream)
            if how == "server-closed":
                peer.close()
            elif how == "server-wrote":
                peer.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            await asyncio.sleep(0.2)
            assert pool.take(KEY) is None
            await settle()
            assert stream.is_lost
        finally:
            pool.close()
            stream.abort()
            server.close()

    run(main())
