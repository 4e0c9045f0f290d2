"""Where a suspended run waits: its frames as plain data, for people.

When a durable coroutine suspends, the endpoint sends beside the sealed
snapshot (which only the application can open) a description anyone with
access to the orchestrator can read: for each task of the run, the stack of
frames from the outermost coroutine down its ``await`` chain, each with its
function, file, current line (nil if unknown) and a short summary of every local::

    [{"task": 0, "frames": [{"function": "pipeline", "file": "/app/app.py",
                             "line": 12, "locals": {"names": "['a', 'b']"}}, ...]}, ...]

encoded with msgpack (``Poll.where`` on the wire). The walk follows
``cr_await`` (coroutines), ``gi_yieldfrom`` (generators) and ``ag_await``
(async generators) and stops at anything else, such as the call or group
being awaited; frames of dispatch itself are left out.

A summary is a reprlib-style repr of at most ``SUMMARY_SIZE`` characters
(``<unreprable T>`` when the repr raises); locals whose name matches one of
the ``|``-separated, case-insensitive shell patterns of ``redact`` show as
``<redacted>``. The whole description stays under ``MAX_SIZE`` bytes:
summaries are shortened, then locals dropped, then the last tasks dropped.
"""

from __future__ import annotations

import builtins
import fnmatch
import logging
import reprlib
import types
from typing import Any

import msgpack  # type: ignore[import-untyped]

logger = logging.getLogger("dispatch")

DEFAULT_REDACT = "*token*|*secret*|*password*|*api_key*"
"""The local names redacted unless ``DISPATCH_REDACT`` says otherwise."""

REDACTED = "<redacted>"
SUMMARY_SIZE = 80
MAX_SIZE = 64 * 1024
_HEADER_SIZE = 5  # the largest msgpack array header: bounds a total from above
MAX_DEPTH = 128
"""Frames described per task at most (an ``await`` chain is rarely deeper)."""

# The degraded forms tried in turn when a description is too large:
# (summary size, whether locals are kept).
_LEVELS = ((SUMMARY_SIZE, True), (24, True), (0, False))


class _Summary(reprlib.Repr):
    """reprlib's bounded repr, with a readable mark for reprs that raise."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = self.maxlong = SUMMARY_SIZE
        self.maxtuple = self.maxlist = self.maxarray = self.maxset = self.maxfrozenset = 8
        self.maxdict = 6
        self.maxdeque = 8

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            text = builtins.repr(x)
        except Exception:
            return _unreprable(x)
        if not isinstance(text, str):  # a C type's repr may misbehave
            return _unreprable(x)
        return _clip(text, self.maxother)


_summary = _Summary()


def summarize(value: object, size: int = SUMMARY_SIZE) -> str:
    """A short, readable repr of ``value`` that never raises."""
    try:
        text = _summary.repr(value)
    except Exception:
        return _unreprable(value)
    return _clip(_text(text), size)


def _unreprable(value: object) -> str:
    return f"<unreprable {type(value).__name__}>"


def _clip(text: str, size: int) -> str:
    if len(text) <= size:
        return text
    if size <= 3:
        return text[:size]
    return text[: size - 3] + "..."


def _text(text: str) -> str:
    """``text`` as valid UTF-8 (a file name or a repr may hold lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def patterns(redact: str | None) -> tuple[str, ...]:
    """The lower-cased patterns of a ``|``-separated pattern string; None means
    the default ones, an empty string none at all."""
    if redact is None:
        redact = DEFAULT_REDACT
    return tuple(part.strip().lower() for part in redact.split("|") if part.strip())


def redacted(name: str, redact: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in redact)


def _is_internal(frame: types.FrameType) -> bool:
    # The await machinery of dispatch (a call's or a group's generator, the
    # wrapper of a local awaitable) says nothing about where the user's code is.
    module = frame.f_globals.get("__name__")
    return isinstance(module, str) and (module == "dispatch" or module.startswith("dispatch."))


def _chain(coro: object) -> list[types.FrameType]:
    """The suspended frames of ``coro`` and of what it awaits, outermost first."""
    frames: list[types.FrameType] = []
    seen: set[int] = set()
    current: object = coro
    while len(frames) < MAX_DEPTH and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, types.CoroutineType):
            frame, current = current.cr_frame, current.cr_await
        elif isinstance(current, types.GeneratorType):
            frame, current = current.gi_frame, current.gi_yieldfrom
        elif isinstance(current, types.AsyncGeneratorType):
            frame, current = current.ag_frame, current.ag_await
        else:
            break  # a call, a group, a future: not a frame
        if frame is None:  # finished
            break
        if not _is_internal(frame):
            frames.append(frame)
    return frames


_HIDDEN = object()
"""Stands for the value of a redacted local: never summarized."""


def _locals(frame: types.FrameType, redact: tuple[str, ...]) -> list[tuple[str, object]]:
    """The frame's locals by name: the value, or ``_HIDDEN``."""
    # Read once: on 3.13 f_locals is a proxy over the frame, on 3.11 and 3.12
    # a dict refreshed from it at each access.
    items = list(frame.f_locals.items())
    return [
        (name, _HIDDEN if redacted(name, redact) else _scrub(value, redact))
        for name, value in items
        if isinstance(name, str)
    ]


class _Redacted:
    """Stands for a redacted entry of a dict in a summary."""

    def __repr__(self) -> str:
        return REDACTED


def _scrub(value: object, redact: tuple[str, ...], depth: int = 3) -> object:
    """``value``, with the entries of dicts (nested ones too) whose keys
    match ``redact`` hidden: ``config = {"api_key": ...}`` shows no key.
    Only the entries a summary can show are copied (one more, so that a
    longer dict is still summarized with "...")."""
    if depth == 0 or type(value) is not dict:
        return value
    scrubbed: dict[object, object] = {}
    for key, item in list(value.items())[: _summary.maxdict + 1]:
        hidden = isinstance(key, str) and redacted(key, redact)
        scrubbed[key] = _Redacted() if hidden else _scrub(item, redact, depth - 1)
    return scrubbed


def _frame_map(
    frame: types.FrameType,
    values: list[tuple[str, object]],
    size: int,
    keep_locals: bool,
) -> dict[str, Any]:
    local_map: dict[str, str] = {}
    if keep_locals:
        for name, value in values:
            local_map[_text(name)] = REDACTED if value is _HIDDEN else summarize(value, size)
    return {
        "function": _text(frame.f_code.co_qualname),
        "file": _text(frame.f_code.co_filename),
        "line": frame.f_lineno,
        "locals": local_map,
    }


def describe(
    coros: list[tuple[int, object]], redact: str | None = None, limit: int = MAX_SIZE
) -> bytes:
    """The msgpack description of where each ``(task id, coroutine)`` waits;
    see the module docstring. Read the frames before they are detached."""
    redact_patterns = patterns(redact)
    tasks = [
        (task_id, [(frame, _locals(frame, redact_patterns)) for frame in _chain(coro)])
        for task_id, coro in coros
    ]
    entries: list[bytes] = []
    total = 0
    for size, keep_locals in _LEVELS:
        entries = [
            msgpack.packb(
                {
                    "task": task_id,
                    "frames": [
                        _frame_map(frame, values, size, keep_locals) for frame, values in frames
                    ],
                },
                use_bin_type=True,
            )
            for task_id, frames in tasks
        ]
        total = _HEADER_SIZE + sum(len(entry) for entry in entries)
        if total <= limit:
            break
    while entries and total > limit:
        total -= len(entries.pop())  # the entry task comes first and stays longest
    header: bytes = msgpack.Packer().pack_array_header(len(entries))
    return header + b"".join(entries)


def try_describe(coros: list[tuple[int, object]], redact: str | None = None) -> bytes | None:
    """:func:`describe`, or None (logged at debug level) if anything goes wrong:
    a description never fails a poll."""
    try:
        return describe(coros, redact)
    except Exception:
        logger.debug("dispatch: could not describe where the run waits", exc_info=True)
        return None
