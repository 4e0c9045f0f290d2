"""``dispatch.run``: serve the endpoint, call ``init`` once ready, serve until interrupted."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from . import _config
from ._endpoint import Dispatch

logger = logging.getLogger("dispatch")


def run(init: Callable[[], Any] | None = None) -> None:
    """Serve this application's dispatch endpoint on ``DISPATCH_ENDPOINT_ADDR``.

    Once the server accepts requests, ``init`` (if given) is called once, in a
    thread of its own, typically to dispatch the first calls. Serves until
    interrupted (Ctrl-C or SIGTERM), then shuts down cleanly: requests in
    progress finish first.
    """
    settings = _config.Settings.from_env()
    host, _, port = settings.endpoint_addr.rpartition(":")
    if not host or not port.isdigit():
        raise _config.ConfigurationError(
            f"DISPATCH_ENDPOINT_ADDR must be host:port, not {settings.endpoint_addr!r}"
        )
    server = uvicorn.Server(
        uvicorn.Config(Dispatch(), host=host.strip("[]"), port=int(port), log_level="warning")
    )
    if init is not None:
        threading.Thread(target=_call_when_started, args=(server, init), daemon=True).start()
    server.run()


def _call_when_started(server: uvicorn.Server, init: Callable[[], Any]) -> None:
    while not server.started:
        if server.should_exit:
            return
        threading.Event().wait(0.01)
    try:
        init()
    except Exception:
        logger.exception("dispatch: the init function raised")
