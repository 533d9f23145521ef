"""A work queue of object keys, as client-go's: coalescing, delayed, rate-limited.

- ``add(key)`` schedules a key after the debounce delay; adding a key already waiting keeps the
  earlier time, so a burst of events becomes one reconcile.
- A key is handed to one worker at a time; added again while in progress, it is run again
  after ``done``, never concurrently.
- ``retry(key)`` reschedules with per-key exponential backoff (with jitter); ``forget(key)``
  resets it after a success.
"""
from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from typing import Callable, Hashable


class WorkQueue:
    def __init__(
        self,
        *,
        debounce: float = 0.05,
        base_backoff: float = 0.1,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._debounce = debounce
        self._base = base_backoff
        self._max = max_backoff
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}  # waiting keys and when they are due
        self._active: set[Hashable] = set()  # handed out, not yet done
        self._again: dict[Hashable, float] = {}  # added while active: due time once done
        self._failures: dict[Hashable, int] = {}
        self._seq = itertools.count()
        self._closed = False

    def add(self, key: Hashable, *, delay: float | None = None) -> None:
        due = self._clock() + (self._debounce if delay is None else max(0.0, delay))
        with self._cond:
            if self._closed:
                return
            if key in self._active:
                self._again[key] = min(due, self._again.get(key, due))
                return
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cond.notify()

    def get(self, *, timeout: float | None = None) -> Hashable | None:
        """The next due key, or None on timeout or close."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier add
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    self._active.add(key)
                    return key
                wait = self._heap[0][0] - now if self._heap else None
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._active.discard(key)
            due = self._again.pop(key, None)
        if due is not None:
            self.add(key, delay=max(0.0, due - self._clock()))

    def retry(self, key: Hashable) -> float:
        """Schedule ``key`` again after its backoff; returns the delay."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        delay = min(self._max, self._base * (2**n)) * (0.8 + 0.4 * random.random())
        self.add(key, delay=delay)
        return delay

    def forget(self, key: Hashable) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)
