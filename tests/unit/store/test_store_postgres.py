"""What only the PostgreSQL store does: its SQL translation, lost connections, and two stores on one database."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator

import psycopg
import pytest

from gateway.audit import AuditEntry, MerkleAccumulator, sha256
from gateway.domain.identity import make_id_number
from gateway.domain.model import Enrollment, EnrollmentStatus, Outcome, PersonRecord, Program
from gateway.domain.protection import FieldSealer, KeyMaterial, PersonKeyer
from gateway.domain.records import PreparedBatch, RecordPreparer
from gateway.errors import StoreUnavailable
from gateway.store.base import NodeRef
from gateway.store.postgres import PostgresStore, redact, translate

GZ = NodeRef("440000", "gz-01")
KEYS = KeyMaterial(person_key_secret=b"s" * 32, sealing_keys={"k1": b"k" * 32}, active_key_id="k1")
PREPARER = RecordPreparer(PersonKeyer(KEYS.person_key_secret), FieldSealer(KEYS), today=dt.date(2026, 6, 1))


def batch(*numbers: int) -> PreparedBatch:
    records = []
    for n in numbers:
        rec = PersonRecord(
            record_id=f"r-{n}",
            version=1,
            id_number=make_id_number("440106", dt.date(1950, 1, 1) + dt.timedelta(days=n), 11),
            name="王秀英",
            gender=0,
            birth_date=None,
            hukou_division="440106",
            residence_division="440106",
            household_id="",
            enrollments=(
                Enrollment(Program.DIBAO, EnrollmentStatus.ACTIVE, dt.date(2020, 1, 1), None, 80_000, "440106"),
            ),
            updated_at_us=0,
        )
        records.append(dataclasses.replace(rec, content_hash=hashlib.blake2b(repr(rec).encode()).digest()[:16]))
    return PREPARER.prepare_batch("440000", records)


def entry(request_id: str) -> AuditEntry:
    return AuditEntry(
        time_us=1,
        request_id=request_id,
        caller="hutong://province/440000/node/gz-01",
        province="440000",
        subject="gz-01",
        method="/hutong.v1.RecordExchangeService/SyncRecords",
        purpose="",
        outcome="OK",
    )


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(postgres_url)
    await store.open()
    yield store
    await store.close()


def test_placeholders_become_psycopgs_and_literals_are_left_alone() -> None:
    assert translate("SELECT a FROM t WHERE b=? AND c LIKE ? ESCAPE '\\'") == (
        "SELECT a FROM t WHERE b=%s AND c LIKE %s ESCAPE '\\'"
    )
    assert translate("SELECT '?', 'it''s ?%' FROM t WHERE x=?") == "SELECT '?', 'it''s ?%%' FROM t WHERE x=%s"


def test_a_url_is_shown_without_its_password() -> None:
    assert redact("postgresql://hub:s3cret@db.example:5432/hutong") == "postgresql://hub:***@db.example:5432/hutong"
    assert redact("postgresql://hub@db.example/hutong") == "postgresql://hub@db.example/hutong"


async def test_after_the_server_drops_every_connection_the_store_recovers_by_itself(
    pg: PostgresStore, postgres_url: str
) -> None:
    first = await pg.apply_batch(GZ, "b-1", b"d1", batch(1))
    assert first.record_outcomes == bytes([Outcome.CREATED])
    pids = {pg._w.raw.info.backend_pid}  # type: ignore[attr-defined]
    pids.update(await asyncio.gather(*(pg._read(lambda con: con.raw.info.backend_pid) for _ in range(8))))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    # The write in flight when the connection died fails retryably; nothing of it was committed.
    with pytest.raises(StoreUnavailable) as lost:
        await pg.apply_batch(GZ, "b-2", b"d2", batch(2))
    assert lost.value.code_name == "UNAVAILABLE"
    # The node's retry of the same batch is applied once, on a new connection; reads never noticed.
    again = await pg.apply_batch(GZ, "b-2", b"d2", batch(2))
    assert (again.record_outcomes, again.replayed) == (bytes([Outcome.CREATED]), False)
    state = await pg.sync_state(GZ)
    assert (state.records_held, state.batches_applied) == (2, 2)
    await pg.append_audit([])
    size, _ = await pg.audit_tree()
    assert size == 0


async def test_two_stores_on_one_database_append_to_one_gapless_log(postgres_url: str) -> None:
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await a.open()
    await b.open()
    try:
        acks = await asyncio.gather(
            *(
                (a if n % 2 else b).apply_batch(
                    NodeRef("440000", f"gz-{n:02d}"), f"b-{n}", b"d", batch(n), lambda ack: entry(ack.batch_id)
                )
                for n in range(12)
            ),
            *((a if n % 2 else b).append_audit([entry(f"q-{n}")]) for n in range(12)),
        )
        acks = acks[:12]
        assert all(ack.record_outcomes == bytes([Outcome.CREATED]) for ack in acks)
        # A batch id resent to the other store is the original acknowledgement.
        replay = await a.apply_batch(NodeRef("440000", "gz-00"), "b-0", b"d", batch(0))
        assert replay.replayed
        assert (await a.stats()).records_by_province == {"440000": 12}
        size_a, root_a = await a.audit_tree()
        size_b, root_b = await b.audit_tree()
        assert (size_a, root_a) == (size_b, root_b)
        assert size_a == 24
        tree = MerkleAccumulator(sha256)
        ids = set()
        for index in range(size_a):
            held = await b.audit_entry(index)
            assert held is not None, f"entry {index} is missing"
            tree.append(held[1])
            ids.add(json.loads(held[0])["request_id"])
        assert tree.root() == root_a
        assert ids == {f"b-{n}" for n in range(12)} | {f"q-{n}" for n in range(12)}
    finally:
        await a.close()
        await b.close()
