"""The orchestrator's HTTP API (msgpack bodies, ``Authorization: Bearer <API key>``).

- ``POST /v1/dispatch``: a DispatchRequest; its calls are created atomically,
  and their ids returned in a DispatchResponse.
- ``GET /v1/calls/{id}``: a call's state, status, attempts, result and children.
- ``POST /v1/calls/{id}/cancel``: cancel a call and its descendants.
- ``GET /v1/health``: 200 (no key needed).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import msgpack  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .. import _wire
from ._engine import Engine, new_id
from ._storage import CallConflict, NewCall

MSGPACK = "application/msgpack"
MAX_BODY = 64 * 1024 * 1024


def api_app(engine: Engine, api_key: str | None) -> Starlette:
    """The API of ``engine``'s orchestrator; ``api_key`` None disables auth
    (only for an orchestrator nothing else can reach)."""
    expected = f"Bearer {api_key}".encode() if api_key else None

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    async def dispatch(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("unauthenticated: check the API key", status_code=401)
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("body too large", status_code=413)
        try:
            message = _wire.DispatchRequest.from_msgpack(body)
        except _wire.ProtocolError as error:
            return PlainTextResponse(f"bad request: {error}", status_code=400)
        now = time.time()
        calls = []
        for index, call in enumerate(message.calls):
            endpoint = call.endpoint or ""
            if not all(
                url.strip().startswith(("http://", "https://")) for url in endpoint.split(",")
            ):
                return PlainTextResponse(
                    f"bad request: call {index} ({call.function}) needs an http(s) endpoint "
                    f"(or the http(s) URLs of its replicas, separated by commas)",
                    status_code=400,
                )
            call_id = call.dispatch_id or new_id()
            calls.append(
                NewCall(
                    id=call_id,
                    function=call.function,
                    endpoint=endpoint,
                    input=call.input,
                    root_id=call_id,
                    expires_at=now + engine.policy.expiration,
                )
            )
        try:
            await engine.submit(calls)
        except CallConflict as error:
            return PlainTextResponse(f"conflict: {error}", status_code=409)
        ids = _wire.DispatchResponse(dispatch_ids=tuple(c.id for c in calls))
        return Response(ids.to_msgpack(), media_type=MSGPACK)

    async def get_call(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("unauthenticated: check the API key", status_code=401)
        record = await engine.storage.get(request.path_params["id"])
        if record is None:
            return PlainTextResponse("no such call", status_code=404)
        document: dict[str, Any] = {
            "id": record.id,
            "root_id": record.root_id,
            "parent_id": record.parent_id,
            "function": record.function,
            "endpoint": record.endpoint,
            "state": record.state,
            "status": record.status,
            "attempt": record.attempt,
            "created_at": record.created_at,
            "finished_at": record.finished_at,
            "input": record.input,
            "output": record.output,
            "error": record.error,
            "attempts": [
                {
                    "number": a.number,
                    "attempt": a.attempt,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                    "status": a.status,
                    "error_type": a.error_type,
                    "error_message": a.error_message,
                    "snapshot_size": a.snapshot_size,
                }
                for a in record.attempts
            ],
            "children": list(record.children),
        }
        return Response(msgpack.packb(document), media_type=MSGPACK)

    async def cancel(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("unauthenticated: check the API key", status_code=401)
        count = await engine.storage.cancel(request.path_params["id"], time.time())
        engine.wake()
        return Response(msgpack.packb({"cancelled": count}), media_type=MSGPACK)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/v1/dispatch", dispatch, methods=["POST"]),
            Route("/v1/calls/{id}", get_call, methods=["GET"]),
            Route("/v1/calls/{id}/cancel", cancel, methods=["POST"]),
            Route("/v1/health", health, methods=["GET"]),
        ]
    )
