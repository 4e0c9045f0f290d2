"""The wire protocol: messages, the msgpack codec, values and sealing.

``docs/protocol.md`` is the specification; this module implements it.

Messages are frozen dataclasses; each encodes itself with ``to_msgpack()``
and decodes with ``Class.from_msgpack(data)``. Values (arguments, outputs)
travel inside messages as opaque bytes made by :func:`encode_value`: plain
data as msgpack that the orchestrator and its users can read, anything else
pickled and sealed with a key only the application holds.

::

    ValueError
    ├── ProtocolError          malformed bytes, wrong version, missing or ill-typed field
    └── SealError              a sealed payload that does not verify: never unpickled
    TypeError
    └── UnpicklableValueError  a value that neither pickle nor cloudpickle can encode
"""

from __future__ import annotations

import hashlib
import hmac
import math
import pickle
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import cloudpickle  # type: ignore[import-untyped]
import msgpack  # type: ignore[import-untyped]

PROTOCOL_VERSION = 1

# --- errors ---------------------------------------------------------------------------------


class ProtocolError(ValueError):
    """Bytes that do not follow the protocol: malformed msgpack, another
    protocol version, a missing or ill-typed field. ``field`` is the dotted
    path of the offending field, e.g. ``RunRequest.poll.results[3].dispatch_id``."""

    def __init__(self, problem: str, field: str = "") -> None:
        super().__init__(problem, field)
        self.problem = problem
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}" if self.field else self.problem

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, str]]:
        return ProtocolError, (self.problem, self.field)

    def _nest(self, outer: str) -> None:
        # Errors are raised where a field is read and named on the way out,
        # so the path costs nothing unless something is wrong.
        self.field = f"{outer}.{self.field}" if self.field else outer
        self.args = (self.problem, self.field)


class SealError(ValueError):
    """A sealed payload that is truncated, sealed by an unknown key, or whose
    seal does not verify (tampered, or sealed for another purpose)."""


class UnpicklableValueError(TypeError):
    """A value that is not plain data and that neither pickle nor
    cloudpickle can serialize."""


# --- sealing --------------------------------------------------------------------------------

_SEAL_FORMAT = 1
_KEY_ID_SIZE = 4
_MAC_SIZE = 32
_SEAL_HEADER_SIZE = 1 + _KEY_ID_SIZE + _MAC_SIZE
_MIN_KEY_SIZE = 32


def generate_key() -> bytes:
    """A new random sealing key (32 bytes)."""
    return secrets.token_bytes(32)


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:_KEY_ID_SIZE]


def _check_context(context: bytes) -> None:
    # The MAC covers context + NUL + data: a NUL inside the context would let
    # two different (context, data) pairs share a MAC.
    if b"\x00" in context:
        raise ValueError("a seal context must not contain a NUL byte")


class Sealer:
    """Seals bytes with HMAC-SHA256 so that only holders of the key can make
    payloads this process will trust.

    ``keys`` is one key or a sequence of keys of at least 32 bytes each.
    The first key seals; every key verifies, so a key can be rotated by
    putting the new one first and keeping the old one until what it sealed
    is gone. A sealed payload is ``b"\\x01" + key id (4 bytes: the start of
    sha256(key)) + HMAC-SHA256(key, context + b"\\x00" + data) + data``.
    """

    __slots__ = ("_key", "_key_id", "_keys")

    def __init__(self, keys: bytes | Iterable[bytes]) -> None:
        keys = [keys] if isinstance(keys, bytes) else list(keys)
        if not keys:
            raise ValueError("a Sealer needs at least one key")
        by_id: dict[bytes, bytes] = {}
        for key in keys:
            if not isinstance(key, bytes):
                raise TypeError(f"a sealing key must be bytes, got {type(key).__name__}")
            if len(key) < _MIN_KEY_SIZE:
                raise ValueError(
                    f"a sealing key must be at least {_MIN_KEY_SIZE} bytes, got {len(key)}"
                )
            if by_id.setdefault(_key_id(key), key) != key:
                raise ValueError("two sealing keys share a key id; generate another key")
        self._key = keys[0]
        self._key_id = _key_id(keys[0])
        self._keys = by_id

    def seal(self, data: bytes, context: bytes) -> bytes:
        """``data`` with a seal binding it to the first key and to ``context``."""
        _check_context(context)
        mac = hmac.digest(self._key, context + b"\x00" + data, "sha256")
        return b"".join((b"\x01", self._key_id, mac, data))

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """The data inside ``sealed``, once its seal verifies for ``context``
        with one of the keys; :class:`SealError` otherwise."""
        _check_context(context)
        if len(sealed) < _SEAL_HEADER_SIZE:
            raise SealError(f"truncated sealed payload ({len(sealed)} bytes)")
        if sealed[0] != _SEAL_FORMAT:
            raise SealError(f"bad seal: unknown seal format {sealed[0]}")
        key_id = sealed[1 : 1 + _KEY_ID_SIZE]
        key = self._keys.get(key_id)
        if key is None:
            raise SealError(f"unknown key: sealed with key id {key_id.hex()}, not configured here")
        data = sealed[_SEAL_HEADER_SIZE:]
        mac = hmac.digest(key, context + b"\x00" + data, "sha256")
        if not hmac.compare_digest(mac, sealed[1 + _KEY_ID_SIZE : _SEAL_HEADER_SIZE]):
            raise SealError("bad seal: the payload was modified or sealed for another purpose")
        return data


# --- values ---------------------------------------------------------------------------------

_EXT_SEALED_PICKLE = 1
_EXT_TUPLE = 2
_VALUE_CONTEXT = b"value"
# Each nested tuple is decoded by a nested msgpack call, which takes tens of
# kilobytes of C stack: deeper tuples are sealed as pickles instead.
_MAX_TUPLE_DEPTH = 32


@dataclass(frozen=True, slots=True, repr=False)
class Sealed:
    """A sealed pickle seen without the key (by :func:`readable`): its size only."""

    size: int

    def __repr__(self) -> str:
        return f"<sealed pickle, {self.size} bytes>"


def _pickle(value: object) -> bytes:
    try:
        return pickle.dumps(value, 5)
    except Exception:
        pass
    # Lambdas, local classes and the like: cloudpickle serializes them by value.
    try:
        pickled: bytes = cloudpickle.dumps(value, protocol=5)
    except Exception as error:
        raise UnpicklableValueError(
            f"cannot encode a value of type {type(value).__qualname__}: {error}"
        ) from error
    return pickled


def _pack_value(value: object, default: Callable[[object], Any]) -> bytes:
    # strict_types: subclasses (namedtuples, IntEnums, OrderedDicts, ...) and
    # tuples reach `default`, which keeps their type; datetime: aware
    # datetimes become msgpack timestamps, naive ones reach `default`.
    packed: bytes = msgpack.packb(
        value, default=default, strict_types=True, datetime=True, use_bin_type=True
    )
    return packed


def encode_value(value: object, sealer: Sealer) -> bytes:
    """``value`` as msgpack: plain data natively, tuples as ext 2, aware
    datetimes as timestamps, anything else as a sealed pickle (ext 1).

    Raises :class:`UnpicklableValueError` when a value cannot be pickled.
    """
    depth = 0

    def default(item: object) -> Any:
        nonlocal depth
        if type(item) is tuple and depth < _MAX_TUPLE_DEPTH:
            depth += 1
            try:
                return msgpack.ExtType(_EXT_TUPLE, _pack_value(list(item), default))
            finally:
                depth -= 1
        return msgpack.ExtType(_EXT_SEALED_PICKLE, sealer.seal(_pickle(item), _VALUE_CONTEXT))

    return _pack_value(value, default)


class _Escape(Exception):
    """Carries an error raised in an ext hook through msgpack, so that it is
    not mistaken for a msgpack error."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error


def _unpack_value(data: bytes, ext_hook: Callable[[int, bytes], Any]) -> Any:
    try:
        return msgpack.unpackb(
            data, ext_hook=ext_hook, timestamp=3, strict_map_key=False, use_list=True
        )
    except _Escape as escape:
        escaped = escape.error
    except (msgpack.UnpackException, ValueError, TypeError) as error:
        raise ProtocolError(f"malformed value: {type(error).__name__}: {error}") from error
    raise escaped  # outside the except block: no misleading exception context


def _decoder(open_sealed: Callable[[bytes], object]) -> Callable[[bytes], Any]:
    depth = 0

    def decode_extension(code: int, payload: bytes) -> object:
        nonlocal depth
        if code == _EXT_SEALED_PICKLE:
            return open_sealed(payload)
        if code == _EXT_TUPLE:
            if depth >= _MAX_TUPLE_DEPTH:
                raise ProtocolError(f"tuples nested deeper than {_MAX_TUPLE_DEPTH}")
            depth += 1
            try:
                items = _unpack_value(payload, ext_hook)
            finally:
                depth -= 1
            if type(items) is not list:
                raise ProtocolError("a tuple (ext 2) must hold an array")
            return tuple(items)
        raise ProtocolError(f"unknown ext type {code}")

    def ext_hook(code: int, payload: bytes) -> object:
        try:
            return decode_extension(code, payload)
        except Exception as error:
            raise _Escape(error) from None

    return lambda data: _unpack_value(data, ext_hook)


def decode_value(data: bytes, sealer: Sealer) -> Any:
    """The value :func:`encode_value` encoded. Every sealed pickle is verified
    before it is unpickled; one that does not verify raises :class:`SealError`.
    Malformed bytes raise :class:`ProtocolError`; an error while unpickling
    verified bytes (a class that no longer exists, ...) propagates as is."""

    def unpickle(payload: bytes) -> object:
        return pickle.loads(sealer.open(payload, _VALUE_CONTEXT))

    return _decoder(unpickle)(data)


def readable(data: bytes) -> Any:
    """A value decoded without the key, for people and dashboards: plain data
    as is, tuples as tuples, each sealed pickle as a :class:`Sealed`. Never
    unpickles anything."""
    return _decoder(lambda payload: Sealed(len(payload)))(data)


def encode_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], sealer: Sealer) -> bytes:
    """A call's arguments as the value ``[positional list, keyword map]``."""
    return encode_value([list(args), dict(kwargs)], sealer)


def decode_arguments(data: bytes, sealer: Sealer) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The ``(args, kwargs)`` that :func:`encode_arguments` encoded."""
    value = decode_value(data, sealer)
    if (
        type(value) is list
        and len(value) == 2
        and type(value[0]) is list
        and type(value[1]) is dict
        and all(type(name) is str for name in value[1])
    ):
        return tuple(value[0]), value[1]
    raise ProtocolError("arguments must be the array [positional array, map of str to value]")


# --- reading fields -------------------------------------------------------------------------
# Each reader takes the decoded map, the wire key and the Python field name
# (used only in errors). msgpack nil reads as an absent key.

_Wire = dict[str, Any]
_M = TypeVar("_M", bound="_Message")


def _invalid(value: object, expected: str, key: str, field: str) -> ProtocolError:
    if value is None:
        return ProtocolError(f"missing (wire key {key!r})", field)
    return ProtocolError(
        f"expected {expected}, got {type(value).__name__} (wire key {key!r})", field
    )


def _str(wire: _Wire, key: str, field: str) -> str:
    value = wire.get(key)
    if isinstance(value, str):
        return value
    raise _invalid(value, "str", key, field)


def _optional_str(wire: _Wire, key: str, field: str) -> str | None:
    value = wire.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _invalid(value, "str", key, field)


def _bytes(wire: _Wire, key: str, field: str) -> bytes:
    value = wire.get(key)
    if isinstance(value, bytes):
        return value
    raise _invalid(value, "bin", key, field)


def _optional_bytes(wire: _Wire, key: str, field: str) -> bytes | None:
    value = wire.get(key)
    if value is None or isinstance(value, bytes):
        return value
    raise _invalid(value, "bin", key, field)


def _int(wire: _Wire, key: str, field: str) -> int:
    value = wire.get(key)
    if type(value) is int:  # not bool
        return value
    raise _invalid(value, "int", key, field)


def _float(wire: _Wire, key: str, field: str) -> float:
    value = wire.get(key)
    if type(value) is float or type(value) is int:
        return float(value)
    raise _invalid(value, "float", key, field)


def _optional_float(wire: _Wire, key: str, field: str) -> float | None:
    return None if wire.get(key) is None else _float(wire, key, field)


def _array(wire: _Wire, key: str, field: str) -> tuple[Any, ...]:
    value = wire.get(key)
    if isinstance(value, tuple):  # arrays decode as tuples in messages
        return value
    raise _invalid(value, "array", key, field)


def _map(value: object, field: str) -> _Wire:
    if isinstance(value, dict):
        return value
    raise ProtocolError(f"expected map, got {type(value).__name__}", field)


def _nested(wire: _Wire, key: str, field: str, message: type[_M]) -> _M | None:
    value = wire.get(key)
    if value is None:
        return None
    try:
        return message._from_wire(_map(value, ""))
    except ProtocolError as error:
        error._nest(field)
        raise


def _each(items: tuple[Any, ...], field: str, message: type[_M]) -> tuple[_M, ...]:
    decoded = []
    for index, item in enumerate(items):
        try:
            decoded.append(message._from_wire(_map(item, "")))
        except ProtocolError as error:
            error._nest(f"{field}[{index}]")
            raise
    return tuple(decoded)


def _one_of(field_names: str, *values: object) -> None:
    if sum(value is not None for value in values) != 1:
        raise ProtocolError(f"exactly one of {field_names} must be set")


# --- messages -------------------------------------------------------------------------------


class _Message:
    """Encoding and decoding shared by every message."""

    __slots__ = ()

    def to_msgpack(self) -> bytes:
        """The message as msgpack bytes, with the protocol version."""
        packed: bytes = msgpack.packb({"v": PROTOCOL_VERSION, **self._to_wire()})
        return packed

    @classmethod
    def from_msgpack(cls, data: bytes) -> Self:
        """The message that ``data`` encodes; :class:`ProtocolError` if it is
        malformed, of another protocol version, or misses a field."""
        try:
            try:
                wire = msgpack.unpackb(data, use_list=False)
            except (msgpack.UnpackException, ValueError, TypeError) as error:
                raise ProtocolError(
                    f"malformed msgpack: {type(error).__name__}: {error}"
                ) from error
            wire = _map(wire, "")
            version = wire.get("v")
            if version != PROTOCOL_VERSION or type(version) is not int:
                if version is None:
                    raise ProtocolError("missing protocol version (wire key 'v')", "v")
                raise ProtocolError(
                    f"unsupported protocol version {version!r}, "
                    f"this side speaks version {PROTOCOL_VERSION}",
                    "v",
                )
            return cls._from_wire(wire)
        except ProtocolError as error:
            error._nest(cls.__name__)
            raise

    def _to_wire(self) -> _Wire:
        raise NotImplementedError

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Call(_Message):
    """A call of ``function`` with ``input``, the encoded arguments (see
    :func:`encode_arguments`). ``correlation_id`` routes its result back to
    the coroutine waiting on it; ``dispatch_id`` is set when the caller
    assigned the id itself; ``endpoint`` targets another application."""

    function: str
    input: bytes
    correlation_id: int = 0
    dispatch_id: str | None = None
    endpoint: str | None = None

    def _to_wire(self) -> _Wire:
        wire: _Wire = {"fn": self.function, "in": self.input}
        if self.correlation_id:
            wire["cid"] = self.correlation_id
        if self.dispatch_id is not None:
            wire["did"] = self.dispatch_id
        if self.endpoint is not None:
            wire["ep"] = self.endpoint
        return wire

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        return cls(
            _str(wire, "fn", "function"),
            _bytes(wire, "in", "input"),
            0 if wire.get("cid") is None else _int(wire, "cid", "correlation_id"),
            _optional_str(wire, "did", "dispatch_id"),
            _optional_str(wire, "ep", "endpoint"),
        )


@dataclass(frozen=True, slots=True)
class Error(_Message):
    """A failure: ``status`` (a dispatch.Status wire value), ``type`` the
    exception's ``module.qualname``, ``value`` the sealed pickled exception
    (None when it could not be pickled), ``traceback`` the formatted text."""

    status: int
    type: str
    message: str
    value: bytes | None = None
    traceback: str | None = None

    def _to_wire(self) -> _Wire:
        wire: _Wire = {"st": self.status, "type": self.type, "msg": self.message}
        if self.value is not None:
            wire["val"] = self.value
        if self.traceback is not None:
            wire["tb"] = self.traceback
        return wire

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        return cls(
            _int(wire, "st", "status"),
            _str(wire, "type", "type"),
            _str(wire, "msg", "message"),
            _optional_bytes(wire, "val", "value"),
            _optional_str(wire, "tb", "traceback"),
        )


@dataclass(frozen=True, slots=True)
class CallResult(_Message):
    """The result of the call with ``correlation_id``: its ``output`` (an
    encoded value, possibly the encoding of None) or its ``error``."""

    correlation_id: int
    dispatch_id: str
    output: bytes | None = None
    error: Error | None = None

    def __post_init__(self) -> None:
        if (self.output is None) == (self.error is None):
            raise ProtocolError("exactly one of output and error must be set")

    def _to_wire(self) -> _Wire:
        if self.error is None:
            return {"cid": self.correlation_id, "did": self.dispatch_id, "out": self.output}
        return {"cid": self.correlation_id, "did": self.dispatch_id, "err": self.error._to_wire()}

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        return cls(
            _int(wire, "cid", "correlation_id"),
            _str(wire, "did", "dispatch_id"),
            _optional_bytes(wire, "out", "output"),
            _nested(wire, "err", "error", Error),
        )


@dataclass(frozen=True, slots=True)
class PollResult(_Message):
    """What a suspended coroutine resumes with: its ``state``, echoed back
    verbatim, and the ``results`` of calls it waits on. ``error`` reports a
    failure of the poll itself; ``cancelled`` that the call was cancelled:
    each await raises :class:`dispatch.Cancelled`, so that cleanup runs."""

    state: bytes
    results: tuple[CallResult, ...]
    error: Error | None = None
    cancelled: bool = False

    def _to_wire(self) -> _Wire:
        wire: _Wire = {"state": self.state, "res": [result._to_wire() for result in self.results]}
        if self.error is not None:
            wire["err"] = self.error._to_wire()
        if self.cancelled:
            wire["cancelled"] = True
        return wire

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        cancelled = wire.get("cancelled", False)
        if type(cancelled) is not bool:
            raise _invalid(cancelled, "bool", "cancelled", "cancelled")
        return cls(
            _bytes(wire, "state", "state"),
            _each(_array(wire, "res", "results"), "results", CallResult),
            _nested(wire, "err", "error", Error),
            cancelled,
        )


@dataclass(frozen=True, slots=True)
class RunRequest(_Message):
    """The orchestrator asks an endpoint to run ``function``: a first run
    with ``input`` (encoded arguments), or a resume with ``poll``. Times are
    Unix seconds; ``attempt`` counts from 1."""

    function: str
    dispatch_id: str
    root_id: str
    parent_id: str | None
    creation_time: float
    expiration_time: float | None
    attempt: int
    input: bytes | None = None
    poll: PollResult | None = None

    def __post_init__(self) -> None:
        if (self.input is None) == (self.poll is None):
            raise ProtocolError("exactly one of input and poll must be set")

    def _to_wire(self) -> _Wire:
        wire: _Wire = {
            "fn": self.function,
            "did": self.dispatch_id,
            "root": self.root_id,
            "ctime": float(self.creation_time),
            "att": self.attempt,
        }
        if self.parent_id is not None:
            wire["parent"] = self.parent_id
        if self.expiration_time is not None:
            wire["xtime"] = float(self.expiration_time)
        if self.poll is None:
            wire["in"] = self.input
        else:
            wire["poll"] = self.poll._to_wire()
        return wire

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        return cls(
            _str(wire, "fn", "function"),
            _str(wire, "did", "dispatch_id"),
            _str(wire, "root", "root_id"),
            _optional_str(wire, "parent", "parent_id"),
            _float(wire, "ctime", "creation_time"),
            _optional_float(wire, "xtime", "expiration_time"),
            _int(wire, "att", "attempt"),
            _optional_bytes(wire, "in", "input"),
            _nested(wire, "poll", "poll", PollResult),
        )


@dataclass(frozen=True, slots=True)
class Exit(_Message):
    """A function finished: with an ``output`` (encoded value), an
    ``error``, or by handing over to ``tail_call`` whose result becomes its own."""

    output: bytes | None = None
    error: Error | None = None
    tail_call: Call | None = None

    def __post_init__(self) -> None:
        _one_of("output, error and tail_call", self.output, self.error, self.tail_call)

    def _to_wire(self) -> _Wire:
        if self.output is not None:
            return {"out": self.output}
        if self.error is not None:
            return {"err": self.error._to_wire()}
        assert self.tail_call is not None
        return {"tail": self.tail_call._to_wire()}

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        return cls(
            _optional_bytes(wire, "out", "output"),
            _nested(wire, "err", "error", Error),
            _nested(wire, "tail", "tail_call", Call),
        )


@dataclass(frozen=True, slots=True)
class Poll(_Message):
    """A coroutine suspends: keep ``state``, make ``calls``, cancel the calls
    with the correlation ids in ``cancel``, and resume it once
    ``min_results`` results are in or ``max_wait`` seconds have passed,
    with at most ``max_results`` results. ``where``, when set, describes
    where each task of the coroutine waits, for people: the msgpack of a
    list of ``{"task": id, "frames": [{"function", "file", "line",
    "locals"}, ...]}``, outermost frame first (see ``dispatch._where``)."""

    state: bytes
    calls: tuple[Call, ...]
    cancel: tuple[int, ...]
    min_results: int
    max_results: int
    max_wait: float
    where: bytes | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_results <= self.max_results:
            raise ProtocolError(
                f"need 1 <= min_results <= max_results, "
                f"got {self.min_results} and {self.max_results}",
                "min_results",
            )
        if not (self.max_wait > 0 and math.isfinite(self.max_wait)):
            raise ProtocolError(
                f"must be a positive number of seconds, got {self.max_wait}", "max_wait"
            )

    def _to_wire(self) -> _Wire:
        wire: _Wire = {
            "state": self.state,
            "calls": [call._to_wire() for call in self.calls],
            "cancel": self.cancel,
            "min": self.min_results,
            "max": self.max_results,
            "wait": float(self.max_wait),
        }
        if self.where is not None:
            wire["where"] = self.where
        return wire

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        cancel = _array(wire, "cancel", "cancel")
        for index, correlation_id in enumerate(cancel):
            if type(correlation_id) is not int:
                raise _invalid(correlation_id, "int", "cancel", f"cancel[{index}]")
        return cls(
            _bytes(wire, "state", "state"),
            _each(_array(wire, "calls", "calls"), "calls", Call),
            cancel,
            _int(wire, "min", "min_results"),
            _int(wire, "max", "max_results"),
            _float(wire, "wait", "max_wait"),
            _optional_bytes(wire, "where", "where"),
        )


@dataclass(frozen=True, slots=True)
class RunResponse(_Message):
    """An endpoint's answer to a :class:`RunRequest`: the function exited or
    polls, with ``dispatch`` the calls it dispatched fire-and-forget while
    running (each with its ``dispatch_id`` set)."""

    status: int
    exit: Exit | None = None
    poll: Poll | None = None
    dispatch: tuple[Call, ...] = ()

    def __post_init__(self) -> None:
        if (self.exit is None) == (self.poll is None):
            raise ProtocolError("exactly one of exit and poll must be set")
        for index, call in enumerate(self.dispatch):
            if call.dispatch_id is None:
                raise ProtocolError("missing (wire key 'did')", f"dispatch[{index}].dispatch_id")

    def _to_wire(self) -> _Wire:
        wire: _Wire = {"st": self.status}
        if self.exit is not None:
            wire["exit"] = self.exit._to_wire()
        if self.poll is not None:
            wire["poll"] = self.poll._to_wire()
        if self.dispatch:
            wire["dispatch"] = [call._to_wire() for call in self.dispatch]
        return wire

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        dispatch = () if wire.get("dispatch") is None else _array(wire, "dispatch", "dispatch")
        return cls(
            _int(wire, "st", "status"),
            _nested(wire, "exit", "exit", Exit),
            _nested(wire, "poll", "poll", Poll),
            _each(dispatch, "dispatch", Call),
        )


@dataclass(frozen=True, slots=True)
class DispatchRequest(_Message):
    """The client asks the orchestrator to start ``calls``."""

    calls: tuple[Call, ...]

    def _to_wire(self) -> _Wire:
        return {"calls": [call._to_wire() for call in self.calls]}

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        return cls(_each(_array(wire, "calls", "calls"), "calls", Call))


@dataclass(frozen=True, slots=True)
class DispatchResponse(_Message):
    """The ids of the calls of a :class:`DispatchRequest`, in order."""

    dispatch_ids: tuple[str, ...]

    def _to_wire(self) -> _Wire:
        return {"ids": self.dispatch_ids}

    @classmethod
    def _from_wire(cls, wire: _Wire) -> Self:
        dispatch_ids = _array(wire, "ids", "dispatch_ids")
        for index, dispatch_id in enumerate(dispatch_ids):
            if type(dispatch_id) is not str:
                raise _invalid(dispatch_id, "str", "ids", f"dispatch_ids[{index}]")
        return cls(dispatch_ids)
