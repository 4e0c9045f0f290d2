"""A durable coroutine that outlives its process.

    python examples/resume_anywhere.py

The coroutine counts words line by line and suspends after each line.
Every step runs in a new interpreter process: it loads the snapshot the
previous process wrote with the standard pickle module, resumes the
coroutine exactly where it stopped (same loop position, same local
variables, same partially built dictionary), runs it to its next
suspension and writes a new snapshot.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import types
from collections.abc import Generator
from pathlib import Path
from typing import Any

from dispatch.experimental.durable import durable

TEXT = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "the dog sleeps",
    "and the fox runs away",
]


@durable
@types.coroutine
def checkpoint(label: str) -> Generator[str, None, None]:
    """Suspend the coroutine chain; the driver snapshots it here."""
    yield label


@durable
async def count_words(lines: list[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        for word in line.split():
            counts[word] = counts.get(word, 0) + 1
        await checkpoint(f"line {number} of {len(lines)}")
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]


def step(snapshot: Path) -> bool:
    """Resume the coroutine saved in ``snapshot`` for one step; False once it finished."""
    coroutine: Any = pickle.loads(snapshot.read_bytes()) if snapshot.exists() else None
    if coroutine is None:
        coroutine = count_words(TEXT)
    try:
        label = coroutine.send(None)
    except StopIteration as done:
        print(f"[pid {os.getpid()}] finished: {done.value}")
        return False
    data = pickle.dumps(coroutine)
    snapshot.write_bytes(data)
    print(f"[pid {os.getpid()}] suspended after {label}: {len(data)}-byte snapshot")
    return True


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--step":
        sys.exit(0 if step(Path(sys.argv[2])) else 3)
    with tempfile.TemporaryDirectory(prefix="dispatch-example-") as directory:
        snapshot = Path(directory) / "count_words.pickle"
        while True:
            child = subprocess.run([sys.executable, __file__, "--step", str(snapshot)], check=False)
            if child.returncode == 3:
                return
            if child.returncode != 0:
                sys.exit(child.returncode)


if __name__ == "__main__":
    main()
