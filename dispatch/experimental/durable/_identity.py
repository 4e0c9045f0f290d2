"""Identity of the code a frame runs: module + qualified name + fingerprint.

A snapshot names the code of each frame by the module and qualified name of
the function that owns it. Code that is not reachable by name itself (a
lambda, a generator expression, a function defined inside another) is named
by its nearest reachable ancestor plus the path of indices through nested
``co_consts`` that leads to it.

The fingerprint covers what decides how a frame executes (bytecode,
constants including nested code, names, flags, argument counts, stack size,
exception table) and leaves out what does not (file name, line numbers,
positions), so a function can move within or between files and resume, but
changing ``x + 1`` into ``x + 2`` is detected.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import struct
import sys
from collections.abc import Callable
from types import CodeType, FunctionType
from typing import Any

from ._errors import IncompatibleStateError, UnpicklableStateError

_GENERATOR_FLAGS = (
    0x20 | 0x80 | 0x100 | 0x200
)  # GENERATOR, COROUTINE, ITERABLE_COROUTINE, ASYNC_GENERATOR


def _encode(value: object, out: bytearray) -> None:
    """Append a canonical, process-independent encoding of a constant."""
    if isinstance(value, CodeType):
        out += b"C" + fingerprint(value)
    elif value is None or value is Ellipsis or isinstance(value, bool):
        out += b"K" + repr(value).encode()
    elif isinstance(value, int):
        data = str(value).encode()
        out += b"I" + struct.pack("<I", len(data)) + data
    elif isinstance(value, float):
        out += b"F" + value.hex().encode() + b";"
    elif isinstance(value, complex):
        out += b"J" + value.real.hex().encode() + b"," + value.imag.hex().encode() + b";"
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        out += b"S" + struct.pack("<I", len(data)) + data
    elif isinstance(value, bytes):
        out += b"B" + struct.pack("<I", len(value)) + value
    elif isinstance(value, tuple):
        out += b"T" + struct.pack("<I", len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, frozenset):
        # Iteration order of a frozenset of strings depends on the hash seed.
        parts = []
        for item in value:
            part = bytearray()
            _encode(item, part)
            parts.append(bytes(part))
        out += b"Z" + struct.pack("<I", len(parts))
        for encoded in sorted(parts):
            out += encoded
    else:  # pragma: no cover - the compiler emits no other constants
        out += b"?" + repr(value).encode()


_fingerprints: dict[int, tuple[CodeType, bytes]] = {}


def fingerprint(code: CodeType) -> bytes:
    """An 8-byte digest of everything about ``code`` that decides how it runs."""
    cached = _fingerprints.get(id(code))
    if cached is not None and cached[0] is code:
        return cached[1]
    out = bytearray()
    out += code.co_code
    _encode(
        (
            code.co_flags,
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_nlocals,
            code.co_stacksize,
            code.co_names,
            code.co_varnames,
            code.co_cellvars,
            code.co_freevars,
            code.co_exceptiontable,
            code.co_consts,
        ),
        out,
    )
    digest = hashlib.blake2b(bytes(out), digest_size=8).digest()
    _fingerprints[id(code)] = (code, digest)
    return digest


def _candidates(obj: object) -> list[object]:
    """``obj`` and what it wraps: bound and class/static methods, decorators."""
    found: list[object] = []
    pending = [obj]
    while pending and len(found) < 16:
        item = pending.pop()
        if any(item is seen for seen in found):
            continue
        found.append(item)
        for attr in ("__func__", "__wrapped__"):
            try:
                inner = getattr(item, attr)
            except Exception:
                continue
            pending.append(inner)
    return found


def _lookup(module_name: str, qualname: str) -> object:
    """The object that ``module_name`` + ``qualname`` names (importing the module)."""
    obj: object = sys.modules.get(module_name) or importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def find_function(module_name: str, qualname: str) -> FunctionType:
    """The function whose code's qualified name is ``qualname`` in ``module_name``."""
    for candidate in _candidates(_lookup(module_name, qualname)):
        if isinstance(candidate, FunctionType) and candidate.__code__.co_qualname == qualname:
            return candidate
    raise LookupError(f"{module_name}.{qualname} is not a function")


def _find_path(root: CodeType, target: CodeType) -> tuple[int, ...] | None:
    for index, const in enumerate(root.co_consts):
        if const is target:
            return (index,)
        if isinstance(const, CodeType):
            sub = _find_path(const, target)
            if sub is not None:
                return (index, *sub)
    return None


class CodeRef:
    """A reference to a code object that survives pickling by name.

    One instance per code object, shared by every snapshot of it, so pickle's
    memo writes it once per pickle however many frames run that code.
    """

    __slots__ = (
        "blank_args",
        "blank_kwargs",
        "code",
        "fingerprint",
        "fresh",
        "function",
        "module",
        "path",
        "plans",
        "qualname",
        "reduced",
    )

    def __init__(
        self,
        module: str,
        qualname: str,
        path: tuple[int, ...],
        code: CodeType,
        function: FunctionType,
    ) -> None:
        # Interned, so every reference to a module shares one string object
        # and pickle's memo writes it once, whoever created the reference.
        self.module = sys.intern(module)
        self.qualname = sys.intern(qualname)
        self.path = path
        self.code = code
        self.fingerprint = fingerprint(code)
        #: The function to call for a fresh frame (the root one when path is empty).
        self.function = function
        names = code.co_varnames
        self.blank_args = (None,) * code.co_argcount
        kwonly = names[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
        self.blank_kwargs: dict[str, Any] = dict.fromkeys(kwonly)
        #: Makes a fresh generator of this code: the function called with
        #: placeholder arguments, which only binds them (no body code runs).
        self.fresh = functools.partial(function, *self.blank_args, **self.blank_kwargs)
        identity = (self.module, self.qualname, self.fingerprint)
        self.reduced = (load_ref, (*identity, path) if path else identity)
        #: How to validate and restore frames of this code (set on first restore).
        self.plans: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduced

    def __repr__(self) -> str:
        suffix = f" {list(self.path)}" if self.path else ""
        return f"<code {self.module}.{self.qualname}{suffix}>"


_refs: dict[int, CodeRef] = {}


def describe(code: CodeType, module: str | None = None) -> str:
    return f"{module}.{code.co_qualname}" if module else code.co_qualname


def code_ref(
    code: CodeType, function: object, module_of: Callable[[object], str | None]
) -> CodeRef:
    """The reference of ``code``, run by ``function`` (``module_of`` names its module)."""
    ref = _refs.get(id(code))
    if ref is not None and ref.code is code:
        return ref
    module = module_of(function)
    if module is None:
        raise UnpicklableStateError(f"cannot snapshot {describe(code)}: its module is unknown")
    qualname = code.co_qualname
    root_name = qualname.split(".<locals>.", 1)[0]
    try:
        root = find_function(module, root_name)
    except Exception:
        root = None
    path: tuple[int, ...] | None = None
    if root is not None:
        path = () if root.__code__ is code else _find_path(root.__code__, code)
    if root is None or path is None:
        raise UnpicklableStateError(
            f"cannot snapshot {describe(code, module)} ({type(function).__name__}): its "
            f"function is not reachable by module + qualified name, so another process "
            f"could not find its code; define it at module level or inside a function "
            f"that is"
        )
    ref = CodeRef(module, qualname, path, code, root)
    _refs[id(code)] = ref
    return ref


_loaded: dict[tuple[str, str, tuple[int, ...], bytes], tuple[object, CodeRef]] = {}


def load_ref(module: str, qualname: str, digest: bytes, path: tuple[int, ...] = ()) -> CodeRef:
    """Resolve a reference written by :meth:`CodeRef.__reduce__` in this process."""
    key = (module, qualname, path, digest)
    try:
        loaded = _loaded.get(key)
    except TypeError:  # unhashable: not something CodeRef.__reduce__ wrote
        raise IncompatibleStateError(f"malformed code reference {key!r}") from None
    if loaded is not None and sys.modules.get(module) is loaded[0]:
        return loaded[1]
    ref = _resolve(module, qualname, path, digest)
    _loaded[key] = (sys.modules.get(module), ref)
    return ref


def _resolve(module: str, qualname: str, path: tuple[int, ...], digest: bytes) -> CodeRef:
    root_name = qualname.split(".<locals>.", 1)[0]
    try:
        root = find_function(module, root_name)
    except Exception as exc:
        raise IncompatibleStateError(
            f"the snapshot needs {module}.{root_name}, which this process cannot find "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    code = root.__code__
    for index in path:
        consts = code.co_consts
        if not (isinstance(index, int) and 0 <= index < len(consts)) or not isinstance(
            consts[index], CodeType
        ):
            raise IncompatibleStateError(
                f"the code of {module}.{qualname} changed: its nested code is not where "
                f"the snapshot recorded it"
            )
        code = consts[index]
    if code.co_qualname != qualname:
        raise IncompatibleStateError(
            f"the code of {module}.{qualname} changed: found {code.co_qualname} instead"
        )
    ref = _refs.get(id(code))
    if ref is None or ref.code is not code:
        ref = CodeRef(module, qualname, tuple(path), code, root)
        _refs[id(code)] = ref
    if ref.fingerprint != digest:
        raise IncompatibleStateError(
            f"the code of {module}.{qualname} changed since the snapshot was taken "
            f"(fingerprint {bytes(digest).hex()} recorded, {ref.fingerprint.hex()} now)"
        )
    return ref


def is_generator_code(code: CodeType) -> bool:
    return bool(code.co_flags & _GENERATOR_FLAGS)
