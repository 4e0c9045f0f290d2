"""Write the golden snapshots of this Python minor version.

Run it with each supported interpreter after a deliberate change to the
snapshot format (and a FORMAT_VERSION bump), then commit the files:

    for v in 3.11 3.12 3.13; do .venv/$v/bin/python tests/durable/make_golden.py; done

test_golden.py loads these files on every run, so an accidental format
change, or one that breaks resuming old snapshots, fails the tests.
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from durable_programs import PROGRAMS, run, run_to  # noqa: E402

from dispatch.experimental.durable import FORMAT_VERSION  # noqa: E402


def golden_path(version: tuple[int, int] = sys.version_info[:2]) -> Path:
    return HERE / "golden" / f"py{version[0]}.{version[1]}.json"


def snapshots() -> list[dict[str, Any]]:
    cases = []
    for program in PROGRAMS:
        suspensions = sum(1 for event, _ in run(program.start()) if event == "yield")
        for i in range(suspensions + 1):
            obj = program.start()
            _, value = run_to(obj, i)
            data = pickle.dumps(obj, protocol=5)
            run(obj, value)
            cases.append(
                {
                    "program": program.name,
                    "suspension": i,
                    "snapshot": base64.b64encode(data).decode(),
                }
            )
    return cases


def main() -> None:
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "python": "{}.{}".format(*sys.version_info[:2]),
        "cases": snapshots(),
    }
    path = golden_path()
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {len(document['cases'])} snapshots to {path}")


if __name__ == "__main__":
    main()
