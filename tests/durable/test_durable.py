"""``@durable`` keeps every behaviour of the undecorated function and adds pickling."""

from __future__ import annotations

import asyncio
import gc
import inspect
import pickle
import sys
import threading
import tracemalloc
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import pytest
from durable_programs import Worker, generator_send, loop, run, run_to, suspend, ticker

from dispatch.experimental.durable import UnpicklableStateError, dumps, durable, loads


async def plain() -> int:
    return 1


def test_returns_the_function_itself() -> None:
    async def coroutine_function() -> None:
        pass

    def generator_function() -> Iterator[int]:
        yield 1

    async def async_generator_function() -> AsyncIterator[int]:
        yield 1

    for function in (coroutine_function, generator_function, async_generator_function):
        assert durable(function) is function
    assert inspect.iscoroutinefunction(coroutine_function)
    assert inspect.isgeneratorfunction(generator_function)
    assert inspect.isasyncgenfunction(async_generator_function)


def test_rejects_what_is_not_a_generator_or_coroutine_function() -> None:
    def sync() -> int:
        return 1

    for value in (sync, 42, print, lambda: None):
        with pytest.raises(TypeError, match="@durable applies to generator functions"):
            durable(value)


def test_objects_are_the_native_ones() -> None:
    coro = loop(2)
    assert inspect.iscoroutine(coro) and type(coro).__name__ == "coroutine"
    assert coro.__name__ == "loop" and coro.__qualname__ == "loop"
    assert repr(coro).startswith("<coroutine object loop at 0x")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
    assert coro.send(None) == 0
    assert inspect.getcoroutinestate(coro) == inspect.CORO_SUSPENDED
    restored = pickle.loads(pickle.dumps(coro))
    assert inspect.getcoroutinestate(restored) == inspect.CORO_SUSPENDED
    assert restored.cr_await is not None and inspect.isgenerator(restored.cr_await)
    assert restored.cr_frame.f_locals["name"] == "alice"
    assert restored.cr_frame is not None and coro.cr_frame is not None
    assert restored.cr_frame.f_lineno == coro.cr_frame.f_lineno
    for obj in (coro, restored):
        obj.close()
        assert inspect.getcoroutinestate(obj) == inspect.CORO_CLOSED


def test_generator_state_send_throw_close() -> None:
    gen = generator_send(3)
    assert inspect.getgeneratorstate(gen) == inspect.GEN_CREATED
    assert next(gen) == "ready"
    assert gen.send("a") == (0, "a")
    restored = pickle.loads(pickle.dumps(gen))
    assert inspect.getgeneratorstate(restored) == inspect.GEN_SUSPENDED
    assert restored.gi_frame.f_locals["received"] == ["a"]
    assert restored.send("b") == (1, "b") == gen.send("b")
    with pytest.raises(KeyError):
        restored.throw(KeyError("x"))
    assert inspect.getgeneratorstate(restored) == inspect.GEN_CLOSED
    gen.close()


def test_async_generator_pickled_between_items() -> None:
    agen = ticker(3)
    items: list[Any] = []

    def next_item(obj: Any, answer: Any) -> Any:
        awaitable = obj.asend(None)
        assert awaitable.send(None) == ("tick", len(items))
        try:
            awaitable.send(answer)
        except StopIteration as stop:
            return stop.value
        raise AssertionError("the async generator did not yield")

    items.append(next_item(agen, "first"))
    restored = pickle.loads(pickle.dumps(agen))
    assert restored.ag_frame is not None and not restored.ag_running
    items.append(next_item(restored, "second"))
    assert items == [(0, "first"), (1, "second")]
    # athrow and aclose reach the restored frame like the original.
    closing = restored.aclose()
    with pytest.raises(StopIteration):
        closing.send(None)
    assert restored.ag_frame is None
    asyncio.run(agen.aclose())


def test_methods_of_every_kind() -> None:
    worker = Worker("w")
    for coro in (worker.work(1), Worker.build("b"), Worker.static(3)):
        coro.send(None)
        restored = pickle.loads(pickle.dumps(coro))
        assert run(restored, 7) == run(coro, 7)
    steps = worker.steps()
    assert next(steps) == "w"
    assert list(pickle.loads(pickle.dumps(steps))) == list(steps) == []


def test_still_runs_under_asyncio() -> None:
    @durable
    async def sleepy(n: int) -> int:
        await asyncio.sleep(0)
        return n + 1

    assert asyncio.run(sleepy(1)) == 2


def test_plain_coroutines_keep_refusing_the_standard_pickler() -> None:
    coro = plain()
    with pytest.raises(TypeError, match="cannot pickle 'coroutine' object"):
        pickle.dumps(coro)
    coro.close()
    gen = (x for x in range(3))
    with pytest.raises(TypeError, match="cannot pickle 'generator' object"):
        pickle.dumps(gen)


def test_unreachable_plain_coroutine_is_named() -> None:
    namespace: dict[str, Any] = {"suspend": suspend, "__name__": __name__}
    exec("async def orphan():\n    return await suspend('orphan')\n", namespace)

    @durable
    async def awaits_orphan() -> Any:
        return await namespace["orphan"]()

    coro = awaits_orphan()
    coro.send(None)
    with pytest.raises(UnpicklableStateError, match=r"cannot snapshot .*orphan.*not reachable"):
        pickle.dumps(coro)
    coro.close()


def test_unpicklable_local_is_named() -> None:
    @durable
    async def holds_lock() -> Any:
        lock = threading.Lock()
        with lock:
            return await suspend("locked")

    coro = holds_lock()
    coro.send(None)
    with pytest.raises(UnpicklableStateError) as error:
        dumps(coro)
    message = str(error.value)
    assert "test_unpicklable_local_is_named.<locals>.holds_lock" in message
    assert "local variable 'lock' holds a _thread.lock" in message
    coro.close()


def test_unpicklable_stack_slot_in_a_nested_frame_is_named() -> None:
    @durable
    async def inner() -> Any:
        return (threading.Event(), await suspend("inner"))

    @durable
    async def outer() -> Any:
        return await inner()

    coro = outer()
    coro.send(None)
    with pytest.raises(UnpicklableStateError) as error:
        pickle.dumps(coro)
    message = str(error.value)
    assert "inner: value-stack slot 0 holds a threading.Event" in message
    assert "awaited by coroutine" in message and "outer" in message
    coro.close()


def test_running_coroutine_cannot_be_snapshotted() -> None:
    @durable
    async def snapshots_itself() -> Any:
        return dumps(coroutine)

    coroutine = snapshots_itself()
    with pytest.raises(UnpicklableStateError, match="while it is running"):
        coroutine.send(None)


def test_finished_coroutine_round_trips_as_finished() -> None:
    coro = loop(1)
    assert run(coro)[-1][0] == "return"
    restored = pickle.loads(pickle.dumps(coro))
    assert inspect.getcoroutinestate(restored) == inspect.CORO_CLOSED
    assert restored.__qualname__ == "loop"


def test_shared_objects_stay_shared() -> None:
    shared: list[int] = []

    @durable
    async def appender(tag: int) -> list[int]:
        shared_list = shared
        shared_list.append(await suspend(tag))
        return shared_list

    first, second = appender(1), appender(2)
    first.send(None)
    second.send(None)
    a, b, again = loads(dumps([first, second, first]))
    assert a is again
    run(a, 10)
    run(b, 20)
    assert a.cr_frame is None and shared == []  # the originals were not touched
    for coro in (first, second):
        coro.close()


def test_a_frame_can_refer_to_itself() -> None:
    @durable
    def selfish() -> Generator[Any, Any, Any]:
        me = yield "who"
        yield me is box[0]

    box: list[Any] = []
    gen = selfish()
    next(gen)
    box.append(gen)
    gen.send(gen)
    restored_box = loads(dumps(box))
    restored = restored_box[0]
    assert restored.gi_frame.f_locals["me"] is restored
    gen.close()


def test_no_leaks_over_ten_thousand_cycles() -> None:
    sentinel = object()

    @durable
    def holder(value: Any) -> Generator[Any, Any, Any]:
        kept = [value]
        yield kept
        yield value

    gen = holder(sentinel)
    next(gen)

    def cycle() -> None:
        # Reading the frame must not keep a reference to the sentinel;
        # restoring must not leak what it creates.
        restored = loads(dumps(gen))
        restored.close()

    for _ in range(1000):
        cycle()
    gc.collect()
    refcount = sys.getrefcount(sentinel)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(10_000):
        cycle()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert sys.getrefcount(sentinel) == refcount
    assert grown < 64 * 1024, f"memory grew by {grown} bytes over 10,000 cycles"
    gen.close()


def test_write_and_read_keep_reference_counts_exact() -> None:
    marker = ["marker"]

    @durable
    def keeps(value: Any) -> Generator[Any, Any, Any]:
        here = value
        yield here
        yield here

    gen: Any = keeps(marker)
    next(gen)
    from dispatch.experimental.durable import _frame
    from dispatch.experimental.durable._snapshot import reduce_generator

    before = sys.getrefcount(marker)
    for _ in range(10_000):
        function, args = reduce_generator(gen)
        fresh = function(*args)
        _frame.discard(fresh)
        del fresh, args
    assert sys.getrefcount(marker) == before
    gen.close()


def test_suspended_mid_loop_resumes_with_the_same_values() -> None:
    coro = loop(5)
    prefix, value = run_to(coro, 3)
    restored = pickle.loads(pickle.dumps(coro))
    locals_ = restored.cr_frame.f_locals
    assert locals_["items"] == [0, 1, 2] and locals_["i"] == 2 and locals_["factor"] == 1.5
    assert run(restored, value) == run(coro, value)
    assert prefix
