"""The ``dispatch`` command, run as a user runs it.

``dispatch run -- CMD``: CMD gets the configuration of the orchestrator the
command started, its output comes out prefixed, signals reach it, and its
exit code is the command's. ``dispatch server``: a standalone orchestrator
serving the API, alone on its database.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# The helpers that run a command as a terminal does live with the examples' tests.
from test_examples import DISPATCH, PATIENCE, Process, newcomer_environment

import dispatch
from dispatch import _local, _wire

APP = "app | "
NO_CALLS = _wire.DispatchRequest(calls=()).to_msgpack()
"""The body of a valid POST /v1/dispatch: a request of no calls."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dispatch_run(directory: Path, *command: str) -> Process:
    return Process([str(DISPATCH), "run", "--", *command], directory, newcomer_environment())


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def app_lines(process: Process) -> list[str]:
    return [line.removeprefix(APP) for line in process.stdout if line.startswith(APP)]


def finish(process: Process) -> int:
    """The exit code of a command expected to end on its own."""
    try:
        return process.wait(PATIENCE)
    finally:
        process.kill()


# -- dispatch run ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_run_exits_with_the_command_exit_code(code: int, tmp_path: Path) -> None:
    process = dispatch_run(tmp_path, *python(f"import sys; sys.exit({code})"))
    assert finish(process) == code, process.transcript()
    assert "Traceback" not in process.transcript(), process.transcript()


REPORT_CONFIGURATION = """
import json, os, sys, urllib.error, urllib.request

def status(url, key=None):
    headers = {"Content-Type": "application/msgpack"}
    if key is not None:
        headers["Authorization"] = "Bearer " + key
    data = bytes.fromhex(sys.argv[2]) if url.endswith("/dispatch") else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")

env = {name: value for name, value in os.environ.items() if name.startswith("DISPATCH_")}
api = env["DISPATCH_API_URL"]
report = {
    "env": env,
    "health": status(api + "/v1/health"),
    "without_key": status(api + "/v1/dispatch"),
    "with_key": status(api + "/v1/dispatch", env["DISPATCH_API_KEY"]),
}
with open(sys.argv[1], "w") as file:
    json.dump(report, file)
"""


def test_run_passes_the_orchestrator_configuration(tmp_path: Path) -> None:
    script = tmp_path / "report.py"
    script.write_text(REPORT_CONFIGURATION)
    report_file = tmp_path / "report.json"
    process = dispatch_run(tmp_path, sys.executable, str(script), str(report_file), NO_CALLS.hex())
    assert finish(process) == 0, process.transcript()
    report = json.loads(report_file.read_text())
    env = report["env"]
    assert set(env) >= {
        "DISPATCH_API_URL",
        "DISPATCH_API_KEY",
        "DISPATCH_ENDPOINT_ADDR",
        "DISPATCH_ENDPOINT_URL",
        "DISPATCH_VERIFICATION_KEY",
        "DISPATCH_SEAL_KEY",
    }
    # The orchestrator is up while the command runs, and holds to its API key.
    assert report["health"] == [200, "ok"]
    assert report["without_key"][0] == 401
    assert report["with_key"][0] == 200
    assert env["DISPATCH_API_URL"].startswith("http://127.0.0.1:")
    assert env["DISPATCH_ENDPOINT_URL"] == f"http://{env['DISPATCH_ENDPOINT_ADDR']}/dispatch"
    Ed25519PublicKey.from_public_bytes(base64.b64decode(env["DISPATCH_VERIFICATION_KEY"]))
    assert len(base64.b64decode(env["DISPATCH_SEAL_KEY"])) >= 32
    assert "DISPATCH_INSECURE" not in env


def test_run_prefixes_the_command_output(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "print('to stdout: [red]not markup[/red] é ✓ 漢字')\n"
        "print('to stderr', file=sys.stderr)\n"
        "print()\n"
    )
    process = dispatch_run(tmp_path, *python(code))
    assert finish(process) == 0, process.transcript()
    # Both streams come out as the app's, as lines of their own, after where
    # the orchestrator and its dashboard are.
    # (Its log lines, into a pipe, are JSON.)
    banner, *rest = process.stderr
    assert banner.startswith("orchestrator | "), banner
    assert re.fullmatch(
        r"serving on (http://127\.0\.0\.1:\d+), dashboard on \1/dashboard/ "
        r"\(its API key: dispatch env\); dispatch calls list shows the calls",
        json.loads(banner.removeprefix("orchestrator | "))["message"],
    ), banner
    lines = sorted([*process.stdout, *rest])
    assert lines == ["app | ", "app | to stderr", "app | to stdout: [red]not markup[/red] é ✓ 漢字"]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "a long line " + "x" * 150,
            id="long",
        ),
        pytest.param(
            "name\tvalue",
            id="tab",
        ),
    ],
)
def test_run_passes_lines_through_verbatim(text: str, tmp_path: Path) -> None:
    process = dispatch_run(tmp_path, *python(f"print({text!r})"))
    assert finish(process) == 0, process.transcript()
    assert process.stdout == [APP + text]


@pytest.mark.parametrize("arguments", [[], ["run"], ["run", "--"]])
def test_a_missing_command_is_a_usage_error(arguments: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [str(DISPATCH), *arguments],
        cwd=tmp_path,
        env=newcomer_environment(),
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: dispatch"), result
    assert "Traceback" not in result.stderr
    if arguments:
        assert "dispatch run needs a command: dispatch run -- python app.py" in result.stderr


WAIT_FOR_SIGNAL = """
import signal, sys, time

received = []
for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, lambda number, frame: received.append(number))
print("ready", flush=True)
while not received:
    time.sleep(0.01)
time.sleep(0.2)  # a second signal, if one was coming, arrives meanwhile
print("received", *[signal.Signals(number).name for number in received], flush=True)
sys.exit(5)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_run_forwards_a_signal_to_the_command(sig: signal.Signals, tmp_path: Path) -> None:
    process = dispatch_run(tmp_path, *python(WAIT_FOR_SIGNAL))
    try:
        process.wait_for(lambda: "ready" in app_lines(process), "ready line")
        # To the process group, as a terminal's Ctrl-C or a process manager's stop.
        process.signal(sig)
        code = process.wait()
    finally:
        process.kill()
    assert app_lines(process) == ["ready", f"received {sig.name}"], process.transcript()
    assert code == 5, process.transcript()
    assert "Traceback" not in process.transcript(), process.transcript()


def test_run_exit_code_of_a_command_killed_by_a_signal(tmp_path: Path) -> None:
    process = dispatch_run(tmp_path, *python("import os, signal; os.kill(os.getpid(), 9)"))
    assert finish(process) == 128 + signal.SIGKILL, process.transcript()


def test_run_a_command_that_does_not_exist(tmp_path: Path) -> None:
    process = dispatch_run(tmp_path, "no-such-command-for-dispatch")
    code = finish(process)
    transcript = process.transcript()
    assert "Traceback" not in transcript, transcript
    assert "no-such-command-for-dispatch" in transcript, transcript
    assert code == 127, transcript


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_run_stops_the_command_when_the_terminal_closes(tmp_path: Path) -> None:
    process = dispatch_run(
        tmp_path, *python("import os, time; print(os.getpid(), flush=True); time.sleep(60)")
    )
    pid = 0
    try:
        process.wait_for(lambda: bool(app_lines(process)), "pid of the command")
        pid = int(app_lines(process)[0])
        process.signal(signal.SIGHUP)
        process.wait()
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the command outlived dispatch run"
    finally:
        process.kill()
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- dispatch server ------------------------------------------------------------------------


def start_server(directory: Path, database: Path, port: int, api_key: str) -> Process:
    environment = newcomer_environment()
    environment["DISPATCH_API_KEY"] = api_key
    command = [str(DISPATCH), "server", "--db", str(database), "--port", str(port)]
    return Process(command, directory, environment)


def healthy(url: str) -> bool:
    try:
        response = httpx.get(f"{url}/v1/health", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text == "ok"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_server_serves_the_api(
    sig: signal.Signals, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database = tmp_path / "x.db"
    process = start_server(tmp_path, database, port, api_key="the-api-key")
    try:
        process.wait_for(lambda: healthy(url), "answer on /v1/health")
        body = NO_CALLS
        headers = {"Content-Type": "application/msgpack"}
        response = httpx.post(f"{url}/v1/dispatch", content=body, headers=headers)
        assert response.status_code == 401
        wrong = {**headers, "Authorization": "Bearer not-the-key"}
        assert httpx.post(f"{url}/v1/dispatch", content=body, headers=wrong).status_code == 401

        for name in [name for name in os.environ if name.startswith("DISPATCH_")]:
            monkeypatch.delenv(name)
        seal_key = base64.b64encode(secrets.token_bytes(32)).decode()
        monkeypatch.setenv("DISPATCH_SEAL_KEY", seal_key)
        nowhere = f"http://127.0.0.1:{free_port()}/dispatch"
        with dispatch.Client(url, "the-api-key", endpoint=nowhere) as client:
            ids = client.dispatch(dispatch.Call("greet", ("Jane",), {}))
        assert len(ids) == 1
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        with contextlib.closing(connection):
            calls = connection.execute("SELECT id, function FROM calls").fetchall()
        assert calls == [(ids[0], "greet")]

        process.signal(sig)
        code = process.wait()
    finally:
        process.kill()
    transcript = process.transcript()
    assert code == 0, transcript
    assert "Traceback" not in transcript, transcript
    assert process.stderr[0].startswith(
        f"dispatch: orchestrator on {url} (dashboard: {url}/dashboard/); endpoints verify its "
        "requests with DISPATCH_VERIFICATION_KEY="
    ), transcript


def second_server(directory: Path) -> tuple[int, Process]:
    """Start a server, then a second one on its database; the second's exit
    code and run, once the first has been checked to serve on."""
    database = directory / "x.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_server(directory, database, port, api_key="the-api-key")
    second: Process | None = None
    try:
        first.wait_for(lambda: healthy(url), "answer on /v1/health")
        second = start_server(directory, database, free_port(), api_key="the-api-key")
        code = second.wait(PATIENCE)
        assert healthy(url), "the first server serves on"
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.transcript()
    finally:
        if second is not None:
            second.kill()
        first.kill()
    return code, second


def test_a_second_server_on_the_same_database_is_refused(tmp_path: Path) -> None:
    code, second = second_server(tmp_path)
    transcript = second.transcript()
    assert code != 0, transcript
    message = f"another dispatch orchestrator is using {tmp_path / 'x.db'}"
    assert any(message in line for line in second.stderr), transcript


def test_a_second_server_says_so_without_a_traceback(tmp_path: Path) -> None:
    _, second = second_server(tmp_path)
    assert "Traceback" not in second.transcript(), second.transcript()


def test_env_prints_what_an_application_needs_for_a_shell(tmp_path: Path) -> None:
    script = (
        f"eval \"$('{sys.executable}' -m dispatch env)\" && "
        'echo "$DISPATCH_API_KEY $DISPATCH_VERIFICATION_KEY $DISPATCH_SEAL_KEY"'
    )
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=newcomer_environment(),
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert result.returncode == 0, result.stderr
    keys = _local.keys(tmp_path / ".dispatch" / "keys.json")  # the ones it made
    assert result.stdout.split() == [keys.api_key, keys.verification_key, keys.seal_key_text()]


def test_processes_starting_together_share_one_set_of_keys(tmp_path: Path) -> None:
    """Two orchestrators started at once in one directory must sign with the same key."""
    code = "from dispatch import _local; print(_local.keys().signing_key)"
    processes = [
        subprocess.Popen(
            python(code),
            cwd=tmp_path,
            env=newcomer_environment(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    keys = {process.communicate(timeout=30)[0] for process in processes}
    assert len(keys) == 1
    assert [path.name for path in (tmp_path / ".dispatch").iterdir()] == ["keys.json"]
