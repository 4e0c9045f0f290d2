"""The wire protocol: messages, values and sealing (docs/protocol.md)."""

from __future__ import annotations

import collections
import datetime
import enum
import hashlib
import hmac
import math
import pickle
import threading
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from dispatch._wire import (
    PROTOCOL_VERSION,
    Call,
    CallResult,
    DispatchRequest,
    DispatchResponse,
    Error,
    Exit,
    Poll,
    PollResult,
    ProtocolError,
    RunRequest,
    RunResponse,
    Sealed,
    Sealer,
    SealError,
    UnpicklableValueError,
    decode_arguments,
    decode_value,
    encode_arguments,
    encode_value,
    generate_key,
    readable,
)

KEY = b"k" * 32
SEALER = Sealer(KEY)
NONE = encode_value(None, SEALER)

# --- messages -------------------------------------------------------------------------------

ERROR = Error(status=7, type="builtins.ValueError", message="bad", value=b"\x01x", traceback="tb")
CALL = Call("pkg.mod.f", b"\x92\x90\x80", correlation_id=3, dispatch_id="d1", endpoint="http://e")
RESULTS = (
    CallResult(1, "a", output=NONE),  # a result whose value is None, not an error
    CallResult(2, "b", error=ERROR),
    CallResult(3, "c", error=Error(4, "x.Y", "")),
)

MESSAGES = [
    Call("f", b"\xc0"),
    CALL,
    Error(0, "t", "m"),
    ERROR,
    CallResult(0, "d", output=b""),
    *RESULTS,
    PollResult(b"state", ()),
    PollResult(b"state", RESULTS, error=ERROR),
    PollResult(b"state", (), cancelled=True),
    RunRequest("f", "d", "r", None, 1.5, None, 1, input=b"\xc0"),
    RunRequest("f", "d", "r", "p", 1.5, 99.25, 3, poll=PollResult(b"", RESULTS)),
    Exit(output=NONE),
    Exit(error=ERROR),
    Exit(tail_call=CALL),
    Poll(b"s", (), (), 1, 1, 0.5),
    Poll(b"s", (CALL, Call("g", b"")), (7, 8), 1, 2, 60.0),
    RunResponse(1, exit=Exit(output=NONE)),
    RunResponse(1, poll=Poll(b"s", (CALL,), (), 1, 1, 1.0), dispatch=(CALL,)),
    RunResponse(7, exit=Exit(error=ERROR), dispatch=(Call("g", b"", dispatch_id="x"),)),
    DispatchRequest(()),
    DispatchRequest((CALL, Call("g", b"\x90"))),
    DispatchResponse(()),
    DispatchResponse(("a", "b")),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_message_round_trip(message: Any) -> None:
    data = message.to_msgpack()
    decoded = type(message).from_msgpack(data)
    assert decoded == message
    assert type(decoded) is type(message)
    assert msgpack.unpackb(data)["v"] == PROTOCOL_VERSION


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_message_survives_pickle(message: Any) -> None:
    assert pickle.loads(pickle.dumps(message)) == message


def test_wire_keys_are_those_of_the_protocol_document() -> None:
    assert msgpack.unpackb(CALL.to_msgpack()) == {
        "v": 1,
        "fn": "pkg.mod.f",
        "in": b"\x92\x90\x80",
        "cid": 3,
        "did": "d1",
        "ep": "http://e",
    }
    request = RunRequest("f", "d", "r", "p", 1.5, 9.0, 2, poll=PollResult(b"s", RESULTS[:2]))
    assert msgpack.unpackb(request.to_msgpack()) == {
        "v": 1,
        "fn": "f",
        "did": "d",
        "root": "r",
        "ctime": 1.5,
        "att": 2,
        "parent": "p",
        "xtime": 9.0,
        "poll": {
            "state": b"s",
            "res": [
                {"cid": 1, "did": "a", "out": NONE},
                {
                    "cid": 2,
                    "did": "b",
                    "err": {
                        "st": 7,
                        "type": "builtins.ValueError",
                        "msg": "bad",
                        "val": b"\x01x",
                        "tb": "tb",
                    },
                },
            ],
        },
    }
    dispatched = Call("g", b"", dispatch_id="x")
    response = RunResponse(1, poll=Poll(b"s", (), (4,), 1, 2, 3), dispatch=(dispatched,))
    wire = msgpack.unpackb(response.to_msgpack())
    assert wire == {
        "v": 1,
        "st": 1,
        "poll": {"state": b"s", "calls": [], "cancel": [4], "min": 1, "max": 2, "wait": 3.0},
        "dispatch": [{"fn": "g", "in": b"", "did": "x"}],
    }
    assert type(wire["poll"]["wait"]) is float
    assert msgpack.unpackb(Exit(tail_call=Call("g", b"")).to_msgpack()) == {
        "v": 1,
        "tail": {"fn": "g", "in": b""},
    }
    assert msgpack.unpackb(DispatchResponse(("a",)).to_msgpack()) == {"v": 1, "ids": ["a"]}


def run_request_wire(**changes: Any) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "v": 1,
        "fn": "f",
        "did": "d",
        "root": "r",
        "ctime": 1.0,
        "att": 1,
        "in": NONE,
    }
    wire.update(changes)
    return {key: value for key, value in wire.items() if value is not ...}


def protocol_error(data: bytes, message: type[Any] = RunRequest) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        message.from_msgpack(data)
    return caught.value


@pytest.mark.parametrize("version", [0, 2, True, 1.0, "1"])
def test_other_protocol_version_is_refused(version: object) -> None:
    error = protocol_error(msgpack.packb(run_request_wire(v=version)))
    assert error.field == "RunRequest.v"
    assert "unsupported protocol version" in str(error)


def test_missing_version_is_refused() -> None:
    error = protocol_error(msgpack.packb(run_request_wire(v=...)))
    assert str(error) == "RunRequest.v: missing protocol version (wire key 'v')"


@pytest.mark.parametrize(
    ("key", "field"),
    [("fn", "function"), ("did", "dispatch_id"), ("root", "root_id"), ("ctime", "creation_time")],
)
def test_missing_field_is_named(key: str, field: str) -> None:
    error = protocol_error(msgpack.packb(run_request_wire(**{key: ...})))
    assert error.field == f"RunRequest.{field}"
    assert str(error) == f"RunRequest.{field}: missing (wire key {key!r})"


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("fn", 1, "function"),
        ("att", "1", "attempt"),
        ("att", True, "attempt"),  # a bool is not an int on the wire
        ("ctime", "now", "creation_time"),
        ("xtime", b"", "expiration_time"),
        ("parent", 5, "parent_id"),
        ("in", "text", "input"),
        ("poll", [1], "poll"),
    ],
)
def test_ill_typed_field_is_named(key: str, value: object, field: str) -> None:
    error = protocol_error(msgpack.packb(run_request_wire(**{key: value})))
    assert error.field == f"RunRequest.{field}"
    assert "expected" in error.problem


def test_nested_field_is_named_with_its_path() -> None:
    results = [{"cid": 1, "did": "a", "out": NONE}, {"cid": 2, "did": 3, "out": NONE}]
    wire = run_request_wire(**{"in": ..., "poll": {"state": b"", "res": results}})
    error = protocol_error(msgpack.packb(wire))
    assert str(error) == (
        "RunRequest.poll.results[1].dispatch_id: expected str, got int (wire key 'did')"
    )
    wire = {"v": 1, "st": 1, "poll": {"state": b"", "calls": [{"in": b""}], "cancel": []}}
    error = protocol_error(msgpack.packb(wire), RunResponse)
    assert error.field == "RunResponse.poll.calls[0].function"
    wire["poll"] |= {"calls": [], "cancel": [1, "2"], "min": 1, "max": 1, "wait": 1.0}
    assert protocol_error(msgpack.packb(wire), RunResponse).field == "RunResponse.poll.cancel[1]"
    wire = {"v": 1, "st": 1, "exit": {"out": NONE}, "dispatch": [{"fn": "g", "in": b""}]}
    error = protocol_error(msgpack.packb(wire), RunResponse)
    assert error.field == "RunResponse.dispatch[0].dispatch_id"


def test_exactly_one_field_rules_hold_on_the_wire() -> None:
    both = run_request_wire(poll={"state": b"", "res": []})
    assert "exactly one of input and poll" in str(protocol_error(msgpack.packb(both)))
    assert "exactly one" in str(protocol_error(msgpack.packb(run_request_wire(**{"in": ...}))))
    neither = {"v": 1, "cid": 1, "did": "a"}
    assert protocol_error(msgpack.packb(neither), CallResult).field == "CallResult"
    exit_both = {"v": 1, "out": NONE, "tail": {"fn": "g", "in": b""}}
    assert "exactly one of output, error" in str(protocol_error(msgpack.packb(exit_both), Exit))
    # A nil reads as an absent key.
    request = RunRequest.from_msgpack(msgpack.packb(run_request_wire(poll=None, parent=None)))
    assert request.poll is None and request.parent_id is None


def test_exactly_one_field_rules_hold_on_construction() -> None:
    with pytest.raises(ProtocolError):
        CallResult(1, "a")
    with pytest.raises(ProtocolError):
        CallResult(1, "a", output=NONE, error=ERROR)
    with pytest.raises(ProtocolError):
        RunRequest("f", "d", "r", None, 0.0, None, 1)
    with pytest.raises(ProtocolError):
        Exit()
    with pytest.raises(ProtocolError):
        Exit(output=NONE, error=ERROR)
    with pytest.raises(ProtocolError):
        RunResponse(1)
    with pytest.raises(ProtocolError, match="dispatch_id"):
        RunResponse(1, exit=Exit(output=NONE), dispatch=(Call("g", b""),))


@pytest.mark.parametrize(
    ("min_results", "max_results", "max_wait", "field"),
    [
        (0, 1, 1.0, "min_results"),
        (2, 1, 1.0, "min_results"),
        (1, 1, 0.0, "max_wait"),
        (1, 1, -1.0, "max_wait"),
        (1, 1, math.inf, "max_wait"),
        (1, 1, math.nan, "max_wait"),
    ],
)
def test_poll_limits_are_validated(
    min_results: int, max_results: int, max_wait: float, field: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        Poll(b"", (), (), min_results, max_results, max_wait)
    assert caught.value.field == field
    wire = {"state": b"", "calls": [], "cancel": [], "min": min_results, "max": max_results}
    data = msgpack.packb({"v": 1, "st": 1, "poll": wire | {"wait": max_wait}})
    assert protocol_error(data, RunResponse).field == f"RunResponse.poll.{field}"


def test_unknown_keys_are_ignored_and_integer_times_accepted() -> None:
    wire = run_request_wire(ctime=5, xtime=6, future="anything", extra={"x": [1]})
    request = RunRequest.from_msgpack(msgpack.packb(wire))
    assert request.creation_time == 5.0 and type(request.creation_time) is float
    assert request.expiration_time == 6.0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x81",
        msgpack.packb([1, 2]),
        msgpack.packb(None),
        b"\x80\x80",
        b"\x81\x01\x01",
    ],
)
def test_malformed_bytes_raise_protocol_error(data: bytes) -> None:
    error = protocol_error(data)
    assert error.field == "RunRequest"


def test_protocol_error_survives_pickle() -> None:
    error = protocol_error(msgpack.packb(run_request_wire(fn=...)))
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.field) == (ProtocolError, str(error), error.field)
    assert isinstance(copy, ValueError)


# --- values ---------------------------------------------------------------------------------


def same(left: object, right: object) -> bool:
    """Equal, with the same types all the way down."""
    if type(left) is not type(right):
        return False
    if isinstance(left, list | tuple):
        assert isinstance(right, list | tuple)
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict):
        assert isinstance(right, dict)
        return list(left) == list(right) and all(same(left[key], right[key]) for key in left)
    return left == right


PLAIN = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    "",
    "héllo",
    b"",
    b"\x00\xff",
    [],
    [1, [2, [3]]],
    {},
    {"a": 1, 2: "b", None: [], 1.5: b"", True: {"x": None}},
    (),
    (1,),
    ((), ((),)),
    [(1, 2), ("a", [(), (3,)])],
    {(1, 2): "pair", ("a", (1, (2, "b"))): [()], (): ()},
]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_round_trip_as_msgpack(value: object) -> None:
    data = encode_value(value, SEALER)
    assert same(decode_value(data, SEALER), value)
    assert same(readable(data), value)  # readable without the key: nothing sealed


def test_tuples_are_ext_2_holding_an_array() -> None:
    data = encode_value((1, "a"), SEALER)
    assert msgpack.unpackb(data) == msgpack.ExtType(2, msgpack.packb([1, "a"]))


def test_aware_datetime_is_a_msgpack_timestamp() -> None:
    paris = datetime.timezone(datetime.timedelta(hours=2))
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=paris)
    data = encode_value(moment, SEALER)
    assert isinstance(msgpack.unpackb(data), msgpack.Timestamp)
    decoded = decode_value(data, SEALER)
    assert decoded == moment
    assert decoded.tzinfo == datetime.UTC
    assert readable(data) == moment


class Color(enum.IntEnum):
    RED = 1


Point = collections.namedtuple("Point", "x y")


class Text(str):
    __slots__ = ()


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2024, 1, 1, 12, 0),  # naive: no timestamp without a zone
        2**64,
        -(2**63) - 1,
        10**100,
        {1, 2, 3},
        frozenset({"a"}),
        Color.RED,
        Point(1, 2),
        Text("subclass"),
        collections.OrderedDict(a=1),
        datetime.date(2024, 1, 1),
        ValueError("boom"),
    ],
    ids=repr,
)
def test_other_values_are_sealed_pickles(value: object) -> None:
    data = encode_value(value, SEALER)
    ext = msgpack.unpackb(data)
    assert isinstance(ext, msgpack.ExtType) and ext.code == 1
    decoded = decode_value(data, SEALER)
    assert type(decoded) is type(value)
    if isinstance(value, BaseException):
        assert isinstance(decoded, BaseException) and decoded.args == value.args
    else:
        assert decoded == value
    shown = readable(data)
    assert isinstance(shown, Sealed)
    assert shown == Sealed(len(ext.data))
    assert repr(shown) == f"<sealed pickle, {len(ext.data)} bytes>"


def test_sealed_values_inside_plain_data() -> None:
    value: dict[object, object] = {
        "when": datetime.datetime(2024, 1, 1),
        "items": [{1}, (2, {3})],
        (1, frozenset()): 0,
    }
    data = encode_value(value, SEALER)
    assert decode_value(data, SEALER) == value
    shown = readable(data)
    assert isinstance(shown["when"], Sealed)
    assert isinstance(shown["items"][0], Sealed)
    assert shown["items"][1][0] == 2 and isinstance(shown["items"][1][1], Sealed)
    assert len(shown) == 3


def test_local_class_goes_through_cloudpickle() -> None:
    class Local:
        def __init__(self, value: int) -> None:
            self.value = value

    with pytest.raises(Exception):  # noqa: B017 - plain pickle cannot, whatever it raises
        pickle.dumps(Local(1))
    decoded = decode_value(encode_value(Local(41), SEALER), SEALER)
    assert type(decoded).__name__ == "Local" and decoded.value == 41
    square = decode_value(encode_value(lambda x: x * x, SEALER), SEALER)
    assert square(7) == 49


def test_unpicklable_value_raises_type_error_naming_the_type() -> None:
    with pytest.raises(UnpicklableValueError, match="lock") as caught:
        encode_value([1, threading.Lock()], SEALER)
    assert isinstance(caught.value, TypeError)


def test_deep_tuples_round_trip() -> None:
    deep: tuple[Any, ...] = ()
    for _ in range(100):
        deep = (deep,)
    assert decode_value(encode_value(deep, SEALER), SEALER) == deep


def test_crafted_deep_tuple_nesting_is_refused() -> None:
    data = msgpack.packb([])
    for _ in range(2000):
        data = msgpack.packb([msgpack.ExtType(2, data)])
    with pytest.raises(ProtocolError, match="nested deeper"):
        decode_value(data, SEALER)
    with pytest.raises(ProtocolError, match="nested deeper"):
        readable(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x92\x01",
        b"\x01\x02",
        msgpack.packb(msgpack.ExtType(5, b"")),
        msgpack.packb(msgpack.ExtType(2, b"\x01")),  # a tuple must hold an array
        msgpack.packb(msgpack.ExtType(2, b"\x92")),
        b"\x81\x90\x01",  # a map keyed by an array: unhashable
        b"\xa2\xff\xfe",  # invalid UTF-8
    ],
)
def test_malformed_values_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_value(data, SEALER)
    with pytest.raises(ProtocolError):
        readable(data)


def test_arguments_round_trip() -> None:
    data = encode_arguments((1, (2, 3), {4}), {"name": "x", "when": None}, SEALER)
    args, kwargs = decode_arguments(data, SEALER)
    assert args == (1, (2, 3), {4}) and type(args) is tuple
    assert kwargs == {"name": "x", "when": None}
    assert readable(data)[1] == {"name": "x", "when": None}
    assert decode_arguments(encode_arguments((), {}, SEALER), SEALER) == ((), {})


@pytest.mark.parametrize("value", [None, [], [[], {}, 1], ([], {}), [{}, []], [[], {1: 2}], "x"])
def test_ill_shaped_arguments_raise_protocol_error(value: object) -> None:
    with pytest.raises(ProtocolError, match="arguments"):
        decode_arguments(encode_value(value, SEALER), SEALER)


# --- never unpickling what is not verified ----------------------------------------------------

UNPICKLED: list[str] = []


def record_unpickling() -> str:
    UNPICKLED.append("unpickled")
    return "payload ran"


class RunsOnUnpickling:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return record_unpickling, ()


def value_with_sealed(sealed: bytes) -> bytes:
    packed: bytes = msgpack.packb([1, msgpack.ExtType(1, sealed)])
    return packed


@pytest.fixture
def payload() -> bytes:
    UNPICKLED.clear()
    return pickle.dumps(RunsOnUnpickling())


def test_verified_payload_is_unpickled(payload: bytes) -> None:
    # The control: the payload does run when its seal is genuine.
    data = value_with_sealed(SEALER.seal(payload, b"value"))
    assert decode_value(data, SEALER) == [1, "payload ran"]
    assert UNPICKLED == ["unpickled"]


def test_forged_payload_is_never_unpickled(payload: bytes) -> None:
    key_id = hashlib.sha256(KEY).digest()[:4]
    forgeries = [
        b"\x01" + key_id + bytes(32) + payload,  # a made-up MAC
        b"\x01" + key_id + hmac.digest(b"guess" * 8, b"value\x00" + payload, "sha256") + payload,
        Sealer(generate_key()).seal(payload, b"value"),  # another key
        SEALER.seal(payload, b"state:d1"),  # another purpose
        SEALER.seal(payload, b"value")[:-1] + b"\x00",  # the pickle changed after sealing
        payload,  # no seal at all
    ]
    for forged in forgeries:
        with pytest.raises(SealError):
            decode_value(value_with_sealed(forged), SEALER)
        assert readable(value_with_sealed(forged))[1] == Sealed(len(forged))
    assert UNPICKLED == []


# --- sealing --------------------------------------------------------------------------------


def test_seal_format() -> None:
    sealed = SEALER.seal(b"data", b"ctx")
    assert sealed[:1] == b"\x01"
    assert sealed[1:5] == hashlib.sha256(KEY).digest()[:4]
    assert sealed[5:37] == hmac.digest(KEY, b"ctx\x00data", "sha256")
    assert sealed[37:] == b"data"
    assert SEALER.open(sealed, b"ctx") == b"data"
    assert SEALER.open(SEALER.seal(b"", b"ctx"), b"ctx") == b""


def test_flipping_any_byte_breaks_the_seal() -> None:
    sealed = SEALER.seal(b"some data", b"value")
    for index in range(len(sealed)):
        for mask in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[index] ^= mask
            with pytest.raises(SealError):
                SEALER.open(bytes(tampered), b"value")


def test_seal_is_bound_to_its_context() -> None:
    sealed = SEALER.seal(b"state", b"state:d1")
    assert SEALER.open(sealed, b"state:d1") == b"state"
    for context in (b"state:d2", b"value", b"state:d1 ", b""):
        with pytest.raises(SealError, match="bad seal"):
            SEALER.open(sealed, context)
    with pytest.raises(ValueError, match="NUL"):
        SEALER.seal(b"x", b"a\x00b")


def test_unknown_key_and_truncation() -> None:
    with pytest.raises(SealError, match="unknown key"):
        SEALER.open(Sealer(generate_key()).seal(b"x", b"value"), b"value")
    sealed = SEALER.seal(b"data", b"value")
    for cut in (0, 1, 5, 36):
        with pytest.raises(SealError, match="truncated"):
            SEALER.open(sealed[:cut], b"value")
    with pytest.raises(SealError, match="bad seal"):
        SEALER.open(sealed[:-1], b"value")


def test_key_rotation() -> None:
    old, new = generate_key(), generate_key()
    sealed_by_old = Sealer(old).seal(b"x", b"value")
    rotated = Sealer([new, old])
    assert rotated.open(sealed_by_old, b"value") == b"x"
    sealed_by_new = rotated.seal(b"y", b"value")
    assert sealed_by_new[1:5] == hashlib.sha256(new).digest()[:4]
    assert Sealer((new,)).open(sealed_by_new, b"value") == b"y"
    with pytest.raises(SealError, match="unknown key"):
        Sealer(old).open(sealed_by_new, b"value")
    value = encode_value({1}, Sealer(old))
    assert decode_value(value, rotated) == {1}


def test_sealer_keys_are_checked_without_quoting_them() -> None:
    short = b"secret-but-short"
    with pytest.raises(ValueError, match="at least 32 bytes") as caught:
        Sealer([generate_key(), short])
    assert "secret" not in str(caught.value)
    with pytest.raises(ValueError, match="at least one key"):
        Sealer([])
    with pytest.raises(TypeError, match="must be bytes"):
        Sealer(["k" * 32])  # type: ignore[list-item]
    assert len(generate_key()) == 32 and generate_key() != generate_key()
    Sealer([KEY, KEY])  # the same key twice is harmless


def test_poll_where_round_trips_and_is_optional() -> None:
    where = msgpack.packb(
        [
            {
                "task": 0,
                "frames": [{"function": "f", "file": "app.py", "line": 3, "locals": {"x": "1"}}],
            }
        ]
    )
    poll = Poll(b"s", (CALL,), (), 1, 1, 1.0, where=where)
    wire = msgpack.unpackb(RunResponse(1, poll=poll).to_msgpack())
    assert wire["poll"]["where"] == where
    decoded = RunResponse.from_msgpack(RunResponse(1, poll=poll).to_msgpack())
    assert decoded.poll == poll and decoded.poll is not None
    assert msgpack.unpackb(decoded.poll.where)[0]["frames"][0]["line"] == 3
    assert pickle.loads(pickle.dumps(poll)) == poll
    # Absent: no key on the wire, None once decoded.
    bare = Poll(b"s", (), (), 1, 1, 1.0)
    assert "where" not in msgpack.unpackb(bare.to_msgpack())
    assert Poll.from_msgpack(bare.to_msgpack()).where is None
    ill_typed = msgpack.packb({**msgpack.unpackb(bare.to_msgpack()), "where": "text"})
    with pytest.raises(ProtocolError, match="expected bin") as caught:
        Poll.from_msgpack(ill_typed)
    assert caught.value.field == "Poll.where"


def test_poll_result_cancelled_must_be_a_bool() -> None:
    wire = msgpack.unpackb(PollResult(b"s", (), cancelled=True).to_msgpack())
    assert wire["cancelled"] is True
    wire["cancelled"] = 1
    with pytest.raises(ProtocolError, match="cancelled"):
        PollResult.from_msgpack(msgpack.packb(wire))
    assert "cancelled" not in msgpack.unpackb(PollResult(b"s", ()).to_msgpack())
