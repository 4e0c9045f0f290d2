"""dispatch: durable execution for Python.

Decorate functions with :func:`function`; an ``async`` one becomes a durable
coroutine whose every ``await`` of another dispatch function is a durable
step. Serve the application with :func:`run` (or mount :class:`Dispatch` in
an existing ASGI app) and send calls with ``f.dispatch(...)``, a
:func:`batch`, or a :class:`Client`.
"""

from ._client import Client
from ._combinators import all_ as all  # noqa: A004 - the public API names them so
from ._combinators import any_ as any  # noqa: A004
from ._combinators import gather, race
from ._endpoint import Dispatch
from ._errors import CallError, Cancelled, ClientError, DispatchError
from ._function import Batch, Call, DispatchID, Function, default_registry, function
from ._run import run
from ._status import Status, register_error_type, register_output_type


def batch() -> Batch:
    """A batch of calls sent together, atomically: ``batch().add(f(x)).add(g(y)).dispatch()``."""
    return Batch(default_registry())


__all__ = [
    "Call",
    "CallError",
    "Cancelled",
    "Client",
    "ClientError",
    "Dispatch",
    "DispatchError",
    "DispatchID",
    "Function",
    "Status",
    "all",
    "any",
    "batch",
    "function",
    "gather",
    "race",
    "register_error_type",
    "register_output_type",
    "run",
]
