"""Dispatch functions, the calls they build, batches, and the registry.

``@dispatch.function`` turns a function into a :class:`Function`. Calling it
builds a :class:`Call` (function name and arguments) without running
anything; the call can be awaited inside a durable coroutine (a durable
step: the orchestrator runs it, with retries, and the coroutine resumes with
its result), given to a combinator, added to a batch, or sent on its own
with :meth:`Function.dispatch`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, ParamSpec, TypeAlias, TypeVar, overload

from .experimental.durable import durable

P = ParamSpec("P")
R = TypeVar("R")

DispatchID: TypeAlias = str
"""The identifier the orchestrator gives a call; opaque."""


class Call(Generic[R]):
    """A call of a dispatch function: its name and arguments, not yet run.

    Await it inside a ``@dispatch.function`` coroutine to run it as a durable
    step and get its result; or pass it to ``gather``/``all``/``any``/
    ``race``, or to ``batch().add``.
    """

    __slots__ = ("args", "function", "kwargs")

    def __init__(self, function: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args]
        arguments += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.function}({', '.join(arguments)})"

    def __await__(self) -> Generator[Any, Any, R]:
        if _outbox.get() is None:
            raise RuntimeError(
                f"{self!r} can only be awaited inside a dispatch function that dispatch runs; "
                f"to start it from here, use {self.function}.dispatch(...) or dispatch.batch()"
            )
        return _await_call([self])


@durable
def _await_call(box: list[Call[Any]]) -> Generator[Any, Any, Any]:
    # The scheduler takes the yielded call, sends it to the orchestrator and
    # resumes this frame with its result (or throws its error into it). The
    # call leaves the frame as it is yielded, so a suspended frame does not
    # carry the call's arguments in its snapshot.
    return (yield box.pop())


class Function(Generic[P, R]):
    """A function registered with dispatch (what ``@dispatch.function`` returns)."""

    def __init__(self, func: Callable[P, Any], name: str, registry: Registry) -> None:
        self.__wrapped__ = func
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__module__ = func.__module__
        self.__doc__ = func.__doc__
        self.name = name
        self.registry = registry
        self.is_async = inspect.iscoroutinefunction(func)

    def __repr__(self) -> str:
        kind = "async function" if self.is_async else "function"
        return f"<dispatch {kind} {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        """Build a call of this function; nothing runs until it is awaited or dispatched."""
        return Call(self.name, args, kwargs)

    def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> DispatchID:
        """Send a call of this function to the orchestrator; returns its id at once.

        Inside a running dispatch function the call is sent together with that
        function's next step (atomically with it: a retried step does not
        send it twice); elsewhere it goes through the :class:`dispatch.Client`.
        """
        return Batch(self.registry).add(self(*args, **kwargs)).dispatch()[0]

    def __reduce__(self) -> str:
        # Pickled by name, like the function it wraps.
        return self.__qualname__


class Batch:
    """Calls sent together, atomically, in one request (``dispatch.batch()``)."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or default_registry()
        self.calls: list[Call[Any]] = []

    def add(self, call: Call[Any]) -> Batch:
        """Add a call (returns the batch, so adds chain)."""
        if not isinstance(call, Call):
            raise TypeError(
                f"batch.add takes a call such as greet('Jane') (a dispatch function "
                f"called with its arguments), not {type(call).__name__}"
            )
        self.calls.append(call)
        return self

    def dispatch(self) -> list[DispatchID]:
        """Send every call added so far; their ids, in order. Empties the batch."""
        calls, self.calls = self.calls, []
        if not calls:
            return []
        return self.registry.sender(calls)


Sender: TypeAlias = Callable[[list[Call[Any]]], list[DispatchID]]


class Registry:
    """The dispatch functions of an application, by name."""

    def __init__(self) -> None:
        self.functions: dict[str, Function[Any, Any]] = {}
        self._lock = threading.Lock()
        self._sender: Sender | None = None

    def register(self, func: Callable[P, Any], name: str | None = None) -> Function[P, Any]:
        if isinstance(func, Function):
            raise TypeError(f"{func!r} is already a dispatch function")
        if not callable(func) or not hasattr(func, "__qualname__"):
            raise TypeError(f"@dispatch.function applies to functions, not {func!r}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"@dispatch.function applies to functions and async functions, not to the "
                f"generator function {func.__qualname__}"
            )
        name = name or func.__qualname__
        if not name.isprintable() or not name.strip():
            raise ValueError(f"invalid dispatch function name {name!r}")
        if inspect.iscoroutinefunction(func):
            durable(func)
        function: Function[P, Any] = Function(func, name, self)
        with self._lock:
            existing = self.functions.get(name)
            if existing is not None and not _same_function(existing.__wrapped__, func):
                raise ValueError(
                    f"a dispatch function named {name!r} is already registered "
                    f"({existing.__module__}.{existing.__qualname__}); give one of them another "
                    f"name with @dispatch.function(name=...)"
                )
            self.functions[name] = function
        return function

    def lookup(self, name: str) -> Function[Any, Any] | None:
        return self.functions.get(name)

    @property
    def sender(self) -> Sender:
        """Where ``dispatch()`` sends calls: the current run's outbox while a
        function runs in this context, else the configured client."""
        override = _outbox.get()
        if override is not None:
            return override
        if self._sender is None:
            from ._client import Client

            self._sender = Client().dispatch_calls
        return self._sender

    def use_sender(self, sender: Sender | None) -> None:
        """Send ``dispatch()`` calls outside of runs through ``sender`` (e.g. a Client)."""
        self._sender = sender


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # The same function defined again (a module imported twice, as __main__
    # and by name; or re-executed in a notebook) may take over its name.
    return getattr(a, "__module__", None) == getattr(b, "__module__", None) and getattr(
        a, "__qualname__", None
    ) == getattr(b, "__qualname__", None)


_outbox: contextvars.ContextVar[Sender | None] = contextvars.ContextVar(
    "dispatch_outbox", default=None
)

_default_registry = Registry()


def default_registry() -> Registry:
    return _default_registry


@overload
def function(func: Callable[P, Coroutine[Any, Any, R]], /) -> Function[P, R]: ...
@overload
def function(func: Callable[P, R], /) -> Function[P, R]: ...
@overload
def function(
    *, name: str | None = None
) -> Callable[[Callable[P, Awaitable[R] | R]], Function[P, R]]: ...


def function(func: Any = None, /, *, name: str | None = None) -> Any:
    """Register a function with dispatch: ``@dispatch.function`` or
    ``@dispatch.function(name="...")``.

    Calling the result builds a call without running it. An ``async``
    function becomes a durable coroutine: each ``await`` of another dispatch
    function is a durable step, and the coroutine may be suspended, saved and
    resumed in another process between steps. A plain function runs in a
    worker thread.
    """
    if func is None:
        return functools.partial(_default_registry.register, name=name)
    return _default_registry.register(func, name)
