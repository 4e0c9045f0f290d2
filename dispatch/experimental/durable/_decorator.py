"""The ``@durable`` decorator."""

from __future__ import annotations

from types import FunctionType, MethodType
from typing import Any, TypeVar

from ._identity import is_generator_code
from ._snapshot import durable_codes

F = TypeVar("F")


def _target(obj: Any) -> FunctionType | None:
    """The generator or coroutine function behind ``obj`` (methods, wrappers)."""
    seen = 0
    while seen < 16:
        seen += 1
        if isinstance(obj, (classmethod, staticmethod, MethodType)):
            obj = obj.__func__
        elif isinstance(obj, FunctionType) and is_generator_code(obj.__code__):
            return obj
        elif hasattr(obj, "__wrapped__"):
            obj = obj.__wrapped__
        else:
            return None
    return None


def durable(fn: F) -> F:
    """Make the generators, coroutines and async generators that ``fn`` creates
    serializable with :mod:`pickle`, at any suspension point.

    ``fn`` may be a generator function, an ``async def`` function, an async
    generator function, a ``types.coroutine`` generator, or such a method
    (instance, ``classmethod`` or ``staticmethod``, in either decorator
    order). The decorator returns ``fn`` itself: calling it, awaiting or
    iterating what it returns, ``inspect`` and reprs all behave exactly as
    without it. A snapshot records the function by module and qualified name,
    so a fresh interpreter that can import that module can resume it.
    """
    target = _target(fn)
    if target is None:
        raise TypeError(
            f"@durable applies to generator functions, async functions and async generator "
            f"functions, not {fn!r}"
        )
    target.__durable__ = True  # type: ignore[attr-defined]
    durable_codes.add(target.__code__)
    return fn
