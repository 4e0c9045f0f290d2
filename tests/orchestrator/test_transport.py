"""How the engine reaches endpoints: in process (``ASGIInvoker``, ``DirectInvoker``) and over
a real socket (uvicorn + ``HTTPInvoker``); what each failure to get an answer counts as;
request signatures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped]
import pytest
from starlette.types import Receive, Scope, Send

from dispatch import Dispatch, Status, _signature, _wire
from dispatch.orchestrator import ASGIInvoker, HTTPInvoker, Invoker, Orchestrator, SQLiteStorage
from dispatch.orchestrator._storage import DONE

from . import functions
from .harness import ENDPOINT, FAST, Env, Keys, closed_port, served, statuses

pytestmark = pytest.mark.timeout(60)


def answering(status: int, body: bytes, times: int, app: Any) -> Any:
    """An ASGI app answering ``status`` and ``body`` the first ``times`` times, then ``app``."""
    calls = 0

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        if calls > times:
            await app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return wrapper


class FailsOnce:
    """The endpoint, raising the first time it is called (as an ASGI app, or by ``handle``)."""

    def __init__(self, endpoint: Dispatch) -> None:
        self.endpoint = endpoint
        self.calls = 0

    def fail_first(self) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the endpoint")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.fail_first()
        await self.endpoint(scope, receive, send)

    async def handle(self, body: bytes) -> tuple[int, bytes]:
        self.fail_first()
        return await self.endpoint.handle(body)


# --- in process -----------------------------------------------------------------------------


async def test_an_unknown_function_is_not_found_and_not_retried(via: str) -> None:
    async with Env(via=via) as env:
        record = await env.run("no_such_function")
    assert (record.status, statuses(record)) == (Status.NOT_FOUND.value, [Status.NOT_FOUND])
    assert "'no_such_function' does not exist" in env.error(record).message


async def test_an_attempt_past_its_timeout_is_a_timeout(via: str) -> None:
    policy = replace(FAST, max_attempts=2, attempt_timeout=0.05)
    async with Env(policy=policy, via=via) as env:
        record = await env.run("nap", 30.0)
    assert (record.status, statuses(record)) == (Status.TIMEOUT.value, [Status.TIMEOUT] * 2)
    assert "no answer within 0.05 s" in env.error(record).message


async def test_an_endpoint_that_raises_is_an_http_error_and_retried(via: str) -> None:
    """What a server does for an app that raises: the orchestrator sees an error, not a crash."""

    def invoker(env: Env) -> Invoker:
        return env.in_process(via, FailsOnce(env.endpoint))

    async with Env(invoker=invoker) as env:
        record = await env.run("add", 3, 3)
        assert env.value(record) == 6
    assert statuses(record) == [Status.HTTP_ERROR, Status.OK]
    assert "a bug in the endpoint" in (record.attempts[0].error_message or "")


async def test_an_answer_without_a_run_response_is_an_http_error_and_retried() -> None:
    def invoker(env: Env) -> Invoker:
        return ASGIInvoker(answering(500, b"boom", 2, env.endpoint))

    async with Env(invoker=invoker) as env:
        record = await env.run("add", 2, 2)
        assert env.value(record) == 4
    assert statuses(record) == [Status.HTTP_ERROR, Status.HTTP_ERROR, Status.OK]
    assert [(a.error_type, a.error_message) for a in record.attempts[:2]] == [
        ("HTTP 500", "boom")
    ] * 2


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (429, Status.THROTTLED),
        (503, Status.HTTP_ERROR),
        (413, Status.INVALID_ARGUMENT),
        (400, Status.INVALID_ARGUMENT),
    ],
)
async def test_http_statuses_count_as_statuses(code: int, status: Status) -> None:
    def invoker(env: Env) -> Invoker:
        return ASGIInvoker(answering(code, b"no", 1, env.endpoint))

    async with Env(invoker=invoker) as env:
        record = await env.run("add", 2, 3)
        if status.retry:
            assert env.value(record) == 5
            assert statuses(record) == [status, Status.OK]
        else:
            assert (record.status, statuses(record)) == (status.value, [status])


async def test_an_answer_that_is_not_a_run_response_is_invalid() -> None:
    def invoker(env: Env) -> Invoker:
        return ASGIInvoker(answering(200, b"\x93garbage", 1, env.endpoint))

    async with Env(invoker=invoker) as env:
        record = await env.run("add", 2, 2)
    assert statuses(record) == [Status.INVALID_RESPONSE]
    assert env.error(record).type == "dispatch.ProtocolError"


async def test_a_cancelled_request_is_cancelled(via: str) -> None:
    async with Env(via=via) as env:
        request = _wire.RunRequest(
            function="nap",
            dispatch_id="x",
            root_id="x",
            parent_id=None,
            creation_time=time.time(),
            expiration_time=None,
            attempt=1,
            input=_wire.encode_arguments((30.0,), {}, env.keys.sealer),
        )
        body = request.to_msgpack()
        headers = _signature.sign_request(env.keys.private, "POST", "/dispatch/run", body)
        task = asyncio.ensure_future(env.invoker.post(f"{ENDPOINT}/run", body, headers, 60.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- signatures -----------------------------------------------------------------------------


def untrusting(verification_key: str | None = None) -> Callable[[Env], Invoker]:
    """In process through the ASGI app, with ``verification_key`` instead of the right one."""

    def invoker(env: Env) -> Invoker:
        endpoint = Dispatch(
            registry=functions.registry,
            verification_key=verification_key or env.keys.public,
            seal_keys=[env.keys.seal],
        )
        return ASGIInvoker(endpoint)

    return invoker


async def test_signed_requests_are_verified() -> None:
    async with Env(invoker=untrusting()) as env:
        record = await env.run("fan_out", 1)
        assert env.value(record) == [[0, 10]]


async def test_an_endpoint_with_another_key_refuses_and_is_not_retried() -> None:
    _, other_key = _signature.generate_keypair()
    async with Env(invoker=untrusting(other_key)) as env:
        record = await env.run("add", 1, 1)
    assert statuses(record) == [Status.PERMISSION_DENIED]
    assert env.error(record).type == "HTTP 403"


async def test_unsigned_requests_are_refused_and_not_retried() -> None:
    async with Env(invoker=untrusting(), signing_key=False) as env:
        record = await env.run("add", 1, 1)
    assert statuses(record) == [Status.UNAUTHENTICATED]
    assert env.error(record).type == "HTTP 401"


# --- over a real socket ---------------------------------------------------------------------


async def test_connection_refused_is_a_tcp_error_and_retried() -> None:
    async with Env(invoker=lambda env: HTTPInvoker()) as env:
        url = f"http://127.0.0.1:{closed_port()}/dispatch"
        record = await env.run("add", 1, 2, endpoint=url)
    assert statuses(record) == [Status.TCP_ERROR] * FAST.max_attempts
    error = env.error(record)
    assert (error.status, error.type) == (Status.TCP_ERROR.value, "dispatch.TransportError")
    assert "cannot connect" in error.message


async def test_an_http_endpoint_past_its_timeout_is_a_timeout() -> None:
    policy = replace(FAST, max_attempts=1, attempt_timeout=0.1)
    async with Env(invoker=lambda env: HTTPInvoker(), policy=policy) as env:
        endpoint = Dispatch(
            registry=functions.registry,
            verification_key=env.keys.public,
            seal_keys=[env.keys.seal],
        )
        async with served(endpoint) as url:
            record = await env.run("nap", 0.3, endpoint=f"{url}/dispatch")
    assert statuses(record) == [Status.TIMEOUT]


async def test_orchestrator_and_endpoint_over_http(tmp_path: Path) -> None:
    keys = Keys()
    endpoint = Dispatch(
        registry=functions.registry, verification_key=keys.public, seal_keys=[keys.seal]
    )
    orchestrator = Orchestrator(
        SQLiteStorage(str(tmp_path / "dispatch.db")),
        signing_key=keys.private,
        api_key="secret",
        policy=FAST,
    )
    headers = {"Authorization": "Bearer secret"}
    async with served(endpoint) as app_url, served(orchestrator, lifespan="on") as api_url:
        calls = (
            _wire.Call(
                function="fan_out",
                input=_wire.encode_arguments((2,), {}, keys.sealer),
                endpoint=f"{app_url}/dispatch",
            ),
            _wire.Call(function="no_such_function", input=b"\x90", endpoint=f"{app_url}/dispatch"),
        )
        async with httpx.AsyncClient(base_url=api_url, headers=headers) as http:
            response = await http.post(
                "/v1/dispatch", content=_wire.DispatchRequest(calls=calls).to_msgpack()
            )
            assert response.status_code == 200, response.text
            fan_out, unknown = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
            record = await done_over_http(http, fan_out)
            assert _wire.decode_value(record["output"], keys.sealer) == [[0, 10], [1, 11]]
            assert len(record["children"]) == 2
            record = await done_over_http(http, unknown)
            assert record["status"] == Status.NOT_FOUND.value
            assert len(record["attempts"]) == 1


async def done_over_http(http: httpx.AsyncClient, call_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        response = await http.get(f"/v1/calls/{call_id}")
        assert response.status_code == 200, response.text
        record: dict[str, Any] = msgpack.unpackb(response.content)
        if record["state"] == DONE or time.monotonic() > deadline:
            assert record["state"] == DONE, record
            return record
        await asyncio.sleep(0.01)
