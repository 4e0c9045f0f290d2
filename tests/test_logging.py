"""Log lines: JSON when not at a terminal, plain text at one, each naming its call."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Harness
from orchestrator.harness import Env, Keys

from dispatch import Dispatch, Status, _logging
from dispatch._function import Registry

pytestmark = pytest.mark.timeout(120)

registry = Registry()
user_logger = logging.getLogger("app.user")
"""A logger of the user's own, outside ``dispatch``."""
package_logger = logging.getLogger("dispatch.test")


@registry.register
def add(a: int, b: int) -> int:
    package_logger.info("adding %d and %d", a, b)
    return a + b


@registry.register
async def two_adds(x: int) -> int:
    user_logger.info("started with %d", x)
    a: int = await add(x, 1)  # suspends: the rest runs in a later request
    b: int = await add(a, 1)
    user_logger.info("resumed with %d", b)
    return b


@pytest.fixture(autouse=True)
def no_format_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCH_LOG_FORMAT", raising=False)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream (not a terminal) that the root logger's records go to, through
    a handler made by :func:`_logging.configure`."""
    output = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = _logging.configure(output, logger="")
    try:
        yield output
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def records(output: io.StringIO) -> list[dict[str, Any]]:
    """The JSON lines written to ``output``, parsed (each must be one object)."""
    parsed = []
    for line in output.getvalue().splitlines():
        document = json.loads(line)
        assert isinstance(document, dict), line
        parsed.append(document)
    return parsed


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(message: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord("dispatch.x", logging.WARNING, __file__, 1, message, args, None)


# -- the format -----------------------------------------------------------------------------


def test_a_json_line_has_the_fields() -> None:
    formatter = _logging.JSONFormatter()
    line = formatter.format(record("hello %s", "world"))
    assert "\n" not in line
    document = json.loads(line)
    assert set(document) == {"time", "level", "logger", "message", "dispatch_id"}
    assert (document["level"], document["logger"], document["message"]) == (
        "WARNING",
        "dispatch.x",
        "hello world",
    )
    assert document["dispatch_id"] is None  # outside any call
    when = datetime.datetime.fromisoformat(document["time"])
    assert when.utcoffset() == datetime.timedelta(0)
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - when).total_seconds()) < 60


def test_a_json_line_has_the_exception_the_call_and_the_json_extras() -> None:
    logger = logging.getLogger("dispatch.test.extras")
    output = io.StringIO()
    handler = _logging.configure(output, logger="dispatch.test.extras")
    try:
        token = _logging.dispatch_id.set("call-1")
        try:
            try:
                raise ValueError("bad value")
            except ValueError:
                logger.exception(
                    "it failed: %s",
                    "über",
                    extra={"items": [1, "two"], "opaque": object(), "time": "not the time"},
                )
        finally:
            _logging.dispatch_id.reset(token)
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    failed, outside = records(output)
    assert failed["message"] == "it failed: über" and failed["level"] == "ERROR"
    assert failed["dispatch_id"] == "call-1"
    assert failed["exc"].startswith("Traceback") and "ValueError: bad value" in failed["exc"]
    assert failed["items"] == [1, "two"]
    assert "opaque" not in failed  # not JSON: left out
    assert failed["time"] != "not the time"  # an extra does not replace a field
    assert outside["dispatch_id"] is None and "exc" not in outside


def test_json_unless_at_a_terminal_and_the_variable_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _logging.log_format(io.StringIO()) == "json"
    assert _logging.log_format(Terminal()) == "text"
    monkeypatch.setenv("DISPATCH_LOG_FORMAT", "json")
    assert _logging.log_format(Terminal()) == "json"
    monkeypatch.setenv("DISPATCH_LOG_FORMAT", "text")
    assert _logging.log_format(io.StringIO()) == "text"
    monkeypatch.setenv("DISPATCH_LOG_FORMAT", "yaml")  # not a format: as if unset
    assert _logging.log_format(io.StringIO()) == "json"


def test_plain_lines_at_a_terminal() -> None:
    logger = logging.getLogger("dispatch.test.plain")
    terminal = Terminal()
    handler = _logging.configure(terminal, text_format="dispatch: %(message)s", logger=logger.name)
    try:
        logger.info("hello %s", "world")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert terminal.getvalue() == "dispatch: hello world\n"


# -- the id of the call -----------------------------------------------------------------------


def test_lines_logged_by_running_functions_name_their_call(stream: io.StringIO) -> None:
    keys = Keys()
    endpoint = Dispatch(registry=registry, verification_key=keys.public, seal_keys=[keys.seal])
    harness = Harness(httpx.ASGITransport(app=endpoint), keys.sealer, keys.private)
    outcome = asyncio.run(harness.call("two_adds", 1))
    assert outcome.status is Status.OK and outcome.value(keys.sealer) == 3
    root = outcome.dispatch_id
    children = {a.dispatch_id for a in harness.attempts if a.parent_id == root}
    assert len(children) == 2

    lines = [line for line in records(stream) if line["logger"] in ("app.user", "dispatch.test")]
    started, first, second, resumed = lines
    # The user's own logger, in the durable coroutine, before and after it resumed.
    assert (started["message"], started["dispatch_id"]) == ("started with 1", root)
    assert (resumed["message"], resumed["dispatch_id"]) == ("resumed with 3", root)
    # A plain function, in a worker thread.
    assert first["message"] == "adding 1 and 1" and second["message"] == "adding 2 and 1"
    assert {first["dispatch_id"], second["dispatch_id"]} == children
    # Outside the requests, no call.
    package_logger.info("after")
    assert records(stream)[-1]["dispatch_id"] is None


def test_the_orchestrators_lines_about_a_call_name_it(stream: io.StringIO) -> None:
    async def main() -> tuple[str, str]:
        async with Env() as env:
            retried = await env.submit("fails", "TEMPORARY_ERROR", 1, "logging-retried")
            failed = await env.submit("fails", "PERMANENT_ERROR", 1, "logging-failed")
            await env.done(retried)
            await env.done(failed)
        return retried, failed

    retried, failed = asyncio.run(main())
    lines = [line for line in records(stream) if line["logger"] == "dispatch.orchestrator"]
    retrying = [line for line in lines if "retrying" in line["message"]]
    assert [line["dispatch_id"] for line in retrying] == [retried]
    assert retried in retrying[0]["message"] and retrying[0]["level"] == "INFO"
    failing = [line for line in lines if "failed with PERMANENT_ERROR" in line["message"]]
    assert [line["dispatch_id"] for line in failing] == [failed]
    assert failing[0]["level"] == "WARNING"


# -- a real process ---------------------------------------------------------------------------

APP = textwrap.dedent(
    """
    import logging, os, signal
    import dispatch
    from dispatch import Status

    class NotYet(Exception):
        pass

    dispatch.register_error_type(NotYet, Status.TEMPORARY_ERROR)
    logger = logging.getLogger("dispatch.app")
    tries = 0

    @dispatch.function
    def flaky() -> str:
        global tries
        tries += 1
        logger.info("try %d", tries)
        if tries == 1:
            raise NotYet("not yet")
        os.kill(os.getpid(), signal.SIGINT)  # done: Ctrl-C, as a user would
        return "done"

    def main() -> None:
        logger.info("dispatched %s", flaky.dispatch())

    dispatch.run(main)
    """
)


def run_app(directory: Path, **environment: str) -> list[str]:
    """The lines an application of ``dispatch.run`` writes to stderr (a pipe)."""
    directory.mkdir()
    (directory / "app.py").write_text(APP)
    env = {name: value for name, value in os.environ.items() if not name.startswith("DISPATCH_")}
    env.update(DISPATCH_ENDPOINT_ADDR="127.0.0.1:0", PYTHONUNBUFFERED="1", **environment)
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()


def test_an_application_logs_json_lines_into_a_pipe(tmp_path: Path) -> None:
    banner, *rest = run_app(tmp_path / "app")
    assert banner.startswith("dispatch: serving on ")  # printed, not logged
    lines = [json.loads(line) for line in rest]
    [dispatched] = [line for line in lines if line["message"].startswith("dispatched ")]
    call_id = dispatched["message"].removeprefix("dispatched ")
    assert dispatched["dispatch_id"] is None  # logged by main, outside any call
    tries = [line for line in lines if line["message"].startswith("try ")]
    assert [(line["message"], line["dispatch_id"]) for line in tries] == [
        ("try 1", call_id),
        ("try 2", call_id),
    ]
    [retrying] = [line for line in lines if line["logger"] == "dispatch.orchestrator"]
    assert "flaky" in retrying["message"] and "retrying" in retrying["message"]
    assert retrying["dispatch_id"] == call_id


def test_an_application_logs_plain_lines_when_asked(tmp_path: Path) -> None:
    lines = run_app(tmp_path / "app", DISPATCH_LOG_FORMAT="text")
    assert lines[0].startswith("dispatch: serving on "), lines
    # As at a terminal: "dispatch: " and the message (main's line and the
    # function's first may come in either order).
    assert all(line.startswith("dispatch: ") for line in lines), lines
    assert "dispatch: try 1" in lines and "dispatch: try 2" in lines, lines
    assert any(re.fullmatch(r"dispatch: dispatched \w+", line) for line in lines), lines
    retrying = r"dispatch: flaky \(\w+\): attempt 1: TEMPORARY_ERROR \(.*\); retrying in .*"
    assert any(re.fullmatch(retrying, line) for line in lines), lines
    assert len(lines) == 5, lines
