"""Dispatch functions used by the SDK tests (registered when imported)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import dispatch
from dispatch import Status

# Side effects of the code under test, observed by the tests (same process).
events: list[Any] = []


class FatalError(Exception):
    pass


class Result:
    def __init__(self, success: bool) -> None:
        self.success = success

    def __repr__(self) -> str:
        return f"Result(success={self.success})"


dispatch.register_error_type(FatalError, Status.PERMANENT_ERROR)
dispatch.register_output_type(
    Result, lambda result: Status.OK if result.success else Status.TEMPORARY_ERROR
)


@dispatch.function
def greet(name: str) -> str:
    return "Hello " + name


@dispatch.function
def add(a: int, b: int) -> int:
    return a + b


@dispatch.function
def where() -> str:
    return threading.current_thread().name


@dispatch.function
def fail(kind: str) -> None:
    errors: dict[str, Exception] = {
        "fatal": FatalError("fatal"),
        "value": ValueError("bad value"),
        "timeout": TimeoutError("too slow"),
        "key": KeyError("missing"),
    }
    raise errors[kind]


@dispatch.function
def unpicklable_result() -> Any:
    return threading.Lock()


@dispatch.function
def flaky_result(success: bool) -> Result:
    return Result(success)


@dispatch.function(name="custom-name")
def renamed() -> str:
    return "renamed"


@dispatch.function
async def greet_everyone(names: list[str]) -> list[str]:
    return await dispatch.gather(*[greet(name) for name in names])


@dispatch.function
async def sequential(n: int) -> int:
    total = 0
    for i in range(n):
        total = await add(total, i)
    return total


async def local_work(tag: str) -> str:
    """Not a dispatch function: runs locally, inside the request."""
    greeting = await greet(tag)
    await asyncio.sleep(0)
    return greeting.upper()


@dispatch.function
async def mixed() -> list[Any]:
    return await dispatch.gather(greet("remote"), local_work("local"), add(1, 2))


@dispatch.function
async def first_success() -> Any:
    return await dispatch.any(fail("value"), greet("winner"), fail("key"))


@dispatch.function
async def all_failing() -> Any:
    return await dispatch.any(fail("value"), fail("fatal"))


@dispatch.function
async def race_error() -> Any:
    return await dispatch.race(fail("fatal"))


async def loser(tag: str) -> str:
    """Needs two calls: always behind a single one in a race."""
    try:
        await greet(tag)
        await greet(tag)
        return tag
    finally:
        events.append(("loser cleaned up", tag))


@dispatch.function
async def race_against_local() -> Any:
    return await dispatch.race(greet("fast"), loser("slow"))


@dispatch.function
async def gather_fails_fast() -> Any:
    try:
        return await dispatch.gather(greet("a"), fail("fatal"), greet("b"))
    except FatalError as error:
        return f"caught {error}"


@dispatch.function
async def uncaught_child_failure() -> Any:
    return await fail("timeout")


@dispatch.function
async def nested_groups() -> Any:
    pair = dispatch.gather(greet("x"), greet("y"))
    first = dispatch.any(fail("key"), add(2, 3))
    return await dispatch.gather(pair, first)


@dispatch.function
async def empty_gather() -> Any:
    return await dispatch.gather()


@dispatch.function
async def sleeps() -> str:
    await asyncio.sleep(0.01)
    return await greet("after sleep")


@dispatch.function
async def countdown(n: int) -> Any:
    if n == 0:
        return "liftoff"
    return countdown(n - 1)  # a tail call: this call's result is that call's result


@dispatch.function
def fire_and_forget() -> list[str]:
    first = greet.dispatch("detached")
    more = dispatch.batch().add(greet("b1")).add(add(1, 1)).dispatch()
    return [first, *more]


@dispatch.function
async def fire_and_forget_async() -> str:
    return greet.dispatch("from a coroutine")


@dispatch.function
async def holds_lock() -> Any:
    lock = threading.Lock()
    with lock:
        return await greet("locked")


@dispatch.function
async def with_cleanup() -> Any:
    try:
        return await greet("inside")
    finally:
        events.append("with_cleanup finally")


@dispatch.function
async def unsendable_argument() -> Any:
    try:
        await greet(threading.Lock())  # type: ignore[arg-type]
    except TypeError as error:
        return f"caught: {error}"
    return "not reached"


@dispatch.function
def slow(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "slow"


@dispatch.function
async def race_remote() -> Any:
    return await dispatch.race(slow(0.5), greet("quick"))
