"""The dashboard's pages with 100,000 calls in the database.

    python benchmarks/dashboard_pages.py [--calls N] [--repeats R] [--postgres URL]

Fills a fresh SQLite database (and, with ``--postgres``, a fresh database
created on that PostgreSQL server, dropped at the end) with N calls (100,000
by default): bulk inserts into the orchestrator's schema after its
``migrate()``, shaped as an orchestrator leaves them after a week of work:
one call a few seconds apart, a quarter of the roots durable coroutines with
2 to 8 children, 1% still pending, running or waiting, the done ones mostly
OK and some failed (with tracebacks) or cancelled, one attempt row per run.

Then serves the orchestrator's app (API and dashboard) with uvicorn in a
process of its own, the engine not started (so the timings are the pages'
alone), logs in with the API key and times each page from this process,
over HTTP: the median (and the slowest) of R requests after one to warm up.
Pages: the list unfiltered, filtered by a common function, a rare function,
a state, status=failed, the 50th page through the "older" cursor, the live
update's rows, the page of a coroutine with its children and of a failed
call. Each timed request comes once the counts per state, which the
dashboard reuses for a second, have expired (so it counts again: a page's
worst case); the "reused counts" column is the same request right after.
Target: every page under 100 ms.

Prints a table and writes benchmarks/results/dashboard.json. (The file is not
named dashboard.py: mypy would see it and the tests/dashboard package as one
module, "dashboard".)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgpack  # type: ignore[import-untyped]
from rich.console import Console
from rich.table import Table

from dispatch import Status, _wire
from dispatch.orchestrator._dashboard import COUNTS_SECONDS

HERE = Path(__file__).parent
KEY = "benchmark-key"
TARGET_MS = 100.0
ENDPOINT = "http://127.0.0.1:9/dispatch"
LEAVES = ("fetch_page", "resize_image", "charge_card", "send_email", "geocode", "score")
COROUTINES = ("pipeline", "checkout", "nightly_report")
RARE = "rebuild_index"
"""A function of one call in a thousand."""
FAILURES = (
    (Status.TEMPORARY_ERROR, 0.02),
    (Status.PERMANENT_ERROR, 0.015),
    (Status.TIMEOUT, 0.01),
    (Status.INVALID_ARGUMENT, 0.005),
)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/jobs.py", line 88, in {function}\n'
    "    response.raise_for_status()\n"
    '  File "/srv/venv/lib/python3.12/site-packages/httpx/_models.py", line 829, in '
    "raise_for_status\n"
    "    raise HTTPStatusError(message, request=request, response=self)\n"
    "httpx.HTTPStatusError: Server error '503 Service Unavailable' for url "
    "'https://api.example.com/v1/items/{index}'\n"
)
CALL_COLUMNS = (
    "id, root_id, parent_id, correlation_id, function, endpoint, input, state, status, "
    "output, error, attempt, runs, due_at, snapshot, min_results, max_results, wait_until, "
    "created_at, expires_at, finished_at, cancelled_at, frames"
)
ATTEMPT_COLUMNS = (
    "call_id, number, attempt, started_at, finished_at, status, error_type, error_message, "
    "snapshot_size, traceback"
)


# --- the calls ------------------------------------------------------------------------------


class Calls:
    """N calls as rows of ``calls`` and ``attempts``, and the ids worth looking at."""

    def __init__(self, count: int, seed: int = 7) -> None:
        self.rng = rng = random.Random(seed)
        self.sealer = _wire.Sealer([_wire.generate_key()])
        now = time.time()
        step = 7 * 86400 / count  # a week of calls
        start = now - count * step
        self.calls: list[tuple[Any, ...]] = []
        self.attempts: list[tuple[Any, ...]] = []
        self.coroutine = self.failed = ""
        self.output = _wire.encode_value({"items": 12, "total": 1234.5}, self.sealer)
        self.snapshot = rng.randbytes(1500)
        self.frames = msgpack.packb(
            [
                {
                    "task": 0,
                    "frames": [
                        {
                            "function": "pipeline",
                            "file": "/srv/app/jobs.py",
                            "line": 41,
                            "locals": {"batch": "[1, 2, 3, 4]", "done": "3"},
                        }
                    ],
                }
            ]
        )
        index = 0
        while index < count:
            created = start + index * step
            recent = index >= count * 0.99  # the last 1%: still going
            root = self._id(index)
            if rng.random() < 0.25:  # a durable coroutine and its children
                children = rng.randint(2, 8)
                state = rng.choice(("waiting", "running")) if recent else "done"
                self._coroutine(root, rng.choice(COROUTINES), state, created, children)
                index += 1
                for child in range(min(children, count - index)):
                    self._call(
                        self._id(index),
                        rng.choice(LEAVES),
                        "done" if state == "done" else rng.choice(("pending", "done")),
                        created + 0.01 * (child + 1),
                        root_id=root,
                        correlation_id=child,
                    )
                    index += 1
            else:
                function = RARE if rng.random() < 0.001 else rng.choice(LEAVES)
                state = rng.choice(("pending", "running")) if recent else "done"
                self._call(root, function, state, created)
                index += 1

    def _id(self, index: int) -> str:
        return f"{index:08d}{self.rng.getrandbits(96):024x}"

    def _row(self, **fields: Any) -> None:
        self.calls.append(tuple(fields.get(c.strip()) for c in CALL_COLUMNS.split(",")))

    def _coroutine(
        self, call_id: str, function: str, state: str, created: float, children: int
    ) -> None:
        done = state == "done"
        waiting = state == "waiting"
        self._row(
            id=call_id,
            root_id=call_id,
            correlation_id=0,
            function=function,
            endpoint=ENDPOINT,
            input=_wire.encode_arguments(([1, 2, 3, 4],), {"notify": True}, self.sealer),
            state=state,
            status=Status.OK.value if done else None,
            output=self.output if done else None,
            attempt=1 if done or state == "running" else 0,
            runs=2 if done else 1,
            snapshot=None if done else self.snapshot,
            min_results=children if waiting else None,
            max_results=children if waiting else None,
            wait_until=created + 3600 if waiting else None,
            created_at=created,
            expires_at=created + 86400,
            finished_at=created + 0.5 if done else None,
            frames=self.frames if waiting else None,
        )
        self._attempt(call_id, 1, 1, created, 0.004, Status.OK, None, len(self.snapshot))
        if done:
            self._attempt(call_id, 2, 1, created + 0.5, 0.002, Status.OK, None, None)
            self.coroutine = self.coroutine or call_id

    def _call(
        self,
        call_id: str,
        function: str,
        state: str,
        created: float,
        root_id: str | None = None,
        correlation_id: int = 0,
    ) -> None:
        done = state == "done"
        status: Status | None = Status.OK if done else None
        cancelled = False
        if done:
            roll = self.rng.random()
            for failure, share in FAILURES:
                if roll < share:
                    status = failure
                    break
                roll -= share
            else:
                cancelled = roll < 0.01
        failed = status is not None and status is not Status.OK
        runs = 5 if failed and status is not None and status.retry else 1 if done else 0
        duration = self.rng.uniform(0.002, 0.4)
        finished = created + duration if done else None
        traceback = TRACEBACK.format(function=function, index=call_id[:8]) if failed else None
        error = None
        if cancelled:
            error = _wire.Error(
                status=Status.PERMANENT_ERROR.value,
                type="dispatch.Cancelled",
                message="the call was cancelled",
            ).to_msgpack()
        elif failed and status is not None:
            error = _wire.Error(
                status=status.value,
                type="httpx.HTTPStatusError",
                message="Server error '503 Service Unavailable'",
                traceback=traceback,
            ).to_msgpack()
            self.failed = self.failed or call_id
        self._row(
            id=call_id,
            root_id=root_id or call_id,
            parent_id=root_id,
            correlation_id=correlation_id,
            function=function,
            endpoint=ENDPOINT,
            input=_wire.encode_arguments((call_id[:8],), {"retries": 3}, self.sealer),
            state=state,
            status=-1 if cancelled else status.value if status is not None else None,
            output=self.output if done and not failed and not cancelled else None,
            error=error,
            attempt=runs if done else 1 if state == "running" else 0,
            runs=runs,
            due_at=created + 86400 if state == "pending" else None,
            created_at=created,
            expires_at=created + 86400,
            finished_at=finished,
            cancelled_at=finished if cancelled else None,
        )
        for number in range(1, runs + 1):
            self._attempt(
                call_id,
                number,
                number,
                created + (number - 1) * 0.3,
                duration / runs,
                status or Status.OK,
                traceback if number == runs else None,
                None,
            )

    def _attempt(
        self,
        call_id: str,
        number: int,
        attempt: int,
        started: float,
        duration: float,
        status: Status,
        traceback: str | None,
        snapshot_size: int | None,
    ) -> None:
        failed = status is not Status.OK
        self.attempts.append(
            (
                call_id,
                number,
                attempt,
                started,
                started + duration,
                status.value,
                "httpx.HTTPStatusError" if failed else None,
                "Server error '503 Service Unavailable'" if failed else None,
                snapshot_size,
                traceback,
            )
        )


def fill_sqlite(path: Path, calls: Calls) -> None:
    from dispatch.orchestrator import SQLiteStorage

    storage = SQLiteStorage(str(path))
    asyncio.run(storage.migrate())
    asyncio.run(storage.close())
    db = sqlite3.connect(path)
    marks = ", ".join("?" * len(CALL_COLUMNS.split(",")))
    with db:
        db.executemany(f"INSERT INTO calls ({CALL_COLUMNS}) VALUES ({marks})", calls.calls)
        marks = ", ".join("?" * len(ATTEMPT_COLUMNS.split(",")))
        db.executemany(f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES ({marks})", calls.attempts)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


@contextlib.contextmanager
def postgres_database(url: str) -> Iterator[str]:
    """A fresh database on the server of ``url``, dropped on exit; its URL."""
    import psycopg

    name = f"dispatch_dashboard_bench_{int(time.time())}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fill_postgres(url: str, calls: Calls) -> None:
    import psycopg

    from dispatch.orchestrator._postgres import PostgresStorage

    async def migrate() -> None:
        storage = PostgresStorage(url)
        await storage.migrate()
        await storage.close()

    asyncio.run(migrate())
    with psycopg.connect(url) as db:
        with db.cursor() as cursor:
            with cursor.copy(f"COPY calls ({CALL_COLUMNS}) FROM STDIN") as copy:
                for row in calls.calls:
                    copy.write_row(row)
            with cursor.copy(f"COPY attempts ({ATTEMPT_COLUMNS}) FROM STDIN") as copy:
                for row in calls.attempts:
                    copy.write_row(row)
        db.commit()
        db.autocommit = True
        db.execute("VACUUM ANALYZE calls")  # what autovacuum does after a bulk load
        db.execute("VACUUM ANALYZE attempts")


# --- serving and timing ---------------------------------------------------------------------


def serve(database: str, port: int) -> None:
    """In the server process: the orchestrator's app on ``port``, the engine idle."""
    import uvicorn
    from starlette.types import Receive, Scope, Send

    from dispatch.orchestrator import Orchestrator, open_storage

    orchestrator = Orchestrator(open_storage(database), signing_key=None, api_key=KEY)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await orchestrator.api(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await orchestrator.storage.migrate()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await orchestrator.storage.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def server(database: str) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", database, "--port", str(port)],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the orchestrator did not start")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def timed(
    http: httpx.Client, path: str, repeats: int
) -> tuple[list[float], list[float], httpx.Response]:
    """Milliseconds of each request: once the counts the dashboard reuses have
    expired (what a page costs at worst), and again right after."""
    response = http.get(path)  # warm-up
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(repeats):
        time.sleep(COUNTS_SECONDS + 0.05)
        for times in (cold, warm):
            started = time.perf_counter()
            response = http.get(path)
            times.append(1000 * (time.perf_counter() - started))
            assert response.status_code == 200, (path, response.status_code)
    return cold, warm, response


def older(page: str) -> str:
    match = re.search(r'<a rel="next" href="([^"]+)"', page)
    assert match is not None, "no older page"
    return unescape(match.group(1))


def measure(backend: str, database: str, calls: Calls, repeats: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with (
        server(database) as url,
        httpx.Client(base_url=url, timeout=60, follow_redirects=True) as http,
    ):
        login = http.post("/dashboard/login", data={"api_key": KEY})
        assert login.status_code == 200 and "Calls" in login.text, login.status_code
        page = http.get("/dashboard/").text
        for _ in range(49):
            page = http.get(older(page)).text
        deep = older(page)  # the 50th page
        pages = [
            ("list", "/dashboard/"),
            ("list, function (common)", f"/dashboard/?function={LEAVES[0]}"),
            ("list, function (rare)", f"/dashboard/?function={RARE}"),
            ("list, state=running", "/dashboard/?state=running"),
            ("list, state=done", "/dashboard/?state=done"),
            ("list, status=failed", "/dashboard/?status=failed"),
            ("list, status=TIMEOUT", "/dashboard/?status=TIMEOUT"),
            ("list, page 50 (cursor)", deep),
            ("live update (rows)", "/dashboard/rows"),
            ("call: coroutine + children", f"/dashboard/calls/{calls.coroutine}"),
            ("call: failed", f"/dashboard/calls/{calls.failed}"),
        ]
        for name, path in pages:
            times, warm, response = timed(http, path, repeats)
            if "/calls/" in path:  # a call's page: the calls of its tree
                shown = response.text.count("<li><a href=")
            else:
                text = response.json()["rows"] if path.endswith("/rows") else response.text
                shown = len(re.findall(r'<tr data-id="', text))
            rows.append(
                {
                    "backend": backend,
                    "page": name,
                    "path": path,
                    "median_ms": statistics.median(times),
                    "max_ms": max(times),
                    "counts_reused_median_ms": statistics.median(warm),
                    "rows": shown,
                    "bytes": len(response.content),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--postgres", metavar="URL", help="also measure on this server")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    console = Console(width=max(Console().width, 120))
    started = time.perf_counter()
    calls = Calls(args.calls)
    console.print(
        f"{len(calls.calls):,} calls and {len(calls.attempts):,} attempts made in "
        f"{time.perf_counter() - started:.1f} s"
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dispatch-dashboard-") as directory:
        path = Path(directory) / "dispatch.db"
        started = time.perf_counter()
        fill_sqlite(path, calls)
        console.print(f"SQLite filled in {time.perf_counter() - started:.1f} s")
        rows += measure("sqlite", str(path), calls, args.repeats)
    if args.postgres:
        with postgres_database(args.postgres) as url:
            started = time.perf_counter()
            fill_postgres(url, calls)
            console.print(f"PostgreSQL filled in {time.perf_counter() - started:.1f} s")
            rows += measure("postgres", url, calls, args.repeats)
    table = Table(
        title=f"dashboard pages, {args.calls:,} calls, Python {platform.python_version()}, "
        f"median of {args.repeats}"
    )
    columns = ("backend", "page", "median ms", "max ms", "reused counts", "rows", "KiB", "target")
    for column in columns:
        table.add_column(column, justify="left" if column in ("backend", "page") else "right")
    for row in rows:
        ok = row["median_ms"] < TARGET_MS
        table.add_row(
            row["backend"],
            row["page"],
            f"{row['median_ms']:.1f}",
            f"{row['max_ms']:.1f}",
            f"{row['counts_reused_median_ms']:.1f}",
            str(row["rows"]),
            f"{row['bytes'] / 1024:.0f}",
            "[green]ok[/green]" if ok else f"[red]> {TARGET_MS:.0f}[/red]",
        )
    console.print(table)
    out = HERE / "results" / "dashboard.json"
    out.parent.mkdir(exist_ok=True)
    document = {
        "python": platform.python_version(),
        "calls": args.calls,
        "repeats": args.repeats,
        "target_ms": TARGET_MS,
        "rows": rows,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
