"""Dispatch functions the engine tests run (registered in a registry of their own)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import dispatch
from dispatch import Status
from dispatch._function import Registry

registry = Registry()
function = registry.register

# What the functions did, for the tests to observe (same process); cleared by Env.
events: list[Any] = []
_tries: dict[str, int] = {}
_lock = threading.Lock()
in_flight = 0
max_in_flight = 0


def reset() -> None:
    global in_flight, max_in_flight
    events.clear()
    _tries.clear()
    in_flight = max_in_flight = 0


class Failure(Exception):
    """Ends the call with the status it names."""

    def __init__(self, status: Status) -> None:
        super().__init__(f"failing with {status.name}")
        self.status = status


dispatch.register_error_type(Failure, lambda error: error.status)


@function
def add(a: int, b: int) -> int:
    return a + b


@function
def fails(status: str, times: int, key: str) -> str:
    """Fails with ``status`` the first ``times`` times it runs (per ``key``), then succeeds."""
    with _lock:
        tries = _tries[key] = _tries.get(key, 0) + 1
    if tries <= times:
        raise Failure(Status[status])
    return f"ok after {tries}"


@function
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)  # inside the request: not a durable step
    return seconds


@function
async def track(seconds: float) -> None:
    """Counts the calls running at once."""
    global in_flight, max_in_flight
    in_flight += 1
    max_in_flight = max(max_in_flight, in_flight)
    try:
        await asyncio.sleep(seconds)
    finally:
        in_flight -= 1


@function
async def pair(i: int) -> list[int]:
    return await dispatch.gather(add(i, 0), add(i, 10))


@function
async def fan_out(n: int) -> list[list[int]]:
    return await dispatch.gather(*[pair(i) for i in range(n)])


@function
async def adds(n: int) -> list[int]:
    return await dispatch.gather(*[add(i, 1) for i in range(n)])


@function
async def two_steps(x: int) -> int:
    events.append(("two_steps started", x))
    a: int = await add(x, 1)
    events.append(("two_steps resumed", a))
    b: int = await add(a, 1)
    return b


@function
async def hand_over(x: int) -> Any:
    return add(x, 100)  # a tail call to another function


@function
async def countdown(n: int) -> Any:
    if n == 0:
        return "liftoff"
    return countdown(n - 1)


@function
async def waits_on_naps(seconds: float) -> Any:
    return await dispatch.gather(nap(seconds), nap(seconds))


@function
def dispatches() -> str:
    return add.dispatch(20, 22)


async def _waits_then_cleans(name: str, seconds: float) -> Any:
    """Not a dispatch function: a local task of ``cleans_up``."""
    try:
        return await nap(seconds)
    except dispatch.Cancelled:
        events.append(("cancelled at its await", name))
        raise
    finally:
        events.append(("finally", name))


@function
async def cleans_up(seconds: float) -> Any:
    """Waits on two local tasks, each waiting on a call; cleans up when cancelled."""
    try:
        return await dispatch.gather(
            _waits_then_cleans("a", seconds), _waits_then_cleans("b", seconds)
        )
    except dispatch.Cancelled:
        events.append(("cancelled at its await", "entry"))
        try:
            await add(1, 2)
        except dispatch.Cancelled:
            events.append(("cleanup makes no calls", "entry"))
        raise
    finally:
        events.append(("finally", "entry"))
