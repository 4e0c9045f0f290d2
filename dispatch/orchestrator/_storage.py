"""The orchestrator's storage: one typed interface, one backend per database.

A call moves through these states::

    pending ──claim──▶ running ──exit──▶ done
       ▲                  │
       │                  ├──retry / restart / tail call──▶ pending
       │                  └──poll──▶ waiting ──enough results, or max wait──▶ pending
       └──────────────── lease expired (the orchestrator died) ──┘

A call created with a claim (see :meth:`Storage.create`, and the children a
suspension started, ``Suspend.started``) begins running, as a claim leaves it.
Every transition is one transaction, guarded by what the caller last saw
(state, lease owner, attempt number), so a late answer from a lost lease
changes nothing and a call's result is recorded exactly once. Results of
finished children wait in ``results`` until a resume of their parent is
applied; a crash before that redelivers them.

Backends implement :class:`Storage`; ``tests/orchestrator/test_storage.py`` is
the conformance suite every backend passes unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .. import _wire
from .._status import Status

PENDING = "pending"
RUNNING = "running"
WAITING = "waiting"
DONE = "done"

CANCELLED = -1
"""The ``status`` recorded for a cancelled call (not a wire status)."""

CANCELLED_ERROR = _wire.Error(
    status=Status.PERMANENT_ERROR.value, type="dispatch.Cancelled", message="the call was cancelled"
).to_msgpack()
"""The ``error`` recorded for a cancelled call, and delivered to its parent."""


def status_name(status: int | None) -> str | None:
    """A recorded status as people read it: ``ok``, ``permanent_error``, ``cancelled``..."""
    if status is None:
        return None
    if status == CANCELLED:
        return "cancelled"
    try:
        return Status(status).name.lower()
    except ValueError:
        return Status.UNSPECIFIED.name.lower()


@dataclass(frozen=True, slots=True)
class NewCall:
    """A call to create."""

    id: str
    function: str
    endpoint: str
    input: bytes
    root_id: str
    parent_id: str | None = None
    correlation_id: int = 0
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """A finished child's result, waiting for its parent to be resumed."""

    seq: int
    correlation_id: int
    child_id: str
    status: int
    output: bytes | None
    error: bytes | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A call claimed for one attempt: what the engine needs to run it."""

    id: str
    root_id: str
    parent_id: str | None
    function: str
    endpoint: str
    input: bytes | None
    snapshot: bytes | None
    attempt: int
    """Attempts of the current step so far, this one included (1 for a first try)."""
    run: int
    """Runs of the call so far, this one included: first runs, retries and resumes."""
    created_at: float
    expires_at: float | None
    results: tuple[Result, ...] = ()
    """For a resume: results to deliver (at most the poll's max_results)."""
    cancelling: bool = False
    """The call was cancelled while suspended: resume it once more, with a
    cancellation at its awaits, so that its cleanup runs."""


def claimed(row: Sequence[Any], results: tuple[Result, ...] = ()) -> Claimed:
    """A :class:`Claimed` from a claim's row, whose columns begin with id,
    root_id, parent_id, function, endpoint, input, snapshot, attempt, runs,
    created_at, expires_at and cancelled_at."""
    return Claimed(
        id=row[0],
        root_id=row[1],
        parent_id=row[2],
        function=row[3],
        endpoint=row[4],
        input=row[5],
        snapshot=row[6],
        attempt=row[7],
        run=row[8],
        created_at=row[9],
        expires_at=row[10],
        results=results,
        cancelling=row[11] is not None and row[6] is not None,
    )


def first_run(call: NewCall, now: float) -> Claimed:
    """``call`` claimed for its first attempt as it was created at ``now``."""
    return Claimed(
        id=call.id,
        root_id=call.root_id,
        parent_id=call.parent_id,
        function=call.function,
        endpoint=call.endpoint,
        input=call.input,
        snapshot=None,
        attempt=1,
        run=1,
        created_at=now,
        expires_at=call.expires_at,
    )


class Completed(NamedTuple):
    """What :meth:`Storage.complete_and_claim` did."""

    applied: bool
    """The completion was applied (False: its claim was lost; nothing changed)."""
    claimed: list[Claimed]
    more_due: bool
    """Calls are due that no claim of this kind will take: on other
    endpoints, or waiting past their max wait (work for the engine's loop).
    The completion's endpoint has none left, or no room: the next
    completion there claims them. (After the claim, in the same transaction.)"""


def latest(completion: Completion) -> float:
    """The time of ``completion``, or of the latest attempt it records (see
    ``Suspend.ran``): what it made due is due by then."""
    if isinstance(completion.transition, Suspend) and completion.transition.ran:
        return max(completion.now, *(ran.now for ran in completion.transition.ran))
    return completion.now


@dataclass(frozen=True, slots=True)
class Claim:
    """Up to ``limit`` due calls of ``endpoint`` to claim for ``owner``, for ``lease`` seconds."""

    owner: str
    endpoint: str
    limit: int
    lease: float


@dataclass(frozen=True, slots=True)
class Finish:
    """The call is over: record its result (``output`` or msgpack ``error``)."""

    status: int
    output: bytes | None = None
    error: bytes | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the call again at ``due_at``; ``restart`` drops its snapshot and
    starts over from its input; a tail call replaces function and input."""

    due_at: float
    status: int
    error: bytes | None = None
    restart: bool = False
    function: str | None = None
    input: bytes | None = None


@dataclass(frozen=True, slots=True)
class Suspend:
    """The call waits on children: keep its snapshot, create and cancel calls."""

    snapshot: bytes
    min_results: int
    max_results: int
    wait_until: float
    children: tuple[NewCall, ...] = ()
    cancel: tuple[int, ...] = ()
    """Correlation ids of this call's children to cancel."""
    frames: bytes | None = None
    """Where it waits: the endpoint's msgpack description of its frames."""
    started: tuple[str, ...] = ()
    """Children whose first attempt the orchestrator started before this was
    recorded: created claimed (running, leased to the completion's owner
    until ``lease_until``), as :meth:`Storage.claim` would leave them."""
    lease_until: float = 0.0
    ran: tuple[Completion, ...] = ()
    """How the first attempts of some of those ended meanwhile: applied right
    after the suspension, in the same transaction (as many completions)."""


Transition = Finish | Retry | Suspend


@dataclass(frozen=True, slots=True)
class Completion:
    """How an attempt ended, applied atomically by :meth:`Storage.complete`."""

    call: Claimed
    owner: str
    transition: Transition
    now: float
    duration: float
    status: int
    """The status the endpoint (or the transport) reported for this attempt."""
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    snapshot_size: int | None = None
    dispatched: tuple[NewCall, ...] = ()
    """Independent calls the function dispatched while running."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    number: int
    """Which run of the call (first runs, retries and resumes all count)."""
    attempt: int
    """Which attempt of its step."""
    started_at: float | None
    finished_at: float | None
    status: int | None
    error_type: str | None
    error_message: str | None
    snapshot_size: int | None
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class CallSummary:
    """A call in a list."""

    id: str
    root_id: str
    parent_id: str | None
    function: str
    state: str
    status: int | None
    attempt: int
    created_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything stored about a call, for the API."""

    id: str
    root_id: str
    parent_id: str | None
    function: str
    endpoint: str
    state: str
    status: int | None
    attempt: int
    created_at: float
    finished_at: float | None
    input: bytes | None
    output: bytes | None
    error: bytes | None
    cancelled_at: float | None = None
    """When it was cancelled (a suspended coroutine then runs its cleanup)."""
    frames: bytes | None = None
    """Where it waits, as its endpoint last described it (msgpack), while suspended."""
    attempts: tuple[AttemptRecord, ...] = field(default=())
    children: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class CallQuery:
    """Which calls to list (all the filters given hold), newest first."""

    state: str | None = None
    status: int | str | None = None
    """Done with this status value, or ``"failed"``: done and not OK."""
    function: str | None = None
    root_id: str | None = None
    roots_only: bool = False
    since: float | None = None
    """Created at or after (Unix seconds)."""
    until: float | None = None
    """Created before."""
    before: tuple[float, str] | None = None
    """The (created_at, id) of the last call of the previous page."""
    limit: int = 50


@dataclass(frozen=True, slots=True)
class Due:
    """What the engine looks at before it claims, in one query."""

    endpoints: list[str]
    """Endpoints with calls due now (waits past their max wait included)."""
    next: float | None
    """The earliest time a pending or waiting call becomes due (None: none is)."""
    hosts: frozenset[str] = frozenset()
    """Endpoints that another orchestrator process runs in process (see
    :meth:`Storage.host`), as long as it keeps recording them."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be used: its driver is not installed, or it cannot be reached."""


class CallConflict(ValueError):
    """A dispatch id given for a new call names an existing call of another
    function or endpoint."""


class Storage(Protocol):
    """What the orchestrator needs from a database. All methods are atomic."""

    exclusive: bool
    """Whether one orchestrator process has the database to itself (then every
    call left running at its start was its own, and runs again at once), or
    several share it (then a call left running waits for its lease to expire)."""

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever another process may have made work due (new
        calls, results), until cancelled; return at once if no other process
        can (the engine polls at least every second anyway)."""

    async def migrate(self) -> None:
        """Create or upgrade the schema (safe when several processes start at once)."""

    async def close(self) -> None: ...

    async def create(
        self, calls: Sequence[NewCall], now: float, claim: Claim | None = None
    ) -> list[Claimed]:
        """Create root calls, all or none, due now.

        An id that exists already names that call: it is not created again
        (a client retrying a dispatch whose answer it lost starts nothing
        twice), unless it is of another function or endpoint, which raises
        :class:`CallConflict` and creates none. With ``claim``, up to
        ``claim.limit`` calls of its endpoint are claimed in the same
        transaction (due ones by due time on SQLite, as :meth:`claim` does;
        the new ones, inserted claimed, on PostgreSQL): the orchestrator runs
        them at once, without a claim of its own. The calls claimed."""

    def create_sync(
        self, calls: Sequence[NewCall], now: float, claim: Claim | None = None
    ) -> list[Claimed]:
        """:meth:`create`, blocking, from any thread: an embedded application's
        dispatches, stored without waiting for the event loop's turn. With no
        calls, nothing is created (a backend may get ready for the first)."""

    async def claim(
        self, owner: str, endpoint: str | None, limit: int, now: float, lease: float
    ) -> list[Claimed]:
        """Claim up to ``limit`` due calls (of ``endpoint``, or of any), leased
        to ``owner`` until ``now + lease`` (plus however long the claim waited
        to happen, for a lease counts from then), each with its attempt counted."""

    async def complete(self, completion: Completion) -> bool:
        """Apply how an attempt ended; False (and nothing changed) if the
        claim was lost meanwhile (lease expired, call cancelled)."""

    async def complete_and_claim(
        self, completion: Completion, limit: int, lease: float
    ) -> Completed:
        """:meth:`complete`, then :meth:`claim` of up to ``limit`` calls of the
        same endpoint for the same owner at ``latest(completion)``, in one
        transaction: the children a coroutine just made, or the parent a
        result just woke, start without waiting for the next claim; and
        whether calls are due that the claim did not take."""

    async def renew(self, owner: str, ids: Sequence[str], until: float) -> None:
        """Extend the leases of calls still being run by ``owner``."""

    async def recover(self, now: float) -> int:
        """Make calls whose lease expired pending again; how many."""

    async def host(self, endpoints: Sequence[str], now: float, until: float) -> None:
        """Record that this process runs the calls of ``endpoints`` in process
        (an embedded orchestrator, its application's endpoint) until
        ``until``, in place of what it recorded before (none: it stops), and
        forget what expired at ``now``; :meth:`due` in the other processes
        names them, so that they leave those calls to it while it keeps up.
        A backend that one process has to itself records nothing."""

    async def due(self, now: float) -> Due:
        """What is due at ``now``, and when the next call becomes due."""

    async def cancel(self, call_id: str, now: float) -> int:
        """Cancel a call and its descendants that are not done; how many.

        A cancelled call is done at once, its result "cancelled", unless it
        is a durable coroutine that has suspended: that one is resumed once
        more (at once if it waits, after its answer if it is running) with a
        cancellation at its awaits, so that its cleanup runs, and is then
        done, cancelled, whatever it answers."""

    async def get(self, call_id: str) -> CallRecord | None: ...

    async def list_calls(self, query: CallQuery) -> list[CallSummary]:
        """Calls matching ``query``, newest first, at most ``query.limit``."""

    async def tree(self, call_id: str, limit: int) -> list[CallSummary]:
        """The call and its descendants (at most ``limit``), oldest first."""

    async def counts(self) -> dict[str, int]:
        """How many calls are in each state."""

    async def recent(self, limit: int) -> list[CallSummary]:
        """The trees of the most recent root calls: up to ``limit`` calls, newest roots first."""


# Reading, the same for every SQL backend: given how to fetch the rows of a
# query and the backend's parameter mark ("?" or "%s").
Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]

_RECORD = (
    "id",
    "root_id",
    "parent_id",
    "function",
    "endpoint",
    "state",
    "status",
    "attempt",
    "created_at",
    "finished_at",
    "input",
    "output",
    "error",
    "cancelled_at",
    "frames",
)

_SUMMARY = "id, root_id, parent_id, function, state, status, attempt, created_at, finished_at"


async def read_call(fetch: Fetch, mark: str, call_id: str) -> CallRecord | None:
    """:meth:`Storage.get`."""
    rows = await fetch(f"SELECT {', '.join(_RECORD)} FROM calls WHERE id = {mark}", (call_id,))
    if not rows:
        return None
    attempts = await fetch(
        "SELECT number, attempt, started_at, finished_at, status, error_type, error_message, "
        f"snapshot_size, traceback FROM attempts WHERE call_id = {mark} ORDER BY number",
        (call_id,),
    )
    children = await fetch(
        f"SELECT id FROM calls WHERE parent_id = {mark} ORDER BY created_at, correlation_id",
        (call_id,),
    )
    return CallRecord(
        **dict(zip(_RECORD, rows[0], strict=True)),
        attempts=tuple(AttemptRecord(*attempt) for attempt in attempts),
        children=tuple(child[0] for child in children),
    )


async def read_counts(fetch: Fetch) -> dict[str, int]:
    """:meth:`Storage.counts`."""
    # On the partial indexes of the states not done (few calls), and the
    # total (the smallest index): not a pass over every row, as GROUP BY is.
    ((total, pending, running, waiting),) = await fetch(
        "SELECT (SELECT COUNT(*) FROM calls), "
        "(SELECT COUNT(*) FROM calls WHERE state = 'pending'), "
        "(SELECT COUNT(*) FROM calls WHERE state = 'running'), "
        "(SELECT COUNT(*) FROM calls WHERE state = 'waiting')",
        (),
    )
    return {
        PENDING: pending,
        RUNNING: running,
        WAITING: waiting,
        DONE: total - pending - running - waiting,
    }


async def read_recent(fetch: Fetch, mark: str, limit: int) -> list[CallSummary]:
    """:meth:`Storage.recent`."""
    rows = await fetch(
        "SELECT c.id, c.root_id, c.parent_id, c.function, c.state, c.status, c.attempt, "
        "c.created_at, c.finished_at FROM calls c JOIN "
        "(SELECT id, created_at FROM calls WHERE parent_id IS NULL "
        f"ORDER BY created_at DESC LIMIT {mark}) roots ON c.root_id = roots.id "
        f"ORDER BY roots.created_at DESC, c.created_at LIMIT {mark}",
        (limit, limit),
    )
    return [CallSummary(*row) for row in rows]


async def read_list(fetch: Fetch, mark: str, query: CallQuery) -> list[CallSummary]:
    """:meth:`Storage.list_calls`: pages by (created_at, id), on the indexes of
    created_at, (function, created_at) and of the failed calls' created_at
    (most calls succeed: an index of every status would cost every write)."""
    where: list[str] = []
    parameters: list[Any] = []

    def condition(sql: str, *values: Any) -> None:
        where.append(sql.replace("?", mark))
        parameters.extend(values)

    if query.state is not None:
        condition("state = ?", query.state)
    if query.status == "failed":
        # (A literal, as in the partial index of failures, which it then uses.)
        condition(f"state = 'done' AND status != {Status.OK.value}")
    elif query.status == Status.OK.value:
        condition("status = ? AND state = 'done'", query.status)
    elif query.status is not None:
        condition(f"status = ? AND state = 'done' AND status != {Status.OK.value}", query.status)
    if query.function is not None:
        condition("function = ?", query.function)
    if query.root_id is not None:
        condition("root_id = ?", query.root_id)
    if query.roots_only:
        condition("parent_id IS NULL")
    if query.since is not None:
        condition("created_at >= ?", query.since)
    if query.until is not None:
        condition("created_at < ?", query.until)
    if query.before is not None:
        created_at, call_id = query.before
        condition(
            "(created_at < ? OR (created_at = ? AND id < ?))", created_at, created_at, call_id
        )
    sql = f"SELECT {_SUMMARY} FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY created_at DESC, id DESC LIMIT {mark}"
    rows = await fetch(sql, (*parameters, query.limit))
    return [CallSummary(*row) for row in rows]


async def read_tree(fetch: Fetch, mark: str, call_id: str, limit: int) -> list[CallSummary]:
    """:meth:`Storage.tree`."""
    rows = await fetch(
        f"WITH RECURSIVE tree(id) AS (SELECT id FROM calls WHERE id = {mark} "
        "UNION ALL SELECT calls.id FROM calls JOIN tree ON calls.parent_id = tree.id) "
        f"SELECT {', '.join('calls.' + c.strip() for c in _SUMMARY.split(','))} "
        f"FROM calls JOIN tree USING (id) ORDER BY calls.created_at, calls.id LIMIT {mark}",
        (call_id, limit),
    )
    return [CallSummary(*row) for row in rows]
