"""``dispatch.run``: serve the application, call ``init`` once ready, serve until interrupted.

Without ``DISPATCH_API_URL``, an orchestrator is embedded in the process: its
database and keys live in ``.dispatch/`` (``DISPATCH_DIR``), it calls the
endpoint in process (no socket, no signature), and a restart resumes what
was suspended. With ``DISPATCH_API_URL`` (as ``dispatch run -- ...`` sets
it), the application serves its endpoint on ``DISPATCH_ENDPOINT_ADDR`` and
sends calls to that orchestrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from . import _config, _local, _logging, _wire
from ._client import Client
from ._endpoint import Dispatch
from ._function import Call, DispatchID, default_registry

logger = logging.getLogger("dispatch")


class Server(uvicorn.Server):
    """uvicorn's server, ending normally after a graceful shutdown on Ctrl-C or
    SIGTERM (uvicorn re-raises the signal once it has shut down, which turns
    a clean stop into a KeyboardInterrupt traceback)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run(init: Callable[[], Any] | None = None) -> None:
    """Serve this application's dispatch functions until interrupted.

    Once the server accepts requests, ``init`` (if given) is called once, in a
    thread of its own, typically to dispatch the first calls. Ctrl-C or
    SIGTERM shuts down cleanly: attempts in flight finish first, and nothing
    accepted is lost.
    """
    package_logger = logging.getLogger("dispatch")
    if not package_logger.handlers and not logging.getLogger().handlers:
        # What happens to calls (retries, failures) is worth seeing by default:
        # JSON lines, unless at a terminal (see _logging).
        _logging.configure(sys.stderr, text_format="dispatch: %(message)s")
    settings = _config.Settings.from_env()
    if settings.api_url:
        _run_connected(settings, init)
        return
    from .orchestrator import DatabaseLocked

    try:
        _run_embedded(settings, init)
    except DatabaseLocked as error:
        raise SystemExit(f"dispatch: {error}") from None


def _address(settings: _config.Settings) -> tuple[str, int]:
    host, _, port = settings.endpoint_addr.rpartition(":")
    if not host or not port.isdigit():
        raise _config.ConfigurationError(
            f"DISPATCH_ENDPOINT_ADDR must be host:port, not {settings.endpoint_addr!r}"
        )
    return host.strip("[]"), int(port)


def _run_connected(settings: _config.Settings, init: Callable[[], Any] | None) -> None:
    host, port = _address(settings)
    registry = default_registry()
    registry.use_sender(Client(settings.api_url, settings.api_key).dispatch_calls)
    server = Server(
        uvicorn.Config(Dispatch(), host=host, port=port, log_level="warning", lifespan="off")
    )
    _serve(server, init)


class _Embedded:
    """One ASGI app: the endpoint at /dispatch, the orchestrator's API at /v1."""

    def __init__(self, endpoint: Dispatch, orchestrator: Any) -> None:
        self.endpoint = endpoint
        self.orchestrator = orchestrator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.orchestrator(scope, receive, send)
        elif scope.get("path", "").startswith("/dispatch"):
            await self.endpoint(scope, receive, send)
        else:
            await self.orchestrator(scope, receive, send)


def _run_embedded(settings: _config.Settings, init: Callable[[], Any] | None) -> None:
    from .orchestrator import DirectInvoker, NewCall, Orchestrator, SQLiteStorage, open_storage
    from .orchestrator._engine import new_id

    directory = _local.directory()
    keys = _local.keys()
    seal_keys = list(settings.seal_keys) or [keys.seal_key]
    endpoint = Dispatch(verification_key=keys.verification_key, seal_keys=seal_keys)
    storage = open_storage(_local.database())
    # The orchestrator calls the endpoint in process: unsigned, as no request
    # crosses a network (the endpoint still verifies any that arrive over HTTP).
    orchestrator = Orchestrator(
        storage, signing_key=None, api_key=keys.api_key, invoker=DirectInvoker(endpoint)
    )
    if not storage.exclusive:
        orchestrator.engine.endpoints = set()  # its own, once serving (see announce)
    host, port = _address(settings)
    if "DISPATCH_ENDPOINT_ADDR" not in os.environ and not _free(host, port):
        port = 0  # the default port is taken: nothing outside needs this one
    server = Server(
        uvicorn.Config(_Embedded(endpoint, orchestrator), host=host, port=port, log_level="warning")
    )
    sealer = _wire.Sealer(seal_keys)
    engine = orchestrator.engine

    def send(calls: list[Call[Any]]) -> list[DispatchID]:
        loop = server_loop[0]
        url = f"http://{host}:{_bound_port(server) or port}/dispatch"
        now = time.time()
        new = []
        for call in calls:
            call_id = new_id()
            new.append(
                NewCall(
                    id=call_id,
                    function=call.function,
                    endpoint=url,
                    input=_wire.encode_arguments(call.args, call.kwargs, sealer),
                    root_id=call_id,
                    expires_at=now + engine.policy.expiration,
                )
            )
        # Stored by this thread, so a dispatch does not wait for the event
        # loop's turn, and claimed in the same transaction as far as the
        # engine has room: it runs them at once, without a claim of its own.
        claim = engine.reserve(url, len(new))
        claimed = []
        try:
            claimed = storage.create_sync(new, now, claim)
        finally:
            loop.call_soon_threadsafe(engine.adopt, claim, claimed, len(new))
        return [c.id for c in new]

    server_loop: list[asyncio.AbstractEventLoop] = []
    default_registry().use_sender(send)

    async def announce() -> None:
        server_loop.append(asyncio.get_running_loop())
        if not storage.exclusive:
            # A database shared with other orchestrators holds other
            # applications' calls too: this one runs its own, in process.
            # (Before the init function dispatches anything.)
            await engine.host({f"http://{host}:{_bound_port(server) or port}/dispatch"})

    if "DISPATCH_DATABASE_URL" not in os.environ:
        where = str(directory)
    elif isinstance(storage, SQLiteStorage):
        where = storage.path
    else:  # (not the URL itself: it may hold a password)
        where = "PostgreSQL: DISPATCH_DATABASE_URL"

    def start() -> None:
        storage.create_sync([], time.time())  # ready: the first dispatch does not connect
        if init is not None:
            init()

    banner = f"embedded orchestrator ({where})"
    _serve(server, init and start, on_started=announce, banner=banner)


def _serve(
    server: Server,
    init: Callable[[], Any] | None,
    on_started: Callable[[], Awaitable[None]] | None = None,
    banner: str = "",
) -> None:
    async def watch() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        if on_started is not None:
            await on_started()
        port = _bound_port(server)
        config = server.config
        suffix = f", {banner}" if banner else ""
        print(
            f"dispatch: serving on http://{config.host}:{port}{suffix}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        if init is not None:
            threading.Thread(
                target=_call_init, args=(init,), name="dispatch-init", daemon=True
            ).start()

    async def serve() -> None:
        watcher = asyncio.ensure_future(watch())
        try:
            await server.serve()
        finally:
            watcher.cancel()

    asyncio.run(serve())


def _call_init(init: Callable[[], Any]) -> None:
    try:
        init()
    except Exception:
        logger.exception("dispatch: the init function raised")


def _bound_port(server: Server) -> int | None:
    for listener in getattr(server, "servers", []) or []:
        for sock in listener.sockets:
            port: int = sock.getsockname()[1]
            return port
    return None


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
