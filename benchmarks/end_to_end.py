"""End to end: calls dispatched, run on the endpoint and recorded done, on the embedded default.

    python benchmarks/end_to_end.py [--quick] [--mode embedded|http]

Shapes (issue #4): 500 one-step calls dispatched one by one, and in one
batch; one durable coroutine gathering 100 calls; one durable coroutine
making 50 sequential awaited calls. Each run is a fresh process
(``benchmarks/e2e_app.py``) with a fresh database, timed from the first
dispatch until the orchestrator has recorded every call done (durable:
SQLite WAL, every transition committed). Median of 3 runs (1 with
``--quick``), and the peak memory of the process: in embedded mode the
orchestrator and the application are that one process.

``--mode http`` runs the same application under ``dispatch run``: the
orchestrator in another process, calling the endpoint over HTTP with signed
requests (the peak memory is then the larger of the two processes).

Prints a table and writes benchmarks/results/end_to_end-<mode>-<python>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SHAPES = ("one_by_one", "batch", "gather", "sequential")
# Issue #4: targets, and dispatch-py 0.8's in-memory test service on this machine.
TARGET_SECONDS = {"one_by_one": 0.25, "batch": 0.25, "gather": 0.040, "sequential": 0.050}
BASELINE_SECONDS = {"one_by_one": 1.99, "batch": 1.99, "gather": 0.072, "sequential": 0.110}
TARGET_PEAK_MB = 100.0


def run_once(shape: str, mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dispatch-e2e-") as directory:
        database = str(Path(directory) / "dispatch.db")
        env = {**os.environ, "DISPATCH_DIR": directory, "E2E_DATABASE": database}
        env.pop("DISPATCH_API_URL", None)
        app = [sys.executable, str(HERE / "e2e_app.py"), shape]
        if mode == "http":
            command = [sys.executable, "-m", "dispatch", "run", "--no-table", "--db", database]
            command += ["--", *app]
        else:
            command = app
        # Output to files, not pipes: a full pipe would stall the process measured.
        with (
            open(Path(directory) / "out", "w+b") as out,
            open(Path(directory) / "err", "w+b") as err,
        ):
            process = subprocess.Popen(command, env=env, cwd=directory, stdout=out, stderr=err)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        if process.returncode != 0:
            raise SystemExit(f"{shape} ({mode}) failed with {process.returncode}:\n{stderr}")
        for line in stdout.splitlines():
            # Under dispatch run each line of the application carries a prefix.
            start = line.find("{")
            if start >= 0 and '"shape"' in line:
                result: dict[str, Any] = json.loads(line[start:])
                # The largest of the processes waited for (Linux: kilobytes).
                result["peak_rss"] = max(result["peak_rss"], usage.ru_maxrss * 1024)
                return result
        raise SystemExit(f"{shape} ({mode}) printed no result:\n{stdout}\n{stderr}")


def measure(shape: str, mode: str, repeats: int) -> dict[str, Any]:
    runs = [run_once(shape, mode) for _ in range(repeats)]
    return {
        "shape": shape,
        "calls": runs[0]["calls"],
        "seconds": statistics.median(run["seconds"] for run in runs),
        "runs": [run["seconds"] for run in runs],
        "peak_mb": max(run["peak_rss"] for run in runs) / 2**20,
        "target_seconds": TARGET_SECONDS[shape],
        "dispatch_py_0_8_seconds": BASELINE_SECONDS[shape],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per shape (a smoke run)")
    parser.add_argument("--mode", choices=("embedded", "http"), default="embedded")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    rows = [measure(shape, args.mode, repeats) for shape in SHAPES]
    print(f"end to end, {args.mode}, Python {platform.python_version()}, median of {repeats}")
    header = (
        f"{'shape':<11} {'calls':>5} {'seconds':>8} {'target':>7} {'0.8':>6} "
        f"{'calls/s':>8} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['shape']:<11} {row['calls']:>5} {row['seconds']:>8.3f} "
            f"{row['target_seconds']:>7.3f} {row['dispatch_py_0_8_seconds']:>6.3f} "
            f"{row['calls'] / row['seconds']:>8.0f} {row['peak_mb']:>8.1f}"
        )
    print(f"peak memory target (orchestrator + application): {TARGET_PEAK_MB:.0f} MB")
    version = "{}.{}".format(*sys.version_info[:2])
    out = HERE / "results" / f"end_to_end-{args.mode}-{version}.json"
    out.parent.mkdir(exist_ok=True)
    document = {"python": platform.python_version(), "mode": args.mode, "repeats": repeats}
    out.write_text(json.dumps({**document, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
