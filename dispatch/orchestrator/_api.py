"""The orchestrator's HTTP API (msgpack bodies, ``Authorization: Bearer <API key>``).

- ``POST /v1/dispatch``: a DispatchRequest; its calls are created atomically,
  and their ids returned in a DispatchResponse.
- ``GET /v1/calls/{id}``: a call's state, status, attempts, result and children
  (msgpack; JSON, with values decoded for people, given ``Accept: application/json``).
- ``GET /v1/calls?state=&status=&function=&root=&since=&until=&before=&limit=``:
  calls, newest first, as JSON ``{"calls": [...], "next": cursor or null}``;
  ``status`` is a status name (``ok``, ``cancelled``...) or ``failed``;
  ``since``/``until`` Unix seconds; ``before`` the cursor of the page before.
- ``GET /v1/calls/{id}/tree``: the call and its descendants, oldest first (JSON).
- ``POST /v1/calls/{id}/cancel``: cancel a call and its descendants.
- ``POST /v1/calls/{id}/retry``: run a failed or cancelled call again, as a new
  call of the same function and input; its id (JSON).
- ``GET /v1/health``: 200 (no key needed).
- ``GET /metrics``: Prometheus metrics in its text format (see ``_metrics``),
  with the same key (in Prometheus: ``authorization: {credentials: <API key>}``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import time
from datetime import date, datetime
from typing import Any

import msgpack  # type: ignore[import-untyped]
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from .. import _wire
from .._status import Status
from ._engine import Engine, new_id
from ._storage import (
    CANCELLED,
    DONE,
    CallConflict,
    CallQuery,
    CallRecord,
    CallSummary,
    NewCall,
    status_name,
)

MSGPACK = "application/msgpack"
MAX_BODY = 64 * 1024 * 1024
MAX_PAGE = 500
MAX_TREE = 10_000


def status_value(name: str) -> int | str:
    """The status a name given by people means (``failed``: any failure)."""
    if name == "failed":
        return name
    if name == "cancelled":
        return CANCELLED
    try:
        return Status[name.upper()].value
    except KeyError:
        names = ", ".join(sorted(s.name.lower() for s in Status))
        raise ValueError(f"unknown status {name!r}: one of failed, cancelled, {names}") from None


def jsonable(value: Any) -> Any:
    """A decoded value (see ``_wire.readable``) as JSON: bytes as ``{"bytes":
    base64}``, sealed pickles as ``{"sealed": size}``, datetimes in ISO 8601."""
    if isinstance(value, _wire.Sealed):
        return {"sealed": value.size}
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    return value


def readable_json(data: bytes | None) -> Any:
    """An encoded value as JSON for people; never unpickles anything."""
    if data is None:
        return None
    try:
        return jsonable(_wire.readable(data))
    except Exception as error:
        return {"unreadable": f"{type(error).__name__}: {error}", "size": len(data)}


def error_json(data: bytes | None) -> dict[str, Any] | None:
    """A recorded error (msgpack ``_wire.Error``) as JSON, with its traceback."""
    if data is None:
        return None
    try:
        error = _wire.Error.from_msgpack(data)
    except _wire.ProtocolError:
        return {"type": "unknown", "message": "unreadable error", "status": None, "traceback": None}
    return {
        "type": error.type,
        "message": error.message,
        "status": status_name(error.status),
        "traceback": error.traceback,
    }


def frames_json(data: bytes | None) -> Any:
    """Where a suspended coroutine waits, as its endpoint described it."""
    if data is None:
        return None
    try:
        return jsonable(msgpack.unpackb(data, raw=False, strict_map_key=False))
    except Exception:
        return None


def summary_json(call: CallSummary) -> dict[str, Any]:
    return {
        "id": call.id,
        "root_id": call.root_id,
        "parent_id": call.parent_id,
        "function": call.function,
        "state": call.state,
        "status": status_name(call.status),
        "attempt": call.attempt,
        "created_at": call.created_at,
        "finished_at": call.finished_at,
    }


def call_json(record: CallRecord) -> dict[str, Any]:
    """Everything about a call, for people: values decoded, sealed pickles
    shown as such, the error with its traceback."""
    return {
        "id": record.id,
        "root_id": record.root_id,
        "parent_id": record.parent_id,
        "function": record.function,
        "endpoint": record.endpoint,
        "state": record.state,
        "status": status_name(record.status),
        "attempt": record.attempt,
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "cancelled_at": record.cancelled_at,
        "input": readable_json(record.input),
        "output": readable_json(record.output),
        "error": error_json(record.error),
        "attempts": [
            {
                "number": a.number,
                "attempt": a.attempt,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "duration": None
                if a.started_at is None or a.finished_at is None
                else a.finished_at - a.started_at,
                "status": status_name(a.status),
                "error_type": a.error_type,
                "error_message": a.error_message,
                "traceback": a.traceback,
                "snapshot_size": a.snapshot_size,
            }
            for a in record.attempts
        ],
        "children": list(record.children),
        "frames": frames_json(record.frames),
    }


def cursor(call: CallSummary) -> str:
    """Where the next page starts: after ``call``."""
    packed: bytes = msgpack.packb([call.created_at, call.id])
    return base64.urlsafe_b64encode(packed).decode()


def parse_cursor(text: str) -> tuple[float, str]:
    try:
        created_at, call_id = msgpack.unpackb(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
        raise ValueError(f"malformed cursor {text!r}") from None
    if not isinstance(created_at, (int, float)) or not isinstance(call_id, str):
        raise ValueError(f"malformed cursor {text!r}")
    return float(created_at), call_id


def query_of(params: dict[str, str]) -> CallQuery:
    """The :class:`CallQuery` of the list's query parameters; ValueError if bad."""

    def number(name: str) -> float | None:
        text = params.get(name)
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name} must be Unix seconds, got {text!r}") from None

    state = params.get("state") or None
    if state is not None and state not in ("pending", "running", "waiting", DONE):
        raise ValueError(f"unknown state {state!r}: one of pending, running, waiting, done")
    limit_text = params.get("limit") or "50"
    try:
        limit = int(limit_text)
    except ValueError:
        raise ValueError(f"limit must be a number, got {limit_text!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    status = params.get("status") or None
    before = params.get("before") or None
    return CallQuery(
        state=state,
        status=status_value(status) if status else None,
        function=params.get("function") or None,
        root_id=params.get("root") or None,
        roots_only=params.get("roots") in ("1", "true"),
        since=number("since"),
        until=number("until"),
        before=parse_cursor(before) if before else None,
        limit=limit,
    )


async def retry_call(engine: Engine, call_id: str) -> str:
    """Run a failed or cancelled call again: a new root call of the same
    function, endpoint and input; its id. LookupError if there is no such
    call, ValueError if it cannot be retried."""
    record = await engine.storage.get(call_id)
    if record is None:
        raise LookupError(f"no call {call_id}")
    if record.state != DONE:
        raise ValueError(f"call {call_id} is {record.state}: only a finished call can be retried")
    if record.status == Status.OK.value:
        raise ValueError(f"call {call_id} succeeded: only a failed or cancelled call is retried")
    if record.input is None:
        raise ValueError(f"call {call_id} has no input on record")
    new = new_id()
    await engine.submit(
        [
            NewCall(
                id=new,
                function=record.function,
                endpoint=record.endpoint,
                input=record.input,
                root_id=new,
                expires_at=time.time() + engine.policy.expiration,
            )
        ]
    )
    return new


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

    def wants_json(request: Request) -> bool:
        return "application/json" in request.headers.get("accept", "")

    async def list_calls(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("unauthenticated: check the API key", status_code=401)
        try:
            query = query_of(dict(request.query_params))
        except ValueError as error:
            return PlainTextResponse(f"bad request: {error}", status_code=400)
        calls = await engine.storage.list_calls(query)
        following = cursor(calls[-1]) if len(calls) == query.limit else None
        return JSONResponse({"calls": [summary_json(c) for c in calls], "next": following})

    async def tree(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("unauthenticated: check the API key", status_code=401)
        calls = await engine.storage.tree(request.path_params["id"], MAX_TREE)
        if not calls:
            return PlainTextResponse("no such call", status_code=404)
        return JSONResponse({"calls": [summary_json(c) for c in calls]})

    async def retry(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("unauthenticated: check the API key", status_code=401)
        try:
            new = await retry_call(engine, request.path_params["id"])
        except LookupError:
            return PlainTextResponse("no such call", status_code=404)
        except ValueError as error:
            return PlainTextResponse(f"conflict: {error}", status_code=409)
        return JSONResponse({"id": new})

    async def get_call(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("unauthenticated: check the API key", status_code=401)
        record = await engine.storage.get(request.path_params["id"])
        if record is None:
            return PlainTextResponse("no such call", status_code=404)
        if wants_json(request):
            return JSONResponse(call_json(record))
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
        call_id = request.path_params["id"]
        count = await engine.storage.cancel(call_id, time.time())
        if not count and await engine.storage.get(call_id) is None:
            return PlainTextResponse("no such call", status_code=404)
        engine.wake()
        if wants_json(request):
            return JSONResponse({"cancelled": count})
        return Response(msgpack.packb({"cancelled": count}), media_type=MSGPACK)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("unauthenticated: check the API key", status_code=401)
        text = engine.metrics.render(await engine.storage.counts(), engine.limiters)
        return Response(text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    from ._dashboard import dashboard_app  # here: the dashboard uses this module's helpers

    return Starlette(
        routes=[
            Route("/v1/dispatch", dispatch, methods=["POST"]),
            Route("/v1/calls", list_calls, methods=["GET"]),
            Route("/v1/calls/{id}", get_call, methods=["GET"]),
            Route("/v1/calls/{id}/tree", tree, methods=["GET"]),
            Route("/v1/calls/{id}/cancel", cancel, methods=["POST"]),
            Route("/v1/calls/{id}/retry", retry, methods=["POST"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/", lambda request: RedirectResponse("/dashboard/"), methods=["GET"]),
            Mount("/dashboard", app=dashboard_app(engine, api_key)),
        ]
    )
