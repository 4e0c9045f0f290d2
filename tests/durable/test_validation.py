"""Bad snapshots raise typed errors; forged ones never crash the interpreter."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from durable_programs import PROGRAMS, Program, loop, run, run_to

from dispatch.experimental.durable import (
    IncompatibleStateError,
    InvalidStateError,
    SnapshotError,
    _pickling,
    _snapshot,
    dumps,
    loads,
)

HERE = Path(__file__).parent


def forge(obj: Any, mutate: Callable[[tuple[Any, ...]], tuple[Any, ...]]) -> bytes:
    """A snapshot of ``obj`` whose outermost frame state went through ``mutate``."""

    class Forger(_pickling.Pickler):
        def reducer_override(self, value: Any) -> Any:
            reduced = super().reducer_override(value)
            if value is obj:  # (restore_generator, (ref, *state))
                function, (ref, *state) = reduced
                reduced = (function, (ref, *mutate(tuple(state))))
            return reduced

    buffer = io.BytesIO()
    Forger(buffer, 5).dump(obj)
    return _pickling._HEADER + buffer.getvalue()


def suspended_loop(suspensions: int = 2) -> tuple[Any, Any]:
    obj = loop(4)
    _, value = run_to(obj, suspensions)
    return obj, value


def finish(obj: Any, value: Any) -> None:
    run(obj, value)


def test_forged_offset_is_rejected() -> None:
    obj, value = suspended_loop()
    data = forge(obj, lambda state: (state[0] + 4, *state[1:]))
    with pytest.raises(InvalidStateError, match=r"loop: instruction offset \d+ is not a point"):
        loads(data)
    finish(obj, value)


def test_forged_stack_depth_is_rejected() -> None:
    obj, value = suspended_loop()
    with pytest.raises(InvalidStateError, match="values on the stack where the code has"):
        loads(forge(obj, lambda state: state[:-1]))
    with pytest.raises(InvalidStateError, match="values on the stack where the code has"):
        loads(forge(obj, lambda state: (*state, None)))
    finish(obj, value)


def test_forged_null_and_types_are_rejected() -> None:
    obj, value = suspended_loop()

    def null_iterator(state: tuple[Any, ...]) -> tuple[Any, ...]:
        # (packed, *locals(n, total, name, items, factor, i), range iterator, awaited)
        slots = list(state[1:])
        slots[6] = None
        return (state[0] | 2, 1 << 6, None, *slots)

    with pytest.raises(InvalidStateError, match="value-stack slot 0 may not be NULL"):
        loads(forge(obj, null_iterator))

    def int_for_iterator(state: tuple[Any, ...]) -> tuple[Any, ...]:
        return (state[0], *state[1:7], 42, *state[8:])

    with pytest.raises(
        InvalidStateError, match="value-stack slot 0 must hold an iterator, not int"
    ):
        loads(forge(obj, int_for_iterator))

    def unbound_local(state: tuple[Any, ...]) -> tuple[Any, ...]:
        slots = list(state[1:])
        slots[3] = None  # items, read by items.append after the await
        return (state[0] | 2, 1 << 3, None, *slots)

    if sys.version_info >= (3, 12):  # 3.11 checks every local it loads
        with pytest.raises(InvalidStateError, match="local variable 'items' is unbound"):
            loads(forge(obj, unbound_local))

    def not_an_exception(state: tuple[Any, ...]) -> tuple[Any, ...]:
        return (state[0] | 2, 0, "oops", *state[1:])

    with pytest.raises(InvalidStateError, match="is not an exception"):
        loads(forge(obj, not_an_exception))
    finish(obj, value)


def test_malformed_state_is_rejected() -> None:
    obj, value = suspended_loop()
    for mutate in (lambda s: (), lambda s: ("x", *s[1:]), lambda s: (-4, *s[1:])):
        with pytest.raises(InvalidStateError, match="malformed frame state"):
            loads(forge(obj, mutate))
    finish(obj, value)


def test_truncated_snapshots_are_rejected() -> None:
    obj, value = suspended_loop()
    data = dumps(obj)
    for length in range(len(data)):
        with pytest.raises(InvalidStateError):
            loads(data[:length])
    std = pickle.dumps(obj, protocol=5)
    for length in range(len(std)):
        with pytest.raises((pickle.UnpicklingError, EOFError, SnapshotError, ValueError)):
            pickle.loads(std[:length])
    finish(obj, value)


def test_other_python_version_is_incompatible() -> None:
    obj, value = suspended_loop()
    data = bytearray(dumps(obj))
    data[3] = sys.version_info.minor + 1
    current = f"{sys.version_info.major}.{sys.version_info.minor}"
    other = f"{sys.version_info.major}.{sys.version_info.minor + 1}"
    with pytest.raises(IncompatibleStateError) as error:
        loads(bytes(data))
    assert other in str(error.value) and current in str(error.value)
    finish(obj, value)


def test_other_format_version_is_incompatible() -> None:
    obj, value = suspended_loop()
    data = bytearray(dumps(obj))
    data[1] = _pickling.FORMAT_VERSION + 1
    with pytest.raises(IncompatibleStateError, match=r"snapshot format 2 .* format 1"):
        loads(bytes(data))
    finish(obj, value)


def test_not_a_snapshot() -> None:
    for data in (b"", b"\x00\x01\x02\x03\x04", pickle.dumps([1, 2])):
        with pytest.raises(InvalidStateError, match="not a dispatch snapshot"):
            loads(data)


def test_failed_load_runs_no_code_of_the_snapshot() -> None:
    """A snapshot rejected part way discards the frames it made without
    running their finally blocks (and without 'never awaited' warnings)."""
    from durable_programs import try_except_finally

    obj = try_except_finally(2)
    _, value = run_to(obj, 3)  # suspended inside a try with a finally
    data = bytearray(dumps(obj))
    data[-1] = ord("x")  # not STOP: fails after every frame was restored
    with pytest.raises(InvalidStateError):
        loads(bytes(data))
    run(obj, value)


def test_a_frame_made_but_never_restored_is_rejected() -> None:
    obj, value = suspended_loop()

    class Forger(_pickling.Pickler):
        def reducer_override(self, value: Any) -> Any:
            if value is obj:
                with _snapshot.two_phase_frames():
                    return _snapshot.reduce_generator(value)[:2]  # no state, no restore
            return super().reducer_override(value)

    buffer = io.BytesIO()
    Forger(buffer, 5).dump(obj)
    with pytest.raises(InvalidStateError, match="never restores"):
        loads(_pickling._HEADER + buffer.getvalue())
    finish(obj, value)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_forged_frames_never_crash(program: Program) -> None:
    """Every frame of every snapshot point, forged every way forge_child knows, plus
    truncations and random byte changes: rejected with a SnapshotError, or run
    to the end, and the interpreter survives."""
    child = subprocess.run(
        [sys.executable, "-W", "error", str(HERE / "forge_child.py"), program.name],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        timeout=600,
        check=False,
    )
    last = child.stderr.strip().splitlines()[-3:]
    assert child.returncode == 0, f"crashed ({child.returncode}) after: {last}"
    counts = json.loads(child.stdout)
    assert counts["rejected"] > 0 and counts["ran"] > 0
