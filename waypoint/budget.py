"""The retry budget (Linkerd's, tower's ``TpsBudget``): retries may add a fraction of the requests.

Within any ``ttl`` window a route may retry at most ``retry_ratio`` × its requests plus
``min_retries_per_second`` × ``ttl`` (a reserve for routes with little traffic). Each request
deposits ``retry_ratio``, each retry withdraws 1 (in thousandths, as integers, so that
100 requests at 20% allow exactly 20 retries); deposits and withdrawals live in ten buckets
that expire as the window moves, so a burst of failures cannot turn into a retry storm and the
budget refills as its withdrawals age out. Pure: the clock is injected.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

_BUCKETS = 10
_SCALE = 1000  # tokens per retry


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    retry_ratio: float = 0.2
    """retries per request the budget adds (Linkerd: 20%)"""
    min_retries_per_second: float = 10.0
    """retries always allowed, so a route with few requests can still retry (Linkerd: 10/s)"""
    ttl: float = 10.0
    """seconds a deposit or withdrawal counts (Linkerd: 10 s)"""

    def __post_init__(self) -> None:
        if self.retry_ratio < 0 or self.min_retries_per_second < 0 or self.ttl <= 0:
            raise ValueError(f"retry budget {self}: ratio and minimum must be >= 0 and ttl > 0 seconds")


class RetryBudget:
    """One route's budget (see the module docstring)."""

    __slots__ = ("_clock", "_buckets", "_index", "_bucket_start", "_width", "_reserve", "_deposit")

    def __init__(self, *, settings: BudgetSettings, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets = [0] * _BUCKETS
        self._index = 0
        self._width = settings.ttl / _BUCKETS
        self._bucket_start = clock()
        self._reserve = round(settings.min_retries_per_second * settings.ttl * _SCALE)
        self._deposit = round(settings.retry_ratio * _SCALE)

    def _rotate(self) -> None:
        now = self._clock()
        elapsed = int((now - self._bucket_start) // self._width)
        if elapsed <= 0:
            return
        for _ in range(min(elapsed, _BUCKETS)):
            self._index = (self._index + 1) % _BUCKETS
            self._buckets[self._index] = 0
        self._bucket_start += elapsed * self._width

    def deposit(self) -> None:
        """One request was made on the route."""
        self._rotate()
        self._buckets[self._index] += self._deposit

    def withdraw(self) -> bool:
        """May one retry be made now? Takes it from the budget when it may."""
        self._rotate()
        if sum(self._buckets) + self._reserve < _SCALE:
            return False
        self._buckets[self._index] -= _SCALE
        return True

    @property
    def balance(self) -> float:
        """Retries the budget would allow now."""
        self._rotate()
        return (sum(self._buckets) + self._reserve) / _SCALE


class RetryBudgets:
    """A budget per route (``namespace/name``, or the service for the default rule), made on first use."""

    __slots__ = ("_settings", "_clock", "_budgets")

    def __init__(self, *, settings: BudgetSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._budgets: dict[str, RetryBudget] = {}

    def for_route(self, key: str) -> RetryBudget:
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = RetryBudget(settings=self._settings, clock=self._clock)
        return budget
