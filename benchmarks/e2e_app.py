"""The application measured by end_to_end.py: one shape per run.

    python benchmarks/e2e_app.py SHAPE

Runs under ``dispatch.run`` (the embedded default unless DISPATCH_API_URL
is set). ``main`` starts the shape's calls, waits until the orchestrator has
recorded every call as done (read from its database), prints one JSON line
with the elapsed time and the peak memory of the process, and stops it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dispatch

SHAPES = ("one_by_one", "batch", "gather", "sequential")
N = {"one_by_one": 500, "batch": 500, "gather": 100, "sequential": 50}


@dispatch.function
def step(i: int) -> int:
    return i + 1


@dispatch.function
async def fan_out(n: int) -> int:
    return sum(await dispatch.gather(*[step(i) for i in range(n)]))


@dispatch.function
async def chain(n: int) -> int:
    total = 0
    for i in range(n):
        total += await step(i)
    return total


def wait_until_done(database: str, ids: list[str], timeout: float = 120.0) -> None:
    """Until the orchestrator has recorded the calls ``ids`` done (their
    descendants finish first), reading its database (a SQLite file or a
    PostgreSQL URL) as any client could: one lookup by primary key per poll,
    so as not to slow down what is measured."""
    connection: Any
    if database.startswith("postgresql://"):
        import psycopg

        connection = psycopg.connect(database, autocommit=True)
        query = "SELECT state FROM calls WHERE id = %s"
        interval = 0.005  # each poll costs the server a query: not too many
    else:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        query = "SELECT state FROM calls WHERE id = ?"
        interval = 0.0005
    deadline = time.monotonic() + timeout
    waiting = iter(ids)
    call_id = next(waiting, None)
    try:
        while call_id is not None:
            row = connection.execute(query, (call_id,)).fetchone()
            if row is not None and row[0] == "done":
                call_id = next(waiting, None)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"not done after {timeout} s")
            time.sleep(interval)
    finally:
        connection.close()


def busy_cpu_seconds() -> float:
    """CPU time spent by the whole machine so far (every process: the
    orchestrators, the application, the database), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    shape = sys.argv[1]
    n = N[shape]
    database = os.environ["E2E_DATABASE"]
    cpu = busy_cpu_seconds()
    started = time.perf_counter()
    if shape == "one_by_one":
        ids = [step.dispatch(i) for i in range(n)]
    elif shape == "batch":
        batch = dispatch.batch()
        for i in range(n):
            batch.add(step(i))
        ids = batch.dispatch()
    elif shape == "gather":
        ids = [fan_out.dispatch(n)]
    else:
        ids = [chain.dispatch(n)]
    wait_until_done(database, [str(call_id) for call_id in ids])
    elapsed = time.perf_counter() - started
    cpu = busy_cpu_seconds() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"shape": shape, "calls": n, "seconds": elapsed, "cpu": cpu, "peak_rss": peak}
    print(json.dumps(result), flush=True)
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SHAPES:
        sys.exit(f"usage: e2e_app.py {{{','.join(SHAPES)}}}")
    dispatch.run(main)
