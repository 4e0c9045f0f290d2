"""Durable generators and coroutines: suspended frames that pickle and resume exactly.

Decorate a generator function, ``async def`` function or async generator
function with :func:`durable`; what it returns can be pickled at any
suspension point with the standard :mod:`pickle` module and resumed in
another process. :func:`dumps` and :func:`loads` do the same for any object
graph holding such frames, and keep shared objects shared between them.
"""

from ._decorator import durable
from ._errors import (
    IncompatibleStateError,
    InvalidStateError,
    SnapshotError,
    UnpicklableStateError,
)
from ._pickling import FORMAT_VERSION, dumps, loads

__all__ = [
    "FORMAT_VERSION",
    "IncompatibleStateError",
    "InvalidStateError",
    "SnapshotError",
    "UnpicklableStateError",
    "dumps",
    "durable",
    "loads",
]

# Give the functions that snapshots refer to their short, stable names.
from ... import _p  # noqa: F401
