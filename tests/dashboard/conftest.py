"""Fixtures of the dashboard tests.

- ``client``: Starlette's TestClient on the orchestrator's app (API and
  dashboard) over a SQLite database filled by :func:`populate` through the
  storage's own API, with controlled times; the engine does not run.
- ``live``: a real orchestrator (SQLite file, API key, signed requests) and
  a real application endpoint (the functions of ``workload``), each served by
  uvicorn on a free port, in an event loop of their own on another thread.
- ``browser``: Debian's Chromium (``/usr/bin/chromium``) driven by
  Playwright, headless. Without it, or without Playwright, the browser tests
  skip, saying why, unless ``DISPATCH_REQUIRE_BROWSER=1`` (as in CI): then
  they fail.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgpack  # type: ignore[import-untyped]
import pytest
from orchestrator.harness import served

from dispatch import Dispatch, Status, _signature, _wire
from dispatch.orchestrator import Engine, HTTPInvoker, Orchestrator, RetryPolicy, SQLiteStorage
from dispatch.orchestrator._api import api_app
from dispatch.orchestrator._storage import (
    CallRecord,
    Claimed,
    Completion,
    Finish,
    NewCall,
    Retry,
    Suspend,
    Transition,
)

from . import workload

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 under its TestClient; httpx still works.
    warnings.filterwarnings("ignore", message=r".*httpx.*starlette\.testclient")
    from starlette.testclient import TestClient

if TYPE_CHECKING:
    from playwright.sync_api import Browser

KEY = "dashboard-test-key-5f2c"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
T0 = 1_700_000_000.0
"""When the populated calls begin (2023-11-14 22:13:20 UTC), one a second."""
ENDPOINT = "http://app.test/dispatch"
WORKER = "http://worker.test/dispatch"
"""The endpoint of the calls that :func:`populate` runs (claims take only those)."""
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/billing.py", line 12, in charge\n'
    "    raise CardDeclined(card)\n"
    "billing.CardDeclined: card 4242 declined <insufficient funds>"
)
FRAMES = [
    {
        "task": 0,
        "frames": [
            {
                "function": "checkout",
                "file": "/app/shop.py",
                "line": 31,
                "locals": {"cart": "['book', 'pen']", "total": "42"},
            }
        ],
    }
]


# --- a database filled through the storage's API ---------------------------------------------


@dataclass
class Populated:
    """What :func:`populate` made: ids by role."""

    bulk: list[str]
    """120 calls of ``bulk`` (pending), oldest first, one a second from T0."""
    ok: str
    failed: str
    """``charge``: PERMANENT_ERROR with a traceback, after a TEMPORARY_ERROR attempt."""
    cancelled: str
    pending: str
    root: str
    """``checkout``: waiting on two children (one done, one pending), with its frames."""
    children: list[str]
    sealer: _wire.Sealer


async def populate(storage: SQLiteStorage) -> Populated:
    """Calls in every state, made through the storage's API at known times."""
    await storage.migrate()
    sealer = _wire.Sealer([_wire.generate_key()])
    clock = iter(range(100_000))

    async def create(function: str, *args: Any, endpoint: str = ENDPOINT, **kwargs: Any) -> str:
        tick = next(clock)
        call_id = f"{function}-{tick:05d}"
        call = NewCall(
            id=call_id,
            function=function,
            endpoint=endpoint,
            input=_wire.encode_arguments(args, kwargs, sealer),
            root_id=call_id,
        )
        await storage.create([call], T0 + tick)
        return call_id

    bulk = [await create("bulk", i) for i in range(120)]
    ok = await create("add", 1, 2, endpoint=WORKER)
    failed = await create("charge", endpoint=WORKER, card="4242", amount=12.5, note=Status.OK)
    cancelled = await create("add", 3, 4, endpoint=WORKER)
    pending = await create("add", 5, 6)
    root = await create("checkout", ["book", "pen"], endpoint=WORKER)
    later = T0 + 1000
    claimed: dict[str, Claimed] = {}

    async def run(call_id: str, transition: Transition, status: Status, **fields: Any) -> None:
        if call_id not in claimed:  # the calls of WORKER due now, this one among them
            for call in await storage.claim("test", WORKER, 1000, later + 5, 3600):
                claimed[call.id] = call
        completion = Completion(
            call=claimed.pop(call_id),
            owner="test",
            transition=transition,
            now=later + 1,
            duration=0.5,
            status=status.value,
            **fields,
        )
        assert await storage.complete(completion)

    await run(ok, Finish(Status.OK.value, output=_wire.encode_value(3, sealer)), Status.OK)
    error = _wire.Error(
        status=Status.TEMPORARY_ERROR.value, type="billing.Timeout", message="gateway slow"
    ).to_msgpack()
    await run(
        failed,
        Retry(due_at=later, status=Status.TEMPORARY_ERROR.value, error=error),
        Status.TEMPORARY_ERROR,
        error_type="billing.Timeout",
        error_message="gateway slow",
    )
    error = _wire.Error(
        status=Status.PERMANENT_ERROR.value,
        type="billing.CardDeclined",
        message="card 4242 declined <insufficient funds>",
        traceback=TRACEBACK,
    ).to_msgpack()
    await run(
        failed,
        Finish(Status.PERMANENT_ERROR.value, error=error),
        Status.PERMANENT_ERROR,
        error_type="billing.CardDeclined",
        error_message="card 4242 declined <insufficient funds>",
        traceback=TRACEBACK,
    )
    await storage.cancel(cancelled, later + 2)
    children = tuple(
        NewCall(
            id=f"reserve-{item}",
            function="reserve",
            endpoint=WORKER,
            input=_wire.encode_arguments((item,), {}, sealer),
            root_id=root,
            parent_id=root,
            correlation_id=index,
        )
        for index, item in enumerate(["book", "pen"])
    )
    suspend = Suspend(
        snapshot=b"s" * 2000,
        min_results=2,
        max_results=2,
        wait_until=later + 10**6,
        children=children,
        frames=msgpack.packb(FRAMES),
    )
    await run(root, suspend, Status.OK, snapshot_size=2000)
    done = Finish(Status.OK.value, output=_wire.encode_value(True, sealer))
    await run("reserve-book", done, Status.OK)
    return Populated(
        bulk=bulk,
        ok=ok,
        failed=failed,
        cancelled=cancelled,
        pending=pending,
        root=root,
        children=[c.id for c in children],
        sealer=sealer,
    )


@dataclass
class Dashboard:
    """A TestClient on the orchestrator's app and what the database holds."""

    client: TestClient
    calls: Populated
    storage: SQLiteStorage

    def login(self) -> None:
        response = self.client.post(
            "/dashboard/login", data={"api_key": KEY}, follow_redirects=False
        )
        assert response.status_code == 303, response.text

    def get(self, call_id: str) -> CallRecord:
        record = asyncio.run(self.storage.get(call_id))
        assert record is not None, call_id
        return record


def _dashboard(tmp_path: Path, key: str | None) -> Iterator[Dashboard]:
    storage = SQLiteStorage(str(tmp_path / "dispatch.db"))
    calls = asyncio.run(populate(storage))
    engine = Engine(storage, HTTPInvoker(), None)
    try:
        with TestClient(api_app(engine, key), base_url="http://testserver") as client:
            yield Dashboard(client, calls, storage)
    finally:
        asyncio.run(storage.close())


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    yield from _dashboard(tmp_path, KEY)


@pytest.fixture
def open_dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """The same, on an orchestrator without an API key."""
    yield from _dashboard(tmp_path, None)


# --- real servers --------------------------------------------------------------------------

POLICY = RetryPolicy(
    max_attempts=3, initial_backoff=0.05, multiplier=2.0, max_backoff=0.2, attempt_timeout=900
)


class Live:
    """An orchestrator and an application, served over HTTP on another thread."""

    def __init__(self, directory: Path) -> None:
        private, self.public = _signature.generate_keypair()
        self.private = _signature.load_private_key(private)
        self.seal = _wire.generate_key()
        self.sealer = _wire.Sealer([self.seal])
        self.directory = directory
        self.url = self.app_url = ""
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._orchestrator: Orchestrator | None = None
        self._thread = threading.Thread(target=self._serve, name="dashboard-servers")

    def __enter__(self) -> Live:
        workload.release.clear()
        self._thread.start()
        if not self._ready.wait(30) or self._failure is not None:
            self._thread.join(5)
            raise RuntimeError(f"the servers did not start: {self._failure!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        workload.release.set()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._failure is not None:
            raise self._failure

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as failure:
            self._failure = failure
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        endpoint = Dispatch(
            registry=workload.registry, verification_key=self.public, seal_keys=[self.seal]
        )
        storage = SQLiteStorage(str(self.directory / "dispatch.db"))
        self._orchestrator = Orchestrator(
            storage, signing_key=self.private, api_key=KEY, policy=POLICY
        )
        async with (
            served(endpoint) as app_url,
            served(self._orchestrator, lifespan="on") as url,
        ):
            self.app_url, self.url = app_url, url
            self._ready.set()
            await self._stop.wait()
            workload.release.set()

    def dispatch(self, function: str, *args: Any) -> str:
        """Dispatch a call through the API, as a client does; its id."""
        call = _wire.Call(
            function=function,
            input=_wire.encode_arguments(args, {}, self.sealer),
            endpoint=f"{self.app_url}/dispatch",
        )
        response = httpx.post(
            f"{self.url}/v1/dispatch",
            content=_wire.DispatchRequest(calls=(call,)).to_msgpack(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/msgpack"},
        )
        assert response.status_code == 200, response.text
        [call_id] = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
        return call_id

    def get(self, call_id: str) -> CallRecord:
        """The call's record, read in the servers' loop."""
        assert self._loop is not None and self._orchestrator is not None
        future = asyncio.run_coroutine_threadsafe(
            self._orchestrator.storage.get(call_id), self._loop
        )
        record = future.result(10)
        assert record is not None, call_id
        return record

    def until(
        self, call_id: str, condition: Callable[[CallRecord], bool], timeout: float = 20.0
    ) -> CallRecord:
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(call_id)
            if condition(record):
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached: {record}")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with Live(tmp_path_factory.mktemp("live")) as servers:
        yield servers


# --- the browser ---------------------------------------------------------------------------


def _unavailable() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: apt-get install chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = _unavailable()
    if problem is not None:
        if os.environ.get("DISPATCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DISPATCH_REQUIRE_BROWSER=1, but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()
