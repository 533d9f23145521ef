"""Failure accrual (Linkerd's ``consecutive`` policy): endpoints that keep failing rest, then one probe decides.

After ``failures`` consecutive failures (connect failures and 5xx answers) an endpoint is ejected
for a penalty of ``min_penalty`` seconds, doubled after each failed probe up to ``max_penalty``,
plus up to ``jitter`` × the penalty at random (Linkerd: 7 failures, 1 s → 60 s, jitter 0.5). Once
the penalty has passed, ``usable`` lets exactly one request through (``start`` marks it as the
probe); its success restores the endpoint, its failure ejects it again for longer. Pure: clock and
random source are injected; only endpoints with failures are remembered.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class AccrualSettings:
    failures: int = 7
    """consecutive failures that eject an endpoint"""
    min_penalty: float = 1.0
    """seconds of the first ejection"""
    max_penalty: float = 60.0
    """cap of the doubling penalty, seconds"""
    jitter: float = 0.5
    """up to this fraction of the penalty is added at random, so ejected endpoints are not probed in step"""

    def __post_init__(self) -> None:
        if self.failures < 1 or self.min_penalty <= 0 or self.max_penalty < self.min_penalty or self.jitter < 0:
            raise ValueError(f"failure accrual {self}: need failures >= 1, 0 < min_penalty <= max_penalty, jitter >= 0")


class _State:
    __slots__ = ("consecutive", "ejections", "until", "probing")

    def __init__(self) -> None:
        self.consecutive = 0
        self.ejections = 0  # 0: not ejected; n: ejected for the n-th time in a row
        self.until = 0.0
        self.probing = False


class FailureAccrual(Generic[K]):
    __slots__ = ("_settings", "_clock", "_rng", "_states")

    def __init__(self, *, settings: AccrualSettings, clock: Callable[[], float],
                 rng: random.Random | None = None) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._states: dict[K, _State] = {}

    def usable(self, key: K) -> bool:
        """May a request go to ``key`` now (healthy, or its penalty is over and no probe is out)?"""
        state = self._states.get(key)
        if state is None or not state.ejections:
            return True
        return not state.probing and self._clock() >= state.until

    def ejected(self, key: K) -> bool:
        state = self._states.get(key)
        return state is not None and state.ejections > 0

    def start(self, key: K) -> None:
        """A request goes to ``key``: when it is ejected, this request is its one probe."""
        state = self._states.get(key)
        if state is not None and state.ejections:
            state.probing = True

    def success(self, key: K) -> None:
        self._states.pop(key, None)

    def failure(self, key: K) -> None:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
        if state.ejections:
            if state.probing:  # the probe failed: rest longer
                state.probing = False
                self._eject(state)
            return
        state.consecutive += 1
        if state.consecutive >= self._settings.failures:
            self._eject(state)

    def cancel(self, key: K) -> None:
        """A request to ``key`` ended without a verdict (cancelled): a probe may be sent again."""
        state = self._states.get(key)
        if state is not None:
            state.probing = False

    def _eject(self, state: _State) -> None:
        s = self._settings
        base = min(s.min_penalty * 2 ** state.ejections, s.max_penalty)
        state.ejections += 1
        state.until = self._clock() + min(base + base * s.jitter * self._rng.random(), s.max_penalty)
