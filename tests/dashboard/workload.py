"""The functions the dashboard tests run (a registry of their own)."""

from __future__ import annotations

import threading

import dispatch
from dispatch._function import Registry

registry = Registry()
function = registry.register

release = threading.Event()
"""Set when the test ends: ``slow`` returns at once (a worker thread is not left asleep)."""

FAILURE_MESSAGE = "ledger mismatch for account acct-7: expected 42, found 41"


class LedgerMismatch(Exception):
    """A failure the tests look for on the pages (retried: TEMPORARY_ERROR)."""


@function
def add(a: int, b: int) -> int:
    return a + b


@function
def reconcile(account: str) -> None:
    balance = 41
    raise LedgerMismatch(f"ledger mismatch for account {account}: expected 42, found {balance}")


@function
def slow(seconds: float) -> str:
    release.wait(seconds)
    return "slept"


@function
async def patient(label: str) -> str:
    note = f"waiting on {label}"
    result: str = await slow(600.0)
    return note + result


@function
async def fan(count: int) -> list[int]:
    return await dispatch.gather(*[add(i, i) for i in range(count)])
