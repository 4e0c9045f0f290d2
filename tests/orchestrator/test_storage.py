"""The storage conformance suite: every backend passes it unchanged.

Each test takes ``storage`` (see ``conftest.py``), runs once per backend, and
goes through the :class:`Storage` interface only. Times are explicit (``T``
plus seconds), so nothing here sleeps. The state machine under test is drawn
in ``dispatch/orchestrator/_storage.py``.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from dispatch import Status, _wire
from dispatch.orchestrator import CallConflict, DatabaseLocked, SQLiteStorage, Storage
from dispatch.orchestrator._storage import (
    CANCELLED,
    DONE,
    PENDING,
    RUNNING,
    WAITING,
    AttemptRecord,
    CallQuery,
    CallRecord,
    Claim,
    Claimed,
    Completion,
    Finish,
    NewCall,
    Result,
    Retry,
    Suspend,
    Transition,
    first_run,
)

pytestmark = pytest.mark.timeout(30)

EP = "http://a.test/dispatch"
EP2 = "http://b.test/dispatch"
OWNER = "owner-1"
OTHER = "owner-2"
LEASE = 60.0
T = 1_000_000.0
OK = Status.OK.value
FAR = T + 10_000.0  # a max wait that does not come in these tests
SLACK = 0.5  # a lease counts from when the claim happens: "now" plus the time it waited


def new(
    call_id: str,
    *,
    parent: str | None = None,
    root: str | None = None,
    cid: int = 0,
    endpoint: str = EP,
    function: str = "f",
    expires_at: float | None = None,
) -> NewCall:
    return NewCall(
        id=call_id,
        function=function,
        endpoint=endpoint,
        input=f"input of {call_id}".encode(),
        root_id=root or parent or call_id,
        parent_id=parent,
        correlation_id=cid,
        expires_at=expires_at,
    )


def children(parent: str, count: int, first_cid: int = 1) -> tuple[NewCall, ...]:
    return tuple(
        new(f"{parent}.{cid}", parent=parent, root=parent, cid=cid)
        for cid in range(first_cid, first_cid + count)
    )


async def next_due(storage: Storage) -> float | None:
    return (await storage.due(T)).next  # (whatever the time now)


async def due_endpoints(storage: Storage, now: float) -> list[str]:
    return (await storage.due(now)).endpoints


async def claim(
    storage: Storage,
    now: float,
    *,
    owner: str = OWNER,
    endpoint: str | None = None,
    limit: int = 100,
) -> dict[str, Claimed]:
    return {c.id: c for c in await storage.claim(owner, endpoint, limit, now, LEASE)}


async def claim_one(storage: Storage, call_id: str, now: float, owner: str = OWNER) -> Claimed:
    """Claim what is due, which must be ``call_id`` alone."""
    claimed = await claim(storage, now, owner=owner)
    assert list(claimed) == [call_id]
    return claimed[call_id]


async def claim_one_of(storage: Storage, call_id: str, now: float, endpoint: str) -> Claimed:
    """Claim what is due on ``endpoint``, which must be ``call_id`` alone."""
    claimed = await claim(storage, now, endpoint=endpoint)
    assert list(claimed) == [call_id]
    return claimed[call_id]


def completion(
    call: Claimed,
    transition: Transition,
    now: float,
    *,
    owner: str = OWNER,
    status: int = OK,
    dispatched: tuple[NewCall, ...] = (),
) -> Completion:
    return Completion(
        call=call,
        owner=owner,
        transition=transition,
        now=now,
        duration=0.5,
        status=status,
        dispatched=dispatched,
    )


async def finish(storage: Storage, call: Claimed, now: float, output: bytes | None = None) -> None:
    """Finish ``call`` with ``output`` (by default, "output of <its id>")."""
    output = f"output of {call.id}".encode() if output is None else output
    assert await storage.complete(completion(call, Finish(OK, output=output), now))


async def suspend(
    storage: Storage,
    call: Claimed,
    now: float,
    *,
    spawn: tuple[NewCall, ...] = (),
    cancel: tuple[int, ...] = (),
    min_results: int = 1,
    max_results: int = 100,
    wait_until: float = FAR,
    snapshot: bytes = b"snapshot",
) -> None:
    transition = Suspend(
        snapshot=snapshot,
        min_results=min_results,
        max_results=max_results,
        wait_until=wait_until,
        children=spawn,
        cancel=cancel,
    )
    assert await storage.complete(completion(call, transition, now))


async def state(storage: Storage, call_id: str) -> str:
    record = await storage.get(call_id)
    assert record is not None, call_id
    return record.state


async def waiting_parent(
    storage: Storage, count: int, *, min_results: int = 1, max_results: int = 100
) -> tuple[str, ...]:
    """A root call "p" waiting on ``count`` children (correlation ids 1..count), all pending."""
    await storage.create([new("p")], T)
    parent = await claim_one(storage, "p", T)
    spawn = children("p", count)
    await suspend(
        storage, parent, T + 1, spawn=spawn, min_results=min_results, max_results=max_results
    )
    return tuple(child.id for child in spawn)


async def finish_children(storage: Storage, ids: tuple[str, ...], now: float) -> None:
    """Claim the pending calls, then finish those in ``ids`` (the others stay running)."""
    claimed = await claim(storage, now)
    for call_id in ids:
        await finish(storage, claimed[call_id], now)


def finished(record: CallRecord) -> list[AttemptRecord]:
    """The finished attempts of a call. Whether an attempt in flight, or lost with its
    orchestrator, is listed (with ``finished_at`` None) is the backend's choice."""
    return [a for a in record.attempts if a.finished_at is not None]


def delivered(results: tuple[Result, ...]) -> list[tuple[int, str, bytes | None]]:
    return [(r.correlation_id, r.child_id, r.output) for r in results]


# --- create -----------------------------------------------------------------------------------


async def test_create_makes_pending_calls_due_now(storage: Storage) -> None:
    await storage.create([new("a", expires_at=T + 99), new("b", endpoint=EP2)], T)

    record = await storage.get("a")
    assert record is not None
    assert (record.id, record.root_id, record.parent_id) == ("a", "a", None)
    assert (record.function, record.endpoint, record.input) == ("f", EP, b"input of a")
    assert (record.state, record.status, record.attempt) == (PENDING, None, 0)
    assert (record.created_at, record.finished_at) == (T, None)
    assert (record.output, record.error, record.attempts, record.children) == (None, None, (), ())
    assert await next_due(storage) == T
    assert await storage.counts() == {PENDING: 2, RUNNING: 0, WAITING: 0, DONE: 0}
    claimed = await claim(storage, T)
    assert claimed["a"].expires_at == T + 99
    assert claimed["b"].endpoint == EP2


async def test_create_nothing(storage: Storage) -> None:
    await storage.create([], T)
    assert await storage.counts() == {PENDING: 0, RUNNING: 0, WAITING: 0, DONE: 0}


async def test_an_existing_id_names_that_call(storage: Storage) -> None:
    await storage.create([new("a")], T)
    # A retried dispatch (same id, function and endpoint) creates nothing twice.
    await storage.create([new("a"), new("b")], T + 1)
    record = await storage.get("a")
    assert record is not None and record.created_at == T
    assert await storage.counts() == {PENDING: 2, RUNNING: 0, WAITING: 0, DONE: 0}
    # Twice in one batch: once.
    await storage.create([new("c"), new("c")], T)
    assert await storage.counts() == {PENDING: 3, RUNNING: 0, WAITING: 0, DONE: 0}


@pytest.mark.parametrize(
    ("function", "endpoint"), [("g", EP), ("f", EP2)], ids=["function", "endpoint"]
)
async def test_an_existing_id_of_another_call_is_a_conflict(
    storage: Storage, function: str, endpoint: str
) -> None:
    await storage.create([new("a")], T)
    with pytest.raises(CallConflict, match="'a'"):
        await storage.create(
            [new("b"), new("a", function=function, endpoint=endpoint), new("c")], T + 1
        )
    # All or none.
    assert await storage.get("b") is None
    assert await storage.get("c") is None
    record = await storage.get("a")
    assert record is not None and (record.function, record.endpoint) == ("f", EP)
    assert await storage.counts() == {PENDING: 1, RUNNING: 0, WAITING: 0, DONE: 0}
    # The failed batch left the storage usable.
    await storage.create([new("b")], T)
    assert await state(storage, "b") == PENDING


async def test_create_sync_from_another_thread(storage: Storage) -> None:
    """An embedded application's threads store their dispatches themselves."""
    await asyncio.to_thread(storage.create_sync, [new("a"), new("b")], T)
    assert set(await claim(storage, T)) == {"a", "b"}
    await asyncio.to_thread(storage.create_sync, [new("a")], T + 1)  # the same call: nothing new
    with pytest.raises(CallConflict, match="'a'"):
        await asyncio.to_thread(storage.create_sync, [new("c"), new("a", function="g")], T)
    assert await storage.get("c") is None


async def test_create_sync_claims_in_the_same_transaction(storage: Storage) -> None:
    """An embedded orchestrator's room is claimed with the dispatch: no claim of its own."""
    wanted = Claim(owner=OWNER, endpoint=EP, limit=2, lease=60.0)
    claimed = await asyncio.to_thread(
        storage.create_sync, [new("a"), new("b"), new("c")], T, wanted
    )
    assert sorted(call.id for call in claimed) == ["a", "b"]
    assert all(call.attempt == 1 and call.run == 1 for call in claimed)
    assert [await state(storage, call_id) for call_id in "abc"] == [RUNNING, RUNNING, PENDING]
    # Its lease is the owner's: an answer from another owner is dropped.
    finish = Completion(claimed[0], OTHER, Finish(Status.OK.value), T, 0.0, 0)
    assert not await storage.complete(finish)
    assert await storage.complete(Completion(claimed[0], OWNER, Finish(0), T, 0.0, 0))
    # A conflict claims nothing (all or none).
    with pytest.raises(CallConflict):
        await asyncio.to_thread(storage.create_sync, [new("d"), new("a", function="g")], T, wanted)
    assert await storage.get("d") is None
    assert await state(storage, "c") == PENDING


async def test_create_claims_in_the_same_transaction(storage: Storage) -> None:
    """Calls dispatched through the API are claimed as they are created, as far as there is room."""
    await storage.create([new("old", endpoint=EP2)], T)
    wanted = Claim(owner=OWNER, endpoint=EP, limit=1, lease=60.0)
    claimed = await storage.create([new("a"), new("b", endpoint=EP2), new("c")], T + 1, wanted)
    assert [(call.id, call.attempt, call.run) for call in claimed] == [("a", 1, 1)]
    assert [await state(storage, call_id) for call_id in ("a", "b", "c")] == [
        RUNNING,
        PENDING,
        PENDING,
    ]
    again = await storage.create([new("a")], T + 2, wanted)  # exists: not claimed again
    assert "a" not in [call.id for call in again]
    assert await storage.create([new("d")], T + 2) == []  # no claim: none claimed


# --- claim ------------------------------------------------------------------------------------


async def test_claim_takes_the_earliest_due_first(storage: Storage) -> None:
    await storage.create([new("late")], T + 3)
    await storage.create([new("early")], T + 1)
    await storage.create([new("middle")], T + 2)
    assert set(await claim(storage, T + 5, limit=2)) == {"early", "middle"}
    assert set(await claim(storage, T + 5, limit=2)) == {"late"}


async def test_claim_respects_the_limit(storage: Storage) -> None:
    await storage.create([new(f"c{i}") for i in range(5)], T)
    sizes = [len(await claim(storage, T, limit=2)) for _ in range(4)]
    assert sizes == [2, 2, 1, 0]
    assert await storage.counts() == {PENDING: 0, RUNNING: 5, WAITING: 0, DONE: 0}


async def test_claim_skips_calls_not_yet_due(storage: Storage) -> None:
    await storage.create([new("a")], T + 10)
    assert await claim(storage, T + 9.99) == {}
    assert set(await claim(storage, T + 10)) == {"a"}


async def test_claim_of_one_endpoint(storage: Storage) -> None:
    await storage.create([new("a1"), new("b1", endpoint=EP2), new("a2")], T)
    assert set(await claim(storage, T, endpoint=EP2)) == {"b1"}
    assert await claim(storage, T, endpoint=EP2) == {}
    assert set(await claim(storage, T, endpoint=EP)) == {"a1", "a2"}
    await storage.create([new("a3"), new("b2", endpoint=EP2)], T)
    assert set(await claim(storage, T, endpoint=None)) == {"a3", "b2"}


async def test_claim_leases_the_call(storage: Storage) -> None:
    await storage.create([new("a")], T)
    await claim_one(storage, "a", T)
    assert await state(storage, "a") == RUNNING
    assert await claim(storage, T + 1, owner=OTHER) == {}  # running: not claimed twice
    assert await next_due(storage) is None
    assert await storage.recover(T + LEASE - 0.01) == 0
    assert await storage.recover(T + LEASE + SLACK) == 1
    assert set(await claim(storage, T + LEASE, owner=OTHER)) == {"a"}


async def test_claim_returns_what_an_attempt_needs(storage: Storage) -> None:
    await storage.create([new("a", function="g", expires_at=T + 500)], T)
    call = await claim_one(storage, "a", T + 2)
    assert (call.id, call.root_id, call.parent_id) == ("a", "a", None)
    assert (call.function, call.endpoint, call.input, call.snapshot) == (
        "g",
        EP,
        b"input of a",
        None,
    )
    assert (call.attempt, call.run, call.created_at, call.expires_at) == (1, 1, T, T + 500)
    assert call.results == ()
    record = await storage.get("a")
    assert record is not None and record.attempt == 1
    for attempt in record.attempts:  # an attempt in flight may be listed, unfinished
        assert (attempt.number, attempt.attempt, attempt.started_at) == (1, 1, T + 2)
        assert (attempt.finished_at, attempt.status, attempt.error_type) == (None, None, None)


async def test_claim_counts_attempts_of_a_step_and_runs_of_a_call(storage: Storage) -> None:
    await storage.create([new("a")], T)
    first = await claim_one(storage, "a", T)
    assert (first.attempt, first.run) == (1, 1)
    retry = Retry(due_at=T + 1, status=Status.TEMPORARY_ERROR.value)
    assert await storage.complete(completion(first, retry, T))
    second = await claim_one(storage, "a", T + 1)
    assert (second.attempt, second.run) == (2, 2)
    await suspend(storage, second, T + 1, wait_until=T + 2)
    resumed = await claim_one(storage, "a", T + 2)  # a new step: attempts count from one
    assert (resumed.attempt, resumed.run) == (1, 3)
    await finish(storage, resumed, T + 3)
    record = await storage.get("a")
    assert record is not None
    assert [(a.number, a.attempt) for a in record.attempts] == [(1, 1), (2, 2), (3, 1)]


async def test_waiting_call_becomes_claimable_at_its_max_wait(storage: Storage) -> None:
    await storage.create([new("a")], T)
    call = await claim_one(storage, "a", T)
    await suspend(storage, call, T + 1, snapshot=b"frames", wait_until=T + 5)
    assert await state(storage, "a") == WAITING
    assert await next_due(storage) == T + 5
    assert await claim(storage, T + 4.99) == {}
    resumed = await claim_one(storage, "a", T + 5)
    assert (resumed.snapshot, resumed.input, resumed.results) == (b"frames", b"input of a", ())


async def test_resume_carries_at_most_max_results(storage: Storage) -> None:
    ids = await waiting_parent(storage, 3, min_results=3, max_results=2)
    await finish_children(storage, ids, T + 2)
    resumed = await claim_one(storage, "p", T + 3)
    assert delivered(resumed.results) == [
        (1, "p.1", b"output of p.1"),
        (2, "p.2", b"output of p.2"),
    ]
    assert [r.status for r in resumed.results] == [OK, OK]
    assert resumed.results[0].seq < resumed.results[1].seq
    # The third waits for the next resume; with no child outstanding it is due at once.
    await suspend(storage, resumed, T + 4, min_results=1, max_results=2)
    again = await claim_one(storage, "p", T + 4)
    assert delivered(again.results) == [(3, "p.3", b"output of p.3")]


# --- complete: Finish ------------------------------------------------------------------------


async def test_an_error_message_with_nul_characters_is_recorded(storage: Storage) -> None:
    """Whatever an exception's message holds (bytes in it, say), the answer is recorded."""
    await storage.create([new("a")], T)
    call = await claim_one(storage, "a", T)
    result = Completion(
        call, OWNER, Finish(Status.PERMANENT_ERROR.value), T, 0.0, 0, "E", "a\x00b", "t\x00"
    )
    assert await storage.complete(result)
    record = await storage.get("a")
    assert record is not None and record.state == DONE
    [attempt] = record.attempts
    assert attempt.error_message is not None and attempt.error_message.startswith("a")
    assert attempt.error_message.endswith("b")


async def test_finish_records_the_result(storage: Storage) -> None:
    await storage.create([new("a")], T)
    call = await claim_one(storage, "a", T)
    result = Completion(
        call=call,
        owner=OWNER,
        transition=Finish(Status.PERMANENT_ERROR.value, error=b"an error"),
        now=T + 2,
        duration=2.0,
        status=Status.PERMANENT_ERROR.value,
        error_type="ValueError",
        error_message="bad",
        snapshot_size=None,
    )
    assert await storage.complete(result)
    record = await storage.get("a")
    assert record is not None
    assert (record.state, record.status) == (DONE, Status.PERMANENT_ERROR.value)
    assert (record.output, record.error, record.finished_at) == (None, b"an error", T + 2)
    [attempt] = record.attempts
    assert (attempt.started_at, attempt.finished_at) == (T, T + 2)
    assert (attempt.status, attempt.error_type, attempt.error_message) == (
        Status.PERMANENT_ERROR.value,
        "ValueError",
        "bad",
    )
    assert await next_due(storage) is None
    assert await claim(storage, T + 100) == {}


async def test_a_result_reaches_the_parent_exactly_once(storage: Storage) -> None:
    [child_id] = await waiting_parent(storage, 1)
    child = (await claim(storage, T + 2))[child_id]
    done = completion(child, Finish(OK, output=b"42"), T + 3)
    assert await storage.complete(done)
    assert not await storage.complete(done)  # a second try (a duplicate answer) is refused
    assert not await storage.complete(completion(child, Finish(OK, output=b"43"), T + 4))
    record = await storage.get(child_id)
    assert record is not None and (record.output, record.finished_at) == (b"42", T + 3)
    resumed = await claim_one(storage, "p", T + 5)
    assert delivered(resumed.results) == [(1, child_id, b"42")]
    assert resumed.snapshot == b"snapshot"
    # Delivered with the resume: the next resume does not get it again.
    await suspend(storage, resumed, T + 6, wait_until=T + 7)
    assert (await claim_one(storage, "p", T + 7)).results == ()


async def test_results_are_redelivered_when_a_resume_is_lost(storage: Storage) -> None:
    ids = await waiting_parent(storage, 2, min_results=2)
    await finish_children(storage, ids, T + 2)
    resumed = await claim_one(storage, "p", T + 3)
    assert len(resumed.results) == 2
    # The orchestrator died during the resume: the lease expires.
    assert await storage.recover(T + 3 + LEASE + SLACK) == 1
    again = await claim_one(storage, "p", T + 3 + LEASE, owner=OTHER)
    assert again.results == resumed.results
    assert not await storage.complete(completion(resumed, Finish(OK, output=b"x"), T + 70))
    assert await storage.complete(completion(again, Finish(OK, output=b"sum"), T + 70, owner=OTHER))
    record = await storage.get("p")
    assert record is not None and record.output == b"sum"


async def test_parent_wakes_once_min_results_have_arrived(storage: Storage) -> None:
    ids = await waiting_parent(storage, 3, min_results=2)
    claimed = await claim(storage, T + 2)
    await finish(storage, claimed[ids[0]], T + 2)
    assert await state(storage, "p") == WAITING
    await finish(storage, claimed[ids[2]], T + 3)
    assert await state(storage, "p") == PENDING
    assert await next_due(storage) == T + 3
    resumed = await claim_one(storage, "p", T + 3)
    assert [r.child_id for r in resumed.results] == [ids[0], ids[2]]


async def test_parent_wakes_with_fewer_results_when_no_child_is_outstanding(
    storage: Storage,
) -> None:
    ids = await waiting_parent(storage, 2, min_results=3)
    claimed = await claim(storage, T + 2)
    await finish(storage, claimed[ids[0]], T + 2)
    assert await state(storage, "p") == WAITING
    await finish(storage, claimed[ids[1]], T + 3)
    assert await state(storage, "p") == PENDING
    assert len((await claim_one(storage, "p", T + 3)).results) == 2


async def test_results_that_arrive_while_the_parent_runs_wake_it_on_suspend(
    storage: Storage,
) -> None:
    ids = await waiting_parent(storage, 2, min_results=1)
    claimed = await claim(storage, T + 2)
    await finish(storage, claimed[ids[0]], T + 2)
    resumed = await claim_one(storage, "p", T + 3)
    await finish(storage, claimed[ids[1]], T + 4)  # arrives while the parent runs
    assert await state(storage, "p") == RUNNING
    await suspend(storage, resumed, T + 5, min_results=1)
    assert await state(storage, "p") == PENDING
    assert delivered((await claim_one(storage, "p", T + 5)).results) == [
        (2, ids[1], f"output of {ids[1]}".encode())
    ]


async def test_suspend_with_nothing_to_wait_for_waits_until_max_wait(storage: Storage) -> None:
    await storage.create([new("a")], T)
    call = await claim_one(storage, "a", T)
    await suspend(storage, call, T, wait_until=T + 30)
    assert await state(storage, "a") == WAITING
    assert await claim(storage, T + 29) == {}
    assert set(await claim(storage, T + 30)) == {"a"}


async def test_finish_cancels_outstanding_children(storage: Storage) -> None:
    ids = await waiting_parent(storage, 3, min_results=1)
    claimed = await claim(storage, T + 2)
    await finish(storage, claimed[ids[0]], T + 2)
    # The second child is itself waiting on a grandchild.
    await suspend(
        storage, claimed[ids[1]], T + 2, spawn=(new("g", parent=ids[1], root="p", cid=1),)
    )
    now_running = await claim(storage, T + 3)
    assert set(now_running) == {"p", "g"}
    await finish(storage, now_running["p"], T + 4, b"first wins")
    for call_id in (ids[2], "g"):
        record = await storage.get(call_id)
        assert record is not None
        assert (record.state, record.status, record.finished_at) == (DONE, CANCELLED, T + 4)
    # The suspended child is resumed once more, with the cancellation, for its
    # cleanup; whatever it answers, it is then done, cancelled.
    cleanup = await claim_one(storage, ids[1], T + 4)
    assert cleanup.cancelling and cleanup.snapshot == b"snapshot" and cleanup.results == ()
    await finish(storage, cleanup, T + 4.5, b"cleaned up")
    record = await storage.get(ids[1])
    assert record is not None
    assert (record.state, record.status, record.output) == (DONE, CANCELLED, None)
    first = await storage.get(ids[0])
    assert first is not None and (first.status, first.output) == (
        OK,
        f"output of {ids[0]}".encode(),
    )
    # The cancelled calls' attempts in flight are refused.
    assert not await storage.complete(completion(claimed[ids[2]], Finish(OK, output=b"x"), T + 5))
    assert not await storage.complete(completion(now_running["g"], Finish(OK), T + 5))
    assert await storage.counts() == {PENDING: 0, RUNNING: 0, WAITING: 0, DONE: 5}


async def test_finish_of_a_child_with_a_grandparent(storage: Storage) -> None:
    [child_id] = await waiting_parent(storage, 1)
    child = (await claim(storage, T + 2))[child_id]
    await suspend(storage, child, T + 2, spawn=(new("g", parent=child_id, root="p", cid=7),))
    grandchild = await claim_one(storage, "g", T + 3)
    await finish(storage, grandchild, T + 3, b"deep")
    resumed_child = await claim_one(storage, child_id, T + 4)
    assert delivered(resumed_child.results) == [(7, "g", b"deep")]
    assert resumed_child.root_id == "p"
    await finish(storage, resumed_child, T + 5, b"middle")
    resumed = await claim_one(storage, "p", T + 6)
    assert delivered(resumed.results) == [(1, child_id, b"middle")]


# --- complete: Retry -------------------------------------------------------------------------


async def test_retry_makes_the_call_pending_at_due_at(storage: Storage) -> None:
    await storage.create([new("a")], T)
    call = await claim_one(storage, "a", T)
    retry = Retry(due_at=T + 8, status=Status.THROTTLED.value, error=b"slow down")
    assert await storage.complete(completion(call, retry, T + 1, status=Status.THROTTLED.value))
    record = await storage.get("a")
    assert record is not None
    assert (record.state, record.status, record.error) == (
        PENDING,
        Status.THROTTLED.value,
        b"slow down",
    )
    assert record.attempts[0].status == Status.THROTTLED.value
    assert await next_due(storage) == T + 8
    assert await due_endpoints(storage, T + 7) == []
    assert await claim(storage, T + 7.9) == {}
    again = await claim_one(storage, "a", T + 8)
    assert (again.input, again.snapshot, again.attempt) == (b"input of a", None, 2)


async def test_retry_of_a_resume_keeps_its_snapshot_and_results(storage: Storage) -> None:
    [child_id] = await waiting_parent(storage, 1)
    await finish_children(storage, (child_id,), T + 2)
    resumed = await claim_one(storage, "p", T + 3)
    assert len(resumed.results) == 1
    retry = Retry(due_at=T + 4, status=Status.TEMPORARY_ERROR.value)
    assert await storage.complete(completion(resumed, retry, T + 3))
    again = await claim_one(storage, "p", T + 4)
    assert (again.snapshot, again.results, again.attempt) == (b"snapshot", resumed.results, 2)


async def test_restart_starts_over_from_the_input(storage: Storage) -> None:
    ids = await waiting_parent(storage, 2, min_results=1)
    claimed = await claim(storage, T + 2)
    await finish(storage, claimed[ids[0]], T + 2)
    resumed = await claim_one(storage, "p", T + 3)
    assert len(resumed.results) == 1
    restart = Retry(due_at=T + 3, status=Status.INCOMPATIBLE_STATE.value, restart=True)
    assert await storage.complete(completion(resumed, restart, T + 3))
    # The child still running is cancelled: its late answer is refused, and delivers nothing.
    record = await storage.get(ids[1])
    assert record is not None and (record.state, record.status) == (DONE, CANCELLED)
    assert not await storage.complete(completion(claimed[ids[1]], Finish(OK, output=b"x"), T + 4))
    fresh = await claim_one(storage, "p", T + 4)
    assert (fresh.snapshot, fresh.input, fresh.results) == (None, b"input of p", ())
    assert fresh.attempt == 2  # the same step, tried again
    # The new run reuses correlation id 1: only its own child's result comes back.
    spawn = (new("p.new", parent="p", cid=1),)
    await suspend(storage, fresh, T + 5, spawn=spawn)
    await finish_children(storage, ("p.new",), T + 6)
    assert delivered((await claim_one(storage, "p", T + 7)).results) == [
        (1, "p.new", b"output of p.new")
    ]


async def test_tail_call_replaces_function_and_input(storage: Storage) -> None:
    await storage.create([new("a")], T)
    first = await claim_one(storage, "a", T)
    retry = Retry(due_at=T, status=Status.TEMPORARY_ERROR.value)
    assert await storage.complete(completion(first, retry, T))
    second = await claim_one(storage, "a", T)
    assert second.attempt == 2
    tail = Retry(due_at=T + 1, status=OK, restart=True, function="g", input=b"new input")
    assert await storage.complete(completion(second, tail, T + 1))
    record = await storage.get("a")
    assert record is not None and (record.function, record.input) == ("g", b"new input")
    third = await claim_one(storage, "a", T + 1)
    assert (third.function, third.input, third.snapshot) == ("g", b"new input", None)
    assert (third.attempt, third.run) == (1, 3)


async def test_tail_call_of_a_coroutine_cancels_its_children(storage: Storage) -> None:
    [child_id] = await waiting_parent(storage, 1)
    await storage.create([new("unrelated")], T)
    claimed = await claim(storage, T + 2)
    resumed_at = T + 2 + FAR  # the max wait passes
    resumed = await claim_one(storage, "p", resumed_at)
    tail = Retry(due_at=resumed_at, status=OK, restart=True, function="g", input=b"in")
    assert await storage.complete(completion(resumed, tail, resumed_at))
    assert await state(storage, child_id) == DONE
    assert await state(storage, "unrelated") == RUNNING
    assert not await storage.complete(completion(claimed[child_id], Finish(OK), resumed_at))
    after = await claim_one(storage, "p", resumed_at)
    assert (after.function, after.snapshot, after.results) == ("g", None, ())


# --- complete: Suspend -----------------------------------------------------------------------


async def test_suspend_creates_children_and_starts_a_new_step(storage: Storage) -> None:
    await storage.create([new("p", expires_at=T + 900)], T)
    first = await claim_one(storage, "p", T)
    retry = Retry(due_at=T, status=Status.TEMPORARY_ERROR.value)
    assert await storage.complete(completion(first, retry, T))
    second = await claim_one(storage, "p", T)
    assert second.attempt == 2
    spawn = children("p", 2)
    await suspend(storage, second, T + 1, spawn=spawn, min_results=2, snapshot=b"frames")
    parent = await storage.get("p")
    assert parent is not None
    assert (parent.state, parent.attempt, parent.children) == (WAITING, 0, ("p.1", "p.2"))
    assert parent.attempts[-1].finished_at == T + 1
    claimed = await claim(storage, T + 1)
    assert set(claimed) == {"p.1", "p.2"}
    child = claimed["p.1"]
    assert (child.parent_id, child.root_id, child.input) == ("p", "p", b"input of p.1")
    await finish(storage, child, T + 2)
    await finish(storage, claimed["p.2"], T + 2)
    resumed = await claim_one(storage, "p", T + 3)
    assert (resumed.attempt, resumed.run, resumed.snapshot) == (1, 3, b"frames")


async def test_suspend_cancels_children_by_correlation_id(storage: Storage) -> None:
    ids = await waiting_parent(storage, 3, min_results=1)
    claimed = await claim(storage, T + 2)
    await finish(storage, claimed[ids[0]], T + 2)
    resumed = await claim_one(storage, "p", T + 3)
    # The first result decided a race: the losers (correlation ids 2 and 3) are cancelled;
    # cancelling 1 (done already) and 99 (no such child) changes nothing.
    await suspend(storage, resumed, T + 4, cancel=(1, 2, 3, 99), wait_until=T + 50)
    for call_id in ids[1:]:
        record = await storage.get(call_id)
        assert record is not None and (record.state, record.status) == (DONE, CANCELLED)
    first = await storage.get(ids[0])
    assert first is not None and first.status == OK
    # The cancelled children deliver nothing: the parent waits until its max wait.
    assert await state(storage, "p") == WAITING
    assert (await claim_one(storage, "p", T + 50)).results == ()


async def test_suspend_cancels_only_its_own_children(storage: Storage) -> None:
    await storage.create([new("p"), new("q", endpoint=EP2)], T)
    claimed = await claim(storage, T)
    await suspend(storage, claimed["p"], T, spawn=children("p", 1))
    await suspend(storage, claimed["q"], T, spawn=children("q", 1), wait_until=T + 1)
    resumed = await claim_one_of(storage, "q", T + 1, endpoint=EP2)
    await suspend(storage, resumed, T + 1, cancel=(1,))
    q1, p1 = await storage.get("q.1"), await storage.get("p.1")
    assert q1 is not None and (q1.state, q1.status) == (DONE, CANCELLED)
    assert p1 is not None and (p1.state, p1.status) == (PENDING, None)


async def test_dispatched_calls_are_created_with_the_completion(storage: Storage) -> None:
    await storage.create([new("a"), new("b"), new("c")], T)
    claimed = await claim(storage, T)
    out = (new("x"), new("y", endpoint=EP2))
    assert await storage.complete(
        completion(claimed["a"], Finish(OK, output=b"1"), T + 1, dispatched=out)
    )
    retry = Retry(due_at=T + 9, status=Status.TEMPORARY_ERROR.value)
    assert await storage.complete(completion(claimed["b"], retry, T + 1, dispatched=(new("z"),)))
    await storage.complete(
        completion(
            claimed["c"],
            Suspend(snapshot=b"s", min_results=1, max_results=1, wait_until=FAR),
            T + 1,
            dispatched=(new("w"),),
        )
    )
    for call_id in ("x", "y", "z", "w"):
        record = await storage.get(call_id)
        assert record is not None
        assert (record.state, record.parent_id, record.root_id) == (PENDING, None, call_id)
        assert record.created_at == T + 1
    assert set(await claim(storage, T + 1)) == {"x", "y", "z", "w"}


# --- lost claims -----------------------------------------------------------------------------


async def test_complete_by_another_owner_changes_nothing(storage: Storage) -> None:
    ids = await waiting_parent(storage, 1)
    child = (await claim(storage, T + 2))[ids[0]]
    transitions: list[Transition] = [
        Finish(OK, output=b"x"),
        Retry(due_at=T, status=Status.TEMPORARY_ERROR.value, restart=True, function="g"),
        Suspend(
            snapshot=b"s", min_results=1, max_results=1, wait_until=T, children=children("c", 1)
        ),
    ]
    for transition in transitions:
        lost = completion(child, transition, T + 3, owner=OTHER, dispatched=(new("d"),))
        assert not await storage.complete(lost)
    record = await storage.get(ids[0])
    assert record is not None
    assert (record.state, record.function, record.output, record.children) == (
        RUNNING,
        "f",
        None,
        (),
    )
    assert [a.finished_at for a in record.attempts] in ([], [None])
    assert await storage.get("d") is None
    assert await storage.get("c.1") is None
    assert await state(storage, "p") == WAITING
    assert await storage.counts() == {PENDING: 0, RUNNING: 1, WAITING: 1, DONE: 0}


async def test_complete_of_a_stale_run_changes_nothing(storage: Storage) -> None:
    await storage.create([new("a")], T)
    stale = await claim_one(storage, "a", T)
    assert await storage.recover(T + LEASE + SLACK) == 1
    current = await claim_one(storage, "a", T + LEASE)  # the same owner claims it again
    assert current.run == stale.run + 1
    assert not await storage.complete(completion(stale, Finish(OK, output=b"old"), T + 61))
    assert await state(storage, "a") == RUNNING
    assert await storage.complete(completion(current, Finish(OK, output=b"new"), T + 62))
    record = await storage.get("a")
    assert record is not None and record.output == b"new"
    assert [(a.number, a.finished_at) for a in finished(record)] == [(2, T + 62)]


async def test_complete_after_cancel_changes_nothing(storage: Storage) -> None:
    await storage.create([new("a")], T)
    call = await claim_one(storage, "a", T)
    assert await storage.cancel("a", T + 1) == 1
    assert not await storage.complete(completion(call, Finish(OK, output=b"x"), T + 2))
    record = await storage.get("a")
    assert record is not None and (record.status, record.output) == (CANCELLED, None)


# --- complete and claim ------------------------------------------------------------------


async def test_complete_and_claim_starts_the_children_of_a_suspension(storage: Storage) -> None:
    await storage.create([new("p")], T)
    parent = await claim_one(storage, "p", T)
    await storage.create([new("q"), new("elsewhere", endpoint=EP2)], T + 0.5)
    spawn = (*children("p", 3), new("p.9", parent="p", cid=9, endpoint=EP2))
    transition = Suspend(b"s", min_results=1, max_results=9, wait_until=FAR, children=spawn)
    completed, claimed, more_due = await storage.complete_and_claim(
        completion(parent, transition, T + 1), 2, LEASE
    )
    # Of the calls due on the parent's endpoint, in the order they became due, up to the
    # limit; those due on another endpoint are for the engine's loop.
    assert completed and more_due
    first, child = claimed
    assert first.id == "q" and child.id in ("p.1", "p.2", "p.3")
    assert (child.parent_id, child.attempt, child.run, child.endpoint) == ("p", 1, 1, EP)
    assert [await state(storage, f"p.{cid}") for cid in (1, 2, 3)].count(RUNNING) == 1
    assert (await state(storage, "p.9"), await state(storage, "elsewhere")) == (PENDING, PENDING)
    # Claimed for the owner of the completion: a renewal keeps them, an expiry recovers them.
    assert await storage.recover(T + 1 + LEASE + SLACK) == 2


async def test_complete_and_claim_resumes_the_parent_a_result_woke(storage: Storage) -> None:
    ids = await waiting_parent(storage, 2)
    running = await claim(storage, T + 2)
    completed, claimed, more_due = await storage.complete_and_claim(
        completion(running[ids[0]], Finish(OK, output=b"one"), T + 3), 5, LEASE
    )
    assert completed and not more_due  # the claim took all there was
    (parent,) = claimed
    assert (parent.id, parent.snapshot, parent.run) == ("p", b"snapshot", 2)
    assert delivered(parent.results) == [(1, ids[0], b"one")]


async def test_complete_and_claim_with_no_room_only_completes(storage: Storage) -> None:
    ids = await waiting_parent(storage, 1)
    child = await claim_one(storage, ids[0], T + 2)
    done = await storage.complete_and_claim(
        completion(child, Finish(OK, output=b"x"), T + 3), 0, LEASE
    )
    # The parent is due, not claimed: the next completion on its endpoint claims it.
    assert done == (True, [], False)
    assert await state(storage, "p") == PENDING


async def test_complete_and_claim_after_a_lost_claim_changes_nothing_but_claims(
    storage: Storage,
) -> None:
    await storage.create([new("a")], T)
    lost = await claim_one(storage, "a", T)
    assert await storage.recover(T + LEASE + SLACK) == 1
    await storage.create([new("b")], T + LEASE)
    completed, claimed, more_due = await storage.complete_and_claim(
        completion(lost, Finish(OK, output=b"late"), T + LEASE + 1), 5, LEASE
    )
    assert not completed and not more_due
    assert sorted(call.id for call in claimed) == ["a", "b"]
    record = await storage.get("a")
    assert record is not None and record.output is None


async def test_a_suspension_records_the_children_it_started_and_how_they_ended(
    storage: Storage,
) -> None:
    """Children whose first attempts ran before their parent's suspension was
    recorded: created claimed, and those that ended applied with it, in one
    transaction; the result one delivered makes the parent due, and claimed,
    at once (as of the latest of those attempts)."""
    await storage.create([new("p")], T)
    parent = await claim_one(storage, "p", T)
    spawn = children("p", 3)
    one, two, three = (first_run(child, T + 1) for child in spawn)
    ran = (
        completion(one, Finish(OK, output=b"one"), T + 2),
        completion(two, Retry(due_at=T + 50, status=Status.TIMEOUT.value), T + 2),
    )
    transition = Suspend(
        b"s",
        min_results=1,
        max_results=9,
        wait_until=FAR,
        children=spawn,
        started=("p.1", "p.2", "p.3"),
        lease_until=T + 1 + LEASE,
        ran=ran,
    )
    completed, claimed, more_due = await storage.complete_and_claim(
        completion(parent, transition, T + 1), 5, LEASE
    )
    assert completed and [call.id for call in claimed] == ["p"] and not more_due
    assert delivered(claimed[0].results) == [(1, "p.1", b"one")]
    assert [await state(storage, f"p.{cid}") for cid in (1, 2, 3)] == [DONE, PENDING, RUNNING]
    record = await storage.get("p.1")  # done as it was created: a call like any other
    assert record is not None
    assert (record.parent_id, record.root_id, record.function, record.input) == (
        "p",
        "p",
        "f",
        b"input of p.1",
    )
    assert (record.status, record.output, record.error, record.attempt) == (OK, b"one", None, 1)
    assert (record.created_at, record.finished_at) == (T + 1, T + 2)
    assert [
        (a.number, a.attempt, a.started_at, a.finished_at, a.status) for a in record.attempts
    ] == [(1, 1, T + 1.5, T + 2, OK)]
    parent_record = await storage.get("p")
    assert parent_record is not None and list(parent_record.children) == ["p.1", "p.2", "p.3"]
    record = await storage.get("p.2")  # its first attempt failed: retried later
    assert record is not None and len(record.attempts) == 1 and await next_due(storage) == T + 50
    # The third is the owner's first attempt, as a claim would have left it.
    assert await storage.recover(T + 1 + LEASE - 1) == 0
    assert await storage.complete(completion(three, Finish(OK, output=b"three"), T + 3))
    assert [await state(storage, f"p.{cid}") for cid in (1, 2, 3)] == [DONE, PENDING, DONE]


async def test_a_suspension_not_recorded_creates_none_of_the_children_it_started(
    storage: Storage,
) -> None:
    await storage.create([new("p")], T)
    parent = await claim_one(storage, "p", T)
    assert await storage.recover(T + LEASE + SLACK) == 1  # its claim is lost
    (child,) = children("p", 1)
    transition = Suspend(
        b"s",
        min_results=1,
        max_results=1,
        wait_until=FAR,
        children=(child,),
        started=(child.id,),
        lease_until=T + LEASE,
        ran=(completion(first_run(child, T), Finish(OK, output=b"x"), T + 1),),
    )
    assert not await storage.complete(completion(parent, transition, T + 1))
    assert await storage.get(child.id) is None


# --- renew and recover ----------------------------------------------------------------------


async def test_renew_extends_the_leases_of_its_owner(storage: Storage) -> None:
    await storage.create([new("a"), new("b"), new("c")], T)
    await claim(storage, T, owner=OWNER, limit=2)
    [other] = await claim(storage, T, owner=OTHER)
    mine = ["a", "b", "c"]
    await storage.renew(OWNER, mine, T + 500)  # "c" is not this owner's: unchanged
    await storage.renew(OWNER, [], T + 900)
    assert await storage.recover(T + LEASE + SLACK) == 1
    assert await state(storage, other) == PENDING
    assert await storage.recover(T + 499) == 0
    assert await storage.recover(T + 500) == 2


async def test_renew_skips_calls_no_longer_running(storage: Storage) -> None:
    await storage.create([new("a")], T)
    call = await claim_one(storage, "a", T)
    await finish(storage, call, T + 1)
    await storage.renew(OWNER, ["a"], T + 500)
    assert await state(storage, "a") == DONE
    assert await storage.recover(T + 1000) == 0


async def test_recover_makes_expired_leases_pending(storage: Storage) -> None:
    await storage.create([new("a")], T)
    await storage.create([new("b")], T + 10)
    await claim(storage, T)
    await claim(storage, T + 10)
    assert await storage.recover(T + LEASE + 5) == 1
    assert await state(storage, "a") == PENDING
    assert await state(storage, "b") == RUNNING
    assert await due_endpoints(storage, T + LEASE + 5) == [EP]
    again = await claim_one(storage, "a", T + LEASE + 5, owner=OTHER)
    assert (again.attempt, again.run) == (2, 2)  # the lost attempt counts
    record = await storage.get("a")
    assert record is not None
    (lost,) = record.attempts  # and is on record
    assert (lost.number, lost.attempt, lost.status) == (1, 1, None)
    assert (lost.started_at, lost.finished_at) == (None, None)
    assert lost.error_type == "dispatch.Interrupted"


async def test_recover_everything(storage: Storage) -> None:
    """``recover(inf)``: an orchestrator alone on its database takes back every running call
    at start, whatever its lease; they are due at once."""
    await storage.create([new("a"), new("b")], T)
    await claim(storage, T)
    assert await storage.recover(math.inf) == 2
    assert await storage.counts() == {PENDING: 2, RUNNING: 0, WAITING: 0, DONE: 0}
    due = await next_due(storage)
    assert due is not None and due <= T + 1
    assert await due_endpoints(storage, T + 1) == [EP]
    assert set(await claim(storage, T + 1)) == {"a", "b"}


async def test_recover_leaves_other_states_alone(storage: Storage) -> None:
    ids = await waiting_parent(storage, 1)
    await storage.create([new("done")], T)
    await finish(storage, (await claim(storage, T + 2))["done"], T + 2)
    assert await storage.recover(math.inf) == 1  # the child only
    assert await state(storage, "p") == WAITING
    assert await state(storage, "done") == DONE
    assert await state(storage, ids[0]) == PENDING


# --- cancel ----------------------------------------------------------------------------------


async def test_cancel_cancels_the_subtree(storage: Storage) -> None:
    ids = await waiting_parent(storage, 3)
    claimed = await claim(storage, T + 2)
    await finish(storage, claimed[ids[0]], T + 2)
    await suspend(
        storage, claimed[ids[1]], T + 2, spawn=(new("g", parent=ids[1], root="p", cid=1),)
    )
    await storage.create([new("bystander")], T)
    assert await storage.cancel("p", T + 9) == 4  # p, p.2, g and p.3; p.1 was done
    # The suspended coroutines (p, p.2) are resumed for their cleanup first.
    cleanups = await claim(storage, T + 9, endpoint=EP, limit=10)
    assert set(cleanups) == {"p", ids[1], "bystander"}
    assert cleanups["p"].cancelling and cleanups[ids[1]].cancelling
    assert not cleanups["bystander"].cancelling
    for call_id in ("p", ids[1]):
        await finish(storage, cleanups[call_id], T + 9)
    for call_id in ("p", ids[1], ids[2], "g"):
        record = await storage.get(call_id)
        assert record is not None
        assert (record.state, record.status, record.finished_at) == (DONE, CANCELLED, T + 9)
        assert record.error is not None
        error = _wire.Error.from_msgpack(record.error)
        assert (error.type, error.status) == ("dispatch.Cancelled", Status.PERMANENT_ERROR.value)
    done = await storage.get(ids[0])
    assert done is not None
    assert (done.status, done.output, done.finished_at) == (
        OK,
        f"output of {ids[0]}".encode(),
        T + 2,
    )
    assert await state(storage, "bystander") == RUNNING
    assert await storage.cancel("p", T + 10) == 0
    assert not await storage.complete(completion(claimed[ids[2]], Finish(OK), T + 11))


async def test_a_cancelled_child_is_an_error_result_for_its_parent(storage: Storage) -> None:
    ids = await waiting_parent(storage, 2, min_results=1)
    assert await storage.cancel(ids[1], T + 2) == 1
    assert await state(storage, "p") == PENDING
    resumed = (await claim(storage, T + 3))["p"]
    [result] = resumed.results
    assert (result.correlation_id, result.child_id, result.output) == (2, ids[1], None)
    assert result.status == Status.PERMANENT_ERROR.value
    assert result.error is not None
    error = _wire.Error.from_msgpack(result.error)
    assert (error.type, error.status) == ("dispatch.Cancelled", Status.PERMANENT_ERROR.value)
    assert await state(storage, ids[0]) == RUNNING  # claimed with the parent


async def test_cancel_of_a_done_or_unknown_call(storage: Storage) -> None:
    await storage.create([new("a")], T)
    await finish(storage, await claim_one(storage, "a", T), T + 1, b"kept")
    assert await storage.cancel("a", T + 2) == 0
    record = await storage.get("a")
    assert record is not None and (record.status, record.output, record.error) == (
        OK,
        b"kept",
        None,
    )
    assert await storage.cancel("nobody", T + 2) == 0


async def test_cancel_of_a_pending_and_of_a_running_call(storage: Storage) -> None:
    await storage.create([new("a"), new("b")], T)
    await claim(storage, T, limit=1)
    assert await storage.cancel("a", T + 1) + await storage.cancel("b", T + 1) == 2
    assert await storage.counts() == {PENDING: 0, RUNNING: 0, WAITING: 0, DONE: 2}
    assert await next_due(storage) is None
    assert await claim(storage, T + 2) == {}


async def test_cancel_of_a_running_resume_waits_for_its_answer(storage: Storage) -> None:
    [child] = await waiting_parent(storage, 1)
    await suspend(
        storage,
        await claim_one(storage, child, T + 1),
        T + 1,
        spawn=(new("g", parent=child, root="p", cid=1),),
    )
    await finish(storage, await claim_one(storage, "g", T + 2), T + 2)
    resumed = await claim_one(storage, child, T + 3)
    assert not resumed.cancelling
    assert await storage.cancel(child, T + 4) == 1
    assert await state(storage, child) == RUNNING
    # Its answer (it waits on more) comes back: it is resumed with the cancellation.
    await suspend(
        storage, resumed, T + 5, spawn=(new("h", parent=child, root="p", cid=2),), snapshot=b"later"
    )
    assert await storage.get("h") is None  # the calls it asked for are not made
    cleanup = await claim_one(storage, child, T + 5)
    assert cleanup.cancelling and cleanup.snapshot == b"later"
    # An endpoint that suspends again all the same (one that knows no
    # cancellation) does not keep it alive.
    await suspend(storage, cleanup, T + 6)
    record = await storage.get(child)
    assert record is not None and (record.state, record.status) == (DONE, CANCELLED)
    # Its parent gets the cancellation as the call's result.
    parent = await claim_one(storage, "p", T + 7)
    [result] = parent.results
    assert result.error is not None
    assert _wire.Error.from_msgpack(result.error).type == "dispatch.Cancelled"


async def test_frames_and_tracebacks_are_kept(storage: Storage) -> None:
    await storage.create([new("a")], T)
    transition = Suspend(
        snapshot=b"s", min_results=1, max_results=1, wait_until=T + 5, frames=b"where"
    )
    assert await storage.complete(completion(await claim_one(storage, "a", T), transition, T))
    record = await storage.get("a")
    assert record is not None and record.frames == b"where"
    failed = Completion(
        call=await claim_one(storage, "a", T + 5),
        owner=OWNER,
        transition=Finish(Status.PERMANENT_ERROR.value, error=b"e"),
        now=T + 6,
        duration=1.0,
        status=Status.PERMANENT_ERROR.value,
        error_type="ValueError",
        error_message="bad",
        traceback="Traceback (most recent call last): ...",
    )
    assert await storage.complete(failed)
    record = await storage.get("a")
    assert record is not None and record.frames is None
    assert [a.traceback for a in record.attempts] == [
        None,
        "Traceback (most recent call last): ...",
    ]


async def test_list_calls_filters_and_pages(storage: Storage) -> None:
    ids = await waiting_parent(storage, 2)  # "p" created at T, its children at T + 1
    await storage.create(
        [new(f"r{i}", function="even" if i % 2 == 0 else "odd") for i in range(3)], T
    )
    await storage.create([new("late", function="odd")], T + 10)
    summaries = await storage.list_calls(CallQuery(limit=100))
    assert [c.id for c in summaries][:1] == ["late"]
    assert len(summaries) == 7
    # Pages: newest first, by (created_at, id), without gaps or repeats.
    seen: list[str] = []
    before = None
    while True:
        page = await storage.list_calls(CallQuery(limit=2, before=before))
        if not page:
            break
        seen += [c.id for c in page]
        before = (page[-1].created_at, page[-1].id)
    assert seen == [c.id for c in summaries]
    assert {c.id for c in await storage.list_calls(CallQuery(function="odd"))} == {"r1", "late"}
    assert {c.id for c in await storage.list_calls(CallQuery(state=WAITING))} == {"p"}
    assert {c.id for c in await storage.list_calls(CallQuery(since=T + 0.5, until=T + 5))} == set(
        ids
    )
    assert {c.id for c in await storage.list_calls(CallQuery(root_id="p"))} == {"p", *ids}
    roots = await storage.list_calls(CallQuery(roots_only=True, limit=100))
    assert {c.id for c in roots} == {"r0", "r1", "r2", "late", "p"}
    claimed = await claim(storage, T + 20)
    await storage.complete(
        completion(claimed["r0"], Finish(Status.PERMANENT_ERROR.value, error=b"e"), T + 21)
    )
    await finish(storage, claimed["r1"], T + 21)
    assert [c.id for c in await storage.list_calls(CallQuery(status="failed"))] == ["r0"]
    assert [c.id for c in await storage.list_calls(CallQuery(status=OK))] == ["r1"]
    tree = await storage.tree("p", 100)
    assert [c.id for c in tree] == ["p", *ids]
    assert [c.parent_id for c in tree] == [None, "p", "p"]
    assert await storage.tree("nobody", 100) == []


# --- reading ---------------------------------------------------------------------------------


async def test_get_of_an_unknown_call(storage: Storage) -> None:
    assert await storage.get("nobody") is None


async def test_get_lists_attempts_and_children(storage: Storage) -> None:
    await storage.create([new("p")], T)
    first = await claim_one(storage, "p", T)
    retry = Retry(due_at=T + 1, status=Status.TIMEOUT.value)
    assert await storage.complete(
        Completion(
            call=first,
            owner=OWNER,
            transition=retry,
            now=T + 0.5,
            duration=0.5,
            status=Status.TIMEOUT.value,
            error_type="dispatch.TransportError",
            error_message="no answer",
        )
    )
    second = await claim_one(storage, "p", T + 1)
    spawn = tuple(reversed(children("p", 3)))  # created together: listed by correlation id
    assert await storage.complete(
        Completion(
            call=second,
            owner=OWNER,
            transition=Suspend(
                snapshot=b"s" * 10,
                min_results=3,
                max_results=3,
                wait_until=FAR,
                children=spawn,
            ),
            now=T + 2,
            duration=1.0,
            status=OK,
            snapshot_size=10,
            dispatched=(new("d"),),
        )
    )
    record = await storage.get("p")
    assert record is not None
    assert record.children == ("p.1", "p.2", "p.3")  # not "d": dispatched calls are roots
    one, two = record.attempts
    assert (one.number, one.attempt, one.started_at, one.finished_at) == (1, 1, T, T + 0.5)
    assert (one.status, one.error_type, one.error_message, one.snapshot_size) == (
        Status.TIMEOUT.value,
        "dispatch.TransportError",
        "no answer",
        None,
    )
    assert (two.number, two.attempt, two.started_at, two.finished_at) == (2, 2, T + 1, T + 2)
    assert (two.status, two.error_type, two.snapshot_size) == (OK, None, 10)
    child = await storage.get("p.2")
    assert child is not None and (child.parent_id, child.root_id, child.attempts) == ("p", "p", ())


async def test_counts(storage: Storage) -> None:
    assert await storage.counts() == {PENDING: 0, RUNNING: 0, WAITING: 0, DONE: 0}
    await waiting_parent(storage, 3)
    await storage.create([new("r1"), new("r2")], T)
    claimed = await claim(storage, T + 2, limit=3)  # r1, r2 (due first) and a child
    await finish(storage, claimed["r1"], T + 3)
    assert await storage.counts() == {PENDING: 2, RUNNING: 2, WAITING: 1, DONE: 1}


async def test_recent_lists_the_newest_trees_first(storage: Storage) -> None:
    await waiting_parent(storage, 2)  # "p" at T, its children at T + 1
    await storage.create([new("r2")], T + 5)
    await storage.create([new("r3")], T + 6)
    recent = await storage.recent(10)
    assert [c.id for c in recent] == ["r3", "r2", "p", "p.1", "p.2"]
    p, p1 = recent[2], recent[3]
    assert (p.root_id, p.parent_id, p.function, p.state, p.attempt) == ("p", None, "f", WAITING, 0)
    assert (p1.root_id, p1.parent_id, p1.state, p1.created_at) == ("p", "p", PENDING, T + 1)
    assert [c.id for c in await storage.recent(2)] == ["r3", "r2"]
    assert [c.id for c in await storage.recent(4)] == ["r3", "r2", "p", "p.1"]


async def test_due_says_when_the_next_call_is_due(storage: Storage) -> None:
    assert await next_due(storage) is None
    await storage.create([new("a")], T + 20)
    assert await next_due(storage) == T + 20
    await storage.create([new("w")], T)
    call = await claim_one(storage, "w", T)
    assert await next_due(storage) == T + 20  # running calls are not due
    await suspend(storage, call, T, wait_until=T + 7)
    assert await next_due(storage) == T + 7


async def test_due_lists_the_endpoints_with_calls_due(storage: Storage) -> None:
    assert await due_endpoints(storage, T) == []
    await storage.create([new("a1"), new("a2")], T)
    await storage.create([new("b")], T + 5)
    assert await due_endpoints(storage, T) == [EP]
    assert await due_endpoints(storage, T + 5) == [EP]
    await storage.create([new("c", endpoint=EP2)], T + 5)
    assert sorted(await due_endpoints(storage, T + 5)) == [EP, EP2]
    await claim(storage, T + 5)
    assert await due_endpoints(storage, T + 5) == []


async def test_a_waiting_call_past_its_max_wait_is_due(storage: Storage) -> None:
    await storage.create([new("w", endpoint=EP2)], T)
    call = await claim_one(storage, "w", T)
    await suspend(storage, call, T, wait_until=T + 7)
    assert await due_endpoints(storage, T + 6) == []
    assert await due_endpoints(storage, T + 7) == [EP2]
    assert set(await claim(storage, T + 7, endpoint=EP2)) == {"w"}


async def test_migrate_again_is_a_no_op(storage: Storage) -> None:
    await waiting_parent(storage, 2)
    before = await storage.get("p")
    await storage.migrate()
    await storage.migrate()
    assert await storage.get("p") == before
    assert await storage.counts() == {PENDING: 2, RUNNING: 0, WAITING: 1, DONE: 0}


# --- SQLite only -----------------------------------------------------------------------------


async def test_sqlite_file_is_locked_by_its_storage(tmp_path: Path) -> None:
    path = str(tmp_path / "dispatch.db")
    first = SQLiteStorage(path)
    try:
        with pytest.raises(DatabaseLocked, match="another dispatch orchestrator"):
            SQLiteStorage(path)
    finally:
        await first.close()
    second = SQLiteStorage(path)  # free again once closed
    await second.close()


async def test_sqlite_file_keeps_calls_across_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "dispatch.db")
    first = SQLiteStorage(path, synchronous="FULL")
    try:
        await first.migrate()
        await first.create([new("a")], T)
        await first.claim(OWNER, None, 10, T, LEASE)
    finally:
        await first.close()
    second = SQLiteStorage(path)
    try:
        await second.migrate()
        assert await second.recover(math.inf) == 1
        assert [c.id for c in await second.claim(OTHER, None, 10, T + 1, LEASE)] == ["a"]
    finally:
        await second.close()


def test_sqlite_synchronous_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="NORMAL or FULL"):
        SQLiteStorage(":memory:", synchronous="OFF")
