"""Adaptive concurrency per endpoint (AIMD, with a slow start).

Each status says whether the endpoint is coping (``Status.concurrency`` is
"increase": OK, PERMANENT_ERROR...) or struggling ("decrease": TIMEOUT,
THROTTLED, TEMPORARY_ERROR, the network errors). The limit on calls in
flight grows by one per success until the first sign of struggle (slow
start), then by one per window of successes (additive increase); it halves
on struggle (multiplicative decrease), at most once per cooldown so that a
burst of failures from one overload is one decrease, not ten.

Its methods may be called from any thread (an embedded application's
dispatches take room with :meth:`Limiter.take`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Limiter:
    """How many calls an endpoint may have in flight."""

    def __init__(
        self,
        initial: float = 16.0,
        minimum: float = 1.0,
        maximum: float = 100.0,
        decrease: float = 0.5,
        cooldown: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = initial
        self.minimum = minimum
        self.maximum = maximum
        self.decrease = decrease
        self.cooldown = cooldown
        self.clock = clock
        self.in_flight = 0
        self.slow_start = True
        self._last_decrease = float("-inf")
        self._lock = threading.Lock()

    def available(self) -> int:
        """How many more calls may start now."""
        return max(0, int(self.limit) - self.in_flight)

    def acquire(self, count: int = 1) -> None:
        with self._lock:
            self.in_flight += count

    def take(self, wanted: int) -> int:
        """Acquire up to ``wanted`` calls, as many as there is room for; how many."""
        with self._lock:
            taken = min(wanted, max(0, int(self.limit) - self.in_flight))
            self.in_flight += taken
            return taken

    def give_back(self, count: int) -> None:
        """Calls acquired that did not start: no verdict on the endpoint."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - count)

    def release(self, increase: bool) -> None:
        """A call finished; ``increase`` is its status's verdict on the endpoint."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            if increase:
                step = 1.0 if self.slow_start else 1.0 / self.limit
                self.limit = min(self.maximum, self.limit + step)
                return
            now = self.clock()
            self.slow_start = False
            if now - self._last_decrease >= self.cooldown:
                self._last_decrease = now
                self.limit = max(self.minimum, self.limit * self.decrease)
