"""The orchestrator's Prometheus metrics, served at ``GET /metrics``.

- ``dispatch_calls_total{function,status}``: calls that finished, by final status.
- ``dispatch_attempts_total{function,status}``: attempts (runs of a function on
  its endpoint, failures to reach it included), by the status each reported.
- ``dispatch_attempt_duration_seconds{function}``: how long attempts took.
- ``dispatch_snapshot_bytes{function}``: sizes of the snapshots durable
  coroutines suspended with.
- ``dispatch_queue_depth{state}``: calls pending, running and waiting.
- ``dispatch_concurrency_limit{endpoint}``, ``dispatch_in_flight{endpoint}``:
  each endpoint's adaptive concurrency limit and its attempts in flight.

Statuses are the lower-case names of :class:`dispatch.Status` members, and
"cancelled". Counters and histograms are updated as attempts end; the gauges
are read when the metrics are scraped. Each orchestrator has a registry of its
own (several may live in one process), never the global one.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .._status import Status
from ._limiter import Limiter
from ._storage import PENDING, RUNNING, WAITING, Completion, Finish, status_name

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Seconds: up to the default attempt timeout (300 s)."""
SNAPSHOT_BUCKETS = tuple(float(1 << shift) for shift in range(8, 23, 2))
"""Bytes: 256, 1K, 4K, 16K, 64K, 256K, 1M, 4M."""
QUEUE_STATES = (PENDING, RUNNING, WAITING)


class Metrics:
    """One orchestrator's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.calls = Counter(
            "dispatch_calls",
            "Calls that finished in an attempt run by this orchestrator, by function and final "
            "status (a call cancelled while pending, or while running a plain function, ends "
            "without one: see the calls list).",
            ["function", "status"],
            registry=registry,
        )
        self.attempts = Counter(
            "dispatch_attempts",
            "Attempts (runs of a function on its endpoint), by function and status.",
            ["function", "status"],
            registry=registry,
        )
        self.durations = Histogram(
            "dispatch_attempt_duration_seconds",
            "How long attempts took, from claim to answer.",
            ["function"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.snapshots = Histogram(
            "dispatch_snapshot_bytes",
            "Sizes of the snapshots durable coroutines suspended with.",
            ["function"],
            buckets=SNAPSHOT_BUCKETS,
            registry=registry,
        )
        self.queue = Gauge(
            "dispatch_queue_depth",
            "Calls in each state (pending, running, waiting).",
            ["state"],
            registry=registry,
        )
        self.limits = Gauge(
            "dispatch_concurrency_limit",
            "The adaptive limit on an endpoint's attempts in flight.",
            ["endpoint"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "dispatch_in_flight",
            "An endpoint's attempts in flight.",
            ["endpoint"],
            registry=registry,
        )

    def attempt(
        self,
        function: str,
        status: int,
        duration: float,
        *,
        snapshot_size: int | None = None,
        finished: bool = False,
    ) -> None:
        """An attempt of a call of ``function`` ended with ``status`` after
        ``duration`` seconds; it suspended with a snapshot of ``snapshot_size``
        bytes, or ``finished`` the call."""
        name = status_name(status) or Status.UNSPECIFIED.name.lower()
        self.attempts.labels(function, name).inc()
        self.durations.labels(function).observe(max(0.0, duration))
        if snapshot_size is not None:
            self.snapshots.labels(function).observe(snapshot_size)
        if finished:
            self.calls.labels(function, name).inc()

    def completed(self, completion: Completion, applied: bool = True) -> None:
        """The attempt ``completion`` describes; it finished its call if its
        transition is a :class:`Finish` that storage ``applied``."""
        self.attempt(
            completion.call.function,
            completion.status,
            completion.duration,
            snapshot_size=completion.snapshot_size,
            finished=applied and isinstance(completion.transition, Finish),
        )

    def render(self, counts: Mapping[str, int], limiters: Mapping[str, Limiter]) -> bytes:
        """The metrics in Prometheus' text format, with the gauges set from
        ``counts`` (calls per state, from ``Storage.counts``) and ``limiters``
        (per endpoint)."""
        for state in QUEUE_STATES:
            self.queue.labels(state).set(counts.get(state, 0))
        # Set afresh: exactly the endpoints the engine has limiters for.
        self.limits.clear()
        self.in_flight.clear()
        for endpoint, limiter in list(limiters.items()):
            self.limits.labels(endpoint).set(limiter.limit)
            self.in_flight.labels(endpoint).set(limiter.in_flight)
        return generate_latest(self.registry)
