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


def wait_until_done(database: Path, ids: list[str], timeout: float = 120.0) -> None:
    """Until the orchestrator has recorded the calls ``ids`` done (their
    descendants finish first), reading its database as any client could."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    deadline = time.monotonic() + timeout
    waiting = iter(ids)
    call_id = next(waiting, None)
    try:
        while call_id is not None:
            # One lookup by primary key per poll, so as not to slow down what is measured.
            row = connection.execute("SELECT state FROM calls WHERE id = ?", (call_id,)).fetchone()
            if row is not None and row[0] == "done":
                call_id = next(waiting, None)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"not done after {timeout} s")
            time.sleep(0.0005)
    finally:
        connection.close()


def main() -> None:
    shape = sys.argv[1]
    n = N[shape]
    database = Path(os.environ["E2E_DATABASE"])
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps({"shape": shape, "calls": n, "seconds": elapsed, "peak_rss": peak}), flush=True
    )
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SHAPES:
        sys.exit(f"usage: e2e_app.py {{{','.join(SHAPES)}}}")
    dispatch.run(main)
