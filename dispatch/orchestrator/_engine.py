"""The engine: claims due calls, runs their attempts on endpoints, applies the answers.

One attempt: build the RunRequest (the input, or the snapshot and the results
that arrived), sign it, post it to the call's endpoint, and turn the answer
into one storage transition:

- Exit with a result, or a status that is not retried (or out of attempts,
  or past the call's expiration): the call is done; its result goes to its
  parent, which is resumed once it has the results it asked for.
- Exit with a retried status: run again after an exponential backoff with
  jitter. INCOMPATIBLE_STATE starts over from the input; a tail call runs
  the new function in place of the old one.
- Poll: keep the snapshot, create the calls, cancel the losers; resume it
  when ``min_results`` results have arrived or ``max_wait`` has passed. The
  calls' first attempts start before the poll is recorded, and those that
  end within a short window are recorded with it (see _start_children).

A failure to reach the endpoint counts as the status it maps to (TCP_ERROR,
TIMEOUT, HTTP_ERROR...). Each endpoint's concurrency adapts to the statuses
it returns (see ``_limiter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import _logging, _signature, _wire
from .._status import Status
from ._invoker import Invoker, TransportError
from ._limiter import Limiter
from ._metrics import Metrics
from ._storage import (
    CANCELLED,
    CANCELLED_ERROR,
    Claim,
    Claimed,
    Completion,
    Finish,
    NewCall,
    Retry,
    Storage,
    Suspend,
    Transition,
    first_run,
)

logger = logging.getLogger("dispatch.orchestrator")


@dataclass(frozen=True)
class RetryPolicy:
    """When failed calls run again."""

    max_attempts: int = 5
    """Attempts a call gets in all (the first one included)."""
    initial_backoff: float = 0.25
    """Seconds before the second attempt; each later one waits ``multiplier`` times longer."""
    multiplier: float = 2.0
    max_backoff: float = 60.0
    jitter: float = 0.5
    """Each delay is scaled by a random factor in [1 - jitter, 1], so retries spread out."""
    expiration: float = 24 * 3600.0
    """Seconds after which a call is not run again, whatever its attempts."""
    attempt_timeout: float = 300.0
    """Seconds an endpoint has to answer one attempt."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after ``attempt`` (1-based) failed."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * random.random())


LOOK = 1.0
"""Seconds at most between two looks of the engine's loop for due calls."""


HANDOFF = 1.0
"""Seconds that the calls of an endpoint another orchestrator runs in
process (see :meth:`Engine.host`) wait for it before this one takes them:
it runs them without HTTP, the others only take its backlog over."""

INLINE_WINDOW = 0.05
"""Seconds at most that a suspension waits, before it is recorded, for the
first attempts of its children that the engine started (see _start_children)."""


def _increase(completion: Completion) -> bool:
    """Whether an attempt's answer says its endpoint copes (its concurrency
    may increase). A cancelled call's cleanup says nothing of it."""
    if completion.call.cancelling:
        return True
    return completion.status >= 0 and Status(completion.status).concurrency == "increase"


def _due_soon(transition: Transition, now: float) -> bool:
    """Whether ``transition`` makes its call due before the loop looks again
    anyway (a retry's backoff, a wait's max wait), or at once."""
    if isinstance(transition, Retry):
        return transition.due_at < now + LOOK
    if isinstance(transition, Suspend):
        return transition.wait_until < now + LOOK
    return False


def new_id() -> str:
    return uuid.uuid4().hex


class Engine:
    """Runs the calls in ``storage`` on their endpoints until stopped."""

    def __init__(
        self,
        storage: Storage,
        invoker: Invoker,
        signing_key: Ed25519PrivateKey | None,
        *,
        policy: RetryPolicy | None = None,
        lease: float = 30.0,
        exclusive: bool = False,
        clock: Callable[[], float] = time.time,
        limiter: Callable[[], Limiter] = Limiter,
        inline_window: float = INLINE_WINDOW,
    ) -> None:
        self.storage = storage
        self.invoker = invoker
        self.signing_key = signing_key
        self.policy = policy or RetryPolicy()
        self.lease = lease
        self.exclusive = exclusive
        self.clock = clock
        self.inline_window = inline_window
        self.owner = new_id()
        self.limiters: dict[str, Limiter] = {}
        self._new_limiter = limiter
        self._wake = asyncio.Event()
        self._stopping = False
        self._attempts: dict[str, asyncio.Task[None]] = {}
        self.endpoints: set[str] | None = None
        """The endpoints whose calls this engine runs (None: every endpoint)."""
        self._hosting: set[str] = set()
        """The endpoints it records as hosted, on a shared database (see :meth:`host`)."""
        self._turns: dict[str, int] = {}
        self.metrics = Metrics()
        self._running = False

    def limiter(self, endpoint: str) -> Limiter:
        limiter = self.limiters.get(endpoint)
        if limiter is None:  # (setdefault: this may run in two threads at once)
            limiter = self.limiters.setdefault(endpoint, self._new_limiter())
        return limiter

    def reserve(self, endpoint: str, wanted: int) -> Claim | None:
        """From any thread: room for up to ``wanted`` calls of ``endpoint``,
        taken from its limit, for calls claimed as they are created (see
        ``Storage.create``: dispatches through the API, or an embedded
        application's from its own threads); None if there is none. What is
        claimed with it goes to :meth:`adopt`."""
        if not self._running or self._stopping:
            return None  # (before run(), recovery would take the claims back)
        if self.endpoints is not None and endpoint not in self.endpoints:
            return None
        taken = self.limiter(endpoint).take(wanted)
        return Claim(self.owner, endpoint, taken, self.lease) if taken else None

    def adopt(self, claim: Claim | None, claimed: list[Claimed], created: int) -> None:
        """On the event loop: run the calls claimed with ``claim`` (from
        :meth:`reserve`), and the room they did not use goes back; wake up
        unless they are as many as the calls just ``created`` (then there
        is nothing new for a claim of this engine's own)."""
        if claim is not None:
            self.limiter(claim.endpoint).give_back(claim.limit - len(claimed))
            self._start(claimed, acquired=True)
        if len(claimed) < created:
            self.wake()

    async def host(self, endpoints: set[str]) -> None:
        """Run the calls of ``endpoints`` alone, an application's own endpoint
        served in this process. On a database shared with other orchestrators
        it says so (renewed with the leases, withdrawn at stop), and they
        leave those calls to this one unless they wait for more than
        ``HANDOFF`` seconds: running them here costs no HTTP request."""
        self.endpoints = endpoints
        if not self.storage.exclusive:
            self._hosting = endpoints
            await self._record_hosts(endpoints)

    async def _record_hosts(self, endpoints: set[str]) -> None:
        """Record ``endpoints`` as hosted by this engine for a lease (none: withdraw)."""
        now = self.clock()
        try:
            await self.storage.host(sorted(endpoints), now, now + self.lease)
        except Exception:
            logger.exception("recording the endpoints run in this process failed")

    def wake(self) -> None:
        """New work may be due (calls created, results delivered)."""
        self._wake.set()

    async def submit(self, calls: list[NewCall]) -> None:
        """Create root calls and get them running: those of one endpoint are
        claimed as they are created, as far as it has room."""
        endpoints = {call.endpoint for call in calls}
        claim = self.reserve(endpoints.pop(), len(calls)) if len(endpoints) == 1 else None
        claimed: list[Claimed] = []
        try:
            claimed = await self.storage.create(calls, self.clock(), claim)
        finally:
            self.adopt(claim, claimed, len(calls))

    async def run(self) -> None:
        """Claim and run due calls until :meth:`stop`."""
        now = self.clock()
        # With the database to itself, every call left running was this
        # orchestrator's before it stopped or died: run them again at once.
        recovered = await self.storage.recover(float("inf") if self.exclusive else now)
        if recovered:
            logger.info("recovered %d interrupted calls", recovered)
        self._running = True
        renewing = asyncio.ensure_future(self._renew_leases())
        watching = asyncio.ensure_future(self._watch())
        try:
            while not self._stopping:
                self._wake.clear()
                now = self.clock()
                due = await self.storage.due(now)
                claimed = await self._fill(now, due.endpoints, due.hosts)
                await self._sleep(claimed, now, due.next)
        finally:
            self._running = False
            renewing.cancel()
            watching.cancel()

    async def _watch(self) -> None:
        """Wake up when other orchestrator processes make work due."""
        while True:
            try:
                await self.storage.watch(self.wake)
                return
            except Exception:
                logger.exception("watching the database for new work failed; retrying in 1 s")
                await asyncio.sleep(1.0)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let attempts in flight finish (up to ``grace`` seconds)."""
        self._stopping = True
        self.wake()
        if self._attempts:
            await asyncio.wait(list(self._attempts.values()), timeout=grace)
        for task in self._attempts.values():
            task.cancel()
        # Wait for the cancelled ones too: once stopped, nothing may touch the storage.
        if self._attempts:
            await asyncio.wait(list(self._attempts.values()))
        if self._hosting:
            await self._record_hosts(set())  # the others take its calls at once

    async def _sleep(self, claimed: bool, filled: float, due: float | None) -> None:
        """Until new work may be due: a wake-up, or the next due time.
        ``claimed``: whether the fill at time ``filled`` claimed anything;
        ``due``: the earliest due time then (before that fill)."""
        if due is None or (due <= filled and not claimed):
            # Nothing due, or due when we filled but no endpoint had room: an
            # attempt finishing (or new calls) will wake us.
            timeout = LOOK
        else:
            timeout = min(LOOK, max(0.0, due - self.clock()))
        if timeout <= 0:
            await asyncio.sleep(0)  # let the attempts just started run
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _fill(self, now: float, endpoints: list[str], hosts: frozenset[str]) -> bool:
        """Claim due calls for every endpoint with room; whether any were
        claimed. Of an endpoint another process hosts (see :meth:`host`),
        only those due ``HANDOFF`` seconds ago (leased all the same from now)."""
        claimed_any = False
        for endpoint in endpoints:
            if self.endpoints is not None and endpoint not in self.endpoints:
                continue
            limiter = self.limiter(endpoint)
            free = limiter.available()
            if not free:
                continue
            handoff = HANDOFF if endpoint in hosts else 0.0
            claimed = await self.storage.claim(
                self.owner, endpoint, free, now - handoff, self.lease + handoff
            )
            self._start(claimed)
            claimed_any = claimed_any or bool(claimed)
        return claimed_any

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if self._hosting and not self._stopping:  # (not after stop withdrew them)
                await self._record_hosts(self._hosting)
            try:
                await self.storage.renew(
                    self.owner, list(self._attempts), self.clock() + self.lease
                )
                # Leases that expired all the same (an answer that could not be
                # recorded, an orchestrator that died) make their calls due again.
                recovered = await self.storage.recover(self.clock())
                if recovered:
                    logger.info("%d calls whose lease expired are due again", recovered)
                    self.wake()
            except Exception:
                logger.exception("renewing leases failed")

    async def _attempt(
        self,
        call: Claimed,
        running: asyncio.Future[Completion] | None = None,
        recorded: asyncio.Future[bool] | None = None,
    ) -> None:
        """Run an attempt of ``call`` and record how it ended. A child's first
        attempt that its parent's suspension started (see _start_children)
        comes ``running``, and is recorded once that suspension, which creates
        the call, is: dropped if it was not (``recorded`` is then False)."""
        _logging.dispatch_id.set(call.id)  # for this attempt's task: its log lines name the call
        started = self.clock()
        limiter = self.limiter(call.endpoint)
        released = False
        wake = True
        recording: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            completion = await (running if running is not None else self._run(call, started))
            limiter.release(_increase(completion))
            released = True
            if recorded is not None and not await recorded:
                wake = False
                return  # no such call: the suspension that made it was not recorded
            children: list[tuple[Claimed, asyncio.Future[Completion]]] = []
            if isinstance(completion.transition, Suspend):
                completion, children = await self._start_children(call, completion)
            for child, attempt in children:  # (recorded after the suspension)
                self._attempts[child.id] = asyncio.ensure_future(
                    self._attempt(child, attempt, recording)
                )
            # What this answer made due on the endpoint starts at once, as far
            # as the endpoint has room.
            done = await self.storage.complete_and_claim(
                completion, limiter.available(), self.lease
            )
            recording.set_result(done.applied)
            self.metrics.completed(completion, applied=done.applied)
            if isinstance(completion.transition, Suspend):
                for ran in completion.transition.ran:
                    self.metrics.completed(ran, applied=done.applied)
            self._start(done.claimed)
            # The claim above took what this answer made due on its endpoint,
            # as far as there was room (the next completion there takes the
            # rest); the loop looks for calls due elsewhere, and for a retry's
            # or a wait's due time that comes before it would look again anyway.
            wake = done.more_due or _due_soon(completion.transition, completion.now)
            if not done.applied:
                logger.info("call %s: lost its claim; its answer was dropped", call.id)
        except Exception:
            logger.exception(
                "call %s: attempt %d failed in the orchestrator", call.id, call.attempt
            )
        finally:
            if not recording.done():
                recording.set_result(False)
            # Unless the call already runs again here (a resume claimed while
            # this attempt was finishing), whose lease must be kept.
            if self._attempts.get(call.id) is asyncio.current_task():
                del self._attempts[call.id]
            if not released:
                limiter.release(False)
            if wake:
                self.wake()

    async def _start_children(
        self, call: Claimed, completion: Completion
    ) -> tuple[Completion, list[tuple[Claimed, asyncio.Future[Completion]]]]:
        """Start the first attempts of the children that ``completion``
        suspends ``call`` for, as far as their endpoints have room (and more
        as attempts end and leave room), before the suspension is recorded;
        the suspension, those children and how the attempts that ended
        meanwhile did are then recorded in one transaction, which makes the
        parent due at once if they gave it the results it waits for. Waits up
        to ``inline_window`` seconds (never past its max wait), or until they
        did: a crash before that transaction loses those attempts (the parent
        runs again from its last snapshot, and makes its children again),
        never more. The completion to record, and the attempts still running
        (of calls it creates claimed, each recorded once it is)."""
        suspend = completion.transition
        assert isinstance(suspend, Suspend)
        if call.cancelling or suspend.cancel or self._stopping:
            return completion, []
        now = self.clock()
        attempts: dict[asyncio.Future[Completion], Claimed] = {}
        ended: set[asyncio.Future[Completion]] = set()  # with an answer, released
        seen = 0  # attempts that ended, with an answer or not
        # Each attempt says when it ends (one callback each: waiting on all
        # of them again after each end would cost as many as there are).
        just_ended: list[asyncio.Future[Completion]] = []
        any_ended = asyncio.Event()

        def on_end(attempt: asyncio.Future[Completion]) -> None:
            just_ended.append(attempt)
            any_ended.set()

        unstarted = [
            child
            for child in suspend.children
            if self.endpoints is None or child.endpoint in self.endpoints
        ]

        def start() -> None:
            """Start as many of the children not started yet as there is room for."""
            nonlocal unstarted
            left = []
            for child in unstarted:
                if self.limiter(child.endpoint).take(1):
                    claimed = first_run(child, now)
                    attempt = asyncio.ensure_future(self._run(claimed, now))
                    attempt.add_done_callback(on_end)
                    attempts[attempt] = claimed
                else:
                    left.append(child)
            unstarted = left

        start()
        if not attempts:
            return completion, []
        deadline = time.monotonic() + min(self.inline_window, suspend.wait_until - now)
        try:
            while seen < len(attempts) and seen < suspend.min_results:
                if not just_ended:
                    any_ended.clear()
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await any_ended.wait()
                    if not just_ended:
                        break
                # Their room goes to the children not started yet (an attempt
                # that failed is released as it is recorded, by _attempt).
                for attempt in just_ended:
                    if attempt.exception() is None:
                        ended.add(attempt)
                        self.limiter(attempts[attempt].endpoint).release(
                            _increase(attempt.result())
                        )
                seen += len(just_ended)
                just_ended.clear()
                start()
        except BaseException:  # (cancelled: stopping) nothing of them will be recorded
            for attempt, claimed in attempts.items():
                if attempt not in ended:
                    attempt.cancel()
                    self.limiter(claimed.endpoint).give_back(1)
            raise
        transition = replace(
            suspend,
            started=tuple(claimed.id for claimed in attempts.values()),
            lease_until=now + self.lease,
            ran=tuple(attempt.result() for attempt in attempts if attempt in ended),
        )
        running = [(claimed, a) for a, claimed in attempts.items() if a not in ended]
        return replace(completion, transition=transition), running

    def _start(self, claimed: list[Claimed], acquired: bool = False) -> None:
        if claimed and not acquired:
            self.limiter(claimed[0].endpoint).acquire(len(claimed))
        for call in claimed:
            self._attempts[call.id] = asyncio.ensure_future(self._attempt(call))

    async def _run(self, call: Claimed, started: float) -> Completion:
        if call.attempt > self.policy.max_attempts:
            # Claimed again after its last attempt died with the orchestrator.
            error = _error(Status.TEMPORARY_ERROR, "dispatch.GaveUp", "no attempts left")
            return self._completion(
                call,
                Finish(Status.TEMPORARY_ERROR.value, error=error),
                started,
                Status.TEMPORARY_ERROR,
            )
        request = _wire.RunRequest(
            function=call.function,
            dispatch_id=call.id,
            root_id=call.root_id,
            parent_id=call.parent_id,
            creation_time=call.created_at,
            expiration_time=call.expires_at,
            attempt=call.attempt,
            input=call.input if call.snapshot is None else None,
            poll=None
            if call.snapshot is None
            else _wire.PollResult(
                state=call.snapshot, results=_results(call), cancelled=call.cancelling
            ),
        )
        body = request.to_msgpack()
        try:
            http_status, content = await self._post(call.endpoint, body)
        except TransportError as failure:
            return self._failed(
                call, started, failure.status, "dispatch.TransportError", str(failure)
            )
        if http_status != 200:
            status = _http_status(http_status)
            message = content.decode("utf-8", "replace")[:1000]
            return self._failed(call, started, status, f"HTTP {http_status}", message)
        try:
            response = _wire.RunResponse.from_msgpack(content)
        except _wire.ProtocolError as error:
            return self._failed(
                call, started, Status.INVALID_RESPONSE, "dispatch.ProtocolError", str(error)
            )
        return self._apply(call, started, response)

    async def _post(self, endpoint: str, body: bytes) -> tuple[int, bytes]:
        """Post a RunRequest to ``endpoint``: one URL, or the URLs of its replicas
        separated by commas, taken in turn; a replica that cannot be reached
        passes the request to the next one."""
        replicas = _replicas(endpoint)
        turn = self._turns.get(endpoint, 0)
        self._turns[endpoint] = turn + 1
        for tried in range(len(replicas)):
            url = replicas[(turn + tried) % len(replicas)] + "/run"
            headers = {"Content-Type": "application/msgpack"}
            if self.signing_key is not None:
                path = urlsplit(url).path
                headers.update(_signature.sign_request(self.signing_key, "POST", path, body))
            try:
                return await self.invoker.post(url, body, headers, self.policy.attempt_timeout)
            except TransportError as failure:
                if failure.sent or tried + 1 == len(replicas):
                    raise
        raise AssertionError("unreachable")

    def _apply(self, call: Claimed, started: float, response: _wire.RunResponse) -> Completion:
        now = self.clock()
        try:
            status = Status(response.status)
        except ValueError:
            status = Status.UNSPECIFIED
        dispatched = tuple(
            NewCall(
                id=child.dispatch_id or new_id(),
                function=child.function,
                endpoint=child.endpoint or call.endpoint,
                input=child.input,
                root_id=child.dispatch_id or new_id(),
                expires_at=now + self.policy.expiration,
            )
            for child in response.dispatch
        )
        if response.poll is not None:
            poll = response.poll
            children = tuple(
                NewCall(
                    id=new_id(),
                    function=child.function,
                    endpoint=child.endpoint or call.endpoint,
                    input=child.input,
                    root_id=call.root_id,
                    parent_id=call.id,
                    correlation_id=child.correlation_id,
                    expires_at=call.expires_at,
                )
                for child in poll.calls
            )
            transition: Transition = Suspend(
                snapshot=poll.state,
                min_results=poll.min_results,
                max_results=poll.max_results,
                wait_until=now + poll.max_wait,
                children=children,
                cancel=poll.cancel,
                frames=poll.where,
            )
            return self._completion(
                call, transition, started, status, snapshot=len(poll.state), dispatched=dispatched
            )
        exit_ = response.exit
        assert exit_ is not None
        if exit_.tail_call is not None:
            tail = exit_.tail_call
            transition = Retry(
                due_at=now,
                status=status.value,
                function=tail.function,
                input=tail.input,
                restart=True,
            )
            return self._completion(call, transition, started, status, dispatched=dispatched)
        error = exit_.error.to_msgpack() if exit_.error is not None else None
        error_type = exit_.error.type if exit_.error is not None else None
        message = exit_.error.message if exit_.error is not None else None
        trace = exit_.error.traceback if exit_.error is not None else None
        transition = self._decide(call, now, status, exit_.output, error)
        return self._completion(
            call,
            transition,
            started,
            status,
            error_type,
            message,
            dispatched=dispatched,
            traceback=trace,
        )

    def _failed(
        self, call: Claimed, started: float, status: Status, error_type: str, message: str
    ) -> Completion:
        error = _error(status, error_type, message)
        transition = self._decide(call, self.clock(), status, None, error)
        return self._completion(call, transition, started, status, error_type, message)

    def _decide(
        self, call: Claimed, now: float, status: Status, output: bytes | None, error: bytes | None
    ) -> Transition:
        if call.cancelling:
            # Its cleanup ran (or failed): it is done, cancelled, whatever it answered.
            logger.info("%s (%s): cancelled; its cleanup is over", call.function, call.id)
            return Finish(CANCELLED, error=CANCELLED_ERROR)
        if status.retry and call.attempt < self.policy.max_attempts:
            restart = status is Status.INCOMPATIBLE_STATE
            delay = 0.0 if restart else self.policy.delay(call.attempt)
            if call.expires_at is None or now + delay < call.expires_at:
                logger.info(
                    "%s (%s): attempt %d: %s%s; %s in %.2fs",
                    call.function,
                    call.id,
                    call.attempt,
                    status.name,
                    _describe(error),
                    "restarting from its input" if restart else "retrying",
                    delay,
                )
                return Retry(due_at=now + delay, status=status.value, error=error, restart=restart)
        if error is not None:
            logger.warning(
                "%s (%s): failed with %s%s after %d attempt%s",
                call.function,
                call.id,
                status.name,
                _describe(error),
                call.attempt,
                "" if call.attempt == 1 else "s",
            )
        if status is Status.OK and output is None:
            output = b"\xc0"  # None
        return Finish(status.value, output=output if error is None else None, error=error)

    def _completion(
        self,
        call: Claimed,
        transition: Transition,
        started: float,
        status: Status,
        error_type: str | None = None,
        message: str | None = None,
        snapshot: int | None = None,
        dispatched: tuple[NewCall, ...] = (),
        traceback: str | None = None,
    ) -> Completion:
        now = self.clock()
        return Completion(
            call=call,
            owner=self.owner,
            transition=transition,
            now=now,
            duration=now - started,
            status=status.value,
            error_type=error_type,
            error_message=message,
            traceback=traceback,
            snapshot_size=snapshot,
            dispatched=dispatched,
        )


@functools.lru_cache(maxsize=1024)
def _replicas(endpoint: str) -> tuple[str, ...]:
    return tuple(url.strip().rstrip("/") for url in endpoint.split(",") if url.strip())


def _results(call: Claimed) -> tuple[_wire.CallResult, ...]:
    results = []
    for result in call.results:
        error = _wire.Error.from_msgpack(result.error) if result.error is not None else None
        results.append(
            _wire.CallResult(
                correlation_id=result.correlation_id,
                dispatch_id=result.child_id,
                output=result.output if error is None else None,
                error=error,
            )
        )
    return tuple(results)


def _describe(error: bytes | None) -> str:
    if error is None:
        return ""
    try:
        decoded = _wire.Error.from_msgpack(error)
    except _wire.ProtocolError:
        return ""
    message = decoded.message if len(decoded.message) <= 200 else decoded.message[:200] + "..."
    return f" ({decoded.type}: {message})" if message else f" ({decoded.type})"


def _error(status: Status, error_type: str, message: str) -> bytes:
    return _wire.Error(status=status.value, type=error_type, message=message).to_msgpack()


def _http_status(code: int) -> Status:
    """What an endpoint's non-200 answer counts as."""
    if code == 401:
        return Status.UNAUTHENTICATED
    if code == 403:
        return Status.PERMISSION_DENIED
    if code == 404:
        return Status.NOT_FOUND
    if code in (400, 413, 422):
        return Status.INVALID_ARGUMENT
    if code == 429:
        return Status.THROTTLED
    return Status.HTTP_ERROR  # 5xx and the rest: retried, concurrency reduced
