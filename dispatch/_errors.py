"""Errors raised by dispatch itself.

::

    DispatchError
    ├── CallError          a call failed and its exception could not be brought back
    ├── ClientError        the orchestrator refused a request from the client
    └── OutputRejected     a function returned a value its output type handler rejected

    Cancelled              (an asyncio.CancelledError) the call was cancelled
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._status import Status


class DispatchError(Exception):
    """Base class of the errors dispatch raises."""


class CallError(DispatchError):
    """A call failed, and the exception it raised could not be restored here
    (it could not be pickled, or its class is not importable). Carries what
    the failed call reported."""

    def __init__(self, type: str, message: str, status: Status, traceback: str | None) -> None:  # noqa: A002
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        self.message = message
        self.status = status
        self.traceback = traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (CallError, (self.type, self.message, self.status, self.traceback))


class ClientError(DispatchError):
    """The orchestrator answered a client request with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (ClientError, (self.status, self.message))


class OutputRejected(DispatchError):
    """A function returned a value that the handler registered for its type
    (``register_output_type``) turned into an error status."""

    def __init__(self, value: object, status: Status) -> None:
        super().__init__(f"the function returned {value!r}, which means {status.name}")
        self.value = value
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        return (OutputRejected, (self.value, self.status))


class Cancelled(asyncio.CancelledError):
    """Raised at the awaits of a durable coroutine whose call was cancelled
    (``dispatch calls cancel``, the dashboard, or its parent finishing
    first), so that its ``finally`` blocks and ``except Cancelled``
    handlers run. Like any cancellation, it is not an ``Exception``: an
    ``except Exception`` does not swallow it. Cleanup code may not await
    dispatch calls (each raises ``Cancelled`` at once); whatever the
    coroutine then returns or raises, its result is "cancelled"."""

    def __init__(self, message: str = "the call was cancelled") -> None:
        super().__init__(message)
