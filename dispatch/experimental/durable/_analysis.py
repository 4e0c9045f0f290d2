"""Static analysis of a code object's resume points, to validate snapshots.

A snapshot says where a frame stopped (an instruction offset), what its
value stack held and which locals were bound. Before any of it is written
into a frame, the snapshot must be proven consistent with the code it will
run, because the interpreter trusts its own frames: it does not bounds-check
the stack, and many instructions use a slot without checking its type.

For every point where a generator can be suspended (each ``YIELD_VALUE``),
this module computes from the bytecode alone:

- the exact stack depth while suspended there, and whether the frame is
  delegating (``await`` / ``yield from``) with its delegate on top;
- for each stack position, whether it may legitimately be NULL (call
  sequences, saved comprehension variables) and what the instructions after
  it require of it: an iterator (``FOR_ITER``), an exception
  (``RERAISE``, ``PUSH_EXC_INFO``...), an exception-or-None, a list, dict or
  set (``LIST_APPEND``, ``MAP_ADD``, ``SET_UPDATE`` cast without checking),
  or an instruction offset inside a given exception-table range
  (the ``lasti`` that ``RERAISE`` jumps back to);
- which locals are read without a NULL check before being written again
  (3.12+ compiles ``LOAD_FAST`` unchecked where it proved the local bound).

The stack model is a forward data-flow analysis over the bytecode and the
exception table, using :func:`dis.stack_effect` for depths. Its
approximations always err on the strict side: a position is only allowed
to be NULL where a NULL-producing instruction put one, and a type
requirement is only dropped where the position is certainly replaced.
"""

from __future__ import annotations

import dis
import sys
from dataclasses import dataclass
from types import CodeType

PY = sys.version_info[:2]

# Per-position flags.
NULLABLE = 1
ITERATOR = 2
EXCEPTION = 4
EXCEPTION_OR_NONE = 8
LIST = 16
DICT = 32
SET = 64
LASTI = 128
# 3.13: the self slot of a method call. It is NULL when the attribute was not
# a method, and the specialized CALL_LIST_APPEND assumes it is not NULL once
# the callable below it is list.append: a NULL may only sit under a callable
# that no method-call specialization accepts (not a method descriptor).
METHOD_SELF = 256

_TYPE_FLAGS = ITERATOR | EXCEPTION | EXCEPTION_OR_NONE | LIST | DICT | SET | LASTI | METHOD_SELF

# Instructions that neither read nor write the value stack.
_NO_STACK = frozenset(
    {
        "CACHE",
        "COPY_FREE_VARS",
        "DELETE_DEREF",
        "DELETE_FAST",
        "DELETE_GLOBAL",
        "DELETE_NAME",
        "ENTER_EXECUTOR",
        "EXTENDED_ARG",
        "JUMP_BACKWARD",
        "JUMP_BACKWARD_NO_INTERRUPT",
        "JUMP_FORWARD",
        "KW_NAMES",
        "MAKE_CELL",
        "NOP",
        "RESERVED",
        "RESUME",
        "SETUP_ANNOTATIONS",
    }
)

# Instructions after which execution does not fall through.
_TERMINAL = frozenset(
    {
        "JUMP_BACKWARD",
        "JUMP_BACKWARD_NO_INTERRUPT",
        "JUMP_FORWARD",
        "RAISE_VARARGS",
        "RERAISE",
        "RETURN_CONST",
        "RETURN_VALUE",
    }
)

_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)

# Loads that crash on an unbound local (3.12+ compiles LOAD_FAST unchecked
# where it proved the local bound). On 3.11 every LOAD_FAST is checked.
_UNCHECKED_LOADS = PY >= (3, 12)

Tag = tuple[int, frozenset[int]]  # (flags, exception-table entries for LASTI)
_FRESH: Tag = (0, frozenset())
_NULL: Tag = (NULLABLE, frozenset())
_METHOD_SELF: Tag = (NULLABLE | METHOD_SELF, frozenset())


@dataclass(frozen=True, slots=True)
class Handler:
    """One exception-table entry, in code units."""

    start: int
    end: int
    target: int
    depth: int
    lasti: bool


@dataclass(frozen=True, slots=True)
class Site:
    """A point where a frame of this code can be suspended."""

    lasti: int
    """Instruction offset, in code units, as the frame reports it there."""
    depth: int
    """Value-stack depth while suspended here."""
    delegating: bool
    """Suspended in ``await``/``yield from``: the delegate is on top."""
    nullable: int
    """Bit i set: stack position i may be NULL."""
    requirements: tuple[tuple[int, int, frozenset[int]], ...]
    """(position, type flags, allowed exception entries) for typed positions."""
    bound: int
    """Bit i set: local slot i must not be NULL (it is read unchecked)."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything needed to validate a snapshot of frames of one code object."""

    code: CodeType
    nfixed: int
    """Local and cell slots (free variables excluded), before the stack."""
    names: tuple[str, ...]
    """Names of the fixed slots, for messages."""
    sites: dict[int, Site]
    created_bound: int
    """Locals that must be bound in a frame that has not started yet."""
    iterator_locals: tuple[int, ...]
    """Locals holding the iterator a comprehension runs over (``.0``)."""
    handlers: tuple[Handler, ...]


def parse_exception_table(code: CodeType) -> tuple[Handler, ...]:
    """Decode ``co_exceptiontable`` (format of CPython's exception_handling_notes)."""
    data = code.co_exceptiontable
    pos = 0

    def varint() -> int:
        nonlocal pos
        byte = data[pos]
        pos += 1
        value = byte & 63
        while byte & 64:
            byte = data[pos]
            pos += 1
            value = (value << 6) | (byte & 63)
        return value

    handlers = []
    while pos < len(data):
        start = varint()
        length = varint()
        target = varint()
        depth_lasti = varint()
        handlers.append(
            Handler(start, start + length, target, depth_lasti >> 1, bool(depth_lasti & 1))
        )
    return tuple(handlers)


def fixed_slot_names(code: CodeType) -> tuple[str, ...]:
    """Names of the local and cell slots, in frame order."""
    names = list(code.co_varnames)
    names.extend(name for name in code.co_cellvars if name not in code.co_varnames)
    return tuple(names)


class AnalysisError(Exception):
    """The bytecode did not fit the model (a bug here, never in the user's code)."""


def _merge(a: tuple[Tag, ...], b: tuple[Tag, ...]) -> tuple[Tag, ...]:
    return tuple((fa | fb, ea | eb) for (fa, ea), (fb, eb) in zip(a, b, strict=True))


def _instructions(code: CodeType) -> list[dis.Instruction]:
    return [i for i in dis.get_instructions(code) if i.opname != "CACHE"]


def _step(
    ins: dis.Instruction, tags: tuple[Tag, ...], jump: bool, names: tuple[str, ...]
) -> tuple[Tag, ...] | None:
    """The stack after ``ins`` (taking the jump or not), or None if it does not continue."""
    name = ins.opname
    arg = ins.arg
    depth = len(tags)
    effect = dis.stack_effect(ins.opcode, arg, jump=jump)
    out = depth + effect
    if out < 0:
        raise AnalysisError(f"{name} at {ins.offset} underflows the stack")
    stack = list(tags)
    if name in _NO_STACK or (name in ("JUMP_IF_FALSE_OR_POP", "JUMP_IF_TRUE_OR_POP") and jump):
        return tuple(stack)
    if name == "SWAP":
        assert arg is not None
        stack[-1], stack[-arg] = stack[-arg], stack[-1]
        return tuple(stack)
    if name == "COPY":
        assert arg is not None
        flags, entries = stack[-arg]
        return (*stack, (flags & ~NULLABLE, entries))
    if effect < 0:
        del stack[out:]
        if stack:
            # The new top is usually the instruction's result: it is not NULL.
            flags, entries = stack[-1]
            stack[-1] = (flags & ~NULLABLE, entries)
    elif effect == 0:
        if stack:
            stack[-1] = _FRESH
    else:
        stack.extend([_FRESH] * effect)

    def load_tag(index: int) -> Tag:
        return (ITERATOR, frozenset()) if names[index] == ".0" else _FRESH

    if name == "PUSH_NULL" or name == "LOAD_FAST_AND_CLEAR":
        stack[-1] = _NULL
    elif name == "LOAD_GLOBAL" and arg is not None and arg & 1:
        stack[-1 if PY >= (3, 13) else -2] = _NULL
    elif (
        name == "LOAD_METHOD"
        or (name == "LOAD_ATTR" and PY >= (3, 12) and arg is not None and arg & 1)
        or (name == "LOAD_SUPER_ATTR" and arg is not None and arg & 1)
    ):
        # 3.13 pushes [method, self] or [attribute, NULL]; earlier versions
        # [method, self] or [NULL, attribute].
        stack[-1 if PY >= (3, 13) else -2] = _METHOD_SELF if PY >= (3, 13) else _NULL
    elif name in ("LOAD_FAST", "LOAD_FAST_CHECK") and arg is not None:
        stack[-1] = load_tag(arg)
    elif name == "LOAD_FAST_LOAD_FAST" and arg is not None:
        stack[-2] = load_tag(arg >> 4)
        stack[-1] = load_tag(arg & 15)
    elif name == "GET_ITER":
        stack[-1] = (ITERATOR, frozenset())
    elif name == "BUILD_LIST":
        stack[-1] = (LIST, frozenset())
    elif name == "BUILD_MAP":
        stack[-1] = (DICT, frozenset())
    elif name == "BUILD_SET":
        stack[-1] = (SET, frozenset())
    elif name == "PUSH_EXC_INFO":
        stack[-2] = (EXCEPTION_OR_NONE, frozenset())
        stack[-1] = (EXCEPTION, frozenset())
    elif name == "CHECK_EG_MATCH":
        stack[-2] = (EXCEPTION_OR_NONE, frozenset())
    return tuple(stack)


def _locals_effect(ins: dis.Instruction) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(locals read unchecked, locals written) by one instruction, reads after writes."""
    name, arg = ins.opname, ins.arg
    if arg is None:
        return (), ()
    if name in ("STORE_FAST", "DELETE_FAST", "LOAD_FAST_AND_CLEAR"):
        return (), (arg,)
    if name == "STORE_FAST_STORE_FAST":
        return (), (arg >> 4, arg & 15)
    if not _UNCHECKED_LOADS:
        return (), ()
    if name == "LOAD_FAST":
        return (arg,), ()
    if name == "LOAD_FAST_LOAD_FAST":
        return (arg >> 4, arg & 15), ()
    if name == "STORE_FAST_LOAD_FAST":
        return (arg & 15,), (arg >> 4,)
    return (), ()


def analyze(code: CodeType) -> Layout:
    """Compute the resume sites of ``code`` (a generator or coroutine code object)."""
    instructions = _instructions(code)
    index_of = {ins.offset: k for k, ins in enumerate(instructions)}
    handlers = parse_exception_table(code)
    names = fixed_slot_names(code)

    # Control-flow successors: (index, jump taken?) plus exception edges.
    normal: list[list[tuple[int, bool]]] = []
    for k, ins in enumerate(instructions):
        succ: list[tuple[int, bool]] = []
        if ins.opcode in _JUMPS:
            target = ins.argval
            if target not in index_of:
                raise AnalysisError(f"{ins.opname} at {ins.offset} jumps to {target}")
            succ.append((index_of[target], True))
        if ins.opname not in _TERMINAL and k + 1 < len(instructions):
            succ.append((k + 1, False))
        normal.append(succ)
    covering: list[list[Handler]] = [[] for _ in instructions]
    for handler in handlers:
        if handler.target * 2 not in index_of:
            raise AnalysisError(f"exception handler target {handler.target * 2} not found")
        for k, ins in enumerate(instructions):
            if handler.start <= ins.offset // 2 < handler.end:
                covering[k].append(handler)

    start = next(k for k, ins in enumerate(instructions) if ins.opname == "RESUME")
    entry_of = {h: n for n, h in enumerate(handlers)}

    # Forward pass: the stack (a tuple of tags) on entry to each instruction.
    before: dict[int, tuple[Tag, ...]] = {start: ()}
    work = [start]
    while work:
        k = work.pop()
        tags = before[k]
        ins = instructions[k]
        targets: list[tuple[int, tuple[Tag, ...]]] = []
        for nxt, jump in normal[k]:
            after = _step(ins, tags, jump, names)
            if after is not None:
                targets.append((nxt, after))
        for handler in covering[k]:
            if handler.depth > len(tags):
                raise AnalysisError(f"handler at {handler.target} deeper than the stack")
            pushed: list[Tag] = list(tags[: handler.depth])
            if handler.lasti:
                pushed.append((LASTI, frozenset({entry_of[handler]})))
            pushed.append((EXCEPTION, frozenset()))
            targets.append((index_of[handler.target * 2], tuple(pushed)))
        for nxt, after in targets:
            seen = before.get(nxt)
            if seen is None:
                before[nxt] = after
                work.append(nxt)
            elif len(seen) != len(after):
                raise AnalysisError(
                    f"stack depth {len(seen)} vs {len(after)} at {instructions[nxt].offset}"
                )
            else:
                merged = _merge(seen, after)
                if merged != seen:
                    before[nxt] = merged
                    work.append(nxt)

    # Backward pass: locals read unchecked before any write, from each point.
    successors = [
        [n for n, _ in normal[k]] + [index_of[h.target * 2] for h in covering[k]]
        for k in range(len(instructions))
    ]
    effects = [_locals_effect(ins) for ins in instructions]
    live = [0] * len(instructions)
    changed = True
    while changed:
        changed = False
        for k in range(len(instructions) - 1, -1, -1):
            out = 0
            for n in successors[k]:
                out |= live[n]
            reads, writes = effects[k]
            for w in writes:
                out &= ~(1 << w)
            for r in reads:
                out |= 1 << r
            if out != live[k]:
                live[k] = out
                changed = True

    sites: dict[int, Site] = {}
    for k, ins in enumerate(instructions):
        if ins.opname != "YIELD_VALUE" or k not in before:
            continue
        resume = instructions[k + 1]
        if resume.opname != "RESUME" or resume.arg is None:
            raise AnalysisError(f"YIELD_VALUE at {ins.offset} is not followed by RESUME")
        stack = before[k][:-1]
        lasti = (resume.offset if PY >= (3, 13) else ins.offset) // 2
        nullable = 0
        requirements = []
        for position, (flags, entries) in enumerate(stack):
            if flags & NULLABLE:
                nullable |= 1 << position
            if flags & _TYPE_FLAGS:
                requirements.append((position, flags & _TYPE_FLAGS, entries))
        # A throw() or close() at the suspension point unwinds from here.
        bound = live[k + 1]
        for handler in covering[k] + covering[k + 1]:
            bound |= live[index_of[handler.target * 2]]
        sites[lasti] = Site(
            lasti=lasti,
            depth=len(stack),
            delegating=(resume.arg & 3) >= 2,
            nullable=nullable,
            requirements=tuple(requirements),
            bound=bound,
        )
    return Layout(
        code=code,
        nfixed=len(names),
        names=names,
        sites=sites,
        created_bound=live[start],
        iterator_locals=tuple(i for i, n in enumerate(names) if n == ".0"),
        handlers=handlers,
    )
