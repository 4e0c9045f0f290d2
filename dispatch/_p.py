"""Short, stable names for the functions that snapshots call when they are loaded.

A pickle names each function it calls by module and qualified name; these
are the names written into every snapshot, kept short because they appear in
each one. Renaming or removing any of them breaks existing snapshots: that
is a new ``FORMAT_VERSION``.
"""

from collections.abc import Callable
from typing import Any

from .experimental.durable import _identity, _pickling, _snapshot


def _export(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    function.__module__ = __name__
    function.__qualname__ = function.__name__ = name
    return function


g = _export("g", _snapshot.new_generator)
s = _export("s", _snapshot.restore_frame)
f = _export("f", _snapshot.restore_finished)
r = _export("r", _identity.load_ref)
c = _export("c", _pickling._make_cell)
cs = _export("cs", _pickling._fill_cell)
fn = _export("fn", _pickling._make_function)
aw = _export("aw", _pickling._await)
ag = _export("ag", _pickling._asend)
x = _export("x", _pickling._rebuild_exception)
i = _export("i", _pickling._sequence_iterator)
ri = _export("ri", _pickling._range_iterator)
l = _export("l", _pickling.load_snapshot)  # noqa: E741
nt = _export("nt", _pickling._no_traceback)
