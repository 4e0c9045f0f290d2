"""A small, in-memory orchestrator for testing endpoints over real HTTP requests.

It plays the orchestrator's side of the wire protocol (docs/protocol.md)
against a dispatch endpoint, through any httpx transport (an ASGI app in
process, or a real socket): it signs each RunRequest, runs the calls a Poll
asks for (concurrently, recursively), cancels what the Poll says to cancel,
resumes the coroutine once ``min_results`` results are in, retries by status
and follows tail calls. It keeps everything in memory and has no storage:
the real orchestrator is ``dispatch``'s own; this one exists so the SDK can
be tested through its wire protocol alone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dispatch import _signature, _wire
from dispatch._status import Status


@dataclass
class Attempt:
    """One RunRequest and what came back."""

    function: str
    dispatch_id: str
    parent_id: str | None
    attempt: int
    resumed: bool
    http_status: int
    response: _wire.RunResponse | None
    body: bytes


@dataclass
class Outcome:
    """How a call ended."""

    status: Status
    output: bytes | None = None
    error: _wire.Error | None = None
    dispatch_id: str = ""

    def value(self, sealer: _wire.Sealer) -> Any:
        assert self.output is not None, f"the call failed: {self.error}"
        return _wire.decode_value(self.output, sealer)


@dataclass
class Harness:
    """Drives calls through an endpoint; see the module docstring."""

    transport: httpx.AsyncBaseTransport
    sealer: _wire.Sealer
    signing_key: Ed25519PrivateKey | None
    base_url: str = "http://endpoint"
    path: str = "/dispatch/run"
    max_attempts: int = 3
    attempts: list[Attempt] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    dispatched: list[_wire.Call] = field(default_factory=list)
    tamper: Callable[[_wire.RunRequest], _wire.RunRequest] | None = None

    def arguments(self, *args: Any, **kwargs: Any) -> bytes:
        return _wire.encode_arguments(args, kwargs, self.sealer)

    async def call(self, function: str, *args: Any, **kwargs: Any) -> Outcome:
        """Run ``function(*args, **kwargs)`` to completion."""
        async with httpx.AsyncClient(transport=self.transport, base_url=self.base_url) as http:
            self.http = http
            call = _wire.Call(function=function, input=self.arguments(*args, **kwargs))
            return await self.run(call, parent_id=None, root_id=None)

    async def post(self, request: _wire.RunRequest) -> tuple[int, bytes]:
        body = request.to_msgpack()
        headers = {"Content-Type": "application/msgpack"}
        if self.signing_key is not None:
            headers.update(_signature.sign_request(self.signing_key, "POST", self.path, body))
        response = await self.http.post(self.path, content=body, headers=headers)
        return response.status_code, response.content

    async def run(self, call: _wire.Call, parent_id: str | None, root_id: str | None) -> Outcome:
        dispatch_id = call.dispatch_id or uuid.uuid4().hex
        root_id = root_id or dispatch_id
        request = _wire.RunRequest(
            function=call.function,
            dispatch_id=dispatch_id,
            root_id=root_id,
            parent_id=parent_id,
            creation_time=time.time(),
            expiration_time=None,
            attempt=1,
            input=call.input,
        )
        children: dict[int, asyncio.Task[Outcome]] = {}
        try:
            while True:
                if self.tamper is not None:
                    request = self.tamper(request)
                http_status, body = await self.post(request)
                response = _wire.RunResponse.from_msgpack(body) if http_status == 200 else None
                self.attempts.append(
                    Attempt(
                        request.function,
                        dispatch_id,
                        parent_id,
                        request.attempt,
                        request.poll is not None,
                        http_status,
                        response,
                        body,
                    )
                )
                if response is None:
                    status = {401: Status.UNAUTHENTICATED, 403: Status.PERMISSION_DENIED}.get(
                        http_status, Status.NOT_FOUND if http_status == 404 else Status.HTTP_ERROR
                    )
                    return Outcome(status, error=_wire.Error(status.value, "http", body.decode()))
                for fire_and_forget in response.dispatch:
                    self.dispatched.append(fire_and_forget)
                status = Status(response.status)
                if response.exit is not None:
                    if status.retry and request.attempt < self.max_attempts:
                        request = _replace(request, attempt=request.attempt + 1)
                        continue
                    done = response.exit
                    if done.tail_call is not None:
                        return await self.run(done.tail_call, parent_id, root_id)
                    return Outcome(status, done.output, done.error, dispatch_id)
                assert response.poll is not None
                poll = response.poll
                for child in poll.calls:
                    children[child.correlation_id] = asyncio.ensure_future(
                        self.run(child, dispatch_id, root_id)
                    )
                for correlation_id in poll.cancel:
                    task = children.pop(correlation_id, None)
                    if task is not None:
                        task.cancel()
                        self.cancelled.append(f"{dispatch_id}/{correlation_id}")
                results = await self.collect(children, poll)
                request = _replace(
                    request,
                    attempt=1,
                    input=None,
                    poll=_wire.PollResult(state=poll.state, results=tuple(results)),
                )
        finally:
            # A call that ends cancels its children still running.
            for correlation_id, task in children.items():
                if not task.done():
                    task.cancel()
                    self.cancelled.append(f"{dispatch_id}/{correlation_id}")

    async def collect(
        self, children: dict[int, asyncio.Task[Outcome]], poll: _wire.Poll
    ) -> list[_wire.CallResult]:
        """Wait for min_results results (or max_wait), return at most max_results."""
        results: list[_wire.CallResult] = []
        deadline = time.monotonic() + poll.max_wait
        while len(results) < poll.min_results and children:
            done, _ = await asyncio.wait(
                children.values(),
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                break
            for correlation_id, task in list(children.items()):
                if task in done and len(results) < poll.max_results:
                    del children[correlation_id]
                    outcome = task.result()
                    results.append(
                        _wire.CallResult(
                            correlation_id=correlation_id,
                            dispatch_id=outcome.dispatch_id or "-",
                            output=outcome.output if outcome.error is None else None,
                            error=outcome.error,
                        )
                    )
        return results


def _replace(request: _wire.RunRequest, **changes: Any) -> _wire.RunRequest:
    from dataclasses import replace

    return replace(request, **changes)
