"""Each program, snapshotted at each of its suspension points, resumes exactly.

For every program and every i, the program runs to its i-th suspension, is
pickled with the standard pickle module, restored in a separate interpreter
and finished there; the trace must equal an uninterrupted run's.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from durable_programs import PROGRAMS, Boom, Program, run, run_to

from dispatch.experimental.durable import dumps, loads

HERE = Path(__file__).parent


def suspension_count(program: Program) -> int:
    return sum(1 for event, _ in run(program.start()) if event == "yield")


def as_json(trace: list[Any]) -> list[Any]:
    result: list[Any] = json.loads(json.dumps(trace))
    return result


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_resume_in_another_process_at_every_suspension(program: Program, tmp_path: Path) -> None:
    full = run(program.start())
    count = suspension_count(program)
    assert count >= 2, "a program must suspend to be worth snapshotting"
    cases = []
    prefixes = []
    for i in range(count + 1):
        obj = program.start()
        prefix, value = run_to(obj, i)
        cases.append((pickle.dumps(obj, protocol=5), value))
        prefixes.append(prefix)
        # Taking a snapshot does not disturb the original.
        assert prefix + run(obj, value) == full
    path = tmp_path / "cases.pickle"
    path.write_bytes(pickle.dumps(cases))
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    child = subprocess.run(
        [sys.executable, "-W", "error", str(HERE / "resume_child.py"), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    traces = json.loads(child.stdout)
    for i, (prefix, rest) in enumerate(zip(prefixes, traces, strict=True)):
        assert as_json(prefix) + rest == as_json(full), f"resumed after suspension {i}"


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_dumps_loads_and_deepcopy_at_every_suspension(program: Program) -> None:
    full = run(program.start())
    for i in range(suspension_count(program) + 1):
        obj = program.start()
        prefix, value = run_to(obj, i)
        assert prefix + run(loads(dumps(obj)), value) == full
        assert prefix + run(copy.deepcopy(obj), value) == full
        assert prefix + run(obj, value) == full


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_throw_into_restored_frame(program: Program) -> None:
    for i in range(1, suspension_count(program) + 1):
        original = program.start()
        run_to(original, i)
        restored = pickle.loads(pickle.dumps(original, protocol=5))
        expected: list[Any] = []
        got: list[Any] = []
        for obj, trace in ((original, expected), (restored, got)):
            try:
                trace.append(("yield", repr(obj.throw(Boom("thrown")))))
                trace.extend(run(obj, None))
            except StopIteration as stop:
                trace.append(("return", repr(stop.value)))
            except Exception as exc:
                trace.append(("raise", repr(exc)))
        assert got == expected, f"throw after suspension {i}"


def close(obj: Any) -> tuple[str, str]:
    try:
        obj.close()
    except Exception as exc:
        return "raise", repr(exc)
    return "closed", ""


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_close_restored_frame_as_the_original(program: Program) -> None:
    """close() runs the same finally blocks (and fails the same way) after a restore."""
    for i in range(1, suspension_count(program) + 1):
        original = program.start()
        _, value = run_to(original, i)
        restored = pickle.loads(pickle.dumps(original, protocol=5))
        assert close(restored) == close(original)
        assert run(restored, value) == run(original, value)
