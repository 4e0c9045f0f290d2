"""The examples run as a newcomer runs them.

Each example runs both ways its docstring shows, in a fresh directory (so
``.dispatch/`` is new): ``python examples/<name>.py``, with the orchestrator
embedded in the process, and ``dispatch run -- python examples/<name>.py``,
with the orchestrator of the CLI. A test reads the output until the lines
the example prints have appeared, checks what the run recorded in its
database (``.dispatch/dispatch.db``), stops the process the way a user
does (Ctrl-C, or SIGTERM from a process manager), and checks that it exits
cleanly and that everything printed is what a user expects to see.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from dispatch import Status

EXAMPLES = Path(__file__).parent.parent / "examples"
DISPATCH = Path(sys.executable).parent / "dispatch"
# Generous limits for what takes a second or two, so that a loaded machine
# does not fail the tests; nothing here asserts on speed.
PATIENCE = 30.0
STOP_PATIENCE = 15.0

OK = Status.OK.value
TEMPORARY_ERROR = Status.TEMPORARY_ERROR.value
PERMANENT_ERROR = Status.PERMANENT_ERROR.value
TCP_ERROR = Status.TCP_ERROR.value


def test_resume_anywhere() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "resume_anywhere.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.strip().splitlines()
    pids = [re.match(r"\[pid (\d+)\]", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert len(set(pids)) == len(pids) == 5, "every step runs in its own interpreter"
    for number in range(1, 5):
        assert f"suspended after line {number} of 4" in lines[number - 1]
    assert lines[-1].endswith("finished: [('the', 4), ('dog', 2), ('fox', 2)]")


# -- running a command the way a terminal does ---------------------------------------------


def newcomer_environment() -> dict[str, str]:
    """This environment without what a newcomer would not have set: no
    ``DISPATCH_*`` configuration, no terminal size or colour overrides (the
    CLI's output would change with them), no warning filters.
    """
    dropped = {
        "COLUMNS",
        "LINES",
        "FORCE_COLOR",
        "NO_COLOR",
        "TTY_COMPATIBLE",
        "TTY_INTERACTIVE",
        "PYTHONWARNINGS",
    }
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in dropped and not name.startswith("DISPATCH_")
    }
    return environment


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        # "pid (command) state ppid ...": the command may hold spaces and parentheses.
        parent = int(text.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(stat.parent.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class Process:
    """A command started in a session of its own, as a terminal starts it (so
    that a signal to its process group is what Ctrl-C sends), its stdout and
    stderr read line by line on threads as they come."""

    def __init__(self, command: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.command = list(command)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(
            self.command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.popen.stdout, self.stdout),
                (self.popen.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.removesuffix("\n"))
                self._changed.notify_all()

    def transcript(self) -> str:
        return "\n".join(
            [f"$ {' '.join(self.command)}", "--- stdout", *self.stdout, "--- stderr", *self.stderr]
        )

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition()`` holds; it is checked on every line and
        every tenth of a second (it may look at more than the output)."""
        deadline = time.monotonic() + PATIENCE
        with self._changed:
            while not condition():
                if self.popen.poll() is not None and not any(r.is_alive() for r in self._readers):
                    if condition():
                        break
                    pytest.fail(f"the process ended before {what}:\n{self.transcript()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no {what} after {PATIENCE:.0f}s:\n{self.transcript()}")
                self._changed.wait(min(remaining, 0.1))

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process group, as a terminal sends Ctrl-C."""
        os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float = STOP_PATIENCE) -> int:
        """The exit code, once the process has ended and its output is read."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout:.0f}s:\n{self.transcript()}")
        self._close()
        return code

    def kill(self) -> None:
        """End the process and everything it started, whatever their state."""
        if self.popen.poll() is None:
            for pid in [*descendants(self.popen.pid), self.popen.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.popen.wait(STOP_PATIENCE)
        self._close()

    def _close(self) -> None:
        for reader in self._readers:
            reader.join(STOP_PATIENCE)
        if not any(reader.is_alive() for reader in self._readers):
            for stream in (self.popen.stdout, self.popen.stderr):
                if stream is not None:
                    stream.close()


def example_command(name: str, mode: str) -> list[str]:
    script = str(EXAMPLES / f"{name}.py")
    if mode == "python":
        return [sys.executable, script]
    return [str(DISPATCH), "run", "--", sys.executable, script]


# -- what each example does -----------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One call in the database."""

    function: str
    status: int
    attempt: int
    attempts: tuple[int, ...] | None
    """The status of each attempt; None for a durable coroutine, whose rows
    are runs (one per resume), not retries."""
    state: str = "done"


@dataclass(frozen=True)
class Example:
    name: str
    printed: tuple[str, ...]
    """What the example's functions print, on stdout."""
    calls: tuple[Recorded, ...]
    ordered: bool = True
    """Whether ``printed`` comes in this order."""
    logs: tuple[str, ...] = ()
    """Patterns of the orchestrator's log lines, in any order, without the
    prefix (``dispatch: `` from the embedded one, ``orchestrator | `` in ``dispatch run``)."""
    last: str | None = None
    """The line printed last, if the order of the others may vary."""
    stop: signal.Signals = signal.SIGINT
    """How the user stops it: Ctrl-C, or SIGTERM for one of them."""

    @property
    def coroutines(self) -> frozenset[str]:
        return frozenset(call.function for call in self.calls if call.attempts is None)


def greeted(function: str) -> Recorded:
    return Recorded(function, OK, 1, (OK,))


ID = r"\(\w+\)"
REJECTED = (
    r"TEMPORARY_ERROR \(dispatch\._errors\.OutputRejected: the function returned "
    r"<__main__\.Result object at 0x[0-9a-f]+>, which means TEMPORARY_ERROR\)"
)
RETRYING = r"; retrying in \d+\.\d+s"

EXAMPLE_LIST = [
    Example(
        "function",
        printed=("Hello Jane",),
        calls=(greeted("greet"),),
    ),
    Example(
        "run",
        printed=("I'm executed asynchronously",),
        calls=(greeted("example"),),
        stop=signal.SIGTERM,
    ),
    Example(
        "batch",
        printed=("Hello Jane", "Hello Mike", "Hello Hopper"),
        ordered=False,  # three calls running concurrently
        calls=(greeted("greet_everyone"), *[greeted("greet")] * 3),
    ),
    Example(
        "gather",
        printed=("Hello Jane", "Hello Mike", "Hello Hopper"),
        calls=(
            Recorded("greet_everyone", OK, 1, None),
            *[greeted("create_greeting")] * 3,
        ),
    ),
    Example(
        "register_error_type",
        printed=("example: raising FatalException",),
        calls=(Recorded("example", PERMANENT_ERROR, 1, (PERMANENT_ERROR,)),),
        logs=(
            rf"example {ID}: failed with PERMANENT_ERROR \(__main__\.FatalException\) "
            r"after 1 attempt",
        ),
    ),
    Example(
        "register_output_type",
        printed=("example: returning Result(success=False)",) * 5,
        calls=(Recorded("example", TEMPORARY_ERROR, 5, (TEMPORARY_ERROR,) * 5),),
        logs=(
            *[rf"example {ID}: attempt {n}: {REJECTED}{RETRYING}" for n in range(1, 5)],
            rf"example {ID}: failed with {REJECTED} after 5 attempts",
        ),
    ),
    Example(
        "pipeline",
        printed=(
            *[
                f"fetch_price({item!r}): connection dropped, will be retried"
                for item in ("apple", "pear", "plum", "fig")
            ],
            "fetch_price('apple') = 3",
            "fetch_price('pear') = 4",
            "fetch_price('plum') = 2",
            "fetch_price('fig') = 7",
            "pipeline: 4 items, total 16",
        ),
        ordered=False,  # four items fetched concurrently
        last="pipeline: 4 items, total 16",
        calls=(
            Recorded("pipeline", OK, 1, None),
            *[Recorded("fetch_price", OK, 2, (TCP_ERROR, OK))] * 4,
            greeted("total"),
        ),
        logs=tuple(
            rf"fetch_price {ID}: attempt 1: TCP_ERROR \(builtins\.ConnectionResetError: "
            rf"lost the connection fetching {item}\){RETRYING}"
            for item in ("apple", "pear", "plum", "fig")
        ),
    ),
]
EXAMPLES_BY_NAME = {example.name: example for example in EXAMPLE_LIST}


def recorded(database: Path, coroutines: frozenset[str]) -> list[Recorded]:
    """The calls in ``database``, sorted; none while it does not exist yet."""
    if not database.exists():
        return []
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return []
    # Read-only, beside the orchestrator: WAL lets readers in while it writes.
    with contextlib.closing(connection):
        try:
            calls = connection.execute(
                "SELECT id, function, state, status, attempt FROM calls"
            ).fetchall()
            rows = connection.execute(
                "SELECT call_id, status FROM attempts ORDER BY call_id, number"
            ).fetchall()
        except sqlite3.OperationalError:
            return []  # not migrated yet
    attempts: dict[str, list[int]] = {}
    for call_id, status in rows:
        attempts.setdefault(call_id, []).append(status)
    return sorted(
        (
            Recorded(
                function=function,
                status=status,
                attempt=attempt,
                attempts=None if function in coroutines else tuple(attempts.get(call_id, [])),
                state=state,
            )
            for call_id, function, state, status, attempt in calls
        ),
        key=repr,
    )


def unmatched(lines: Sequence[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """The patterns no line matches in full, and the lines no pattern matches,
    each line matching one pattern at most."""
    remaining = list(patterns)
    extra = []
    for line in lines:
        for pattern in remaining:
            if re.fullmatch(pattern, line):
                remaining.remove(pattern)
                break
        else:
            extra.append(line)
    return remaining, extra


def characters(lines: Sequence[str]) -> Counter[str]:
    return Counter("".join(lines).replace(" ", ""))


def printed_all(lines: Sequence[str], example: Example) -> bool:
    """Whether ``lines`` hold everything ``example`` prints (maybe more).

    print() writes its pieces one by one (each argument, the separators, the
    newline), so the lines of functions printing at the same time in their
    worker threads can come out torn and mixed ("Hello JaneHello", " Mike"):
    for those, only the characters and the number of lines are certain.
    """
    if not Counter(example.printed) - Counter(lines):
        return True
    return (
        not example.ordered
        and len(lines) >= len(example.printed)
        and not characters(example.printed) - characters(lines)
    )


def printed_exactly(lines: Sequence[str], example: Example) -> bool:
    """Whether ``lines`` are what ``example`` prints, no more (see :func:`printed_all`)."""
    if example.ordered:
        return list(lines) == list(example.printed)
    if Counter(lines) == Counter(example.printed):
        return True
    return len(lines) == len(example.printed) and characters(lines) == characters(example.printed)


EMBEDDED_BANNER = (
    r"dispatch: serving on http://127\.0\.0\.1:\d+, embedded orchestrator \(\.dispatch\); "
    r"Ctrl-C to stop"
)
CONNECTED_BANNER = r"dispatch: serving on http://127\.0\.0\.1:\d+; Ctrl-C to stop"
APP = "app | "
ORCHESTRATOR = "orchestrator | "


def run_example(example: Example, mode: str, directory: Path) -> None:
    """Run ``example`` in ``mode`` (python, or dispatch-run) in ``directory``,
    check everything a user sees, stop it, check again.
    """
    database = directory / ".dispatch" / "dispatch.db"
    expected_calls = sorted(example.calls, key=repr)
    environment = newcomer_environment()
    if mode == "python":
        # At a terminal, Python writes each line as it is printed; into a
        # pipe, only once its buffer fills (dispatch run sets this for CMD).
        environment["PYTHONUNBUFFERED"] = "1"
        # The one deviation from a newcomer's run: the default port (8000)
        # may be in use, or be taken by a test running in parallel; 0 lets
        # the system choose a free one.
        environment["DISPATCH_ENDPOINT_ADDR"] = "127.0.0.1:0"
    process = Process(example_command(example.name, mode), directory, environment)

    def printed() -> list[str]:
        if mode == "python":
            return process.stdout
        return [line.removeprefix(APP) for line in process.stdout if line.startswith(APP)]

    def logged() -> list[str]:
        # Into a pipe, the log lines are JSON objects (see dispatch._logging).
        if mode == "python":
            return [json.loads(line)["message"] for line in process.stderr[1:]]
        messages = [
            json.loads(line.removeprefix(ORCHESTRATOR))["message"]
            for line in process.stderr
            if line.startswith(ORCHESTRATOR)
        ]
        # The first says where the orchestrator and its dashboard serve.
        assert messages and messages[0].startswith("serving on http://127.0.0.1:"), messages
        return messages[1:]

    def finished() -> bool:
        return (
            printed_all(printed(), example)
            and not unmatched(logged(), example.logs)[0]
            and recorded(database, example.coroutines) == expected_calls
        )

    try:
        process.wait_for(finished, "sign of the example having finished")
        process.signal(example.stop)
        code = process.wait()
    finally:
        process.kill()

    transcript = process.transcript()
    assert code == 0, transcript
    assert "Traceback" not in transcript, transcript
    assert "Warning:" not in transcript, transcript
    assert recorded(database, example.coroutines) == expected_calls, transcript

    lines = printed()
    if mode == "python":
        assert re.fullmatch(EMBEDDED_BANNER, process.stderr[0]), transcript
    else:
        # Each stream of the app to the same stream, prefixed; the orchestrator's to stderr.
        assert all(line.startswith(APP) for line in process.stdout), transcript
        assert all(line.startswith((APP, ORCHESTRATOR)) for line in process.stderr), transcript
        banners = [
            line.removeprefix(APP)
            for line in process.stderr
            if re.fullmatch(CONNECTED_BANNER, line.removeprefix(APP))
        ]
        assert len(banners) == 1, transcript
    assert printed_exactly(lines, example), transcript
    if example.last is not None:
        assert lines[-1] == example.last, transcript
    assert unmatched(logged(), example.logs) == ([], []), transcript


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["python", "dispatch-run"])
@pytest.mark.parametrize("example", EXAMPLE_LIST, ids=lambda example: example.name)
def test_example(example: Example, mode: str, tmp_path: Path) -> None:
    run_example(example, mode, tmp_path)


def test_a_second_run_in_the_same_directory_says_why_it_cannot_start(tmp_path: Path) -> None:
    environment = newcomer_environment()
    environment["DISPATCH_ENDPOINT_ADDR"] = "127.0.0.1:0"
    first = Process(example_command("function", "python"), tmp_path, environment)
    second: Process | None = None
    try:
        first.wait_for(lambda: "Hello Jane" in first.stdout, "greeting")
        second = Process(example_command("function", "python"), tmp_path, environment)
        code = second.wait()
        transcript = second.transcript()
        assert code != 0, transcript
        assert any(
            "another dispatch orchestrator is using .dispatch/dispatch.db" in line
            for line in second.stderr
        ), transcript
        assert "Traceback" not in transcript, transcript
    finally:
        if second is not None:
            second.kill()
        first.kill()
