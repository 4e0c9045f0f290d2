"""Fixtures of the orchestrator tests, and ``async def`` tests without a plugin.

``storage`` is the backend under test: every test of the conformance suite
(``test_storage.py``) takes it and runs once per backend in ``BACKENDS``.
A new backend is one more entry there and one more branch in
:func:`open_backend`; the tests do not change.

An ``async def`` test runs in a fresh event loop (``asyncio.run``). A fixture
that must live in that loop (a database connection, say) returns an
:class:`InLoop`: the test receives what it yields, opened before the test and
closed after it, in the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from postgres_server import postgres_schema

from dispatch.orchestrator import SQLiteStorage, Storage
from dispatch.orchestrator._postgres import PostgresStorage

T = TypeVar("T")

BACKENDS = ["sqlite-file", "sqlite-memory", "postgres"]


class InLoop(Generic[T]):
    """A fixture value opened inside the test's event loop (see the module docstring)."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[T]]) -> None:
        self.opener = opener


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters}
    asyncio.run(_run(test, arguments))
    return True


async def _run(test: Callable[..., Any], arguments: dict[str, Any]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for name, value in arguments.items():
            if isinstance(value, InLoop):
                arguments[name] = await stack.enter_async_context(value.opener())
        await test(**arguments)


@contextlib.asynccontextmanager
async def open_backend(kind: str, location: str) -> AsyncIterator[Storage]:
    """A new, empty, migrated storage of ``kind`` at ``location`` (a
    directory, or a PostgreSQL URL); closed on exit."""
    storage: Storage
    if kind == "sqlite-file":
        storage = SQLiteStorage(str(Path(location) / "dispatch.db"))
    elif kind == "sqlite-memory":
        storage = SQLiteStorage(":memory:")
    elif kind == "postgres":
        storage = PostgresStorage(location)
    else:
        raise AssertionError(f"unknown backend {kind}")
    try:
        await storage.migrate()
        yield storage
    finally:
        await storage.close()


@pytest.fixture(params=["asgi", "direct"])
def via(request: pytest.FixtureRequest) -> str:
    """How an in-process endpoint is reached (see ``harness.Env``)."""
    kind: str = request.param
    return kind


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InLoop[Storage]]:
    kind: str = request.param
    if kind == "postgres":  # a schema of its own, dropped after the test
        for url in postgres_schema():
            yield InLoop(functools.partial(open_backend, kind, url))
    else:
        yield InLoop(lambda: open_backend(kind, str(tmp_path)))
