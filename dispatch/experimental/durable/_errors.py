"""Errors raised by the frame core.

::

    SnapshotError
    ├── IncompatibleStateError   the snapshot was taken by other code or another interpreter
    ├── InvalidStateError        the snapshot is corrupt or forged (ValueError too)
    └── UnpicklableStateError    a frame holds something that cannot be snapshotted (TypeError too)

What the caller does next differs for each: an incompatible snapshot can be
retried from scratch on the new code; an invalid one must never be resumed;
an unpicklable one is a bug in the durable function to report to its author.
"""

from __future__ import annotations


class SnapshotError(Exception):
    """Base class of the frame core's errors."""


class IncompatibleStateError(SnapshotError):
    """The snapshot does not match this process: format version, Python
    version, or the code of a function in it changed. The message names both
    the recorded and the current value."""


class InvalidStateError(SnapshotError, ValueError):
    """The snapshot is malformed or does not fit the code it claims to be
    from (a corrupted or forged snapshot). Nothing was resumed."""


class UnpicklableStateError(SnapshotError, TypeError):
    """A suspended frame holds a value that cannot be snapshotted. The
    message names the function, the local variable or stack slot, and the
    value's type."""
