"""A fresh PostgreSQL database per benchmark run (psycopg only: the DBOS
benchmark, which runs without dispatch, uses it too)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import psycopg


@contextlib.contextmanager
def fresh_database(server: str, prefix: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL ``server``, named from ``prefix``
    and dropped afterwards (with FORCE): its URL."""
    name = f"{prefix}_{os.getpid()}_{time.time_ns() % 10**9}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
