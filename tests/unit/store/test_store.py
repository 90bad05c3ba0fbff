"""Tests of gateway.store.sqlite: the embedded store on a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import sqlite3
from pathlib import Path

import pytest

from gateway.domain.identity import make_id_number
from gateway.domain.model import (
    Enrollment,
    EnrollmentStatus,
    Household,
    HouseholdMember,
    Outcome,
    PersonRecord,
    Program,
    RetirementReason,
)
from gateway.domain.protection import FieldSealer, KeyMaterial, PersonKeyer
from gateway.domain.records import (
    PreparedBatch,
    RecordPreparer,
    Rejection,
    Retirement,
    decode_enrollments,
    unseal_pii,
)
from gateway.errors import ResourceExhausted, StoreError
from gateway.store.base import BatchAck, NodeRef
from gateway.store.sql import _store_error
from gateway.store.sqlite import SqliteStore

GZ = NodeRef("440000", "gz-01")
GZ_2 = NodeRef("440000", "gz-02")
ZZ = NodeRef("410000", "zz-01")
COUNTY = {"440000": "440106", "410000": "410105", "510000": "510104"}
ID_NUMBER = make_id_number("410105", dt.date(1960, 5, 6), 123)
OTHER_ID_NUMBER = make_id_number("440106", dt.date(1972, 8, 1), 88)
NAME = "张三丰"

KEYS = KeyMaterial(person_key_secret=b"s" * 32, sealing_keys={"k1": b"k" * 32}, active_key_id="k1")
KEYER = PersonKeyer(KEYS.person_key_secret)
SEALER = FieldSealer(KEYS)
PREPARER = RecordPreparer(KEYER, SEALER, today=dt.date(2025, 6, 1))
PERSON = KEYER.person_key(ID_NUMBER)


def record(
    record_id: str = "r-1",
    *,
    province: str = "440000",
    version: int = 1,
    id_number: str = ID_NUMBER,
    name: str = NAME,
    status: int = EnrollmentStatus.ACTIVE,
    program: int = Program.DIBAO,
    amount: int = 80_000,
    updated_at_us: int = 0,
) -> PersonRecord:
    """A valid domain record of ``province`` whose content hash covers every field."""
    rec = PersonRecord(
        record_id=record_id,
        version=version,
        id_number=id_number,
        name=name,
        gender=0,
        birth_date=None,
        hukou_division="410105",
        residence_division=COUNTY[province],
        household_id="",
        enrollments=(Enrollment(program, status, dt.date(2020, 1, 1), None, amount, COUNTY[province]),),
        updated_at_us=updated_at_us,
    )
    return dataclasses.replace(rec, content_hash=hashlib.blake2b(repr(rec).encode(), digest_size=16).digest())


def prepare(node: NodeRef, *records: PersonRecord, households: tuple[Household, ...] = ()) -> PreparedBatch:
    return PREPARER.prepare_batch(node.province_code, list(records), list(households))


def digest_of(batch: PreparedBatch) -> bytes:
    """A batch digest as the servicer would make one: over the content hashes of its items."""
    parts = [r.content_hash for r in batch.records] + [r.item_id.encode() for r in batch.record_rejections]
    return hashlib.sha256(b"".join(parts) + str(batch.record_count).encode()).digest()


async def apply(store: SqliteStore, node: NodeRef, batch_id: str, *records: PersonRecord) -> BatchAck:
    batch = prepare(node, *records)
    return await store.apply_batch(node, batch_id, digest_of(batch), batch)


def outcomes(ack: BatchAck) -> list[Outcome]:
    return [Outcome(v) for v in ack.record_outcomes]


# -- version rules ----------------------------------------------------------------------------


async def test_new_record_is_created_and_held_under_its_person_key(store: SqliteStore) -> None:
    ack = await apply(store, GZ, "b1", record())
    assert outcomes(ack) == [Outcome.CREATED]
    assert ack.record_rejections == []
    assert ack.batch_rejection is None
    assert not ack.replayed
    held = (await store.enrollments_of([PERSON]))[PERSON]
    assert [(h.province_code, h.record_id, h.active_programs) for h in held] == [("440000", "r-1", Program.DIBAO.bit)]
    assert decode_enrollments(held[0].enrollments)[0].monthly_amount_fen == 80_000


async def test_higher_version_updates_the_record(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record())
    ack = await apply(store, GZ, "b2", record(version=2, amount=90_000))
    assert outcomes(ack) == [Outcome.UPDATED]
    (held,) = (await store.enrollments_of([PERSON]))[PERSON]
    assert decode_enrollments(held.enrollments)[0].monthly_amount_fen == 90_000


async def test_resend_of_the_same_version_and_content_is_unchanged(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record())
    ack = await apply(store, GZ, "b2", record())
    assert outcomes(ack) == [Outcome.UNCHANGED]


async def test_lower_version_is_stale_and_changes_nothing(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record(version=3, amount=90_000))
    ack = await apply(store, GZ, "b2", record(version=2, amount=10))
    assert outcomes(ack) == [Outcome.STALE]
    (held,) = (await store.enrollments_of([PERSON]))[PERSON]
    assert decode_enrollments(held.enrollments)[0].monthly_amount_fen == 90_000


async def test_same_version_with_other_content_is_a_version_conflict(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record(amount=80_000))
    ack = await apply(store, GZ, "b2", record(amount=70_000))
    assert outcomes(ack) == [Outcome.REJECTED]
    (rejection,) = ack.record_rejections
    assert (rejection.index, rejection.item_id, rejection.reason, rejection.field, rejection.code_name) == (
        0,
        "r-1",
        "VERSION_CONFLICT",
        "version",
        "FAILED_PRECONDITION",
    )
    (held,) = (await store.enrollments_of([PERSON]))[PERSON]
    assert decode_enrollments(held.enrollments)[0].monthly_amount_fen == 80_000


async def test_the_same_record_twice_in_one_batch_is_created_then_unchanged(store: SqliteStore) -> None:
    ack = await apply(store, GZ, "b1", record(), record())
    assert outcomes(ack) == [Outcome.CREATED, Outcome.UNCHANGED]


async def test_a_record_created_and_updated_in_one_batch_ends_at_its_last_version(store: SqliteStore) -> None:
    ack = await apply(store, GZ, "b1", record(amount=70_000), record(version=2, amount=90_000), record(version=3))
    assert outcomes(ack) == [Outcome.CREATED, Outcome.UPDATED, Outcome.UPDATED]
    (held,) = (await store.enrollments_of([PERSON]))[PERSON]
    assert decode_enrollments(held.enrollments)[0].monthly_amount_fen == 80_000
    assert (await store.sync_state(GZ)).records_held == 1


async def test_record_ids_are_scoped_by_province(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("r-1"))
    ack = await apply(store, ZZ, "b1", record("r-1", province="410000"))
    assert outcomes(ack) == [Outcome.CREATED]
    held = (await store.enrollments_of([PERSON]))[PERSON]
    assert sorted(h.province_code for h in held) == ["410000", "440000"]


async def test_rejected_and_applied_records_keep_their_positions(store: SqliteStore) -> None:
    batch = prepare(GZ, record("a"), record("b", name=""), record("c", id_number=OTHER_ID_NUMBER))
    ack = await store.apply_batch(GZ, "b1", digest_of(batch), batch)
    assert outcomes(ack) == [Outcome.CREATED, Outcome.REJECTED, Outcome.CREATED]
    assert [(r.index, r.item_id, r.reason) for r in ack.record_rejections] == [(1, "b", "NAME_MISSING")]


# -- idempotency of batches ------------------------------------------------------------------------


async def test_replay_of_a_batch_id_returns_the_original_ack(store: SqliteStore) -> None:
    batch = prepare(GZ, record("a"), record("b", name=""))
    first = await store.apply_batch(GZ, "b1", digest_of(batch), batch)
    again = await store.apply_batch(GZ, "b1", digest_of(batch), batch)
    assert again.replayed
    assert not first.replayed
    assert again.record_outcomes == first.record_outcomes
    assert again.record_rejections == first.record_rejections
    assert again.applied_at_us == first.applied_at_us
    state = await store.sync_state(GZ)
    assert state.batches_applied == 1
    assert state.counts[Outcome.CREATED] == 1
    assert state.counts[Outcome.UNCHANGED] == 0


async def test_batch_ids_are_scoped_by_node(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a"))
    ack = await apply(store, GZ_2, "b1", record("b"))
    assert not ack.replayed
    assert outcomes(ack) == [Outcome.CREATED]


async def test_reused_batch_id_with_other_content_is_refused_and_applies_nothing(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a"))
    before = await store.sync_state(GZ)
    batch = prepare(GZ, record("a", version=2), record("new", id_number=OTHER_ID_NUMBER))
    ack = await store.apply_batch(GZ, "b1", digest_of(batch), batch)
    assert ack.batch_rejection is not None
    assert (ack.batch_rejection.reason, ack.batch_rejection.field, ack.batch_rejection.code_name) == (
        "BATCH_ID_REUSED",
        "batch_id",
        "FAILED_PRECONDITION",
    )
    assert ack.record_outcomes == b""
    assert not ack.replayed
    assert await store.sync_state(GZ) == before
    assert await store.enrollments_of([KEYER.person_key(OTHER_ID_NUMBER)]) == {}
    (held,) = (await store.enrollments_of([PERSON]))[PERSON]
    assert held.record_id == "a"


# -- duplicate-enrollment findings ------------------------------------------------------------------


async def test_active_dibao_in_two_provinces_opens_a_finding(store: SqliteStore) -> None:
    await apply(store, GZ, "g1", record("g"))
    assert await store.findings_of(PERSON) == []
    await apply(store, ZZ, "z1", record("z", province="410000"))
    (finding,) = await store.findings_of(PERSON)
    assert finding.program is Program.DIBAO
    assert finding.province_codes == ("410000", "440000")
    assert finding.open
    assert finding.detected_at_us > 0
    assert finding.resolved_at_us == 0
    assert (await store.stats()).open_findings_by_program == {Program.DIBAO: 1}


async def test_temporary_assistance_in_two_provinces_opens_no_finding(store: SqliteStore) -> None:
    await apply(store, GZ, "g1", record("g", program=Program.TEMPORARY_ASSISTANCE))
    await apply(store, ZZ, "z1", record("z", province="410000", program=Program.TEMPORARY_ASSISTANCE))
    assert await store.findings_of(PERSON) == []


async def test_suspended_enrollment_opens_no_finding(store: SqliteStore) -> None:
    await apply(store, GZ, "g1", record("g"))
    await apply(store, ZZ, "z1", record("z", province="410000", status=EnrollmentStatus.SUSPENDED))
    assert await store.findings_of(PERSON) == []


async def test_finding_resolves_when_one_province_exits_the_person(store: SqliteStore) -> None:
    await apply(store, GZ, "g1", record("g"))
    await apply(store, ZZ, "z1", record("z", province="410000"))
    await apply(store, ZZ, "z2", record("z", province="410000", version=2, status=EnrollmentStatus.EXITED))
    (finding,) = await store.findings_of(PERSON)
    assert not finding.open
    assert finding.resolved_at_us >= finding.detected_at_us
    stats = await store.stats()
    assert stats.open_findings_by_program == {}
    assert stats.resolved_findings == 1


async def test_finding_resolves_when_one_record_is_retired(store: SqliteStore) -> None:
    await apply(store, GZ, "g1", record("g"))
    await apply(store, ZZ, "z1", record("z", province="410000"))
    ack = await store.retire_records(ZZ, "q1", [Retirement(0, "z", 2, RetirementReason.MOVED_AWAY)], [], 1)
    assert [Outcome(v) for v in ack.outcomes] == [Outcome.UPDATED]
    (finding,) = await store.findings_of(PERSON)
    assert not finding.open


async def test_finding_tracks_the_provinces_holding_the_duplicate(store: SqliteStore) -> None:
    sc = NodeRef("510000", "cd-01")
    await apply(store, GZ, "g1", record("g"))
    await apply(store, ZZ, "z1", record("z", province="410000"))
    await apply(store, sc, "c1", record("c", province="510000"))
    (three,) = await store.findings_of(PERSON)
    assert three.province_codes == ("410000", "440000", "510000")
    await apply(store, GZ, "g2", record("g", version=2, status=EnrollmentStatus.EXITED))
    (two,) = await store.findings_of(PERSON)
    assert two.province_codes == ("410000", "510000")
    assert two.open
    assert two.finding_id == three.finding_id


async def test_finding_reopens_when_the_duplicate_recurs(store: SqliteStore) -> None:
    await apply(store, GZ, "g1", record("g"))
    await apply(store, ZZ, "z1", record("z", province="410000"))
    await apply(store, ZZ, "z2", record("z", province="410000", version=2, status=EnrollmentStatus.EXITED))
    (resolved,) = await store.findings_of(PERSON)
    await apply(store, ZZ, "z3", record("z", province="410000", version=3))
    (reopened,) = await store.findings_of(PERSON)
    assert reopened.finding_id == resolved.finding_id
    assert reopened.open
    assert reopened.resolved_at_us == 0


async def test_finding_follows_a_record_whose_id_number_is_corrected(store: SqliteStore) -> None:
    await apply(store, GZ, "g1", record("g"))
    await apply(store, ZZ, "z1", record("z", province="410000"))
    # Henan's record turns out to be somebody else: the same record id now carries another number.
    await apply(store, ZZ, "z2", record("z", province="410000", version=2, id_number=OTHER_ID_NUMBER))
    (finding,) = await store.findings_of(PERSON)
    assert not finding.open
    assert await store.findings_of(KEYER.person_key(OTHER_ID_NUMBER)) == []


# -- retirement -------------------------------------------------------------------------------


async def test_retired_record_is_a_tombstone_no_longer_returned(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a"))
    ack = await store.retire_records(GZ, "q1", [Retirement(0, "a", 2, RetirementReason.EXITED)], [], 1)
    assert [Outcome(v) for v in ack.outcomes] == [Outcome.UPDATED]
    assert ack.rejections == []
    assert await store.enrollments_of([PERSON]) == {}
    # The tombstone keeps the row (for audit) and its sealed identity.
    assert await store.sealed_pii_of("440000", "a") is not None
    state = await store.sync_state(GZ)
    assert (state.records_held, state.records_retired) == (1, 1)


async def test_retiring_an_unknown_record_is_record_not_found(store: SqliteStore) -> None:
    await apply(store, ZZ, "b1", record("theirs", province="410000"))
    ack = await store.retire_records(
        GZ,
        "q1",
        [Retirement(0, "nope", 2, RetirementReason.WITHDRAWN), Retirement(1, "theirs", 2, RetirementReason.WITHDRAWN)],
        [],
        2,
    )
    assert [Outcome(v) for v in ack.outcomes] == [Outcome.REJECTED, Outcome.REJECTED]
    assert [(r.index, r.item_id, r.reason, r.field, r.code_name) for r in ack.rejections] == [
        (0, "nope", "RECORD_NOT_FOUND", "record_id", "NOT_FOUND"),
        (1, "theirs", "RECORD_NOT_FOUND", "record_id", "NOT_FOUND"),
    ]
    assert PERSON in await store.enrollments_of([PERSON])


async def test_retirement_at_the_held_version_is_a_version_conflict(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a", version=3))
    ack = await store.retire_records(GZ, "q1", [Retirement(0, "a", 3, RetirementReason.EXITED)], [], 1)
    assert [r.reason for r in ack.rejections] == ["VERSION_CONFLICT"]
    older = await store.retire_records(GZ, "q2", [Retirement(0, "a", 2, RetirementReason.EXITED)], [], 1)
    assert [Outcome(v) for v in older.outcomes] == [Outcome.STALE]
    assert PERSON in await store.enrollments_of([PERSON])


async def test_retire_replay_by_request_id_returns_the_original_result(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a"))
    items = [Retirement(0, "a", 2, RetirementReason.EXITED), Retirement(2, "zz", 2, RetirementReason.EXITED)]
    refused = [Rejection(1, "", "ITEM_ID_INVALID", "record_id", "bad id", "INVALID_ARGUMENT")]
    first = await store.retire_records(GZ, "q1", items, refused, 3)
    again = await store.retire_records(GZ, "q1", items, refused, 3)
    assert not first.replayed
    assert again.replayed
    assert again.outcomes == first.outcomes
    assert again.rejections == first.rejections
    assert [r.index for r in first.rejections] == [1, 2]
    assert (await store.sync_state(GZ)).records_retired == 1


async def test_retire_request_id_reused_for_another_request_is_refused(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a"), record("b", id_number=OTHER_ID_NUMBER))
    await store.retire_records(GZ, "q1", [Retirement(0, "a", 2, RetirementReason.EXITED)], [], 1)
    ack = await store.retire_records(GZ, "q1", [Retirement(0, "b", 2, RetirementReason.EXITED)], [], 1)
    assert ack.outcomes == b""
    assert [(r.index, r.reason, r.field) for r in ack.rejections] == [(-1, "REQUEST_ID_REUSED", "request_id")]
    assert KEYER.person_key(OTHER_ID_NUMBER) in await store.enrollments_of([KEYER.person_key(OTHER_ID_NUMBER)])


async def test_a_higher_version_revives_a_retired_record(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a"))
    await store.retire_records(GZ, "q1", [Retirement(0, "a", 2, RetirementReason.EXITED)], [], 1)
    ack = await apply(store, GZ, "b2", record("a", version=3))
    assert outcomes(ack) == [Outcome.UPDATED]
    assert [h.record_id for h in (await store.enrollments_of([PERSON]))[PERSON]] == ["a"]
    state = await store.sync_state(GZ)
    assert (state.records_held, state.records_retired) == (1, 0)


# -- sync state and stats --------------------------------------------------------------------------


async def test_sync_state_counts_every_outcome_of_the_node(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a", updated_at_us=1_700_000_000_000_000), record("b", name=""))
    await apply(store, GZ, "b2", record("a", updated_at_us=1_700_000_000_000_000))
    await apply(store, GZ, "b3", record("a", version=2, updated_at_us=1_710_000_000_000_000))
    await apply(store, GZ, "b4", record("a", updated_at_us=1_720_000_000_000_000))
    state = await store.sync_state(GZ)
    assert state.last_batch_id == "b4"
    assert state.last_batch_at_us > 0
    assert state.batches_applied == 4
    assert state.records_held == 1
    assert state.records_retired == 0
    assert dict(state.counts) == {
        Outcome.CREATED: 1,
        Outcome.UPDATED: 1,
        Outcome.UNCHANGED: 1,
        Outcome.STALE: 1,
        Outcome.REJECTED: 1,
    }
    # The watermark only moves with records actually applied, not the stale one.
    assert state.watermark_us == 1_710_000_000_000_000


async def test_sync_state_of_an_unknown_node_is_empty(store: SqliteStore) -> None:
    state = await store.sync_state(ZZ)
    assert (state.last_batch_id, state.batches_applied, state.records_held, state.watermark_us) == ("", 0, 0, 0)
    assert set(state.counts.values()) == {0}


async def test_nodes_of_one_province_share_its_records_but_not_their_counters(store: SqliteStore) -> None:
    await apply(store, GZ, "b1", record("a"))
    await apply(store, GZ_2, "b1", record("b", id_number=OTHER_ID_NUMBER))
    one, two = await store.sync_state(GZ), await store.sync_state(GZ_2)
    assert one.records_held == two.records_held == 2
    assert one.batches_applied == two.batches_applied == 1


async def test_stats_total_the_hub(store: SqliteStore) -> None:
    household = Household("h-1", 1, "440106", (HouseholdMember("a", 1),), 30_000, content_hash=b"h1")
    batch = prepare(GZ, record("a"), households=(household,))
    ack = await store.apply_batch(GZ, "b1", b"d1", batch)
    assert [Outcome(v) for v in ack.household_outcomes] == [Outcome.CREATED]
    await apply(
        store, ZZ, "b1", record("z", province="410000"), record("y", province="410000", id_number=OTHER_ID_NUMBER)
    )
    stats = await store.stats()
    assert dict(stats.records_by_province) == {"440000": 1, "410000": 2}
    assert stats.households == 1
    assert stats.batches == 2
    assert stats.retired_records == 0


async def test_households_follow_the_version_rules(store: SqliteStore) -> None:
    household = Household("h-1", 1, "440106", (HouseholdMember("a", 1),), 30_000, content_hash=b"h1")
    changed = dataclasses.replace(household, monthly_income_per_member_fen=1, content_hash=b"h2")
    acks = []
    for n, items in enumerate([(household,), (household,), (changed,), (dataclasses.replace(changed, version=2),)]):
        batch = prepare(GZ, households=items)
        acks.append(await store.apply_batch(GZ, f"b{n}", f"d{n}".encode(), batch))
    assert [[Outcome(v) for v in a.household_outcomes] for a in acks] == [
        [Outcome.CREATED],
        [Outcome.UNCHANGED],
        [Outcome.REJECTED],
        [Outcome.UPDATED],
    ]
    assert acks[2].household_rejections[0].reason == "VERSION_CONFLICT"


# -- durability and protection at rest -------------------------------------------------------------


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    batch = prepare(GZ, record("a"))
    first = await apply(store, GZ, "b1", record("a"))
    await apply(store, ZZ, "z1", record("z", province="410000"))
    await store.close()

    reopened = SqliteStore(db_path)
    await reopened.open()
    try:
        assert sorted(h.record_id for h in (await reopened.enrollments_of([PERSON]))[PERSON]) == ["a", "z"]
        assert (await reopened.sync_state(GZ)).batches_applied == 1
        assert (await reopened.findings_of(PERSON))[0].open
        replay = await reopened.apply_batch(GZ, "b1", digest_of(batch), batch)
        assert replay.replayed
        assert replay.record_outcomes == first.record_outcomes
        blob = await reopened.sealed_pii_of("440000", "a")
        assert blob is not None
        assert unseal_pii(SEALER, blob, "440000", "a") == (ID_NUMBER, NAME)
    finally:
        await reopened.close()


def _database_bytes(db_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(db_path.parent.glob(db_path.name + "*")))


async def test_database_files_hold_no_raw_id_number_or_name(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    await apply(store, GZ, "b1", record("a"), record("b", name="", id_number=OTHER_ID_NUMBER))
    await apply(store, ZZ, "z1", record("z", province="410000"))
    await store.retire_records(ZZ, "q1", [Retirement(0, "z", 2, RetirementReason.DECEASED)], [], 1)
    assert (db_path.parent / (db_path.name + "-wal")).exists()
    while_open = _database_bytes(db_path)
    await store.close()
    after_close = _database_bytes(db_path)
    secrets = [ID_NUMBER, OTHER_ID_NUMBER, ID_NUMBER[:17], NAME]
    for data in (while_open, after_close):
        for secret in secrets:
            assert secret.encode("utf-8") not in data
            assert secret.encode("utf-16-le") not in data
    assert b"NAME_MISSING" in while_open + after_close  # and the rejections are really on disk


async def test_migrations_set_user_version_and_reopen_applies_none_twice(db_path: Path) -> None:
    for _ in range(2):
        store = SqliteStore(db_path)
        await store.open()
        assert store.schema_version == 6
        await store.close()
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 6
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert {"records", "batches", "requests", "node_state", "province_state", "findings", "households"} <= tables
    assert {"audit_entries", "audit_persons", "audit_subtrees", "audit_tree", "audit_checkpoints"} <= tables
    assert {"events", "event_cursors", "signals", "monitoring_hits", "monitoring_rules"} <= tables


async def test_closed_store_refuses_work(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    await store.close()
    await store.close()  # closing twice is harmless
    with pytest.raises(StoreError) as caught:
        await apply(store, GZ, "b1", record())
    assert caught.value.reason == "STORE_CLOSED"
    with pytest.raises(StoreError):
        await store.sync_state(GZ)


# -- group commit -----------------------------------------------------------------------------


async def test_concurrent_batches_are_committed_together_each_with_its_own_acknowledgement(
    store: SqliteStore,
) -> None:
    nodes = [NodeRef("440000", f"gz-{n:02d}") for n in range(8)]
    ids = [make_id_number("440106", dt.date(1950, 1, 1) + dt.timedelta(days=n), 11) for n in range(8)]
    acks = await asyncio.gather(
        *(apply(store, node, f"b-{n}", record(f"r-{n}", id_number=ids[n])) for n, node in enumerate(nodes))
    )
    assert [a.batch_id for a in acks] == [f"b-{n}" for n in range(8)]
    assert all(outcomes(a) == [Outcome.CREATED] for a in acks)
    assert (await store.sync_state(nodes[0])).records_held == 8


def test_a_full_disk_is_a_write_to_send_again_later_not_a_failure(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "full.sqlite3")
    con.execute("PRAGMA max_page_count = 4")  # what a full file system looks like to SQLite: SQLITE_FULL
    con.execute("CREATE TABLE t (b BLOB)")
    with pytest.raises(sqlite3.OperationalError) as full:
        con.execute("INSERT INTO t VALUES (zeroblob(100000))")
    con.close()
    error = _store_error(full.value, (sqlite3.Error,))
    assert isinstance(error, ResourceExhausted)  # RESOURCE_EXHAUSTED: nodes retry it, unlike INTERNAL
    assert error.reason == "STORE_FULL"
    other = _store_error(sqlite3.IntegrityError("NOT NULL constraint failed"), (sqlite3.Error,))
    assert isinstance(other, StoreError)
    assert other.reason == "STORE_WRITE_FAILED"


async def test_a_failing_write_in_a_group_is_rolled_back_alone(store: SqliteStore) -> None:
    good = prepare(GZ, record("r-good"))
    broken = prepare(ZZ, record("r-broken", province="410000", id_number=OTHER_ID_NUMBER))
    # A NULL content hash breaks a NOT NULL constraint inside the store's transaction.
    broken.records[0] = broken.records[0]._replace(content_hash=None)
    results = await asyncio.gather(
        store.apply_batch(GZ, "b-good", digest_of(good), good),
        store.apply_batch(ZZ, "b-broken", b"d", broken),
        return_exceptions=True,
    )
    assert isinstance(results[0], BatchAck)
    assert outcomes(results[0]) == [Outcome.CREATED]
    assert isinstance(results[1], StoreError)
    assert results[1].reason == "STORE_WRITE_FAILED"
    assert (await store.sync_state(GZ)).records_held == 1
    assert (await store.sync_state(ZZ)).records_held == 0
    # The failed batch left no trace: its batch_id is free for a corrected resend.
    fixed = prepare(ZZ, record("r-broken", province="410000", id_number=OTHER_ID_NUMBER))
    ack = await store.apply_batch(ZZ, "b-broken", digest_of(fixed), fixed)
    assert outcomes(ack) == [Outcome.CREATED]
    assert not ack.replayed
