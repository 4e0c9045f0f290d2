"""The engine running calls on the SDK's endpoint, in process: retries, backoff, restarts,
tail calls, fan-out, leases and concurrency.

Delays are milliseconds (``harness.FAST``, or a policy of the test's own);
nothing asserts on speed. How the endpoint is reached (HTTP, transport
failures, signatures) is ``test_transport.py``.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dispatch import Status, _wire
from dispatch._signature import sign_request
from dispatch.orchestrator import Invoker, Limiter, NewCall, RetryPolicy, SQLiteStorage
from dispatch.orchestrator._storage import (
    DONE,
    RUNNING,
    Completed,
    Completion,
    Finish,
    Retry,
    Suspend,
)

from . import functions
from .harness import ENDPOINT, FAST, Env, Keys, RecordingStorage, finished, statuses

pytestmark = pytest.mark.timeout(60)

RETRIED = [s for s in Status if s.retry and s is not Status.INCOMPATIBLE_STATE]
NOT_RETRIED = [s for s in Status if not s.retry and s is not Status.OK]


def call(call_id: str, function: str, *args: Any) -> NewCall:
    return NewCall(
        id=call_id,
        function=function,
        endpoint=ENDPOINT,
        input=_wire.encode_arguments(args, {}, Keys().sealer),  # plain data: no key needed
        root_id=call_id,
    )


async def test_runs_a_call_to_completion(via: str) -> None:
    async with Env(via=via) as env:
        record = await env.run("add", 1, 2)
        assert env.value(record) == 3
        assert (record.state, record.attempt, statuses(record)) == (DONE, 1, [Status.OK])
        assert env.engine.limiter(ENDPOINT).in_flight == 0


# --- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", RETRIED, ids=lambda s: s.name)
async def test_retried_statuses_are_retried_up_to_max_attempts(status: Status) -> None:
    async with Env() as env:
        record = await env.run("fails", status.name, 99, "key")
    assert record.status == status.value
    assert statuses(record) == [status] * FAST.max_attempts
    error = env.error(record)
    assert (error.type, error.message) == (
        "orchestrator.functions.Failure",
        f"failing with {status.name}",
    )


@pytest.mark.parametrize("status", NOT_RETRIED, ids=lambda s: s.name)
async def test_other_statuses_end_the_call_at_once(status: Status) -> None:
    async with Env() as env:
        record = await env.run("fails", status.name, 99, "key")
    assert (record.status, statuses(record)) == (status.value, [status])
    assert record.output is None and env.error(record).status == status.value


async def test_a_retry_may_succeed() -> None:
    async with Env() as env:
        record = await env.run("fails", "THROTTLED", 2, "key")
        assert env.value(record) == "ok after 3"
    assert statuses(record) == [Status.THROTTLED, Status.THROTTLED, Status.OK]
    assert [a.attempt for a in record.attempts] == [1, 2, 3]


async def test_backoff_is_exponential_with_jitter() -> None:
    policy = RetryPolicy(
        max_attempts=5, initial_backoff=0.01, multiplier=2.0, max_backoff=1.0, jitter=0.5
    )
    async with Env(policy=policy) as env:
        call_id = await env.submit("fails", "TEMPORARY_ERROR", 99, "key")
        record = await env.done(call_id)
    *retries, last = env.storage.of(call_id)
    assert len(retries) == 4 and isinstance(last.transition, Finish)
    starts = [a.started_at for a in record.attempts]
    for attempt, completion in enumerate(retries, 1):
        assert isinstance(completion.transition, Retry)
        longest = 0.01 * 2.0 ** (attempt - 1)
        shortest = longest * (1 - policy.jitter)
        due = completion.transition.due_at
        # due_at is decided a moment before the completion is stamped
        assert shortest - 0.005 <= due - completion.now <= longest
        next_start, previous_start = starts[attempt], starts[attempt - 1]
        assert next_start is not None and previous_start is not None
        assert next_start >= due  # never claimed before it is due
        assert next_start - previous_start >= shortest


def test_retry_policy_delay_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(initial_backoff=0.5, multiplier=3.0, max_backoff=10.0, jitter=0.25)
    bases = [0.5, 1.5, 4.5, 10.0, 10.0]
    for attempt, base in enumerate(bases, 1):
        for _ in range(200):
            assert base * 0.75 <= policy.delay(attempt) <= base
    monkeypatch.setattr("dispatch.orchestrator._engine.random.random", lambda: 0.0)
    assert [policy.delay(a) for a in range(1, 6)] == bases
    monkeypatch.setattr("dispatch.orchestrator._engine.random.random", lambda: 1.0)
    assert [policy.delay(a) for a in range(1, 6)] == [b * 0.75 for b in bases]
    exact = RetryPolicy(initial_backoff=1.0, multiplier=2.0, jitter=0.0)
    assert [exact.delay(a) for a in (1, 2, 3)] == [1.0, 2.0, 4.0]


async def test_expiration_stops_retries() -> None:
    policy = RetryPolicy(max_attempts=1000, initial_backoff=0.02, multiplier=1.0, jitter=0.0)
    async with Env(policy=policy) as env:
        expires_at = time.time() + 0.2
        call_id = await env.submit("fails", "TEMPORARY_ERROR", 10**6, "key", expires_at=expires_at)
        record = await env.done(call_id)
    assert record.status == Status.TEMPORARY_ERROR.value
    assert 1 <= len(record.attempts) <= 11  # one per 20 ms of the 200 ms, at most
    *retries, last = env.storage.of(call_id)
    for completion in retries:
        assert isinstance(completion.transition, Retry)
        assert completion.transition.due_at < expires_at
    assert isinstance(last.transition, Finish)


async def test_a_call_claimed_past_its_last_attempt_ends(tmp_path: Path) -> None:
    """Its last attempt died with its orchestrator: it is not run again."""
    path = str(tmp_path / "dispatch.db")
    dead = SQLiteStorage(path)
    try:
        await dead.migrate()
        await dead.create([call("x", "add", 1, 1)], time.time())
        for _ in range(FAST.max_attempts):  # every attempt is lost
            await dead.claim("dead-owner", None, 1, time.time(), 3600.0)
            await dead.recover(math.inf)
    finally:
        await dead.close()
    async with Env(storage=SQLiteStorage(path)) as env:
        record = await env.done("x")
    assert record.status == Status.TEMPORARY_ERROR.value
    error = env.error(record)
    assert (error.type, error.message) == ("dispatch.GaveUp", "no attempts left")
    assert [a.attempt for a in finished(record)] == [4]


# --- restarts and tail calls ----------------------------------------------------------------


class Tampering:
    """Forwards to ``inner``, but corrupts the snapshot of the first resume (and
    signs the request again, as an orchestrator that stored it corrupted would)."""

    def __init__(self, inner: Invoker, key: Ed25519PrivateKey) -> None:
        self.inner = inner
        self.key = key
        self.tampered = 0

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        request = _wire.RunRequest.from_msgpack(body)
        if request.poll is not None and not self.tampered:
            self.tampered += 1
            poll = replace(request.poll, state=request.poll.state[:-1] + b"?")
            body = replace(request, poll=poll).to_msgpack()
            headers = {**headers, **sign_request(self.key, "POST", urlsplit(url).path, body)}
        return await self.inner.post(url, body, headers, timeout)

    async def close(self) -> None:
        await self.inner.close()


async def test_incompatible_state_restarts_from_the_input(via: str) -> None:
    tampering: list[Tampering] = []

    def invoker(env: Env) -> Invoker:
        tampering.append(Tampering(env.in_process(via, env.endpoint), env.keys.private))
        return tampering[0]

    async with Env(invoker=invoker) as env:
        call_id = await env.submit("two_steps", 1)
        record = await env.done(call_id)
        assert env.value(record) == 3
    assert tampering[0].tampered == 1
    assert functions.events.count(("two_steps started", 1)) == 2
    assert statuses(record) == [
        Status.OK,  # first run: polls
        Status.INCOMPATIBLE_STATE,  # the resume: its snapshot does not open
        Status.OK,  # from the input again: polls
        Status.OK,  # resumed: polls
        Status.OK,  # resumed: returns
    ]
    restart = env.storage.of(call_id)[1].transition
    assert isinstance(restart, Retry) and restart.restart and restart.function is None


async def test_a_tail_call_runs_another_function_in_place(via: str) -> None:
    async with Env(via=via) as env:
        record = await env.run("hand_over", 1)
        assert env.value(record) == 101
        assert _wire.decode_arguments(record.input or b"", env.keys.sealer) == ((1, 100), {})
    assert record.function == "add"
    assert statuses(record) == [Status.OK, Status.OK]
    assert [a.attempt for a in record.attempts] == [1, 1]
    assert record.children == ()


async def test_tail_calls_chain() -> None:
    async with Env() as env:
        record = await env.run("countdown", 3)
        assert env.value(record) == "liftoff"
    assert [a.attempt for a in record.attempts] == [1, 1, 1, 1]


# --- coroutines -----------------------------------------------------------------------------


async def test_nested_fan_out_routes_every_result(via: str) -> None:
    async with Env(via=via) as env:
        record = await env.run("fan_out", 4)
        assert env.value(record) == [[i, i + 10] for i in range(4)]
        assert len(record.children) == 4
        for i, child_id in enumerate(record.children):
            child = await env.storage.get(child_id)
            assert child is not None and child.function == "pair"
            assert (child.root_id, child.parent_id) == (record.id, record.id)
            assert env.value(child) == [i, i + 10]
            assert len(child.children) == 2
            for grandchild_id in child.children:
                grandchild = await env.storage.get(grandchild_id)
                assert grandchild is not None
                assert (grandchild.function, grandchild.root_id) == ("add", record.id)
                assert grandchild.parent_id == child_id
        counts = await env.storage.counts()
        assert counts == {"pending": 0, "running": 0, "waiting": 0, "done": 13}


async def test_children_that_end_at_once_are_recorded_with_the_suspension(via: str) -> None:
    """Each step of a coroutine is one transaction: its suspension, its
    child's first attempt (started before the suspension is recorded) and
    that attempt's result, which resumes it at once."""
    async with Env(via=via, inline_window=10.0) as env:
        record = await env.run("two_steps", 1)
        assert env.value(record) == 3
        recorded = [completion.call.function for completion in env.storage.completions]
        assert recorded == ["two_steps"] * 3  # the children's attempts were in these
        polls = [c.transition for c in env.storage.completions if isinstance(c.transition, Suspend)]
        assert [[ran.call.function for ran in poll.ran] for poll in polls] == [["add"], ["add"]]
        for child_id in record.children:
            child = await env.storage.get(child_id)
            assert child is not None and env.value(child) in (2, 3)
            assert statuses(child) == [Status.OK]


async def test_children_beyond_the_limit_start_in_the_window_as_room_frees_up() -> None:
    """A fan-out wider than its endpoint's limit: as the first children end,
    the next ones start, within the limit, and all are recorded with the
    suspension that made them (one transaction for the whole step)."""
    async with Env(limiter=lambda: Limiter(initial=2, maximum=2), inline_window=10.0) as env:
        record = await env.run("adds", 7)
        assert env.value(record) == [1, 2, 3, 4, 5, 6, 7]
        assert [c.call.function for c in env.storage.completions] == ["adds", "adds"]
        (poll,) = [
            c.transition for c in env.storage.completions if isinstance(c.transition, Suspend)
        ]
        assert sorted(ran.call.id for ran in poll.ran) == sorted(record.children)
        limiter = env.engine.limiter(ENDPOINT)
        assert (limiter.in_flight, limiter.limit) == (0, 2)


async def test_children_still_running_after_the_window_are_recorded_running() -> None:
    """Children whose first attempt outlasts the window show as running once the
    suspension is recorded, and finish as attempts of their own."""
    async with Env(inline_window=0.01) as env:
        call_id = await env.submit("waits_on_naps", 0.5)
        deadline = time.monotonic() + 5
        while not (record := await env.storage.get(call_id)) or not record.children:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        children = [await env.storage.get(child_id) for child_id in record.children]
        assert [child.state if child else None for child in children] == [RUNNING, RUNNING]
        record = await env.done(call_id)
        assert env.value(record) == [0.5, 0.5]
        for child_id in record.children:
            child = await env.storage.get(child_id)
            assert child is not None and statuses(child) == [Status.OK]


async def test_calls_dispatched_by_a_function_run_too() -> None:
    async with Env() as env:
        record = await env.run("dispatches")
        dispatched = env.value(record)
        other = await env.done(dispatched)
        assert env.value(other) == 42
        assert (other.root_id, other.parent_id) == (dispatched, None)


async def test_a_poll_is_resumed_at_its_max_wait(via: str) -> None:
    """A coroutine whose calls take longer than its max wait is resumed without them."""
    async with Env(max_wait=0.02, via=via) as env:
        record = await env.run("waits_on_naps", 0.3)
        assert env.value(record) == [0.3, 0.3]
    assert len(finished(record)) >= 3  # the first run, resumes without results, the last one


# --- leases, recovery, stopping -------------------------------------------------------------


async def test_calls_left_running_by_a_dead_orchestrator_run_again_at_start(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "dispatch.db")
    dead = SQLiteStorage(path)
    try:
        await dead.migrate()
        await dead.create([call("x", "add", 20, 1)], time.time())
        await dead.claim("dead-owner", None, 1, time.time(), 3600.0)  # a long lease
    finally:
        await dead.close()
    async with Env(storage=SQLiteStorage(path)) as env:
        record = await env.done("x")
        assert env.value(record) == 21
    assert [a.attempt for a in finished(record)] == [2]


async def test_leases_of_running_attempts_are_renewed() -> None:
    async with Env(lease=0.03) as env:
        record = await env.run("nap", 0.2)
    assert len(record.attempts) == 1
    assert [record.id] in env.storage.renewals


class FailingOnce(RecordingStorage):
    """A storage whose first completion fails (a database error)."""

    async def complete_and_claim(
        self, completion: Completion, limit: int, lease: float
    ) -> Completed:
        if not self.completions:
            self.completions.append(completion)
            raise sqlite3.OperationalError("database is locked")
        return await super().complete_and_claim(completion, limit, lease)


async def test_a_call_whose_answer_was_lost_runs_again_once_its_lease_expires() -> None:
    async with Env(lease=0.05) as env:
        env.engine.storage = env.storage = FailingOnce(env.storage.inner)
        record = await env.run("add", 4, 4)
        assert env.value(record) == 8
    assert [(a.number, a.attempt, a.status) for a in finished(record)] == [(2, 2, 1)]


async def test_stop_waits_for_the_attempts_it_cancels(via: str) -> None:
    async with Env(grace=0.01, via=via) as env:
        call_id = await env.submit("nap", 30.0)
        await env.until(call_id, lambda r: r.state == RUNNING)
    assert asyncio.all_tasks() == {asyncio.current_task()}


# --- concurrency ----------------------------------------------------------------------------


async def test_the_engine_never_exceeds_an_endpoints_limit(via: str) -> None:
    async with Env(limiter=lambda: Limiter(initial=3, maximum=3), via=via) as env:
        ids = [await env.submit("track", 0.02) for _ in range(12)]
        for call_id in ids:
            await env.done(call_id)
        limiter = env.engine.limiter(ENDPOINT)
        assert (limiter.in_flight, limiter.limit) == (0, 3)
    assert functions.max_in_flight == 3


async def test_struggling_endpoints_get_fewer_calls() -> None:
    async with Env(limiter=lambda: Limiter(initial=8, cooldown=0.0)) as env:
        await env.run("fails", "THROTTLED", 99, "key")
        assert env.engine.limiter(ENDPOINT).limit == 1.0  # 8, halved three times
        await env.run("add", 1, 1)
        assert env.engine.limiter(ENDPOINT).limit == 2.0


async def test_each_endpoint_has_its_own_limit() -> None:
    other = "http://other.test/dispatch"
    async with Env(limiter=lambda: Limiter(initial=4, cooldown=0.0)) as env:
        await env.run("fails", "THROTTLED", 99, "key", endpoint=other)
        await env.run("add", 1, 1)
        assert env.engine.limiter(other).limit == 1.0  # 4 halved twice, then the floor
        assert env.engine.limiter(ENDPOINT).limit == 5
