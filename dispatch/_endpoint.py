"""The endpoint: the ASGI application the orchestrator calls to run functions.

``POST <path>/run`` takes a signed RunRequest and answers a RunResponse;
``GET <path>/health`` answers 200. Bad input gets the answer that says what
is wrong, never a 500 and never a crash:

| input | answer |
|---|---|
| body not a RunRequest | 400 with the reason |
| no or malformed signature | 401 |
| bad, stale or replayed signature | 403 |
| body over the size limit | 413 |
| unknown function | 404 naming it |
| corrupt, forged or incompatible snapshot | RunResponse with INCOMPATIBLE_STATE |
| argument or result that cannot be (un)pickled | RunResponse with an error naming it |
"""

from __future__ import annotations

import logging
from dataclasses import replace

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import _config, _logging, _signature, _wire
from ._function import Registry, default_registry
from ._scheduler import Scheduler
from ._status import Status

logger = logging.getLogger("dispatch")

MSGPACK = "application/msgpack"
DEFAULT_MAX_BODY = 64 * 1024 * 1024


class _TooLarge(Exception):
    pass


class Dispatch:
    """The dispatch endpoint, as an ASGI application.

    ``Dispatch()`` is an ASGI app serving ``/dispatch/run``; ``Dispatch(app)``
    mounts the endpoint into an existing Starlette or FastAPI ``app``.
    Settings not given here come from the environment (see ``dispatch._config``):
    without a verification key the endpoint refuses to start unless
    ``insecure=True`` (or ``DISPATCH_INSECURE=1``).
    """

    def __init__(
        self,
        app: Starlette | None = None,
        *,
        registry: Registry | None = None,
        verification_key: str | None = None,
        seal_keys: list[bytes] | None = None,
        insecure: bool | None = None,
        path: str = "/dispatch",
        max_body: int = DEFAULT_MAX_BODY,
        scheduler: Scheduler | None = None,
    ) -> None:
        settings = _config.Settings.from_env()
        if insecure is not None:
            settings = replace(settings, insecure=insecure)
        if seal_keys is not None:
            settings = replace(settings, seal_keys=tuple(seal_keys))
        self.registry = registry or default_registry()
        self.verifier = _config.verifier(settings, verification_key)
        self.sealer = _config.sealer(settings)
        self.scheduler = scheduler or Scheduler(
            self.sealer, where=settings.where, redact=settings.redact
        )
        self.max_body = max_body
        self.path = path.rstrip("/")
        self.app = Starlette(
            routes=[
                Route("/run", self.run, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )
        if app is not None:
            app.mount(self.path, self.app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path != self.path and not path.startswith(self.path + "/"):
                response = PlainTextResponse("not found", status_code=404)
                await response(scope, receive, send)
                return
            scope = dict(scope, root_path=scope.get("root_path", "") + self.path)
            scope["path"] = path[len(self.path) :] or "/"
        await self.app(scope, receive, send)

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def run(self, request: Request) -> Response:
        try:
            body = await self._body(request)
        except _TooLarge:
            return PlainTextResponse(f"body larger than {self.max_body} bytes", status_code=413)
        if self.verifier is not None:
            try:
                # The path as the orchestrator sent it, whatever app this is mounted in.
                raw = request.scope.get("raw_path")
                path = raw.decode("latin-1") if raw else request.url.path
                self.verifier.verify(request.method, path, request.headers, body)
            except _signature.MissingSignature as error:
                return PlainTextResponse(f"unauthenticated: {error}", status_code=401)
            except _signature.SignatureError as error:
                return PlainTextResponse(f"permission denied: {error}", status_code=403)
        status, content = await self.handle(body)
        if status != 200:
            return PlainTextResponse(content.decode(), status_code=status)
        return Response(content, media_type=MSGPACK)

    async def handle(self, body: bytes) -> tuple[int, bytes]:
        """Run the RunRequest in ``body``: (200, RunResponse) or (4xx, what is wrong).

        The request is taken as authentic: the HTTP route verifies signatures
        first; an embedded orchestrator calls this directly.
        """
        try:
            run_request = _wire.RunRequest.from_msgpack(body)
        except _wire.ProtocolError as error:
            return 400, f"bad request: {error}".encode()
        function = self.registry.lookup(run_request.function)
        if function is None:
            return 404, f"function {run_request.function!r} does not exist".encode()
        # The function's log lines (and ours about it) name the call.
        token = _logging.dispatch_id.set(run_request.dispatch_id)
        try:
            response = await self.scheduler.run(function, run_request)
        except Exception as error:  # a bug in dispatch: the call is retried
            logger.exception("dispatch: internal error running %s", run_request.function)
            response = _wire.RunResponse(
                status=Status.TEMPORARY_ERROR.value,
                exit=_wire.Exit(
                    error=_wire.Error(
                        status=Status.TEMPORARY_ERROR.value,
                        type=f"{type(error).__module__}.{type(error).__qualname__}",
                        message=f"internal error in the dispatch endpoint: {error}",
                    )
                ),
            )
        finally:
            _logging.dispatch_id.reset(token)
        return 200, response.to_msgpack()

    async def _body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise _TooLarge
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)
