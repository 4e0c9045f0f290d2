"""The application of the crash tests: nested fan-outs under ``dispatch.run``.

Each root call ``tree(DEPTH, i)`` first awaits one leaf, then gathers WIDTH
subtrees, down to leaves that sleep a little: every level mixes a sequential
step and a fan-out, so a kill lands in every kind of state. On its first
start (no ``CRASH_IDS`` file yet) it dispatches ROOTS roots and writes their
ids to that file; a restarted process only serves.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import dispatch

ROOTS = 16
DEPTH = 3
WIDTH = 4


def leaf_value(index: int) -> int:
    return index * index + 1


@dispatch.function
async def leaf(index: int) -> int:
    await asyncio.sleep(0.05)
    return leaf_value(index)


@dispatch.function
async def tree(depth: int, index: int) -> int:
    if depth == 0:
        return await leaf(index)
    own = await leaf(-index - 1)
    values: list[int] = await dispatch.gather(
        *[tree(depth - 1, index * WIDTH + k) for k in range(WIDTH)]
    )
    return own + sum(values)


def expected(depth: int, index: int) -> int:
    """What ``tree(depth, index)`` returns, computed without dispatch."""
    if depth == 0:
        return leaf_value(index)
    return leaf_value(-index - 1) + sum(
        expected(depth - 1, index * WIDTH + k) for k in range(WIDTH)
    )


def calls_per_root(depth: int = DEPTH) -> int:
    """Calls one root makes in all, itself included."""
    if depth == 0:
        return 2  # the tree call and its leaf
    return 2 + WIDTH * calls_per_root(depth - 1)


def main() -> None:
    ids = Path(os.environ["CRASH_IDS"])
    if ids.exists():
        return
    batch = dispatch.batch()
    for index in range(ROOTS):
        batch.add(tree(DEPTH, index))
    roots = {str(call_id): index for index, call_id in enumerate(batch.dispatch())}
    temporary = ids.with_suffix(".tmp")
    temporary.write_text(json.dumps(roots))
    temporary.replace(ids)


if __name__ == "__main__":
    dispatch.run(main)
