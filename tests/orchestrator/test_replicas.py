"""An endpoint of several replicas: the URLs in turn, a snapshot resumed by
another replica, and a replica that cannot be reached passing its turn."""

from __future__ import annotations

from typing import Any

from starlette.types import Message, Receive, Scope, Send

from dispatch import Dispatch, Status, _wire
from dispatch.orchestrator import HTTPInvoker

from . import functions
from .harness import Env, closed_port, served, statuses


class Recording:
    """An endpoint replica that notes the call of each request it gets."""

    def __init__(self, endpoint: Dispatch, name: str, seen: list[tuple[str, str, bool]]) -> None:
        self.endpoint = endpoint
        self.name = name
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.endpoint(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = _wire.RunRequest.from_msgpack(body)
        self.seen.append((self.name, request.dispatch_id, request.poll is not None))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.endpoint(scope, replay, send)


def replica(env: Env) -> Dispatch:
    return Dispatch(
        registry=functions.registry, verification_key=env.keys.public, seal_keys=[env.keys.seal]
    )


async def test_replicas_take_turns_and_resume_each_others_snapshots() -> None:
    seen: list[tuple[str, str, bool]] = []
    async with Env(invoker=lambda env: HTTPInvoker()) as env:
        a, b = Recording(replica(env), "a", seen), Recording(replica(env), "b", seen)
        async with served(a) as url_a, served(b) as url_b:
            down = f"http://127.0.0.1:{closed_port()}/dispatch"
            endpoint = f"{down}, {url_a}/dispatch, {url_b}/dispatch"
            call_id = await env.submit("fan_out", 4, endpoint=endpoint)
            record = await env.done(call_id)
            assert env.value(record) == [[0, 10], [1, 11], [2, 12], [3, 13]]
            children: list[Any] = [await env.storage.get(child) for child in record.children]
    # The replica that cannot be reached passed its turns on: no attempt failed.
    for call in (record, *children):
        assert set(statuses(call)) == {Status.OK}, call
    assert {name for name, _, _ in seen} == {"a", "b"}
    # The coroutine suspended on one replica and was resumed (from its snapshot) on another.
    runs = [(name, resumed) for name, dispatch_id, resumed in seen if dispatch_id == call_id]
    first = next(name for name, resumed in runs if not resumed)
    assert any(resumed and name != first for name, resumed in runs), runs
