"""The AIMD limiter of an endpoint's concurrency, on a clock the tests move."""

from __future__ import annotations

import pytest

from dispatch.orchestrator import Limiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(**options: float) -> tuple[Limiter, Clock]:
    clock = Clock()
    return Limiter(clock=clock, **options), clock


def test_slow_start_adds_one_per_success() -> None:
    limits, _ = limiter(initial=4)
    seen = []
    for _ in range(4):
        limits.release(increase=True)
        seen.append(limits.limit)
    assert seen == [5, 6, 7, 8]
    assert limits.slow_start


def test_the_first_struggle_halves_and_ends_slow_start() -> None:
    limits, _ = limiter(initial=16)
    limits.release(increase=False)
    assert (limits.limit, limits.slow_start) == (8, False)


def test_additive_increase_adds_one_per_window_of_successes() -> None:
    limits, _ = limiter(initial=16)
    limits.release(increase=False)  # 8, out of slow start
    for _ in range(8):
        limits.release(increase=True)
    assert 8.9 < limits.limit < 9.0  # 8 steps of 1/limit, the limit growing meanwhile
    for _ in range(9):
        limits.release(increase=True)
    assert 9.9 < limits.limit < 10.0
    assert limits.available() == 9


def test_struggles_within_the_cooldown_halve_once() -> None:
    limits, clock = limiter(initial=64, cooldown=0.25)
    for _ in range(10):  # a burst of failures from one overload
        limits.release(increase=False)
    assert limits.limit == 32
    clock.now += 0.24
    limits.release(increase=False)
    assert limits.limit == 32
    clock.now += 0.01
    limits.release(increase=False)
    assert limits.limit == 16
    clock.now += 0.25
    limits.release(increase=False)
    assert limits.limit == 8


def test_the_limit_stays_between_floor_and_ceiling() -> None:
    limits, clock = limiter(initial=4, minimum=2, maximum=6, cooldown=0.0)
    for _ in range(5):
        limits.release(increase=False)
        clock.now += 1
    assert limits.limit == 2
    for _ in range(100):
        limits.release(increase=True)
    assert limits.limit == 6
    fresh, _ = limiter(initial=5, maximum=7)
    for _ in range(5):
        fresh.release(increase=True)
    assert (fresh.limit, fresh.slow_start) == (7, True)


def test_available_counts_calls_in_flight() -> None:
    limits, _ = limiter(initial=3.9)  # whole calls only
    assert limits.available() == 3
    limits.acquire(2)
    assert limits.available() == 1
    limits.acquire()
    assert (limits.available(), limits.in_flight) == (0, 3)
    limits.acquire()  # more than allowed (the limit fell meanwhile): never negative
    assert limits.available() == 0
    for _ in range(6):
        limits.release(increase=False)
    assert limits.in_flight == 0


@pytest.mark.parametrize("decrease", [0.5, 0.75])
def test_the_decrease_factor(decrease: float) -> None:
    limits, _ = limiter(initial=40, decrease=decrease)
    limits.release(increase=False)
    assert limits.limit == 40 * decrease
