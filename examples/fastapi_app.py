"""Dispatch functions served by an existing FastAPI application.

    DISPATCH_VERIFICATION_KEY=... DISPATCH_SEAL_KEY=... uvicorn examples.fastapi_app:app

``Dispatch(app)`` mounts the dispatch endpoint at ``/dispatch`` next to the
application's own routes; the orchestrator calls ``POST /dispatch/run``.
The web route below starts a durable workflow with ``.dispatch()``.
"""

from __future__ import annotations

from fastapi import FastAPI

import dispatch

app = FastAPI()


@dispatch.function
def make_greeting(name: str) -> str:
    return "Hello " + name


@dispatch.function
async def greet_all(names: list[str]) -> list[str]:
    return await dispatch.gather(*[make_greeting(name) for name in names])


@app.post("/greetings")
def start_greetings(names: list[str]) -> dict[str, str]:
    """Start the workflow; answers at once with the id of the call."""
    return {"dispatch_id": greet_all.dispatch(names)}


@app.get("/")
def home() -> dict[str, str]:
    return {"status": "serving"}


dispatch.Dispatch(app)
