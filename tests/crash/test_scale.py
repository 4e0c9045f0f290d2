"""Several orchestrator processes on one PostgreSQL database, an endpoint of two replicas.

Three ``dispatch server --db postgresql://...`` processes and two
application replicas (every call names both replicas' URLs) run a workload
of more than 5,000 calls of nested fan-outs. Every call must complete with
status OK, every root with the value computed without dispatch, and no
leaf may ever have run in two places at once. Then the same while one
orchestrator is killed with SIGKILL for good and a replica is killed and
restarted: the calls the dead orchestrator held run again once their lease
expires.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crash_app
import httpx
import msgpack  # type: ignore[import-untyped]
import pytest
from cluster import Cluster
from postgres_server import postgres_database

from dispatch import Status, _wire

# 44 roots of depth 2 and width 7: 44 * 114 = 5,016 calls.
SHAPE = {"CRASH_ROOTS": "44", "CRASH_DEPTH": "2", "CRASH_WIDTH": "7", "CRASH_LEAF_SECONDS": "0.01"}
ROOTS, DEPTH, WIDTH = 44, 2, 7
TOTAL = ROOTS * (2 + WIDTH * (2 + WIDTH * 2))
LEASE = 5.0


@pytest.fixture
def database() -> Iterator[str]:
    yield from postgres_database("dispatch_scale")


@pytest.fixture
def cluster(tmp_path: Path, database: str) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, database, orchestrators=3, apps=2, shape=SHAPE, lease=LEASE)
    try:
        yield cluster
    finally:
        cluster.stop()


def expected(depth: int, index: int) -> int:
    own = crash_app.leaf_value(depth, index)
    if depth == 0:
        return own
    return own + sum(expected(depth - 1, index * WIDTH + k) for k in range(WIDTH))


async def walk(cluster: Cluster, roots: dict[str, int]) -> list[dict[str, Any]]:
    """Every call of the workload, read through the API, from the roots down."""
    headers = {"Authorization": f"Bearer {cluster.keys.api_key}"}
    urls = [cluster.api(int(name.partition("-")[2])) for name in cluster.running("orchestrator")]
    calls: list[dict[str, Any]] = []
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:

        async def get(call_id: str) -> None:
            async with limit:
                response = await http.get(f"{random.choice(urls)}/v1/calls/{call_id}")
            response.raise_for_status()
            call: dict[str, Any] = msgpack.unpackb(response.content)
            calls.append(call)
            await asyncio.gather(*[get(child) for child in call["children"]])

        await asyncio.gather(*[get(call_id) for call_id in roots])
    return calls


def wait_for_roots(cluster: Cluster, roots: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(roots)
    while pending:
        pending = {call_id for call_id in pending if cluster.call(call_id)["state"] != "done"}
        assert time.monotonic() < deadline, f"{len(pending)} roots not done\n{cluster.logs()}"
        time.sleep(0.2)


def check(cluster: Cluster, roots: dict[str, int]) -> None:
    calls = asyncio.run(walk(cluster, roots))
    assert len(calls) == TOTAL
    assert len({call["id"] for call in calls}) == TOTAL
    failed = [c for c in calls if c["state"] != "done" or c["status"] != Status.OK.value]
    assert not failed, failed[:3]
    sealer = _wire.Sealer(cluster.keys.seal_key)
    by_id = {call["id"]: call for call in calls}
    for call_id, index in roots.items():
        assert _wire.decode_value(by_id[call_id]["output"], sealer) == expected(DEPTH, index)
    # No leaf ever ran in two places at once.
    runs = cluster.executions_of_leaves()
    assert len(runs) == ROOTS * (1 + WIDTH + WIDTH * WIDTH)
    for key, intervals in runs.items():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end, f"leaf {key} ran twice at once: {intervals}"


def test_three_orchestrators_two_replicas(cluster: Cluster) -> None:
    roots = cluster.start_all()
    wait_for_roots(cluster, roots, timeout=240)
    check(cluster, roots)
    # Both replicas took part.
    assert all(cluster.leaves_run_by(app) > 0 for app in ("app-0", "app-1"))


def test_an_orchestrator_killed_for_good_and_a_replica_restarted(cluster: Cluster) -> None:
    seed = int(os.environ.get("CRASH_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    roots = cluster.start_all()
    time.sleep(rng.uniform(0.5, 1.5))
    cluster.kill("orchestrator-1")
    time.sleep(rng.uniform(0.2, 1.0))
    cluster.kill("app-1")
    cluster.start("app-1")
    wait_for_roots(cluster, roots, timeout=240)
    check(cluster, roots)
