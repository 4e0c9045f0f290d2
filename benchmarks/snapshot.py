"""Snapshot size and dumps+loads time of suspended durable frames.

    python benchmarks/snapshot.py [--quick]

Prints a table and writes benchmarks/results/snapshot-<python>.json. Each
case is measured through the standard pickle module (what a user calls) and
through dispatch's own dumps/loads (what the runtime calls for its state).
Times are the median over repeats of the mean over many iterations.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from workloads import generator_loop, holds_text, mid_loop, outer

from dispatch.experimental.durable import dumps, loads

# dispatch-py 0.8 on this machine (research/dispatch-py.md §9.2) and the targets of issue #2.
BASELINE = {"mid_loop": 841, "nested": 970, "text_1k": 1709, "generator": 451}
TARGET_BYTES = {"mid_loop": 300, "nested": 400, "text_1k": 1200, "generator": 200}
TARGET_MICROSECONDS = {"mid_loop": 15.0}


def suspended(case: str) -> Any:
    if case == "mid_loop":
        coro = mid_loop(10)
        coro.send(None)
        for step in range(4):  # suspended at i == 4, seen == [0, 1, 2, 3, 4]
            coro.send(step)
        return coro
    if case == "nested":
        coro = outer(1)
        coro.send(None)
        return coro
    if case == "text_1k":
        coro = holds_text(1024)
        coro.send(None)
        return coro
    gen = generator_loop([1, 2, 3, 4, 5, 6])
    next(gen)
    next(gen)
    return gen


def timed(function: Callable[[], object], iterations: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time of ``function`` in microseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            function()
        samples.append((time.perf_counter_ns() - start) / iterations / 1000)
    return statistics.median(samples)


def measure(case: str, iterations: int, repeats: int) -> dict[str, Any]:
    obj = suspended(case)
    std = pickle.dumps(obj, protocol=5)
    own = dumps(obj)
    result = {
        "case": case,
        "pickle_bytes": len(std),
        "dumps_bytes": len(own),
        "pickle_us": timed(
            lambda: pickle.loads(pickle.dumps(obj, protocol=5)), iterations, repeats
        ),
        "dumps_us": timed(lambda: loads(dumps(obj)), iterations, repeats),
        "dumps_only_us": timed(lambda: dumps(obj), iterations, repeats),
        "loads_only_us": timed(lambda: loads(own), iterations, repeats),
        "baseline_bytes": BASELINE[case],
        "target_bytes": TARGET_BYTES[case],
        "target_us": TARGET_MICROSECONDS.get(case),
    }
    obj.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    iterations, repeats = (200, 3) if args.quick else (5000, 7)
    rows = [measure(case, iterations, repeats) for case in BASELINE]
    version = "{}.{}".format(*sys.version_info[:2])
    print(f"snapshot size and speed, Python {platform.python_version()}")
    header = (
        f"{'case':<10} {'pickle B':>9} {'dumps B':>8} {'target B':>9} {'0.8 B':>6} "
        f"{'pickle µs':>10} {'dumps µs':>9} {'target µs':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        target_us = f"{row['target_us']:.0f}" if row["target_us"] else "-"
        print(
            f"{row['case']:<10} {row['pickle_bytes']:>9} {row['dumps_bytes']:>8} "
            f"{row['target_bytes']:>9} {row['baseline_bytes']:>6} {row['pickle_us']:>10.1f} "
            f"{row['dumps_us']:>9.1f} {target_us:>10}"
        )
    out = Path(__file__).parent / "results" / f"snapshot-{version}.json"
    out.parent.mkdir(exist_ok=True)
    document = {
        "python": platform.python_version(),
        "iterations": iterations,
        "repeats": repeats,
        "rows": rows,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
