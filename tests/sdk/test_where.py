"""Each Poll says, in plain data, where the suspended coroutine waits."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped]
import pytest
import sdk_app
from conftest import Keys
from harness import Harness

import dispatch
from dispatch import Dispatch, Status, _where

# --- functions under test: each await line carries a marker the tests look up ---


class Unreprable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Verbose:
    def __repr__(self) -> str:
        return "Verbose(" + "v" * 100_000 + ")"


async def helper(name: str) -> str:
    greeting = "Hi " + name
    return await sdk_app.greet(greeting)  # line: helper awaits


@dispatch.function
async def where_nested(name: str) -> str:
    count = 3
    items = list(range(100))
    return await helper(name) + str(count + len(items))  # line: nested awaits


@dispatch.function
async def where_twice() -> int:
    first = await sdk_app.add(1, 2)  # line: first await
    return await sdk_app.add(first, 10)  # line: second await


@dispatch.function
async def where_secrets() -> str:
    password = "hunter2"
    api_token = "tok-123"
    DB_Password = "also hidden"
    session = "s-42"
    return await sdk_app.greet(password + api_token + DB_Password + session)


async def child(tag: str) -> str:
    label = tag.upper()
    return await sdk_app.greet(label)  # line: child awaits


@dispatch.function
async def where_gather() -> list[Any]:
    return await dispatch.gather(child("a"), child("b"), sdk_app.add(1, 2))  # line: gather


@dispatch.function
async def where_odd_locals() -> str:
    bad = Unreprable()
    verbose = Verbose()
    blob = "x" * 200_000
    many = list(range(100_000))
    greeting = await sdk_app.greet("odd")
    return f"{greeting} {type(bad)} {type(verbose)} {len(blob) + len(many)}"


async def deep(depth: int, *pads: str) -> str:
    a, b, c, d, e, f, g, h = pads
    if depth == 0:
        return await sdk_app.greet("bottom")
    return await deep(depth - 1, a, b, c, d, e, f, g, h)


@dispatch.function
async def where_deep() -> str:
    return await deep(100, *["p" * 200] * 8)


def line(marker: str) -> int:
    with open(__file__) as source:
        for number, text in enumerate(source, 1):
            if text.rstrip().endswith(f"# line: {marker}"):
                return number
    raise AssertionError(marker)


# --- driving them --------------------------------------------------------------------------


@pytest.fixture
def make_harness(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def make(**env: str) -> Harness:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        endpoint = Dispatch(verification_key=keys.public, seal_keys=[keys.seal])
        return Harness(httpx.ASGITransport(app=endpoint), keys.sealer, keys.private)

    monkeypatch.delenv("DISPATCH_REDACT", raising=False)
    monkeypatch.delenv("DISPATCH_WHERE", raising=False)
    yield make


def run(harness: Harness, function: str, *args: Any) -> list[Any]:
    """Run ``function`` to completion; the ``where`` of each of its polls, decoded."""
    outcome = asyncio.run(harness.call(function, *args))
    assert outcome.status is Status.OK, outcome.error
    descriptions = []
    for attempt in harness.attempts:
        if attempt.function == function and attempt.response and attempt.response.poll:
            where = attempt.response.poll.where
            descriptions.append(None if where is None else msgpack.unpackb(where))
    assert descriptions, "the function never suspended"
    return descriptions


def only_frames(description: list[Any]) -> list[dict[str, Any]]:
    (task,) = description
    assert task["task"] == 0
    frames: list[dict[str, Any]] = task["frames"]
    return frames


def test_nested_coroutines_show_their_frames_and_await_lines(make_harness: Any) -> None:
    (description,) = run(make_harness(), "where_nested", "Jane")
    outer, inner = only_frames(description)  # the call's own await machinery is left out
    assert outer == {
        "function": "where_nested",
        "file": __file__,
        "line": line("nested awaits"),
        "locals": {"name": "'Jane'", "count": "3", "items": "[0, 1, 2, 3, 4, 5, 6, 7, ...]"},
    }
    assert inner == {
        "function": "helper",
        "file": __file__,
        "line": line("helper awaits"),
        "locals": {"name": "'Jane'", "greeting": "'Hi Jane'"},
    }


def test_a_resumed_coroutine_is_described_where_it_waits_next(make_harness: Any) -> None:
    first, second = run(make_harness(), "where_twice")
    assert [frame["line"] for frame in only_frames(first)] == [line("first await")]
    (frame,) = only_frames(second)
    assert frame["line"] == line("second await")
    assert frame["locals"] == {"first": "3"}


def test_secrets_are_redacted_by_default(make_harness: Any) -> None:
    (description,) = run(make_harness(), "where_secrets")
    (frame,) = only_frames(description)
    assert frame["locals"] == {
        "password": "<redacted>",
        "api_token": "<redacted>",
        "DB_Password": "<redacted>",
        "session": "'s-42'",
    }
    assert b"hunter2" not in msgpack.packb(description)


def test_redaction_patterns_come_from_the_environment(make_harness: Any) -> None:
    harness = make_harness(DISPATCH_REDACT="SESSION* | *_token")
    (description,) = run(harness, "where_secrets")
    (frame,) = only_frames(description)
    assert frame["locals"] == {
        "password": "'hunter2'",  # the patterns replace the default ones
        "api_token": "<redacted>",
        "DB_Password": "'also hidden'",
        "session": "<redacted>",
    }


@pytest.mark.parametrize("value", ["off", "OFF", "0"])
def test_where_off_sends_no_description(make_harness: Any, value: str) -> None:
    assert run(make_harness(DISPATCH_WHERE=value), "where_nested", "Jane") == [None]


def test_gather_describes_one_entry_per_task(make_harness: Any) -> None:
    description = run(make_harness(), "where_gather")[0]
    entry, *children = description
    assert entry["task"] == 0
    (frame,) = entry["frames"]
    assert (frame["function"], frame["line"]) == ("where_gather", line("gather"))
    assert len(children) == 2
    assert len({task["task"] for task in children}) == 2 and all(t["task"] > 0 for t in children)
    for task, tag in zip(children, ["a", "b"], strict=True):
        (frame,) = task["frames"]
        assert frame == {
            "function": "child",
            "file": __file__,
            "line": line("child awaits"),
            "locals": {"tag": repr(tag), "label": repr(tag.upper())},
        }


def test_odd_locals_are_summarized_without_breaking_anything(make_harness: Any) -> None:
    (description,) = run(make_harness(), "where_odd_locals")
    (frame,) = only_frames(description)
    summaries = frame["locals"]
    assert summaries["bad"] == "<unreprable Unreprable>"
    assert all(len(summary) <= _where.SUMMARY_SIZE for summary in summaries.values())
    assert summaries["verbose"].startswith("Verbose(vvv") and "..." in summaries["verbose"]
    assert summaries["blob"].startswith("'xxx") and "..." in summaries["blob"]
    assert summaries["many"].startswith("[0, 1, 2") and summaries["many"].endswith("...]")


def test_a_large_description_is_cut_to_its_limit(make_harness: Any) -> None:
    (description,) = run(make_harness(), "where_deep")
    assert len(msgpack.packb(description)) <= _where.MAX_SIZE
    frames = only_frames(description)
    assert [frame["function"] for frame in frames] == ["where_deep"] + ["deep"] * 101
    summaries = [s for frame in frames[1:] for s in frame["locals"].values()]
    assert summaries and all(len(s) < _where.SUMMARY_SIZE for s in summaries)  # shortened


def test_a_failing_description_leaves_the_poll_alone(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(coros: object, redact: object = None, limit: object = None) -> bytes:
        raise RuntimeError("cannot describe")

    monkeypatch.setattr(_where, "describe", broken)
    with caplog.at_level(logging.DEBUG, logger="dispatch"):
        assert run(make_harness(), "where_nested", "Jane") == [None]
    assert any("could not describe" in record.getMessage() for record in caplog.records)


# --- the describer itself ------------------------------------------------------------------


@types.coroutine
def pause() -> Any:
    return (yield "paused")


async def holder(index: int, payload: str) -> Any:
    return await pause()


def started(count: int, payload: str) -> list[Any]:
    coros = [holder(index, payload) for index in range(count)]
    for coro in coros:
        assert coro.send(None) == "paused"
    return coros


def test_describe_drops_locals_then_tasks_to_fit() -> None:
    coros = started(50, "z" * 300)
    try:
        tasks = list(enumerate(coros))
        full = msgpack.unpackb(_where.describe(tasks))
        assert len(full) == 50 and "..." in full[0]["frames"][0]["locals"]["payload"]
        assert [f["function"] for f in full[0]["frames"]] == ["holder", "pause"]
        assert len(_where.describe(tasks)) > 12_000
        shorter = _where.describe(tasks, limit=12_000)
        assert len(shorter) <= 12_000
        summaries = [task["frames"][0]["locals"]["payload"] for task in msgpack.unpackb(shorter)]
        assert len(summaries) == 50 and all(len(s) < _where.SUMMARY_SIZE for s in summaries)
        small = _where.describe(tasks, limit=9000)
        assert len(small) <= 9000
        no_locals = msgpack.unpackb(small)
        assert len(no_locals) == 50
        assert all(frame["locals"] == {} for task in no_locals for frame in task["frames"])
        tiny = _where.describe(tasks, limit=4000)
        assert len(tiny) <= 4000
        kept = msgpack.unpackb(tiny)
        assert 0 < len(kept) < 50 and [task["task"] for task in kept] == list(range(len(kept)))
        assert msgpack.unpackb(_where.describe(tasks, limit=0)) == []
    finally:
        for coro in coros:
            coro.close()


def test_redaction_patterns() -> None:
    default = _where.patterns(None)
    for name in ("password", "API_KEY", "my_api_key", "refresh_token", "client_secret"):
        assert _where.redacted(name, default), name
    for name in ("keyboard", "user", "passage"):
        assert not _where.redacted(name, default), name
    assert _where.patterns("") == ()
    assert _where.patterns(" a* | | B ") == ("a*", "b")


def test_secrets_inside_dicts_are_redacted() -> None:
    default = _where.patterns(None)
    config = {"api_key": "k-123", "db": {"password": "hunter2", "port": 5432}}
    summary = _where.summarize(_where._scrub(config, default))
    assert summary == "{'api_key': <redacted>, 'db': {'password': <redacted>, 'port': 5432}}"
    # A long dict is still summarized as long, without being copied whole.
    assert _where.summarize(_where._scrub(dict.fromkeys(range(10_000), 0), default)).endswith(
        ", ...}"
    )


def test_summaries_never_raise() -> None:
    class BadType(type):
        def __repr__(cls) -> str:
            raise ValueError

    class Odd(metaclass=BadType):
        pass

    class WrongRepr:
        def __repr__(self) -> Any:
            return 42

    assert _where.summarize(Odd) == "<unreprable BadType>"
    assert _where.summarize(WrongRepr()) == "<unreprable WrongRepr>"
    assert _where.summarize([Unreprable()]) == "[<unreprable Unreprable>]"
    assert _where.summarize("\udcff") == "'\\udcff'"
    assert _where.summarize(None) == "None"
