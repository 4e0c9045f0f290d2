"""The orchestrator's HTTP API, in process (``httpx.ASGITransport``) against a running engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped]
import pytest

from dispatch import Status, _wire
from dispatch.orchestrator._api import api_app
from dispatch.orchestrator._storage import CANCELLED, DONE, RUNNING, WAITING

from .harness import ENDPOINT, Env

pytestmark = pytest.mark.timeout(60)

KEY = "secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
EMPTY = {"pending": 0, "running": 0, "waiting": 0, "done": 0}


@asynccontextmanager
async def api(
    env: Env, key: str | None = KEY, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(
        app=api_app(env.engine, key), raise_app_exceptions=raise_app_exceptions
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://orchestrator.test") as http:
        yield http


def request(env: Env, *calls: tuple[str, tuple[Any, ...]], **options: Any) -> bytes:
    return _wire.DispatchRequest(
        calls=tuple(
            _wire.Call(
                function=function,
                input=_wire.encode_arguments(args, {}, env.keys.sealer),
                endpoint=options.get("endpoint", ENDPOINT),
                dispatch_id=options.get("dispatch_id"),
            )
            for function, args in calls
        )
    ).to_msgpack()


async def get(http: httpx.AsyncClient, call_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/calls/{call_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/msgpack"
    document: dict[str, Any] = msgpack.unpackb(response.content)
    return document


async def test_dispatch_creates_the_calls_and_runs_them() -> None:
    async with Env() as env, api(env) as http:
        body = request(env, ("add", (1, 2)), ("fan_out", (2,)))
        response = await http.post("/v1/dispatch", content=body, headers=AUTH)
        assert response.status_code == 200, response.text
        add, fan_out = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
        assert env.value(await env.done(add)) == 3
        assert env.value(await env.done(fan_out)) == [[0, 10], [1, 11]]

        document = await get(http, add)
        assert document["id"] == document["root_id"] == add
        assert (document["parent_id"], document["function"], document["endpoint"]) == (
            None,
            "add",
            ENDPOINT,
        )
        assert (document["state"], document["status"], document["attempt"]) == (DONE, 1, 1)
        assert _wire.decode_arguments(document["input"], env.keys.sealer) == ((1, 2), {})
        assert _wire.decode_value(document["output"], env.keys.sealer) == 3
        assert document["error"] is None and document["children"] == []
        assert document["created_at"] <= document["finished_at"]
        [attempt] = document["attempts"]
        assert (attempt["number"], attempt["attempt"], attempt["status"]) == (1, 1, 1)
        assert attempt["started_at"] <= attempt["finished_at"]
        assert len((await get(http, fan_out))["children"]) == 2


async def test_dispatch_keeps_ids_chosen_by_the_caller() -> None:
    async with Env() as env, api(env) as http:
        body = request(env, ("add", (1, 1)), dispatch_id="my-id")
        response = await http.post("/v1/dispatch", content=body, headers=AUTH)
        assert _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids == ("my-id",)
        assert env.value(await env.done("my-id")) == 2


async def test_a_dispatch_id_names_one_call() -> None:
    async with Env() as env, api(env) as http:
        body = request(env, ("add", (1, 1)), dispatch_id="once")
        for _ in range(2):  # a client retrying a dispatch whose answer it lost
            response = await http.post("/v1/dispatch", content=body, headers=AUTH)
            assert response.status_code == 200, response.text
            ids = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
            assert ids == ("once",)
        await env.done("once")
        assert await env.storage.counts() == {**EMPTY, "done": 1}
        # The id of another function: refused, and nothing of the request created.
        other = request(env, ("add", (2, 2)), ("fan_out", (1,)), dispatch_id="once")
        response = await http.post("/v1/dispatch", content=other, headers=AUTH)
        assert response.status_code == 409, response.text
        assert "'once'" in response.text
        assert await env.storage.counts() == {**EMPTY, "done": 1}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "bearer "}],
    ids=["none", "wrong", "no-scheme", "empty"],
)
async def test_every_route_but_health_needs_the_key(headers: dict[str, str]) -> None:
    async with Env() as env, api(env) as http:
        call_id = await env.submit("add", 1, 1)
        await env.done(call_id)
        body = request(env, ("add", (1, 1)))
        for response in (
            await http.post("/v1/dispatch", content=body, headers=headers),
            await http.get(f"/v1/calls/{call_id}", headers=headers),
            await http.post(f"/v1/calls/{call_id}/cancel", headers=headers),
        ):
            assert response.status_code == 401
            assert "API key" in response.text
        assert await env.storage.counts() == {**EMPTY, "done": 1}
        health = await http.get("/v1/health")
        assert (health.status_code, health.text) == (200, "ok")


async def test_without_a_key_the_api_is_open() -> None:
    async with Env() as env, api(env, key=None) as http:
        response = await http.post("/v1/dispatch", content=request(env, ("add", (2, 2))))
        assert response.status_code == 200
        [call_id] = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
        assert env.value(await env.done(call_id)) == 4


async def test_get_of_an_unknown_call_is_404() -> None:
    async with Env() as env, api(env) as http:
        response = await http.get("/v1/calls/nobody", headers=AUTH)
        assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        b"not msgpack \xc1",
        msgpack.packb({"v": 1, "calls": "no"}),
        msgpack.packb({"v": 2, "calls": []}),
    ],
    ids=["garbage", "ill-typed", "other-version"],
)
async def test_malformed_requests_are_400(body: bytes) -> None:
    async with Env() as env, api(env) as http:
        response = await http.post("/v1/dispatch", content=body, headers=AUTH)
        assert response.status_code == 400
        assert response.text.startswith("bad request: ")
        assert await env.storage.counts() == EMPTY


@pytest.mark.parametrize("endpoint", [None, "", "ftp://app.test/dispatch", "app.test"])
async def test_a_call_without_an_http_endpoint_fails_the_whole_request(
    endpoint: str | None,
) -> None:
    async with Env() as env, api(env) as http:
        good = _wire.Call(function="add", input=b"\x92\x90\x80", endpoint=ENDPOINT)
        bad = _wire.Call(function="add", input=b"\x92\x90\x80", endpoint=endpoint)
        body = _wire.DispatchRequest(calls=(good, bad)).to_msgpack()
        response = await http.post("/v1/dispatch", content=body, headers=AUTH)
        assert response.status_code == 400
        assert "call 1 (add) needs an http(s) endpoint" in response.text
        assert await env.storage.counts() == EMPTY


async def test_cancel_stops_a_waiting_coroutine_and_its_children() -> None:
    async with Env(grace=0.01) as env, api(env) as http:
        response = await http.post(
            "/v1/dispatch", content=request(env, ("waits_on_naps", (30.0,))), headers=AUTH
        )
        [call_id] = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
        parent = await env.until(call_id, lambda r: r.state == WAITING and len(r.children) == 2)
        for child_id in parent.children:
            await env.until(child_id, lambda r: r.state == RUNNING)

        response = await http.post(f"/v1/calls/{call_id}/cancel", headers=AUTH)
        assert response.status_code == 200
        assert msgpack.unpackb(response.content) == {"cancelled": 3}
        for document in [await get(http, i) for i in (call_id, *parent.children)]:
            assert (document["state"], document["status"]) == (DONE, CANCELLED)
            error = _wire.Error.from_msgpack(document["error"])
            assert (error.type, error.status) == (
                "dispatch.Cancelled",
                Status.PERMANENT_ERROR.value,
            )

        again = await http.post(f"/v1/calls/{call_id}/cancel", headers=AUTH)
        assert msgpack.unpackb(again.content) == {"cancelled": 0}
        unknown = await http.post("/v1/calls/nobody/cancel", headers=AUTH)
        assert msgpack.unpackb(unknown.content) == {"cancelled": 0}
