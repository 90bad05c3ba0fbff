"""The SQLite store's files are the owner's only (THREAT_MODEL G9): created 0600, and an open one is named."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import structlog

from gateway.audit import AuditEntry
from gateway.store.sqlite import DATABASE_FILE_MODE, SqliteStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _entry() -> AuditEntry:
    return AuditEntry(1, "r", "c", "440000", "s", "/hutong.v1.AuditService/ListAuditEntries", "audit", "OK")


@pytest.mark.usefixtures("loose_umask")
async def test_a_new_database_and_its_wal_and_shm_files_are_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite3"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.append_audit([_entry()])  # the writer's WAL exists from the first write on
        files = [path, path.with_name("hub.sqlite3-wal"), path.with_name("hub.sqlite3-shm")]
        assert all(file.exists() for file in files)
        assert {file.name: _mode(file) for file in files} == {file.name: DATABASE_FILE_MODE for file in files}
    finally:
        await store.close()


async def test_a_new_database_is_0600_even_under_a_umask_that_takes_the_owners_write_bit(tmp_path: Path) -> None:
    previous = os.umask(0o277)
    try:
        store = SqliteStore(tmp_path / "hub.sqlite3")
        await store.open()
        await store.close()
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "hub.sqlite3") == DATABASE_FILE_MODE


async def test_an_existing_database_open_to_others_is_used_and_named_in_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.append_audit([_entry()])
    await store.close()
    path.chmod(0o644)

    reopened = SqliteStore(path)
    with structlog.testing.capture_logs() as logs:
        await reopened.open()
    try:
        size, _ = await reopened.audit_tree()
        assert size == 1  # still opens and reads: not refused
    finally:
        await reopened.close()

    warnings = [e for e in logs if e["event"] == "database_file_open_to_others"]
    assert [(e["log_level"], e["path"], e["mode"]) for e in warnings] == [("warning", str(path), "0644")]
    assert _mode(path) == 0o644  # the operator's file is not changed behind their back


async def test_a_private_existing_database_opens_without_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.close()

    reopened = SqliteStore(path)
    with structlog.testing.capture_logs() as logs:
        await reopened.open()
    await reopened.close()

    assert [e for e in logs if e["event"] == "database_file_open_to_others"] == []
