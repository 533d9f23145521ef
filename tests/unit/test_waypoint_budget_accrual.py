"""The retry budget and failure accrual (waypoint.budget, waypoint.accrual) on an injected clock."""
from __future__ import annotations

import random

import pytest

from waypoint.accrual import AccrualSettings, FailureAccrual
from waypoint.budget import BudgetSettings, RetryBudget, RetryBudgets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def allowed_retries(budget: RetryBudget) -> int:
    n = 0
    while budget.withdraw():
        n += 1
        assert n < 100_000, "the budget never runs out"
    return n


BUDGETS = [
    # (settings, requests before retrying, retries allowed)
    pytest.param(BudgetSettings(), 0, 100, id="linkerd-defaults-reserve-only"),
    pytest.param(BudgetSettings(), 100, 120, id="linkerd-defaults-100-requests"),
    pytest.param(BudgetSettings(min_retries_per_second=0), 100, 20, id="ratio-only"),
    pytest.param(BudgetSettings(min_retries_per_second=1), 100, 30, id="small-reserve"),
    pytest.param(BudgetSettings(retry_ratio=0, min_retries_per_second=0), 1000, 0, id="no-retries"),
    pytest.param(BudgetSettings(retry_ratio=0.5, min_retries_per_second=0, ttl=2), 10, 5, id="half"),
]


@pytest.mark.parametrize(("settings", "requests", "retries"), BUDGETS)
def test_retries_within_a_window(settings: BudgetSettings, requests: int, retries: int) -> None:
    budget = RetryBudget(settings=settings, clock=Clock())
    for _ in range(requests):
        budget.deposit()
    assert allowed_retries(budget) == retries


def test_the_budget_refills_as_the_window_moves_on() -> None:
    clock = Clock()
    budget = RetryBudget(settings=BudgetSettings(min_retries_per_second=1, retry_ratio=0.2, ttl=10), clock=clock)
    for _ in range(50):
        budget.deposit()
    assert allowed_retries(budget) == 20  # reserve 10 + 20% of 50
    clock.now += 5
    assert allowed_retries(budget) == 0  # same window: spent
    clock.now += 5.01
    assert allowed_retries(budget) == 10  # deposits and withdrawals expired: the reserve is back
    clock.now += 100
    for _ in range(10):
        budget.deposit()
    assert budget.balance == pytest.approx(12)


def test_budgets_are_per_route() -> None:
    budgets = RetryBudgets(settings=BudgetSettings(min_retries_per_second=0.1, retry_ratio=0, ttl=10), clock=Clock())
    assert budgets.for_route("demo/a").withdraw()
    assert not budgets.for_route("demo/a").withdraw()
    assert budgets.for_route("demo/b").withdraw()


@pytest.mark.parametrize("bad", [dict(retry_ratio=-1), dict(ttl=0), dict(min_retries_per_second=-0.1)], ids=str)
def test_bad_budget_settings(bad: dict) -> None:
    with pytest.raises(ValueError, match="retry budget"):
        BudgetSettings(**bad)


# ------------------------------------------------------------------- accrual

NO_JITTER = AccrualSettings(jitter=0.0)

# Steps: ("fail"|"ok"|"start", key) or ("wait", seconds) or ("usable", key, expected)
ACCRUAL = [
    pytest.param(NO_JITTER, [("fail", "a")] * 6 + [("usable", "a", True)], id="six-failures-keep-it"),
    pytest.param(NO_JITTER, [("fail", "a")] * 7 + [("usable", "a", False), ("usable", "b", True)],
                 id="seventh-failure-ejects"),
    pytest.param(NO_JITTER, [("fail", "a")] * 6 + [("ok", "a")] + [("fail", "a")] * 6 + [("usable", "a", True)],
                 id="a-success-resets-the-count"),
    pytest.param(NO_JITTER, [("fail", "a")] * 7 + [("wait", 0.99), ("usable", "a", False), ("wait", 0.02),
                                                   ("usable", "a", True)], id="penalty-one-second"),
    pytest.param(NO_JITTER, [("fail", "a")] * 7 + [("wait", 1.0), ("start", "a"), ("usable", "a", False)],
                 id="one-probe-at-a-time"),
    pytest.param(NO_JITTER, [("fail", "a")] * 7 + [("wait", 1.0), ("start", "a"), ("ok", "a"),
                                                   ("usable", "a", True), ("fail", "a"), ("usable", "a", True)],
                 id="probe-success-restores"),
    pytest.param(NO_JITTER, [("fail", "a")] * 7 + [("wait", 1.0), ("start", "a"), ("fail", "a"),
                                                   ("wait", 1.99), ("usable", "a", False), ("wait", 0.02),
                                                   ("usable", "a", True)], id="probe-failure-doubles"),
    pytest.param(NO_JITTER, [("fail", "a")] * 7 + [("wait", 1.0), ("start", "a"), ("cancel", "a"),
                                                   ("usable", "a", True)], id="cancelled-probe-may-be-resent"),
    pytest.param(AccrualSettings(failures=1, min_penalty=1, max_penalty=4, jitter=0),
                 [("fail", "a"), ("wait", 1), ("start", "a"), ("fail", "a"), ("wait", 2), ("start", "a"),
                  ("fail", "a"), ("wait", 4), ("start", "a"), ("fail", "a"), ("wait", 3.99), ("usable", "a", False),
                  ("wait", 0.01), ("usable", "a", True)], id="penalty-capped"),
    pytest.param(NO_JITTER, [("fail", "a")] * 7 + [("fail", "a")] * 5 + [("wait", 1.0), ("usable", "a", True)],
                 id="failures-while-ejected-do-not-extend"),
]


@pytest.mark.parametrize(("settings", "steps"), ACCRUAL)
def test_failure_accrual(settings: AccrualSettings, steps: list) -> None:
    clock = Clock()
    accrual: FailureAccrual[str] = FailureAccrual(settings=settings, clock=clock, rng=random.Random(1))
    for step in steps:
        op = step[0]
        if op == "fail":
            accrual.failure(step[1])
        elif op == "ok":
            accrual.success(step[1])
        elif op == "start":
            accrual.start(step[1])
        elif op == "cancel":
            accrual.cancel(step[1])
        elif op == "wait":
            clock.now += step[1]
        else:
            assert accrual.usable(step[1]) is step[2], step


def test_jitter_adds_up_to_half_the_penalty() -> None:
    penalties = []
    for seed in range(200):
        clock = Clock()
        accrual: FailureAccrual[str] = FailureAccrual(settings=AccrualSettings(failures=1), clock=clock,
                                                      rng=random.Random(seed))
        accrual.failure("a")
        lo, hi = 0.0, 2.0
        while hi - lo > 0.001:
            mid = (lo + hi) / 2
            clock.now = 1000.0 + mid
            lo, hi = (mid, hi) if not accrual.usable("a") else (lo, mid)
        penalties.append(hi)
    assert 1.0 <= min(penalties) < 1.05
    assert 1.45 < max(penalties) <= 1.5
