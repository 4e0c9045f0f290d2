"""The endpoint-side scheduler: runs a dispatch function for one request.

A durable coroutine, and every local coroutine a combinator starts, run
concurrently within one request. When one awaits a call, the call is
collected instead of run; when one awaits a group (``gather``, ``any``...),
its calls are collected and its coroutines become local tasks. Anything
else a coroutine awaits (``asyncio.sleep``, an HTTP client) is passed to the
event loop: it runs inside the request and is not a durable step.

When everything runnable waits on calls, the run ends with a Poll: the
snapshot of every suspended task (sealed), the new calls, which calls to
cancel, and how many results to wait for. The orchestrator makes the calls
and resumes the run with their results, routed here to their waiters by
correlation id. When the entry coroutine returns or raises, the run ends
with an Exit.

The scheduling logic touches no I/O: results come in, a response goes out,
and time comes from an injectable clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
import traceback
import types
import uuid
from bisect import bisect_right
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _where, _wire
from ._combinators import ALL, RACE, Combinator
from ._errors import CallError, Cancelled, OutputRejected
from ._function import Call, Function, _outbox
from ._status import Status, status_for_error, status_for_output
from .experimental.durable import dumps as snapshot
from .experimental.durable import durable
from .experimental.durable import loads as restore

SINGLE = 3  # a wait on one call awaited directly

_DONE, _FAILED, _WAITING = 0, 1, 2

# Marks an exception raised at an await because the awaited call failed: if
# it propagates out of the entry coroutine, the failure is the child's, whose
# retries are already spent, so the parent is not retried for it.
FAILED_CALL_MARK = "__dispatch_failed_call__"


class _Wait:
    """What a suspended task waits on: one call, or a group."""

    __slots__ = ("base", "children", "kind", "outcomes", "pending")

    def __init__(self, kind: int, base: int, size: int) -> None:
        self.kind = kind
        #: Correlation ids base .. base + size - 1, one per awaitable.
        self.base = base
        #: Per awaitable: None while pending, else (ok, value or exception).
        self.outcomes: list[tuple[bool, Any] | None] = [None] * size
        self.pending = size
        #: The local task running each awaitable that is not a remote call.
        self.children: dict[int, int] = {}

    def to_state(self) -> list[Any]:
        return [self.kind, self.base, self.outcomes, self.pending, self.children]

    @classmethod
    def from_state(cls, data: list[Any]) -> _Wait:
        wait = cls.__new__(cls)
        wait.kind, wait.base, wait.outcomes, wait.pending, wait.children = data
        return wait

    def settle(self, index: int, ok: bool, value: Any) -> tuple[bool, Any] | None:
        """Record one outcome; the group's outcome once it is decided, else None."""
        if self.outcomes[index] is not None:
            return None
        self.outcomes[index] = (ok, value)
        self.pending -= 1
        kind = self.kind
        if kind in (SINGLE, RACE):
            return (ok, value)
        if kind == ALL:
            if not ok:
                return (False, value)
            if self.pending == 0:
                return (True, [outcome[1] for outcome in self.outcomes if outcome is not None])
            return None
        # ANY
        if ok:
            return (True, value)
        if self.pending == 0:
            errors = [outcome[1] for outcome in self.outcomes if outcome is not None]
            group = BaseExceptionGroup("every awaitable of dispatch.any failed", errors)
            if all(hasattr(error, FAILED_CALL_MARK) for error in errors):
                setattr(group, FAILED_CALL_MARK, Status.PERMANENT_ERROR.value)
            return (False, group)
        return None

    def needed(self) -> int:
        """How many more remote results this wait needs before it can be decided."""
        remote_pending = sum(
            1
            for index, outcome in enumerate(self.outcomes)
            if outcome is None and index not in self.children
        )
        if self.kind == ALL:
            return remote_pending
        return min(1, remote_pending)


class _Task:
    """A coroutine of this run: the entry one, or a local child of a group."""

    __slots__ = ("coro", "error", "id", "index", "parent", "value", "wait")

    def __init__(self, task_id: int, coro: Any, parent: int, index: int) -> None:
        self.id = task_id
        self.coro = coro
        self.parent = parent  # -1 for the entry coroutine
        self.index = index
        self.wait: _Wait | None = None
        self.value: Any = None
        self.error: BaseException | None = None


class Scheduler:
    """Runs one request of a dispatch function; see the module docstring."""

    def __init__(
        self,
        sealer: _wire.Sealer,
        clock: Callable[[], float] = time.time,
        max_wait: float = 60.0,
        max_results: int = 1000,
        *,
        where: bool = True,
        redact: str = _where.DEFAULT_REDACT,
    ) -> None:
        self.sealer = sealer
        self.clock = clock
        self.max_wait = max_wait
        self.max_results = max_results
        #: Send with each Poll the description of where the run waits
        #: (``dispatch._where``), its locals redacted by the patterns of ``redact``.
        self.where = where
        self.redact = redact

    async def run(
        self, function: Function[Any, Any], request: _wire.RunRequest
    ) -> _wire.RunResponse:
        """Run (or resume) ``function`` for ``request``; never raises for user errors."""
        run = _Run(self, request)
        token = _outbox.set(run.dispatch_later)
        try:
            if not function.is_async:
                return await run.run_sync(function)
            return await run.run_async(function)
        finally:
            _outbox.reset(token)


class _Run:
    """The state of one request."""

    def __init__(self, scheduler: Scheduler, request: _wire.RunRequest) -> None:
        self.scheduler = scheduler
        self.sealer = scheduler.sealer
        self.request = request
        self.tasks: dict[int, _Task] = {}
        self.ready: list[_Task] = []
        self.running: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self.cancelled: list[asyncio.Future[tuple[int, Any]]] = []
        self.next_id = 1
        self.calls: list[_wire.Call] = []
        self.cancel: list[int] = []
        self.dispatched: list[_wire.Call] = []
        self.result: tuple[bool, Any] | None = None
        self.cancelling = False
        """The call was cancelled: every remote call fails with Cancelled."""

    # --- fire-and-forget calls made while the function runs -------------------

    def dispatch_later(self, calls: list[Call[Any]]) -> list[str]:
        ids = [uuid.uuid4().hex for _ in calls]
        for call, dispatch_id in zip(calls, ids, strict=True):
            self.dispatched.append(
                _wire.Call(
                    function=call.function,
                    input=_wire.encode_arguments(call.args, call.kwargs, self.sealer),
                    dispatch_id=dispatch_id,
                )
            )
        return ids

    # --- plain functions --------------------------------------------------------

    async def run_sync(self, function: Function[Any, Any]) -> _wire.RunResponse:
        request = self.request
        if request.input is None:
            return self.fail(
                Status.INVALID_ARGUMENT, ValueError("a plain function is never resumed")
            )
        try:
            args, kwargs = _wire.decode_arguments(request.input, self.sealer)
        except Exception as error:
            return self.fail(Status.INVALID_ARGUMENT, error)
        try:
            # In a worker thread, never on the event loop, with this context,
            # so that dispatch() calls made there join this run.
            run = functools.partial(function.__wrapped__, *args, **kwargs)
            loop = asyncio.get_running_loop()
            value = await loop.run_in_executor(_threads(), contextvars.copy_context().run, run)
        except Exception as error:
            return self.exit_error(error)
        return self.exit_value(value)

    # --- durable coroutines -----------------------------------------------------

    async def run_async(self, function: Function[Any, Any]) -> _wire.RunResponse:
        request = self.request
        if request.input is not None:
            try:
                args, kwargs = _wire.decode_arguments(request.input, self.sealer)
            except Exception as error:
                return self.fail(Status.INVALID_ARGUMENT, error)
            try:
                coro = function.__wrapped__(*args, **kwargs)
            except Exception as error:  # wrong arguments: raised by the call itself
                return self.exit_error(error)
            self.start(coro, parent=-1, index=0)
        else:
            assert request.poll is not None
            failure = self.resume(request.poll)
            if failure is not None:
                return failure
        try:
            await self.loop()
        finally:
            if self.result is not None or self.running:
                self.close_all()
            await self.settle_cancelled()
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # The request itself was cancelled (a timeout, a shutdown) while the
            # coroutine awaited something else, and the coroutine made that its
            # failure: not an answer to give.
            raise asyncio.CancelledError
        if self.result is not None:
            ok, value = self.result
            if ok:
                return self.exit_value(value)
            return self.exit_error(value)
        return self.poll()

    def start(self, coro: Any, parent: int, index: int) -> _Task:
        task = _Task(self.next_id if parent >= 0 else 0, coro, parent, index)
        if parent >= 0:
            self.next_id += 1
        self.tasks[task.id] = task
        self.ready.append(task)
        return task

    async def loop(self) -> None:
        """Run ready tasks until every task waits on calls or the entry one is done."""
        while self.result is None:
            if len(self.ready) == 1 and not self.running:
                task = self.ready.pop()
                self.handle(task, await _drive(task.coro, task.value, task.error))
                continue
            for task in self.ready:
                self.running[task.id] = asyncio.ensure_future(
                    _drive(task.coro, task.value, task.error)
                )
            self.ready.clear()
            if not self.running:
                return
            finished, _ = await asyncio.wait(
                self.running.values(), return_when=asyncio.FIRST_COMPLETED
            )
            for task_id, future in list(self.running.items()):
                if future in finished:
                    del self.running[task_id]
                    finished_task = self.tasks.get(task_id)
                    if finished_task is not None:
                        self.handle(finished_task, future.result())

    def handle(self, task: _Task, outcome: tuple[int, Any]) -> None:
        kind, value = outcome
        task.value = task.error = None
        if kind == _WAITING:
            self.wait(task, value)
        else:
            self.finish(task, kind == _DONE, value)

    def wait(self, task: _Task, directive: Any) -> None:
        awaitables: tuple[Any, ...]
        if type(directive) is Call:
            kind, awaitables = SINGLE, (directive,)
        else:
            group: Combinator = directive
            kind, awaitables = group.kind, group.awaitables
            group.awaitables = ()
        wait = _Wait(kind, self.allocate(len(awaitables)), len(awaitables))
        task.wait = wait
        if not awaitables:  # gather() of nothing (any and race refuse nothing)
            self.settle_task(task, (True, []))
            return
        inputs: dict[int, tuple[str, bytes]] = {}
        for index, awaitable in enumerate(awaitables):
            if type(awaitable) is Call and self.cancelling:
                # Cleanup of a cancelled call makes no more calls.
                decided = wait.settle(index, False, Cancelled())
                if decided is not None:
                    task.wait = None
                    self.resume_task(task, decided)
                    return
            elif type(awaitable) is Call:
                try:
                    inputs[index] = (
                        awaitable.function,
                        _wire.encode_arguments(awaitable.args, awaitable.kwargs, self.sealer),
                    )
                except Exception as error:
                    # An argument that cannot be sent fails its call at the
                    # await, before anything of the group is sent or started.
                    decided = wait.settle(index, False, error)
                    if decided is not None:
                        task.wait = None
                        self.resume_task(task, decided)
                        return
        for index, awaitable in enumerate(awaitables):
            if index in inputs:
                function, arguments = inputs[index]
                self.calls.append(
                    _wire.Call(function=function, input=arguments, correlation_id=wait.base + index)
                )
            elif wait.outcomes[index] is None:
                child = self.start(_local(awaitable), parent=task.id, index=index)
                wait.children[index] = child.id

    def allocate(self, size: int) -> int:
        base = self.next_id
        self.next_id += size
        return base

    def finish(self, task: _Task, ok: bool, value: Any) -> None:
        del self.tasks[task.id]
        if task.parent < 0:
            if ok and isinstance(value, Call):
                value = _TailCall(value)
            self.result = (ok, value)
            return
        parent = self.tasks.get(task.parent)
        if parent is None or parent.wait is None:
            return  # the group was already decided and this task cancelled
        decided = parent.wait.settle(task.index, ok, value)
        if decided is not None:
            self.settle_task(parent, decided)

    async def settle_cancelled(self) -> None:
        """Let cancelled local tasks finish unwinding before the request ends."""
        if self.cancelled:
            await asyncio.gather(*self.cancelled, return_exceptions=True)
            self.cancelled.clear()

    def settle_task(self, task: _Task, outcome: tuple[bool, Any]) -> None:
        """``task``'s wait is decided: cancel the rest of its group, make it ready."""
        wait = task.wait
        assert wait is not None
        task.wait = None
        for index, pending in enumerate(wait.outcomes):
            if pending is None:
                child = wait.children.get(index, -1)
                if child < 0:
                    self.cancel.append(wait.base + index)
                elif not self.cancelling:
                    # (When cancelling, every task receives the cancellation
                    # itself, and finishes for its own cleanup.)
                    self.cancel_task(child)
        self.resume_task(task, outcome)

    def resume_task(self, task: _Task, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            task.value = value
        else:
            task.error = value
        self.ready.append(task)

    def cancel_task(self, task_id: int) -> None:
        """Cancel a local task and everything it waits on; its finally blocks run."""
        task = self.tasks.pop(task_id, None)
        if task is None:
            return
        running = self.running.pop(task_id, None)
        if running is not None:
            running.cancel()
            self.cancelled.append(running)
            return
        if task.wait is not None:
            for index, pending in enumerate(task.wait.outcomes):
                if pending is None:
                    child = task.wait.children.get(index, -1)
                    if child >= 0:
                        self.cancel_task(child)
                    else:
                        self.cancel.append(task.wait.base + index)
        with contextlib.suppress(Exception):
            task.coro.close()

    def close_all(self) -> None:
        """The run is over: cancel what still runs, close what is suspended
        (their finally blocks run, as for any cancelled coroutine)."""
        for future in self.running.values():
            future.cancel()
            self.cancelled.append(future)
        self.running.clear()
        for task in list(self.tasks.values()):
            with contextlib.suppress(Exception):
                task.coro.close()
        self.tasks.clear()

    # --- suspending and resuming ------------------------------------------------

    def poll(self) -> _wire.RunResponse:
        request = self.request
        tasks = [
            [
                task.id,
                task.coro,
                task.parent,
                task.index,
                task.wait.to_state() if task.wait else None,
            ]
            for task in self.tasks.values()
        ]
        where = None
        if self.scheduler.where:
            # Before the snapshot, which detaches the frames it reads.
            entry_first = sorted(self.tasks.values(), key=lambda task: task.id)
            coros = [(task.id, task.coro) for task in entry_first]
            where = _where.try_describe(coros, self.scheduler.redact)
        try:
            # Detached: the live coroutines are dropped without running their
            # finally blocks; the snapshot carries them on.
            state = snapshot((self.next_id, tasks), detach=True)
        except Exception as error:
            self.close_all()
            return self.fail(Status.PERMANENT_ERROR, error)
        waits = [task.wait for task in self.tasks.values() if task.wait is not None]
        outstanding = sum(sum(1 for outcome in wait.outcomes if outcome is None) for wait in waits)
        needed = min((wait.needed() for wait in waits), default=1)
        max_results = max(1, min(outstanding, self.scheduler.max_results))
        min_results = max(1, min(needed, max_results))
        max_wait = self.scheduler.max_wait
        if request.expiration_time is not None:
            max_wait = max(1.0, min(max_wait, request.expiration_time - self.scheduler.clock()))
        return _wire.RunResponse(
            status=Status.OK.value,
            poll=_wire.Poll(
                state=self.sealer.seal(state, context=b"state:" + request.dispatch_id.encode()),
                calls=tuple(self.calls),
                cancel=tuple(self.cancel),
                min_results=min_results,
                max_results=max_results,
                max_wait=max_wait,
                where=where,
            ),
            dispatch=tuple(self.dispatched),
        )

    def resume(self, poll: _wire.PollResult) -> _wire.RunResponse | None:
        """Rebuild the tasks from the state and deliver the results; None if all went well."""
        context = b"state:" + self.request.dispatch_id.encode()
        try:
            self.next_id, tasks = restore(self.sealer.open(poll.state, context=context))
        except Exception as error:
            return self.fail(Status.INCOMPATIBLE_STATE, error)
        bases: list[int] = []
        owners: list[_Task] = []
        for task_id, coro, parent, index, wait in tasks:
            task = _Task(task_id, coro, parent, index)
            self.tasks[task_id] = task
            if wait is not None:
                task.wait = _Wait.from_state(wait)
                bases.append(task.wait.base)
                owners.append(task)
        order = sorted(range(len(bases)), key=bases.__getitem__)
        bases = [bases[i] for i in order]
        owners = [owners[i] for i in order]
        if poll.cancelled:
            self.cancel_everything(owners)
            return None
        if poll.error is not None:
            # The previous poll's calls were not made: fail every remote wait.
            poll_error = self.remote_error(poll.error)
            for task in owners:
                if task.wait is not None:
                    self.settle_task(task, (False, poll_error))
        for result in poll.results:
            position = bisect_right(bases, result.correlation_id) - 1
            if position < 0:
                continue
            task = owners[position]
            wait = task.wait
            if wait is None:
                continue
            index = result.correlation_id - wait.base
            if index >= len(wait.outcomes) or index in wait.children:
                continue  # not a remote call of this wait: a stale or unknown result
            if result.error is not None:
                outcome: tuple[bool, Any] = (False, self.remote_error(result.error))
            else:
                try:
                    outcome = (True, _wire.decode_value(result.output or b"\xc0", self.sealer))
                except Exception as error:
                    outcome = (False, error)
            decided = wait.settle(index, *outcome)
            if decided is not None:
                self.settle_task(task, decided)
        return None

    def cancel_everything(self, owners: list[_Task]) -> None:
        """The call was cancelled: each remote call awaited raises Cancelled,
        in the deepest tasks first, so that every task runs its cleanup."""
        self.cancelling = True
        for task in sorted(owners, key=lambda owner: owner.id, reverse=True):
            wait = task.wait
            if wait is None:
                continue
            for index, outcome in enumerate(wait.outcomes):
                if outcome is None and index not in wait.children:
                    decided = wait.settle(index, False, Cancelled())
                    if decided is not None:
                        self.settle_task(task, decided)
                        break

    def remote_error(self, error: _wire.Error) -> BaseException:
        exception: BaseException | None = None
        if error.value is not None:
            try:
                decoded = _wire.decode_value(error.value, self.sealer)
            except Exception:
                decoded = None
            if isinstance(decoded, BaseException):
                exception = decoded
        if exception is None:
            exception = CallError(error.type, error.message, Status(error.status), error.traceback)
        elif error.traceback:
            exception.add_note(f"raised by a dispatch call:\n{error.traceback}")
        with contextlib.suppress(AttributeError):
            setattr(exception, FAILED_CALL_MARK, error.status)
        return exception

    # --- responses --------------------------------------------------------------

    def exit_value(self, value: Any) -> _wire.RunResponse:
        if isinstance(value, _TailCall):
            call = value.call
            return self.respond(
                Status.OK,
                _wire.Exit(
                    tail_call=_wire.Call(
                        function=call.function,
                        input=_wire.encode_arguments(call.args, call.kwargs, self.sealer),
                    )
                ),
            )
        status = status_for_output(value)
        try:
            output = _wire.encode_value(value, self.sealer)
        except Exception as error:
            return self.fail(Status.PERMANENT_ERROR, error)
        if status is not Status.OK:
            rejected = OutputRejected(value, status)
            return self.respond(status, _wire.Exit(error=self.wire_error(status, rejected)))
        return self.respond(status, _wire.Exit(output=output))

    def exit_error(self, error: BaseException) -> _wire.RunResponse:
        status = status_for_error(error)
        if getattr(error, FAILED_CALL_MARK, None) is not None:
            status = Status.PERMANENT_ERROR
        return self.respond(status, _wire.Exit(error=self.wire_error(status, error)))

    def fail(self, status: Status, error: BaseException) -> _wire.RunResponse:
        return self.respond(status, _wire.Exit(error=self.wire_error(status, error)))

    def respond(self, status: Status, exit: _wire.Exit) -> _wire.RunResponse:  # noqa: A002
        return _wire.RunResponse(status=status.value, exit=exit, dispatch=tuple(self.dispatched))

    def wire_error(self, status: Status, error: BaseException) -> _wire.Error:
        kind = type(error)
        try:
            value: bytes | None = _wire.encode_value(error, self.sealer)
        except Exception:
            value = None
        return _wire.Error(
            status=status.value,
            type=f"{kind.__module__}.{kind.__qualname__}",
            message=str(error),
            value=value,
            traceback="".join(traceback.format_exception(error)),
        )


class _TailCall:
    """The entry coroutine returned a call: the call's result becomes its result."""

    __slots__ = ("call",)

    def __init__(self, call: Call[Any]) -> None:
        self.call = call


@durable
async def _awaiting(awaitable: Any) -> Any:
    """A local task awaiting something that is not itself a coroutine."""
    return await awaitable


def _local(awaitable: Any) -> Any:
    if isinstance(awaitable, (types.CoroutineType, types.GeneratorType)):
        return awaitable
    return _awaiting(awaitable)


_THREADS = 32
"""Plain functions running at once in a process, at most. They typically wait
on I/O (the GIL is free meanwhile); the orchestrator's adaptive concurrency
keeps an endpoint from being sent more than it handles well."""
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    """The threads plain functions run in (made on first use)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(_THREADS, thread_name_prefix="dispatch-function")
        return _executor


@types.coroutine
def _drive(
    coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any],
    value: Any,
    error: BaseException | None,
) -> Generator[Any, Any, tuple[int, Any]]:
    """Run ``coro`` until it awaits a call or a group (returned), or finishes.

    Whatever else it awaits is yielded up to the event loop, and what the
    loop sends back (or throws, such as a cancellation) goes back in.
    """
    send, throw = coro.send, coro.throw
    while True:
        try:
            yielded = send(value) if error is None else throw(error)
        except StopIteration as stop:
            return _DONE, stop.value
        except BaseException as exception:
            return _FAILED, exception
        kind = type(yielded)
        if kind is Call or kind is Combinator:
            return _WAITING, yielded
        try:
            value, error = (yield yielded), None
        except BaseException as exception:
            value, error = None, exception
