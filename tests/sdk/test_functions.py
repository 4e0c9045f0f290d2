"""Dispatch functions build calls; batches and the client send them."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sdk_app
from conftest import Keys

import dispatch
from dispatch import Client, ClientError, _wire
from dispatch._config import ConfigurationError
from dispatch._function import Call, Registry, default_registry


def test_calling_builds_a_call_and_runs_nothing() -> None:
    call = sdk_app.greet("Jane")
    assert isinstance(call, Call)
    assert (call.function, call.args, call.kwargs) == ("greet", ("Jane",), {})
    assert repr(call) == "greet('Jane')"
    assert repr(sdk_app.add(1, b=2)) == "add(1, b=2)"


def test_functions_keep_their_names_and_docs() -> None:
    assert sdk_app.greet.__name__ == "greet" and sdk_app.greet.__module__ == "sdk_app"
    assert sdk_app.greet.name == "greet" and not sdk_app.greet.is_async
    assert sdk_app.sequential.is_async
    assert inspect.iscoroutinefunction(sdk_app.sequential.__wrapped__)
    assert repr(sdk_app.renamed) == "<dispatch function custom-name>"


def test_registration_errors() -> None:
    registry = Registry()

    def one() -> None: ...

    registry.register(one)
    registry.register(one)  # the same function again (module re-imported): allowed

    def other() -> None: ...

    other.__qualname__ = one.__qualname__
    other.__module__ = "somewhere.else"
    with pytest.raises(ValueError, match="already registered"):
        registry.register(other)

    def generator() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        registry.register(generator)
    with pytest.raises(TypeError):
        registry.register(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="already a dispatch function"):
        registry.register(sdk_app.greet)


def test_awaiting_a_call_outside_a_run_says_what_to_do() -> None:
    async def main() -> Any:
        return await sdk_app.greet("Jane")

    with pytest.raises(RuntimeError, match=r"use greet.dispatch\(...\)"):
        asyncio.run(main())


def test_combinators_check_their_arguments() -> None:
    with pytest.raises(TypeError, match="argument 1 is int"):
        dispatch.gather(sdk_app.greet("a"), 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        dispatch.any()
    with pytest.raises(ValueError, match="at least one"):
        dispatch.race()


class API:
    """The orchestrator's dispatch API, as far as a client can see it."""

    def __init__(self, status: int = 200, key: str = "secret-key") -> None:
        self.status = status
        self.key = key
        self.requests: list[_wire.DispatchRequest] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return httpx.Response(401, text="bad key")
        if self.status != 200:
            return httpx.Response(self.status, text="something broke")
        message = _wire.DispatchRequest.from_msgpack(request.content)
        self.requests.append(message)
        ids = tuple(f"id-{len(self.requests)}-{i}" for i in range(len(message.calls)))
        return httpx.Response(200, content=_wire.DispatchResponse(dispatch_ids=ids).to_msgpack())


def client(api: API, keys: Keys, key: str = "secret-key") -> Client:
    return Client(
        "http://orchestrator",
        key,
        endpoint="http://app/dispatch",
        sealer=keys.sealer,
        transport=httpx.MockTransport(api),
    )


def test_client_sends_calls_in_one_request(keys: Keys) -> None:
    api = API()
    ids = client(api, keys).dispatch(sdk_app.greet("Jane"), sdk_app.add(1, 2))
    assert ids == ["id-1-0", "id-1-1"]
    (request,) = api.requests
    assert [c.function for c in request.calls] == ["greet", "add"]
    assert [c.endpoint for c in request.calls] == ["http://app/dispatch"] * 2
    assert _wire.decode_arguments(request.calls[1].input, keys.sealer) == ((1, 2), {})


def test_batch_is_one_atomic_request(keys: Keys) -> None:
    api = API()
    registry = default_registry()
    registry.use_sender(client(api, keys).dispatch_calls)
    try:
        batch = dispatch.batch()
        assert batch.add(sdk_app.greet("Jane")).add(sdk_app.greet("Mike")) is batch
        assert batch.dispatch() == ["id-1-0", "id-1-1"]
        assert batch.dispatch() == []  # emptied; nothing sent
        assert sdk_app.greet.dispatch("Hopper") == "id-2-0"
    finally:
        registry.use_sender(None)
    assert [len(r.calls) for r in api.requests] == [2, 1]
    with pytest.raises(TypeError, match=r"batch\.add takes a call"):
        dispatch.batch().add("greet")  # type: ignore[arg-type]


def test_client_errors(keys: Keys) -> None:
    with pytest.raises(ClientError, match="DISPATCH_API_KEY"):
        client(API(), keys, key="wrong").dispatch(sdk_app.greet("x"))
    with pytest.raises(ClientError, match="500"):
        client(API(status=500), keys).dispatch(sdk_app.greet("x"))
    unreachable = Client("http://127.0.0.1:9", "k", sealer=keys.sealer, timeout=2)
    with pytest.raises(ClientError, match="cannot reach the orchestrator"):
        unreachable.dispatch(sdk_app.greet("x"))
    assert "secret" not in repr(client(API(), keys))


def test_client_needs_an_orchestrator(monkeypatch: pytest.MonkeyPatch, keys: Keys) -> None:
    monkeypatch.delenv("DISPATCH_API_URL", raising=False)
    with pytest.raises(ConfigurationError, match="DISPATCH_API_URL"):
        Client(sealer=keys.sealer)
    with pytest.raises(ConfigurationError, match="http"):
        Client("ftp://x", sealer=keys.sealer)
