"""Scheduler state size and speed, mid-``gather`` of 10 and 100 calls.

    python benchmarks/scheduler.py [--quick]

For n in (10, 100): a durable coroutine gathers n calls. Measured: the size
of the sealed state in the Poll (and of the whole RunResponse), and the time
of the first run to the Poll plus the resume with all n results to the Exit,
through the scheduler as the endpoint runs it (message decoding and encoding
included, HTTP excluded). Prints a table and writes
benchmarks/results/scheduler-<python>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import dispatch
from dispatch import _wire
from dispatch._scheduler import Scheduler

# dispatch-py 0.8 on this machine (research/dispatch-py.md §9.2) and the targets of issue #3.
BASELINE_BYTES = {10: 5100, 100: 40000}
TARGET_BYTES = {10: 1000, 100: 5000}
TARGET_MS = 2.0


@dispatch.function
def work(i: int) -> int:
    return i * i


@dispatch.function
async def fan_out(n: int) -> int:
    results = await dispatch.gather(*[work(i) for i in range(n)])
    return sum(results)


def request(**directive: Any) -> bytes:
    """A RunRequest of fan_out with its input or its poll result."""
    return _wire.RunRequest(
        function="fan_out",
        dispatch_id="bench-1",
        root_id="bench-1",
        parent_id=None,
        creation_time=time.time(),
        expiration_time=None,
        attempt=1,
        **directive,
    ).to_msgpack()


def first_request(sealer: _wire.Sealer, n: int) -> bytes:
    return request(input=_wire.encode_arguments((n,), {}, sealer))


def resume_request(sealer: _wire.Sealer, poll: _wire.Poll) -> bytes:
    results = tuple(
        _wire.CallResult(
            correlation_id=call.correlation_id,
            dispatch_id=f"c{call.correlation_id}",
            output=_wire.encode_value(i * i, sealer),
        )
        for i, call in enumerate(poll.calls)
    )
    return request(poll=_wire.PollResult(state=poll.state, results=results))


async def round_trip(
    scheduler: Scheduler, first: bytes, sealer: _wire.Sealer, n: int
) -> tuple[bytes, bytes, float, float]:
    """One first run and one resume, as the endpoint handles them: (poll, exit, ms, ms)."""
    started = time.perf_counter()
    request = _wire.RunRequest.from_msgpack(first)
    poll_response = (await scheduler.run(fan_out, request)).to_msgpack()
    middle = time.perf_counter()
    poll = _wire.RunResponse.from_msgpack(poll_response).poll
    assert poll is not None and len(poll.calls) == n
    second = resume_request(sealer, poll)  # the orchestrator's work: not timed
    resumed = time.perf_counter()
    exit_response = (
        await scheduler.run(fan_out, _wire.RunRequest.from_msgpack(second))
    ).to_msgpack()
    done = time.perf_counter()
    return poll_response, exit_response, (middle - started) * 1000, (done - resumed) * 1000


async def measure(n: int, repeats: int) -> dict[str, Any]:
    sealer = _wire.Sealer([_wire.generate_key()])
    scheduler = Scheduler(sealer)
    first = first_request(sealer, n)
    firsts, resumes = [], []
    for _ in range(repeats):
        poll_response, exit_response, first_ms, resume_ms = await round_trip(
            scheduler, first, sealer, n
        )
        firsts.append(first_ms)
        resumes.append(resume_ms)
    answer = _wire.RunResponse.from_msgpack(exit_response)
    assert answer.exit is not None and answer.exit.output is not None
    assert _wire.decode_value(answer.exit.output, sealer) == sum(i * i for i in range(n))
    poll = _wire.RunResponse.from_msgpack(poll_response).poll
    assert poll is not None
    first_ms, resume_ms = statistics.median(firsts), statistics.median(resumes)
    return {
        "calls": n,
        "state_bytes": len(poll.state),
        "poll_response_bytes": len(poll_response),
        "first_run_ms": round(first_ms, 3),
        "resume_ms": round(resume_ms, 3),
        "total_ms": round(first_ms + resume_ms, 3),
        "baseline_state_bytes": BASELINE_BYTES[n],
        "target_state_bytes": TARGET_BYTES[n],
        "target_total_ms": TARGET_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    repeats = 20 if args.quick else 300
    rows = [asyncio.run(measure(n, repeats)) for n in (10, 100)]
    print(f"scheduler state and speed, Python {platform.python_version()}")
    header = (
        f"{'calls':>5} {'state B':>8} {'target B':>9} {'0.8 B':>6} {'poll B':>7} "
        f"{'first ms':>9} {'resume ms':>10} {'total ms':>9} {'target ms':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['calls']:>5} {row['state_bytes']:>8} {row['target_state_bytes']:>9} "
            f"{row['baseline_state_bytes']:>6} {row['poll_response_bytes']:>7} "
            f"{row['first_run_ms']:>9.3f} {row['resume_ms']:>10.3f} {row['total_ms']:>9.3f} "
            f"{row['target_total_ms']:>10.1f}"
        )
    version = "{}.{}".format(*sys.version_info[:2])
    out = Path(__file__).parent / "results" / f"scheduler-{version}.json"
    out.parent.mkdir(exist_ok=True)
    document = {"python": platform.python_version(), "repeats": repeats, "rows": rows}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
