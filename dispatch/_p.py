"""The functions that snapshots call when they are loaded, under stable names.

A snapshot names one function here in full, ``h``; every other function it
calls is ``h(index)``, written once per snapshot and shared through pickle's
memo. That keeps snapshots small and their loading fast: each name a pickle
spells out costs bytes, and a trip through the import system on load. Only
``l``, which the standard pickler writes around a payload, is also named in
full, so that loading it imports this module in a fresh interpreter.

Renaming, removing or reordering anything here breaks existing snapshots:
that is a new ``FORMAT_VERSION``.
"""

from collections.abc import Callable
from typing import Any

from .experimental.durable import _identity, _pickling, _snapshot

CALLED_BY_INDEX: tuple[Callable[..., Any], ...] = (
    _snapshot.restore_generator,
    _snapshot.new_generator,
    _snapshot.restore_frame,
    _snapshot.restore_finished,
    _identity.load_ref,
    _pickling._make_cell,
    _pickling._fill_cell,
    _pickling._make_function,
    _pickling._await,
    _pickling._asend,
    _pickling._rebuild_exception,
    _pickling._sequence_iterator,
    _pickling._range_iterator,
    _pickling._no_traceback,
)


def h(index: int) -> Callable[..., Any]:
    """The function a snapshot calls by ``index``."""
    return CALLED_BY_INDEX[index]


l = _pickling.load_snapshot  # noqa: E741
l.__module__, l.__qualname__, l.__name__ = __name__, "l", "l"

_pickling.prepared.update(
    {function: (h, (index,)) for index, function in enumerate(CALLED_BY_INDEX)}
)
