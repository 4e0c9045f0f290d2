"""Errors raised by dispatch itself.

::

    DispatchError
    ├── CallError          a call failed and its exception could not be brought back
    ├── ClientError        the orchestrator refused a request from the client
    └── OutputRejected     a function returned a value its output type handler rejected
"""

from __future__ import annotations

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
