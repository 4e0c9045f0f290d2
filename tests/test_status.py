"""Statuses, their retry and concurrency semantics, and how outcomes map to them."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import requests
from aiohttp import client_reqrep, test_utils, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from dispatch import _status
from dispatch._status import (
    Status,
    http_status,
    register_error_type,
    register_output_type,
    status_for_error,
    status_for_output,
)
from dispatch.experimental.durable import (
    IncompatibleStateError,
    InvalidStateError,
    UnpicklableStateError,
)


@pytest.fixture(autouse=True)
def restore_registrations(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations are process-wide: put back what each test found."""
    # Registering rebinds these names to new dicts; monkeypatch rebinds the
    # originals when the test ends.
    monkeypatch.setattr(_status, "_error_handlers", _status._error_handlers)
    monkeypatch.setattr(_status, "_output_handlers", _status._output_handlers)
    yield


# The reference page's table, plus INCOMPATIBLE_STATE; wire values are ours.
REFERENCE_TABLE = [
    ("UNSPECIFIED", 0, False, "increase", "A generic default status."),
    ("OK", 1, False, "increase", "Function completed successfully."),
    ("TIMEOUT", 2, True, "decrease", "Function encountered a timeout."),
    ("THROTTLED", 3, True, "decrease", "Function was throttled."),
    ("INVALID_ARGUMENT", 4, False, "increase", "Function was provided invalid input."),
    (
        "INVALID_RESPONSE",
        5,
        False,
        "increase",
        "Function encountered an unexpected response from other part of the system.",
    ),
    (
        "TEMPORARY_ERROR",
        6,
        True,
        "decrease",
        "Function encountered a temporary error that may resolve soon.",
    ),
    ("PERMANENT_ERROR", 7, False, "increase", "Function encountered a permanent error."),
    (
        "INCOMPATIBLE_STATE",
        8,
        True,
        "increase",
        "Function's snapshot no longer fits its code or Python version;"
        " the call is restarted from its original input.",
    ),
    ("DNS_ERROR", 9, True, "decrease", "Function encountered a DNS error."),
    ("TCP_ERROR", 10, True, "decrease", "Function encountered a TCP error."),
    ("TLS_ERROR", 11, True, "decrease", "Function encountered a TLS error."),
    ("HTTP_ERROR", 12, True, "decrease", "Function encountered an HTTP error."),
    (
        "UNAUTHENTICATED",
        13,
        False,
        "increase",
        "Function attempted to perform an operation without authentication.",
    ),
    (
        "PERMISSION_DENIED",
        14,
        False,
        "increase",
        "Function attempted to perform an operation without permission.",
    ),
    ("NOT_FOUND", 15, False, "increase", "Function attempted to access a non-existent resource."),
]


@pytest.mark.parametrize(
    ("name", "wire_value", "retry", "concurrency", "description"), REFERENCE_TABLE
)
def test_member_matches_reference_table(
    name: str, wire_value: int, retry: bool, concurrency: str, description: str
) -> None:
    status = Status[name]
    assert status.value == wire_value
    assert Status(wire_value) is status
    assert status.retry is retry
    assert status.concurrency == concurrency
    assert status.description == description


def test_there_are_exactly_sixteen_members() -> None:
    assert [status.name for status in Status] == [row[0] for row in REFERENCE_TABLE]
    assert sorted(status.value for status in Status) == list(range(16))


def test_unknown_wire_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="16 is not a valid Status"):
        Status(16)


# --- Built-in rows for errors ------------------------------------------------


class CustomError(Exception):
    pass


class CustomBaseError(BaseException):
    pass


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # asyncio.TimeoutError and socket.timeout are TimeoutError itself since 3.11.
        (TimeoutError(), Status.TIMEOUT),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Status.DNS_ERROR),
        (ssl.SSLError(1, "handshake failure"), Status.TLS_ERROR),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), Status.TLS_ERROR),
        (ssl.CertificateError("hostname mismatch"), Status.TLS_ERROR),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Status.TLS_ERROR),
        (ConnectionError(), Status.TCP_ERROR),
        (ConnectionRefusedError(111, "Connection refused"), Status.TCP_ERROR),
        (ConnectionResetError(104, "Connection reset by peer"), Status.TCP_ERROR),
        (ConnectionAbortedError(), Status.TCP_ERROR),
        (BrokenPipeError(32, "Broken pipe"), Status.TCP_ERROR),
        (PermissionError(13, "Permission denied"), Status.PERMISSION_DENIED),
        (FileNotFoundError(2, "No such file or directory"), Status.NOT_FOUND),
        (TypeError("bad type"), Status.INVALID_ARGUMENT),
        (ValueError("bad value"), Status.INVALID_ARGUMENT),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), Status.INVALID_ARGUMENT),
        (json.JSONDecodeError("Expecting value", "", 0), Status.INVALID_ARGUMENT),
        (NotImplementedError(), Status.PERMANENT_ERROR),
        (AttributeError("x"), Status.PERMANENT_ERROR),
        (NameError("x"), Status.PERMANENT_ERROR),
        (UnboundLocalError("x"), Status.PERMANENT_ERROR),
        (ImportError("x"), Status.PERMANENT_ERROR),
        (ModuleNotFoundError("x"), Status.PERMANENT_ERROR),
        (SyntaxError("x"), Status.PERMANENT_ERROR),
        (IndentationError("x"), Status.PERMANENT_ERROR),
        (OSError(5, "Input/output error"), Status.TEMPORARY_ERROR),
        (IsADirectoryError(21, "Is a directory"), Status.TEMPORARY_ERROR),
        (KeyError("x"), Status.TEMPORARY_ERROR),
        (IndexError("x"), Status.TEMPORARY_ERROR),
        (RuntimeError("x"), Status.TEMPORARY_ERROR),
        (ZeroDivisionError(), Status.TEMPORARY_ERROR),
        (CustomError(), Status.TEMPORARY_ERROR),
        (KeyboardInterrupt(), Status.TEMPORARY_ERROR),
        (SystemExit(1), Status.TEMPORARY_ERROR),
        (GeneratorExit(), Status.TEMPORARY_ERROR),
        (asyncio.CancelledError(), Status.TEMPORARY_ERROR),
        (CustomBaseError(), Status.TEMPORARY_ERROR),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value.name,
)
def test_builtin_error_rows(error: BaseException, expected: Status) -> None:
    assert status_for_error(error) is expected


def test_frame_core_errors_win_over_their_generic_bases() -> None:
    # InvalidStateError is also a ValueError, UnpicklableStateError a TypeError.
    assert status_for_error(IncompatibleStateError("code changed")) is Status.INCOMPATIBLE_STATE
    assert status_for_error(InvalidStateError("forged")) is Status.PERMANENT_ERROR
    assert status_for_error(UnpicklableStateError("a lock")) is Status.PERMANENT_ERROR


# --- HTTP status codes -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (200, Status.OK),
        (201, Status.OK),
        (204, Status.OK),
        (299, Status.OK),
        (400, Status.INVALID_ARGUMENT),
        (401, Status.UNAUTHENTICATED),
        (403, Status.PERMISSION_DENIED),
        (404, Status.NOT_FOUND),
        (408, Status.TIMEOUT),
        (429, Status.THROTTLED),
        (500, Status.TEMPORARY_ERROR),
        (501, Status.PERMANENT_ERROR),
        (502, Status.TEMPORARY_ERROR),
        (503, Status.TEMPORARY_ERROR),
        (504, Status.TEMPORARY_ERROR),
        (599, Status.TEMPORARY_ERROR),
        (100, Status.PERMANENT_ERROR),
        (101, Status.PERMANENT_ERROR),
        (301, Status.PERMANENT_ERROR),
        (304, Status.PERMANENT_ERROR),
        (405, Status.PERMANENT_ERROR),
        (409, Status.PERMANENT_ERROR),
        (422, Status.PERMANENT_ERROR),
        (499, Status.PERMANENT_ERROR),
        (0, Status.UNSPECIFIED),
        (99, Status.UNSPECIFIED),
        (600, Status.UNSPECIFIED),
        (-1, Status.UNSPECIFIED),
    ],
)
def test_http_status(code: int, expected: Status) -> None:
    assert http_status(code) is expected


# --- Registrations -----------------------------------------------------------


class FatalError(Exception):
    pass


class VeryFatalError(FatalError):
    pass


def test_registered_status_applies_to_the_class_and_its_subclasses() -> None:
    register_error_type(FatalError, Status.PERMANENT_ERROR)
    assert status_for_error(FatalError()) is Status.PERMANENT_ERROR
    assert status_for_error(VeryFatalError()) is Status.PERMANENT_ERROR
    assert status_for_error(CustomError()) is Status.TEMPORARY_ERROR


def test_subclass_registration_beats_base_registration() -> None:
    register_error_type(VeryFatalError, Status.NOT_FOUND)
    register_error_type(FatalError, Status.PERMANENT_ERROR)  # order does not matter
    assert status_for_error(VeryFatalError()) is Status.NOT_FOUND
    assert status_for_error(FatalError()) is Status.PERMANENT_ERROR


def test_registering_again_replaces() -> None:
    register_error_type(FatalError, Status.PERMANENT_ERROR)
    register_error_type(FatalError, Status.THROTTLED)
    assert status_for_error(FatalError()) is Status.THROTTLED


def test_registration_beats_builtin_row_of_the_same_class() -> None:
    register_error_type(TimeoutError, Status.PERMANENT_ERROR)
    assert status_for_error(TimeoutError()) is Status.PERMANENT_ERROR
    register_error_type(InvalidStateError, Status.UNSPECIFIED)
    assert status_for_error(InvalidStateError("forged")) is Status.UNSPECIFIED


def test_more_specific_builtin_row_beats_generic_registration() -> None:
    register_error_type(Exception, Status.PERMANENT_ERROR)
    # KeyError has no row of its own before Exception: the registration decides.
    assert status_for_error(KeyError("x")) is Status.PERMANENT_ERROR
    assert status_for_error(CustomError()) is Status.PERMANENT_ERROR
    # TimeoutError and ConnectionError have rows more specific than Exception.
    assert status_for_error(TimeoutError()) is Status.TIMEOUT
    assert status_for_error(ConnectionResetError()) is Status.TCP_ERROR
    # Not an Exception: the registration does not reach it.
    assert status_for_error(KeyboardInterrupt()) is Status.TEMPORARY_ERROR


def test_registration_between_builtin_rows() -> None:
    register_error_type(OSError, Status.PERMANENT_ERROR)
    assert status_for_error(IsADirectoryError()) is Status.PERMANENT_ERROR
    assert status_for_error(ConnectionRefusedError()) is Status.TCP_ERROR
    assert status_for_error(FileNotFoundError()) is Status.NOT_FOUND


def test_error_handler_receives_the_error() -> None:
    seen: list[BaseException] = []

    def classify(error: FatalError) -> Status:
        seen.append(error)
        return Status.PERMANENT_ERROR if "fatal" in str(error) else Status.TEMPORARY_ERROR

    register_error_type(FatalError, classify)
    error = VeryFatalError("fatal: disk gone")
    assert status_for_error(error) is Status.PERMANENT_ERROR
    assert status_for_error(FatalError("flaky")) is Status.TEMPORARY_ERROR
    assert seen[0] is error


class Result:
    def __init__(self, success: bool) -> None:
        self.success = success


class SpecialResult(Result):
    pass


def handle_result(result: Result) -> Status:
    return Status.OK if result.success else Status.TEMPORARY_ERROR


def test_output_default_is_ok() -> None:
    for value in (None, 0, "text", b"bytes", [1], {"a": 1}, Result(success=False)):
        assert status_for_output(value) is Status.OK


def test_output_handler_from_the_reference_page() -> None:
    register_output_type(Result, handle_result)
    assert status_for_output(Result(success=True)) is Status.OK
    assert status_for_output(Result(success=False)) is Status.TEMPORARY_ERROR
    assert status_for_output(SpecialResult(success=False)) is Status.TEMPORARY_ERROR
    assert status_for_output("unrelated") is Status.OK


def test_output_registration_specificity_and_replacement() -> None:
    register_output_type(Result, handle_result)
    register_output_type(SpecialResult, Status.THROTTLED)
    assert status_for_output(SpecialResult(success=True)) is Status.THROTTLED
    assert status_for_output(Result(success=True)) is Status.OK
    register_output_type(SpecialResult, Status.NOT_FOUND)
    assert status_for_output(SpecialResult(success=True)) is Status.NOT_FOUND


def test_output_and_error_registrations_are_separate() -> None:
    register_output_type(FatalError, Status.INVALID_RESPONSE)
    assert status_for_output(FatalError()) is Status.INVALID_RESPONSE
    assert status_for_error(FatalError()) is Status.TEMPORARY_ERROR


@pytest.mark.parametrize("not_an_exception_class", [FatalError(), "FatalError", int, None])
def test_error_registration_needs_an_exception_class(not_an_exception_class: Any) -> None:
    with pytest.raises(TypeError, match="error_type must be an exception class"):
        register_error_type(not_an_exception_class, Status.PERMANENT_ERROR)


@pytest.mark.parametrize("not_a_class", [Result(success=True), "Result", None])
def test_output_registration_needs_a_class(not_a_class: Any) -> None:
    with pytest.raises(TypeError, match="output_type must be a class"):
        register_output_type(not_a_class, Status.OK)


@pytest.mark.parametrize("not_a_handler", ["PERMANENT_ERROR", 7, None, True])
def test_registration_needs_a_status_or_function(not_a_handler: Any) -> None:
    with pytest.raises(TypeError, match="status_or_handler must be a Status or a function"):
        register_error_type(FatalError, not_a_handler)
    with pytest.raises(TypeError, match="handler must be a Status or a function"):
        register_output_type(Result, not_a_handler)
    # Nothing was registered by the rejected calls.
    assert status_for_error(FatalError()) is Status.TEMPORARY_ERROR
    assert status_for_output(Result(success=True)) is Status.OK


def raising_handler(value: object) -> Status:
    raise RuntimeError("handler bug")


def wrong_type_handler(value: object) -> Any:
    return 7  # the wire value, not a Status


def no_return_handler(value: object) -> Any:
    pass


@pytest.mark.parametrize("handler", [raising_handler, wrong_type_handler, no_return_handler])
def test_misbehaving_handlers_get_documented_fallbacks(handler: Any) -> None:
    register_error_type(FatalError, handler)
    register_output_type(Result, handler)
    assert status_for_error(FatalError()) is Status.TEMPORARY_ERROR
    assert status_for_output(Result(success=True)) is Status.INVALID_RESPONSE


# --- httpx -------------------------------------------------------------------


def httpx_status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://h/")
    response = httpx.Response(code, request=request)
    with pytest.raises(httpx.HTTPStatusError) as raised:
        response.raise_for_status()
    return raised.value


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (429, Status.THROTTLED),
        (500, Status.TEMPORARY_ERROR),
        (503, Status.TEMPORARY_ERROR),
        (501, Status.PERMANENT_ERROR),
        (401, Status.UNAUTHENTICATED),
        (404, Status.NOT_FOUND),
        (302, Status.PERMANENT_ERROR),
    ],
)
def test_httpx_status_error(code: int, expected: Status) -> None:
    assert status_for_error(httpx_status_error(code)) is expected


def test_httpx_status_error_with_success_code_is_invalid_response() -> None:
    request = httpx.Request("GET", "http://h/")
    response = httpx.Response(200, request=request)
    error = httpx.HTTPStatusError("unexpected", request=request, response=response)
    assert status_for_error(error) is Status.INVALID_RESPONSE


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.TimeoutException("timed out"), Status.TIMEOUT),
        (httpx.ConnectTimeout("timed out"), Status.TIMEOUT),
        (httpx.ReadTimeout("timed out"), Status.TIMEOUT),
        (httpx.WriteTimeout("timed out"), Status.TIMEOUT),
        (httpx.PoolTimeout("timed out"), Status.TIMEOUT),
        (httpx.ConnectError("[Errno -2] Name or service not known"), Status.DNS_ERROR),
        (httpx.ConnectError("[Errno -3] Temporary failure in name resolution"), Status.DNS_ERROR),
        (httpx.ConnectError("[Errno 8] nodename nor servname provided"), Status.DNS_ERROR),
        (httpx.ConnectError("[Errno 11001] getaddrinfo failed"), Status.DNS_ERROR),
        (httpx.ConnectError("[Errno 111] Connection refused"), Status.TCP_ERROR),
        (httpx.ReadError("reset"), Status.TCP_ERROR),
        (httpx.WriteError("broken pipe"), Status.TCP_ERROR),
        (httpx.CloseError("closed"), Status.TCP_ERROR),
        (httpx.ProxyError("proxy refused"), Status.TCP_ERROR),
        (httpx.RemoteProtocolError("peer closed connection"), Status.HTTP_ERROR),
        (httpx.LocalProtocolError("bad header"), Status.HTTP_ERROR),
        (httpx.DecodingError("bad gzip"), Status.HTTP_ERROR),
        (httpx.UnsupportedProtocol("missing scheme"), Status.INVALID_ARGUMENT),
        (httpx.InvalidURL("bad url"), Status.INVALID_ARGUMENT),
    ],
    ids=lambda value: repr(value) if isinstance(value, BaseException) else value.name,
)
def test_httpx_errors(error: BaseException, expected: Status) -> None:
    assert status_for_error(error) is expected


def test_httpx_connect_error_chained_from_gaierror_is_dns() -> None:
    try:
        try:
            raise socket.gaierror(socket.EAI_AGAIN, "lookup failed")
        except socket.gaierror as cause:
            raise httpx.ConnectError("could not connect") from cause
    except httpx.ConnectError as error:
        assert status_for_error(error) is Status.DNS_ERROR


def test_httpx_transport_error_from_a_real_client() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with (
        httpx.Client(transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(httpx.ConnectError) as raised,
    ):
        client.get("http://h/")
    assert status_for_error(raised.value) is Status.TCP_ERROR


@pytest.mark.parametrize(
    ("code", "expected"),
    [(200, Status.OK), (429, Status.THROTTLED), (503, Status.TEMPORARY_ERROR)],
)
def test_returning_httpx_response(code: int, expected: Status) -> None:
    response = httpx.Response(code, request=httpx.Request("GET", "http://h/"))
    assert status_for_output(response) is expected


class ServiceUnavailable(httpx.HTTPStatusError):
    """A user's own subclass of a library error."""


def test_subclass_of_library_error_uses_library_row() -> None:
    request = httpx.Request("GET", "http://h/")
    error = ServiceUnavailable("x", request=request, response=httpx.Response(429, request=request))
    assert status_for_error(error) is Status.THROTTLED


def test_registration_beats_library_row() -> None:
    register_error_type(httpx.HTTPStatusError, Status.PERMANENT_ERROR)
    assert status_for_error(httpx_status_error(503)) is Status.PERMANENT_ERROR
    register_output_type(httpx.Response, Status.UNSPECIFIED)
    response = httpx.Response(503, request=httpx.Request("GET", "http://h/"))
    assert status_for_output(response) is Status.UNSPECIFIED


def test_library_row_more_specific_than_generic_registration() -> None:
    register_error_type(Exception, Status.PERMANENT_ERROR)
    assert status_for_error(httpx_status_error(429)) is Status.THROTTLED
    assert status_for_error(httpx.ReadTimeout("timed out")) is Status.TIMEOUT
    # No row on the way from CookieConflict to Exception: the registration decides.
    assert status_for_error(httpx.CookieConflict("x")) is Status.PERMANENT_ERROR


# --- requests ----------------------------------------------------------------


def requests_response(code: int) -> requests.Response:
    response = requests.Response()
    response.status_code = code
    response.reason = "Reason"
    response.url = "http://h/"
    return response


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (429, Status.THROTTLED),
        (502, Status.TEMPORARY_ERROR),
        (503, Status.TEMPORARY_ERROR),
        (403, Status.PERMISSION_DENIED),
        (400, Status.INVALID_ARGUMENT),
    ],
)
def test_requests_http_error(code: int, expected: Status) -> None:
    with pytest.raises(requests.HTTPError) as raised:
        requests_response(code).raise_for_status()
    assert status_for_error(raised.value) is expected


def test_requests_http_error_without_response_falls_back_to_its_bases() -> None:
    # No code to go by: it is an OSError like any other.
    assert status_for_error(requests.HTTPError("no response")) is Status.TEMPORARY_ERROR


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (requests.Timeout("timed out"), Status.TIMEOUT),
        (requests.ReadTimeout("timed out"), Status.TIMEOUT),
        (requests.ConnectTimeout("timed out"), Status.TIMEOUT),
        (requests.exceptions.SSLError("certificate verify failed"), Status.TLS_ERROR),
        (
            requests.ConnectionError(
                "HTTPConnectionPool(host='h', port=80): Max retries exceeded with url: / "
                "(Caused by NameResolutionError(\"Failed to resolve 'h' "
                '([Errno -2] Name or service not known)"))'
            ),
            Status.DNS_ERROR,
        ),
        (
            requests.ConnectionError(
                "HTTPConnectionPool(host='h', port=80): Max retries exceeded with url: / "
                "(Caused by NewConnectionError('Failed to establish a new connection: "
                "[Errno 111] Connection refused'))"
            ),
            Status.TCP_ERROR,
        ),
        (requests.exceptions.ProxyError("proxy refused"), Status.TCP_ERROR),
        (requests.exceptions.ChunkedEncodingError("Connection broken"), Status.HTTP_ERROR),
        (requests.exceptions.ContentDecodingError("bad gzip"), Status.HTTP_ERROR),
        (requests.exceptions.MissingSchema("no scheme"), Status.INVALID_ARGUMENT),
        (requests.exceptions.InvalidSchema("ftp"), Status.INVALID_ARGUMENT),
        (requests.exceptions.InvalidURL("bad url"), Status.INVALID_ARGUMENT),
        (requests.exceptions.InvalidHeader("bad header"), Status.INVALID_ARGUMENT),
        (requests.exceptions.URLRequired("no url"), Status.INVALID_ARGUMENT),
        (requests.exceptions.RetryError("too many retries"), Status.TEMPORARY_ERROR),
    ],
    ids=lambda value: repr(value)[:60] if isinstance(value, BaseException) else value.name,
)
def test_requests_errors(error: BaseException, expected: Status) -> None:
    assert status_for_error(error) is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [(200, Status.OK), (429, Status.THROTTLED), (500, Status.TEMPORARY_ERROR)],
)
def test_returning_requests_response(code: int, expected: Status) -> None:
    assert status_for_output(requests_response(code)) is expected


def test_returning_requests_response_without_code_is_ok() -> None:
    assert requests.Response().status_code is None
    assert status_for_output(requests.Response()) is Status.OK


# --- aiohttp -----------------------------------------------------------------


def aiohttp_request_info() -> aiohttp.RequestInfo:
    return aiohttp.RequestInfo(URL("http://h/"), "GET", CIMultiDictProxy(CIMultiDict()))


def aiohttp_connection_key() -> client_reqrep.ConnectionKey:
    # Fields differ between aiohttp versions; only host, port and ssl are read.
    known = {"host": "h", "port": 80, "is_ssl": False, "ssl": True}
    return client_reqrep.ConnectionKey._make(
        known.get(field) for field in client_reqrep.ConnectionKey._fields
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (429, Status.THROTTLED),
        (500, Status.TEMPORARY_ERROR),
        (503, Status.TEMPORARY_ERROR),
        (401, Status.UNAUTHENTICATED),
        (404, Status.NOT_FOUND),
    ],
)
def test_aiohttp_client_response_error(code: int, expected: Status) -> None:
    error = aiohttp.ClientResponseError(aiohttp_request_info(), (), status=code)
    assert status_for_error(error) is expected


def test_aiohttp_client_response_error_without_code_falls_back() -> None:
    error = aiohttp.ClientResponseError(aiohttp_request_info(), ())
    assert status_for_error(error) is Status.TEMPORARY_ERROR


def test_aiohttp_content_type_error_is_invalid_response() -> None:
    error = aiohttp.ContentTypeError(aiohttp_request_info(), (), status=200)
    assert status_for_error(error) is Status.INVALID_RESPONSE


@pytest.mark.parametrize(
    ("os_error", "expected"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Status.DNS_ERROR),
        (OSError(-3, "Temporary failure in name resolution"), Status.DNS_ERROR),
        (ConnectionRefusedError(111, "Connection refused"), Status.TCP_ERROR),
    ],
)
def test_aiohttp_connector_error(os_error: OSError, expected: Status) -> None:
    error = aiohttp.ClientConnectorError(aiohttp_connection_key(), os_error)
    assert status_for_error(error) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            aiohttp.ClientConnectorDNSError(aiohttp_connection_key(), OSError(-2, "lookup failed")),
            Status.DNS_ERROR,
        ),
        (
            aiohttp.ClientConnectorCertificateError(
                aiohttp_connection_key(), ssl.SSLCertVerificationError("verify failed")
            ),
            Status.TLS_ERROR,
        ),
        (
            aiohttp.ClientConnectorSSLError(
                aiohttp_connection_key(), ssl.SSLError(1, "handshake failure")
            ),
            Status.TLS_ERROR,
        ),
        (aiohttp.ServerFingerprintMismatch(b"a", b"b", "h", 443), Status.TLS_ERROR),
        (aiohttp.ServerTimeoutError("timed out"), Status.TIMEOUT),
        (aiohttp.ConnectionTimeoutError("timed out"), Status.TIMEOUT),
        (aiohttp.SocketTimeoutError("timed out"), Status.TIMEOUT),
        (aiohttp.ServerDisconnectedError(), Status.TCP_ERROR),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), Status.TCP_ERROR),
        (aiohttp.ClientConnectionResetError("reset"), Status.TCP_ERROR),
        (aiohttp.ClientPayloadError("Response payload is not completed"), Status.HTTP_ERROR),
        (aiohttp.InvalidURL("bad url"), Status.INVALID_ARGUMENT),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value.name,
)
def test_aiohttp_errors(error: BaseException, expected: Status) -> None:
    assert status_for_error(error) is expected


async def aiohttp_response(code: int) -> aiohttp.ClientResponse:
    """A real response from an aiohttp server on the loopback interface."""

    async def reply(request: web.Request) -> web.Response:
        return web.Response(status=code)

    app = web.Application()
    app.router.add_get("/", reply)
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        response = await client.get("/")
        response.release()
        return response


@pytest.mark.parametrize(
    ("code", "expected"),
    [(200, Status.OK), (429, Status.THROTTLED), (503, Status.TEMPORARY_ERROR)],
)
def test_returning_aiohttp_response(code: int, expected: Status) -> None:
    response = asyncio.run(aiohttp_response(code))
    assert response.status == code
    assert status_for_output(response) is expected


# --- Cost --------------------------------------------------------------------


def test_classifying_needs_no_http_library() -> None:
    # The optional clients cannot be imported in this interpreter, yet
    # classifying (including walking the rows written for them) works.
    program = """
import sys
sys.modules.update(requests=None, aiohttp=None)
from dispatch._status import Status, status_for_error, status_for_output
assert status_for_error(TimeoutError()) is Status.TIMEOUT
assert status_for_error(ConnectionResetError()) is Status.TCP_ERROR
assert status_for_output(object()) is Status.OK
"""
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)
