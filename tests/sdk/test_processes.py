"""The endpoint served by uvicorn on a real socket, and a snapshot resumed by another process."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
from conftest import Keys
from harness import Harness

from dispatch import Status, _signature, _wire

HERE = Path(__file__).parent

SERVE = """
import sdk_app, uvicorn
from dispatch import Dispatch
uvicorn.run(Dispatch(), host="127.0.0.1", port={port}, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served(keys: Keys) -> Iterator[str]:
    """The SDK test app served by uvicorn in a process of its own; yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "DISPATCH_VERIFICATION_KEY": keys.public,
        "DISPATCH_SEAL_KEY": base64.b64encode(keys.seal).decode(),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE.format(port=port)], env=env, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/dispatch/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError as error:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stderr.read().decode() if process.stderr else ""
                    raise AssertionError(output) from error
                time.sleep(0.05)
        yield url
    finally:
        process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()


def test_over_a_real_socket(keys: Keys) -> None:
    with served(keys) as url:
        harness = Harness(httpx.AsyncHTTPTransport(), keys.sealer, keys.private, base_url=url)
        outcome = asyncio.run(harness.call("mixed"))
        assert outcome.value(keys.sealer) == ["Hello remote", "HELLO LOCAL", 3]


def post(url: str, keys: Keys, request: _wire.RunRequest) -> _wire.RunResponse:
    body = request.to_msgpack()
    headers = _signature.sign_request(keys.private, "POST", "/dispatch/run", body)
    response = httpx.post(f"{url}/dispatch/run", content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return _wire.RunResponse.from_msgpack(response.content)


def test_snapshot_resumes_in_another_process(keys: Keys) -> None:
    first = _wire.RunRequest(
        function="sequential",
        dispatch_id="d-42",
        root_id="d-42",
        parent_id=None,
        creation_time=time.time(),
        expiration_time=None,
        attempt=1,
        input=_wire.encode_arguments((3,), {}, keys.sealer),
    )
    total = 0
    request = first
    for step in range(3):
        # Every step runs in a process that never saw the previous ones.
        with served(keys) as url:
            response = post(url, keys, request)
        assert response.poll is not None, response
        (call,) = response.poll.calls
        a, b = _wire.decode_arguments(call.input, keys.sealer)[0]
        assert (a, b) == (total, step)
        total = a + b
        result = _wire.CallResult(
            correlation_id=call.correlation_id,
            dispatch_id=f"c{step}",
            output=_wire.encode_value(total, keys.sealer),
        )
        request = replace(
            first, input=None, poll=_wire.PollResult(state=response.poll.state, results=(result,))
        )
    with served(keys) as url:
        response = post(url, keys, request)
    assert response.status == Status.OK.value and response.exit is not None
    assert response.exit.output is not None
    assert _wire.decode_value(response.exit.output, keys.sealer) == 3
