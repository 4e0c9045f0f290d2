"""``gather``, ``all``, ``any`` and ``race``: wait on several calls and coroutines.

Each returns an awaitable that, awaited inside a dispatch function, hands
the whole group to the scheduler at once: calls go to the orchestrator in
one poll, coroutines run locally and concurrently in the same request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any

from ._function import Call
from .experimental.durable import durable

ALL = 0
ANY = 1
RACE = 2

_NAMES = {ALL: "all", ANY: "any", RACE: "race"}


class Combinator:
    """A group of awaitables waited on together; see :func:`gather`."""

    __slots__ = ("awaitables", "kind")

    def __init__(self, kind: int, awaitables: tuple[Awaitable[Any], ...]) -> None:
        for index, awaitable in enumerate(awaitables):
            if not isinstance(awaitable, Call) and not hasattr(awaitable, "__await__"):
                raise TypeError(
                    f"dispatch.{_NAMES[kind]}() takes calls and coroutines; argument {index} "
                    f"is {type(awaitable).__name__}"
                )
        if not awaitables and kind != ALL:
            raise ValueError(f"dispatch.{_NAMES[kind]}() needs at least one awaitable")
        self.kind = kind
        self.awaitables = awaitables

    def __repr__(self) -> str:
        return f"dispatch.{_NAMES[self.kind]}({', '.join(map(repr, self.awaitables))})"

    def __await__(self) -> Generator[Any, Any, Any]:
        return _await_group([self])


@durable
def _await_group(box: list[Combinator]) -> Generator[Any, Any, Any]:
    # The group leaves the frame as it is yielded (box.pop()), so a suspended
    # frame does not keep the arguments of every call in its snapshot.
    return (yield box.pop())


def gather(*awaitables: Awaitable[Any]) -> Awaitable[list[Any]]:
    """Wait for every awaitable; their results in order. The first error fails
    the whole group (and cancels what is still running)."""
    return Combinator(ALL, awaitables)


def all_(*awaitables: Awaitable[Any]) -> Awaitable[list[Any]]:
    """Same as :func:`gather`."""
    return Combinator(ALL, awaitables)


def any_(*awaitables: Awaitable[Any]) -> Awaitable[Any]:
    """The first successful result; the others are cancelled. If every
    awaitable fails, raises an :class:`ExceptionGroup` of all the errors."""
    return Combinator(ANY, awaitables)


def race(*awaitables: Awaitable[Any]) -> Awaitable[Any]:
    """The first awaitable to finish, whether with a result or an error; the
    others are cancelled."""
    return Combinator(RACE, awaitables)
