"""How the engine reaches endpoints: over HTTP, or in process.

An invoker posts a signed RunRequest and returns the HTTP status and body.
A failure to get any answer raises :class:`TransportError` carrying the
status it counts as (so the call is retried, and the endpoint's
concurrency reduced, as the status says).

``aiohttp`` is the HTTP client: for many small requests on loopback it was
measured here at a tenth of the CPU of ``httpx.AsyncClient`` (3,000 posts,
16 in flight: 0.47 s of CPU against 5.5 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

import aiohttp

from .._status import Status

T = TypeVar("T")


class TransportError(Exception):
    """No answer from the endpoint; ``status`` is what the failure counts as.
    ``sent``: False when no connection was made, so the endpoint never saw
    the request (another replica may take it at once)."""

    def __init__(self, status: Status, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.sent = sent


class Invoker(Protocol):
    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


class HTTPInvoker:
    """Posts over HTTP with one aiohttp session (connections are kept alive)."""

    def __init__(self, connections: int = 1000) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                skip_auto_headers=("User-Agent",),
            )
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return response.status, await response.read()
        except TimeoutError as error:
            raise TransportError(Status.TIMEOUT, f"no answer within {timeout:g} s") from error
        except aiohttp.ClientConnectorError as error:
            status = _connector_status(error)
            raise TransportError(status, f"cannot connect to {url}: {error}", sent=False) from error
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
            raise TransportError(
                Status.TCP_ERROR, f"connection to {url} failed: {error}"
            ) from error
        except aiohttp.ClientError as error:
            raise TransportError(Status.HTTP_ERROR, f"HTTP error from {url}: {error}") from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _connector_status(error: aiohttp.ClientConnectorError) -> Status:
    name = type(error).__name__
    if "DNS" in name:
        return Status.DNS_ERROR
    if "SSL" in name or "Certificate" in name:
        return Status.TLS_ERROR
    return Status.TCP_ERROR


async def _in_time(work: Awaitable[T], timeout: float) -> T:
    """What an in-process endpoint answers, failing as a server would: no
    answer in time is TIMEOUT, an endpoint that raises is HTTP_ERROR."""
    try:
        async with asyncio.timeout(timeout) as deadline:
            result = await work
    except TimeoutError as error:
        raise TransportError(Status.TIMEOUT, f"no answer within {timeout:g} s") from error
    except Exception as error:
        raise TransportError(Status.HTTP_ERROR, f"the endpoint failed: {error!r}") from error
    if deadline.expired():
        # The endpoint caught its cancellation and answered anyway: too late all the same.
        raise TransportError(Status.TIMEOUT, f"no answer within {timeout:g} s")
    return result


class DirectInvoker:
    """Calls a dispatch endpoint object in process, for an embedded orchestrator:
    no socket, no HTTP, no signature (nothing outside the process is involved)."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        result: tuple[int, bytes] = await _in_time(self.endpoint.handle(body), timeout)
        return result

    async def close(self) -> None:
        pass


class ASGIInvoker:
    """Calls an ASGI app in process (a FastAPI or Starlette app serving a
    dispatch endpoint, say): no socket, the same signed requests as over HTTP."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        path = "/" + url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-length", str(len(body)).encode())]
            + [(name.lower().encode(), value.encode()) for name, value in headers.items()],
            "client": None,
            "server": None,
        }
        sent = False
        status = 500
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # nothing more to receive
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await _in_time(self.app(scope, receive, send), timeout)
        return status, b"".join(chunks)

    async def close(self) -> None:
        pass
