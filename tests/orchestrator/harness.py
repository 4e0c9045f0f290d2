"""An engine on SQLite in memory, wired to the endpoint of ``functions``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Literal

import uvicorn

from dispatch import Dispatch, Status, _signature, _wire
from dispatch._scheduler import Scheduler
from dispatch.orchestrator import (
    ASGIInvoker,
    CallRecord,
    DirectInvoker,
    Engine,
    Invoker,
    Limiter,
    NewCall,
    RetryPolicy,
    SQLiteStorage,
    Storage,
)
from dispatch.orchestrator._engine import INLINE_WINDOW, new_id
from dispatch.orchestrator._storage import (
    DONE,
    AttemptRecord,
    CallQuery,
    CallSummary,
    Claim,
    Claimed,
    Completed,
    Completion,
    Due,
)

from . import functions

ENDPOINT = "http://app.test/dispatch"

# Small delays, so that retries take milliseconds.
FAST = RetryPolicy(
    max_attempts=3, initial_backoff=0.01, multiplier=2.0, max_backoff=0.1, attempt_timeout=10.0
)


class Keys:
    def __init__(self) -> None:
        private, self.public = _signature.generate_keypair()
        self.private = _signature.load_private_key(private)
        self.seal = _wire.generate_key()
        self.sealer = _wire.Sealer([self.seal])


class RecordingStorage:
    """A storage that keeps every completion and lease renewal the engine applies."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.exclusive = inner.exclusive
        self.completions: list[Completion] = []
        self.renewals: list[list[str]] = []

    async def migrate(self) -> None:
        await self.inner.migrate()

    async def watch(self, wake: Callable[[], None]) -> None:
        await self.inner.watch(wake)

    async def close(self) -> None:
        await self.inner.close()

    async def create(
        self, calls: Sequence[NewCall], now: float, claim: Claim | None = None
    ) -> list[Claimed]:
        return await self.inner.create(calls, now, claim)

    def create_sync(
        self, calls: Sequence[NewCall], now: float, claim: Claim | None = None
    ) -> list[Claimed]:
        return self.inner.create_sync(calls, now, claim)

    async def claim(
        self, owner: str, endpoint: str | None, limit: int, now: float, lease: float
    ) -> list[Claimed]:
        return await self.inner.claim(owner, endpoint, limit, now, lease)

    async def complete(self, completion: Completion) -> bool:
        self.completions.append(completion)
        return await self.inner.complete(completion)

    async def complete_and_claim(
        self, completion: Completion, limit: int, lease: float
    ) -> Completed:
        self.completions.append(completion)
        return await self.inner.complete_and_claim(completion, limit, lease)

    async def renew(self, owner: str, ids: Sequence[str], until: float) -> None:
        self.renewals.append(list(ids))
        await self.inner.renew(owner, ids, until)

    async def recover(self, now: float) -> int:
        return await self.inner.recover(now)

    async def host(self, endpoints: Sequence[str], now: float, until: float) -> None:
        await self.inner.host(endpoints, now, until)

    async def due(self, now: float) -> Due:
        return await self.inner.due(now)

    async def cancel(self, call_id: str, now: float) -> int:
        return await self.inner.cancel(call_id, now)

    async def get(self, call_id: str) -> CallRecord | None:
        return await self.inner.get(call_id)

    async def counts(self) -> dict[str, int]:
        return await self.inner.counts()

    async def recent(self, limit: int) -> list[CallSummary]:
        return await self.inner.recent(limit)

    async def list_calls(self, query: CallQuery) -> list[CallSummary]:
        return await self.inner.list_calls(query)

    async def tree(self, call_id: str, limit: int) -> list[CallSummary]:
        return await self.inner.tree(call_id, limit)

    def of(self, call_id: str) -> list[Completion]:
        return [c for c in self.completions if c.call.id == call_id]


class Env:
    """An engine running the calls of ``functions`` on an in-process endpoint.

    ``async with Env() as env``: the storage is migrated and the engine runs;
    on exit it stops and everything is closed. The endpoint is reached through
    ``invoker(env)``, or else in process ``via`` "asgi" or "direct".
    """

    def __init__(
        self,
        *,
        policy: RetryPolicy = FAST,
        invoker: Callable[[Env], Invoker] | None = None,
        via: str = "asgi",
        limiter: Callable[[], Limiter] = Limiter,
        max_wait: float = 60.0,
        lease: float = 60.0,
        signing_key: bool = True,
        storage: Storage | None = None,
        grace: float = 1.0,
        inline_window: float = INLINE_WINDOW,
    ) -> None:
        functions.reset()
        self.keys = Keys()
        self.endpoint = Dispatch(
            registry=functions.registry,
            verification_key=self.keys.public,
            seal_keys=[self.keys.seal],
            scheduler=Scheduler(self.keys.sealer, max_wait=max_wait),
        )
        self.storage = RecordingStorage(storage or SQLiteStorage(":memory:"))
        self.grace = grace
        self.invoker = invoker(self) if invoker else self.in_process(via, self.endpoint)
        self.engine = Engine(
            self.storage,
            self.invoker,
            self.keys.private if signing_key else None,
            policy=policy,
            lease=lease,
            exclusive=True,
            limiter=limiter,
            inline_window=inline_window,
        )
        self._task: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Env:
        await self.storage.migrate()
        self._task = asyncio.ensure_future(self.engine.run())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.engine.stop(self.grace)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.invoker.close()
        await self.storage.close()

    def in_process(self, via: str, endpoint: Any) -> Invoker:
        """An invoker calling ``endpoint`` in process: as an ASGI app ("asgi"), or
        through its ``handle`` method ("direct")."""
        if via == "asgi":
            return ASGIInvoker(endpoint)
        assert via == "direct", via
        return DirectInvoker(endpoint)

    def new_call(
        self,
        function: str,
        *args: Any,
        endpoint: str = ENDPOINT,
        expires_at: float | None = None,
        call_id: str | None = None,
    ) -> NewCall:
        call_id = call_id or f"{function}-{new_id()}"
        return NewCall(
            id=call_id,
            function=function,
            endpoint=endpoint,
            input=_wire.encode_arguments(args, {}, self.keys.sealer),
            root_id=call_id,
            expires_at=expires_at,
        )

    async def submit(self, function: str, *args: Any, **options: Any) -> str:
        call = self.new_call(function, *args, **options)
        await self.engine.submit([call])
        return call.id

    async def done(self, call_id: str, timeout: float = 10.0) -> CallRecord:
        """The call's record once it is done."""
        return await self.until(call_id, lambda record: record.state == DONE, timeout)

    async def until(
        self, call_id: str, condition: Callable[[CallRecord], bool], timeout: float = 10.0
    ) -> CallRecord:
        deadline = time.monotonic() + timeout
        while True:
            record = await self.storage.get(call_id)
            assert record is not None, call_id
            if condition(record):
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached: {record}")
            await asyncio.sleep(0.005)

    async def run(self, function: str, *args: Any, **options: Any) -> CallRecord:
        return await self.done(await self.submit(function, *args, **options))

    def value(self, record: CallRecord) -> Any:
        assert record.status == Status.OK.value, self.error(record)
        assert record.output is not None
        return _wire.decode_value(record.output, self.keys.sealer)

    def error(self, record: CallRecord) -> _wire.Error:
        assert record.error is not None, record
        return _wire.Error.from_msgpack(record.error)


def statuses(record: CallRecord) -> list[Status]:
    """The status of each finished attempt of a call, in order."""
    return [Status(a.status) for a in finished(record)]


def finished(record: CallRecord) -> list[AttemptRecord]:
    """The attempts of a call that finished. (A backend may also list attempts still
    running, or lost with their orchestrator, with ``finished_at`` None.)"""
    return [a for a in record.attempts if a.finished_at is not None]


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def served(app: Any, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[str]:
    """``app`` served by uvicorn on a real socket in this event loop; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
