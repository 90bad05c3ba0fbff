"""Fixtures of the store tests: every conformance test runs on a real SQLite file and on a real PostgreSQL schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.sql import SqlStore
from gateway.store.sqlite import SqliteStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "hub.sqlite3"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> str:
    """The engine of a conformance test's store."""
    return str(request.param)


@pytest.fixture
async def store(engine: str, request: pytest.FixtureRequest) -> AsyncIterator[SqlStore]:
    """An open, empty store: the same tests hold for every engine."""
    s: SqlStore
    if engine == "sqlite":
        s = SqliteStore(request.getfixturevalue("db_path"))
    else:
        from gateway.store.postgres import PostgresStore

        s = PostgresStore(request.getfixturevalue("postgres_url"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[SqliteStore]:
    """An open SQLite store, for tests that look at its file."""
    s = SqliteStore(db_path)
    await s.open()
    yield s
    await s.close()
