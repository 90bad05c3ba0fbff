"""The node's outbox on a real SQLite file: batches as bytes, acknowledgements applied once, deltas, resumes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.domain.identity import make_id_number
from gateway.domain.model import Enrollment, Household, HouseholdMember, PersonRecord
from gateway.node.outbox import Outbox, RunWriter
from gateway.node.wire import batch_request, content_digest, record_to_proto
from hutong.v1 import records_pb2

CREATED, UNCHANGED, REJECTED = records_pb2.OUTCOME_CREATED, records_pb2.OUTCOME_UNCHANGED, records_pb2.OUTCOME_REJECTED


def person(n: int, amount: int = 88_000) -> PersonRecord:
    return PersonRecord(
        record_id=f"R{n:05d}",
        version=1,
        id_number=make_id_number("440106", dt.date(1970, 1, 1) + dt.timedelta(days=n), 11),
        name="王伟",
        gender=1,
        birth_date=dt.date(1970, 1, 1) + dt.timedelta(days=n),
        hukou_division="440106",
        residence_division="440106",
        household_id=f"H{n:05d}",
        enrollments=(Enrollment(1, 1, dt.date(2024, 3, 1), None, amount, "440106"),),
        updated_at_us=0,
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(tmp_path / "outbox.sqlite")
    yield box
    box.close()


def export(tmp_path: Path, name: str = "export.csv") -> Path:
    path = tmp_path / name
    path.write_text("x", encoding="utf-8")
    return path


def ingest(outbox: Outbox, run_id: int, records: list[PersonRecord], batch_size: int = 3) -> RunWriter:
    writer = RunWriter(outbox, run_id, batch_size=batch_size, versions_from_source=False)
    for i, r in enumerate(records):
        writer.add_record(r, "export.csv", f"line {i + 4}")
    writer.finish()
    return writer


def ack_all(outbox: Outbox, outcome: int = CREATED) -> int:
    n = 0
    while (batch := outbox.next_batch()) is not None:
        request = records_pb2.SyncRecordsRequest.FromString(batch.request)
        ack = records_pb2.SyncRecordsResponse(batch_id=batch.batch_id, record_outcomes=[outcome] * len(request.records))  # type: ignore[list-item]
        assert outbox.apply_sync_ack(batch, ack)
        n += 1
    return n


def test_batches_are_the_stored_bytes_of_a_valid_request(outbox: Outbox, tmp_path: Path) -> None:
    run, resumed = outbox.open_run("snapshot", [export(tmp_path)])
    assert not resumed
    ingest(outbox, run.run_id, [person(n) for n in range(7)])
    seqs, ids = [], []
    after = 0
    while (batch := outbox.next_batch(after)) is not None:
        request = records_pb2.SyncRecordsRequest.FromString(batch.request)
        assert request.batch_id == batch.batch_id
        assert batch.batch_id.startswith(outbox.outbox_id + "-")
        ids.extend(r.record_id for r in request.records)
        seqs.append(batch.seq)
        after = batch.seq
    assert len(seqs) == 3  # 3 + 3 + 1
    assert ids == [f"R{n:05d}" for n in range(7)]


def test_an_acknowledgement_is_applied_once(outbox: Outbox, tmp_path: Path) -> None:
    run, _ = outbox.open_run("snapshot", [export(tmp_path)])
    ingest(outbox, run.run_id, [person(n) for n in range(3)])
    batch = outbox.next_batch()
    assert batch is not None
    ack = records_pb2.SyncRecordsResponse(batch_id=batch.batch_id, record_outcomes=[CREATED, CREATED, REJECTED])
    ack.record_rejections.add(index=2, item_id="R00002", reason="NAME_MISSING", field="name", message="no name")
    assert outbox.apply_sync_ack(batch, ack)
    replayed = records_pb2.SyncRecordsResponse()
    replayed.CopyFrom(ack)
    replayed.replayed = True
    assert not outbox.apply_sync_ack(batch, replayed)  # a resend's answer is not counted again
    counts = outbox.run_counts(run.run_id)
    assert (counts["created"], counts["rejected"], counts["unacked_batches"]) == (2, 1, 0)
    assert outbox.hub_rejects(run.run_id) == [
        {"kind": "record", "id": "R00002", "reason": "NAME_MISSING", "field": "name", "message": "no name"}
    ]
    assert outbox.next_batch() is None


def test_an_acknowledgement_of_the_wrong_size_is_refused(outbox: Outbox, tmp_path: Path) -> None:
    run, _ = outbox.open_run("snapshot", [export(tmp_path)])
    ingest(outbox, run.run_id, [person(n) for n in range(2)])
    batch = outbox.next_batch()
    assert batch is not None
    with pytest.raises(Exception, match="acknowledged 1 records"):
        outbox.apply_sync_ack(
            batch, records_pb2.SyncRecordsResponse(batch_id=batch.batch_id, record_outcomes=[CREATED])
        )
    assert outbox.next_batch() == batch  # still unacknowledged


def test_only_changed_records_are_queued_again_and_versions_grow(outbox: Outbox, tmp_path: Path) -> None:
    run, _ = outbox.open_run("snapshot", [export(tmp_path, "a.csv")])
    ingest(outbox, run.run_id, [person(n) for n in range(5)])
    ack_all(outbox)
    first = {n: outbox.record_detail(f"R{n:05d}") for n in range(5)}
    outbox.set_run_state(run.run_id, "complete")

    run2, _ = outbox.open_run("snapshot", [export(tmp_path, "b.csv")])
    writer = ingest(outbox, run2.run_id, [person(0), person(1, amount=99_000), person(2), person(3)])
    assert (writer.queued, writer.unchanged) == (1, 3)
    changed = outbox.record_detail("R00001")
    assert changed is not None
    before = first[1]
    assert before is not None
    assert changed.record.version > before.record.version
    # Person 4 is held by the hub and was not in this export: a retirement candidate.
    ack_all(outbox)
    assert outbox.retirement_candidates(run2.run_id) == (1, 5)
    assert outbox.queue_retirements(run2.run_id, records_pb2.RETIREMENT_REASON_WITHDRAWN, 100) == 1
    assert outbox.queue_retirements(run2.run_id, records_pb2.RETIREMENT_REASON_WITHDRAWN, 100) == 0
    batch = outbox.next_batch()
    assert batch is not None
    assert batch.kind == "retire"
    request = records_pb2.RetireRecordsRequest.FromString(batch.request)
    assert [r.record_id for r in request.retirements] == ["R00004"]
    assert request.request_id == batch.batch_id


def test_an_unfinished_run_is_resumed_and_other_files_abandon_it(outbox: Outbox, tmp_path: Path) -> None:
    a, b = export(tmp_path, "a.csv"), export(tmp_path, "b.csv")
    run, resumed = outbox.open_run("snapshot", [a])
    again, resumed = outbox.open_run("snapshot", [a])
    assert (again.run_id, resumed) == (run.run_id, True)
    anyway, resumed = outbox.open_run("snapshot", [])
    assert (anyway.run_id, resumed) == (run.run_id, True)
    other, resumed = outbox.open_run("snapshot", [b])
    assert other.run_id != run.run_id
    assert not resumed
    assert outbox.run(run.run_id).state == "abandoned"


def test_a_record_repeated_in_one_export_goes_in_the_next_batch(outbox: Outbox, tmp_path: Path) -> None:
    run, _ = outbox.open_run("snapshot", [export(tmp_path)])
    ingest(outbox, run.run_id, [person(1), person(1, amount=70_000)], batch_size=10)
    batches = []
    after = 0
    while (batch := outbox.next_batch(after)) is not None:
        batches.append([r.record_id for r in records_pb2.SyncRecordsRequest.FromString(batch.request).records])
        after = batch.seq
    assert batches == [["R00001"], ["R00001"]]


def test_households_travel_after_their_members_and_are_acknowledged(outbox: Outbox, tmp_path: Path) -> None:
    run, _ = outbox.open_run("snapshot", [export(tmp_path)])
    writer = RunWriter(outbox, run.run_id, batch_size=10, versions_from_source=False)
    writer.add_record(person(1), "export.csv", "line 4")
    writer.add_household(Household("H00001", 1, "440106", (HouseholdMember("R00001", 1),), 0))
    writer.finish()
    batch = outbox.next_batch()
    assert batch is not None
    request = records_pb2.SyncRecordsRequest.FromString(batch.request)
    assert ([r.record_id for r in request.records], [h.household_id for h in request.households]) == (
        ["R00001"],
        ["H00001"],
    )
    ack = records_pb2.SyncRecordsResponse(
        batch_id=batch.batch_id, record_outcomes=[CREATED], household_outcomes=[REJECTED]
    )
    ack.household_rejections.add(index=0, item_id="H00001", reason="HEAD_MISSING", field="members", message="m")
    assert outbox.apply_sync_ack(batch, ack)
    assert outbox.hub_rejects(run.run_id)[0]["kind"] == "household"


def test_the_detail_of_a_record_says_where_it_was_read(outbox: Outbox, tmp_path: Path) -> None:
    run, _ = outbox.open_run("snapshot", [export(tmp_path)])
    ingest(outbox, run.run_id, [person(n) for n in range(3)])
    detail = outbox.record_detail("R00002")
    assert detail is not None
    assert (detail.record.name, detail.source.file, detail.source.location) == ("王伟", "export.csv", "line 6")
    assert detail.exported_at.seconds > 0
    assert outbox.record_detail("R99999") is None


def test_wire_digest_ignores_the_version_and_batches_parse() -> None:
    a = record_to_proto(person(1))
    b = record_to_proto(person(1))
    b.version = 99
    assert content_digest(a) == content_digest(b)
    assert b.version == 99
    c = record_to_proto(person(1, amount=1))
    assert content_digest(a) != content_digest(c)
    body = batch_request("id-1", [a.SerializeToString(), c.SerializeToString()])
    parsed = records_pb2.SyncRecordsRequest.FromString(body)
    assert parsed.batch_id == "id-1"
    assert list(parsed.records) == [a, c]
