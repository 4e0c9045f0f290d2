"""Which code a snapshot resumes: module + qualified name + fingerprint.

Each test writes real modules to a temporary directory, snapshots in one
interpreter and resumes in another, as a deploy would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

COUNTER = """
import types
from dispatch.experimental.durable import durable

@durable
@types.coroutine
def suspend(value):
    return (yield value)

@durable
async def counter(n):
    total = 0
    for i in range(n):
        total = total + await suspend(i) + 1
    return total
"""

SNAPSHOT = """
import pickle, sys, {module} as m
coro = m.{function}
coro.send(None)
coro.send(10)
sys.stdout.buffer.write(pickle.dumps(coro))
"""

RESUME = """
import pickle, sys
coro = pickle.loads(sys.stdin.buffer.read())
value = 20
try:
    while True:
        coro.send(value)
        value += 10
except StopIteration as stop:
    print(stop.value)
"""


def python(code: str, path: Path, stdin: bytes = b"") -> bytes:
    """Run ``code`` in a fresh interpreter with ``path`` first on sys.path."""
    child = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        input=stdin,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(path)},
        timeout=60,
        check=False,
    )
    if child.returncode != 0:
        raise AssertionError(child.stderr.decode())
    return child.stdout


def write(path: Path, name: str, source: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.py").write_text(textwrap.dedent(source))


def snapshot(path: Path, module: str, call: str) -> bytes:
    return python(SNAPSHOT.format(module=module, function=call), path)


def test_resumes_after_the_function_moves_within_its_file(tmp_path: Path) -> None:
    write(tmp_path, "moving", COUNTER)
    data = snapshot(tmp_path, "moving", "counter(3)")
    # Lines added above, another function in front: line numbers all change.
    write(
        tmp_path, "moving", "\n\n\nimport os\n\n\ndef unrelated():\n    return os.sep\n" + COUNTER
    )
    assert python(RESUME, tmp_path, data).strip() == b"63"


def test_resumes_from_another_file_path(tmp_path: Path) -> None:
    write(tmp_path / "old", "relocated", COUNTER)
    data = snapshot(tmp_path / "old", "relocated", "counter(3)")
    write(tmp_path / "new" / "deeper", "relocated", COUNTER)
    assert python(RESUME, tmp_path / "new" / "deeper", data).strip() == b"63"


def test_changed_constant_is_detected(tmp_path: Path) -> None:
    write(tmp_path, "changing", COUNTER)
    data = snapshot(tmp_path, "changing", "counter(3)")
    write(tmp_path, "changing", COUNTER.replace("+ 1", "+ 2"))
    with pytest.raises(AssertionError) as error:
        python(RESUME, tmp_path, data)
    message = str(error.value)
    assert "IncompatibleStateError" in message
    assert "changing.counter changed since the snapshot was taken" in message
    assert message.count("fingerprint") == 1 and "recorded" in message and "now" in message


def test_renamed_function_is_incompatible(tmp_path: Path) -> None:
    write(tmp_path, "renaming", COUNTER)
    data = snapshot(tmp_path, "renaming", "counter(3)")
    write(tmp_path, "renaming", COUNTER.replace("async def counter", "async def tally"))
    with pytest.raises(AssertionError, match=r"IncompatibleStateError: .*renaming\.counter"):
        python(RESUME, tmp_path, data)


def test_missing_module_is_incompatible(tmp_path: Path) -> None:
    write(tmp_path / "a", "vanishing", COUNTER)
    data = snapshot(tmp_path / "a", "vanishing", "counter(3)")
    with pytest.raises(AssertionError, match=r"IncompatibleStateError: .*vanishing"):
        python(RESUME, tmp_path / "elsewhere", data)


SNAPSHOT_ALL = """
import pickle, sys, {modules}
coros = [{calls}]
for coro in coros:
    coro.send(None)
sys.stdout.buffer.write(pickle.dumps(coros))
"""

FINISH_ALL = """
import pickle, sys
results = []
for coro in pickle.loads(sys.stdin.buffer.read()):
    try:
        coro.send({first})
        coro.send({second})
    except StopIteration as stop:
        results.append(stop.value)
print(results)
"""


def snapshot_and_finish(path: Path, modules: str, calls: str, sends: tuple[int, int]) -> bytes:
    """Start ``calls`` in one interpreter, finish them with ``sends`` in another."""
    data = python(SNAPSHOT_ALL.format(modules=modules, calls=calls), path)
    return python(FINISH_ALL.format(first=sends[0], second=sends[1]), path, data).strip()


def test_same_qualified_name_in_two_modules(tmp_path: Path) -> None:
    write(tmp_path, "mod_a", COUNTER)
    write(tmp_path, "mod_b", COUNTER.replace("+ 1", "* 2"))
    out = snapshot_and_finish(
        tmp_path, "mod_a, mod_b", "mod_a.counter(2), mod_b.counter(2)", (5, 7)
    )
    # mod_a: (0 + 5 + 1) + 7 + 1 = 14; mod_b: (0 + 5 * 2) + 7 * 2 = 24
    assert out == b"[14, 24]"


def test_durable_closure_created_twice(tmp_path: Path) -> None:
    write(
        tmp_path,
        "factory",
        COUNTER
        + """
def make(step):
    @durable
    async def stepper(n):
        return [await suspend(i) + step for i in range(n)]
    return stepper
""",
    )
    out = snapshot_and_finish(
        tmp_path, "factory", "factory.make(1)(2), factory.make(100)(2)", (10, 20)
    )
    assert out == b"[[11, 21], [110, 120]]"
