"""Durable programs used by the frame-core tests, and the driver that runs them.

Every program suspends by awaiting :func:`suspend` (or, for generators, by
yielding). The driver answers each suspension with :func:`respond`, so a run
is deterministic: its trace (what was yielded at each suspension, then the
result or the exception) can be compared between an uninterrupted run and a
run that was snapshotted at suspension *i* and finished in another process.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from dispatch.experimental.durable import durable


@durable
@types.coroutine
def suspend(value: Any) -> Generator[Any, Any, Any]:
    """Suspend the whole coroutine chain, handing ``value`` to the driver."""
    return (yield value)


def respond(value: Any) -> Any:
    """What the driver sends back for a suspension that yielded ``value``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 10 + 1
    return f"<{value!r:.40}>"


# --- coroutines -------------------------------------------------------------


@durable
async def loop(n: int) -> Any:
    total = 0
    name = "alice"
    items: list[int] = []
    factor = 1.5
    for i in range(n):
        items.append(i)
        total += await suspend(i) * factor
    return total, name, items


@durable
async def level3(x: int) -> Any:
    a = await suspend(x)
    b = await suspend(x + 1)
    return a + b


@durable
async def level2(x: int) -> Any:
    first = await level3(x)
    return first + await level3(x * 2)


@durable
async def nested(x: int) -> list[int]:
    results = [await level2(x)]
    results.append(await level2(x + 100))
    return results


class Boom(Exception):
    pass


@durable
async def try_except_finally(n: int) -> list[Any]:
    log: list[Any] = []
    for i in range(n):
        try:
            log.append(await suspend(("try", i)))
            if i % 2:
                raise Boom(i)
        except Boom as exc:
            log.append(("caught", exc.args, sys.exc_info()[0].__name__))  # type: ignore[union-attr]
            log.append(await suspend(("except", i)))
            log.append(repr(sys.exc_info()[1]))
        finally:
            log.append(await suspend(("finally", i)))
    return log


@durable
async def bare_raise() -> Any:
    try:
        try:
            raise KeyError("k")
        except KeyError:
            await suspend("handling")
            assert sys.exc_info()[0] is KeyError
            raise
    except KeyError as exc:
        return ("reraised", exc.args, await suspend("after"))


class Resource:
    """A picklable context manager, sync and async, recording its use."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def __enter__(self) -> Resource:
        self.log.append("enter")
        return self

    def __exit__(self, *exc: object) -> None:
        self.log.append(("exit", exc[0].__name__ if exc[0] else None))  # type: ignore[attr-defined]

    async def __aenter__(self) -> Resource:
        self.log.append(("aenter", await suspend("aenter")))
        return self

    async def __aexit__(self, *exc: object) -> bool:
        self.log.append(("aexit", await suspend("aexit"), exc[0] is not None))
        return True


@durable
async def with_blocks() -> list[Any]:
    log: list[Any] = []
    with Resource(log) as r:
        log.append(await suspend("in with"))
        async with Resource(log):
            log.append(await suspend("in async with"))
        async with r:
            raise ValueError("swallowed by __aexit__")
    return log


@durable
async def closures() -> Any:
    counter = 0

    def bump(by: int) -> int:
        nonlocal counter
        counter += by
        return counter

    def read() -> int:
        return counter

    # A lambda capturing the local: must share its cell with the frame.
    peek: Callable[[], int] = lambda: counter * 100  # noqa: E731

    bump(await suspend(1))
    counter += 1
    after = (read(), peek())
    bump(await suspend(2))
    squares = list(x * counter for x in range(3))
    return after, read(), peek(), squares, counter


@durable
async def comprehensions(xs: list[int]) -> Any:
    doubled = [await suspend(x) for x in xs]
    by_key = {x: await suspend(-x) for x in xs if x % 2}
    unique = {await suspend(x + 1000) for x in xs[:2]}
    return doubled, by_key, unique


@durable
async def iterators() -> list[Any]:
    seen: list[Any] = []
    mapping = {"a": 1, "b": 2, "c": 3}
    for k in mapping:
        seen.append(await suspend(k))
    for k, v in mapping.items():
        seen.append((k, v, await suspend(v)))
    for v in mapping.values():
        seen.append(await suspend(v))
    for c in "xyz":
        seen.append(await suspend(c))
    for i, t in enumerate((10, 20)):
        seen.append(await suspend((i, t)))
    for a, b in zip([1, 2], "pq", strict=True):
        seen.append(await suspend((a, b)))
    for m in map(abs, [-1, -2]):
        seen.append(await suspend(m))
    for r in reversed([7, 8]):
        seen.append(await suspend(r))
    for byte in b"hi":
        seen.append(await suspend(byte))
    return seen


@durable
async def null_slots(n: int) -> Any:
    # Calls in progress keep NULLs and half-built argument lists on the stack.
    total = max(n, 10, await suspend(5))
    text = "-".join([str(total), str(await suspend("in a method call"))])
    return total, text, dict(a=await suspend("kw"), b=2)


async def plain_inner(x: int) -> Any:
    """Not decorated: snapshotted because it is reachable by name."""
    return await suspend(x) + await suspend(x + 1)


def plain_generator(n: int) -> Generator[Any, Any, list[Any]]:
    received = []
    for i in range(n):
        received.append((yield ("plain", i)))
    return received


@durable
async def awaits_plain(x: int) -> Any:
    first = await plain_inner(x)
    collected = []

    async def local_helper(y: int) -> Any:  # a coroutine of a nested function
        return await suspend(("local", y)) + first

    collected.append(await local_helper(5))
    return first, collected


@durable
def delegating_generator(n: int) -> Generator[Any, Any, Any]:
    got = yield from plain_generator(n)
    more = yield from (x * 2 for x in range(2))  # type: ignore[func-returns-value]
    return got, more


class Awaitable_:
    """An awaitable whose __await__ hands back a coroutine's wrapper."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __await__(self) -> Generator[Any, Any, Any]:
        return level3(self.x).__await__()


@durable
async def awaits_wrapper() -> Any:
    return await Awaitable_(7)


@durable
def generator_send(n: int) -> Generator[Any, Any, Any]:
    received = []
    value = yield "ready"
    for i in range(n):
        received.append(value)
        value = yield (i, value)
    return received


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name

    @durable
    async def work(self, n: int) -> Any:
        return self.name, [await suspend((self.name, i)) for i in range(n)]

    @classmethod
    @durable
    async def build(cls, name: str) -> Any:
        worker = cls(name)
        return await worker.work(2)

    @durable
    @staticmethod
    async def static(x: int) -> Any:
        return await suspend(x) * 2

    @durable
    def steps(self) -> Iterator[str]:
        for part in self.name:  # noqa: UP028 - keeps an iterator on the stack
            yield part


@durable
async def methods() -> Any:
    a = await Worker("w").work(2)
    b = await Worker.build("b")
    c = await Worker.static(4)
    d = list(Worker("xy").steps())
    return a, b, c, d


@durable
async def ticker(n: int) -> AsyncGenerator[Any, Any]:
    for i in range(n):
        got = await suspend(("tick", i))
        yield (i, got)
    yield "done"


@durable
async def consume_async_generator(n: int) -> list[Any]:
    seen = []
    async for item in ticker(n):
        seen.append(item)
        seen.append(await suspend(("seen", item)))
    agen = ticker(1)
    seen.append(await agen.asend(None))
    seen.append(await agen.__anext__())
    return seen


@contextlib.asynccontextmanager
async def managed(log: list[Any]) -> AsyncIterator[str]:
    log.append(await suspend("setup"))
    try:
        yield "resource"
    finally:
        log.append(await suspend("teardown"))


@durable
async def context_manager() -> list[Any]:
    log: list[Any] = []
    async with managed(log) as value:
        log.append((value, await suspend("inside")))
    return log


# --- the driver --------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A durable program: how to start it, and whether it is a generator."""

    name: str
    start: Callable[[], Any]
    is_generator: bool = False


PROGRAMS = [
    Program("loop", lambda: loop(4)),
    Program("nested", lambda: nested(1)),
    Program("try_except_finally", lambda: try_except_finally(3)),
    Program("bare_raise", lambda: bare_raise()),
    Program("with_blocks", lambda: with_blocks()),
    Program("closures", lambda: closures()),
    Program("comprehensions", lambda: comprehensions([1, 2, 3])),
    Program("iterators", lambda: iterators()),
    Program("null_slots", lambda: null_slots(3)),
    Program("awaits_plain", lambda: awaits_plain(2)),
    Program("awaits_wrapper", lambda: awaits_wrapper()),
    Program("delegating_generator", lambda: delegating_generator(3), is_generator=True),
    Program("generator_send", lambda: generator_send(3), is_generator=True),
    Program("methods", lambda: methods()),
    Program("async_generator", lambda: consume_async_generator(2)),
    Program("context_manager", lambda: context_manager()),
]

BY_NAME = {program.name: program for program in PROGRAMS}


def step(obj: Any, value: Any) -> tuple[str, Any]:
    """Resume ``obj`` with ``value``: ("yield", v), ("return", v) or ("raise", repr)."""
    try:
        return "yield", obj.send(value)
    except StopIteration as stop:
        return "return", stop.value
    except (Exception, GeneratorExit) as exc:
        return "raise", repr(exc)


def run(obj: Any, value: Any = None, limit: int = 10_000) -> list[Any]:
    """Drive ``obj`` to the end; the trace of (event, value) pairs."""
    trace = []
    for _ in range(limit):
        event, result = step(obj, value)
        trace.append((event, repr(result)))
        if event != "yield":
            return trace
        value = respond(result)
    raise RuntimeError(f"still running after {limit} suspensions")


def run_to(obj: Any, suspensions: int) -> tuple[list[Any], Any]:
    """Drive ``obj`` through ``suspensions`` suspensions; (trace so far, value to send next)."""
    trace: list[Any] = []
    value = None
    for _ in range(suspensions):
        event, result = step(obj, value)
        trace.append((event, repr(result)))
        assert event == "yield", trace
        value = respond(result)
    return trace, value
