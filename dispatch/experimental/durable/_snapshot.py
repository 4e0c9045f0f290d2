"""Snapshot and restore the frame of one generator, coroutine or async generator.

A suspended generator reduces (in pickle's sense) to one call that makes a
fresh generator of the same code and writes its state (instruction offset,
slots) into it. A frame that refers back to itself from its own state needs
the two-phase form instead: made first, filled once its state is loaded, so
that pickle's memo can resolve the reference (see ``two_phase_frames``).

Every snapshot is validated against the code it is restored into (see
``_analysis``) before a single slot is written.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from operator import attrgetter
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
from typing import Any, NamedTuple, TypeAlias

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


_CODE_OF: dict[type, Callable[[Any], CodeType]] = {
    GeneratorType: attrgetter("gi_code"),
    CoroutineType: attrgetter("cr_code"),
    AsyncGeneratorType: attrgetter("ag_code"),
}


def generator_code(gen: GeneratorLike) -> CodeType:
    return _CODE_OF[type(gen)](gen)


def kind_name(gen: object) -> str:
    for kind, name in zip(_KINDS, _KIND_NAMES, strict=True):
        if isinstance(gen, kind):
            return name
    return type(gen).__name__


class Plan(NamedTuple):
    """How to validate and write a frame state for one code and resume point."""

    layout: Layout
    nslots: int
    raw_state: int
    started: bool
    bound: int
    nullable: int
    requirements: tuple[tuple[int, int, frozenset[int]], ...]
    iterator_locals: tuple[int, ...]


Plans: TypeAlias = dict[int, Plan]
"""Keyed by a packed frame state without its _EXTRA bit: lasti << 2 | mode."""

_plans: dict[int, tuple[CodeType, Plans]] = {}


def plans_of(code: CodeType) -> Plans:
    cached = _plans.get(id(code))
    if cached is not None and cached[0] is code:
        return cached[1]
    layout = analyze(code)
    iterators = layout.iterator_locals
    plans = {
        _CREATED: Plan(
            layout, layout.nfixed, _frame.CREATED, False, layout.created_bound, 0, (), iterators
        )
    }
    for lasti, site in layout.sites.items():
        plans[lasti << 2 | _SUSPENDED] = Plan(
            layout,
            layout.nfixed + site.depth,
            _DELEGATING_STATE if site.delegating else _frame.SUSPENDED,
            True,
            site.bound,
            site.nullable,
            site.requirements,
            iterators,
        )
    _plans[id(code)] = (code, plans)
    return plans


def layout_of(code: CodeType) -> Layout:
    return plans_of(code)[_CREATED].layout


def module_of(function: object) -> str | None:
    """The module a function was defined in, for naming its code."""
    module = getattr(function, "__module__", None)
    if isinstance(module, str):
        return module
    namespace = getattr(function, "__globals__", None)
    name = namespace.get("__name__") if isinstance(namespace, dict) else None
    return name if isinstance(name, str) else None


class _Mode(threading.local):
    two_phase = False
    #: While a dump detaches its frames: every frame it snapshots.
    snapshotted: list[GeneratorLike] | None = None


_mode = _Mode()


class detaching_frames:
    """Collect the frames a dump snapshots, to discard them once it succeeds.

    A runtime that hands a snapshot over and drops the live objects must not
    let their finalizers run: a dropped suspended coroutine is closed, which
    runs its ``finally`` blocks, while the snapshot carries the coroutine on."""

    def __enter__(self) -> list[GeneratorLike]:
        _mode.snapshotted = []
        return _mode.snapshotted

    def __exit__(self, *exc: object) -> None:
        _mode.snapshotted = None


def discard(gens: list[GeneratorLike]) -> None:
    """Mark ``gens`` finished without running any of their code."""
    for gen in gens:
        _frame.discard(gen)


class two_phase_frames:
    """Write frames in two phases while this context is active.

    A frame written in one call cannot be referred to from inside its own
    state: pickle memoizes an object only after its reduction is written, so
    a frame reachable from its own locals recurses until RecursionError.
    ``dumps`` then writes the snapshot again in this mode."""

    def __enter__(self) -> None:
        _mode.two_phase = True
        if _mode.snapshotted is not None:
            _mode.snapshotted.clear()  # the failed one-call attempt's frames

    def __exit__(self, *exc: object) -> None:
        _mode.two_phase = False


def reduce_generator(gen: GeneratorLike) -> tuple[Any, ...]:
    """The pickle reduction of a generator-like object (see module docstring)."""
    state, lasti, slots, nullmask, exc, function, code = _frame.read(gen)
    if state < _frame.EXECUTING:
        assert code is not None
        ref = code_ref(code, function, module_of)
        if state == _frame.CREATED:
            lasti, mode = 0, _CREATED
        else:
            mode = _SUSPENDED
        snapshotted = _mode.snapshotted
        if snapshotted is not None:
            snapshotted.append(gen)
        # Flat, to keep small snapshots small: (lasti|extra|mode, [nullmask, exc,] *slots)
        if nullmask or exc is not None:
            frame_state = (lasti << 2 | _EXTRA | mode, nullmask, exc, *slots)
        else:
            frame_state = (lasti << 2 | mode, *slots)
        if not _mode.two_phase:
            # Made and filled in one call, (ref, [closure,] *state): the
            # smallest and fastest form.
            if ref.path:
                return (restore_generator, (ref, function.__closure__, *frame_state))
            return (restore_generator, (ref, *frame_state))
        # Made first, filled once its state is loaded: pickle's memo then
        # resolves references from inside the state back to the frame.
        args = (ref, function.__closure__) if ref.path else (ref,)
        return (new_generator, args, frame_state, None, None, restore_frame)
    if state == _frame.EXECUTING:
        raise UnpicklableStateError(
            f"cannot snapshot {kind_name(gen)} {gen.__qualname__} while it is running"
        )
    return (restore_finished, (_KINDS.index(type(gen)), gen.__name__, gen.__qualname__))


class _Loads(threading.local):
    """The loads in progress in this thread: the frames each made, and how many
    of those a two-phase snapshot made but has not restored yet."""

    def __init__(self) -> None:
        self.created: list[list[GeneratorLike]] = []
        self.pending: list[int] = []


_loads = _Loads()


def begin_load() -> None:
    _loads.created.append([])
    _loads.pending.append(0)


def end_load(failed: bool) -> None:
    """Close the current load; on failure, discard every frame it made without
    running any of its code (no ``finally`` block of a snapshot that was never
    resumed runs, and no "never awaited" warning is issued)."""
    created = _loads.created.pop()
    pending = _loads.pending.pop()
    if not failed and not pending:
        return
    for gen in created:
        _frame.discard(gen)
    if not failed:
        raise InvalidStateError("the snapshot makes frames it never restores")


def _fresh(ref: CodeRef, closure: Any) -> GeneratorLike:
    """A fresh generator of the code of ``ref``, tracked by the current load."""
    if type(ref) is not CodeRef:
        raise InvalidStateError(f"expected a code reference, got {type(ref).__name__}")
    if ref.path:
        function = FunctionType(ref.code, ref.function.__globals__, ref.code.co_name, None, closure)
        gen: GeneratorLike = function(*ref.blank_args, **ref.blank_kwargs)
    else:
        gen = ref.fresh()
    created = _loads.created
    if created:
        created[-1].append(gen)
    return gen


def restore_generator(ref: CodeRef, *state: Any) -> GeneratorLike:
    """Make a generator of ``ref``'s code and restore ``state`` into it; for
    code that needs its closure (nested functions), that comes first."""
    if type(ref) is CodeRef and ref.path:
        if not state:
            raise InvalidStateError(f"{ref!r} needs its closure")
        gen = _fresh(ref, state[0])
        state = state[1:]
    else:
        gen = _fresh(ref, None)
    _restore(gen, state, ref.plans or _plans_for(ref))
    return gen


def _plans_for(ref: CodeRef) -> Plans:
    plans = ref.plans = plans_of(ref.code)
    return plans


def new_generator(ref: CodeRef, *closure: Any) -> GeneratorLike:
    """Two-phase form: make a fresh generator; restore_frame fills it later."""
    if type(ref) is CodeRef and ref.path and len(closure) != 1:
        raise InvalidStateError(f"{ref!r} needs its closure")
    gen = _fresh(ref, closure[0] if closure else None)
    pending = _loads.pending
    if pending:
        pending[-1] += 1
    return gen


def restore_frame(gen: GeneratorLike, state: tuple[Any, ...]) -> None:
    """Two-phase form: validate ``state`` against the code of ``gen`` and write it in."""
    if type(state) is not tuple:
        raise _invalid(gen, "malformed frame state")
    _restore(gen, state, plans_of(_CODE_OF[type(gen)](gen)))
    pending = _loads.pending
    if pending:
        pending[-1] -= 1


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


def _type_error(flags: int, value: object) -> str | None:
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


def _invalid(gen: GeneratorLike, message: str) -> InvalidStateError:
    return InvalidStateError(f"{describe(generator_code(gen))}: {message}")


def _restore(gen: GeneratorLike, state: tuple[Any, ...], plans: Plans) -> None:
    """Validate ``state`` against the plans of the code of ``gen`` (fresh), then write it."""
    packed = state[0] if state else None
    if type(packed) is not int or packed < 0:
        raise _invalid(gen, "malformed frame state")
    plan = plans.get(packed & ~_EXTRA)
    if plan is None:
        if packed & 1 == _CREATED:
            raise _invalid(gen, "a frame that has not started is at its first instruction")
        raise _invalid(
            gen, f"instruction offset {(packed >> 2) * 2} is not a point where it can be suspended"
        )
    if packed & _EXTRA:
        if len(state) < 3 or type(state[1]) is not int or state[1] < 0:
            raise _invalid(gen, "malformed frame state")
        nullmask, exc, slots = state[1], state[2], state[3:]
        if exc is not None:
            if not plan.started:
                raise _invalid(gen, "a frame that has not started handles no exception")
            if not issubclass(type(exc), BaseException):
                raise _invalid(gen, "the exception being handled is not an exception")
    else:
        nullmask, exc, slots = 0, None, state[1:]
    if len(slots) != plan.nslots:
        nfixed = plan.layout.nfixed
        raise _invalid(
            gen,
            f"{len(slots) - nfixed} values on the stack where the code has {plan.nslots - nfixed}",
        )
    if nullmask:
        _check_nulls(gen, plan.layout, slots, nullmask, plan.bound, plan.nullable)
    if plan.requirements:
        _check_types(gen, plan.layout, slots, nullmask, plan.requirements)
    for index in plan.iterator_locals:
        if not nullmask >> index & 1 and not _frame.is_iterator(slots[index]):
            raise _invalid(gen, f"{_slot_name(plan.layout, index)} must be an iterator")
    try:
        _frame.write(gen, plan.raw_state, packed >> 2, slots, nullmask, exc)
    except (TypeError, ValueError) as error:
        raise _invalid(gen, str(error)) from None


def _check_nulls(
    gen: GeneratorLike,
    layout: Layout,
    slots: tuple[Any, ...],
    nullmask: int,
    bound: int,
    nullable: int,
) -> None:
    nfixed = layout.nfixed
    if nullmask >> len(slots):
        raise _invalid(gen, "NULL mask names slots past the end")
    unbound = nullmask & bound & ((1 << nfixed) - 1)
    if unbound:
        index = unbound.bit_length() - 1
        raise _invalid(gen, f"{_slot_name(layout, index)} is unbound but the code reads it")
    stray = (nullmask >> nfixed) & ~nullable
    if stray:
        index = nfixed + stray.bit_length() - 1
        raise _invalid(gen, f"{_slot_name(layout, index)} may not be NULL")


def _check_types(
    gen: GeneratorLike,
    layout: Layout,
    slots: tuple[Any, ...],
    nullmask: int,
    requirements: tuple[tuple[int, int, frozenset[int]], ...],
) -> None:
    nfixed = layout.nfixed
    for position, flags, entries in requirements:
        index = nfixed + position
        if nullmask >> index & 1:
            if flags & METHOD_SELF and type(slots[index - 1]) in _METHOD_DESCRIPTORS:
                raise _invalid(gen, f"{_slot_name(layout, index)} may not be NULL under a method")
            continue
        value = slots[index]
        if flags & LASTI and not (
            type(value) is int
            and any(layout.handlers[e].start <= value < layout.handlers[e].end for e in entries)
        ):
            raise _invalid(
                gen,
                f"{_slot_name(layout, index)} must be an instruction offset covered by its "
                f"exception handler",
            )
        expected = _type_error(flags, value)
        if expected is not None:
            raise _invalid(
                gen, f"{_slot_name(layout, index)} must hold {expected}, not {type(value).__name__}"
            )


def frame_slots(gen: GeneratorLike) -> Iterator[tuple[str, object]]:
    """(description, value) of everything a snapshot of ``gen`` would hold."""
    state, _, slots, nullmask, exc, function, code = _frame.read(gen)
    if state >= _frame.EXECUTING or code is None:
        return
    layout = layout_of(code)
    for index, value in enumerate(slots):
        if not nullmask >> index & 1:
            yield _slot_name(layout, index), value
    if exc is not None:
        yield "the exception being handled", exc
    if code_ref(code, function, module_of).path:
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
    state, *_, function, code = _frame.read(gen)
    if state >= _frame.EXECUTING or code is None:
        return None
    owner = f"{kind_name(gen)} {describe(code, module_of(function))}"
    try:
        code_ref(code, function, module_of)
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
