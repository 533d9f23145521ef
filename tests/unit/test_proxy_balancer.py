"""P2C over peak-EWMA: deterministic with a fake clock and a seeded RNG."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from node_agent.proxy.balancer import DEFAULT_RTT, PeakEwmaBalancer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _balancer(clock: FakeClock, seed: int = 7) -> PeakEwmaBalancer[str]:
    return PeakEwmaBalancer(clock=clock, rng=random.Random(seed))


def test_one_endpoint_is_always_picked() -> None:
    lb = _balancer(FakeClock())
    lb.failed("a")
    assert {lb.pick(["a"]) for _ in range(10)} == {"a"}


def test_nothing_to_pick() -> None:
    lb = _balancer(FakeClock())
    assert lb.pick([]) is None
    assert lb.pick(["a", "b"], exclude=["a", "b"]) is None
    assert lb.pick(["a", "b"], exclude=["a"]) == "b"


def test_unmeasured_endpoint_costs_the_default() -> None:
    lb = _balancer(FakeClock())
    assert lb.cost("x") == pytest.approx(DEFAULT_RTT)


def test_prefers_the_faster_endpoint() -> None:
    clock = FakeClock()
    lb = _balancer(clock)
    for _ in range(5):
        lb.observe("fast", 0.001)
        lb.observe("slow", 0.200)
        clock.now += 0.1
    picks = Counter(lb.pick(["fast", "slow"]) for _ in range(200))
    assert picks["fast"] == 200


def test_pending_connections_count_as_load() -> None:
    clock = FakeClock()
    lb = _balancer(clock)
    lb.observe("a", 0.010)
    lb.observe("b", 0.015)
    assert lb.pick(["a", "b"]) == "a"
    for _ in range(3):
        lb.started("a")
    assert lb.cost("a") == pytest.approx(0.040)
    assert lb.pick(["a", "b"]) == "b"
    for _ in range(3):
        lb.finished("a")
    assert lb.pick(["a", "b"]) == "a"


def test_peak_is_taken_at_once_and_lower_samples_blend_in() -> None:
    clock = FakeClock()
    lb = _balancer(clock)
    lb.observe("a", 0.5)
    assert lb.cost("a") == pytest.approx(0.5)
    clock.now += 10.0  # one decay period: the old value keeps weight e^-1
    lb.observe("a", 0.1)
    expected = 0.5 * 0.36787944117 + 0.1 * (1 - 0.36787944117)
    assert lb.cost("a") == pytest.approx(expected)


def test_decay_brings_a_penalised_endpoint_back() -> None:
    clock = FakeClock()
    lb = _balancer(clock)
    lb.observe("good", 0.020)
    lb.failed("bad")
    assert Counter(lb.pick(["good", "bad"]) for _ in range(50))["bad"] == 0
    clock.now += 60.0  # six decay periods: the penalty has decayed below good's fresh estimate
    lb.observe("good", 0.020)
    assert lb.cost("bad") < lb.cost("good")
    assert lb.pick(["good", "bad"]) == "bad"


def test_p2c_spreads_over_equal_endpoints() -> None:
    lb = _balancer(FakeClock())
    picks = Counter(lb.pick(["a", "b", "c", "d"]) for _ in range(4000))
    assert set(picks) == {"a", "b", "c", "d"}
    assert min(picks.values()) > 700


def test_idle_entries_are_forgotten_when_full() -> None:
    clock = FakeClock()
    lb = PeakEwmaBalancer(clock=clock, rng=random.Random(1), max_entries=2)
    lb.observe("a", 0.01)
    lb.started("b")
    clock.now += 100.0
    lb.observe("c", 0.01)  # "a" is idle and stale: evicted; "b" has a connection open: kept
    assert lb.pending("b") == 1
    assert lb.cost("a") == pytest.approx(DEFAULT_RTT)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        PeakEwmaBalancer(decay=0)
