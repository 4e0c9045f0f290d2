"""SQLite storage (stdlib ``sqlite3``): the embedded default.

One process owns a database at a time (a lock file next to it), through one
connection; each operation is a short transaction, which SQLite in WAL mode
commits in tens of microseconds. The operations run on the event loop's
thread, except :meth:`SQLiteStorage.create_sync`, which an embedded
application's threads call directly; a lock keeps each operation whole.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .._status import Status
from ._storage import (
    CANCELLED,
    CANCELLED_ERROR,
    CallConflict,
    CallQuery,
    CallRecord,
    CallSummary,
    Claim,
    Claimed,
    Completed,
    Completion,
    Due,
    Finish,
    NewCall,
    Result,
    Retry,
    Suspend,
    Transition,
    claimed,
    latest,
    read_call,
    read_counts,
    read_list,
    read_recent,
    read_tree,
)

MIGRATIONS = [
    # 1: calls, the results waiting for their parents, and every attempt.
    """
    CREATE TABLE calls (
        id TEXT PRIMARY KEY,
        root_id TEXT NOT NULL,
        parent_id TEXT,
        correlation_id INTEGER NOT NULL DEFAULT 0,
        function TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input BLOB,
        state TEXT NOT NULL,
        status INTEGER,
        output BLOB,
        error BLOB,
        attempt INTEGER NOT NULL DEFAULT 0,
        runs INTEGER NOT NULL DEFAULT 0,
        due_at REAL,
        lease_owner TEXT,
        lease_expires REAL,
        snapshot BLOB,
        min_results INTEGER,
        max_results INTEGER,
        wait_until REAL,
        created_at REAL NOT NULL,
        expires_at REAL,
        finished_at REAL
    );
    CREATE INDEX calls_due ON calls (endpoint, due_at) WHERE state = 'pending';
    CREATE INDEX calls_waiting ON calls (wait_until) WHERE state = 'waiting';
    CREATE INDEX calls_running ON calls (lease_expires) WHERE state = 'running';
    CREATE INDEX calls_children ON calls (parent_id, correlation_id);
    CREATE INDEX calls_root ON calls (root_id);
    CREATE TABLE results (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        parent_id TEXT NOT NULL,
        correlation_id INTEGER NOT NULL,
        child_id TEXT NOT NULL UNIQUE,
        status INTEGER NOT NULL,
        output BLOB,
        error BLOB,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX results_undelivered ON results (parent_id, seq) WHERE delivered = 0;
    CREATE TABLE attempts (
        call_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        status INTEGER,
        error_type TEXT,
        error_message TEXT,
        snapshot_size INTEGER,
        PRIMARY KEY (call_id, number)
    );
    """,
    # 2: per parent, its children not yet done and its results not yet
    # delivered, so waking a parent reads one row instead of counting.
    """
    ALTER TABLE calls ADD COLUMN outstanding INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN undelivered INTEGER NOT NULL DEFAULT 0;
    UPDATE calls SET
        outstanding = (SELECT COUNT(*) FROM calls AS child
                       WHERE child.parent_id = calls.id AND child.state != 'done'),
        undelivered = (SELECT COUNT(*) FROM results
                       WHERE results.parent_id = calls.id AND results.delivered = 0)
    WHERE state != 'done';
    """,
    # 3: fewer pages written per commit. Attempts live in their primary key's
    # B-tree (one tree, not a table and an index); results number themselves
    # by rowid (never deleted, so increasing) without AUTOINCREMENT's
    # sqlite_sequence row to update on every insert.
    """
    CREATE TABLE attempts_3 (
        call_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        status INTEGER,
        error_type TEXT,
        error_message TEXT,
        snapshot_size INTEGER,
        PRIMARY KEY (call_id, number)
    ) WITHOUT ROWID;
    INSERT INTO attempts_3 SELECT * FROM attempts;
    DROP TABLE attempts;
    ALTER TABLE attempts_3 RENAME TO attempts;
    CREATE TABLE results_3 (
        seq INTEGER PRIMARY KEY,
        parent_id TEXT NOT NULL,
        correlation_id INTEGER NOT NULL,
        child_id TEXT NOT NULL UNIQUE,
        status INTEGER NOT NULL,
        output BLOB,
        error BLOB,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO results_3 SELECT * FROM results;
    DROP TABLE results;
    ALTER TABLE results_3 RENAME TO results;
    CREATE INDEX results_undelivered ON results (parent_id, seq) WHERE delivered = 0;
    """,
    # 4: cancellation with cleanup, where suspended coroutines wait, each
    # attempt's traceback, and the indexes the calls list filters on.
    """
    ALTER TABLE calls ADD COLUMN cancelled_at REAL;
    ALTER TABLE calls ADD COLUMN frames BLOB;
    ALTER TABLE attempts ADD COLUMN traceback TEXT;
    CREATE INDEX calls_created ON calls (created_at);
    CREATE INDEX calls_function ON calls (function, created_at);
    CREATE INDEX calls_failed ON calls (created_at) WHERE state = 'done' AND status != 1;
    """,
]

_CLAIMED = (
    "id, root_id, parent_id, function, endpoint, input, snapshot, attempt, runs, created_at, "
    "expires_at, cancelled_at, max_results"
)


class DatabaseLocked(RuntimeError):
    """Another orchestrator process is using this SQLite database."""


class SQLiteStorage:
    """:class:`Storage` on a SQLite file (``":memory:"`` for a throwaway one)."""

    exclusive = True  # the lock file keeps other orchestrators out

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = path
        self._lock_file: int | None = None
        if path != ":memory:":
            self._lock_file = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_file)
                raise DatabaseLocked(
                    f"another dispatch orchestrator is using {path}; stop it first, or use "
                    f"PostgreSQL to run several orchestrators on one database"
                ) from None
        # Autocommit mode: every write below is an explicit BEGIN IMMEDIATE ... COMMIT.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL: readers (the API, the CLI) never block the writer, and commits
        # append to the log instead of rewriting pages.
        self.db.execute("PRAGMA journal_mode = WAL")
        # NORMAL: in WAL mode a commit survives the process being killed (it
        # reached the OS); FULL also survives power loss, at an fsync per commit.
        self.db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        # Another process briefly holding the write lock (a reader checkpointing,
        # the CLI) makes a write wait instead of failing at once.
        self.db.execute("PRAGMA busy_timeout = 5000")
        # Results and snapshots are blobs of a few hundred bytes: keep pages warm.
        self.db.execute("PRAGMA cache_size = -16000")
        self._lock = threading.Lock()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self.db.execute(sql, parameters).fetchall()

    async def migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this dispatch "
                    f"({len(MIGRATIONS)}): upgrade dispatch"
                )
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
            else:
                db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    async def watch(self, wake: Callable[[], None]) -> None:
        return  # no other process writes to this database

    async def close(self) -> None:
        self.db.close()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    async def create(
        self, calls: Sequence[NewCall], now: float, claim: Claim | None = None
    ) -> list[Claimed]:
        return self.create_sync(calls, now, claim)

    def create_sync(
        self, calls: Sequence[NewCall], now: float, claim: Claim | None = None
    ) -> list[Claimed]:
        """:meth:`create`, from any thread (and a claim in the same transaction)."""
        with self._transaction() as db:
            created = _insert(db, calls, now, existing_ok=True)
            for call in calls if created < len(calls) else ():
                row = db.execute(
                    "SELECT function, endpoint, parent_id FROM calls WHERE id = ?", (call.id,)
                ).fetchone()
                if row != (call.function, call.endpoint, call.parent_id):
                    raise CallConflict(
                        f"dispatch id {call.id!r} names another call ({row[0]} at {row[1]})"
                    )
            if claim is None or claim.limit <= 0:
                return []
            return _claim(db, claim.owner, claim.endpoint, claim.limit, now, claim.lease)

    async def claim(
        self, owner: str, endpoint: str | None, limit: int, now: float, lease: float
    ) -> list[Claimed]:
        with self._transaction() as db:
            # Waits that reached their max wait are resumed with what arrived.
            db.execute(
                "UPDATE calls SET state = 'pending', due_at = wait_until "
                "WHERE state = 'waiting' AND wait_until <= ?",
                (now,),
            )
            return _claim(db, owner, endpoint, limit, now, lease)

    async def complete(self, completion: Completion) -> bool:
        return (await self.complete_and_claim(completion, 0, 0.0)).applied

    async def complete_and_claim(
        self, completion: Completion, limit: int, lease: float
    ) -> Completed:
        with self._transaction() as db:
            completed = _complete(db, completion)
            claimed = []
            owner, endpoint, now = completion.owner, completion.call.endpoint, latest(completion)
            if limit > 0:
                claimed = _claim(db, owner, endpoint, limit, now, lease)
            # (Not of this endpoint: it has none left, or no room, which the
            # next completion there claims.)
            (more_due,) = db.execute(
                "SELECT EXISTS (SELECT 1 FROM calls WHERE state = 'pending' AND due_at <= ? "
                "AND endpoint != ?) "
                "OR EXISTS (SELECT 1 FROM calls WHERE state = 'waiting' AND wait_until <= ?)",
                (now, endpoint, now),
            ).fetchone()
        return Completed(completed, claimed, bool(more_due))

    async def renew(self, owner: str, ids: Sequence[str], until: float) -> None:
        if not ids:
            return
        with self._transaction() as db:
            db.executemany(
                "UPDATE calls SET lease_expires = ? "
                "WHERE id = ? AND state = 'running' AND lease_owner = ?",
                [(until, call_id, owner) for call_id in ids],
            )

    async def host(self, endpoints: Sequence[str], now: float, until: float) -> None:
        pass  # (no other orchestrator shares the file: there is nobody to tell)

    async def recover(self, now: float) -> int:
        with self._transaction() as db:
            # The attempts lost are on record (when they ended, nobody knows),
            # as the attempt counts include them.
            db.execute(
                "INSERT OR REPLACE INTO attempts (call_id, number, attempt, error_type, "
                "error_message) SELECT id, runs, attempt, 'dispatch.Interrupted', "
                "'the orchestrator running this attempt stopped or lost its lease' "
                "FROM calls WHERE state = 'running' AND lease_expires <= ?",
                (now,),
            )
            # Due when it was claimed (at the latest, now): recover(inf) must not
            # make a call due at infinity, that is never.
            return db.execute(
                "UPDATE calls SET state = 'pending', due_at = MIN(due_at, ?), lease_owner = NULL "
                "WHERE state = 'running' AND lease_expires <= ?",
                (now, now),
            ).rowcount

    async def due(self, now: float) -> Due:
        with self._lock:
            # Waiting calls past their max wait are due too: claim() resumes them.
            endpoints = self.db.execute(
                "SELECT endpoint FROM calls WHERE state = 'pending' AND due_at <= ? UNION "
                "SELECT endpoint FROM calls WHERE state = 'waiting' AND wait_until <= ?",
                (now, now),
            ).fetchall()
            (earliest,) = self.db.execute(
                "SELECT MIN(t) FROM (SELECT MIN(due_at) AS t FROM calls WHERE state = 'pending' "
                "UNION ALL SELECT MIN(wait_until) FROM calls WHERE state = 'waiting')"
            ).fetchone()
        return Due([row[0] for row in endpoints], earliest)

    async def cancel(self, call_id: str, now: float) -> int:
        with self._transaction() as db:
            return _cancel_trees(db, [call_id], now, notify_parents=True)

    async def get(self, call_id: str) -> CallRecord | None:
        return await read_call(self._fetch, "?", call_id)

    async def counts(self) -> dict[str, int]:
        return await read_counts(self._fetch)

    async def recent(self, limit: int) -> list[CallSummary]:
        return await read_recent(self._fetch, "?", limit)

    async def list_calls(self, query: CallQuery) -> list[CallSummary]:
        return await read_list(self._fetch, "?", query)

    async def tree(self, call_id: str, limit: int) -> list[CallSummary]:
        return await read_tree(self._fetch, "?", call_id, limit)

    async def _fetch(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._query(sql, parameters)


def _claim(
    db: sqlite3.Connection, owner: str, endpoint: str | None, limit: int, now: float, lease: float
) -> list[Claimed]:
    """Claim due pending calls (waits past their max wait are the caller's to make pending)."""
    where = "state = 'pending' AND due_at <= ?"
    params: tuple[Any, ...] = (now,)
    if endpoint is not None:
        where += " AND endpoint = ?"
        params += (endpoint,)
    rows = db.execute(
        f"UPDATE calls SET state = 'running', lease_owner = ?, lease_expires = ?, "
        f"attempt = attempt + 1, runs = runs + 1 WHERE id IN "
        f"(SELECT id FROM calls WHERE {where} ORDER BY due_at LIMIT ?) "
        f"RETURNING {_CLAIMED}",
        (owner, now + lease, *params, limit),
    ).fetchall()
    calls = []
    for row in rows:
        results: tuple[Result, ...] = ()
        if row[6] is not None and row[11] is None:  # a resume: deliver what arrived
            results = tuple(
                Result(*result)
                for result in db.execute(
                    "SELECT seq, correlation_id, child_id, status, output, error "
                    "FROM results WHERE parent_id = ? AND delivered = 0 "
                    "ORDER BY seq LIMIT ?",
                    (row[0], row[12] or 1000),
                )
            )
        calls.append(claimed(row, results))
    return calls


def _complete(db: sqlite3.Connection, completion: Completion) -> bool:
    call, now, transition = completion.call, completion.now, completion.transition
    guard = (call.id, completion.owner, call.run)
    guarded = "WHERE id = ? AND state = 'running' AND lease_owner = ? AND runs = ?"
    # The common case in one statement: the call was not cancelled meanwhile.
    if not _transition(db, completion, transition, guarded + " AND cancelled_at IS NULL", guard):
        row = db.execute("SELECT cancelled_at FROM calls " + guarded, guard).fetchone()
        if row is None:
            return False  # the claim was lost
        if isinstance(transition, Suspend) and not call.cancelling:
            # Cancelled while this run went on: resume it at once with the
            # cancellation, for its cleanup; the calls it asks for are moot.
            db.execute(
                "UPDATE calls SET state = 'pending', due_at = ?, snapshot = ?, frames = ?, "
                "status = ?, lease_owner = NULL, attempt = 0 " + guarded,
                (now, transition.snapshot, transition.frames, completion.status, *guard),
            )
            _record_attempt(db, completion)
            return True
        # Its cleanup is over, or it was not suspended: it is done, cancelled.
        transition = Finish(CANCELLED, error=CANCELLED_ERROR)
        _transition(db, completion, transition, guarded, guard)
    _record_attempt(db, completion)
    if not isinstance(transition, Retry) and call.results:
        db.executemany(
            "UPDATE results SET delivered = 1 WHERE seq = ?",
            [(result.seq,) for result in call.results],
        )
        db.execute(
            "UPDATE calls SET undelivered = undelivered - ? WHERE id = ?",
            (len(call.results), call.id),
        )
    if completion.dispatched:
        _insert(db, completion.dispatched, now, existing_ok=True)
    if isinstance(transition, Retry) and transition.restart:
        # Starting over: what the old run started and received is moot,
        # and its correlation ids would collide with the new run's.
        _cancel_children(db, call.id, now)
        db.execute("UPDATE results SET delivered = 1 WHERE parent_id = ?", (call.id,))
        db.execute("UPDATE calls SET undelivered = 0 WHERE id = ?", (call.id,))
    if isinstance(transition, Suspend):
        _insert(
            db,
            transition.children,
            now,
            started=set(transition.started),
            owner=completion.owner,
            lease_until=transition.lease_until,
        )
        db.execute(
            "UPDATE calls SET outstanding = outstanding + ? WHERE id = ?",
            (len(transition.children), call.id),
        )
        # The first attempts of children that ended before this was recorded.
        for ran in transition.ran:
            _complete(db, ran)
        if transition.cancel:
            marks = ",".join("?" * len(transition.cancel))
            ids = [
                row[0]
                for row in db.execute(
                    f"SELECT id FROM calls WHERE parent_id = ? AND correlation_id "
                    f"IN ({marks}) AND state != 'done'",
                    (call.id, *transition.cancel),
                )
            ]
            _cancel_trees(db, ids, now, notify_parents=False)
        _wake(db, call.id, now)
    elif isinstance(transition, Finish):
        if call.run > 1:  # a first run has no children yet
            # A finished call's children still running are of no use to anyone.
            _cancel_children(db, call.id, now)
        if call.parent_id is not None:
            _deliver(
                db,
                call.id,
                call.parent_id,
                _delivered_status(transition.status),
                transition.output,
                transition.error,
                now,
            )
    return True


def _transition(
    db: sqlite3.Connection,
    completion: Completion,
    transition: Transition,
    guarded: str,
    guard: tuple[Any, ...],
) -> int:
    """Apply ``transition`` to the call if ``guarded`` holds; whether it did
    (then ``_complete`` records the rest)."""
    now = completion.now
    if isinstance(transition, Finish):
        return db.execute(
            "UPDATE calls SET state = 'done', status = ?, output = ?, error = ?, "
            "finished_at = ?, snapshot = NULL, frames = NULL, lease_owner = NULL " + guarded,
            (transition.status, transition.output, transition.error, now, *guard),
        ).rowcount
    if isinstance(transition, Retry):
        tail_call = transition.function is not None
        return db.execute(
            "UPDATE calls SET state = 'pending', due_at = ?, status = ?, error = ?, "
            "lease_owner = NULL, snapshot = CASE WHEN ? THEN NULL ELSE snapshot END, "
            "frames = NULL, "
            "function = COALESCE(?, function), input = COALESCE(?, input), "
            "attempt = CASE WHEN ? THEN 0 ELSE attempt END " + guarded,
            (
                transition.due_at,
                transition.status,
                transition.error,
                transition.restart,
                transition.function,
                transition.input,
                tail_call,
                *guard,
            ),
        ).rowcount
    # The next run is a new step: its attempts count from one again.
    return db.execute(
        "UPDATE calls SET state = 'waiting', snapshot = ?, frames = ?, min_results = ?, "
        "max_results = ?, wait_until = ?, status = ?, lease_owner = NULL, "
        "attempt = 0 " + guarded,
        (
            transition.snapshot,
            transition.frames,
            transition.min_results,
            transition.max_results,
            transition.wait_until,
            completion.status,
            *guard,
        ),
    ).rowcount


def _delivered_status(status: int) -> int:
    """The status a parent receives: a cancelled child is a permanent error."""
    return Status.PERMANENT_ERROR.value if status == CANCELLED else status


def _record_attempt(db: sqlite3.Connection, completion: Completion) -> None:
    call, now = completion.call, completion.now
    db.execute(
        "INSERT OR REPLACE INTO attempts (call_id, number, attempt, started_at, "
        "finished_at, status, error_type, error_message, snapshot_size, traceback) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            call.id,
            call.run,
            call.attempt,
            now - completion.duration,
            now,
            completion.status,
            completion.error_type,
            completion.error_message,
            completion.snapshot_size,
            completion.traceback,
        ),
    )


def _insert(
    db: sqlite3.Connection,
    calls: Sequence[NewCall],
    now: float,
    existing_ok: bool = False,
    started: Collection[str] = (),
    owner: str | None = None,
    lease_until: float = 0.0,
) -> int:
    """Insert ``calls``, due now; how many were new (with ``existing_ok``, an
    id that exists is skipped, else it fails the transaction). Those in
    ``started`` are inserted claimed (running, their first attempt leased to
    ``owner`` until ``lease_until``)."""
    conflict = " ON CONFLICT (id) DO NOTHING" if existing_ok else ""
    return db.executemany(
        "INSERT INTO calls (id, root_id, parent_id, correlation_id, function, endpoint, input, "
        "state, due_at, created_at, expires_at, lease_owner, lease_expires, attempt, runs) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + conflict,
        [
            (
                call.id,
                call.root_id,
                call.parent_id,
                call.correlation_id,
                call.function,
                call.endpoint,
                call.input,
                "running" if call.id in started else "pending",
                now,
                now,
                call.expires_at,
                *((owner, lease_until, 1, 1) if call.id in started else (None, None, 0, 0)),
            )
            for call in calls
        ],
    ).rowcount


def _deliver(
    db: sqlite3.Connection,
    child_id: str,
    parent_id: str,
    status: int,
    output: bytes | None,
    error: bytes | None,
    now: float,
) -> None:
    """Record a finished child's result for its parent (once: a unique child
    id), and make the parent due if that gives it the results it waits for."""
    new = db.execute(
        "INSERT INTO results (parent_id, correlation_id, child_id, status, output, error) "
        "SELECT parent_id, correlation_id, id, ?, ?, ? FROM calls WHERE id = ? "
        "ON CONFLICT (child_id) DO NOTHING",
        (status, output, error, child_id),
    ).rowcount
    db.execute(
        "UPDATE calls SET undelivered = undelivered + ?, outstanding = outstanding - 1 "
        "WHERE id = ?",
        (new, parent_id),
    )
    _wake(db, parent_id, now)


def _wake(db: sqlite3.Connection, call_id: str, now: float) -> None:
    """Make a waiting call due if it has the results it asked for, or has
    some and will get no more (no child left running)."""
    db.execute(
        "UPDATE calls SET state = 'pending', due_at = ? WHERE id = ? AND state = 'waiting' "
        "AND (undelivered >= min_results OR (undelivered > 0 AND outstanding <= 0))",
        (now, call_id),
    )


def _cancel_children(db: sqlite3.Connection, call_id: str, now: float) -> None:
    children = [
        row[0]
        for row in db.execute(
            "SELECT id FROM calls WHERE parent_id = ? AND state != 'done'", (call_id,)
        )
    ]
    _cancel_trees(db, children, now, notify_parents=False)


def _cancel_trees(
    db: sqlite3.Connection, roots: Sequence[str], now: float, *, notify_parents: bool
) -> int:
    """Cancel calls and their descendants that are not done; how many. A
    suspended coroutine (one with a snapshot) is resumed for its cleanup
    (at once, or after the answer of the run in flight), the others are done
    at once. With ``notify_parents``, a call done at once whose parent is
    not itself being cancelled gives the parent a "cancelled" error as its
    result (a coroutine's cleanup gives it when it ends)."""
    if not roots:
        return 0
    marks = ",".join("?" * len(roots))
    rows = db.execute(
        f"WITH RECURSIVE tree(id) AS (SELECT id FROM calls WHERE id IN ({marks}) "
        f"UNION SELECT calls.id FROM calls JOIN tree ON calls.parent_id = tree.id) "
        f"SELECT calls.id, calls.state, calls.snapshot IS NOT NULL "
        f"FROM calls JOIN tree USING (id) WHERE calls.state != 'done'",
        tuple(roots),
    ).fetchall()
    if not rows:
        return 0
    error = CANCELLED_ERROR
    done = [call_id for call_id, _, suspended in rows if not suspended]
    db.executemany(
        "UPDATE calls SET state = 'done', status = ?, error = ?, finished_at = ?, "
        "snapshot = NULL, frames = NULL, lease_owner = NULL, outstanding = 0 WHERE id = ?",
        [(CANCELLED, error, now, call_id) for call_id in done],
    )
    db.executemany(
        "UPDATE calls SET cancelled_at = COALESCE(cancelled_at, ?), "
        "state = CASE WHEN state = 'running' THEN state ELSE 'pending' END, "
        "due_at = CASE WHEN state = 'running' THEN due_at ELSE ? END WHERE id = ?",
        [(now, now, call_id) for call_id, _, suspended in rows if suspended],
    )
    cancelled = set(done)
    for call_id in roots:
        row = db.execute("SELECT parent_id FROM calls WHERE id = ?", (call_id,)).fetchone()
        parent = row[0] if row else None
        if parent is None or parent in cancelled or call_id not in cancelled:
            continue
        if notify_parents:
            _deliver(db, call_id, parent, Status.PERMANENT_ERROR.value, None, error, now)
        else:
            db.execute("UPDATE calls SET outstanding = outstanding - 1 WHERE id = ?", (parent,))
    return len(rows)
