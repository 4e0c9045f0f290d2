"""DBOS on the end-to-end shapes of end_to_end.py, on this machine's PostgreSQL.

    python3.12 -m venv /tmp/dbos-venv
    /tmp/dbos-venv/bin/pip install 'dbos>=3.4,<4'
    /tmp/dbos-venv/bin/python benchmarks/dbos_shapes.py [--quick] [--postgres URL]

Runs in its own virtual environment, not the repository's (it does not import
dispatch); measured with dbos 3.4.0, the newest 3.x on PyPI at the time. The
figures are what ``end_to_end.py --mode postgres`` compares against (its
DBOS_SECONDS came from another machine).

The shapes of e2e_app.py, each in one or more idiomatic DBOS ways (variants):

- one_by_one: 500 workflows of one step ``step(i) -> i + 1``, started one at
  a time from the main thread with ``DBOS.start_workflow`` (DBOS's way to
  start a durable workflow in the background: it is recorded, then run at
  once on DBOS's thread pool, no queue polling involved).
- batch: the same 500 at once. DBOS has no batch-start API, so: ``queue``,
  ``DBOS.enqueue_workflow`` in a loop on a queue (one transaction each);
  ``queue_txn``, ``DBOSClient.enqueue_in_transaction`` 500 times in one
  transaction on the system database (one commit). A queue's worker thread
  polls it for work every ``polling_interval_sec`` (DBOS's default: 1 s).
- gather: one workflow running 100 ``step(i)`` concurrently and summing them:
  ``async``, an async workflow awaiting ``asyncio.gather`` over async steps;
  ``children``, child workflows started with ``DBOS.start_workflow`` from a
  workflow, then their handles' results; ``queue``, child workflows
  enqueued on a queue, then their handles' results (polled).
- sequential: one workflow running 50 steps one after another (``sync``: a
  synchronous workflow and steps; ``async``: async ones).

The queue variants run twice: with DBOS's default polling interval (1 s, the
suffix ``@1s``) and a short one (``@10ms``: the queue's poll and the polling of
child results, DBOS's ``get_result(polling_interval_sec=...)``).

Each run is a fresh process (this script with ``--child``) on a fresh database
(created on the PostgreSQL server, dropped with FORCE afterwards), with DBOS
launched and its queue's worker thread running before the clock starts; the
clock stops when every workflow started is recorded SUCCESS in DBOS's system
database (dbos.workflow_status), read as e2e_app.py reads dispatch's: one
lookup by primary key per poll, every 5 ms. Besides wall time it reports the
CPU the whole machine spent per step (from /proc/stat: the DBOS process and
PostgreSQL; the share of the DBOS process alone from getrusage), and the peak
memory of the process. Median of 3 runs (1 with ``--quick``); a shape's DBOS
figure is its fastest variant.

Prints a table and writes benchmarks/results/dbos_shapes-<python>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from databases import fresh_database
from dbos import DBOS, DBOSClient, EnqueueOptions

HERE = Path(__file__).parent
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
APP = "dbos_shapes"
QUEUE = "shapes"
ONE_STEP = "one_step"  # the name one_step is registered under, for DBOSClient
SHAPES = ("one_by_one", "batch", "gather", "sequential")
N = {"one_by_one": 500, "batch": 500, "gather": 100, "sequential": 50}
# From issue #5 (end_to_end.py's DBOS_SECONDS): DBOS 3.4 on another machine.
ISSUE_SECONDS = {"one_by_one": 3.18, "batch": 1.05, "gather": 0.141}
# Queue polling intervals measured (seconds): DBOS's default (that of get_result too), a short one.
POLLS = (1.0, 0.01)


@dataclass(frozen=True)
class Variant:
    shape: str
    name: str
    poll: float | None = None  # the queue's polling interval; None: no queue

    @property
    def label(self) -> str:
        if self.poll is None:
            return self.name
        interval = f"{self.poll:g}s" if self.poll >= 1 else f"{self.poll * 1000:g}ms"
        return f"{self.name}@{interval}"


VARIANTS = (
    Variant("one_by_one", "start_workflow"),
    *(Variant("batch", name, poll) for name in ("queue", "queue_txn") for poll in POLLS),
    Variant("gather", "async"),
    Variant("gather", "children"),
    *(Variant("gather", "queue", poll) for poll in POLLS),
    Variant("sequential", "sync"),
    Variant("sequential", "async"),
)


# The application: registered at import, in the child process as in the parent.


@DBOS.step()
def step(i: int) -> int:
    return i + 1


@DBOS.step()
async def step_async(i: int) -> int:
    return i + 1


@DBOS.workflow(name=ONE_STEP)
def one_step(i: int) -> int:
    return step(i)


@DBOS.workflow()
async def fan_out_async(n: int) -> int:
    return sum(await asyncio.gather(*[step_async(i) for i in range(n)]))


@DBOS.workflow()
def fan_out_children(n: int) -> int:
    handles = [DBOS.start_workflow(one_step, i) for i in range(n)]
    return sum(handle.get_result() for handle in handles)


@DBOS.workflow()
def fan_out_queue(n: int, poll: float) -> int:
    handles = [DBOS.enqueue_workflow(QUEUE, one_step, i) for i in range(n)]
    return sum(handle.get_result(polling_interval_sec=poll) for handle in handles)


@DBOS.workflow()
def chain(n: int) -> int:
    total = 0
    for i in range(n):
        total += step(i)
    return total


@DBOS.workflow()
async def chain_async(n: int) -> int:
    total = 0
    for i in range(n):
        total += await step_async(i)
    return total


def expected(shape: str, n: int) -> int | None:
    """The result of the shape's one workflow (sum of i + 1), None for many workflows."""
    return n * (n + 1) // 2 if shape in ("gather", "sequential") else None


# The child process: one variant, one run.


def starter(variant: Variant, database: str) -> Callable[[int], list[str]]:
    """What the clock measures the start of: starts the variant's workflows, their IDs."""
    key = (variant.shape, variant.name)
    if key == ("one_by_one", "start_workflow"):
        return lambda n: [DBOS.start_workflow(one_step, i).workflow_id for i in range(n)]
    if key == ("batch", "queue"):
        return lambda n: [DBOS.enqueue_workflow(QUEUE, one_step, i).workflow_id for i in range(n)]
    if key == ("batch", "queue_txn"):
        client = DBOSClient(system_database_url=database, application_name=APP)
        engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect():  # connected before the clock
            pass
        options: EnqueueOptions = {"queue_name": QUEUE, "workflow_name": ONE_STEP}

        def enqueue_in_one_transaction(n: int) -> list[str]:
            with engine.begin() as connection:
                return [
                    client.enqueue_in_transaction(connection, options, i).workflow_id
                    for i in range(n)
                ]

        return enqueue_in_one_transaction
    if key == ("gather", "async"):
        return lambda n: [DBOS.start_workflow(fan_out_async, n).workflow_id]
    if key == ("gather", "children"):
        return lambda n: [DBOS.start_workflow(fan_out_children, n).workflow_id]
    if key == ("gather", "queue"):
        poll = variant.poll
        assert poll is not None
        return lambda n: [DBOS.start_workflow(fan_out_queue, n, poll).workflow_id]
    if key == ("sequential", "sync"):
        return lambda n: [DBOS.start_workflow(chain, n).workflow_id]
    if key == ("sequential", "async"):
        return lambda n: [DBOS.start_workflow(chain_async, n).workflow_id]
    raise ValueError(f"unknown variant {variant}")


def wait_until_done(connection: psycopg.Connection, ids: list[str], timeout: float = 120) -> None:
    """Until DBOS has recorded the workflows ``ids`` SUCCESS in its system database:
    one lookup by primary key per poll, every 5 ms, as e2e_app.py waits for dispatch."""
    query = "SELECT status FROM dbos.workflow_status WHERE workflow_uuid = %s"
    deadline = time.monotonic() + timeout
    waiting = iter(ids)
    workflow_id = next(waiting, None)
    while workflow_id is not None:
        row = connection.execute(query, (workflow_id,)).fetchone()
        if row is not None and row[0] == "SUCCESS":
            workflow_id = next(waiting, None)
            continue
        if row is not None and row[0] not in ("PENDING", "ENQUEUED"):
            raise RuntimeError(f"workflow {workflow_id}: {row[0]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout} s")
        time.sleep(0.005)


def wait_for_queue_worker(timeout: float = 10) -> None:
    """DBOS starts a queue's worker thread within a second of its registration."""
    deadline = time.monotonic() + timeout
    name = f"queue-worker-{QUEUE}"
    while not any(thread.name == name for thread in threading.enumerate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {name} thread after {timeout} s")
        time.sleep(0.01)


def busy_cpu_seconds() -> float:
    """CPU time spent by the whole machine so far (every process: DBOS, the
    application, the database), from /proc/stat (as in e2e_app.py)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds() -> float:
    """CPU time spent so far by this process alone (DBOS and the application)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(variant: Variant, database: str) -> None:
    n = N[variant.shape]
    DBOS(config={"name": APP, "system_database_url": database, "log_level": "WARNING"})
    DBOS.launch()
    if variant.poll is not None:
        DBOS.register_queue(QUEUE, polling_interval_sec=variant.poll)
        wait_for_queue_worker()
    start = starter(variant, database)
    with psycopg.connect(database, autocommit=True) as connection:
        cpu, own = busy_cpu_seconds(), process_cpu_seconds()
        started = time.perf_counter()
        ids = start(n)
        wait_until_done(connection, ids)
        elapsed = time.perf_counter() - started
        cpu, own = busy_cpu_seconds() - cpu, process_cpu_seconds() - own
    want = expected(variant.shape, n)
    if want is not None:
        got: int = DBOS.retrieve_workflow(ids[0]).get_result()
        if got != want:
            raise RuntimeError(f"{variant.label}: result {got}, expected {want}")
    result = {
        "variant": variant.label,
        "workflows": len(ids),
        "seconds": elapsed,
        "cpu": cpu,
        "process_cpu": own,
    }
    print(json.dumps(result), flush=True)
    DBOS.destroy()


# The parent process: fresh database and process per run, medians, table, JSON.


def run_once(variant: Variant, server: str) -> dict[str, Any]:
    index = VARIANTS.index(variant)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(index)]
    # Output to files, not pipes: a full pipe would stall the process measured.
    with (
        fresh_database(server, "dbos_shapes") as database,
        tempfile.TemporaryDirectory(prefix="dbos-shapes-") as directory,
        open(Path(directory) / "out", "w+b") as out,
        open(Path(directory) / "err", "w+b") as err,
    ):
        env = {**os.environ, "DBOS_SHAPES_DATABASE": database}
        process = subprocess.Popen(command, env=env, cwd=directory, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if code != 0:
        raise SystemExit(f"{variant.label} failed with {code}:\n{stdout}\n{stderr}")
    for line in stdout.splitlines():
        if line.startswith("{") and '"variant"' in line:
            result: dict[str, Any] = json.loads(line)
            result["peak_rss"] = usage.ru_maxrss * 1024  # Linux: kilobytes
            return result
    raise SystemExit(f"{variant.label} printed no result:\n{stdout}\n{stderr}")


def measure(variant: Variant, repeats: int, server: str) -> dict[str, Any]:
    runs = [run_once(variant, server) for _ in range(repeats)]
    steps = N[variant.shape]
    return {
        "shape": variant.shape,
        "variant": variant.label,
        "steps": steps,
        "workflows": runs[0]["workflows"],
        "queue_polling_interval_sec": variant.poll,
        "seconds": statistics.median(run["seconds"] for run in runs),
        "runs": [run["seconds"] for run in runs],
        "cpu_ms_per_step": statistics.median(1000 * run["cpu"] / steps for run in runs),
        "process_cpu_ms_per_step": statistics.median(
            1000 * run["process_cpu"] / steps for run in runs
        ),
        "peak_mb": max(run["peak_rss"] for run in runs) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per variant (a smoke run)")
    parser.add_argument("--postgres", default=POSTGRES, help=f"the server (default: {POSTGRES})")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(VARIANTS[args.child], os.environ["DBOS_SHAPES_DATABASE"])
        return
    repeats = 1 if args.quick else 3
    dbos_version = version("dbos")
    rows = []
    for variant in VARIANTS:
        rows.append(measure(variant, repeats, args.postgres))
        print(f"  {variant.shape} {variant.label}: {rows[-1]['seconds']:.3f} s", file=sys.stderr)
    best = {
        shape: min((row for row in rows if row["shape"] == shape), key=lambda r: r["seconds"])
        for shape in SHAPES
    }
    print(f"DBOS {dbos_version}, Python {platform.python_version()}, median of {repeats}")
    header = (
        f"{'shape':<11} {'variant':<16} {'steps':>5} {'seconds':>8} {'issue':>6} "
        f"{'steps/s':>8} {'CPU ms/step':>11} {'of which DBOS':>13} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        issue = ISSUE_SECONDS.get(row["shape"])
        mark = "*" if best[row["shape"]] is row else " "
        print(
            f"{row['shape']:<11} {row['variant']:<15}{mark} {row['steps']:>5} "
            f"{row['seconds']:>8.3f} {f'{issue:.3f}' if issue else '-':>6} "
            f"{row['steps'] / row['seconds']:>8.0f} {row['cpu_ms_per_step']:>11.2f} "
            f"{row['process_cpu_ms_per_step']:>13.2f} {row['peak_mb']:>8.1f}"
        )
    print("* the shape's DBOS figure (its fastest variant); issue: DBOS 3.4 on another machine")
    python = "{}.{}".format(*sys.version_info[:2])
    out = HERE / "results" / f"dbos_shapes-{python}.json"
    out.parent.mkdir(exist_ok=True)
    document = {
        "python": platform.python_version(),
        "dbos": dbos_version,
        "repeats": repeats,
        "dbos_seconds": {shape: row["seconds"] for shape, row in best.items()},
        "dbos_variant": {shape: row["variant"] for shape, row in best.items()},
        "rows": rows,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
