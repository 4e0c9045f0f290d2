"""What the outcome of a call tells the orchestrator: retry it or not, and
whether to send the endpoint more or fewer calls.

Every call ends with a :class:`Status`. A function that returns gets
:func:`status_for_output` of its value (``Status.OK`` unless something says
otherwise); one that raises gets :func:`status_for_error` of its exception.

Both walk the class of the value and its bases in method resolution order,
most specific first. At each class, a handler registered for exactly that
class (:func:`register_error_type`, :func:`register_output_type`) is asked
first, then the built-in rows below; the first class that has either
decides. So registering ``Exception`` changes what a ``KeyError`` maps to,
but not a ``TimeoutError``, whose own built-in row is more specific; to
change that one, register ``TimeoutError`` itself.

Built-in rows for errors::

    IncompatibleStateError           INCOMPATIBLE_STATE  snapshot taken by other code or Python
    InvalidStateError                PERMANENT_ERROR     corrupt or forged snapshot
    UnpicklableStateError            PERMANENT_ERROR     a frame holds an unpicklable value
    TimeoutError                     TIMEOUT             also asyncio.TimeoutError, socket.timeout
    socket.gaierror                  DNS_ERROR
    ssl.SSLError, CertificateError   TLS_ERROR
    ConnectionError                  TCP_ERROR           refused, reset, aborted, broken pipe
    PermissionError                  PERMISSION_DENIED
    FileNotFoundError                NOT_FOUND
    TypeError, ValueError            INVALID_ARGUMENT    also UnicodeError, json.JSONDecodeError
    NotImplementedError,             PERMANENT_ERROR     a bug: running the same code again
      AttributeError, NameError,                         fails the same way
      ImportError, SyntaxError
    any other OSError                TEMPORARY_ERROR
    any other Exception              TEMPORARY_ERROR     retried with backoff up to the attempt
    any other BaseException          TEMPORARY_ERROR     limit; register the permanent ones

The frame core's errors (``dispatch.experimental.durable``) are also a
``ValueError`` or ``TypeError``; their own rows are more specific, so win.

HTTP clients are recognised by the module and qualified name of the classes
in the MRO, never imported, so they cost nothing when not installed.
``http_status(code)`` maps an HTTP status code::

    httpx     HTTPStatusError                      http_status(error.response.status_code)
              TimeoutException (Connect, Read...)  TIMEOUT
              ConnectError                         DNS_ERROR if the host did not resolve,
                                                   else TCP_ERROR
              ProtocolError                        HTTP_ERROR
              DecodingError                        HTTP_ERROR
              UnsupportedProtocol, InvalidURL      INVALID_ARGUMENT
              other NetworkError, TransportError   TCP_ERROR
    requests  HTTPError with a response            http_status(error.response.status_code)
              Timeout, ConnectTimeout              TIMEOUT
              SSLError                             TLS_ERROR
              ConnectionError                      DNS_ERROR or TCP_ERROR, as for httpx
              ChunkedEncodingError,                HTTP_ERROR
                ContentDecodingError
              MissingSchema, InvalidSchema,        INVALID_ARGUMENT
                InvalidURL, InvalidHeader,
                URLRequired
    aiohttp   ClientResponseError                  http_status(error.status)
              ContentTypeError                     INVALID_RESPONSE
              ClientConnectorDNSError              DNS_ERROR
              ClientSSLError,                      TLS_ERROR
                ClientConnectorCertificateError,
                ServerFingerprintMismatch
              ClientConnectorError                 DNS_ERROR or TCP_ERROR, as for httpx
              ServerTimeoutError                   TIMEOUT
              ServerDisconnectedError              TCP_ERROR
              ClientPayloadError                   HTTP_ERROR
              other ClientConnectionError          TCP_ERROR

An error that carries a 2xx code maps to ``INVALID_RESPONSE`` (the client
raised although the server answered, so the answer was not what the function
expected); one whose code is not an HTTP code is left to its other classes.
A host "did not resolve" when a ``socket.gaierror`` is in the error's cause
chain or the message of one of them says so (as getaddrinfo words it).

Built-in rows for outputs: returning an ``httpx.Response``, a
``requests.Response`` or an ``aiohttp.ClientResponse`` gives
``http_status`` of its status code, because the function succeeded but the
service it called did not. Any other value is ``Status.OK``.
"""

from __future__ import annotations

import enum
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar

from .experimental.durable import (
    IncompatibleStateError,
    InvalidStateError,
    UnpicklableStateError,
)


class Status(enum.Enum):
    """The outcome of a call, as the orchestrator acts on it.

    The value of a member is the integer that travels on the wire
    (``Status(3) is Status.THROTTLED``). Each member also carries:

    - ``retry``: whether the orchestrator runs the call again;
    - ``concurrency``: ``"increase"`` or ``"decrease"``, how the adaptive
      concurrency the orchestrator allows the endpoint reacts;
    - ``description``: what the status means.

    ==================  =====  ===========  ====================================
    Status              Retry  Concurrency  Meaning
    ==================  =====  ===========  ====================================
    OK                  no     increase     completed successfully
    TEMPORARY_ERROR     yes    decrease     a temporary error that may resolve
    PERMANENT_ERROR     no     increase     a permanent error
    TIMEOUT             yes    decrease     timed out
    THROTTLED           yes    decrease     was throttled
    UNAUTHENTICATED     no     increase     operation without authentication
    PERMISSION_DENIED   no     increase     operation without permission
    NOT_FOUND           no     increase     accessed a non-existent resource
    INVALID_ARGUMENT    no     increase     was provided invalid input
    INVALID_RESPONSE    no     increase     unexpected response from elsewhere
    DNS_ERROR           yes    decrease     a DNS error
    TCP_ERROR           yes    decrease     a TCP error
    TLS_ERROR           yes    decrease     a TLS error
    HTTP_ERROR          yes    decrease     an HTTP error
    UNSPECIFIED         no     increase     a generic default status
    INCOMPATIBLE_STATE  yes    increase     snapshot no longer fits the code
    ==================  =====  ===========  ====================================

    ``INCOMPATIBLE_STATE`` is for a snapshot taken by code or a Python
    version that has since changed (a deploy between suspension and
    resumption): the orchestrator does not resume it but restarts the call
    from its original input. The endpoint is healthy, so concurrency is not
    reduced.
    """

    UNSPECIFIED = 0
    OK = 1
    TIMEOUT = 2
    THROTTLED = 3
    INVALID_ARGUMENT = 4
    INVALID_RESPONSE = 5
    TEMPORARY_ERROR = 6
    PERMANENT_ERROR = 7
    INCOMPATIBLE_STATE = 8
    DNS_ERROR = 9
    TCP_ERROR = 10
    TLS_ERROR = 11
    HTTP_ERROR = 12
    UNAUTHENTICATED = 13
    PERMISSION_DENIED = 14
    NOT_FOUND = 15

    # Properties over a table rather than extra fields in the member values,
    # so that the value stays the plain wire integer for type checkers too.
    @property
    def retry(self) -> bool:
        """Whether the orchestrator runs the call again."""
        return _SEMANTICS[self].retry

    @property
    def concurrency(self) -> Literal["increase", "decrease"]:
        """How the concurrency the orchestrator allows the endpoint reacts."""
        return _SEMANTICS[self].concurrency

    @property
    def description(self) -> str:
        """What the status means."""
        return _SEMANTICS[self].description


class _Semantics(NamedTuple):
    retry: bool
    concurrency: Literal["increase", "decrease"]
    description: str


_SEMANTICS = {
    Status.UNSPECIFIED: _Semantics(False, "increase", "A generic default status."),
    Status.OK: _Semantics(False, "increase", "Function completed successfully."),
    Status.TIMEOUT: _Semantics(True, "decrease", "Function encountered a timeout."),
    Status.THROTTLED: _Semantics(True, "decrease", "Function was throttled."),
    Status.INVALID_ARGUMENT: _Semantics(False, "increase", "Function was provided invalid input."),
    Status.INVALID_RESPONSE: _Semantics(
        False,
        "increase",
        "Function encountered an unexpected response from other part of the system.",
    ),
    Status.TEMPORARY_ERROR: _Semantics(
        True, "decrease", "Function encountered a temporary error that may resolve soon."
    ),
    Status.PERMANENT_ERROR: _Semantics(
        False, "increase", "Function encountered a permanent error."
    ),
    Status.INCOMPATIBLE_STATE: _Semantics(
        True,
        "increase",
        "Function's snapshot no longer fits its code or Python version;"
        " the call is restarted from its original input.",
    ),
    Status.DNS_ERROR: _Semantics(True, "decrease", "Function encountered a DNS error."),
    Status.TCP_ERROR: _Semantics(True, "decrease", "Function encountered a TCP error."),
    Status.TLS_ERROR: _Semantics(True, "decrease", "Function encountered a TLS error."),
    Status.HTTP_ERROR: _Semantics(True, "decrease", "Function encountered an HTTP error."),
    Status.UNAUTHENTICATED: _Semantics(
        False, "increase", "Function attempted to perform an operation without authentication."
    ),
    Status.PERMISSION_DENIED: _Semantics(
        False, "increase", "Function attempted to perform an operation without permission."
    ),
    Status.NOT_FOUND: _Semantics(
        False, "increase", "Function attempted to access a non-existent resource."
    ),
}


def http_status(code: int) -> Status:
    """The status of a call whose outcome is the HTTP status ``code``.

    2xx is ``OK``; 400, 401, 403, 404, 408 and 429 have their own statuses;
    501 (the server will never implement it) is ``PERMANENT_ERROR`` and any
    other 5xx ``TEMPORARY_ERROR``; any other 1xx, 3xx or 4xx is
    ``PERMANENT_ERROR``; a number that is no HTTP status is ``UNSPECIFIED``.
    """
    if 200 <= code <= 299:
        return Status.OK
    special = _SPECIAL_HTTP_CODES.get(code)
    if special is not None:
        return special
    if 500 <= code <= 599:
        return Status.TEMPORARY_ERROR
    if 100 <= code <= 499:
        return Status.PERMANENT_ERROR
    return Status.UNSPECIFIED


_SPECIAL_HTTP_CODES = {
    400: Status.INVALID_ARGUMENT,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.NOT_FOUND,
    408: Status.TIMEOUT,
    429: Status.THROTTLED,
    501: Status.PERMANENT_ERROR,
}

_ErrorT = TypeVar("_ErrorT", bound=BaseException)
_OutputT = TypeVar("_OutputT")

# What a user registered for a class: a status, or a function of the value.
_Registration = Status | Callable[[Any], object]

# Registrations replace the whole dict instead of updating it, so a lookup
# reads one consistent dict without taking the lock; the lock only keeps two
# concurrent registrations from losing one another.
_registration_lock = threading.Lock()
_error_handlers: dict[type, _Registration] = {}
_output_handlers: dict[type, _Registration] = {}


def register_error_type(
    error_type: type[_ErrorT], status_or_handler: Status | Callable[[_ErrorT], Status]
) -> None:
    """Make errors of ``error_type`` (and its subclasses) end with a status.

    ``status_or_handler`` is the :class:`Status` itself, or a function that
    receives the error and returns one. A registration for a subclass wins
    over one for its base, and registering a class again replaces the
    earlier registration. Registrations are process-wide.

    A handler that raises an ``Exception``, or returns something that is
    not a ``Status``, gives ``Status.TEMPORARY_ERROR``: the call is retried as an unknown
    error would be, rather than the endpoint failing.
    """
    if not (isinstance(error_type, type) and issubclass(error_type, BaseException)):
        raise TypeError(f"error_type must be an exception class, not {error_type!r}")
    _check_registration("status_or_handler", status_or_handler)
    global _error_handlers
    with _registration_lock:
        _error_handlers = {**_error_handlers, error_type: status_or_handler}


def register_output_type(
    output_type: type[_OutputT], handler: Status | Callable[[_OutputT], Status]
) -> None:
    """Make calls that return an instance of ``output_type`` end with a status.

    ``handler`` is the :class:`Status` itself, or a function that receives
    the returned value and returns one; use it for a function that completed
    but whose result says it should be retried. Subclasses and
    re-registration behave as for :func:`register_error_type`.

    A handler that raises an ``Exception``, or returns something that is
    not a ``Status``, gives ``Status.INVALID_RESPONSE``: the value could not be judged, and
    running the function again would not make it judgeable.
    """
    if not isinstance(output_type, type):
        raise TypeError(f"output_type must be a class, not {output_type!r}")
    _check_registration("handler", handler)
    global _output_handlers
    with _registration_lock:
        _output_handlers = {**_output_handlers, output_type: handler}


def status_for_error(error: BaseException) -> Status:
    """The status of a call that raised ``error``; never raises itself."""
    registered = _error_handlers
    for cls in type(error).__mro__:
        registration = registered.get(cls)
        if registration is not None:
            return _apply(registration, error, fallback=Status.TEMPORARY_ERROR)
        status = _BUILTIN_ERRORS.get(cls)
        if status is None:
            status = _library_status(cls, error, _LIBRARY_ERRORS)
        if status is not None:
            return status
    return Status.TEMPORARY_ERROR  # not reached for a real exception: BaseException has a row


def status_for_output(value: object) -> Status:
    """The status of a call that returned ``value``: ``Status.OK`` unless a
    registration or a built-in row for its class says otherwise; never
    raises itself."""
    registered = _output_handlers
    for cls in type(value).__mro__:
        registration = registered.get(cls)
        if registration is not None:
            return _apply(registration, value, fallback=Status.INVALID_RESPONSE)
        status = _library_status(cls, value, _LIBRARY_OUTPUTS)
        if status is not None:
            return status
    return Status.OK


def _check_registration(parameter: str, registration: object) -> None:
    if not (isinstance(registration, Status) or callable(registration)):
        raise TypeError(
            f"{parameter} must be a Status or a function returning one, not {registration!r}"
        )


def _apply(registration: _Registration, value: object, fallback: Status) -> Status:
    if isinstance(registration, Status):
        return registration
    try:
        status = registration(value)
    except Exception:
        # A broken handler must not turn one call's outcome into a failure
        # of the endpoint; the fallback is documented where it is registered.
        return fallback
    return status if isinstance(status, Status) else fallback


# A library row decides a status, or returns None to leave the decision to
# the next class in the MRO (an HTTPError with no response, say).
_LibraryRow = Status | Callable[[Any], Status | None]


def _library_status(
    cls: type, value: object, rows: dict[tuple[str, str], _LibraryRow]
) -> Status | None:
    # Keyed by top-level package so that httpx's public names (whose
    # __module__ is "httpx") and requests' (in "requests.exceptions") match
    # alike, with no import of either.
    module = getattr(cls, "__module__", None)
    if not isinstance(module, str):
        return None
    row = rows.get((module.partition(".")[0], cls.__qualname__))
    if row is None or isinstance(row, Status):
        return row
    try:
        return row(value)
    except Exception:
        # An object of another version of the library than the one these
        # rows were written for: let its other classes decide.
        return None


def _error_code_status(code: object) -> Status | None:
    """The status of an error that carries an HTTP status code."""
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    status = http_status(code)
    if status is Status.OK:
        return Status.INVALID_RESPONSE
    if status is Status.UNSPECIFIED:
        return None
    return status


def _response_status(code: object) -> Status | None:
    """The status of a call that returned a response with this code."""
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    return http_status(code)


# How getaddrinfo failures read once a client library has turned them into
# text (Linux, macOS, Windows), lowercased.
_UNRESOLVED_HOST_WORDING = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated with hostname",
    "getaddrinfo",
)


def _host_did_not_resolve(error: BaseException) -> bool:
    # Client libraries wrap the socket.gaierror in their own connection
    # error, chained or only as text; follow the chain, guarding cycles.
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return True
        message = str(current).lower()
        if any(wording in message for wording in _UNRESOLVED_HOST_WORDING):
            return True
        current = current.__cause__ or current.__context__
    return False


def _connect_status(error: BaseException) -> Status:
    return Status.DNS_ERROR if _host_did_not_resolve(error) else Status.TCP_ERROR


_BUILTIN_ERRORS: dict[type, Status] = {
    IncompatibleStateError: Status.INCOMPATIBLE_STATE,
    InvalidStateError: Status.PERMANENT_ERROR,
    UnpicklableStateError: Status.PERMANENT_ERROR,
    TimeoutError: Status.TIMEOUT,
    socket.gaierror: Status.DNS_ERROR,
    ssl.SSLError: Status.TLS_ERROR,
    ssl.CertificateError: Status.TLS_ERROR,
    ConnectionError: Status.TCP_ERROR,
    PermissionError: Status.PERMISSION_DENIED,
    FileNotFoundError: Status.NOT_FOUND,
    TypeError: Status.INVALID_ARGUMENT,
    ValueError: Status.INVALID_ARGUMENT,
    NotImplementedError: Status.PERMANENT_ERROR,
    AttributeError: Status.PERMANENT_ERROR,
    NameError: Status.PERMANENT_ERROR,
    ImportError: Status.PERMANENT_ERROR,
    SyntaxError: Status.PERMANENT_ERROR,
    OSError: Status.TEMPORARY_ERROR,
    Exception: Status.TEMPORARY_ERROR,
    BaseException: Status.TEMPORARY_ERROR,
}

_LIBRARY_ERRORS: dict[tuple[str, str], _LibraryRow] = {
    ("httpx", "HTTPStatusError"): lambda error: _error_code_status(error.response.status_code),
    ("httpx", "TimeoutException"): Status.TIMEOUT,
    ("httpx", "ConnectError"): _connect_status,
    ("httpx", "ProtocolError"): Status.HTTP_ERROR,
    ("httpx", "DecodingError"): Status.HTTP_ERROR,
    ("httpx", "UnsupportedProtocol"): Status.INVALID_ARGUMENT,
    ("httpx", "InvalidURL"): Status.INVALID_ARGUMENT,
    ("httpx", "NetworkError"): Status.TCP_ERROR,
    ("httpx", "TransportError"): Status.TCP_ERROR,
    ("requests", "HTTPError"): lambda error: _error_code_status(
        getattr(error.response, "status_code", None)
    ),
    ("requests", "Timeout"): Status.TIMEOUT,
    # Also a ConnectionError, which comes first in its MRO.
    ("requests", "ConnectTimeout"): Status.TIMEOUT,
    ("requests", "SSLError"): Status.TLS_ERROR,
    ("requests", "ConnectionError"): _connect_status,
    ("requests", "ChunkedEncodingError"): Status.HTTP_ERROR,
    ("requests", "ContentDecodingError"): Status.HTTP_ERROR,
    # These are ValueErrors too, but OSError comes first in their MRO.
    ("requests", "MissingSchema"): Status.INVALID_ARGUMENT,
    ("requests", "InvalidSchema"): Status.INVALID_ARGUMENT,
    ("requests", "InvalidURL"): Status.INVALID_ARGUMENT,
    ("requests", "InvalidHeader"): Status.INVALID_ARGUMENT,
    ("requests", "URLRequired"): Status.INVALID_ARGUMENT,
    ("aiohttp", "ClientResponseError"): lambda error: _error_code_status(error.status),
    ("aiohttp", "ContentTypeError"): Status.INVALID_RESPONSE,
    ("aiohttp", "ClientConnectorDNSError"): Status.DNS_ERROR,
    ("aiohttp", "ClientSSLError"): Status.TLS_ERROR,
    ("aiohttp", "ClientConnectorCertificateError"): Status.TLS_ERROR,
    ("aiohttp", "ServerFingerprintMismatch"): Status.TLS_ERROR,
    ("aiohttp", "ClientConnectorError"): _connect_status,
    ("aiohttp", "ServerTimeoutError"): Status.TIMEOUT,
    ("aiohttp", "ServerDisconnectedError"): Status.TCP_ERROR,
    ("aiohttp", "ClientPayloadError"): Status.HTTP_ERROR,
    ("aiohttp", "ClientConnectionError"): Status.TCP_ERROR,
}

_LIBRARY_OUTPUTS: dict[tuple[str, str], _LibraryRow] = {
    ("httpx", "Response"): lambda response: _response_status(response.status_code),
    ("requests", "Response"): lambda response: _response_status(response.status_code),
    ("aiohttp", "ClientResponse"): lambda response: _response_status(response.status),
}
