"""What only a database shared by several orchestrator processes must do.

The conformance suite (``test_storage.py``) runs against PostgreSQL as
against SQLite; these tests add what SQLite, one process's alone, never
faces: processes migrating at once, claiming from one queue at once,
taking over the calls of a process whose lease expired, waking each other
with notifications. Processes are real where that is the point.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from postgres_server import postgres_database, postgres_schema

from dispatch import Status, _local, _wire
from dispatch.orchestrator import DatabaseUnavailable, Engine, Limiter, open_storage
from dispatch.orchestrator._engine import HANDOFF
from dispatch.orchestrator._postgres import FUNCTIONS_DIGEST, MIGRATIONS, PostgresStorage
from dispatch.orchestrator._storage import Claimed, Completed, Completion, Finish, NewCall, Suspend

from .harness import closed_port

pytestmark = pytest.mark.timeout(120)

EP = "http://a.test/dispatch"
EXAMPLES = Path(__file__).parents[2] / "examples"
OK = Status.OK.value


@pytest.fixture
def url() -> Iterator[str]:
    yield from postgres_schema()


@pytest.fixture
def database() -> Iterator[str]:
    yield from postgres_database("dispatch_migrate")


def new(call_id: str, parent: str | None = None, cid: int = 0) -> NewCall:
    return NewCall(
        id=call_id,
        function="f",
        endpoint=EP,
        input=b"",
        root_id=parent or call_id,
        parent_id=parent,
        correlation_id=cid,
    )


def python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_migrations_are_safe_when_processes_start_at_once(database: str) -> None:
    script = """
        import asyncio, sys
        from dispatch.orchestrator._postgres import PostgresStorage

        async def main():
            storage = PostgresStorage(sys.argv[1])
            await storage.migrate()
            await storage.close()

        asyncio.run(main())
    """
    processes = [python(script, database) for _ in range(4)]
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    with psycopg.connect(database) as connection:
        versions = connection.execute("SELECT version FROM schema_version").fetchall()
        tables = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('calls', 'results', 'attempts')"
        ).fetchone()
    assert versions == [(len(MIGRATIONS),)]
    assert tables == (3,)


async def test_a_database_of_an_older_version_is_upgraded(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(MIGRATIONS[0].encode())
        connection.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        connection.execute("INSERT INTO schema_version VALUES (1)")
        connection.execute(
            "INSERT INTO calls (id, root_id, function, endpoint, state, due_at, created_at) "
            "VALUES ('old', 'old', 'f', 'http://a.test', 'pending', 0, 0)"
        )
    storage = PostgresStorage(url)
    try:
        await storage.migrate()
        [claimed] = await storage.claim("me", None, 10, time.time(), 60.0)
        assert claimed.id == "old" and not claimed.cancelling
        assert await storage.cancel("old", time.time()) == 1
    finally:
        await storage.close()


async def test_functions_of_another_definition_are_made_again(url: str) -> None:
    storage = PostgresStorage(url)
    try:
        await storage.migrate()
        with psycopg.connect(url, autocommit=True) as connection:
            # As left by a dispatch whose functions said something else.
            connection.execute(
                "CREATE OR REPLACE FUNCTION dispatch_wake(call_id text, now float8) "
                "RETURNS boolean LANGUAGE sql AS 'SELECT false'"
            )
            connection.execute("UPDATE schema_version SET functions = 'older'")
        await storage.migrate()
        with psycopg.connect(url, autocommit=True) as connection:
            source = connection.execute(
                "SELECT prosrc FROM pg_proc WHERE proname = 'dispatch_wake'"
            ).fetchone()
            digest = connection.execute("SELECT functions FROM schema_version").fetchone()
        assert source is not None and "UPDATE calls" in source[0]
        assert digest == (FUNCTIONS_DIGEST,)
    finally:
        await storage.close()


async def test_processes_claiming_at_once_never_claim_a_call_twice(url: str) -> None:
    storage = PostgresStorage(url)
    await storage.migrate()
    await storage.create([new(f"c{i}") for i in range(600)], time.time())
    # Each process claims and completes until nothing is left, printing what it claimed.
    script = """
        import asyncio, json, sys, time
        from dispatch.orchestrator._postgres import PostgresStorage
        from dispatch.orchestrator._storage import Completion, Finish

        async def main():
            storage = PostgresStorage(sys.argv[1])
            owner, claimed, lost = sys.argv[2], [], 0
            while True:
                calls = await storage.claim(owner, None, 7, time.time(), 60.0)
                if not calls and (await storage.counts())["pending"] == 0:
                    break
                for call in calls:
                    claimed.append(call.id)
                    completion = Completion(call, owner, Finish(0), time.time(), 0.0, 0)
                    lost += not await storage.complete(completion)
            await storage.close()
            print(json.dumps({"claimed": claimed, "lost": lost}))

        asyncio.run(main())
    """
    processes = [python(script, url, f"owner-{n}") for n in range(3)]
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=90)
        assert process.returncode == 0, stderr
        reports.append(json.loads(stdout))
    claimed = [call_id for report in reports for call_id in report["claimed"]]
    assert sorted(claimed) == sorted(f"c{i}" for i in range(600))  # each exactly once
    assert all(report["claimed"] for report in reports)  # all three took part
    assert sum(report["lost"] for report in reports) == 0
    assert (await storage.counts())["done"] == 600
    await storage.close()


async def test_a_lease_that_expires_passes_the_call_to_another_process(url: str) -> None:
    first, second = PostgresStorage(url), PostgresStorage(url)
    await first.migrate()
    now = time.time()
    await first.create([new("a")], now)
    (call,) = await first.claim("first", EP, 10, now, 1.0)
    # The first process stops renewing (it died, or hangs): the second takes over.
    assert await second.claim("second", EP, 10, now + 0.5, 1.0) == []
    assert await second.recover(now + 0.5) == 0
    assert await second.recover(now + 2.0) == 1
    (again,) = await second.claim("second", EP, 10, now + 2.0, 30.0)
    assert (again.id, again.run) == ("a", 2)
    # The first process's late answer changes nothing; the second's is the result.
    late = Completion(call, "first", Finish(OK, output=b"late"), now + 3, 3.0, OK)
    assert not await first.complete(late)
    assert await second.complete(
        Completion(again, "second", Finish(OK, b"on time"), now + 4, 1, OK)
    )
    record = await first.get("a")
    assert record is not None
    assert (record.output, [attempt.error_type for attempt in record.attempts]) == (
        b"on time",
        ["dispatch.Interrupted", None],
    )
    await first.close()
    await second.close()


async def test_renewed_leases_are_kept(url: str) -> None:
    first, second = PostgresStorage(url), PostgresStorage(url)
    await first.migrate()
    now = time.time()
    await first.create([new("a"), new("b")], now)
    await first.claim("first", EP, 10, now, 1.0)
    await first.renew("first", ["a"], now + 60.0)
    assert await second.recover(now + 2.0) == 1  # b only
    record = await second.get("a")
    assert record is not None and record.state == "running"
    await first.close()
    await second.close()


async def wakes(storage: PostgresStorage) -> tuple[asyncio.Event, asyncio.Task[None]]:
    woken = asyncio.Event()
    task = asyncio.ensure_future(storage.watch(woken.set))
    await asyncio.wait_for(woken.wait(), 10)  # it wakes once listening
    woken.clear()
    return woken, task


async def test_new_work_wakes_a_watching_process(url: str) -> None:
    watcher, other = PostgresStorage(url), PostgresStorage(url)
    await other.migrate()
    woken, task = await wakes(watcher)
    now = time.time()
    # Its own work does not wake it (its engine knows of it)...
    await watcher.create([new("own")], now + 1000)  # (due later: out of the claims below)
    await asyncio.sleep(0.3)
    assert not woken.is_set()
    # ... other processes' does: new calls from the API of another process.
    await other.create([new("p")], now)
    await asyncio.wait_for(woken.wait(), 5)
    woken.clear()
    # Children of a suspension, made by another process.
    (parent,) = await other.claim("other", EP, 1, now, 60.0)
    suspend = Suspend(
        b"s", min_results=1, max_results=1, wait_until=now + 600, children=(new("p.1", "p", 1),)
    )
    assert await other.complete(Completion(parent, "other", suspend, now, 0.0, OK))
    await asyncio.wait_for(woken.wait(), 5)
    woken.clear()
    # A result that makes the parent due again.
    (child,) = await other.claim("other", EP, 1, now, 60.0)
    assert await other.complete(Completion(child, "other", Finish(OK, b"x"), now, 0.0, OK))
    await asyncio.wait_for(woken.wait(), 5)
    task.cancel()
    await watcher.close()
    await other.close()


async def test_calls_of_an_endpoint_run_in_process_wake_no_other_process(url: str) -> None:
    """An embedded orchestrator's calls are its own to run (other processes
    take over only a backlog, which they look for every second anyway):
    making them due notifies nobody; calls of other endpoints still do."""
    watcher, app = PostgresStorage(url), PostgresStorage(url)
    await app.migrate()
    woken, task = await wakes(watcher)
    now = time.time()
    await app.host([EP], now, now + 60)
    await app.create([new("mine")], now)  # due now, not claimed
    now = time.time()
    (parent,) = await app.claim("app", EP, 1, now, 60.0)
    suspend = Suspend(
        b"s",
        min_results=1,
        max_results=1,
        wait_until=now + 600,
        children=(new("mine.1", "mine", 1),),
    )
    assert await app.complete(Completion(parent, "app", suspend, now, 0.0, OK))
    await asyncio.sleep(0.3)
    assert not woken.is_set()
    elsewhere = replace(new("theirs"), endpoint="http://b.test/dispatch")
    await app.create([elsewhere], now)
    await asyncio.wait_for(woken.wait(), 5)
    woken.clear()
    # Once it stops running them in process, its calls are news again.
    await app.host([], now, now)
    await app.create([new("mine-after")], now)
    await asyncio.wait_for(woken.wait(), 5)
    task.cancel()
    await watcher.close()
    await app.close()


async def test_watch_fails_when_its_connection_is_lost_and_can_start_again(url: str) -> None:
    watcher, other = PostgresStorage(url), PostgresStorage(url)
    await other.migrate()
    woken, task = await wakes(watcher)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN dispatch_work%%' AND pid <> pg_backend_pid()"
        )
    # It raises (the engine logs it and watches again a second later) rather than hang.
    with pytest.raises(psycopg.OperationalError):
        await asyncio.wait_for(task, 10)
    woken, task = await wakes(watcher)
    await other.create([new("a")], time.time())
    await asyncio.wait_for(woken.wait(), 5)
    task.cancel()
    await watcher.close()
    await other.close()


async def test_an_unreachable_database_is_a_clear_error() -> None:
    storage = open_storage("postgresql://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(DatabaseUnavailable, match="cannot connect to PostgreSQL"):
        await storage.migrate()


def test_without_the_driver_the_error_says_what_to_install(tmp_path: Path) -> None:
    script = """
        import sys
        sys.modules["psycopg"] = None  # as if not installed
        from dispatch._cli import main
        main(["server", "--db", "postgresql://localhost/dispatch"])
    """
    process = python(script)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "pip install 'dispatch[postgres]'" in stderr
    assert "Traceback" not in stderr


async def test_children_finishing_together_all_reach_their_parent(url: str) -> None:
    """Completions arriving at once are applied in batches (one transaction
    each): every result is recorded once and the parent is woken once, with all."""
    storage = PostgresStorage(url)
    await storage.migrate()
    now = time.time()
    await storage.create([new("p")], now)
    (parent,) = await storage.claim("o", EP, 1, now, 60.0)
    children = tuple(new(f"p.{cid}", "p", cid) for cid in range(1, 201))
    suspend = Suspend(
        b"s", min_results=200, max_results=200, wait_until=now + 600, children=children
    )
    assert await storage.complete(Completion(parent, "o", suspend, now, 0.0, OK))
    claimed = await storage.claim("o", EP, 500, now, 60.0)
    assert len(claimed) == 200

    async def finish(call: Claimed) -> Completed:
        done = Completion(call, "o", Finish(OK, output=call.id.encode()), now, 0.0, OK)
        return await storage.complete_and_claim(done, 1, 60.0)

    outcomes = await asyncio.gather(*[finish(call) for call in claimed])
    assert all(outcome.applied for outcome in outcomes)
    resumed = [call for outcome in outcomes for call in outcome.claimed]
    assert [call.id for call in resumed] == ["p"]  # woken once, claimed once
    outputs = {result.correlation_id: result.output for result in resumed[0].results}
    assert outputs == {cid: f"p.{cid}".encode() for cid in range(1, 201)}
    await storage.close()


def test_an_application_embeds_its_orchestrator_on_postgres(url: str, tmp_path: Path) -> None:
    """``python app.py`` with DISPATCH_DATABASE_URL on PostgreSQL: the embedded
    orchestrator keeps the calls there and runs them in process; the calls of
    other applications sharing the database are not its to run."""

    async def elsewhere() -> None:
        storage = PostgresStorage(url)
        await storage.migrate()
        await storage.create([new("elsewhere")], time.time())  # of http://a.test/dispatch
        await storage.close()

    asyncio.run(elsewhere())
    stderr = run_pipeline(url, tmp_path)
    assert "embedded orchestrator (PostgreSQL: DISPATCH_DATABASE_URL)" in stderr
    with psycopg.connect(url) as connection:
        calls = connection.execute("SELECT function, state, status FROM calls").fetchall()
    assert sorted(calls) == sorted(
        [("pipeline", "done", OK), ("total", "done", OK)]
        + [("fetch_price", "done", OK)] * 4
        + [("f", "pending", None)]
    )
    assert not (tmp_path / ".dispatch" / "dispatch.db").exists()


def test_a_dispatch_server_joining_leaves_an_embedded_applications_calls_to_it(
    url: str, tmp_path: Path
) -> None:
    """A ``dispatch server`` on the same database, with the application's keys
    (it could run its calls over HTTP), runs none of them: the embedded
    orchestrator records its endpoint as run in process, and its calls wait
    less than HANDOFF for it."""
    port = closed_port()  # (free: the server binds it)
    server = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "server", "--db", url, "--port", str(port)],
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        api = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{api}/v1/health", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.05)
        run_pipeline(url, tmp_path)  # (with the server's keys: .dispatch/ in tmp_path)
        key = _local.keys(tmp_path / ".dispatch" / "keys.json").api_key
        request = urllib.request.Request(
            f"{api}/metrics", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            metrics = response.read().decode()
    finally:
        server.terminate()
        _, server_log = server.communicate(timeout=30)
    assert server.returncode == 0, server_log
    assert "dispatch_queue_depth" in metrics  # (the metrics of that server)
    assert "dispatch_attempts_total{" not in metrics, metrics
    with psycopg.connect(url) as connection:
        states = connection.execute("SELECT state, status FROM calls").fetchall()
    assert states == [("done", OK)] * 6


def environment() -> dict[str, str]:
    """This process's environment without any DISPATCH_ setting."""
    return {name: value for name, value in os.environ.items() if not name.startswith("DISPATCH_")}


def run_pipeline(url: str, directory: Path) -> str:
    """``python examples/pipeline.py`` embedded on ``url`` in ``directory``,
    until it printed its total and stopped at SIGTERM; what it wrote on stderr."""
    app = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "pipeline.py")],
        cwd=directory,
        env=environment()
        | {
            "DISPATCH_DATABASE_URL": url,
            "DISPATCH_ENDPOINT_ADDR": "127.0.0.1:0",
            "PYTHONUNBUFFERED": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None
        printed = []
        for line in app.stdout:
            printed.append(line.rstrip("\n"))
            if printed[-1] == "pipeline: 4 items, total 16":
                break
        app.send_signal(signal.SIGTERM)
        _, stderr = app.communicate(timeout=30)
    finally:
        app.kill()
    assert app.returncode == 0, stderr
    assert "pipeline: 4 items, total 16" in printed, (printed, stderr)
    return stderr


async def test_a_batch_of_completions_drops_only_the_answers_whose_claim_was_lost(
    url: str,
) -> None:
    storage = PostgresStorage(url)
    await storage.migrate()
    now = time.time()
    await storage.create([new(f"c{i}") for i in range(40)], now)
    claimed = await storage.claim("o", EP, 40, now, 1.0)
    await storage.renew("o", [call.id for call in claimed if call.id != "c7"], now + 60)
    assert await storage.recover(now + 5) == 1  # c7's lease expired: its claim is lost

    async def finish(call: Claimed) -> bool:
        done = Completion(call, "o", Finish(OK, output=b"x"), now + 6, 0.0, OK)
        return (await storage.complete_and_claim(done, 0, 60.0)).applied

    completed = await asyncio.gather(*map(finish, claimed))
    outcomes = dict(zip((call.id for call in claimed), completed, strict=True))
    assert [call_id for call_id, completed in outcomes.items() if not completed] == ["c7"]
    assert await storage.counts() == {"pending": 1, "running": 0, "waiting": 0, "done": 39}
    record = await storage.get("c3")
    assert record is not None and record.output == b"x" and len(record.attempts) == 1
    await storage.close()


async def test_endpoints_run_in_process_are_named_to_the_others_while_recorded(
    url: str,
) -> None:
    first, second, other = PostgresStorage(url), PostgresStorage(url), PostgresStorage(url)
    await first.migrate()
    now = time.time()
    await first.host([EP, "http://b.test/dispatch"], now, now + 30)
    await second.host(["http://c.test/dispatch"], now, now + 5)
    everything = {EP, "http://b.test/dispatch", "http://c.test/dispatch"}
    assert (await other.due(now)).hosts == everything
    assert (await second.due(now)).hosts == {EP, "http://b.test/dispatch"}  # not its own
    # What a process records replaces what it recorded; an expired record is not named.
    await first.host([EP], now + 1, now + 31)
    assert (await other.due(now + 10)).hosts == {EP}
    # Another process taking an endpoint over (an application restarted on its address).
    await second.host([EP], now + 2, now + 32)
    assert (await first.due(now + 2)).hosts == {EP}
    assert (await second.due(now + 2)).hosts == set()
    await second.host([], now + 3, now + 3)  # it stops
    assert (await other.due(now + 3)).hosts == set()
    for storage in (first, second, other):
        await storage.close()


class RecordingInvoker:
    """An endpoint answering OK after ``delay`` seconds, noting when each call started."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started: dict[str, float] = {}

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        request = _wire.RunRequest.from_msgpack(body)
        self.started[request.dispatch_id] = time.time()
        await asyncio.sleep(self.delay)
        return 200, _wire.RunResponse(status=OK, exit=_wire.Exit(output=b"")).to_msgpack()

    async def close(self) -> None:
        pass


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def test_other_orchestrators_leave_the_calls_of_a_hosted_endpoint_to_its_host(
    url: str,
) -> None:
    """An embedded orchestrator runs its application's calls in process; a
    ``dispatch server`` on the same database takes only those that waited
    for it more than HANDOFF seconds (its backlog), and all of them once it
    stopped."""
    app_storage, server_storage = PostgresStorage(url), PostgresStorage(url)
    client = PostgresStorage(url)  # (a third process dispatches: both hear of its calls)
    await app_storage.migrate()
    # The application's endpoint takes one call at a time, 0.3 s each: 8 calls
    # would take it 2.4 s alone.
    app_invoker, server_invoker = RecordingInvoker(0.3), RecordingInvoker(0.0)
    app = Engine(app_storage, app_invoker, None, limiter=lambda: Limiter(1.0, maximum=1.0))
    server = Engine(server_storage, server_invoker, None)
    running = [asyncio.ensure_future(engine.run()) for engine in (app, server)]
    await app.host({EP})
    assert await has_host(server_storage)

    created = time.time()
    await client.create([new(f"c{i}") for i in range(8)], created)
    await until(lambda: all_done(server_storage, 8))
    assert app_invoker.started and server_invoker.started
    assert set(app_invoker.started) | set(server_invoker.started) == {f"c{i}" for i in range(8)}
    assert min(app_invoker.started.values()) - created < HANDOFF
    # (The server's first claim of them waited for the handoff; once it
    # runs some, what its completions claim may follow at once.)
    assert min(server_invoker.started.values()) - created >= HANDOFF

    await app.stop()  # withdraws its record: the server runs new calls at once
    assert not await has_host(server_storage)
    created = time.time()
    await client.create([new("after")], created)
    await until(lambda: all_done(server_storage, 9))
    assert server_invoker.started["after"] - created < HANDOFF
    await server.stop()
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    for storage in (app_storage, server_storage, client):
        await storage.close()


async def has_host(storage: PostgresStorage) -> bool:
    return bool((await storage.due(time.time())).hosts)


async def all_done(storage: PostgresStorage, count: int) -> bool:
    return (await storage.counts())["done"] == count
