"""The PostgreSQL server the tests use, and throwaway databases and schemas on it.

The server is ``DISPATCH_TEST_POSTGRES_URL`` (default: the local one, database
``test``). Without a reachable server the tests that need it skip, saying
why, unless ``DISPATCH_REQUIRE_POSTGRES=1`` (CI), where that is a failure.
Each test gets a database or schema of its own, dropped after it: nothing
here touches data a test did not create.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import psycopg
import pytest

POSTGRES = os.environ.get("DISPATCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        if os.environ.get("DISPATCH_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES}: {error}")


def postgres_database(name: str) -> Iterator[str]:
    """A new, empty database for one test (dropped after it): its URL."""
    database = f"{name}_{os.getpid()}_{time.time_ns() % 10**9}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        try:
            yield POSTGRES.rsplit("/", 1)[0] + f"/{database}"
        finally:
            admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


def postgres_schema() -> Iterator[str]:
    """A new, empty schema for one test (dropped after it): a URL whose
    connections use it."""
    schema = f"dispatch_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            separator = "&" if "?" in POSTGRES else "?"
            options = urllib.parse.quote(f"-csearch_path={schema}")
            yield f"{POSTGRES}{separator}options={options}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
