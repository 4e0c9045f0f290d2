"""The application of the crash and scale tests: nested fan-outs under ``dispatch.run``.

Each root call ``tree(DEPTH, i)`` first awaits a leaf, then gathers WIDTH
subtrees, down to trees of depth 0 that await one leaf: every level mixes a
sequential step and a fan-out, so a kill lands in every kind of state. Each
leaf runs for LEAF_SECONDS and, with ``CRASH_LOG`` set, notes when it ran
(one file per process) so a test can tell whether one call ever ran in two
places at once. On its first start (no ``CRASH_IDS`` file yet) the process
dispatches ROOTS roots and writes their ids there; a restarted one only
serves. ``CRASH_ROOTS``, ``CRASH_DEPTH``, ``CRASH_WIDTH`` and
``CRASH_LEAF_SECONDS`` change the shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import dispatch

ROOTS = int(os.environ.get("CRASH_ROOTS", "16"))
DEPTH = int(os.environ.get("CRASH_DEPTH", "3"))
WIDTH = int(os.environ.get("CRASH_WIDTH", "4"))
LEAF_SECONDS = float(os.environ.get("CRASH_LEAF_SECONDS", "0.05"))


def leaf_value(depth: int, index: int) -> int:
    return depth * 1_000_003 + index * index + 1


@dispatch.function
async def leaf(depth: int, index: int) -> int:
    started = time.time()
    await asyncio.sleep(LEAF_SECONDS)
    log = os.environ.get("CRASH_LOG")
    if log:
        with open(Path(log) / f"{os.getpid()}.jsonl", "a") as file:
            file.write(json.dumps([depth, index, started, time.time()]) + "\n")
    return leaf_value(depth, index)


@dispatch.function
async def tree(depth: int, index: int) -> int:
    own: int = await leaf(depth, index)
    if depth == 0:
        return own
    values: list[int] = await dispatch.gather(
        *[tree(depth - 1, index * WIDTH + k) for k in range(WIDTH)]
    )
    return own + sum(values)


def expected(depth: int, index: int) -> int:
    """What ``tree(depth, index)`` returns, computed without dispatch."""
    own = leaf_value(depth, index)
    if depth == 0:
        return own
    return own + sum(expected(depth - 1, index * WIDTH + k) for k in range(WIDTH))


def calls_per_root(depth: int = DEPTH) -> int:
    """Calls one root makes in all, itself included: each tree and its leaf."""
    if depth == 0:
        return 2
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
