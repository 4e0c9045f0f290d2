"""Pickling that snapshots frames: :func:`dumps`, :func:`loads` and the stdlib hook.

:class:`Pickler` knows how to reduce what the standard pickler refuses but a
suspended frame routinely holds: generators and coroutines (snapshotted
recursively, decorated or not), cells (with their identity, so closures keep
sharing variables with the frame), functions that are not reachable by name
(lambdas, nested functions: by code reference plus closure), the awaitables
CPython wraps around coroutines and async generators, and exception chains.

The standard :mod:`pickle` module handles instances of ``@durable`` functions
through a :mod:`copyreg` entry that embeds one :func:`dumps` payload; every
other generator keeps failing as before.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import sys
import threading
from collections.abc import Callable, Iterator
from operator import attrgetter
from types import (
    AsyncGeneratorType,
    CellType,
    CodeType,
    CoroutineType,
    FunctionType,
    GeneratorType,
    SimpleNamespace,
    TracebackType,
)
from typing import Any

from . import _frame
from ._errors import IncompatibleStateError, InvalidStateError, SnapshotError, UnpicklableStateError
from ._identity import CodeRef, code_ref
from ._snapshot import (
    GeneratorLike,
    begin_load,
    detaching_frames,
    discard,
    end_load,
    find_culprit,
    is_durable,
    module_of,
    reduce_generator,
    two_phase_frames,
)

FORMAT_VERSION = 1
"""Version of the snapshot format; bumped by any change to what snapshots contain."""

PYTHON_VERSION = sys.version_info[:2]

_MAGIC = b"\xd5"
_HEADER = _MAGIC + bytes([FORMAT_VERSION, *PYTHON_VERSION])

_FRAME = pickle.FRAME[0]

_GENERATOR_TYPES = (GeneratorType, CoroutineType, AsyncGeneratorType)


async def _probe_coroutine() -> None:
    pass


async def _probe_async_generator() -> Any:
    yield


def _wrapper_types() -> tuple[type, type]:
    coro = _probe_coroutine()
    asend = _probe_async_generator().asend(None)
    try:
        return type(coro.__await__()), type(asend)
    finally:
        coro.close()
        asend.close()


CoroutineWrapperType, AsyncGenASendType = _wrapper_types()


def _make_cell() -> CellType:
    return CellType()


def _fill_cell(cell: CellType, state: tuple[Any]) -> None:
    (cell.cell_contents,) = state


def _reduce_cell(cell: CellType) -> tuple[Any, ...]:
    try:
        contents = cell.cell_contents
    except ValueError:  # an empty cell: a variable not assigned yet
        return (_make_cell, ())
    return (_make_cell, (), (contents,), None, None, _fill_cell)


prepared: dict[Callable[..., Any], tuple[Any, ...]] = {}
"""Reductions of the functions snapshots call on load, filled by dispatch._p."""

reachable: set[FunctionType] = set()
"""Functions found reachable by module + name: the pickler writes them by name
without calling back into Python (see _frame.reduce_dispatch)."""


def _is_reachable(function: FunctionType) -> bool:
    """Whether the standard pickler can write ``function`` by module + name."""
    qualname = function.__qualname__
    if "<" in qualname:
        return False
    obj: Any = sys.modules.get(function.__module__)
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        return False
    if obj is not function:
        return False
    reachable.add(function)
    return True


def _make_function(
    ref: CodeRef,
    closure: tuple[CellType, ...] | None,
    defaults: tuple[Any, ...] | None,
    kwdefaults: dict[str, Any] | None,
) -> FunctionType:
    if not ref.path:
        return ref.function
    function = FunctionType(ref.code, ref.function.__globals__, ref.code.co_name, defaults, closure)
    function.__kwdefaults__ = kwdefaults
    return function


def _reduce_function(function: FunctionType) -> Any:
    if function.__module__ is None or _is_reachable(function):
        return NotImplemented
    ref = code_ref(function.__code__, function, module_of)
    if not ref.path and ref.function is not function:
        raise UnpicklableStateError(
            f"cannot snapshot function {function.__module__}.{function.__qualname__}: it is a "
            f"copy of a reachable function with other state"
        )
    if not ref.path:
        return (_make_function, (ref, None, None, None))
    args = (ref, function.__closure__, function.__defaults__, function.__kwdefaults__)
    return (_make_function, args, function.__dict__ or None)


def _await(coroutine: CoroutineType[Any, Any, Any]) -> Any:
    return coroutine.__await__()


def _asend(agen: AsyncGeneratorType[Any, Any], value: Any, closed: bool) -> Any:
    awaitable = agen.asend(value)
    if closed:
        awaitable.close()
    return awaitable


_ASEND_INIT, _ASEND_CLOSED = 0, 2


def _reduce_coroutine_wrapper(wrapper: object) -> tuple[Any, ...]:
    coroutine, _, _ = _frame.unwrap(wrapper)
    return (_await, (coroutine,))


def _reduce_asend(awaitable: object) -> tuple[Any, ...]:
    # An asend awaitable that has started forwards whatever is sent into it,
    # exactly as a fresh one does: only a pending first value and closing matter.
    agen, value, state = _frame.unwrap(awaitable)
    return (_asend, (agen, value if state == _ASEND_INIT else None, state == _ASEND_CLOSED))


def _rebuild_exception(
    reduced: tuple[Any, ...],
    cause: BaseException | None,
    context: BaseException | None,
    suppress: bool,
) -> BaseException:
    exc: BaseException = reduced[0](*reduced[1])
    if len(reduced) > 2 and reduced[2]:
        exc.__setstate__(reduced[2])
    exc.__cause__ = cause
    exc.__context__ = context
    exc.__suppress_context__ = suppress
    return exc


def _reduce_exception(exc: BaseException) -> Any:
    # The default reduction drops __cause__ and __context__, which a frame
    # suspended in an except block needs for a faithful `raise`.
    if exc.__cause__ is None and exc.__context__ is None:
        return NotImplemented
    reduced = exc.__reduce_ex__(5)
    if not isinstance(reduced, tuple) or len(reduced) > 3:
        return NotImplemented
    return (_rebuild_exception, (reduced, exc.__cause__, exc.__context__, exc.__suppress_context__))


def _sequence_iterator(sequence: Any, index: int) -> Any:
    iterator = iter(sequence)
    if index:
        iterator.__setstate__(index)
    return iterator


def _reduce_sequence_iterator(iterator: Any) -> tuple[Any, ...]:
    # The default reduction names builtins.iter; this one is a third the size.
    reduced = iterator.__reduce__()
    return (_sequence_iterator, (reduced[1][0], reduced[2] if len(reduced) > 2 else 0))


def _range_iterator(start: int, stop: int, step: int) -> Any:
    return iter(range(start, stop, step))


def _reduce_range_iterator(iterator: Any) -> tuple[Any, ...]:
    reduced = iterator.__reduce__()
    remaining = reduced[1][0]
    if len(reduced) > 2:  # 3.11 reduces to the whole range plus an index
        remaining = remaining[reduced[2] :]
    return (_range_iterator, (remaining.start, remaining.stop, remaining.step))


def _no_traceback() -> None:
    return None


def _reduce_traceback(traceback: TracebackType) -> tuple[Any, ...]:
    # A traceback holds live frames of this process; like an exception's
    # __traceback__ (which pickle never keeps), it comes back as None.
    return (_no_traceback, ())


_REDUCERS: dict[type, Any] = {
    TracebackType: _reduce_traceback,
    type(iter([])): _reduce_sequence_iterator,
    type(iter(())): _reduce_sequence_iterator,
    type(iter(range(0))): _reduce_range_iterator,
    type(iter(range(1 << 64))): _reduce_range_iterator,
    CellType: _reduce_cell,
    FunctionType: _reduce_function,
    CoroutineWrapperType: _reduce_coroutine_wrapper,
    AsyncGenASendType: _reduce_asend,
}


def _refuse_code(code: CodeType) -> Any:
    raise UnpicklableStateError(f"code objects are not snapshotted by value ({code.co_qualname})")


_REDUCERS.update(
    {
        GeneratorType: reduce_generator,
        CoroutineType: reduce_generator,
        AsyncGeneratorType: reduce_generator,
        CodeRef: attrgetter("reduced"),
        CodeType: _refuse_code,
    }
)


class Pickler(pickle.Pickler):
    """A pickler that snapshots the frames of generator-like objects it meets."""

    # Called for every object pickled: dispatched in C, with the reducers above.
    reducer_override = staticmethod(
        functools.partial(_frame.reduce_dispatch, _REDUCERS, reachable, prepared, _reduce_exception)
    )


class _NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


def _try_pickle(value: object) -> None:
    Pickler(_NullSink(), 5).dump(value)


def _unwrap(value: object) -> GeneratorLike | None:
    if type(value) in _GENERATOR_TYPES:
        return value  # type: ignore[return-value]
    if type(value) in (CoroutineWrapperType, AsyncGenASendType):
        return _frame.unwrap(value)[0]  # type: ignore[no-any-return]
    return None


def _frames_in(obj: object, depth: int = 0) -> Iterator[GeneratorLike]:
    """The generator-like objects in ``obj`` and the plain containers it holds."""
    gen = _unwrap(obj)
    if gen is not None:
        yield gen
    elif depth < 8 and isinstance(obj, (tuple, list, set, frozenset, dict)):
        for item in obj.values() if isinstance(obj, dict) else obj:
            yield from _frames_in(item, depth + 1)


def _diagnose(obj: object, error: Exception) -> UnpicklableStateError:
    """Turn a pickling failure into an error naming the frame slot at fault."""
    if isinstance(error, UnpicklableStateError) and "\n" in str(error):
        return error
    culprit = None
    for gen in _frames_in(obj):
        try:
            culprit = find_culprit(gen, _try_pickle, _unwrap)
        except Exception:
            culprit = None
        if culprit is not None:
            break
    if culprit is None:
        if isinstance(error, UnpicklableStateError):
            return error
        culprit = f"cannot snapshot {type(obj).__qualname__} object: {error}"
    return UnpicklableStateError(culprit)


class _Writer:
    """A pickler writing into a list, reused: making a pickler (or a BytesIO)
    costs as much as pickling a small snapshot."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.pickler = Pickler(SimpleNamespace(write=self.chunks.append), 5)

    def dump(self, obj: object) -> bytes:
        """The snapshot of ``obj``: header, then the pickle without PROTO and
        a FRAME spanning the rest (optional opcodes, 11 bytes that a snapshot
        of a few hundred bytes does without)."""
        chunks = self.chunks
        try:
            self.pickler.dump(obj)
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            self.pickler.clear_memo()  # keeps no reference to what it pickled
            chunks.clear()
        if data[2] == _FRAME and int.from_bytes(data[3:11], "little") == len(data) - 11:
            return _HEADER + data[11:]
        return _HEADER + data[2:]


class _Writers(threading.local):
    def __init__(self) -> None:
        # A stack, so a dumps() called while pickling (from some __reduce__)
        # takes its own writer.
        self.idle: list[_Writer] = []


_writers = _Writers()


def dumps(obj: object, *, detach: bool = False) -> bytes:
    """Serialize ``obj``, snapshotting every generator or coroutine frame it holds.

    With ``detach``, every frame snapshotted is then marked finished without
    running any of its code, so dropping the live objects does not run their
    ``finally`` blocks: for a runtime that hands the snapshot over to be
    resumed elsewhere. Raises :class:`UnpicklableStateError` naming the
    function and the local variable or stack slot that holds something that
    cannot be serialized.
    """
    if detach:
        with detaching_frames() as frames:
            data = dumps(obj)
        discard(frames)
        return data
    writer = _writers.idle.pop() if _writers.idle else _Writer()
    try:
        try:
            return writer.dump(obj)
        except RecursionError:
            # A frame reachable from its own state (or a structure nested
            # too deeply, which fails the same way again).
            with two_phase_frames():
                return writer.dump(obj)
    except RecursionError:
        raise
    except Exception as error:
        raise _diagnose(obj, error) from error
    finally:
        _writers.idle.append(writer)


def _header_error(view: memoryview) -> SnapshotError:
    if len(view) < len(_HEADER) or view[0] != _MAGIC[0]:
        return InvalidStateError("not a dispatch snapshot")
    version, python = view[1], (view[2], view[3])
    if version != FORMAT_VERSION:
        return IncompatibleStateError(
            f"snapshot format {version} cannot be read by this version, which reads "
            f"format {FORMAT_VERSION}"
        )
    return IncompatibleStateError(
        f"snapshot taken on Python {python[0]}.{python[1]} cannot resume on Python "
        f"{PYTHON_VERSION[0]}.{PYTHON_VERSION[1]}"
    )


def loads(data: bytes) -> Any:
    """Restore what :func:`dumps` wrote; frames resume exactly where they were.

    Raises :class:`IncompatibleStateError` if the snapshot was taken by another
    format or Python version or the code of one of its functions changed, and
    :class:`InvalidStateError` if it is truncated, corrupt or forged.
    """
    view = memoryview(data)
    if view[: len(_HEADER)] != _HEADER:
        raise _header_error(view)
    begin_load()
    try:
        obj = pickle.loads(view[len(_HEADER) :])
    except BaseException as error:
        end_load(failed=True)
        if isinstance(error, SnapshotError) or not isinstance(error, Exception):
            raise
        if isinstance(error, (ImportError, AttributeError)):
            raise IncompatibleStateError(
                f"the snapshot refers to something this process does not define: {error}"
            ) from error
        raise InvalidStateError(
            f"truncated or corrupt snapshot ({type(error).__name__}: {error})"
        ) from error
    end_load(failed=False)
    return obj


def load_snapshot(data: bytes) -> Any:
    """Restore an object pickled by the standard pickler through the copyreg hook."""
    return loads(data)


def _reduce_for_stdlib(gen: Any) -> tuple[Any, ...]:
    if not is_durable(gen):
        raise TypeError(f"cannot pickle {type(gen).__name__!r} object")
    return (load_snapshot, (dumps(gen),))


for _kind in _GENERATOR_TYPES:
    copyreg.pickle(_kind, _reduce_for_stdlib)
