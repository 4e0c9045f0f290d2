"""The ``dispatch`` command.

    dispatch run [--db PATH] -- CMD...    an orchestrator, and CMD connected to it
    dispatch server [--db URL] [--host H] [--port P]    a standalone orchestrator

``dispatch run`` starts an orchestrator (database and keys in ``.dispatch/``),
runs CMD with the ``DISPATCH_*`` variables that make ``dispatch.run``
connect to it, prefixes each line of output with where it comes from, and
on a terminal shows a live table of calls. It exits with CMD's exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import _calls_cli, _local, _logging, _signature
from ._run import Server
from ._status import Status
from .orchestrator import (
    DatabaseLocked,
    DatabaseUnavailable,
    Orchestrator,
    RetryPolicy,
    open_storage,
)
from .orchestrator._storage import CANCELLED, DONE, RUNNING, WAITING, CallSummary

logger = logging.getLogger("dispatch")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dispatch", description="Durable execution for Python.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a command connected to a local orchestrator")
    run.add_argument(
        "--db",
        help="database path or URL (default: $DISPATCH_DATABASE_URL, else .dispatch/dispatch.db)",
    )
    run.add_argument("--no-table", action="store_true", help="no live table of calls")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command to run")
    server = commands.add_parser("server", help="run a standalone orchestrator")
    server.add_argument(
        "--db",
        help="database path, or postgresql:// URL shared by several servers "
        "(default: $DISPATCH_DATABASE_URL, else .dispatch/dispatch.db)",
    )
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=_local.DEFAULT_PORT)
    defaults = RetryPolicy()
    server.add_argument(
        "--max-attempts",
        type=_positive(int),
        default=defaults.max_attempts,
        help=f"attempts a call gets in all (default: {defaults.max_attempts})",
    )
    server.add_argument(
        "--attempt-timeout",
        type=_positive(float),
        default=defaults.attempt_timeout,
        help=f"seconds an endpoint has to answer (default: {defaults.attempt_timeout:g})",
    )
    server.add_argument(
        "--lease",
        type=_positive(float),
        default=30.0,
        help="seconds a call stays claimed by a server that stopped renewing it (dead), "
        "before another server sharing the database runs it again (default: 30)",
    )
    commands.add_parser(
        "env",
        help="print, for a shell, the variables an application needs to use the "
        "orchestrators that share this directory's keys (.dispatch/keys.json)",
    )
    _calls_cli.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "calls":
        sys.exit(_calls_cli.main(args))
    if args.command == "env":
        keys = _local.keys()
        print(f"export DISPATCH_API_KEY={shlex.quote(keys.api_key)}")
        print(f"export DISPATCH_VERIFICATION_KEY={shlex.quote(keys.verification_key)}")
        print(f"export DISPATCH_SEAL_KEY={shlex.quote(keys.seal_key_text())}")
        return
    try:
        if args.command == "run":
            command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not command:
                parser.error("dispatch run needs a command: dispatch run -- python app.py")
            sys.exit(asyncio.run(_run(command, args.db, table=not args.no_table)))
        policy = RetryPolicy(max_attempts=args.max_attempts, attempt_timeout=args.attempt_timeout)
        sys.exit(asyncio.run(_server(args.db, args.host, args.port, policy, args.lease)))
    except (DatabaseLocked, DatabaseUnavailable) as error:
        parser.exit(1, f"dispatch: {error}\n")


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _print_line(source: str, text: str, console: Console, output: TextIO) -> None:
    """One line of ``source``'s output, prefixed with its name.

    On a terminal, through rich (colour, and the live table stays below);
    otherwise verbatim: no wrapping, no tab expansion, each stream to its own.
    """
    try:
        if console.is_terminal:
            prefix = Text(f"{source} | ", style=_SOURCE_STYLE[source])
            console.print(prefix + Text(text), soft_wrap=True, highlight=False)
        else:
            output.write(f"{source} | {text}\n")
            output.flush()
    except OSError:
        pass  # the terminal or pipe is gone: nobody is reading


_SOURCE_STYLE = {"app": "cyan", "orchestrator": "magenta"}


class _Prefixed(logging.Handler):
    """The orchestrator's log lines, prefixed, to stderr (or above the live table)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        for line in self.format(record).splitlines():
            _print_line("orchestrator", line, self.console, sys.stderr)


async def _serve(orchestrator: Orchestrator, host: str, port: int) -> Server:
    server = Server(_config(orchestrator, host, port))
    server_task = asyncio.ensure_future(server.serve())
    while not server.started:
        if server_task.done():
            server_task.result()  # raises what stopped it
            raise RuntimeError(f"the orchestrator could not serve on {host}:{port}")
        await asyncio.sleep(0.01)
    server.task = server_task  # type: ignore[attr-defined]
    return server


def _config(app: Any, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning")


async def _run(command: list[str], db: str | None, table: bool) -> int:
    console = Console(stderr=False)
    handler = _logging.configure(sys.stderr, text_format="%(message)s", handler=_Prefixed(console))
    keys = _local.keys()
    storage = open_storage(db or _local.database())
    await storage.migrate()  # an unusable database is a clear error, before anything runs
    orchestrator = Orchestrator(
        storage,
        signing_key=_signature.load_private_key(keys.signing_key),
        api_key=keys.api_key,
    )
    api_port, app_port = _free_port(), _free_port()
    server = await _serve(orchestrator, "127.0.0.1", api_port)
    url = _local.announce("127.0.0.1", api_port)
    logger.info(
        "serving on %s, dashboard on %s/dashboard/ (its API key: dispatch env); "
        "dispatch calls list shows the calls",
        url,
        url,
    )
    env = {
        **os.environ,
        "DISPATCH_API_URL": f"http://127.0.0.1:{api_port}",
        "DISPATCH_API_KEY": keys.api_key,
        "DISPATCH_ENDPOINT_ADDR": f"127.0.0.1:{app_port}",
        "DISPATCH_ENDPOINT_URL": f"http://127.0.0.1:{app_port}/dispatch",
        "DISPATCH_VERIFICATION_KEY": keys.verification_key,
        "DISPATCH_SEAL_KEY": keys.seal_key_text(),
        "PYTHONUNBUFFERED": "1",
        # The command's log lines in the format of ours (its stderr is a pipe to us).
        "DISPATCH_LOG_FORMAT": _logging.log_format(sys.stderr),
    }
    try:
        # In a session of its own: a Ctrl-C at the terminal reaches only this
        # process, which passes it on once (a second one would force an exit).
        process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as error:
        print(f"dispatch: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
        server.should_exit = True
        await server.task  # type: ignore[attr-defined]
        # The shell's codes: 127 not found, 126 found but not runnable.
        return 127 if isinstance(error, FileNotFoundError) else 126
    loop = asyncio.get_running_loop()
    # SIGHUP too: when the terminal closes, the command must not outlive us.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, _forward, process, sig)
    live = (
        Live(console=console, auto_refresh=False, transient=True)
        if table and console.is_terminal
        else None
    )

    async def pipe(stream: asyncio.StreamReader, output: TextIO) -> None:
        while line := await stream.readline():
            _print_line("app", line.decode(errors="replace").rstrip("\n"), console, output)

    async def refresh() -> None:
        while live is not None:
            live.update(_table(await orchestrator.storage.recent(40)), refresh=True)
            await asyncio.sleep(0.5)

    assert process.stdout is not None and process.stderr is not None
    pipes = [
        asyncio.ensure_future(pipe(process.stdout, sys.stdout)),
        asyncio.ensure_future(pipe(process.stderr, sys.stderr)),
    ]
    if live is not None:
        live.start()
    refresher = asyncio.ensure_future(refresh())
    try:
        code = await process.wait()
        await asyncio.gather(*pipes)
    finally:
        refresher.cancel()
        if live is not None:
            live.stop()
        server.should_exit = True
        await server.task  # type: ignore[attr-defined]
        logging.getLogger("dispatch").removeHandler(handler)
    # A command killed by signal N exits, as in a shell, with 128 + N.
    return code if code >= 0 else 128 - code


def _forward(process: asyncio.subprocess.Process, sig: int) -> None:
    if process.returncode is None:
        process.send_signal(sig)


_STATE_STYLE = {RUNNING: "yellow", WAITING: "blue", DONE: "green"}


def _table(calls: list[CallSummary]) -> Table:
    table = Table(title="calls", expand=False)
    for column in ("function", "status", "attempt", "duration"):
        table.add_column(column)
    depth: dict[str, int] = {}
    now = time.time()
    for call in calls:
        level = depth[call.id] = depth.get(call.parent_id or "", -1) + 1 if call.parent_id else 0
        if call.state == DONE:
            if call.status == CANCELLED:
                status, style = "cancelled", "dim"
            else:
                status = Status(call.status).name if call.status is not None else "done"
                style = "green" if call.status == Status.OK.value else "red"
        else:
            status, style = call.state, _STATE_STYLE.get(call.state, "")
        duration = (call.finished_at or now) - call.created_at
        table.add_row(
            "  " * level + ("└ " if level else "") + call.function,
            Text(status, style=style),
            str(call.attempt),
            f"{duration:.2f}s",
        )
    return table


async def _server(db: str | None, host: str, port: int, policy: RetryPolicy, lease: float) -> int:
    # On the root logger, as logging.basicConfig did: other libraries' lines too.
    _logging.configure(sys.stderr, text_format="%(asctime)s %(name)s %(message)s", logger="")
    keys = _local.keys()
    api_key = os.environ.get("DISPATCH_API_KEY") or keys.api_key
    signing = os.environ.get("DISPATCH_SIGNING_KEY") or keys.signing_key
    private = _signature.load_private_key(signing)
    storage = open_storage(db or _local.database())
    await storage.migrate()  # an unusable database is a clear error, before serving
    orchestrator = Orchestrator(
        storage, signing_key=private, api_key=api_key, policy=policy, lease=lease
    )
    server = Server(_config(orchestrator, host, port))
    public = _signature.public_key_text(private)
    url = _local.announce(host, port)
    print(
        f"dispatch: orchestrator on http://{host}:{port} (dashboard: {url}/dashboard/); "
        f"endpoints verify its requests with DISPATCH_VERIFICATION_KEY={public}",
        file=sys.stderr,
        flush=True,
    )
    await server.serve()
    return 0
