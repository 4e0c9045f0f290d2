"""Feed forged frame states to the real restore and run whatever it accepts.

The child side of test_validation.test_forged_frames_never_crash. For one
program and suspension point, every frame of the snapshot is forged in every
way listed in ``forgeries`` (other instruction offsets, stack depths, NULL
slots, values of the wrong type, a bad exception...). Each forged snapshot
is loaded through the public ``loads``; a rejection must be a SnapshotError,
and anything accepted is run to the end. The interpreter must survive all of
it: a crash shows as this process dying, not as a failed assertion.

Prints a JSON summary: how many forgeries were rejected and how many ran.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import resource
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

from durable_programs import BY_NAME, run, run_to

import dispatch._p
from dispatch.experimental.durable import SnapshotError, _snapshot, dumps, loads
from dispatch.experimental.durable._snapshot import generator_code

State = tuple[Any, ...]
real_restore = _snapshot.restore_frame


def patch_restore(restore: Callable[[Any, State], None]) -> None:
    """Make loads call ``restore`` to write each frame (both snapshot forms)."""
    _snapshot.restore_frame = restore  # type: ignore[assignment]
    table = list(dispatch._p.CALLED_BY_INDEX)
    table[table.index(real_restore) if real_restore in table else 2] = restore
    dispatch._p.CALLED_BY_INDEX = tuple(table)


def decode(state: State) -> tuple[int, int, int, Any, list[Any]]:
    packed = state[0]
    if packed & 2:
        return packed >> 2, packed & 1, state[1], state[2], list(state[3:])
    return packed >> 2, packed & 1, 0, None, list(state[1:])


def encode(lasti: int, mode: int, nullmask: int, exc: Any, slots: list[Any]) -> State:
    return (lasti << 2 | 2 | mode, nullmask, exc, *slots)


ODD_VALUES: list[Any] = [
    0,
    -1,
    2**70,
    None,
    "text",
    [],
    {},
    set(),
    (),
    ValueError("forged"),
    object(),
    list.append,
    iter([]),
    types.CellType(),
]


def forgeries(gen: Any, state: State) -> Iterator[tuple[str, Any]]:
    lasti, mode, nullmask, exc, slots = decode(state)
    code_units = len(generator_code(gen).co_code) // 2
    for other in range(-1, code_units + 1):
        if other != lasti:
            yield f"lasti={other}", encode(other, mode, nullmask, exc, slots)
    yield "mode flipped", encode(lasti, mode ^ 1, nullmask, exc, slots)
    yield "one slot fewer", encode(lasti, mode, nullmask & ~(1 << len(slots)), exc, slots[:-1])
    yield "extra None slot", encode(lasti, mode, nullmask, exc, [*slots, None])
    yield "extra NULL slot", encode(lasti, mode, nullmask | 1 << len(slots), exc, [*slots, None])
    yield "mask past the end", encode(lasti, mode, nullmask | 1 << (len(slots) + 3), exc, slots)
    for j in range(len(slots)):
        if nullmask >> j & 1:
            yield f"slot {j} not NULL", encode(lasti, mode, nullmask & ~(1 << j), exc, slots)
        else:
            forged = list(slots)
            forged[j] = None
            yield f"slot {j} NULL", encode(lasti, mode, nullmask | 1 << j, exc, forged)
        for value in ODD_VALUES:
            forged = list(slots)
            forged[j] = value
            yield f"slot {j} = {value!r}", encode(lasti, mode, nullmask & ~(1 << j), exc, forged)
    for value in ("not an exception", KeyError("forged")):
        yield f"exc = {value!r}", encode(lasti, mode, nullmask, value, slots)
    yield "negative mask", (state[0] | 2, -1, None, *slots)
    yield "truncated state", state[:1]
    yield "not a tuple", [state]


def frames_in(data: bytes) -> list[tuple[Any, State]]:
    """(fresh generator, state) of every frame restore of a snapshot, in order."""
    seen: list[tuple[Any, State]] = []

    def spy(gen: Any, state: State) -> None:
        seen.append((gen, state))
        real_restore(gen, state)

    patch_restore(spy)
    try:
        loads(data)
    finally:
        patch_restore(real_restore)
    return seen


def forging(target: int, forged: State) -> Callable[[Any, State], None]:
    calls = 0

    def restore(gen: Any, state: State) -> None:
        nonlocal calls
        calls += 1
        real_restore(gen, forged if calls == target + 1 else state)

    return restore


def corruptions(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for length in range(len(data)):
        yield f"truncated to {length}", data[:length]
    for _ in range(200):
        forged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            forged[rng.randrange(len(forged))] = rng.randrange(256)
        yield "random bytes changed", bytes(forged)


def attempt(label: str, load: Callable[[], Any], value: Any) -> bool:
    """Load and run a forged snapshot; whether it was accepted."""
    print(label, file=sys.stderr, flush=True)
    try:
        restored = load()
    except SnapshotError:
        return False
    with contextlib.suppress(BaseException):
        run(restored, value, limit=500)
    return True


def main(name: str) -> None:
    # A forged loop bound may ask for absurd memory: let that be a MemoryError.
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    program = BY_NAME[name]
    suspensions = sum(1 for event, _ in run(program.start()) if event == "yield")
    rng = random.Random(f"{name}")
    counts = {"rejected": 0, "ran": 0}
    for suspension in range(suspensions + 1):
        obj = program.start()
        _, value = run_to(obj, suspension)
        data = dumps(obj)
        run(obj, value)
        for target, (gen, state) in enumerate(frames_in(data)):
            for label, forged in forgeries(gen, state):

                def load(target: int = target, forged: State = forged, data: bytes = data) -> Any:
                    patch_restore(forging(target, forged))
                    try:
                        return loads(data)
                    finally:
                        patch_restore(real_restore)

                accepted = attempt(f"{suspension}/{target}: {label}", load, value)
                counts["ran" if accepted else "rejected"] += 1
        for label, corrupt in corruptions(data, rng):
            accepted = attempt(f"{suspension}: {label}", functools.partial(loads, corrupt), value)
            counts["ran" if accepted else "rejected"] += 1
    json.dump(counts, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
