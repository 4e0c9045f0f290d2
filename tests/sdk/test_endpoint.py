"""The endpoint answers bad input precisely, and only runs what the orchestrator signed."""

from __future__ import annotations

import asyncio
import base64
import importlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Keys
from harness import Harness
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dispatch import Dispatch, Status, _signature, _wire
from dispatch._config import ConfigurationError


def request(keys: Keys, function: str = "greet", *args: Any, **fields: Any) -> _wire.RunRequest:
    base = _wire.RunRequest(
        function=function,
        dispatch_id="d1",
        root_id="d1",
        parent_id=None,
        creation_time=time.time(),
        expiration_time=None,
        attempt=1,
        input=_wire.encode_arguments(args or ("Jane",), {}, keys.sealer),
    )
    return replace(base, **fields)


def post(
    endpoint: Dispatch,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/dispatch/run",
) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=endpoint)
        async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
            return await client.post(path, content=body, headers=headers or {})

    return asyncio.run(send())


def signed(keys: Keys, body: bytes, path: str = "/dispatch/run") -> dict[str, str]:
    return _signature.sign_request(keys.private, "POST", path, body)


def run_response(response: httpx.Response) -> _wire.RunResponse:
    assert response.status_code == 200, response.text
    return _wire.RunResponse.from_msgpack(response.content)


def test_signed_request_runs(endpoint: Dispatch, keys: Keys) -> None:
    body = request(keys).to_msgpack()
    answer = run_response(post(endpoint, body, signed(keys, body)))
    assert answer.status == Status.OK.value and answer.exit is not None
    assert answer.exit.output is not None
    assert _wire.decode_value(answer.exit.output, keys.sealer) == "Hello Jane"


def test_missing_signature_is_401(endpoint: Dispatch, keys: Keys) -> None:
    response = post(endpoint, request(keys).to_msgpack())
    assert response.status_code == 401


def test_bad_signatures_are_403(endpoint: Dispatch, keys: Keys) -> None:
    body = request(keys).to_msgpack()
    other = Keys()
    assert post(endpoint, body, signed(other, body)).status_code == 403  # wrong key
    tampered = request(keys, "greet", "Mallory").to_msgpack()
    assert post(endpoint, tampered, signed(keys, body)).status_code == 403  # other body
    an_hour_ago = time.time() - 3600
    stale = _signature.sign_request(keys.private, "POST", "/dispatch/run", body, now=an_hour_ago)
    assert post(endpoint, body, stale).status_code == 403


def test_replayed_request_is_refused(endpoint: Dispatch, keys: Keys) -> None:
    body = request(keys).to_msgpack()
    headers = signed(keys, body)
    assert post(endpoint, body, headers).status_code == 200
    replay = post(endpoint, body, headers)
    assert replay.status_code == 403 and "already used" in replay.text


def test_malformed_body_is_400(endpoint: Dispatch, keys: Keys) -> None:
    for body in (b"", b"\xff\x00garbage", _wire.DispatchRequest(calls=()).to_msgpack()):
        response = post(endpoint, body, signed(keys, body))
        assert response.status_code == 400, body


def test_unknown_function_is_404_with_its_name(endpoint: Dispatch, keys: Keys) -> None:
    body = request(keys, "no_such_function").to_msgpack()
    response = post(endpoint, body, signed(keys, body))
    assert response.status_code == 404 and "no_such_function" in response.text


def test_oversized_body_is_413(keys: Keys) -> None:
    small = Dispatch(verification_key=keys.public, seal_keys=[keys.seal], max_body=100)
    body = request(keys, "greet", "x" * 200).to_msgpack()
    assert post(small, body, signed(keys, body)).status_code == 413


def test_health(endpoint: Dispatch) -> None:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=endpoint)
        async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
            return await client.get("/dispatch/health")

    assert asyncio.run(get()).text == "ok"


def test_forged_argument_seal_is_refused_before_unpickling(endpoint: Dispatch, keys: Keys) -> None:
    other = Keys()  # sealed with a key the endpoint does not hold
    forged = request(keys, input=_wire.encode_arguments(({1, 2},), {}, other.sealer))
    body = forged.to_msgpack()
    answer = run_response(post(endpoint, body, signed(keys, body)))
    assert answer.status == Status.INVALID_ARGUMENT.value
    assert answer.exit is not None and answer.exit.error is not None
    assert "seal" in answer.exit.error.message.lower()


def suspend(endpoint: Dispatch, keys: Keys) -> _wire.Poll:
    body = request(keys, "greet_everyone", ["Jane"]).to_msgpack()
    answer = run_response(post(endpoint, body, signed(keys, body)))
    assert answer.poll is not None
    return answer.poll


def resume(endpoint: Dispatch, keys: Keys, state: bytes, dispatch_id: str = "d1") -> Any:
    result = _wire.CallResult(
        correlation_id=1, dispatch_id="c1", output=_wire.encode_value("Hello Jane", keys.sealer)
    )
    resumed = request(
        keys,
        "greet_everyone",
        dispatch_id=dispatch_id,
        input=None,
        poll=_wire.PollResult(state=state, results=(result,)),
    )
    body = resumed.to_msgpack()
    return run_response(post(endpoint, body, signed(keys, body)))


def test_resume_with_the_state_it_gave(endpoint: Dispatch, keys: Keys) -> None:
    poll = suspend(endpoint, keys)
    answer = resume(endpoint, keys, poll.state)
    assert answer.exit is not None and answer.exit.output is not None
    assert _wire.decode_value(answer.exit.output, keys.sealer) == ["Hello Jane"]


def test_tampered_or_swapped_state_is_incompatible(endpoint: Dispatch, keys: Keys) -> None:
    poll = suspend(endpoint, keys)
    state = bytearray(poll.state)
    state[len(state) // 2] ^= 1
    for answer in (
        resume(endpoint, keys, bytes(state)),  # a flipped bit
        resume(endpoint, keys, poll.state, dispatch_id="another-call"),  # another call's state
        resume(endpoint, keys, b"garbage"),
    ):
        assert answer.status == Status.INCOMPATIBLE_STATE.value
        assert answer.exit is not None and answer.exit.error is not None


def test_state_from_another_python_is_incompatible(endpoint: Dispatch, keys: Keys) -> None:
    poll = suspend(endpoint, keys)
    payload = bytearray(keys.sealer.open(poll.state, b"state:d1"))
    payload[3] += 1  # the snapshot header's Python minor version
    forged = keys.sealer.seal(bytes(payload), b"state:d1")  # even with a valid seal
    answer = resume(endpoint, keys, forged)
    assert answer.status == Status.INCOMPATIBLE_STATE.value
    assert answer.exit is not None and answer.exit.error is not None
    assert "Python" in answer.exit.error.message


def test_refuses_to_start_without_a_verification_key(
    keys: Keys, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DISPATCH_VERIFICATION_KEY", raising=False)
    monkeypatch.delenv("DISPATCH_INSECURE", raising=False)
    with pytest.raises(ConfigurationError, match="DISPATCH_VERIFICATION_KEY"):
        Dispatch(seal_keys=[keys.seal])
    with caplog.at_level(logging.WARNING, logger="dispatch"):
        insecure = Dispatch(seal_keys=[keys.seal], insecure=True)
    assert "INSECURE MODE" in caplog.text
    body = request(keys).to_msgpack()
    assert post(insecure, body).status_code == 200


def test_refuses_to_start_without_a_seal_key(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCH_SEAL_KEY", raising=False)
    monkeypatch.delenv("DISPATCH_INSECURE", raising=False)
    with pytest.raises(ConfigurationError, match="DISPATCH_SEAL_KEY"):
        Dispatch(verification_key=keys.public)


def test_mounted_in_a_starlette_app(keys: Keys) -> None:
    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    app = Starlette(routes=[Route("/", home)])
    Dispatch(app, verification_key=keys.public, seal_keys=[keys.seal])
    harness = Harness(httpx.ASGITransport(app=app), keys.sealer, keys.private)
    outcome = asyncio.run(harness.call("greet_everyone", ["Ada"]))
    assert outcome.value(keys.sealer) == ["Hello Ada"]

    async def get_home() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return (await client.get("/")).text

    assert asyncio.run(get_home()) == "home"


def test_fastapi_example(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/fastapi_app.py: the endpoint mounted next to the app's own routes."""
    monkeypatch.setenv("DISPATCH_VERIFICATION_KEY", keys.public)
    monkeypatch.setenv("DISPATCH_SEAL_KEY", base64.b64encode(keys.seal).decode())
    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "examples"))
    module = importlib.import_module("fastapi_app")
    harness = Harness(httpx.ASGITransport(app=module.app), keys.sealer, keys.private)
    outcome = asyncio.run(harness.call("greet_all", ["Jane", "Mike"]))
    assert outcome.value(keys.sealer) == ["Hello Jane", "Hello Mike"]

    async def home() -> Any:
        transport = httpx.ASGITransport(app=module.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return (await client.get("/")).json()

    assert asyncio.run(home()) == {"status": "serving"}
