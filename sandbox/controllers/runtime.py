"""The thin part: feed reconcile functions from the caches and apply what they return.

- ``Cache`` reads the reflectors' stores (a ``Store`` for the controllers).
- ``Controller`` is what each controller module provides: the kinds it reads, which queue keys
  an event touches, and ``sync(key)`` -> actions (a call of its pure ``reconcile``).
- ``Expectations`` remembers what a key's last actions changed until the cache shows it, and
  holds the key back meanwhile, so a reconcile never acts twice on a stale cache (client-go's
  ControllerExpectations, generalised to patches).
- ``ControllerLoop`` runs one controller: a work queue, one worker thread, one log line per
  action, backoff on errors and conflicts, requeues the reconcile asked for.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Hashable, Iterable, Literal, Mapping, Protocol

from sandbox.controllers.actions import Action, Create, Delete, Patch, Requeue
from sandbox.controllers.errors import ApplyError, ConflictError
from sandbox.controllers.objects import Kind, OwnerReference, Store, is_deleting, meta, namespace_of, uid_of
from sandbox.controllers.queue import WorkQueue

log = logging.getLogger("sandbox.controllers")


class Controller(Protocol):
    name: str
    kinds: tuple[Kind, ...]

    def keys_for(self, kind: Kind, obj: dict, *, etype: str, store: Store) -> Iterable[Hashable]: ...

    def sync(self, key: Hashable, store: Store, *, now: datetime) -> list[Action]: ...


class Applies(Protocol):
    """What the loop needs from the applier (a ``Protocol`` so tests can record calls)."""

    def apply(self, action: Action) -> dict | None: ...

    def owner_exists(self, namespace: str, ref: OwnerReference) -> bool: ...


class HasStore(Protocol):
    store: dict[tuple[str, str], dict]


class Cache:
    """A ``Store`` over reflectors; always reads the reflector's current dict (a relist replaces it)."""

    def __init__(self, reflectors: Mapping[Kind, HasStore]) -> None:
        self._reflectors = dict(reflectors)

    def list(self, kind: Kind, namespace: str | None = None) -> list[dict]:
        items = self._values(kind)
        return items if namespace is None else [o for o in items if namespace_of(o) == namespace]

    def get(self, kind: Kind, key: tuple[str, str]) -> dict | None:
        return self._reflectors[kind].store.get(key)

    def _values(self, kind: Kind) -> list[dict]:
        store = self._reflectors[kind].store
        for _ in range(5):
            try:
                return list(store.values())  # one C-level copy; a writer thread rarely interleaves
            except RuntimeError:  # "dictionary changed size during iteration"
                continue
        return list(dict(store).values())


# ---- expectations --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Expect:
    kind: Kind
    namespace: str
    name: str
    state: Literal["present", "absent", "version"]
    deadline: float
    uid: str = ""
    resource_version: str = ""

    def met(self, store: Store) -> bool:
        obj = store.get(self.kind, (self.namespace, self.name))
        if self.state == "present":
            return obj is not None
        if self.state == "absent":
            return obj is None or (bool(self.uid) and uid_of(obj) != self.uid) or is_deleting(obj)
        if obj is None:
            return True
        return _rv_at_least(meta(obj).get("resourceVersion") or "", self.resource_version)


def _rv_at_least(have: str, want: str) -> bool:
    if have == want:
        return True
    if have.isdigit() and want.isdigit():
        return int(have) >= int(want)
    return False  # opaque versions: wait for the exact one (or the deadline)


class Expectations:
    def __init__(self, *, timeout: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Hashable, list[_Expect]] = {}

    def expect(self, key: Hashable, action: Action, *, result: dict | None) -> None:
        deadline = self._clock() + self._timeout
        if isinstance(action, Create):
            e = _Expect(kind=action.kind, namespace=action.namespace, name=action.name, state="present",
                        deadline=deadline)
        elif isinstance(action, Delete):
            e = _Expect(kind=action.kind, namespace=action.namespace, name=action.name, state="absent",
                        uid=action.uid, deadline=deadline)
        elif isinstance(action, Patch) and result:
            rv = (result.get("metadata") or {}).get("resourceVersion") or ""
            if not rv:
                return
            e = _Expect(kind=action.kind, namespace=action.namespace, name=action.name, state="version",
                        resource_version=rv, deadline=deadline)
        else:
            return
        with self._lock:
            self._pending.setdefault(key, []).append(e)

    def wait_time(self, key: Hashable, store: Store) -> float:
        """0 when the cache shows everything ``key``'s actions did; else seconds until the
        earliest expectation expires (the key should run again then at the latest)."""
        with self._lock:
            pending = self._pending.get(key)
            if not pending:
                return 0.0
            now = self._clock()
            left = []
            for e in pending:
                if e.met(store):
                    continue
                if e.deadline <= now:
                    log.warning("expected %s %s/%s to be %s by now; the cache may be stuck, going on",
                                e.kind, e.namespace, e.name, e.state)
                    continue
                left.append(e)
            if left:
                self._pending[key] = left
                return min(e.deadline for e in left) - now
            del self._pending[key]
            return 0.0

    def clear(self, key: Hashable) -> None:
        with self._lock:
            self._pending.pop(key, None)


# ---- the loop ------------------------------------------------------------------------------
class ControllerLoop:
    def __init__(
        self,
        controller: Controller,
        *,
        store: Store,
        applier: Applies,
        queue: WorkQueue | None = None,
        expectations: Expectations | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.controller = controller
        self.store = store
        self.applier = applier
        self.queue = queue if queue is not None else WorkQueue()
        self.expectations = expectations if expectations is not None else Expectations()
        self._now = now
        self.log = log.getChild(controller.name)

    @property
    def name(self) -> str:
        return self.controller.name

    def on_event(self, kind: Kind, obj: dict, *, etype: str) -> None:
        if kind not in self.controller.kinds:
            return
        for key in self.controller.keys_for(kind, obj, etype=etype, store=self.store):
            self.queue.add(key)

    def resync(self) -> None:
        """Enqueue every key the cached objects map to (recovers from anything missed)."""
        for kind in self.controller.kinds:
            for obj in self.store.list(kind):
                self.on_event(kind, obj, etype="SYNC")

    def run(self, stop: threading.Event, *, start: threading.Event) -> None:
        """Worker: waits for ``start`` (every cache synced), then drains the queue until ``stop``."""
        while not start.wait(0.2):
            if stop.is_set():
                return
        while not stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                self.process(key)
            finally:
                self.queue.done(key)

    def process(self, key: Hashable) -> None:
        """One reconcile of ``key``: wait for expectations, sync, apply in order."""
        wait = self.expectations.wait_time(key, self.store)
        if wait > 0:
            self.queue.add(key, delay=wait)  # the awaited watch event usually re-adds it sooner
            return
        try:
            actions = self.controller.sync(key, self.store, now=self._now())
        except ApplyError as exc:  # a live read failed (the namespace controller reads live)
            delay = self.queue.retry(key)
            self.log.warning("%s (again in %.1fs)", exc, delay)
            return
        except Exception:
            self.log.exception("BUG: reconcile of %s failed; retrying with backoff", key)
            self.queue.retry(key)
            return
        requeue: float | None = None
        try:
            for action in actions:
                if isinstance(action, Requeue):
                    requeue = action.after if requeue is None else min(requeue, action.after)
                    continue
                if isinstance(action, Delete) and action.unless_owners_exist:
                    alive = [r for r in action.unless_owners_exist if self.applier.owner_exists(action.namespace, r)]
                    if alive:
                        self.log.info("keep %s %s/%s: owner %s %s still exists (the cache was behind)",
                                      action.kind, action.namespace, action.name,
                                      alive[0].get("kind"), alive[0].get("name"))
                        continue
                result = self.applier.apply(action)
                self.expectations.expect(key, action, result=result)
                self.log.info("%s", action.describe())
        except ConflictError as exc:
            delay = self.queue.retry(key)
            self.log.info("%s (again in %.1fs)", exc, delay)
            return
        except ApplyError as exc:
            delay = self.queue.retry(key)
            self.log.warning("%s (again in %.1fs)", exc, delay)
            return
        except Exception as exc:  # the client's own failures: keep the loop alive
            delay = self.queue.retry(key)
            self.log.warning("%s: %s: %s (again in %.1fs)", key, type(exc).__name__, exc, delay)
            return
        self.queue.forget(key)
        if requeue is not None:
            self.queue.add(key, delay=requeue)
