"""Objects in SQLite, mirrored in memory, with one resourceVersion counter and a watch history.

- Every object lives in the ``objects`` table as compact JSON; ``meta.rv`` holds the last
  resourceVersion handed out, so a restarted API continues counting up and loses nothing.
- Reads are served from the in-memory mirror (``Stored``: the parsed object, its JSON bytes and
  its version); stored objects are never mutated, writers build new dicts.
- Each write appends an ``Event`` to an in-memory history window and hands it to the watchers of
  that resource. The window starts empty after a restart, so a watch from an older version gets
  ``TooOld`` (HTTP 410) and the client relists.
"""
from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

DEFAULT_HISTORY = 10_000
WATCH_QUEUE_LIMIT = 20_000
"""events a watcher may fall behind by before its stream is ended (the client re-watches)"""


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class StoreError(Exception):
    """Base of store failures."""


class TooOld(StoreError):
    """The requested resourceVersion is older than the history window."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclass(frozen=True, slots=True)
class Stored:
    obj: dict[str, Any]
    raw: bytes
    rv: int


@dataclass(frozen=True, slots=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    key: str
    namespace: str
    name: str
    obj: dict[str, Any]
    raw: bytes
    prev: dict[str, Any] | None


class Watcher:
    """One open watch: events for ``key`` (and ``namespace`` if set) queue up here."""

    __slots__ = ("key", "namespace", "queue", "overflowed", "closed")

    def __init__(self, key: str, namespace: str | None) -> None:
        self.key = key
        self.namespace = namespace
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.overflowed = False
        self.closed = False

    def offer(self, event: Event | None) -> None:
        if self.closed:
            return
        if event is not None and self.queue.qsize() >= WATCH_QUEUE_LIMIT:
            self.overflowed = True
            self.closed = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(event)


class Store:
    def __init__(self, path: Path, *, history: int = DEFAULT_HISTORY) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (key TEXT NOT NULL, namespace TEXT NOT NULL, "
            "name TEXT NOT NULL, rv INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (key, namespace, name))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        row = self._db.execute("SELECT v FROM meta WHERE k = 'rv'").fetchone()
        self._rv = int(row[0]) if row else 0
        self._objects: dict[str, dict[tuple[str, str], Stored]] = collections.defaultdict(dict)
        for key, ns, name, rv, data in self._db.execute("SELECT key, namespace, name, rv, data FROM objects"):
            raw = data.encode()
            self._objects[key][(ns, name)] = Stored(json.loads(raw), raw, rv)
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._history_start = self._rv
        """events with rv > history_start are all in the window"""
        self._watchers: dict[str, set[Watcher]] = collections.defaultdict(set)
        self._batch_depth = 0

    # ---- reads -------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, key: str, namespace: str, name: str) -> Stored | None:
        return self._objects[key].get((namespace, name))

    def list(self, key: str, namespace: str | None = None) -> list[Stored]:
        objs = self._objects[key]
        if namespace is None:
            return [objs[k] for k in sorted(objs)]
        return [objs[k] for k in sorted(k for k in objs if k[0] == namespace)]

    def count(self, key: str) -> int:
        return len(self._objects[key])

    # ---- writes ------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def batch(self) -> "_Batch":
        """Group several writes into one SQLite transaction (``with store.batch(): ...``)."""
        return _Batch(self)

    def _exec(self, sql: str, args: tuple) -> None:
        if self._batch_depth:
            self._db.execute(sql, args)
            return
        self._db.execute("BEGIN")
        try:
            self._db.execute(sql, args)
            self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('rv', ?)", (str(self._rv),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def put(self, key: str, obj: dict[str, Any], *, event_type: str) -> Stored:
        """Create or replace ``obj`` (ADDED or MODIFIED); sets ``metadata.resourceVersion``."""
        meta = obj["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        prev = self._objects[key].get((ns, name))
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        raw = dumps(obj)
        try:
            self._exec(
                "INSERT OR REPLACE INTO objects (key, namespace, name, rv, data) VALUES (?, ?, ?, ?, ?)",
                (key, ns, name, rv, raw.decode()),
            )
        except BaseException:
            self._rv -= 1
            raise
        stored = Stored(obj, raw, rv)
        self._objects[key][(ns, name)] = stored
        self._publish(Event(rv, event_type, key, ns, name, obj, raw, prev.obj if prev else None))
        return stored

    def delete(self, key: str, namespace: str, name: str) -> Stored | None:
        prev = self._objects[key].get((namespace, name))
        if prev is None:
            return None
        rv = self._next_rv()
        obj = json.loads(prev.raw)
        obj["metadata"]["resourceVersion"] = str(rv)
        raw = dumps(obj)
        try:
            self._exec("DELETE FROM objects WHERE key = ? AND namespace = ? AND name = ?", (key, namespace, name))
        except BaseException:
            self._rv -= 1
            raise
        del self._objects[key][(namespace, name)]
        self._publish(Event(rv, "DELETED", key, namespace, name, obj, raw, prev.obj))
        return Stored(obj, raw, rv)

    # ---- watch -------------------------------------------------------------------------

    def _publish(self, event: Event) -> None:
        if len(self._history) == self._history.maxlen:
            self._history_start = self._history[0].rv
        self._history.append(event)
        for w in tuple(self._watchers.get(event.key, ())):
            if w.namespace is None or w.namespace == event.namespace:
                w.offer(event)

    def subscribe(self, key: str, namespace: str | None) -> Watcher:
        w = Watcher(key, namespace)
        self._watchers[key].add(w)
        return w

    def unsubscribe(self, watcher: Watcher) -> None:
        watcher.closed = True
        self._watchers[watcher.key].discard(watcher)

    def watcher_count(self) -> int:
        return sum(len(v) for v in self._watchers.values())

    def events_since(self, rv: int, key: str, namespace: str | None) -> Iterator[Event]:
        """Events after ``rv`` for ``key``; raises :class:`TooOld` when the window no longer covers it."""
        if rv < self._history_start:
            raise TooOld(rv, self._history_start + 1)
        for ev in self._history:
            if ev.rv > rv and ev.key == key and (namespace is None or ev.namespace == namespace):
                yield ev

    def close_watchers(self, key: str | None = None) -> None:
        """End every open watch (of ``key`` only, when given: its kind is served no more)."""
        for k, ws in list(self._watchers.items()):
            if key is not None and k != key:
                continue
            for w in tuple(ws):
                w.offer(None)
                w.closed = True
            del self._watchers[k]

    def close(self) -> None:
        self.close_watchers()
        self._db.close()


class _Batch:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Store:
        if self.store._batch_depth == 0:
            self.store._db.execute("BEGIN")
        self.store._batch_depth += 1
        return self.store

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.store._batch_depth -= 1
        if self.store._batch_depth:
            return
        # Commit even when the batch raised: every write already applied to the in-memory mirror
        # (and seen by watchers) succeeded in SQLite too, so committing keeps the two equal.
        self.store._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('rv', ?)", (str(self.store._rv),))
        self.store._db.execute("COMMIT")
