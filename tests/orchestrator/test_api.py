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

from . import functions
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
        # (The coroutine is resumed once more, for its cleanup, then done.)
        await env.until(call_id, lambda r: r.state == DONE)
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
        assert unknown.status_code == 404


async def test_a_cancelled_coroutine_cleans_up_at_its_awaits() -> None:
    async with Env(grace=0.01) as env, api(env) as http:
        response = await http.post(
            "/v1/dispatch", content=request(env, ("cleans_up", (30.0,))), headers=AUTH
        )
        [call_id] = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
        parent = await env.until(call_id, lambda r: r.state == WAITING and len(r.children) == 2)
        response = await http.post(f"/v1/calls/{call_id}/cancel", headers=AUTH)
        assert msgpack.unpackb(response.content) == {"cancelled": 3}
        record = await env.until(call_id, lambda r: r.state == DONE)
        assert record.status == CANCELLED
        # Each task received the cancellation at its await, deepest first, and
        # its cleanup ran; the cleanup's own call failed at once.
        assert sorted(functions.events) == sorted(
            [
                ("cancelled at its await", "a"),
                ("finally", "a"),
                ("cancelled at its await", "b"),
                ("finally", "b"),
                ("cancelled at its await", "entry"),
                ("cleanup makes no calls", "entry"),
                ("finally", "entry"),
            ]
        )
        assert functions.events[-1] == ("finally", "entry")
        for child in parent.children:
            child_record = await env.storage.get(child)
            assert child_record is not None and child_record.status == CANCELLED
        # The cleanup resume is an attempt of its own, on record.
        assert len(record.attempts) == 2


# --- the JSON API for people and tools (dispatch calls, the dashboard) ---------------------

JSON = {**AUTH, "Accept": "application/json"}


async def test_list_filters_and_pages_calls() -> None:
    async with Env() as env, api(env) as http:
        fan_out = await env.run("fan_out", 2)
        failed = await env.run("fails", "PERMANENT_ERROR", 1, "k")
        response = await http.get("/v1/calls", headers=JSON)
        assert response.status_code == 200, response.text
        everything = response.json()["calls"]
        assert len(everything) == 1 + 2 + 4 + 1  # fan_out, its pairs, their adds, fails
        assert everything[0]["id"] == failed.id  # newest first
        seen, cursor = [], None
        while True:
            page = (
                await http.get(
                    "/v1/calls", params={"limit": 3, "before": cursor or ""}, headers=JSON
                )
            ).json()
            seen += [call["id"] for call in page["calls"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == [call["id"] for call in everything]

        async def ids(**params: Any) -> set[str]:
            response = await http.get("/v1/calls", params=params, headers=JSON)
            assert response.status_code == 200, response.text
            return {call["id"] for call in response.json()["calls"]}

        assert await ids(status="failed") == {failed.id}
        assert await ids(status="permanent_error") == {failed.id}
        assert len(await ids(function="add")) == 4
        assert await ids(roots="1") == {fan_out.id, failed.id}
        assert len(await ids(root=fan_out.id)) == 7
        assert await ids(since=str(failed.created_at)) == {failed.id}
        assert len(await ids(state="done")) == 8
        for bad in ({"state": "asleep"}, {"status": "meh"}, {"limit": "0"}, {"before": "x"}):
            response = await http.get("/v1/calls", params=bad, headers=JSON)
            assert response.status_code == 400 and response.text.startswith("bad request: ")
        assert (await http.get("/v1/calls")).status_code == 401


async def test_a_call_as_json_for_people() -> None:
    async with Env() as env, api(env) as http:
        failed = await env.run("fails", "PERMANENT_ERROR", 1, "k")
        document = (await http.get(f"/v1/calls/{failed.id}", headers=JSON)).json()
        assert (document["state"], document["status"]) == ("done", "permanent_error")
        assert document["input"] == [["PERMANENT_ERROR", 1, "k"], {}]
        assert document["error"]["type"].endswith("functions.Failure")
        assert document["error"]["message"] == "failing with PERMANENT_ERROR"
        assert "raise Failure(Status[status])" in document["error"]["traceback"]
        [attempt] = document["attempts"]
        assert attempt["status"] == "permanent_error" and attempt["duration"] >= 0
        assert "raise Failure(Status[status])" in attempt["traceback"]

        fan_out = await env.run("fan_out", 1)
        document = (await http.get(f"/v1/calls/{fan_out.id}", headers=JSON)).json()
        assert document["output"] == [[0, 10]]
        assert [bool(a["snapshot_size"]) for a in document["attempts"]] == [True, False]
        tree = (await http.get(f"/v1/calls/{fan_out.id}/tree", headers=JSON)).json()["calls"]
        assert [call["function"] for call in tree] == ["fan_out", "pair", "add", "add"]
        assert tree[2]["parent_id"] == tree[1]["id"]
        assert (await http.get("/v1/calls/nobody/tree", headers=JSON)).status_code == 404
        assert (await http.get("/v1/calls/nobody", headers=JSON)).status_code == 404


async def test_retry_runs_a_failed_call_again_as_a_new_call() -> None:
    async with Env() as env, api(env) as http:
        failed = await env.run("fails", "PERMANENT_ERROR", 1, "retry")
        response = await http.post(f"/v1/calls/{failed.id}/retry", headers=JSON)
        assert response.status_code == 200, response.text
        again = await env.done(response.json()["id"])
        assert env.value(again) == "ok after 2"  # same function, same input
        response = await http.post(f"/v1/calls/{again.id}/retry", headers=JSON)
        assert response.status_code == 409 and "succeeded" in response.text
        assert (await http.post("/v1/calls/nobody/retry", headers=JSON)).status_code == 404
        assert (await http.post(f"/v1/calls/{failed.id}/retry")).status_code == 401


async def test_where_a_suspended_coroutine_waits() -> None:
    async with Env(grace=0.01) as env, api(env) as http:
        call_id = await env.submit("cleans_up", 30.0)
        await env.until(call_id, lambda r: r.state == WAITING and r.frames is not None)
        document = (await http.get(f"/v1/calls/{call_id}", headers=JSON)).json()
        tasks = document["frames"]
        assert len(tasks) == 3 and tasks[0]["task"] == 0  # the entry, then a and b
        [entry] = tasks[0]["frames"]
        assert entry["function"] == "cleans_up" and entry["file"].endswith("functions.py")
        assert entry["locals"] == {"seconds": "30.0"}
        for task, name in zip(tasks[1:], "ab", strict=True):
            [frame] = task["frames"]
            assert frame["function"] == "_waits_then_cleans"
            assert frame["locals"] == {"name": repr(name), "seconds": "30.0"}
        await http.post(f"/v1/calls/{call_id}/cancel", headers=AUTH)
        record = await env.until(call_id, lambda r: r.state == DONE)
        assert record.frames is None  # only while it waits
