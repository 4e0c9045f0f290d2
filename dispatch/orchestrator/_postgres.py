"""PostgreSQL storage (psycopg 3, async, pooled): several orchestrators, one database.

Every orchestrator process pointed at the same database shares its calls.
PostgreSQL does the distributed part:

- a due call is claimed by one process at a time: ``FOR UPDATE SKIP LOCKED``
  picks rows no other transaction holds, and the claim leases the call to
  its process until an expiry, which the process renews while the attempt
  runs; a process that dies loses its leases to the others (``recover``);
- every transition is guarded by the state, lease owner and run number the
  claimer saw, so an answer that comes after its lease was lost changes
  nothing (the call's row lock serializes the two);
- a parent's counters of children outstanding and results undelivered are
  updated under the parent's row lock, and the test that wakes it runs after,
  in the same transaction, so two children finishing at once on two
  processes cannot both miss waking it;
- a transaction that makes work due at once sends ``NOTIFY dispatch_work``;
  :meth:`PostgresStorage.watch` listens, so idle processes wake at once
  instead of polling;
- migrations run under a transaction-scoped advisory lock, so processes
  starting together apply each one once.

Transactions that PostgreSQL aborts for a deadlock (a parent cancelling its
children while one of them delivers its result to it) or a serialization
failure run again. The schema goes where the connection's ``search_path``
points (``?options=-csearch_path%3Dname`` in the URL for another schema).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool

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
    DatabaseUnavailable,
    Due,
    Finish,
    NewCall,
    Result,
    Retry,
    claimed,
    first_run,
    latest,
    read_call,
    read_counts,
    read_list,
    read_recent,
    read_tree,
)

T = TypeVar("T")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

CHANNEL = "dispatch_work"

MIGRATION_LOCK = 0x64697370  # "disp": the advisory lock migrations take

# The hot operations are functions in the database: each is one statement,
# so one round trip and a transaction that lasts as long as the server needs,
# never as long as a busy event loop takes to send the next statement.
# They are made again, as written here, whenever the database holds another
# definition of them (see FUNCTIONS_DIGEST). Their statements take generic
# plans ({generic}), made once per connection: the plans do not depend on
# the values (ids, batches as JSON), and a connection would otherwise plan
# each statement anew on each of its first five executions before settling
# (measured: the statement of a coroutine's step, 1.3 ms -> 0.9 ms).
_FUNCTIONS = r"""
-- Insert calls due now, from a JSON array of them (see _call): how many
-- were new, and the ids of those inserted claimed. An id that exists is
-- skipped with existing_ok, else it fails the statement. A call with an
-- owner is inserted claimed for it (running, its first attempt leased until
-- lease_until, as dispatch_claim would leave it): no second write of its row.
CREATE FUNCTION dispatch_insert(
    new_calls jsonb, now float8, existing_ok boolean, OUT inserted integer, OUT claimed text[]
) LANGUAGE plpgsql {generic} AS $$
DECLARE
    -- (A lease counts from when the claim happens, as in dispatch_claim.)
    waited float8 := extract(epoch FROM clock_timestamp() - statement_timestamp());
BEGIN
    inserted := 0;
    claimed := '{}';
    IF coalesce(jsonb_array_length(new_calls), 0) = 0 THEN
        RETURN;
    END IF;
    WITH made AS (
        INSERT INTO calls (id, root_id, parent_id, correlation_id, function, endpoint, input,
                           state, due_at, created_at, expires_at, lease_owner, lease_expires,
                           attempt, runs)
        SELECT t.id, t.root, t.parent, t.cid, t.function, t.endpoint,
            decode(t.input, 'base64'),
            CASE WHEN t.owner IS NULL THEN 'pending' ELSE 'running' END, now, now, t.expires,
            t.owner, t.lease_until + waited, (t.owner IS NOT NULL)::integer,
            (t.owner IS NOT NULL)::integer
        FROM jsonb_to_recordset(new_calls) AS t(id text, root text, parent text, cid bigint,
                                                function text, endpoint text, input text,
                                                expires float8, owner text, lease_until float8)
        ON CONFLICT (id) DO NOTHING
        RETURNING calls.id, calls.state
    )
    SELECT count(*), coalesce(array_agg(made.id) FILTER (WHERE made.state = 'running'), '{}')
    INTO inserted, claimed FROM made;
    IF NOT existing_ok AND inserted < jsonb_array_length(new_calls) THEN
        RAISE unique_violation USING MESSAGE = 'a call to create exists already';
    END IF;
END $$;

-- Create root calls, all or none (those with an owner inserted claimed, as
-- dispatch_insert does): the ids claimed. An id that exists names that call
-- (not created again) unless it is of another function or endpoint:
-- SQLSTATE DP409.
CREATE FUNCTION dispatch_create(new_calls jsonb, now float8) RETURNS text[]
LANGUAGE plpgsql {generic} AS $$
DECLARE
    made record;
    conflict record;
    hosted text[];
BEGIN
    SELECT * INTO made FROM dispatch_insert(new_calls, now, true);
    IF made.inserted < jsonb_array_length(new_calls) THEN
        SELECT calls.id, calls.function, calls.endpoint INTO conflict
        FROM calls JOIN jsonb_to_recordset(new_calls)
            AS t(id text, parent text, function text, endpoint text) ON calls.id = t.id
        WHERE (calls.function, calls.endpoint) IS DISTINCT FROM (t.function, t.endpoint)
            OR calls.parent_id IS DISTINCT FROM t.parent
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'dispatch id % names another call (% at %)',
                quote_literal(conflict.id), conflict.function, conflict.endpoint
                USING ERRCODE = 'DP409';
        END IF;
    END IF;
    -- (What this process claimed, or runs in process, nobody else needs to
    -- hear of: see dispatch_hosted_here.)
    IF made.inserted > cardinality(made.claimed) THEN
        hosted := dispatch_hosted_here(now);
        IF cardinality(hosted) = 0 OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(new_calls) AS c
            WHERE NOT c->>'endpoint' = ANY(hosted))
        THEN
            PERFORM pg_notify('dispatch_work', current_setting('dispatch.sender', true));
        END IF;
    END IF;
    RETURN made.claimed;
END $$;

-- Make a waiting call due if it has the results it asked for, or has some
-- and will get no more (no child left running); whether it did.
CREATE FUNCTION dispatch_wake(call_id text, now float8) RETURNS boolean
LANGUAGE plpgsql {generic} AS $$
BEGIN
    UPDATE calls SET state = 'pending', due_at = now
    WHERE id = call_id AND state = 'waiting'
        AND (undelivered >= min_results OR (undelivered > 0 AND outstanding <= 0));
    RETURN FOUND;
END $$;

-- Record a finished child's result for its parent (once: a unique child id)
-- under the parent's row lock, then wake the parent if that is enough.
CREATE FUNCTION dispatch_deliver(
    child text, parent text, result_status integer, result_output bytea,
    result_error bytea, now float8
) RETURNS boolean LANGUAGE plpgsql {generic} AS $$
DECLARE
    n integer;
    ready boolean;
BEGIN
    INSERT INTO results (parent_id, correlation_id, child_id, status, output, error)
    SELECT parent_id, correlation_id, id, result_status, result_output, result_error
    FROM calls WHERE id = child
    ON CONFLICT (child_id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    -- (Most results are not the last one their parent waits for: no second statement.)
    UPDATE calls SET undelivered = undelivered + n, outstanding = outstanding - 1
    WHERE id = parent
    RETURNING state = 'waiting'
        AND (undelivered >= min_results OR (undelivered > 0 AND outstanding <= 0))
    INTO ready;
    RETURN coalesce(ready, false) AND dispatch_wake(parent, now);
END $$;

-- Cancel calls and their descendants that are not done; how many. With
-- notify_parents, a cancelled call's parent that is not itself cancelled
-- receives a "cancelled" error as the call's result.
CREATE FUNCTION dispatch_cancel(roots text[], now float8, notify_parents boolean)
RETURNS integer LANGUAGE plpgsql {generic} AS $$
DECLARE
    ids text[];
    resumed integer;
    cancelled record;
BEGIN
    IF coalesce(cardinality(roots), 0) = 0 THEN
        RETURN 0;
    END IF;
    -- A suspended coroutine (one with a snapshot) is resumed for its cleanup
    -- (at once, or after the answer of the run in flight); the rest is done.
    WITH RECURSIVE tree(id) AS (
        SELECT id FROM calls WHERE id = ANY(roots)
        UNION SELECT calls.id FROM calls JOIN tree ON calls.parent_id = tree.id
    ), done AS (
        UPDATE calls SET state = 'done', status = {cancelled}, error = {cancelled_error},
            finished_at = now, snapshot = NULL, frames = NULL, lease_owner = NULL,
            outstanding = 0
        FROM tree WHERE calls.id = tree.id AND calls.state != 'done' AND calls.snapshot IS NULL
        RETURNING calls.id
    ), cleanup AS (
        UPDATE calls SET cancelled_at = coalesce(cancelled_at, now),
            state = CASE WHEN state = 'running' THEN state ELSE 'pending' END,
            due_at = CASE WHEN state = 'running' THEN due_at ELSE now END
        FROM tree WHERE calls.id = tree.id AND calls.state != 'done'
            AND calls.snapshot IS NOT NULL
        RETURNING calls.id
    )
    SELECT (SELECT array_agg(id) FROM done), (SELECT count(*) FROM cleanup) INTO ids, resumed;
    IF resumed > 0 THEN
        PERFORM pg_notify('dispatch_work', current_setting('dispatch.sender', true));
    END IF;
    IF ids IS NULL THEN
        RETURN resumed;
    END IF;
    FOR cancelled IN
        SELECT id, parent_id FROM calls
        WHERE id = ANY(roots) AND id = ANY(ids) AND parent_id IS NOT NULL
            AND NOT parent_id = ANY(ids)
    LOOP
        IF notify_parents THEN
            IF dispatch_deliver(cancelled.id, cancelled.parent_id, {permanent_error},
                                NULL, {cancelled_error}, now) THEN
                PERFORM pg_notify('dispatch_work', current_setting('dispatch.sender', true));
            END IF;
        ELSE
            UPDATE calls SET outstanding = outstanding - 1 WHERE id = cancelled.parent_id;
        END IF;
    END LOOP;
    RETURN cardinality(ids) + resumed;
END $$;

CREATE FUNCTION dispatch_cancel_children(parent text, now float8)
RETURNS integer LANGUAGE sql AS $$
    SELECT dispatch_cancel(
        ARRAY(SELECT id FROM calls WHERE parent_id = parent AND state != 'done'), now, false)
$$;

-- Claim up to max_calls due pending calls (of one endpoint, or of any) that
-- no other transaction holds, leased to owner; resumes come with the results
-- that arrived for them (at most their max_results), oldest first. With
-- resume_waits, waits that reached their max wait are made due first.
CREATE FUNCTION dispatch_claim(
    owner text, of_endpoint text, max_calls integer, now float8, lease float8,
    resume_waits boolean
) RETURNS TABLE (
    id text, root_id text, parent_id text, function text, endpoint text, input bytea,
    snapshot bytea, attempt integer, runs integer, created_at float8, expires_at float8,
    cancelled_at float8, result_seqs bigint[], result_cids bigint[], result_children text[],
    result_statuses integer[], result_outputs bytea[], result_errors bytea[]
) LANGUAGE plpgsql {generic} AS $$
#variable_conflict use_column
DECLARE
    ids text[];
BEGIN
    IF resume_waits THEN
        UPDATE calls SET state = 'pending', due_at = wait_until
        WHERE calls.id IN (SELECT calls.id FROM calls
                           WHERE state = 'waiting' AND wait_until <= now
                           FOR UPDATE SKIP LOCKED);
    END IF;
    IF max_calls <= 0 THEN
        RETURN;
    END IF;
    IF of_endpoint IS NULL THEN
        ids := ARRAY(SELECT calls.id FROM calls WHERE state = 'pending' AND due_at <= now
                     ORDER BY due_at LIMIT max_calls FOR UPDATE SKIP LOCKED);
    ELSE
        ids := ARRAY(SELECT calls.id FROM calls
                     WHERE state = 'pending' AND endpoint = of_endpoint AND due_at <= now
                     ORDER BY due_at LIMIT max_calls FOR UPDATE SKIP LOCKED);
    END IF;
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE calls SET state = 'running', lease_owner = owner,
            -- From when the claim happens: this statement may have waited
            -- for row locks since it was sent.
            lease_expires = now + lease
                + extract(epoch FROM clock_timestamp() - statement_timestamp()),
            attempt = attempt + 1, runs = runs + 1
        WHERE calls.id = ANY(ids)
        RETURNING calls.*
    )
    SELECT c.id, c.root_id, c.parent_id, c.function, c.endpoint, c.input, c.snapshot,
        c.attempt, c.runs, c.created_at, c.expires_at, c.cancelled_at,
        r.seqs, r.cids, r.children, r.statuses, r.outputs, r.errors
    FROM claimed c LEFT JOIN LATERAL (
        SELECT array_agg(x.seq ORDER BY x.seq) AS seqs,
            array_agg(x.correlation_id ORDER BY x.seq) AS cids,
            array_agg(x.child_id ORDER BY x.seq) AS children,
            array_agg(x.status ORDER BY x.seq) AS statuses,
            array_agg(x.output ORDER BY x.seq) AS outputs,
            array_agg(x.error ORDER BY x.seq) AS errors
        FROM (SELECT * FROM results
              WHERE results.parent_id = c.id AND NOT delivered AND c.snapshot IS NOT NULL
                  AND c.cancelled_at IS NULL
              ORDER BY seq LIMIT coalesce(c.max_results, 1000)) x
    ) r ON true
    ORDER BY c.due_at;
END $$;

-- Apply how an attempt ended (a JSON object, see _completion), guarded by
-- what its claimer saw (state, owner, run); false, and nothing changed, if
-- the claim was lost meanwhile. Its kind: 'finish' (status, output, error),
-- 'retry' (due, status, error, restart, tail_function, tail_input) or
-- 'suspend' (snapshot, min/max results, wait_until, the children, the
-- correlation ids to cancel).
CREATE FUNCTION dispatch_complete(completion jsonb) RETURNS boolean LANGUAGE plpgsql {generic} AS $$
#variable_conflict use_column
DECLARE
    call_id text := completion->>'id';
    owner text := completion->>'owner';
    run integer := completion->>'run';
    attempt_number integer := completion->>'attempt';
    parent text := completion->>'parent';
    now float8 := completion->>'now';
    kind text := completion->>'kind';
    new_status integer := completion->>'status';
    new_output bytea := decode(completion->>'output', 'base64');
    new_error bytea := decode(completion->>'error', 'base64');
    due float8 := completion->>'due';
    restart boolean := completion->>'restart';
    tail_function text := completion->>'tail_function';
    tail_input bytea := decode(completion->>'tail_input', 'base64');
    new_snapshot bytea := decode(completion->>'snapshot', 'base64');
    min_wanted integer := completion->>'min_results';
    max_wanted integer := completion->>'max_results';
    wait_limit float8 := completion->>'wait_until';
    cancel_cids bigint[] := ARRAY(SELECT jsonb_array_elements_text(completion->'cancel'));
    reported integer := completion->>'reported';
    duration float8 := completion->>'duration';
    error_type text := completion->>'error_type';
    error_message text := completion->>'error_message';
    snapshot_size integer := completion->>'snapshot_size';
    delivered_seqs bigint[] := ARRAY(SELECT jsonb_array_elements_text(completion->'delivered'));
    new_frames bytea := decode(completion->>'frames', 'base64');
    error_traceback text := completion->>'traceback';
    cancelling boolean := completion->>'cancelling';
    children jsonb := completion->'children';
    n_delivered integer := cardinality(delivered_seqs);
    due_now boolean := false;
    cancel_time float8;
    ended_children text[];
    ran jsonb;
BEGIN
    -- The transition, guarded by what the claimer saw (and applied in one
    -- statement unless the call was cancelled meanwhile).
    IF kind = 'finish' THEN
        UPDATE calls SET state = 'done', status = new_status, output = new_output,
            error = new_error, finished_at = now, snapshot = NULL, frames = NULL,
            lease_owner = NULL, undelivered = undelivered - n_delivered
        WHERE id = call_id AND state = 'running' AND lease_owner = owner AND runs = run
            AND cancelled_at IS NULL;
    ELSIF kind = 'retry' THEN
        UPDATE calls SET state = 'pending', due_at = due, status = new_status,
            error = new_error, lease_owner = NULL,
            snapshot = CASE WHEN restart THEN NULL ELSE snapshot END, frames = NULL,
            function = coalesce(tail_function, function), input = coalesce(tail_input, input),
            attempt = CASE WHEN tail_function IS NOT NULL THEN 0 ELSE attempt END
        WHERE id = call_id AND state = 'running' AND lease_owner = owner AND runs = run
            AND cancelled_at IS NULL;
    ELSE
        -- The next run is a new step: its attempts count from one again.
        UPDATE calls SET state = 'waiting', snapshot = new_snapshot, frames = new_frames,
            min_results = min_wanted, max_results = max_wanted, wait_until = wait_limit,
            status = new_status, lease_owner = NULL, attempt = 0,
            outstanding = outstanding + coalesce(jsonb_array_length(children), 0),
            undelivered = undelivered - n_delivered
        WHERE id = call_id AND state = 'running' AND lease_owner = owner AND runs = run
            AND cancelled_at IS NULL;
    END IF;
    IF NOT FOUND THEN
        SELECT cancelled_at INTO cancel_time FROM calls
        WHERE id = call_id AND state = 'running' AND lease_owner = owner AND runs = run
        FOR UPDATE;
        IF cancel_time IS NULL THEN
            RETURN false;  -- the claim was lost
        END IF;
        IF kind = 'suspend' AND NOT cancelling THEN
            -- Cancelled while this run went on: resume it at once with the
            -- cancellation, for its cleanup; the calls it asks for are moot.
            UPDATE calls SET state = 'pending', due_at = now, snapshot = new_snapshot,
                frames = new_frames, status = new_status, lease_owner = NULL, attempt = 0
            WHERE id = call_id;
            kind := 'cleanup';
        ELSE
            -- Its cleanup is over, or it was not suspended: done, cancelled.
            kind := 'finish';
            new_status := {cancelled};
            new_output := NULL;
            new_error := {cancelled_error};
            UPDATE calls SET state = 'done', status = new_status, output = NULL,
                error = new_error, finished_at = now, snapshot = NULL, frames = NULL,
                lease_owner = NULL, undelivered = undelivered - n_delivered
            WHERE id = call_id;
        END IF;
    END IF;
    INSERT INTO attempts (call_id, number, attempt, started_at, finished_at, status,
                          error_type, error_message, snapshot_size, traceback)
    VALUES (call_id, run, attempt_number, now - duration, now, reported, error_type,
            error_message, snapshot_size, error_traceback)
    ON CONFLICT (call_id, number) DO UPDATE SET attempt = EXCLUDED.attempt,
        started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
        status = EXCLUDED.status, error_type = EXCLUDED.error_type,
        error_message = EXCLUDED.error_message, snapshot_size = EXCLUDED.snapshot_size,
        traceback = EXCLUDED.traceback;
    IF kind = 'cleanup' THEN
        PERFORM pg_notify('dispatch_work', current_setting('dispatch.sender', true));
        RETURN true;
    END IF;
    IF kind <> 'retry' AND n_delivered > 0 THEN
        UPDATE results SET delivered = true WHERE seq = ANY(delivered_seqs);
    END IF;
    -- Independent calls the function dispatched while running.
    IF (dispatch_insert(completion->'dispatched', now, true)).inserted > 0 THEN
        due_now := true;
    END IF;
    IF kind = 'retry' THEN
        due_now := due_now OR due <= now;
        IF restart THEN
            -- Starting over: what the old run started and received is moot,
            -- and its correlation ids would collide with the new run's.
            PERFORM dispatch_cancel_children(call_id, now);
            UPDATE results SET delivered = true WHERE parent_id = call_id AND NOT delivered;
            UPDATE calls SET undelivered = 0 WHERE id = call_id;
        END IF;
    ELSIF kind = 'suspend' THEN
        -- Children whose first attempt finished before this was recorded
        -- (nothing dispatched) are created done, with that attempt and their
        -- result: one write of their row, not two.
        ran := coalesce(completion->'ran', '[]');
        WITH r AS (
            SELECT t.id AS ran_id, t.attempt, t.now AS ended, t.status, t.output, t.error,
                t.reported, t.duration, t.error_type, t.error_message, t.traceback,
                t.snapshot_size
            FROM {first_run_finishes(ran)}
        ), c AS (
            SELECT * FROM jsonb_to_recordset(children) AS c(id text, root text, cid bigint,
                function text, endpoint text, input text, expires float8)
            JOIN r ON r.ran_id = c.id
        ), made AS (
            INSERT INTO calls (id, root_id, parent_id, correlation_id, function, endpoint,
                               input, state, status, output, error, due_at, created_at,
                               expires_at, finished_at, attempt, runs)
            SELECT c.id, c.root, call_id, c.cid, c.function, c.endpoint,
                decode(c.input, 'base64'), 'done', c.status, decode(c.output, 'base64'),
                decode(c.error, 'base64'), now, now, c.expires, c.ended, c.attempt, 1
            FROM c
            RETURNING calls.id
        ), recorded AS (
            INSERT INTO attempts (call_id, number, attempt, started_at, finished_at, status,
                                  error_type, error_message, snapshot_size, traceback)
            SELECT c.id, 1, c.attempt, c.ended - c.duration, c.ended, c.reported, c.error_type,
                c.error_message, c.snapshot_size, c.traceback
            FROM c
        ), delivered AS (
            INSERT INTO results (parent_id, correlation_id, child_id, status, output, error)
            SELECT call_id, c.cid, c.id,
                CASE WHEN c.status = {cancelled} THEN {permanent_error} ELSE c.status END,
                decode(c.output, 'base64'), decode(c.error, 'base64')
            FROM c
        )
        SELECT coalesce(array_agg(made.id), '{}') INTO ended_children FROM made;
        IF cardinality(ended_children) > 0 THEN
            UPDATE calls SET outstanding = outstanding - cardinality(ended_children),
                undelivered = undelivered + cardinality(ended_children)
            WHERE id = call_id;
            children := (SELECT coalesce(jsonb_agg(value), '[]') FROM jsonb_array_elements(children)
                         WHERE NOT value->>'id' = ANY(ended_children));
            ran := (SELECT coalesce(jsonb_agg(value), '[]') FROM jsonb_array_elements(ran)
                    WHERE NOT value->>'id' = ANY(ended_children));
        END IF;
        IF (dispatch_insert(children, now, false)).inserted > 0 THEN
            due_now := true;
        END IF;
        -- The other first attempts of children that ended before this was recorded.
        IF jsonb_array_length(ran) > 0 THEN
            PERFORM dispatch_complete_many(ran);
        END IF;
        IF cardinality(cancel_cids) > 0 THEN
            PERFORM dispatch_cancel(
                ARRAY(SELECT id FROM calls WHERE parent_id = call_id
                      AND correlation_id = ANY(cancel_cids) AND state != 'done'),
                now, false);
        END IF;
        IF dispatch_wake(call_id, now) THEN
            due_now := true;
        END IF;
    ELSE
        IF run > 1 THEN  -- a first run has no children yet
            -- A finished call's children still running are of no use to anyone.
            PERFORM dispatch_cancel_children(call_id, now);
        END IF;
        IF parent IS NOT NULL
           AND dispatch_deliver(call_id, parent,
                                CASE WHEN new_status = {cancelled} THEN {permanent_error}
                                     ELSE new_status END,
                                new_output, new_error, now) THEN
            due_now := true;
        END IF;
    END IF;
    IF due_now THEN
        -- Other processes hear of it once the claims that follow took what
        -- they could, if anything is left (see dispatch_due_now).
        PERFORM set_config('dispatch.made_due', 'on', true);
    END IF;
    RETURN true;
END $$;

-- Apply a batch of completions (a JSON array); whether each was. The common
-- case is applied to them all at once: calls that finished in their first
-- run (no children to cancel, no results received, nothing dispatched) and
-- were not cancelled meanwhile, whose claim holds. The rest, in order, one
-- by one (dispatch_complete).
CREATE FUNCTION dispatch_complete_many(batch jsonb) RETURNS boolean[]
LANGUAGE plpgsql {generic} AS $$
DECLARE
    applied boolean[] := '{}';
    completion jsonb;
    finished text[];
    finished_parents text[];
    delivered_parents text[];
    latest float8;
BEGIN
    WITH f AS (
        SELECT t.* FROM {first_run_finishes(batch)} AND jsonb_array_length(t.delivered) = 0
    ), done AS (
        UPDATE calls SET state = 'done', status = f.status, output = decode(f.output, 'base64'),
            error = decode(f.error, 'base64'), finished_at = f.now, snapshot = NULL,
            frames = NULL, lease_owner = NULL
        FROM f
        -- ("IS TRUE": not through the index of running calls, which the
        -- planner, with no statistics of a young table, takes for one row,
        -- then reads the whole batch once per running call; by primary key.)
        WHERE calls.id = f.id AND (calls.state = 'running') IS TRUE
            AND calls.lease_owner = f.owner AND calls.runs = f.run
            AND calls.cancelled_at IS NULL
        RETURNING f.*, calls.correlation_id
    ), recorded AS (
        INSERT INTO attempts (call_id, number, attempt, started_at, finished_at, status,
                              error_type, error_message, snapshot_size, traceback)
        SELECT done.id, done.run, done.attempt, done.now - done.duration, done.now,
            done.reported, done.error_type, done.error_message, done.snapshot_size,
            done.traceback
        FROM done
        ON CONFLICT (call_id, number) DO UPDATE SET attempt = EXCLUDED.attempt,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            status = EXCLUDED.status, error_type = EXCLUDED.error_type,
            error_message = EXCLUDED.error_message, snapshot_size = EXCLUDED.snapshot_size,
            traceback = EXCLUDED.traceback
    ), delivered AS (
        -- (Once per child: a unique child id.)
        INSERT INTO results (parent_id, correlation_id, child_id, status, output, error)
        SELECT done.parent, done.correlation_id, done.id,
            CASE WHEN done.status = {cancelled} THEN {permanent_error} ELSE done.status END,
            decode(done.output, 'base64'), decode(done.error, 'base64')
        FROM done WHERE done.parent IS NOT NULL
        ON CONFLICT (child_id) DO NOTHING
        RETURNING results.parent_id
    )
    SELECT ARRAY(SELECT id FROM done),
        ARRAY(SELECT parent FROM done WHERE parent IS NOT NULL),
        ARRAY(SELECT parent_id FROM delivered), (SELECT max(now) FROM done)
    INTO finished, finished_parents, delivered_parents, latest;
    IF cardinality(finished_parents) > 0 THEN
        -- The parents' counters, under their row locks (taken in order, as
        -- any batch takes them), then those that have what they wait for wake.
        PERFORM 1 FROM calls WHERE id = ANY(finished_parents) ORDER BY id FOR UPDATE;
        UPDATE calls SET outstanding = outstanding - n.finished,
            undelivered = undelivered + n.delivered
        FROM (SELECT p.id, count(*) AS finished,
                  (SELECT count(*) FROM unnest(delivered_parents) AS d(id) WHERE d.id = p.id)
                      AS delivered
              FROM unnest(finished_parents) AS p(id) GROUP BY p.id) n
        WHERE calls.id = n.id;
        UPDATE calls SET state = 'pending', due_at = latest
        WHERE id = ANY(finished_parents) AND state = 'waiting'
            AND (undelivered >= min_results OR (undelivered > 0 AND outstanding <= 0));
        IF FOUND THEN
            PERFORM set_config('dispatch.made_due', 'on', true);
        END IF;
    END IF;
    IF cardinality(finished) = jsonb_array_length(batch) THEN
        RETURN array_fill(true, ARRAY[cardinality(finished)]);  -- (the common case)
    END IF;
    FOR completion IN SELECT value FROM jsonb_array_elements(batch) LOOP
        IF completion->>'id' = ANY(finished) THEN
            applied := applied || true;
        ELSE
            applied := applied || dispatch_complete(completion);
        END IF;
    END LOOP;
    RETURN applied;
END $$;

-- The endpoints this process runs in process (an embedded orchestrator's
-- application's: see host). Their calls are its own to run, and others take
-- only those that wait too long, which they look for anyway: calls made due
-- there are no news worth a notification.
CREATE FUNCTION dispatch_hosted_here(now float8) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT ARRAY(SELECT endpoint FROM hosts
                 WHERE sender = current_setting('dispatch.sender', true) AND expires > now)
$$;

-- Whether calls are due at now that no claim of the batch will take: pending
-- on endpoints other than the claims' (skip; a claim's endpoint has none
-- left, or no room, which the next completion there claims), or waiting
-- past their max wait. What this process's engine has left to look for;
-- called after the claims (their count, after, orders it so). If the
-- completions made calls due and any are left, whatever the endpoint (but
-- those this process runs in process), other processes are told (they may
-- have room).
CREATE FUNCTION dispatch_due_now(now float8, skip text[], after bigint) RETURNS boolean
LANGUAGE plpgsql {generic} AS $$
DECLARE
    waits boolean := EXISTS (SELECT 1 FROM calls WHERE state = 'waiting' AND wait_until <= now);
    elsewhere boolean := waits OR EXISTS (
        SELECT 1 FROM calls WHERE state = 'pending' AND due_at <= now AND endpoint <> ALL(skip));
    hosted text[];
BEGIN
    IF current_setting('dispatch.made_due', true) = 'on' THEN
        hosted := dispatch_hosted_here(now);  -- (once: not once per row below)
        IF waits OR EXISTS (SELECT 1 FROM calls WHERE state = 'pending' AND due_at <= now
                            AND NOT endpoint = ANY(hosted))
        THEN
            PERFORM pg_notify('dispatch_work', current_setting('dispatch.sender', true));
        END IF;
    END IF;
    RETURN elsewhere;
END $$;
"""

MIGRATIONS = [
    # 1: calls, the results waiting for their parents, every attempt (the
    # same model as the SQLite backend's schema).
    """
    CREATE TABLE calls (
        id text PRIMARY KEY,
        root_id text NOT NULL,
        parent_id text,
        correlation_id bigint NOT NULL DEFAULT 0,
        function text NOT NULL,
        endpoint text NOT NULL,
        input bytea,
        state text NOT NULL,
        status integer,
        output bytea,
        error bytea,
        attempt integer NOT NULL DEFAULT 0,
        runs integer NOT NULL DEFAULT 0,
        due_at double precision,
        lease_owner text,
        lease_expires double precision,
        snapshot bytea,
        min_results integer,
        max_results integer,
        wait_until double precision,
        created_at double precision NOT NULL,
        expires_at double precision,
        finished_at double precision,
        outstanding integer NOT NULL DEFAULT 0,
        undelivered integer NOT NULL DEFAULT 0
    );
    CREATE INDEX calls_due ON calls (endpoint, due_at) WHERE state = 'pending';
    CREATE INDEX calls_waiting ON calls (wait_until) WHERE state = 'waiting';
    CREATE INDEX calls_running ON calls (lease_expires) WHERE state = 'running';
    CREATE INDEX calls_children ON calls (parent_id, correlation_id);
    CREATE INDEX calls_root ON calls (root_id);
    CREATE INDEX calls_roots_recent ON calls (created_at) WHERE parent_id IS NULL;
    CREATE TABLE results (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        parent_id text NOT NULL,
        correlation_id bigint NOT NULL,
        child_id text NOT NULL UNIQUE,
        status integer NOT NULL,
        output bytea,
        error bytea,
        delivered boolean NOT NULL DEFAULT false
    );
    CREATE INDEX results_undelivered ON results (parent_id, seq) WHERE NOT delivered;
    CREATE TABLE attempts (
        call_id text NOT NULL,
        number integer NOT NULL,
        attempt integer NOT NULL,
        started_at double precision,
        finished_at double precision,
        status integer,
        error_type text,
        error_message text,
        snapshot_size integer,
        PRIMARY KEY (call_id, number)
    );
    """,
    # 2: cancellation with cleanup, where suspended coroutines wait, each
    # attempt's traceback, and the indexes the calls list filters on.
    """
    ALTER TABLE calls ADD COLUMN cancelled_at double precision;
    ALTER TABLE calls ADD COLUMN frames bytea;
    ALTER TABLE attempts ADD COLUMN traceback text;
    CREATE INDEX calls_created ON calls (created_at);
    CREATE INDEX calls_function ON calls (function, created_at);
    CREATE INDEX calls_failed ON calls (created_at) WHERE state = 'done' AND status != 1;
    """,
    # 3: which definition of the functions the database holds (a digest).
    """
    ALTER TABLE schema_version ADD COLUMN functions text;
    """,
    # 4: the endpoints that an orchestrator runs in process (see host).
    """
    CREATE TABLE hosts (
        endpoint text PRIMARY KEY,
        sender text NOT NULL,
        expires double precision NOT NULL
    );
    """,
]


def _first_run_finishes(array: str) -> str:
    """SQL: the completions of the JSON array ``array`` that finished a
    call's first run, dispatched nothing and were not cancelled: those
    applied set-based (by dispatch_complete_many, and as children created
    done by dispatch_complete), with a WHERE clause that more may follow."""
    return f"""jsonb_to_recordset({array}) AS t(
            id text, owner text, run integer, attempt integer, parent text, now float8,
            kind text, status integer, output text, error text, reported integer,
            duration float8, error_type text, error_message text, traceback text,
            snapshot_size integer, delivered jsonb, dispatched jsonb, cancelling boolean)
        WHERE t.kind = 'finish' AND t.run = 1 AND NOT t.cancelling
            AND jsonb_array_length(t.dispatched) = 0"""


FUNCTIONS = (
    "DROP FUNCTION IF EXISTS dispatch_due_now, dispatch_complete_many, dispatch_complete, "
    "dispatch_claim, dispatch_cancel_children, dispatch_cancel, dispatch_deliver, "
    "dispatch_wake, dispatch_create, dispatch_insert, dispatch_hosted_here;"
    + _FUNCTIONS.replace("{generic}", "SET plan_cache_mode = force_generic_plan")
    .replace("{first_run_finishes(batch)}", _first_run_finishes("batch"))
    .replace("{first_run_finishes(ran)}", _first_run_finishes("ran"))
    .replace("{cancelled}", str(CANCELLED))
    .replace("{permanent_error}", str(Status.PERMANENT_ERROR.value))
    .replace("{cancelled_error}", f"'\\x{CANCELLED_ERROR.hex()}'::bytea")
)
"""The functions, made again (dropped first) whenever the database holds
another definition of them (after a migration, or a change to their bodies)."""

FUNCTIONS_DIGEST = hashlib.sha256(FUNCTIONS.encode()).hexdigest()[:16]

_CREATE = "SELECT dispatch_create(%s::jsonb, %s)"

_SENDER = "SELECT set_config('dispatch.sender', %s, false)"

# Each connection compiles a PL/pgSQL function the first time it calls it
# (measured: about 5 ms for dispatch_complete and dispatch_complete_many):
# done as the connection opens, by calls that change nothing (and are
# rolled back all the same), rather than in the first step of a workflow.
_WARM_UP = (
    "SELECT dispatch_complete_many('[]'::jsonb), dispatch_complete('{}'::jsonb), "
    "dispatch_wake('', 0), dispatch_deliver('', '', 0, NULL, NULL, 0), "
    "dispatch_cancel('{}', 0, false), dispatch_due_now(0, '{}', 0), "
    "(SELECT count(*) FROM dispatch_claim('', '', 0, 0, 0, false))"
)

_CLAIM = "SELECT * FROM dispatch_claim(%s, %s, %s, %s, %s, %s)"

# A batch of completions, then the claims they make, in one statement (one
# transaction): the claims refer to the completions' result, so they run after.
_COMPLETE_AND_CLAIM = (
    "WITH completion AS MATERIALIZED (SELECT dispatch_complete_many(%s::jsonb) AS applied), "
    "claimed AS MATERIALIZED (SELECT w.i, c.* FROM completion, jsonb_to_recordset(%s::jsonb) "
    "AS w(i integer, owner text, endpoint text, n integer, now float8, lease float8), "
    "LATERAL dispatch_claim(w.owner, w.endpoint, CASE WHEN completion.applied IS NULL "
    "THEN 0 ELSE w.n END, w.now, w.lease, false) AS c), "
    "more AS MATERIALIZED (SELECT dispatch_due_now(%s, ARRAY(SELECT w.endpoint FROM "
    "jsonb_to_recordset(%s::jsonb) AS w(endpoint text)), (SELECT count(*) FROM claimed)) AS due) "
    "SELECT completion.applied, more.due, claimed.* "
    "FROM completion CROSS JOIN more LEFT JOIN claimed ON true"
)

FLUSHERS = 1
"""Batches of completions applied at once, each on a connection of the pool.
One: the completions that arrive while a batch is applied wait for the next,
and go together (measured here: 500 calls dispatched one by one took 15%
less time and CPU than with four batches at once, a fan-out no more)."""
BATCH = 64
"""Completions at most in one batch."""

# A completion waiting to be applied: with its claim's limit and lease, when
# it was asked for, and the future its answer goes to.
_Waiting = tuple[Completion, int, float, float, "asyncio.Future[Completed]"]

_RETRIED = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class PostgresStorage:
    """:class:`Storage` on a PostgreSQL database, shared by any number of orchestrators."""

    exclusive = False

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._opening = asyncio.Lock()
        self._leases: Conn | None = None  # see _keep_leases
        self._leasing = asyncio.Lock()
        # Notifications carry their sender's id: this process knows what it
        # made due (its engine is woken directly), the others do not.
        self._sender = uuid.uuid4().hex
        self._creator: psycopg.Connection[tuple[Any, ...]] | None = None  # see create_sync
        self._creating = threading.Lock()
        self._completions: list[_Waiting] = []  # see _flush
        self._flushers: set[asyncio.Future[None]] = set()
        self._migrated = False

    async def _open(self) -> AsyncConnectionPool[Conn]:
        async with self._opening:
            if self._pool is None:
                # A clear error now rather than a pool timing out later. (The
                # URL may hold a password: the message names host and database.)
                try:
                    probe = await psycopg.AsyncConnection.connect(self.url, connect_timeout=10)
                except psycopg.OperationalError as error:
                    raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {error}") from None
                await probe.close()
                # Autocommit: a statement is its own transaction, as the
                # functions above need; several statements take transaction().
                pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs={"autocommit": True},
                    configure=self._configure,
                    open=False,
                )
                await pool.open(wait=True, timeout=30)
                self._pool = pool
            return self._pool

    async def _configure(self, connection: Conn) -> None:
        """A new connection of the pool: its notifications name this process,
        and the functions are compiled (see _WARM_UP)."""
        await connection.execute(_SENDER, (self._sender,))
        if self._migrated:  # (before, the functions may not exist yet)
            await _warm_up(connection)

    async def _run(self, work: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        """``work`` in one transaction (or, for one statement, without
        ``transaction``: a statement is its own), run again if PostgreSQL
        aborts it for a deadlock (a parent cancelling its children while one
        of them delivers its result to it) or a serialization failure: then
        nothing of it happened."""
        pool = self._pool or await self._open()
        for attempt in range(1, 11):
            try:
                async with pool.connection() as connection:
                    if not transaction:
                        return await work(connection)
                    async with connection.transaction():
                        return await work(connection)
            except _RETRIED:
                if attempt == 10:
                    raise
                await asyncio.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement: its own transaction, which lasts as long
        as the server needs, however busy this process is."""

        async def work(db: Conn) -> list[tuple[Any, ...]]:
            cursor = await db.execute(sql, parameters)
            return await cursor.fetchall()

        return await self._run(work, transaction=False)

    async def migrate(self) -> None:
        async def work(db: Conn) -> None:
            # Held until commit: a second process starting at once waits here,
            # then finds the schema up to date.
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            row = await (await db.execute("SELECT version FROM schema_version")).fetchone()
            version = row[0] if row else 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"the database has schema version {version}, newer than this dispatch "
                    f"({len(MIGRATIONS)}): upgrade dispatch"
                )
            for script in MIGRATIONS[version:]:
                await db.execute(script.encode())
            if row is None:
                await db.execute("INSERT INTO schema_version (version) VALUES (0)")
            cursor = await db.execute("SELECT functions FROM schema_version")
            (functions,) = await cursor.fetchone() or (None,)
            if functions != FUNCTIONS_DIGEST:
                await db.execute(FUNCTIONS.encode())
            if version < len(MIGRATIONS) or functions != FUNCTIONS_DIGEST:
                await db.execute(
                    "UPDATE schema_version SET version = %s, functions = %s",
                    (len(MIGRATIONS), FUNCTIONS_DIGEST),
                )
            await _warm_up(db)

        await self._run(work)
        self._migrated = True

    async def watch(self, wake: Callable[[], None]) -> None:
        connection = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        async with connection:
            await connection.execute(f"LISTEN {CHANNEL}")
            # What was notified while not listening (before, or while reconnecting).
            wake()
            async for notification in connection.notifies():
                if notification.payload != self._sender:
                    wake()

    async def close(self) -> None:
        with self._creating:
            if self._creator is not None:
                self._creator.close()
                self._creator = None
        if self._leases is not None:
            await self._leases.close()
            self._leases = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def create(
        self, calls: Sequence[NewCall], now: float, claim: Claim | None = None
    ) -> list[Claimed]:
        if not calls:
            return []
        with _conflicts():
            rows = await self._fetch(_CREATE, (_creation(calls, now, claim), now))
        return _created_claimed(calls, rows[0][0], now)

    def create_sync(
        self, calls: Sequence[NewCall], now: float, claim: Claim | None = None
    ) -> list[Claimed]:
        """:meth:`create`, from any thread (an embedded application's), on a
        connection of its own: a dispatch does not wait for the event loop.
        With no calls, it only gets that connection ready."""
        with self._creating, _conflicts():
            if self._creator is None or self._creator.closed:
                self._creator = psycopg.connect(self.url, autocommit=True)
                self._creator.execute(_SENDER, (self._sender,))
            row = self._creator.execute(_CREATE, (_creation(calls, now, claim), now)).fetchone()
        return _created_claimed(calls, row[0] if row is not None else [], now)

    async def claim(
        self, owner: str, endpoint: str | None, limit: int, now: float, lease: float
    ) -> list[Claimed]:
        rows = await self._claiming(
            _CLAIM, lambda wait: (owner, endpoint, limit, now, lease + wait, True)
        )
        return [_claimed(row) for row in rows]

    async def complete(self, completion: Completion) -> bool:
        return (await self.complete_and_claim(completion, 0, 0.0)).applied

    async def complete_and_claim(
        self, completion: Completion, limit: int, lease: float
    ) -> Completed:
        # Completions that arrive together are applied together (see _flush).
        future: asyncio.Future[Completed] = asyncio.Future()
        self._completions.append((completion, limit, lease, time.monotonic(), future))
        if len(self._flushers) < FLUSHERS:
            flusher = asyncio.ensure_future(self._flush())
            self._flushers.add(flusher)
        return await future

    async def _flush(self) -> None:
        """Apply waiting completions, up to ``BATCH`` at a time in one
        transaction and one round trip, until none is left. Up to
        ``FLUSHERS`` run at once: alone, a completion is applied at once;
        in a burst (a fan-out's children finishing together), the ones that
        wait are then applied together, and siblings take their parent's row
        lock, and the commit's flush to disk, once per batch, not each."""
        try:
            while self._completions:
                # Applied in the order of the parents' ids: then two batches lock
                # the parents they share in the same order, and cannot deadlock.
                batch = sorted(self._completions[:BATCH], key=_lock_order)
                del self._completions[:BATCH]
                try:
                    outcomes = await self._complete_batch(batch)
                except Exception as error:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for (*_, future), outcome in zip(batch, outcomes, strict=True):
                        if not future.done():
                            future.set_result(outcome)
        finally:
            # At once, not in a callback later: a completion that comes in
            # between must find room for a flusher of its own.
            self._flushers.discard(asyncio.current_task())

    async def _complete_batch(self, batch: list[_Waiting]) -> list[Completed]:
        # The claims: one per owner and endpoint, as wide as the widest asked
        # (each was asked after its attempt released its slot: the latest
        # counts them all), for a lease counted from when the claim happens
        # (see _claiming); what it claims goes to the first that asked.
        claims: dict[tuple[str, str], dict[str, Any]] = {}
        for index, (completion, limit, lease, asked, _) in enumerate(batch):
            key = (completion.owner, completion.call.endpoint)
            lease += time.monotonic() - asked
            claim = claims.setdefault(key, {"i": index, "owner": key[0], "endpoint": key[1]})
            claim["n"] = max(claim.get("n", 0), limit)
            claim["now"] = max(claim.get("now", 0.0), latest(completion))
            claim["lease"] = max(claim.get("lease", 0.0), lease)
        completions = _json([_completion(completion) for completion, *_ in batch])
        now = max(latest(completion) for completion, *_ in batch)
        wanted = _json(list(claims.values()))
        rows = await self._fetch(_COMPLETE_AND_CLAIM, (completions, wanted, now, wanted))
        (applied, more_due, *_), *_ = rows
        outcomes = [Completed(bool(a), [], more_due) for a in applied]
        for row in rows:
            if row[2] is not None:
                outcomes[row[2]].claimed.append(_claimed(row[3:]))
        return outcomes

    async def _claiming(
        self, sql: str, parameters: Callable[[float], Sequence[Any]]
    ) -> list[tuple[Any, ...]]:
        """The rows of a statement that claims calls, given its parameters for
        a lease lengthened by how long this process waited for a connection:
        a lease counts from when the claim happens, not from ``now``."""
        asked = time.monotonic()

        async def work(db: Conn) -> list[tuple[Any, ...]]:
            cursor = await db.execute(sql, parameters(time.monotonic() - asked))
            return await cursor.fetchall()

        return await self._run(work, transaction=False)

    async def renew(self, owner: str, ids: Sequence[str], until: float) -> None:
        if not ids:
            return
        # SKIP LOCKED: a row held by another transaction is being completed,
        # or is a parent receiving a result; the next renewal (a third of a
        # lease later) takes it. Waiting for it could close a cycle of locks
        # with a batch of completions.
        await self._keep_leases(
            "UPDATE calls SET lease_expires = %s WHERE id IN (SELECT id FROM calls "
            "WHERE id = ANY(%s) AND state = 'running' AND lease_owner = %s "
            "FOR UPDATE SKIP LOCKED)",
            (until, list(ids), owner),
        )

    async def recover(self, now: float) -> int:
        # SKIP LOCKED: a call whose row another transaction holds is being
        # completed right now, or recovered by another process. The attempts
        # lost are on record (when they ended, nobody knows), as the attempt
        # counts include them.
        rows = await self._keep_leases(
            "WITH lost AS (UPDATE calls SET state = 'pending', due_at = LEAST(due_at, %s), "
            "lease_owner = NULL WHERE id IN (SELECT id FROM calls "
            "WHERE state = 'running' AND lease_expires <= %s FOR UPDATE SKIP LOCKED) "
            "RETURNING id, runs, attempt), "
            "recorded AS (INSERT INTO attempts (call_id, number, attempt, error_type, "
            "error_message) SELECT id, runs, attempt, 'dispatch.Interrupted', "
            "'the orchestrator running this attempt stopped or lost its lease' FROM lost "
            "ON CONFLICT (call_id, number) DO UPDATE SET attempt = EXCLUDED.attempt, "
            "started_at = NULL, finished_at = NULL, status = NULL, "
            "error_type = EXCLUDED.error_type, error_message = EXCLUDED.error_message, "
            "snapshot_size = NULL) "
            f"SELECT count(*), pg_notify('{CHANNEL}', %s) FROM lost",
            (now, now, self._sender),
        )
        count: int = rows[0][0]
        return count

    async def _keep_leases(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """One statement on the connection kept for leases: when every pooled
        connection is busy with a burst of completions, leases must still be
        renewed, and expired ones recovered, on time."""
        async with self._leasing:
            if self._leases is None or self._leases.closed:
                self._leases = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            cursor = await self._leases.execute(sql, parameters)
            return await cursor.fetchall() if cursor.description else []

    async def host(self, endpoints: Sequence[str], now: float, until: float) -> None:
        # The process is its sender, as its notifications name it. (On the
        # connection kept for leases: a host that keeps up must not look
        # gone while a burst of completions takes every pooled one.)
        await self._keep_leases(
            "WITH mine AS (SELECT unnest(%s::text[]) AS endpoint), "
            "gone AS (DELETE FROM hosts WHERE (sender = %s OR expires <= %s) "
            "AND endpoint NOT IN (SELECT endpoint FROM mine)) "
            "INSERT INTO hosts (endpoint, sender, expires) SELECT endpoint, %s, %s FROM mine "
            "ON CONFLICT (endpoint) DO UPDATE "
            "SET sender = EXCLUDED.sender, expires = EXCLUDED.expires",
            (list(endpoints), self._sender, now, self._sender, until),
        )

    async def due(self, now: float) -> Due:
        # Waiting calls past their max wait are due too: claim() resumes them.
        ((endpoints, earliest, hosts),) = await self._fetch(
            "SELECT ARRAY(SELECT endpoint FROM calls WHERE state = 'pending' AND due_at <= %s "
            "UNION SELECT endpoint FROM calls WHERE state = 'waiting' AND wait_until <= %s), "
            "LEAST((SELECT MIN(due_at) FROM calls WHERE state = 'pending'), "
            "(SELECT MIN(wait_until) FROM calls WHERE state = 'waiting')), "
            "ARRAY(SELECT endpoint FROM hosts WHERE expires > %s AND sender <> %s)",
            (now, now, now, self._sender),
        )
        return Due(endpoints, earliest, frozenset(hosts))

    async def cancel(self, call_id: str, now: float) -> int:
        rows = await self._fetch("SELECT dispatch_cancel(%s, %s, true)", ([call_id], now))
        count: int = rows[0][0]
        return count

    async def get(self, call_id: str) -> CallRecord | None:
        return await read_call(self._fetch, "%s", call_id)

    async def counts(self) -> dict[str, int]:
        return await read_counts(self._fetch)

    async def recent(self, limit: int) -> list[CallSummary]:
        return await read_recent(self._fetch, "%s", limit)

    async def list_calls(self, query: CallQuery) -> list[CallSummary]:
        return await read_list(self._fetch, "%s", query)

    async def tree(self, call_id: str, limit: int) -> list[CallSummary]:
        return await read_tree(self._fetch, "%s", call_id, limit)


async def _warm_up(connection: Conn) -> None:
    async with connection.transaction(force_rollback=True):
        await connection.execute(_WARM_UP)


@contextlib.contextmanager
def _conflicts() -> Iterator[None]:
    """``dispatch_create``'s conflict (SQLSTATE DP409) as :class:`CallConflict`."""
    try:
        yield
    except psycopg.Error as error:
        if error.sqlstate == "DP409":
            raise CallConflict(error.diag.message_primary) from None
        raise


def _creation(calls: Sequence[NewCall], now: float, claim: Claim | None) -> str:
    """Calls to create, as ``dispatch_create`` reads them: the first of the
    claim's endpoint, as far as it has room, created claimed (one write
    each, no claim of their own)."""
    room = claim.limit if claim is not None else 0
    new = []
    for call in calls:
        if claim is not None and room > 0 and call.endpoint == claim.endpoint:
            room -= 1
            new.append(_call(call, claim.owner, now + claim.lease))
        else:
            new.append(_call(call))
    return _json(new)


def _created_claimed(calls: Sequence[NewCall], ids: Sequence[str], now: float) -> list[Claimed]:
    """The calls created claimed, of ``calls``: those ``dispatch_create`` named."""
    taken = set(ids)
    claimed = []
    for call in calls:
        if call.id in taken:
            taken.discard(call.id)  # (an id given twice is one call)
            claimed.append(first_run(call, now))
    return claimed


def _lock_order(waiting: _Waiting) -> tuple[str, str]:
    """Completions lock their call, then its parent: sorted by parent."""
    call = waiting[0].call
    return (call.parent_id or call.id, call.id)


def _json(value: Any) -> str:
    # (No NaN or infinity: PostgreSQL's JSON has none.)
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _base64(data: bytes | None) -> str | None:
    """Bytes in JSON (PostgreSQL decodes them with ``decode(..., 'base64')``)."""
    return None if data is None else base64.b64encode(data).decode("ascii")


def _text(text: str | None) -> str | None:
    """What an endpoint reported, storable: PostgreSQL's text holds no NUL."""
    return text.replace("\x00", "\\x00") if text is not None and "\x00" in text else text


def _call(call: NewCall, owner: str | None = None, lease_until: float = 0.0) -> dict[str, Any]:
    """A call to create, as ``dispatch_insert`` reads it (with an owner:
    created claimed for it, leased until ``lease_until``)."""
    fields = {
        "id": call.id,
        "root": call.root_id,
        "parent": call.parent_id,
        "cid": call.correlation_id,
        "function": call.function,
        "endpoint": call.endpoint,
        "input": _base64(call.input),
        "expires": call.expires_at,
    }
    if owner is not None:
        fields |= {"owner": owner, "lease_until": lease_until}
    return fields


def _completion(completion: Completion) -> dict[str, Any]:
    """``completion`` as ``dispatch_complete`` reads it."""
    call, transition = completion.call, completion.transition
    fields: dict[str, Any] = {
        "id": call.id,
        "owner": completion.owner,
        "run": call.run,
        "attempt": call.attempt,
        "parent": call.parent_id,
        "now": completion.now,
        "status": completion.status,
        "reported": completion.status,
        "duration": completion.duration,
        "error_type": _text(completion.error_type),
        "error_message": _text(completion.error_message),
        "traceback": _text(completion.traceback),
        "snapshot_size": completion.snapshot_size,
        "delivered": [result.seq for result in call.results],
        "cancelling": call.cancelling,
        "dispatched": [_call(each) for each in completion.dispatched],
        "children": [],
    }
    if isinstance(transition, Finish):
        fields |= {
            "kind": "finish",
            "status": transition.status,
            "output": _base64(transition.output),
            "error": _base64(transition.error),
        }
    elif isinstance(transition, Retry):
        fields |= {
            "kind": "retry",
            "status": transition.status,
            "error": _base64(transition.error),
            "due": transition.due_at,
            "restart": transition.restart,
            "tail_function": transition.function,
            "tail_input": _base64(transition.input),
        }
    else:
        started = set(transition.started)
        fields |= {
            "kind": "suspend",
            "snapshot": _base64(transition.snapshot),
            "min_results": transition.min_results,
            "max_results": transition.max_results,
            "wait_until": transition.wait_until,
            "children": [
                _call(child, completion.owner, transition.lease_until)
                if child.id in started
                else _call(child)
                for child in transition.children
            ],
            "cancel": list(transition.cancel),
            "frames": _base64(transition.frames),
            "ran": [_completion(ran) for ran in transition.ran],
        }
    return fields


def _claimed(row: Sequence[Any]) -> Claimed:
    """A claimed call from a row of ``dispatch_claim``, the results of a resume in arrays."""
    seqs = row[12] or ()
    results = tuple(
        Result(*result)
        for result in zip(
            seqs,
            row[13] or (),
            row[14] or (),
            row[15] or (),
            row[16] or (),
            row[17] or (),
            strict=True,
        )
    )
    return claimed(row, results)
