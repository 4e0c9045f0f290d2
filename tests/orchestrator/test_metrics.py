"""Prometheus metrics at ``GET /metrics``: a workload run over HTTP, then scraped."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from dispatch import Dispatch, Status, _wire
from dispatch.orchestrator import Orchestrator, SQLiteStorage
from dispatch.orchestrator._api import api_app
from dispatch.orchestrator._metrics import Metrics
from dispatch.orchestrator._storage import (
    CANCELLED,
    DONE,
    CallRecord,
    Claimed,
    Completion,
    Finish,
    Retry,
    status_name,
)

from . import functions
from .harness import FAST, Env, Keys, finished, served

pytestmark = pytest.mark.timeout(60)

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels (sorted)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples called ``name``, by the values of ``labels``."""
    found = {}
    for (sample, pairs), value in samples.items():
        if sample == name:
            values = dict(pairs)
            found[tuple(values[label] for label in labels)] = value
    return found


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return parse(response.text)


async def tree(storage: SQLiteStorage, root: str) -> list[CallRecord]:
    """``root``'s call and every call below it, each once done."""
    records = []
    pending = [root]
    deadline = time.monotonic() + 20
    while pending:
        record = await storage.get(pending[-1])
        assert record is not None
        if record.state != DONE:
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.01)
            continue
        pending.pop()
        records.append(record)
        pending.extend(record.children)
    return records


async def test_a_scrape_counts_what_ran(tmp_path: Path) -> None:
    keys = Keys()
    endpoint = Dispatch(
        registry=functions.registry, verification_key=keys.public, seal_keys=[keys.seal]
    )
    storage = SQLiteStorage(str(tmp_path / "dispatch.db"))
    orchestrator = Orchestrator(storage, signing_key=keys.private, api_key=KEY, policy=FAST)
    run = uuid.uuid4().hex  # the keys of ``fails``' tries, new to this process
    workload: list[tuple[str, tuple[Any, ...]]] = [
        ("add", (1, 2)),
        ("add", (3, 4)),
        ("fails", ("PERMANENT_ERROR", 1, f"{run}-p1")),
        ("fails", ("PERMANENT_ERROR", 1, f"{run}-p2")),
        ("fails", ("TEMPORARY_ERROR", 1, f"{run}-t")),  # then OK
        ("two_steps", (1,)),  # suspends twice
        ("fan_out", (2,)),
        ("no_such_function", ()),
    ]
    async with served(endpoint) as app_url, served(orchestrator, lifespan="on") as api_url:
        url = f"{app_url}/dispatch"
        calls = tuple(
            _wire.Call(
                function=function,
                input=_wire.encode_arguments(args, {}, keys.sealer),
                endpoint=url,
            )
            for function, args in workload
        )
        async with httpx.AsyncClient(base_url=api_url) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                refused = await http.get("/metrics", headers=headers)
                assert refused.status_code == 401, refused.text
                assert "API key" in refused.text

            response = await http.post(
                "/v1/dispatch",
                content=_wire.DispatchRequest(calls=calls).to_msgpack(),
                headers=AUTH,
            )
            assert response.status_code == 200, response.text
            roots = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
            records = [record for root in roots for record in await tree(storage, root)]

            # What storage says ran: every call's final status, every attempt's.
            calls_done = Counter(
                (r.function, status_name(r.status)) for r in records if r.status is not None
            )
            attempts = Counter(
                (r.function, status_name(a.status))
                for r in records
                for a in finished(r)
                if a.status is not None
            )
            snapshots = Counter(
                r.function for r in records for a in finished(r) if a.snapshot_size is not None
            )
            assert calls_done[("add", "ok")] == 2 + 2 + 4  # roots, two_steps's, fan_out's
            assert calls_done[("fails", "permanent_error")] == 2
            assert calls_done[("fails", "ok")] == 1
            assert calls_done[("no_such_function", "not_found")] == 1
            assert attempts[("fails", "temporary_error")] == 1
            assert attempts[("two_steps", "ok")] == 3  # started, resumed, resumed
            assert snapshots["two_steps"] == 2 and snapshots["fan_out"] >= 1

            # The engine counts an attempt once storage has its answer: the
            # last may land just after its call reads as done.
            deadline = time.monotonic() + 10
            while True:
                samples = await scrape(http)
                counted = by(samples, "dispatch_calls_total", "function", "status")
                if sum(counted.values()) == len(records) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)

    assert counted == {key: float(n) for key, n in calls_done.items()}
    assert by(samples, "dispatch_attempts_total", "function", "status") == {
        key: float(n) for key, n in attempts.items()
    }
    per_function = Counter[str]()
    for (function, _), count in attempts.items():
        per_function[function] += count
    durations = by(samples, "dispatch_attempt_duration_seconds_count", "function")
    assert durations == {(f,): float(n) for f, n in per_function.items()}
    duration_sums = by(samples, "dispatch_attempt_duration_seconds_sum", "function")
    assert all(total > 0 for total in duration_sums.values()), duration_sums

    sizes = by(samples, "dispatch_snapshot_bytes_count", "function")
    assert sizes == {(f,): float(n) for f, n in snapshots.items()}
    assert sizes[("two_steps",)] > 0
    assert by(samples, "dispatch_snapshot_bytes_sum", "function")[("two_steps",)] > 0
    buckets = by(samples, "dispatch_snapshot_bytes_bucket", "function", "le")
    assert sorted(float(le) for f, le in buckets if f == "two_steps") == [
        *(float(1 << shift) for shift in range(8, 23, 2)),
        float("inf"),
    ]
    assert buckets[("two_steps", "+Inf")] == sizes[("two_steps",)]

    assert by(samples, "dispatch_queue_depth", "state") == {
        ("pending",): 0.0,
        ("running",): 0.0,
        ("waiting",): 0.0,
    }
    limit = orchestrator.engine.limiters[url].limit
    assert by(samples, "dispatch_concurrency_limit", "endpoint") == {(url,): limit}
    assert limit >= 1
    assert by(samples, "dispatch_in_flight", "endpoint") == {(url,): 0.0}


async def test_queue_depth_is_read_when_scraped() -> None:
    """Calls waiting on their children, and the children running, as a scrape sees them."""
    async with Env() as env:
        transport = httpx.ASGITransport(app=api_app(env.engine, KEY))
        async with httpx.AsyncClient(transport=transport, base_url="http://o.test") as http:
            parent = await env.submit("waits_on_naps", 0.5)
            await env.until(parent, lambda record: record.state == "waiting")
            samples = await scrape(http)
            depth = by(samples, "dispatch_queue_depth", "state")
            assert depth[("waiting",)] == 1.0
            assert depth[("pending",)] + depth[("running",)] == 2.0
            await env.done(parent)
            samples = await scrape(http)
            assert set(by(samples, "dispatch_queue_depth", "state").values()) == {0.0}


def test_each_metrics_has_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.attempt("f", Status.OK.value, 0.01, finished=True)
    first.attempt("f", CANCELLED, 0.02, finished=True)
    first.attempt("f", 99, 0.02)  # not a status of this version
    samples = parse(first.render({}, {}).decode())
    assert by(samples, "dispatch_calls_total", "function", "status") == {
        ("f", "ok"): 1.0,
        ("f", "cancelled"): 1.0,
    }
    assert by(samples, "dispatch_attempts_total", "function", "status") == {
        ("f", "ok"): 1.0,
        ("f", "cancelled"): 1.0,
        ("f", "unspecified"): 1.0,
    }
    assert by(samples, "dispatch_queue_depth", "state") == {
        ("pending",): 0.0,
        ("running",): 0.0,
        ("waiting",): 0.0,
    }
    assert by(parse(second.render({}, {}).decode()), "dispatch_calls_total") == {}


def test_a_call_finishes_only_with_a_finish_storage_applied() -> None:
    call = cast(Claimed, SimpleNamespace(function="f"))  # all the metrics read of it
    metrics = Metrics()
    done = Finish(Status.OK.value, output=b"\xc0")
    for transition, applied in ((done, True), (done, False), (Retry(due_at=1.0, status=6), True)):
        metrics.completed(
            Completion(
                call=call,
                owner="o",
                transition=transition,
                now=1.0,
                duration=0.5,
                status=Status.OK.value if transition is done else 6,
            ),
            applied=applied,
        )
    samples = parse(metrics.render({}, {}).decode())
    assert by(samples, "dispatch_calls_total", "function", "status") == {("f", "ok"): 1.0}
    assert by(samples, "dispatch_attempts_total", "function", "status") == {
        ("f", "ok"): 2.0,
        ("f", "temporary_error"): 1.0,
    }
    assert by(samples, "dispatch_attempt_duration_seconds_sum", "function") == {("f",): 1.5}
