"""The orchestrator: stores calls, runs them on their endpoints, fans results back in.

Runnable on its own (``dispatch server``), embedded in an application
(``dispatch.run`` without ``DISPATCH_API_URL``), or started by
``dispatch run -- CMD``. See ``_engine`` for how calls run, ``_storage`` for
how they are kept, ``_api`` for the HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.types import Receive, Scope, Send

from ._api import api_app
from ._engine import Engine, RetryPolicy
from ._invoker import ASGIInvoker, DirectInvoker, HTTPInvoker, Invoker, TransportError
from ._limiter import Limiter
from ._sqlite import DatabaseLocked, SQLiteStorage
from ._storage import CallConflict, CallRecord, DatabaseUnavailable, NewCall, Storage

logger = logging.getLogger("dispatch.orchestrator")

__all__ = [
    "ASGIInvoker",
    "CallConflict",
    "CallRecord",
    "DatabaseLocked",
    "DatabaseUnavailable",
    "DirectInvoker",
    "Engine",
    "HTTPInvoker",
    "Invoker",
    "Limiter",
    "NewCall",
    "Orchestrator",
    "RetryPolicy",
    "SQLiteStorage",
    "Storage",
    "TransportError",
    "open_storage",
]


def open_storage(url: str) -> Storage:
    """The storage a database URL names: ``postgresql://...`` (shared by any
    number of orchestrators), ``sqlite:///path``, a plain file path, or
    ``:memory:``."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from ._postgres import PostgresStorage
        except ImportError as error:
            raise DatabaseUnavailable(
                f"PostgreSQL storage needs psycopg 3 ({error}): pip install 'dispatch[postgres]'"
            ) from None
        return PostgresStorage(url)
    path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SQLiteStorage(path)


class Orchestrator:
    """Storage, engine and API together; an ASGI app serving the API."""

    def __init__(
        self,
        storage: Storage,
        *,
        signing_key: Ed25519PrivateKey | None,
        api_key: str | None,
        policy: RetryPolicy | None = None,
        invoker: Invoker | None = None,
        lease: float = 30.0,
    ) -> None:
        self.storage = storage
        self.invoker = invoker or HTTPInvoker()
        self.engine = Engine(
            storage,
            self.invoker,
            signing_key,
            policy=policy,
            lease=lease,
            exclusive=storage.exclusive,
        )
        self.api = api_app(self.engine, api_key)
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Migrate the database and start running calls."""
        await self.storage.migrate()
        self._task = asyncio.ensure_future(self.engine.run())

    async def stop(self, grace: float = 10.0) -> None:
        """Stop running calls (attempts in flight get ``grace`` seconds), close everything."""
        await self.engine.stop(grace)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.invoker.close()
        await self.storage.close()

    async def get(self, call_id: str) -> CallRecord | None:
        return await self.storage.get(call_id)
