"""Keep-alive connections to endpoints, per endpoint and protocol, for the HTTP engine.

A connection goes back to the pool only after a complete exchange that left it clean (the
engine decides: no ``Connection: close``, no error, nothing unread). Idle connections are kept
last-in first-out, at most ``max_idle`` per key, and closed after ``idle_timeout``; an HTTP/1.1
connection the server closed, or that received bytes while idle, is dropped when taken (an h2c
one handles what came while idle and says itself whether it is still good).
"""
from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from node_agent.proxy.pump import Stream


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_idle: int = 256
    """idle connections kept per endpoint: at least the requests in flight to it at once, or the
    surplus is closed after each burst and reopened (a TLS handshake on both ends) by the next; at
    16, wrk c=32 opened 170 tunnels per 1000 requests (docs/benchmarks.md). Idle ones still go after
    ``idle_timeout``, so the pool holds what the recent concurrency needed, not this many."""
    idle_timeout: float = 4.0
    """seconds an idle connection is kept: below common servers' keep-alive (5 s), so they rarely close first"""

    def __post_init__(self) -> None:
        if self.max_idle < 0 or self.idle_timeout <= 0:
            raise ValueError(f"connection pool {self}: need max_idle >= 0 and idle_timeout > 0 seconds")


class _Idle:
    __slots__ = ("stream", "timer")

    def __init__(self, stream: Stream | Pooled, timer: asyncio.TimerHandle) -> None:
        self.stream = stream
        self.timer = timer


class Pooled(Protocol):
    """An h2c connection (``upstream.H2Connection``) knows itself whether it can carry another request."""

    def clean(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _clean(conn: Stream | Pooled) -> bool:
    if isinstance(conn, Stream):
        return not conn.is_lost and not conn.at_eof and not conn.buffered
    return conn.clean()


class ConnectionPool:
    __slots__ = ("_settings", "_idle")

    def __init__(self, *, settings: PoolSettings) -> None:
        self._settings = settings
        self._idle: dict[Hashable, list[_Idle]] = {}

    def take(self, key: Hashable) -> Stream | Pooled | None:
        """An idle connection to ``key`` that is still clean, or ``None``."""
        entries = self._idle.get(key)
        while entries:
            entry = entries.pop()
            entry.timer.cancel()
            if _clean(entry.stream):
                if not entries:
                    del self._idle[key]
                return entry.stream
            entry.stream.abort()
        self._idle.pop(key, None)
        return None

    def give(self, key: Hashable, stream: Stream | Pooled) -> None:
        """Keep ``stream`` for the next request to ``key`` (closed instead when full or not clean)."""
        entries = self._idle.setdefault(key, [])
        if len(entries) >= self._settings.max_idle or not _clean(stream):
            stream.close()
            if not entries:
                del self._idle[key]
            return
        timer = asyncio.get_running_loop().call_later(self._settings.idle_timeout, self._expire, key, stream)
        entries.append(_Idle(stream, timer))

    def _expire(self, key: Hashable, stream: Stream | Pooled) -> None:
        entries = self._idle.get(key)
        if entries is None:
            return
        for i, entry in enumerate(entries):
            if entry.stream is stream:
                del entries[i]
                stream.close()
                break
        if not entries:
            del self._idle[key]

    def idle(self, key: Hashable) -> int:
        return len(self._idle.get(key, ()))

    def close(self) -> None:
        """Close every idle connection (shutdown)."""
        for entries in self._idle.values():
            for entry in entries:
                entry.timer.cancel()
                entry.stream.close()
        self._idle.clear()
