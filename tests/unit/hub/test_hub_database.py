"""Tests of ``hub_store`` and ``hub_database`` (gateway.hub.ops_commands): a hub's database as commands open it."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import pytest

from gateway.audit import AuditEntry
from gateway.errors import ConfigError
from gateway.hub.config import HubConfig
from gateway.hub.ops_commands import hub_database, hub_store
from gateway.store.sql import SqlStore
from gateway.store.sqlite import SqliteStore


def entries(start: int, end: int) -> list[AuditEntry]:
    node = "hutong://province/440000/node/gz-01"
    return [
        AuditEntry(
            time_us=1_748_736_000_000_000 + n,
            request_id=f"req-{n}",
            caller=node,
            province="440000",
            subject=node,
            method="/hutong.v1.AssistanceQueryService/CheckEnrollment",
            purpose="duplicate-check",
            outcome="OK",
            counts={"persons": 0},
            person_keys=(),
            payload_digest=hashlib.sha256(f"payload-{n}".encode()).hexdigest(),
        )
        for n in range(start, end)
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
async def hub(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[HubConfig, SqlStore]]:
    """A running hub's store, and the config an operator command finds it with (data directory, store.url)."""
    store: SqlStore
    if request.param == "sqlite":
        config = HubConfig(data_dir=tmp_path / "hub")
        store = SqliteStore(tmp_path / "hub" / "hub.sqlite3")
    else:
        from gateway.store.postgres import PostgresStore

        url = request.getfixturevalue("postgres_url")
        config = HubConfig(data_dir=tmp_path / "hub", store_url=url)
        store = PostgresStore(url)
    await store.open()
    yield config, store
    await store.close()


async def test_reads_agree_with_each_other_while_the_hub_commits_and_write_nothing(
    hub: tuple[HubConfig, SqlStore],
) -> None:
    config, store = hub
    await store.append_audit(entries(0, 5))
    with hub_database(config) as con:
        assert con.execute("SELECT count(*) FROM audit_entries").fetchone()[0] == 5
        await store.append_audit(entries(5, 8))  # committed by the hub meanwhile
        assert con.execute("SELECT count(*) FROM audit_entries").fetchone()[0] == 5
        with pytest.raises(store.engine.errors):
            con.execute("DELETE FROM audit_entries")
    with hub_database(config) as con:
        assert con.execute("SELECT count(*) FROM audit_entries").fetchone()[0] == 8
    assert (await store.audit_tree())[0] == 8


def test_a_missing_sqlite_database_is_refused_not_created(tmp_path: Path) -> None:
    for config in (HubConfig(data_dir=tmp_path), HubConfig(data_dir=tmp_path, store_url="sqlite:elsewhere.db")):
        with pytest.raises(ConfigError) as refused:
            hub_store(config)
        assert refused.value.reason == "FILE_MISSING"
        assert refused.value.field == ("store.url" if config.store_url else "hub.data_dir")
    assert list(tmp_path.iterdir()) == []


def test_a_database_of_an_older_release_is_refused_naming_hub_migrate(empty_postgres_url: str, tmp_path: Path) -> None:
    first = min(
        (e.name, e.read_text(encoding="utf-8"))
        for e in (resources.files("gateway.store") / "migrations" / "sqlite").iterdir()
        if e.name.endswith(".sql")
    )
    con = sqlite3.connect(tmp_path / "hub.sqlite3")
    con.executescript(first[1] + "\nPRAGMA user_version=1;")
    con.close()
    # The PostgreSQL schema has no tables at all: schema version 0.
    for config in (HubConfig(data_dir=tmp_path), HubConfig(data_dir=tmp_path, store_url=empty_postgres_url)):
        with pytest.raises(ConfigError) as refused, hub_database(config):
            pass
        assert refused.value.reason == "SCHEMA_OUTDATED"
        assert "run `hutong hub migrate` first" in str(refused.value)
    con = sqlite3.connect(tmp_path / "hub.sqlite3")
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1  # nothing was migrated
    con.close()
