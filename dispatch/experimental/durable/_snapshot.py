"""Snapshot and restore the frame of one generator, coroutine or async generator.

A suspended generator reduces (in pickle's sense) to a call that makes a
fresh generator of the same code, plus a state (instruction offset, slots)
written into it afterwards. Making the object first and filling it second
lets frames refer to each other, or to themselves, through pickle's memo.

Every snapshot is validated against the code it is restored into (see
``_analysis``) before a single slot is written.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from types import (
    AsyncGeneratorType,
    ClassMethodDescriptorType,
    CodeType,
    CoroutineType,
    FunctionType,
    GeneratorType,
    MethodDescriptorType,
    WrapperDescriptorType,
)
from typing import Any, TypeAlias

from . import _frame
from ._analysis import (
    DICT,
    EXCEPTION,
    EXCEPTION_OR_NONE,
    ITERATOR,
    LASTI,
    LIST,
    METHOD_SELF,
    SET,
    Layout,
    analyze,
)
from ._errors import InvalidStateError, UnpicklableStateError
from ._identity import CodeRef, code_ref, describe

GeneratorLike: TypeAlias = (
    "GeneratorType[Any, Any, Any] | CoroutineType[Any, Any, Any] | AsyncGeneratorType[Any, Any]"
)

_SUSPENDED = 0
_CREATED = 1
_EXTRA = 2  # the state carries a NULL mask and the exception being handled

_KINDS: tuple[type, ...] = (GeneratorType, CoroutineType, AsyncGeneratorType)
_KIND_NAMES = ("generator", "coroutine", "async generator")

_DELEGATING_STATE = _frame.SUSPENDED_YIELD_FROM
_METHOD_DESCRIPTORS = (MethodDescriptorType, WrapperDescriptorType, ClassMethodDescriptorType)


def generator_code(gen: GeneratorLike) -> CodeType:
    if isinstance(gen, GeneratorType):
        return gen.gi_code
    if isinstance(gen, CoroutineType):
        return gen.cr_code
    return gen.ag_code


def kind_name(gen: object) -> str:
    for kind, name in zip(_KINDS, _KIND_NAMES, strict=True):
        if isinstance(gen, kind):
            return name
    return type(gen).__name__


_layouts: dict[int, Layout] = {}


def layout_of(code: CodeType) -> Layout:
    cached = _layouts.get(id(code))
    if cached is None or cached.code is not code:
        cached = analyze(code)
        _layouts[id(code)] = cached
    return cached


def _module_of(function: object) -> str | None:
    module = getattr(function, "__module__", None)
    if isinstance(module, str):
        return module
    namespace = getattr(function, "__globals__", None)
    name = namespace.get("__name__") if isinstance(namespace, dict) else None
    return name if isinstance(name, str) else None


def reduce_generator(gen: GeneratorLike) -> tuple[Any, ...]:
    """The pickle reduction of a generator-like object (see module docstring)."""
    state, lasti, slots, nullmask, exc, function = _frame.read(gen)
    if state == _frame.EXECUTING:
        raise UnpicklableStateError(
            f"cannot snapshot {kind_name(gen)} {gen.__qualname__} while it is running"
        )
    if state >= _frame.COMPLETED:
        return (restore_finished, (_KINDS.index(type(gen)), gen.__name__, gen.__qualname__))
    code = generator_code(gen)
    ref = code_ref(code, gen, _module_of(function))
    mode = _CREATED if state == _frame.CREATED else _SUSPENDED
    # Flat, to keep small snapshots small: (lasti|extra|mode, [nullmask, exc,] *slots)
    if nullmask or exc is not None:
        frame_state = (lasti << 2 | _EXTRA | mode, nullmask, exc, *slots)
    else:
        frame_state = (lasti << 2 | mode, *slots)
    args = (ref, function.__closure__) if ref.path else (ref,)
    return (new_generator, args, frame_state, None, None, restore_frame)


class _Load:
    """The frames made by one load, and how many of them were restored."""

    def __init__(self) -> None:
        self.created: list[GeneratorLike] = []
        self.restored = 0


class _LoadTracker(threading.local):
    def __init__(self) -> None:
        self.loads: list[_Load] = []


_tracker = _LoadTracker()


class tracking_restores:
    """Context of one load. If it fails, or leaves a frame made but never
    written (only a forged snapshot can), every frame it made is discarded
    without running any of its code: no ``finally`` block of a snapshot that
    was never resumed runs, and no "never awaited" warning is issued."""

    def __enter__(self) -> None:
        _tracker.loads.append(_Load())

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        load = _tracker.loads.pop()
        if exc_type is None and load.restored == len(load.created):
            return
        for gen in load.created:
            _frame.discard(gen)
        if exc_type is None:
            raise InvalidStateError("the snapshot makes frames it never restores")


def new_generator(ref: CodeRef, *closure: Any) -> GeneratorLike:
    """Make a fresh generator of ``ref``'s code; its frame is written by restore_frame."""
    if not isinstance(ref, CodeRef):
        raise InvalidStateError(f"expected a code reference, got {type(ref).__name__}")
    if ref.path:
        if len(closure) != 1:
            raise InvalidStateError(f"{ref!r} needs its closure")
        function = FunctionType(
            ref.code, ref.function.__globals__, ref.code.co_name, None, closure[0]
        )
    else:
        function = ref.function
    gen: GeneratorLike = function(*ref.blank_args, **ref.blank_kwargs)
    if _tracker.loads:
        _tracker.loads[-1].created.append(gen)
    return gen


def restore_finished(kind: int, name: str, qualname: str) -> GeneratorLike:
    """A finished generator-like object: its frame is gone, only its names remain."""
    gen: Any
    if kind == 0:
        gen = _finished_generator()
        gen.close()
    elif kind == 1:
        gen = _finished_coroutine()
        gen.close()
    elif kind == 2:
        gen = _finished_async_generator()
        with contextlib.suppress(StopIteration):
            gen.aclose().send(None)
    else:
        raise InvalidStateError(f"unknown generator kind {kind!r}")
    gen.__name__ = name
    gen.__qualname__ = qualname
    return gen  # type: ignore[no-any-return]


def _finished_generator() -> Iterator[None]:
    yield


async def _finished_coroutine() -> None:
    pass


async def _finished_async_generator() -> Any:
    yield


def _slot_name(layout: Layout, index: int) -> str:
    if index < layout.nfixed:
        return f"local variable {layout.names[index]!r}"
    return f"value-stack slot {index - layout.nfixed}"


def _type_error(layout: Layout, index: int, flags: int, value: object) -> str | None:
    """Why ``value`` cannot sit in a slot that the code uses as ``flags`` says."""
    kind = type(value)
    if flags & ITERATOR and not _frame.is_iterator(value):
        return "an iterator"
    if flags & EXCEPTION and not issubclass(kind, BaseException):
        return "an exception"
    if flags & EXCEPTION_OR_NONE and not (value is None or issubclass(kind, BaseException)):
        return "an exception or None"
    if flags & LIST and not issubclass(kind, list):
        return "a list"
    if flags & DICT and not issubclass(kind, dict):
        return "a dict"
    if flags & SET and not issubclass(kind, set):
        return "a set"
    return None


def restore_frame(gen: GeneratorLike, state: tuple[Any, ...]) -> None:
    """Validate ``state`` against the code of ``gen`` (fresh) and write it in."""
    code = generator_code(gen)
    name = describe(code)
    packed = state[0] if type(state) is tuple and state else None
    if type(packed) is not int or packed < 0:
        raise InvalidStateError(f"malformed frame state for {name}")
    if packed & _EXTRA:
        if len(state) < 3 or type(state[1]) is not int or state[1] < 0:
            raise InvalidStateError(f"malformed frame state for {name}")
        nullmask, exc, slots = state[1], state[2], state[3:]
    else:
        nullmask, exc, slots = 0, None, state[1:]
    if exc is not None and not issubclass(type(exc), BaseException):
        raise InvalidStateError(f"{name}: the exception being handled is not an exception")
    layout = layout_of(code)
    nfixed = layout.nfixed
    depth = len(slots) - nfixed
    lasti, mode = packed >> 2, packed & 1
    requirements: tuple[tuple[int, int, frozenset[int]], ...]
    if mode == _CREATED:
        if depth != 0 or exc is not None:
            raise InvalidStateError(f"{name}: a frame that has not started has no stack")
        bound, nullable, requirements = layout.created_bound, 0, ()
        raw_state = _frame.CREATED
    else:
        site = layout.sites.get(lasti)
        if site is None:
            raise InvalidStateError(
                f"{name}: instruction offset {lasti * 2} is not a point where it can be suspended"
            )
        if depth != site.depth:
            raise InvalidStateError(
                f"{name}: {depth} values on the stack where the code has {site.depth}"
            )
        bound, nullable, requirements = site.bound, site.nullable, site.requirements
        raw_state = _DELEGATING_STATE if site.delegating else _frame.SUSPENDED
    if nullmask >> len(slots):
        raise InvalidStateError(f"{name}: NULL mask names slots past the end")
    unbound = nullmask & bound & ((1 << nfixed) - 1)
    if unbound:
        index = unbound.bit_length() - 1
        raise InvalidStateError(
            f"{name}: {_slot_name(layout, index)} is unbound but the code reads it"
        )
    stray = (nullmask >> nfixed) & ~nullable
    if stray:
        index = nfixed + stray.bit_length() - 1
        raise InvalidStateError(f"{name}: {_slot_name(layout, index)} may not be NULL")
    for position, flags, entries in requirements:
        index = nfixed + position
        if nullmask >> index & 1:
            if flags & METHOD_SELF and type(slots[index - 1]) in _METHOD_DESCRIPTORS:
                raise InvalidStateError(
                    f"{name}: {_slot_name(layout, index)} may not be NULL under a method"
                )
            continue
        value = slots[index]
        if flags & LASTI:
            valid = type(value) is int and any(
                layout.handlers[e].start <= value < layout.handlers[e].end for e in entries
            )
            if not valid:
                raise InvalidStateError(
                    f"{name}: {_slot_name(layout, index)} must be an instruction offset "
                    f"covered by its exception handler"
                )
        expected = _type_error(layout, index, flags, value)
        if expected is not None:
            raise InvalidStateError(
                f"{name}: {_slot_name(layout, index)} must hold {expected}, not "
                f"{type(value).__name__}"
            )
    for index in layout.iterator_locals:
        if not nullmask >> index & 1 and not _frame.is_iterator(slots[index]):
            raise InvalidStateError(f"{name}: {_slot_name(layout, index)} must be an iterator")
    try:
        _frame.write(gen, raw_state, lasti, slots, nullmask, exc)
    except (TypeError, ValueError) as error:
        raise InvalidStateError(f"{name}: {error}") from None
    if _tracker.loads:
        _tracker.loads[-1].restored += 1


def frame_slots(gen: GeneratorLike) -> Iterator[tuple[str, object]]:
    """(description, value) of everything a snapshot of ``gen`` would hold."""
    state, _, slots, nullmask, exc, function = _frame.read(gen)
    if state >= _frame.EXECUTING:
        return
    layout = layout_of(generator_code(gen))
    for index, value in enumerate(slots):
        if not nullmask >> index & 1:
            yield _slot_name(layout, index), value
    if exc is not None:
        yield "the exception being handled", exc
    code = generator_code(gen)
    if code_ref(code, gen, _module_of(function)).path:
        closure = getattr(function, "__closure__", None) or ()
        for cell_name, cell in zip(code.co_freevars, closure, strict=False):
            try:
                yield f"free variable {cell_name!r}", cell.cell_contents
            except ValueError:
                continue


def find_culprit(
    gen: GeneratorLike, try_pickle: Callable[[object], None], unwrap: Callable[[object], Any]
) -> str | None:
    """Describe the innermost slot of ``gen`` (or of a frame it awaits) that fails to pickle."""
    state, *_, function = _frame.read(gen)
    if state >= _frame.EXECUTING:
        return None
    module = _module_of(function)
    owner = f"{kind_name(gen)} {describe(generator_code(gen), module)}"
    try:
        code_ref(generator_code(gen), gen, module)
    except UnpicklableStateError as error:
        return str(error)
    for where, value in frame_slots(gen):
        try:
            try_pickle(value)
        except Exception as error:
            inner = unwrap(value)
            if inner is not None:
                found = find_culprit(inner, try_pickle, unwrap)
                if found is not None:
                    return f"{found}\n  awaited by {owner}"
            return (
                f"{owner}: {where} holds a {type(value).__module__}.{type(value).__qualname__}"
                f" that cannot be snapshotted ({type(error).__name__}: {error})"
            )
    return None


def is_durable(gen: GeneratorLike) -> bool:
    function = _frame.read(gen)[5]
    if function is not None:
        return bool(getattr(function, "__durable__", False))
    return generator_code(gen) in durable_codes


durable_codes: weakref.WeakSet[CodeType] = weakref.WeakSet()
"""Code objects marked durable, to recognise finished generators of them."""
