"""Fixtures: an endpoint for the SDK test functions and a harness driving it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import sdk_app
from harness import Harness

from dispatch import Dispatch, _signature, _wire
from dispatch._function import default_registry


class Keys:
    def __init__(self) -> None:
        private, public = _signature.generate_keypair()
        self.private = _signature.load_private_key(private)
        self.public = public
        self.seal = _wire.generate_key()
        self.sealer = _wire.Sealer([self.seal])


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def endpoint(keys: Keys) -> Dispatch:
    return Dispatch(verification_key=keys.public, seal_keys=[keys.seal])


@pytest.fixture
def harness(endpoint: Dispatch, keys: Keys) -> Harness:
    sdk_app.events.clear()
    return Harness(httpx.ASGITransport(app=endpoint), keys.sealer, keys.private)


@pytest.fixture(autouse=True)
def registry_is_loaded() -> Iterator[None]:
    assert default_registry().lookup("greet") is not None
    yield


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]
