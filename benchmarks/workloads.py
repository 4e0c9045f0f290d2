"""The durable functions the snapshot benchmark suspends and measures."""

from __future__ import annotations

import types
from collections.abc import Generator
from typing import Any

from dispatch.experimental.durable import durable


@durable
@types.coroutine
def wait(value: Any) -> Generator[Any, Any, Any]:
    """Suspend the coroutine chain: what a durable await of a remote call does."""
    return (yield value)


@durable
async def mid_loop(n: int) -> Any:
    """(1) About six small locals: counter, name, float, growing list, loop variable."""
    count = 0
    name = "greeting"
    ratio = 0.25
    seen: list[int] = []
    for i in range(n):
        seen.append(i)
        count += await wait(i)
        ratio *= 1.5
    return count, name, ratio, seen


@durable
async def inner(x: int) -> Any:
    return await wait(x) + 1


@durable
async def outer(x: int) -> Any:
    """(2) Awaiting a nested durable coroutine."""
    result = await inner(x)
    return result * 2


@durable
async def holds_text(size: int) -> Any:
    """(3) Holding a 1 KB string."""
    text = "x" * size
    await wait(len(text))
    return text


@durable
def generator_loop(items: list[int]) -> Generator[Any, Any, Any]:
    """(4) A generator mid-loop over a list of six."""
    for item in items:  # noqa: UP028 - a list iterator on the stack is the point
        yield item
