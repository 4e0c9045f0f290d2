"""``dispatch calls ...``, run as a user runs it, against a real orchestrator.

One ``dispatch server`` (its keys in a directory of its own, 2 attempts per
call) and one application under ``dispatch.run`` serve the whole module. The
application dispatches a nested durable coroutine (a fan-out of coroutines
that each await two leaves), a function that always fails, and two slow
coroutines that wait on a long nap: one to cancel, one to look at while it
waits. Each test runs ``python -m dispatch calls ...`` in a subprocess and
checks its exit code, stdout and stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import free_port, healthy
from test_examples import PATIENCE, Process, newcomer_environment

from dispatch import _calls_cli, _local

APP = """
import asyncio, json, os, sys
import dispatch


@dispatch.function
def leaf(x: int) -> int:
    return x * 2


@dispatch.function
async def inner(x: int) -> int:
    first = await leaf(x)
    second = await leaf(x + 1)
    return first + second


@dispatch.function
async def nested(n: int) -> list[int]:
    return await dispatch.gather(*[inner(i) for i in range(n)])


@dispatch.function
def broken(reason: str, tags: set[str]) -> None:
    raise RuntimeError(f"broken on purpose: {reason}")


@dispatch.function
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@dispatch.function
async def sleepy(seconds: float) -> float:
    label = "still sleeping"
    waited = await nap(seconds)
    return waited


def main() -> None:
    ids = {
        "nested": nested.dispatch(2),
        "broken": broken.dispatch("on a test", {"a-tag"}),
        "sleepy": sleepy.dispatch(3600.0),
        "waiting": sleepy.dispatch(3600.0),
    }
    path = sys.argv[1]
    with open(path + ".tmp", "w") as file:
        json.dump({name: str(call_id) for name, call_id in ids.items()}, file)
    os.replace(path + ".tmp", path)


dispatch.run(main)
"""


@dataclass
class World:
    directory: Path
    url: str
    key: str
    ids: dict[str, str]
    server: Process
    app: Process

    def call(self, call_id: str) -> dict[str, Any]:
        """The call, from the JSON API directly."""
        response = httpx.get(
            f"{self.url}/v1/calls/{call_id}",
            headers={"Authorization": f"Bearer {self.key}", "Accept": "application/json"},
            timeout=10,
        )
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def until(self, call_id: str, state: str, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + PATIENCE
        while True:
            document = self.call(call_id)
            if document["state"] == state:
                return document
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: still {document['state']}\n{self.logs()}")
            time.sleep(0.05)

    def logs(self) -> str:
        return f"{self.server.transcript()}\n{self.app.transcript()}"


def stop(process: Process) -> None:
    """SIGTERM, then SIGKILL for what is still running a few seconds later (a
    nap in flight would keep the application's graceful shutdown waiting)."""
    if process.popen.poll() is None:
        process.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(5)
    process.kill()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("calls")
    keys = _local.keys(directory / ".dispatch" / "keys.json")
    environment = {**newcomer_environment(), "DISPATCH_DIR": str(directory / ".dispatch")}
    port, app_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    # 2 attempts: a failure fails fast; an hour per attempt: the naps outlast the tests.
    server_command = [sys.executable, "-m", "dispatch", "server", "--port", str(port)]
    server_command += ["--max-attempts", "2", "--attempt-timeout", "3600"]
    server = Process(server_command, directory, environment)
    app: Process | None = None
    try:
        server.wait_for(lambda: healthy(url), "answer on /v1/health")
        (directory / "app.py").write_text(APP)
        ids_file = directory / "ids.json"
        app = Process(
            [sys.executable, str(directory / "app.py"), str(ids_file)],
            directory,
            {
                **environment,
                "DISPATCH_API_URL": url,
                "DISPATCH_API_KEY": keys.api_key,
                "DISPATCH_ENDPOINT_ADDR": f"127.0.0.1:{app_port}",
                "DISPATCH_ENDPOINT_URL": f"http://127.0.0.1:{app_port}/dispatch",
                "DISPATCH_VERIFICATION_KEY": keys.verification_key,
                "DISPATCH_SEAL_KEY": keys.seal_key_text(),
            },
        )
        app.wait_for(ids_file.exists, "the ids of the calls dispatched")
        world = World(directory, url, keys.api_key, json.loads(ids_file.read_text()), server, app)
        world.until(world.ids["nested"], "done", "nested")
        world.until(world.ids["broken"], "done", "broken")
        world.until(world.ids["sleepy"], "waiting", "sleepy")
        world.until(world.ids["waiting"], "waiting", "waiting")
        yield world
    finally:
        if app is not None:
            stop(app)
        stop(server)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit code {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.stdout)


def calls(
    world: World,
    *arguments: str,
    key: str | None = "",
    url: str | None = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Result:
    """``python -m dispatch calls ARGUMENTS`` with ``--url`` and ``--api-key``
    of ``world`` (None: the option left out; a text: that instead)."""
    command = [sys.executable, "-m", "dispatch", "calls", *arguments]
    if url is not None:
        command += ["--url", url or world.url]
    if key is not None:
        command += ["--api-key", key or world.key]
    result = subprocess.run(
        command,
        cwd=cwd or world.directory,
        env={**newcomer_environment(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    outcome = Result(result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, outcome
    return outcome


def ids_of(listing: Any) -> list[str]:
    return [call["id"] for call in listing["calls"]]


# -- list --------------------------------------------------------------------------------------


def test_list_shows_a_table_of_the_calls(world: World) -> None:
    result = calls(world, "list")
    assert result.code == 0, result
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "id",
        "function",
        "state",
        "status",
        "attempts",
        "created",
        "duration",
    ], result
    functions = {row.split()[1] for row in rows}
    assert functions >= {"nested", "inner", "leaf", "broken", "sleepy", "nap"}, result
    assert any(row.startswith(world.ids["broken"]) for row in rows), result
    assert result.stderr == "", result


def test_list_json_and_its_filters(world: World) -> None:
    everything = calls(world, "list", "--json").json()
    assert set(everything) == {"calls", "next"}
    summaries = {call["id"]: call for call in everything["calls"]}
    assert set(world.ids.values()) <= set(summaries)
    created = [call["created_at"] for call in everything["calls"]]
    assert created == sorted(created, reverse=True), "newest first"

    leaves = calls(world, "list", "--json", "--function", "leaf").json()["calls"]
    assert len(leaves) == 4 and {call["function"] for call in leaves} == {"leaf"}

    done = calls(world, "list", "--json", "--state", "done").json()["calls"]
    assert done and {call["state"] for call in done} == {"done"}
    waiting = ids_of(calls(world, "list", "--json", "--state", "waiting").json())
    assert world.ids["waiting"] in waiting and world.ids["nested"] not in waiting

    failed = calls(world, "list", "--json", "--status", "failed").json()["calls"]
    assert world.ids["broken"] in [call["id"] for call in failed]
    assert all(call["state"] == "done" and call["status"] != "ok" for call in failed)
    ok = calls(world, "list", "--json", "--status", "ok").json()["calls"]
    assert world.ids["nested"] in [call["id"] for call in ok]
    assert {call["status"] for call in ok} == {"ok"}

    tree = calls(world, "list", "--json", "--root", world.ids["nested"]).json()["calls"]
    assert len(tree) == 7 and {call["root_id"] for call in tree} == {world.ids["nested"]}

    recent = ids_of(calls(world, "list", "--json", "--since", "10m", "--limit", "500").json())
    assert set(world.ids.values()) <= set(recent)
    assert ids_of(calls(world, "list", "--json", "--until", "10m").json()) == []
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 3600))
    assert ids_of(calls(world, "list", "--json", "--since", future).json()) == []
    past = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
    assert world.ids["nested"] in ids_of(calls(world, "list", "--json", "--since", past).json())


def test_list_pages_with_the_cursor(world: World) -> None:
    whole = ids_of(calls(world, "list", "--json", "--function", "leaf").json())
    first = calls(world, "list", "--json", "--function", "leaf", "--limit", "3").json()
    assert ids_of(first) == whole[:3] and first["next"]
    everything = calls(world, "list", "--json", "--function", "leaf", "--limit", "3", "--all")
    assert everything.json()["next"] is None and ids_of(everything.json()) == whole

    # The table says how to see more: that command shows the next page.
    table = calls(world, "list", "--function", "leaf", "--limit", "3")
    assert table.code == 0, table
    assert re.search(r"\b3 calls shown", table.stderr), table
    hint = table.stderr.partition("more: ")[2].partition("  (or --all)")[0]
    command = shlex.split(hint)
    assert command[:3] == ["dispatch", "calls", "list"], table
    assert "--api-key" not in command and world.key not in table.stderr
    rest = calls(world, *command[2:], url=None)
    assert rest.code == 0, rest
    assert [line.split()[0] for line in rest.stdout.splitlines()[1:]] == whole[3:], rest


def test_list_reads_the_url_and_key_from_the_environment(world: World) -> None:
    # DISPATCH_API_URL and DISPATCH_API_KEY ...
    result = calls(
        world,
        "list",
        "--json",
        key=None,
        url=None,
        env={"DISPATCH_API_URL": world.url, "DISPATCH_API_KEY": world.key},
    )
    assert world.ids["nested"] in ids_of(result.json())
    # ... and without DISPATCH_API_KEY, the key of the local key file
    # (.dispatch/keys.json in the working directory, or in DISPATCH_DIR).
    assert (world.directory / ".dispatch" / "keys.json").exists()
    local = calls(world, "list", "--json", key=None)
    assert world.ids["nested"] in ids_of(local.json())
    elsewhere = world.directory.parent / "elsewhere"
    env = {"DISPATCH_DIR": str(world.directory / ".dispatch")}
    elsewhere.mkdir(exist_ok=True)
    moved = calls(world, "list", "--json", key=None, env=env, cwd=elsewhere)
    assert world.ids["nested"] in ids_of(moved.json())
    assert list(elsewhere.iterdir()) == [], "a key file is read, never made"


# -- show --------------------------------------------------------------------------------------


def test_show_a_nested_coroutine(world: World) -> None:
    call_id = world.ids["nested"]
    document = calls(world, "show", call_id, "--json").json()
    assert (document["id"], document["function"], document["state"]) == (call_id, "nested", "done")
    assert document["status"] == "ok"
    assert document["output"] == [2, 6]  # inner(0) = 0 + 2, inner(1) = 2 + 4
    descendants = document["descendants"]
    assert len(descendants) == 6
    inners = [call for call in descendants if call["function"] == "inner"]
    assert sorted(call["id"] for call in inners) == sorted(document["children"])

    result = calls(world, "show", call_id)
    assert result.code == 0, result
    text = result.stdout
    assert f"call {call_id}" in text
    assert "nested(2)" in text, result  # the input, as the call it is
    assert "[2, 6]" in text, result
    assert "Descendants (6)" in text, result
    for child in descendants:
        assert child["id"][:8] in text, result
    tree = text.partition("Descendants (6)")[2].partition("Attempts")[0]
    assert "inner" in tree and "leaf" in tree, result
    assert re.search(r"[└├]── inner", tree), result
    # The coroutine ran three times (first run, one resume per inner result,
    # or fewer when results arrive together) and left snapshots on the way.
    assert "Attempts (" in text and "snapshot sizes:" in text, result
    sizes = [a["snapshot_size"] for a in document["attempts"] if a["snapshot_size"]]
    assert sizes and len(document["attempts"]) >= 2


def test_show_a_failed_call(world: World) -> None:
    call_id = world.ids["broken"]
    document = calls(world, "show", call_id, "--json").json()
    assert document["state"] == "done" and document["status"] != "ok"
    assert document["error"]["type"].endswith("RuntimeError")
    assert document["error"]["message"] == "broken on purpose: on a test"
    assert len(document["attempts"]) == 2

    result = calls(world, "show", call_id)
    assert result.code == 0, result
    text = result.stdout
    assert "RuntimeError: broken on purpose: on a test" in text, result
    assert "Traceback (most recent call last)" in text, result
    assert 'raise RuntimeError(f"broken on purpose: {reason}")' in text, result
    assert "Attempts (2)" in text, result
    attempts = text.partition("Attempts (2)")[2].splitlines()
    assert sum("broken on purpose" in line for line in attempts) == 2, result
    # The set is not plain data: it travels as a sealed pickle, which only the
    # application can open.
    assert re.search(r"broken\('on a test', <sealed pickle \(\d+ bytes\)>\)", text), result


def test_show_where_a_coroutine_waits(world: World) -> None:
    call_id = world.ids["waiting"]
    document = calls(world, "show", call_id, "--json").json()
    assert document["state"] == "waiting"
    [child] = document["descendants"]
    assert child["function"] == "nap" and child["state"] == "running"

    result = calls(world, "show", call_id)
    assert result.code == 0, result
    text = result.stdout
    assert re.search(r"[└├]── nap +" + child["id"][:8] + " +running", text), result
    assert document["frames"], document
    assert "Where is it waiting?" in text, result
    where = text.partition("Where is it waiting?")[2]
    assert "task 0" in where, result
    assert re.search(r"sleepy +\S*app\.py:\d+", where), result
    assert "label = 'still sleeping'" in where, result


# -- cancel, retry -----------------------------------------------------------------------------


def test_cancel_a_slow_call(world: World) -> None:
    call_id = world.ids["sleepy"]
    result = calls(world, "cancel", call_id)
    assert result.code == 0, result
    # The coroutine and the nap it waits on.
    assert result.stdout.strip() == f"cancelled 2 calls ({call_id} and its descendants)", result
    document = world.until(call_id, "done", "the cancelled coroutine")
    shown = calls(world, "show", call_id, "--json").json()
    assert shown["status"] == "cancelled", shown
    assert shown["cancelled_at"] is not None
    assert {call["status"] for call in shown["descendants"]} == {"cancelled"}
    assert document["status"] == "cancelled"
    cancelled = ids_of(calls(world, "list", "--json", "--status", "cancelled").json())
    assert call_id in cancelled
    # Once more: nothing is left to cancel.
    again = calls(world, "cancel", call_id, "--json")
    assert again.json() == {"cancelled": 0}


def test_retry_a_failed_call(world: World) -> None:
    call_id = world.ids["broken"]
    result = calls(world, "retry", call_id)
    assert result.code == 0, result
    match = re.fullmatch(rf"retried {call_id} as a new call: (\S+)\n", result.stdout)
    assert match, result
    new_id = match[1]
    assert new_id != call_id
    brokens = ids_of(calls(world, "list", "--json", "--function", "broken").json())
    assert brokens[0] == new_id and call_id in brokens
    document = calls(world, "show", new_id, "--json").json()
    assert (document["function"], document["input"]) == ("broken", world.call(call_id)["input"])
    again = calls(world, "retry", call_id, "--json").json()
    assert set(again) == {"id"} and again["id"] not in (call_id, new_id)


def test_retry_of_a_call_that_succeeded_is_refused(world: World) -> None:
    result = calls(world, "retry", world.ids["nested"])
    assert result.code == 1, result
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result
    assert result.stderr.startswith("dispatch: "), result


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["list"], ["show", "x"], ["cancel", "x"], ["retry", "x"]])
def test_a_wrong_api_key(world: World, command: list[str]) -> None:
    result = calls(world, *command, key="not-the-key")
    assert result.code == 1, result
    assert result.stdout == "", result
    assert result.stderr == (
        f"dispatch: the orchestrator at {world.url} refused the API key: "
        "check DISPATCH_API_KEY / --api-key\n"
    ), result
    # Without any key (no option, variable or key file): the same.
    nowhere = {"DISPATCH_DIR": str(world.directory / "no-keys-here")}
    assert calls(world, *command, key=None, env=nowhere).stderr == result.stderr
    assert not (world.directory / "no-keys-here").exists(), "a key file is read, never made"


@pytest.mark.parametrize("command", ["show", "cancel", "retry"])
def test_an_unknown_call(world: World, command: str) -> None:
    result = calls(world, command, "no-such-id", "--json")
    assert result.code == 1, result
    assert (result.stdout, result.stderr) == ("", "dispatch: no such call: no-such-id\n"), result


def test_an_unreachable_orchestrator(world: World) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = calls(world, "list", url=url)
    assert result.code == 1, result
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result
    assert result.stderr.startswith(f"dispatch: cannot reach the orchestrator at {url} ("), result
    assert world.key not in result.stderr


def test_the_default_url_is_the_orchestrator_running_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_DIR", str(tmp_path))
    monkeypatch.delenv("DISPATCH_API_URL", raising=False)
    assert _local.api_url() == "http://127.0.0.1:4001"  # dispatch server's default
    # What dispatch run and dispatch server announce while they run.
    (tmp_path / "api-url").write_text("http://127.0.0.1:5123\n")
    assert _local.api_url() == "http://127.0.0.1:5123"
    monkeypatch.setenv("DISPATCH_API_URL", "http://elsewhere:1")
    assert _local.api_url() == "http://elsewhere:1"


@pytest.mark.parametrize(
    "arguments",
    [
        ["list", "--since", "yesterday"],
        ["list", "--state", "asleep"],
        ["list", "--status", "fine"],
        ["list", "--limit", "501"],
        ["show"],
        [],
    ],
)
def test_usage_errors(world: World, arguments: list[str]) -> None:
    result = calls(world, *arguments, key=None, url=None)
    assert result.code == 2, result
    assert result.stderr.startswith("usage: dispatch calls"), result


# -- in process: parsing and rendering ---------------------------------------------------------


def test_times_are_iso_datetimes_or_durations_ago() -> None:
    now = 1_700_000_000.0
    assert _calls_cli.parse_moment("10m", now).timestamp == now - 600
    assert _calls_cli.parse_moment("2h", now).timestamp == now - 7200
    assert _calls_cli.parse_moment("3d", now).timestamp == now - 3 * 86400
    assert _calls_cli.parse_moment("1.5s", now).timestamp == now - 1.5
    utc = _calls_cli.parse_moment("2023-11-14T22:13:20+00:00")
    assert utc.timestamp == 1_700_000_000.0 and not utc.relative
    assert _calls_cli.parse_moment("2023-11-14T22:13:20Z").timestamp == 1_700_000_000.0
    naive = _calls_cli.parse_moment("2023-11-14T22:13:20")  # local time
    offset = time.localtime(1_700_000_000).tm_gmtoff
    assert abs(naive.timestamp - (1_700_000_000.0 - offset)) <= 3600  # DST aside


def test_values_read_as_python() -> None:
    value = [[1, "a", {"sealed": 42}, {"bytes": "aGk="}], {"key": [None, True]}]
    text = _calls_cli._input_text("f", value, 100).plain
    assert text == "f(1, 'a', <sealed pickle (42 bytes)>, b'hi', key=[None, True])"
    assert _calls_cli._readable({"sealed": 7}, 100) == "<sealed pickle (7 bytes)>"
    # A dictionary that only looks like one is left alone.
    assert _calls_cli._readable({"sealed": "x"}, 100) == "{'sealed': 'x'}"


def test_the_command_is_registered() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatch", "--help"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0 and "calls" in result.stdout
