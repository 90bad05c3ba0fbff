"""Tests of ``StoreAuditSource`` (gateway.store.sqlite_audit): the exchange log read for an export, on both engines."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import AuditEntry, NoteVerifier, encode_verifier_key, root_hash, sha256, sign_checkpoint
from gateway.audit.archive import export_log, verify_export
from gateway.errors import StoreError
from gateway.store.sql import SqlStore
from gateway.store.sqlite import SqliteEngine
from gateway.store.sqlite_audit import SqliteAuditSource, StoreAuditSource

ORIGIN = "hub.test/hutong-audit"
KEY = Ed25519PrivateKey.generate()
T0 = 1_748_736_000_000_000


def entries(start: int, end: int) -> list[AuditEntry]:
    """CheckEnrollment entries ``start .. end-1``, one person each."""
    node = "hutong://province/440000/node/gz-01"
    return [
        AuditEntry(
            time_us=T0 + n * 1000,
            request_id=f"req-{n}",
            caller=node,
            province="440000",
            subject=node,
            method="/hutong.v1.AssistanceQueryService/CheckEnrollment",
            purpose="duplicate-check",
            outcome="OK",
            counts={"persons": 1},
            person_keys=(hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).hexdigest(),),
            payload_digest=hashlib.sha256(f"payload-{n}".encode()).hexdigest(),
        )
        for n in range(start, end)
    ]


def sign(size: int, root: bytes) -> tuple[int, str]:
    return T0 + size, sign_checkpoint(ORIGIN, size, root, ORIGIN, KEY, time_us=T0 + size)


def source_of(store: SqlStore) -> StoreAuditSource:
    return StoreAuditSource.open(
        store.engine,
        origin=ORIGIN,
        hash_name="sha256",
        verifier_key=encode_verifier_key(ORIGIN, KEY.public_key()),
        key_binding=None,
    )


async def test_an_export_holds_every_committed_entry_and_checkpoint_and_verifies(
    store: SqlStore, tmp_path: Path
) -> None:
    logged = entries(0, 300)
    await store.append_audit(logged)
    await store.add_checkpoint(sign)
    await store.append_audit(entries(300, 310))  # not yet covered by a checkpoint
    source = source_of(store)
    try:
        summary = export_log(source, tmp_path / "export", segment_size=256)
    finally:
        source.close()
    assert (summary.size, summary.segments_written, summary.checkpoints) == (310, 2, 1)
    report = verify_export(tmp_path / "export", NoteVerifier.of(ORIGIN, KEY.public_key()), check_entries=True)
    assert (report.size, report.checkpoints, report.uncovered) == (310, 1, 10)
    assert report.root_hash == root_hash([e.leaf_hash(sha256) for e in logged + entries(300, 310)])


# SQLite reads each statement in its own WAL snapshot, by design (see StoreAuditSource).
@pytest.mark.parametrize("engine", ["postgresql"])
async def test_on_postgresql_one_export_reads_one_committed_state_while_the_log_grows(store: SqlStore) -> None:
    await store.append_audit(entries(0, 20))
    await store.add_checkpoint(sign)
    source = source_of(store)
    try:
        assert source.tree_size() == 20
        await store.append_audit(entries(20, 30))  # a replica appends and signs while the export runs
        await store.add_checkpoint(sign)
        assert source.tree_size() == 20
        assert len(list(source.checkpoints())) == 1
        assert len(list(source.read_entries(0, 30))) == 20
    finally:
        source.close()
    later = source_of(store)
    try:
        assert (later.tree_size(), len(list(later.checkpoints()))) == (30, 2)
    finally:
        later.close()


async def test_the_source_reads_on_a_read_only_connection(store: SqlStore) -> None:
    await store.append_audit(entries(0, 3))
    source = source_of(store)
    try:
        with pytest.raises(store.engine.errors):
            source._con.execute("DELETE FROM audit_entries")
    finally:
        source.close()
    assert (await store.audit_tree())[0] == 3


def test_a_database_without_the_log_is_refused(empty_postgres_url: str, tmp_path: Path) -> None:
    from gateway.store.postgres import PostgresStore

    sqlite3.connect(tmp_path / "empty.sqlite3").close()
    for engine in (SqliteEngine(tmp_path / "empty.sqlite3"), PostgresStore(empty_postgres_url).engine):
        with pytest.raises(StoreError) as refused:
            StoreAuditSource.open(engine, origin=ORIGIN, hash_name="sha256", verifier_key="", key_binding=None)
        assert refused.value.reason == "SCHEMA_TOO_OLD"
        assert "hutong hub migrate" in str(refused.value)


def test_the_sqlite_file_source_refuses_a_missing_file_without_creating_it(tmp_path: Path) -> None:
    absent = tmp_path / "hub.sqlite3"
    with pytest.raises(StoreError):
        SqliteAuditSource(absent, origin=ORIGIN, hash_name="sha256", verifier_key="", key_binding=None)
    assert not absent.exists()
