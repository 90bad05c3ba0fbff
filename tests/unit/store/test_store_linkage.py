"""Tests of gateway.store.sqlite_linkage: the linkage ledger on a real SQLite file, through the store and alone."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import sha256
from gateway.domain.identity import make_id_number
from gateway.domain.linkage import LinkSettings
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
    PreparedRecord,
    RecordPreparer,
    Retirement,
    provisional_key_input,
)
from gateway.errors import FailedPrecondition, NotFound
from gateway.store.base import NodeRef
from gateway.store.sql import SqlStore
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_audit import AuditLedger
from gateway.store.sqlite_linkage import LinkageLedger, current_model, probe_dates, sample_records

GD = NodeRef("440000", "gz-01")
HA = NodeRef("410000", "zz-01")
REVIEWER = NodeRef("510000", "cd-01")
SC = NodeRef("510000", "cd-02")
COUNTY = {"440000": "440106", "410000": "410105", "510000": "510104"}
KEYS = KeyMaterial(person_key_secret=b"s" * 32, sealing_keys={"k1": b"k" * 32}, active_key_id="k1")
KEYER = PersonKeyer(KEYS.person_key_secret)
SEALER = FieldSealer(KEYS)
PREPARER = RecordPreparer(KEYER, SEALER, today=dt.date(2026, 6, 1))
BIRTH = dt.date(1962, 3, 7)
WANG_ID = make_id_number("440106", BIRTH, 124)
TYPO_ID = WANG_ID[:-1] + ("0" if WANG_ID[-1] != "0" else "1")
WANG = KEYER.person_key(WANG_ID)


def person(
    record_id: str,
    *,
    province: str = "440000",
    id_number: str = WANG_ID,
    name: str = "王秀英",
    birth: dt.date | None = None,
    version: int = 1,
    amount: int = 80_000,
    hukou: str = "440106",
    household: str = "",
) -> PersonRecord:
    rec = PersonRecord(
        record_id=record_id,
        version=version,
        id_number=id_number,
        name=name,
        gender=0,
        birth_date=birth,
        hukou_division=hukou,
        residence_division=COUNTY[province],
        household_id=household,
        enrollments=(
            Enrollment(Program.DIBAO, EnrollmentStatus.ACTIVE, dt.date(2020, 1, 1), None, amount, COUNTY[province]),
        ),
        updated_at_us=0,
    )
    return dataclasses.replace(rec, content_hash=hashlib.blake2b(repr(rec).encode(), digest_size=16).digest())


def batch(
    province: str,
    *records: PersonRecord,
    unverified: frozenset[int] = frozenset(),
    households: tuple[Household, ...] = (),
) -> PreparedBatch:
    prepared = PREPARER.prepare_batch(province, list(records), households, unverified=unverified)
    assert not prepared.record_rejections, prepared.record_rejections
    return prepared


def henan_wang(record_id: str = "ha-wang", **fields: object) -> PersonRecord:
    """河南's record of 王秀英: a mistyped number and a homophone, to be flagged unverified."""
    base: dict[str, object] = {"province": "410000", "id_number": TYPO_ID, "name": "王秀瑛", "birth": BIRTH}
    base.update(fields)
    return person(record_id, **base)  # type: ignore[arg-type]


async def rows(store: SqlStore, sql: str, *args: object) -> list[Any]:
    """What a query returns, read through the store's own reader (either engine)."""
    result: list[Any] = await store._read(lambda con: con.execute(sql, args).fetchall())
    return result


async def person_key_of(store: SqlStore, province: str, record_id: str) -> bytes:
    ((key,),) = await rows(
        store, "SELECT person_key FROM records WHERE province=? AND record_id=?", province, record_id
    )
    return bytes(key)


async def count(store: SqlStore, sql: str) -> int:
    ((n,),) = await rows(store, sql)
    return int(n)


@pytest.fixture
async def linked(store: SqlStore) -> SqlStore:
    """A store (SQLite, then PostgreSQL) with linkage open (the bootstrap model: it holds no population to train on)."""
    await store.open_linkage(LinkageLedger(KEYER, SEALER))
    return store


async def test_a_new_hub_links_with_the_bootstrap_model_stored_as_version_one(db_path: Path) -> None:
    for _ in range(2):
        store = SqliteStore(db_path)
        await store.open()
        status = await store.open_linkage(LinkageLedger(KEYER, SEALER))
        await store.close()
        assert (status.model_version, status.model_source) == (1, "bootstrap")
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert await count(store, "SELECT count(*) FROM linkage_models") == 1
    finally:
        await store.close()


async def test_an_unverified_record_is_re_keyed_to_the_person_it_links_to(linked: SqlStore) -> None:
    await linked.apply_batch(GD, "g1", b"g1", batch("440000", person("gd-wang")))
    ack = await linked.apply_batch(HA, "h1", b"h1", batch("410000", henan_wang(), unverified=frozenset({0})))
    assert ack.record_outcomes == bytes([Outcome.CREATED])
    assert await person_key_of(linked, "410000", "ha-wang") == WANG
    held = await linked.enrollments_of([WANG])
    assert sorted(h.province_code for h in held[WANG]) == ["410000", "440000"]
    assert [f.province_codes for f in await linked.findings_of(WANG)] == [("410000", "440000")]
    assert await count(linked, "SELECT count(*) FROM linkage_links WHERE ended_seq=0 AND model_version=1") == 1
    assert await count(linked, "SELECT count(*) FROM audit_entries WHERE method='/hutong.hub.Linker/LinkRecords'") == 1


async def test_the_hukou_province_is_told_of_a_linked_record_with_its_own_records_of_the_person(
    linked: SqlStore,
) -> None:
    await linked.apply_batch(GD, "g1", b"g1", batch("440000", person("gd-wang")))
    await linked.apply_batch(HA, "h1", b"h1", batch("410000", henan_wang(), unverified=frozenset({0})))
    (told,) = [e for e in await linked.events_after("440000", 0) if e.subject.startswith("record:410000:ha-wang:")]
    # Linked within the call, the Henan record is 王秀英 to the hub: Guangdong learns which of its records.
    assert told.body["recordIds"] == ["gd-wang"]
    assert told.body["otherProvinceCodes"] == ["410000"]


async def test_a_record_linked_to_two_held_records_at_once_is_persisted_whole(linked: SqlStore) -> None:
    await linked.apply_batch(GD, "g1", b"g1", batch("440000", person("gd-wang")))
    await linked.apply_batch(SC, "s1", b"s1", batch("510000", person("sc-wang", province="510000")))
    await linked.apply_batch(HA, "h1", b"h1", batch("410000", henan_wang(), unverified=frozenset({0})))
    assert await person_key_of(linked, "410000", "ha-wang") == WANG
    assert await count(linked, "SELECT count(*) FROM linkage_links WHERE ended_seq=0") == 2
    assert [f.province_codes for f in await linked.findings_of(WANG)] == [("410000", "440000", "510000")]
    lineage = await linked.lineage(("410000", "ha-wang"))
    assert lineage is not None
    assert [e.kind for e in lineage.events] == [1, 1]
    assert [c.record for c in lineage.events[1].rekeyed] == [("410000", "ha-wang")]
    assert len(lineage.links) == 2


# A household of three, registered again in 河南 after it moved: nobody's number survived, and
# 刘淑英 alone (one character off 刘淑兰, same birth date) is only a grey-band match.
LIU_BIRTH, ZHANG_BIRTH, WEI_BIRTH = dt.date(1958, 11, 21), dt.date(1956, 2, 3), dt.date(1985, 7, 9)
FAMILY = (
    ("liu", "刘淑兰", "刘淑英", LIU_BIRTH, 246),
    ("zhang", "张建国", "张建国", ZHANG_BIRTH, 131),
    ("wei", "张伟", "张伟", WEI_BIRTH, 155),
)


def family(province: str, *, with_household: bool) -> PreparedBatch:
    gd = province == "440000"
    records = [
        person(
            f"{'gd' if gd else 'ha'}-{tag}",
            province=province,
            id_number=make_id_number("440106", birth, seq) if gd else "",
            name=gd_name if gd else ha_name,
            birth=birth,
            household=f"{province}-h1",
        )
        for tag, gd_name, ha_name, birth, seq in FAMILY
    ]
    household = Household(
        household_id=f"{province}-h1",
        version=1,
        residence_division=COUNTY[province],
        members=tuple(HouseholdMember(r.record_id, n + 1) for n, r in enumerate(records)),
        monthly_income_per_member_fen=30_000,
        content_hash=province.encode(),
    )
    return batch(
        province,
        *records,
        unverified=frozenset() if gd else frozenset(range(3)),
        households=(household,) if with_household else (),
    )


@pytest.mark.parametrize("with_household", [True, False], ids=["household-sent", "no-household"])
async def test_shared_household_members_are_evidence_enough_to_link(linked: SqlStore, with_household: bool) -> None:
    liu = KEYER.person_key(make_id_number("440106", LIU_BIRTH, 246))
    await linked.apply_batch(GD, "g1", b"g1", family("440000", with_household=True))
    await linked.apply_batch(HA, "h1", b"h1", family("410000", with_household=with_household))
    decisions = [
        json.loads(d)
        for (d,) in await rows(
            linked,
            "SELECT decision FROM linkage_links WHERE ended_seq=0"
            " AND (record_a='410000/ha-liu' OR record_b='410000/ha-liu')",
        )
    ]
    reviews = await count(linked, "SELECT count(*) FROM linkage_reviews WHERE record_a='410000/ha-liu'")
    if with_household:
        (decision,) = decisions
        household = {e["comparison"]: e for e in decision["evidence"]}["household"]
        assert household["level"] == "two_or_more_shared"
        assert household["weight"] > 0
        assert await person_key_of(linked, "410000", "ha-liu") == liu
        assert reviews == 0
    else:
        # The same pair without the household: a reviewer must decide it.
        assert decisions == []
        assert reviews == 1
        assert await person_key_of(linked, "410000", "ha-liu") != liu


async def reviews_of(store: SqlStore) -> list[tuple[int, str, str, int, str, str]]:
    return [
        tuple(r)
        for r in await rows(
            store,
            "SELECT review_id, record_a, record_b, state, decided_by, reason FROM linkage_reviews ORDER BY review_id",
        )
    ]


async def test_a_changed_record_supersedes_its_open_review_and_is_scored_afresh(linked: SqlStore) -> None:
    await linked.apply_batch(GD, "g1", b"g1", family("440000", with_household=True))
    await linked.apply_batch(HA, "h1", b"h1", family("410000", with_household=False))
    ((review_id, _, b, state, _, _),) = [r for r in await reviews_of(linked) if r[1] == "410000/ha-liu"]
    assert (b, state) == ("440000/gd-liu", 1)
    # 河南 corrects the name: the item's evidence is stale; the new version links outright.
    fixed = person(
        "ha-liu", province="410000", id_number="", name="刘淑兰", birth=LIU_BIRTH, household="410000-h1", version=2
    )
    await linked.apply_batch(HA, "h2", b"h2", batch("410000", fixed, unverified=frozenset({0})))
    (row,) = [r for r in await reviews_of(linked) if r[0] == review_id]
    assert row[3:] == (4, "linker", "the record changed")
    assert await person_key_of(linked, "410000", "ha-liu") == KEYER.person_key(make_id_number("440106", LIU_BIRTH, 246))
    assert linked.linkage is not None
    assert linked.linkage.index is not None
    assert linked.linkage.index.review_queue() == ()
    with pytest.raises(FailedPrecondition) as late:
        await linked.decide_review(REVIEWER, "d-late", review_id, accept=True, reason="too late")
    assert late.value.reason == "LINKAGE_REVIEW_DECIDED"


async def test_a_retired_record_supersedes_its_open_review_items(linked: SqlStore) -> None:
    await linked.apply_batch(GD, "g1", b"g1", family("440000", with_household=True))
    await linked.apply_batch(HA, "h1", b"h1", family("410000", with_household=False))
    (review_id,) = [r[0] for r in await reviews_of(linked) if r[1] == "410000/ha-liu"]
    ack = await linked.retire_records(GD, "r1", [Retirement(0, "gd-liu", 2, RetirementReason.DECEASED)], [], 1)
    assert ack.outcomes == bytes([Outcome.UPDATED])
    (row,) = [r for r in await reviews_of(linked) if r[0] == review_id]
    assert row[3:] == (4, "linker", "the record was retired")
    linker_entries = await count(
        linked, "SELECT count(*) FROM audit_entries WHERE method='/hutong.hub.Linker/LinkRecords'"
    )
    assert linker_entries == 2  # the link the Henan batch made (its co-members), and the retirement's closing
    # A replay of the retirement changes nothing more.
    again = await linked.retire_records(GD, "r1", [Retirement(0, "gd-liu", 2, RetirementReason.DECEASED)], [], 1)
    assert again.replayed


async def test_records_with_valid_numbers_take_the_fast_path(linked: SqlStore) -> None:
    others = [person(f"gd-{i}", id_number=make_id_number("440106", BIRTH, 200 + 2 * i)) for i in range(20)]
    await linked.apply_batch(GD, "g1", b"g1", batch("440000", *others))
    assert await count(linked, "SELECT generation FROM linkage_state") == 0
    assert await count(linked, "SELECT count(*) FROM linkage_events") == 0
    assert linked.linkage is not None
    assert linked.linkage.index is not None
    assert len(linked.linkage.index) == 0  # nothing filed: they wait in the birth-date directory


async def test_a_record_needs_the_flag_and_the_flag_needs_a_birth_date() -> None:
    bad = PREPARER.prepare_batch(
        "410000", [henan_wang(), henan_wang("no-birth", birth=None)], unverified=frozenset({1})
    )
    assert [(r.item_id, r.reason) for r in bad.record_rejections] == [
        ("ha-wang", "ID_NUMBER_BAD_CHECK_CHARACTER"),
        ("no-birth", "BIRTH_DATE_MISSING"),
    ]
    (prepared,) = batch("410000", henan_wang(), unverified=frozenset({0})).records
    assert prepared.identity_unverified
    assert prepared.birth_yyyymmdd == 19620307
    assert prepared.person_key == KEYER.person_key(provisional_key_input("410000", "ha-wang"))
    # Flagged, a number that passes the check is still not vouched for: provisional too.
    (valid,) = batch("410000", henan_wang(id_number=WANG_ID), unverified=frozenset({0})).records
    assert valid.identity_unverified
    assert valid.person_key == prepared.person_key


async def test_an_unchanged_new_version_keeps_its_link_and_a_fixed_number_takes_its_own_key(linked: SqlStore) -> None:
    await linked.apply_batch(GD, "g1", b"g1", batch("440000", person("gd-wang")))
    await linked.apply_batch(HA, "h1", b"h1", batch("410000", henan_wang(), unverified=frozenset({0})))
    # Only the amount changed: the upsert wrote the provisional key; linkage puts the person's back.
    await linked.apply_batch(
        HA, "h2", b"h2", batch("410000", henan_wang(version=2, amount=90_000), unverified=frozenset({0}))
    )
    assert await person_key_of(linked, "410000", "ha-wang") == WANG
    assert await count(linked, "SELECT count(*) FROM linkage_events") == 1
    # The province fixed the number: exact linkage by it; the probabilistic link is undone.
    await linked.apply_batch(HA, "h3", b"h3", batch("410000", henan_wang(version=3, id_number=WANG_ID)))
    assert await person_key_of(linked, "410000", "ha-wang") == WANG
    assert await count(linked, "SELECT count(*) FROM linkage_unverified") == 0
    assert await count(linked, "SELECT count(*) FROM linkage_links WHERE ended_seq=0") == 0


async def test_decisions_and_splits_are_idempotent_by_request_id(linked: SqlStore) -> None:
    await linked.apply_batch(GD, "g1", b"g1", batch("440000", person("gd-wang")))
    await linked.apply_batch(HA, "h1", b"h1", batch("410000", henan_wang(), unverified=frozenset({0})))
    split = await linked.split_link(REVIEWER, "s-1", ("410000", "ha-wang"), ("440000", "gd-wang"), "two women")
    assert not split.replayed
    assert split.person_keys[1] == WANG
    assert split.person_keys[0] != WANG
    assert WANG in split.touched
    again = await linked.split_link(REVIEWER, "s-1", ("410000", "ha-wang"), ("440000", "gd-wang"), "two women")
    assert again.replayed
    assert again.event.seq == split.event.seq
    with pytest.raises(FailedPrecondition) as reused:
        await linked.split_link(REVIEWER, "s-1", ("410000", "ha-wang"), ("440000", "gd-wang"), "other words")
    assert reused.value.reason == "REQUEST_ID_REUSED"
    with pytest.raises(NotFound):
        await linked.decide_review(REVIEWER, "d-1", 42, True, "no such item")
    assert [f.open for f in await linked.findings_of(WANG)] == [False]  # the duplicate is gone with the link
    lineage = await linked.lineage(("410000", "ha-wang"))
    assert lineage is not None
    assert [e.kind for e in lineage.events] == [1, 4]
    assert lineage.events[1].rekeyed[0].before == WANG


def _ledger_on(db_path: Path) -> tuple[sqlite3.Connection, LinkageLedger, AuditLedger]:
    con = sqlite3.connect(db_path, isolation_level=None)
    ledger = LinkageLedger(KEYER, SEALER, LinkSettings())
    con.execute("BEGIN")
    ledger.open(con, 1)
    con.execute("COMMIT")
    audit = AuditLedger(sha256)
    audit.load(con)
    return con, ledger, audit


def _written(records: list[PreparedRecord]) -> bytearray:
    return bytearray([Outcome.CREATED]) * len(records)


async def test_a_rolled_back_transaction_makes_the_next_use_rebuild_the_index(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    await store.apply_batch(GD, "g1", b"g1", batch("440000", person("gd-wang")))
    await store.close()
    con, ledger, audit = _ledger_on(db_path)
    try:
        records = batch("410000", henan_wang(), unverified=frozenset({0})).records
        con.execute("BEGIN IMMEDIATE")
        con.executemany(
            "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,0)",
            [
                ("410000", r.record_id, r.version, r.content_hash, r.person_key, r.sealed_pii, r.gender,
                 r.birth_yyyymmdd, r.hukou_division, r.residence_division, r.household_id, r.enrollments,
                 r.active_programs, r.updated_at_us, 1)
                for r in records
            ],
        )  # fmt: skip
        touched = ledger.link_batch(con, audit, HA, "h1", records, _written(records), 1)
        assert WANG in touched
        assert ledger.index is not None
        assert "410000/ha-wang" in ledger.index
        con.execute("ROLLBACK")
        # The next batch, valid numbers only but born on a date an unverified record states, checks the generation.
        con.execute("BEGIN IMMEDIATE")
        other = batch("440000", person("gd-2", id_number=make_id_number("440106", BIRTH, 126))).records
        ledger.link_batch(con, audit, GD, "g2", other, bytearray([Outcome.UPDATED]), 2)
        con.execute("ROLLBACK")
        assert "410000/ha-wang" not in ledger.index  # rebuilt from the tables, which never held it
    finally:
        con.close()


async def test_a_hub_with_a_population_trains_its_first_model(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    people = [
        person(f"gd-{i}", id_number=make_id_number("440106", dt.date(1950 + i % 40, 1 + i % 12, 1 + i % 28), 2 * i + 1),
               name=f"{'王李张刘陈'[i % 5]}{'伟芳娜敏静秀英桂兰'[i % 9]}{'华明军'[i % 3]}")
        for i in range(300)
    ]  # fmt: skip
    await store.apply_batch(GD, "g1", b"g1", batch("440000", *people))
    status = await store.open_linkage(LinkageLedger(KEYER, SEALER, train_min_records=100, train_sample=200))
    await store.close()
    assert (status.model_source, status.model_created, status.model_records) == ("trained", True, 200)
    con = sqlite3.connect(db_path)
    try:
        info = current_model(con)
        assert info is not None
        assert info.records == 200
        assert len(sample_records(con, SEALER, 1000)) == 300
    finally:
        con.close()


def test_probe_dates_cover_a_swap_and_one_component_off() -> None:
    assert probe_dates(19620307) == (
        19610307, 19620207, 19620306, 19620307, 19620308, 19620407, 19620703, 19630307,
    )  # fmt: skip
    # No distinct swap, and no thirteenth month.
    assert probe_dates(19621212) == (19611212, 19621112, 19621211, 19621212, 19621213, 19631212)
