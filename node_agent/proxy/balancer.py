"""Endpoint choice: power of two choices over a peak-EWMA latency estimate (Linkerd's balancer).

Each endpoint keeps an RTT estimate that jumps to any slower observation at once (peak) and
otherwise moves toward new observations with a time-based weight, decaying toward zero while
idle; cost = estimate * (open connections + 1). Two distinct endpoints are drawn at random and the
cheaper wins. Connection-establishment latency feeds the estimate; a failed attempt counts as a
slow one (``failure_penalty``), so the endpoint is avoided until decay brings it back.

Pure: the clock and the random source are injected; no I/O, no awaits.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

DEFAULT_RTT = 0.030
"""Seconds assumed for an endpoint never measured (Linkerd's default)."""
DECAY = 10.0
"""Seconds over which an old observation loses ~63% of its weight (Linkerd's default)."""
FAILURE_PENALTY = 1.0
"""RTT recorded for a failed attempt: large against real RTTs, gone after a few decay periods."""


class RandomSource(Protocol):
    def randrange(self, stop: int, /) -> int: ...


class _Estimate:
    __slots__ = ("rtt", "stamp", "pending", "measured")

    def __init__(self, rtt: float, stamp: float) -> None:
        self.rtt = rtt
        self.stamp = stamp
        self.pending = 0
        self.measured = False


class PeakEwmaBalancer(Generic[K]):
    """Picks endpoints (any hashable key, e.g. ``(ip, port)``) and learns from their latencies."""

    __slots__ = ("_clock", "_rng", "_default_rtt", "_decay", "_penalty", "_max_entries", "_stats")

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: RandomSource | None = None,
        default_rtt: float = DEFAULT_RTT,
        decay: float = DECAY,
        failure_penalty: float = FAILURE_PENALTY,
        max_entries: int = 65536,
    ) -> None:
        if default_rtt <= 0 or decay <= 0 or failure_penalty <= 0:
            raise ValueError("default_rtt, decay and failure_penalty must be positive seconds")
        self._clock = clock
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._default_rtt = default_rtt
        self._decay = decay
        self._penalty = failure_penalty
        self._max_entries = max_entries
        self._stats: dict[K, _Estimate] = {}

    # ------------------------------------------------------------ reading

    def _decayed(self, est: _Estimate, now: float) -> float:
        elapsed = now - est.stamp
        if elapsed <= 0:
            return est.rtt
        return est.rtt * math.exp(-elapsed / self._decay)

    def cost(self, key: K) -> float:
        """Current cost of ``key``: decayed RTT estimate times (pending + 1)."""
        est = self._stats.get(key)
        if est is None:
            return self._default_rtt
        return self._decayed(est, self._clock()) * (est.pending + 1)

    def pending(self, key: K) -> int:
        est = self._stats.get(key)
        return est.pending if est is not None else 0

    def pick(self, endpoints: Sequence[K], *, exclude: Iterable[K] = ()) -> K | None:
        """P2C among ``endpoints`` not in ``exclude``; ``None`` when none is left."""
        excluded = set(exclude) if exclude else None
        candidates = [e for e in endpoints if e not in excluded] if excluded else endpoints
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        return a if self.cost(a) <= self.cost(b) else b

    # ------------------------------------------------------------ learning

    def _entry(self, key: K) -> _Estimate:
        est = self._stats.get(key)
        if est is None:
            if len(self._stats) >= self._max_entries:
                self._evict_idle()
            est = self._stats[key] = _Estimate(self._default_rtt, self._clock())
        return est

    def _evict_idle(self) -> None:
        """Forget endpoints with nothing open whose estimate has decayed to ~nothing."""
        now = self._clock()
        horizon = 5 * self._decay
        stale = [k for k, e in self._stats.items() if e.pending == 0 and now - e.stamp > horizon]
        for key in stale:
            del self._stats[key]

    def started(self, key: K) -> None:
        """A connection to ``key`` is being opened (or is open): it counts as load until ``finished``."""
        self._entry(key).pending += 1

    def finished(self, key: K) -> None:
        est = self._stats.get(key)
        if est is not None and est.pending > 0:
            est.pending -= 1

    def observe(self, key: K, rtt: float) -> None:
        """Feed one latency sample in seconds (peak-EWMA update)."""
        est = self._entry(key)
        now = self._clock()
        if rtt > est.rtt or not est.measured:
            est.rtt = rtt  # peak, or the first real sample replacing the default
            est.measured = True
        else:
            elapsed = max(0.0, now - est.stamp)
            weight = math.exp(-elapsed / self._decay)
            est.rtt = est.rtt * weight + rtt * (1.0 - weight)
        est.stamp = now

    def failed(self, key: K, *, elapsed: float = 0.0) -> None:
        """An attempt to ``key`` failed after ``elapsed`` seconds: record it as a very slow one."""
        self.observe(key, max(elapsed, self._penalty))
