"""Orchestrators and application replicas as real processes, each restartable.

``dispatch server`` processes share one database (a SQLite file, or a
PostgreSQL URL) and each serves the API on its own port; application
replicas (``crash_app.py`` under ``dispatch.run``, connected mode) serve the
endpoint, which every call names by all the replicas' URLs. Processes are
named ``orchestrator-<i>`` and ``app-<i>``; their output goes to
``<name>-<n>.log`` in the directory, for failure messages.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped]

from dispatch import _local

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    def __init__(
        self,
        directory: Path,
        database: str,
        *,
        orchestrators: int = 1,
        apps: int = 1,
        shape: dict[str, str] | None = None,
        max_attempts: int = 50,
        lease: float = 30.0,
    ) -> None:
        self.directory = directory
        self.database = database
        self.keys = _local.keys(directory / "keys.json")
        self.ids = directory / "roots.json"
        self.executions = directory / "executions"
        self.executions.mkdir()
        self.api_ports = [free_port() for _ in range(orchestrators)]
        self.app_ports = [free_port() for _ in range(apps)]
        self.shape = shape or {}
        self.max_attempts = max_attempts
        self.lease = lease
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return ",".join(f"http://127.0.0.1:{port}/dispatch" for port in self.app_ports)

    def api(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.api_ports[index]}"

    def start(self, name: str) -> None:
        kind, _, number = name.partition("-")
        index = int(number)
        self.starts += 1
        log = open(self.directory / f"{name}-{self.starts}.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            "DISPATCH_DIR": str(self.directory),
            "DISPATCH_API_KEY": self.keys.api_key,
            "PYTHONUNBUFFERED": "1",
        }
        if kind == "orchestrator":
            command = [
                sys.executable, "-m", "dispatch", "server", "--db", self.database,
                "--port", str(self.api_ports[index]),
                # Enough attempts to ride out every kill of an application replica.
                "--max-attempts", str(self.max_attempts), "--lease", str(self.lease),
            ]  # fmt: skip
            url = f"{self.api(index)}/v1/health"
        else:
            command = [sys.executable, str(HERE / "crash_app.py")]
            env |= {
                "DISPATCH_API_URL": self.api(index % len(self.api_ports)),
                "DISPATCH_ENDPOINT_ADDR": f"127.0.0.1:{self.app_ports[index]}",
                "DISPATCH_ENDPOINT_URL": self.endpoint,
                "DISPATCH_VERIFICATION_KEY": self.keys.verification_key,
                "DISPATCH_SEAL_KEY": self.keys.seal_key_text(),
                "CRASH_IDS": str(self.ids),
                "CRASH_LOG": str(self.executions),
                **self.shape,
            }
            url = f"http://127.0.0.1:{self.app_ports[index]}/dispatch/health"
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

    def start_all(self) -> dict[str, int]:
        """Every process; the roots the first replica dispatched (id: index)."""
        for index in range(len(self.api_ports)):
            self.start(f"orchestrator-{index}")
        self.start("app-0")
        deadline = time.monotonic() + 30
        while not self.ids.exists():
            assert time.monotonic() < deadline, f"no roots dispatched: {self.logs()}"
            time.sleep(0.01)
        for index in range(1, len(self.app_ports)):
            self.start(f"app-{index}")
        roots: dict[str, int] = json.loads(self.ids.read_text())
        return roots

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

    def running(self, kind: str) -> list[str]:
        """The names of the live processes of ``kind`` (orchestrator, app)."""
        return [
            name
            for name, process in self.processes.items()
            if name.startswith(f"{kind}-") and process.poll() is None
        ]

    def leaves_run_by(self, name: str) -> int:
        """How many leaves the process ``name`` (as it runs now) finished."""
        path = self.executions / f"{self.processes[name].pid}.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )

    def call(self, call_id: str) -> dict[str, Any]:
        """A call as the API of any live orchestrator shows it."""
        for name, process in self.processes.items():
            if name.startswith("orchestrator-") and process.poll() is None:
                url = self.api(int(name.partition("-")[2]))
                response = httpx.get(
                    f"{url}/v1/calls/{call_id}",
                    headers={"Authorization": f"Bearer {self.keys.api_key}"},
                    timeout=10,
                )
                response.raise_for_status()
                document: dict[str, Any] = msgpack.unpackb(response.content)
                return document
        raise AssertionError("no orchestrator is running")

    def executions_of_leaves(self) -> dict[tuple[int, int], list[tuple[float, float]]]:
        """When each leaf ran, by (depth, index): a list of (start, end), one per run that
        finished (a run cut short by a kill leaves no line, or half of one)."""
        runs: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for path in self.executions.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                try:
                    depth, index, start, end = json.loads(line)
                except ValueError:
                    continue
                runs.setdefault((depth, index), []).append((start, end))
        return runs
