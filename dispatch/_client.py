"""The client: sends calls to the orchestrator's API."""

from __future__ import annotations

from typing import Any

import httpx

from . import _config, _wire
from ._errors import ClientError
from ._function import Call, DispatchID

MSGPACK = "application/msgpack"


class Client:
    """Sends calls to the orchestrator (``DISPATCH_API_URL``, ``DISPATCH_API_KEY``).

    ``endpoint`` is where the orchestrator runs the calls (default
    ``DISPATCH_ENDPOINT_URL``). Arguments that are not plain data are pickled
    and sealed with the application's seal key (``DISPATCH_SEAL_KEY``).
    """

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        endpoint: str | None = None,
        sealer: _wire.Sealer | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = _config.Settings.from_env()
        api_url = api_url or settings.api_url
        if not api_url:
            raise _config.ConfigurationError(
                "no orchestrator: set DISPATCH_API_URL (or run the program with "
                "'dispatch run -- ...', which does)"
            )
        if not api_url.startswith(("http://", "https://")):
            raise _config.ConfigurationError(
                f"DISPATCH_API_URL must be an http(s) URL: {api_url!r}"
            )
        self.api_url = api_url.rstrip("/")
        self.endpoint = endpoint or settings.endpoint_url
        self.sealer = sealer or _config.sealer(settings)
        headers = {"Content-Type": MSGPACK}
        key = api_key or settings.api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"Client({self.api_url!r})"  # never the key

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def dispatch(self, *calls: Call[Any]) -> list[DispatchID]:
        """Send ``calls`` atomically in one request; their ids, in order."""
        return self.dispatch_calls(list(calls))

    def dispatch_calls(self, calls: list[Call[Any]]) -> list[DispatchID]:
        request = _wire.DispatchRequest(
            calls=tuple(
                _wire.Call(
                    function=call.function,
                    input=_wire.encode_arguments(call.args, call.kwargs, self.sealer),
                    endpoint=self.endpoint,
                )
                for call in calls
            )
        )
        try:
            response = self._http.post(f"{self.api_url}/v1/dispatch", content=request.to_msgpack())
        except httpx.HTTPError as error:
            raise ClientError(
                0, f"cannot reach the orchestrator at {self.api_url}: {error}"
            ) from error
        if response.status_code == 401:
            raise ClientError(401, "the orchestrator refused the API key (check DISPATCH_API_KEY)")
        if response.status_code != 200:
            raise ClientError(response.status_code, response.text[:1000])
        try:
            ids = _wire.DispatchResponse.from_msgpack(response.content).dispatch_ids
        except _wire.ProtocolError as error:
            raise ClientError(response.status_code, f"unreadable response: {error}") from error
        if len(ids) != len(calls):
            raise ClientError(response.status_code, f"{len(ids)} ids for {len(calls)} calls")
        return list(ids)
