"""The examples run as a newcomer runs them: `python examples/<name>.py`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_resume_anywhere() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "resume_anywhere.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.strip().splitlines()
    pids = [re.match(r"\[pid (\d+)\]", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert len(set(pids)) == len(pids) == 5, "every step runs in its own interpreter"
    for number in range(1, 5):
        assert f"suspended after line {number} of 4" in lines[number - 1]
    assert lines[-1].endswith("finished: [('the', 4), ('dog', 2), ('fox', 2)]")
