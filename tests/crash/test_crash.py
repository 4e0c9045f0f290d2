"""Nothing accepted is lost, and every result is recorded once, whatever process dies when.

A standalone orchestrator (``dispatch server``, SQLite) and the application
(``crash_app.py`` under ``dispatch.run``, connected to it) run as real
processes over real sockets. While the application's nested fan-outs run,
one of them is killed with SIGKILL at random moments and restarted, several
times. At the end every call must be done with status OK, every child's
result must have been recorded once for its parent, and every root must
return the value computed without dispatch.

The moments are random; the seed is in every failure message, and
``CRASH_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import crash_app
import httpx
import pytest

from dispatch import Status, _local, _wire

HERE = Path(__file__).parent
KILLS = 5
TOTAL = crash_app.ROOTS * crash_app.calls_per_root()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Cluster:
    """The orchestrator and the application, each restartable."""

    directory: Path
    api_port: int = field(default_factory=free_port)
    app_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: int = 0

    def __post_init__(self) -> None:
        self.keys = _local.keys(self.directory / "keys.json")
        self.database = self.directory / "dispatch.db"
        self.ids = self.directory / "roots.json"

    def start(self, name: str) -> None:
        self.starts += 1
        log = open(self.directory / f"{name}-{self.starts}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "DISPATCH_DIR": str(self.directory), "PYTHONUNBUFFERED": "1"}
        if name == "orchestrator":
            command = [
                sys.executable, "-m", "dispatch", "server",
                "--db", str(self.database), "--port", str(self.api_port),
                # Enough attempts to ride out every kill of the application.
                "--max-attempts", "50",
            ]  # fmt: skip
            url = f"http://127.0.0.1:{self.api_port}/v1/health"
        else:
            command = [sys.executable, str(HERE / "crash_app.py")]
            env |= {
                "DISPATCH_API_URL": f"http://127.0.0.1:{self.api_port}",
                "DISPATCH_API_KEY": self.keys.api_key,
                "DISPATCH_ENDPOINT_ADDR": f"127.0.0.1:{self.app_port}",
                "DISPATCH_ENDPOINT_URL": f"http://127.0.0.1:{self.app_port}/dispatch",
                "DISPATCH_VERIFICATION_KEY": self.keys.verification_key,
                "DISPATCH_SEAL_KEY": self.keys.seal_key_text(),
                "CRASH_IDS": str(self.ids),
            }
            url = f"http://127.0.0.1:{self.app_port}/dispatch/health"
        with log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            assert process.poll() is None, f"{name} exited: {self.logs()}"
            assert time.monotonic() < deadline, f"{name} did not start: {self.logs()}"
            time.sleep(0.02)

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )

    def read(self) -> contextlib.closing[sqlite3.Connection]:
        """The database, read only, as any client may read it while the orchestrator runs."""
        return contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True))

    def progress(self) -> tuple[int, int]:
        """Calls recorded, and how many of them are done."""
        with self.read() as db:
            total, done = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(state = 'done'), 0) FROM calls"
            ).fetchone()
        return total, done


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize("victim", ["orchestrator", "application"])
def test_killed_and_restarted_at_random_moments(cluster: Cluster, victim: str) -> None:
    seed = int(os.environ.get("CRASH_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    context = f"CRASH_SEED={seed}"
    cluster.start("orchestrator")
    cluster.start("application")
    deadline = time.monotonic() + 30
    while not cluster.ids.exists():
        assert time.monotonic() < deadline, f"no roots dispatched: {cluster.logs()}"
        time.sleep(0.01)

    for kill in range(KILLS):
        time.sleep(rng.uniform(0.05, 0.4))
        # Each kill must land while the work runs, or this proves little.
        assert cluster.progress()[1] < TOTAL, f"done before kill {kill + 1} ({context})"
        cluster.kill(victim)
        cluster.start(victim)

    deadline = time.monotonic() + 120
    while cluster.progress() != (TOTAL, TOTAL):
        assert time.monotonic() < deadline, (
            f"not done: {cluster.progress()} of {TOTAL} ({context})\n{cluster.logs()}"
        )
        time.sleep(0.05)

    roots = json.loads(cluster.ids.read_text())
    sealer = _wire.Sealer(cluster.keys.seal_key)
    with cluster.read() as db:
        failed = db.execute(
            "SELECT id, function, status FROM calls WHERE status != ? OR output IS NULL",
            (Status.OK.value,),
        ).fetchall()
        assert not failed, f"calls not OK ({context}): {failed[:5]}"
        # One result per child, each delivered to its parent.
        children, results, delivered = db.execute(
            "SELECT (SELECT COUNT(*) FROM calls WHERE parent_id IS NOT NULL), "
            "(SELECT COUNT(DISTINCT child_id) FROM results), "
            "(SELECT COUNT(*) FROM results WHERE delivered = 1)"
        ).fetchone()
        assert children == results == delivered == TOTAL - len(roots), context
        for call_id, index in roots.items():
            (output,) = db.execute("SELECT output FROM calls WHERE id = ?", (call_id,)).fetchone()
            value = _wire.decode_value(output, sealer)
            assert value == crash_app.expected(crash_app.DEPTH, index), context
