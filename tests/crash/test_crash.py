"""Nothing accepted is lost, and every result is recorded once, whatever process dies when.

A standalone orchestrator (``dispatch server``, SQLite) and the application
(``crash_app.py`` under ``dispatch.run``, connected to it) run as real
processes over real sockets. While the application's nested fan-outs run,
one of them is killed with SIGKILL at random moments and restarted, several
times. At the end every call must be done with status OK, every child's
result must have been recorded once for its parent, and every root must
return the value computed without dispatch.

The moments are random; the seed is in every failure message, and
``CRASH_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import crash_app
import pytest
from cluster import Cluster

from dispatch import Status, _wire

KILLS = 5
TOTAL = crash_app.ROOTS * crash_app.calls_per_root()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, str(tmp_path / "dispatch.db"))
    try:
        yield cluster
    finally:
        cluster.stop()


def read(cluster: Cluster) -> contextlib.closing[sqlite3.Connection]:
    """The database, read only, as any client may read it while the orchestrator runs."""
    return contextlib.closing(sqlite3.connect(f"file:{cluster.database}?mode=ro", uri=True))


def progress(cluster: Cluster) -> tuple[int, int]:
    """Calls recorded, and how many of them are done."""
    with read(cluster) as db:
        total, done = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(state = 'done'), 0) FROM calls"
        ).fetchone()
    return total, done


@pytest.mark.parametrize("victim", ["orchestrator-0", "app-0"])
def test_killed_and_restarted_at_random_moments(cluster: Cluster, victim: str) -> None:
    seed = int(os.environ.get("CRASH_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    context = f"CRASH_SEED={seed}"
    roots = cluster.start_all()

    for kill in range(KILLS):
        time.sleep(rng.uniform(0.05, 0.4))
        # Each kill must land while the work runs, or this proves little.
        assert progress(cluster)[1] < TOTAL, f"done before kill {kill + 1} ({context})"
        cluster.kill(victim)
        cluster.start(victim)

    deadline = time.monotonic() + 120
    while progress(cluster) != (TOTAL, TOTAL):
        assert time.monotonic() < deadline, (
            f"not done: {progress(cluster)} of {TOTAL} ({context})\n{cluster.logs()}"
        )
        time.sleep(0.05)

    sealer = _wire.Sealer(cluster.keys.seal_key)
    with read(cluster) as db:
        failed = db.execute(
            "SELECT id, function, status FROM calls WHERE status != ? OR output IS NULL",
            (Status.OK.value,),
        ).fetchall()
        assert not failed, f"calls not OK ({context}): {failed[:5]}"
        # One result per child, each delivered to its parent.
        children, results, delivered = db.execute(
            "SELECT (SELECT COUNT(*) FROM calls WHERE parent_id IS NOT NULL), "
            "(SELECT COUNT(DISTINCT child_id) FROM results), "
            "(SELECT COUNT(*) FROM results WHERE delivered = 1)"
        ).fetchone()
        assert children == results == delivered == TOTAL - len(roots), context
        for call_id, index in roots.items():
            (output,) = db.execute("SELECT output FROM calls WHERE id = ?", (call_id,)).fetchone()
            value = _wire.decode_value(output, sealer)
            assert value == crash_app.expected(crash_app.DEPTH, index), context
