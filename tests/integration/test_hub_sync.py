"""RecordExchangeService through real gRPC with mTLS: SyncRecords, GetSyncState, RetireRecords."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from gateway.client import HubClient
from gateway.domain.model import Purpose
from gateway.errors import FailedPrecondition, HutongError, InvalidArgument, ResourceExhausted, Unavailable
from gateway.hub.server import DATABASE_FILE, HubServer
from hutong.v1 import person_pb2, records_pb2, records_pb2_grpc
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"

CREATED = records_pb2.OUTCOME_CREATED
UPDATED = records_pb2.OUTCOME_UPDATED
UNCHANGED = records_pb2.OUTCOME_UNCHANGED
STALE = records_pb2.OUTCOME_STALE
REJECTED = records_pb2.OUTCOME_REJECTED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]

Sync = Callable[..., Awaitable[list[records_pb2.SyncRecordsResponse]]]


def batch(batch_id: str, *records: person_pb2.PersonRecord, households: Any = ()) -> records_pb2.SyncRecordsRequest:
    return records_pb2.SyncRecordsRequest(batch_id=batch_id, records=list(records), households=list(households))


def rejections(ack: records_pb2.SyncRecordsResponse) -> list[tuple[int, str, str, str, int]]:
    return [(r.index, r.item_id, r.reason, r.field, r.code) for r in ack.record_rejections]


async def single(
    sync_all: Sync, client: HubClient, request: records_pb2.SyncRecordsRequest
) -> records_pb2.SyncRecordsResponse:
    (ack,) = await sync_all(client, [request])
    return ack


# -- good and bad records in one stream -------------------------------------------------------------


async def test_good_records_apply_bad_ones_are_rejected_and_the_stream_goes_on(
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    id_number_of: Callable[..., str],
    corrupt_check: Callable[[str], str],
    sync_all: Sync,
) -> None:
    gz = client_for(GZ)
    good = make_record("good-1")
    bad = make_record("bad-1", sequence=5, name="")
    bad_id = make_record("bad-2", id_number=corrupt_check(id_number_of("440000", sequence=7)))
    later = make_record("good-2", sequence=9)
    first, second = await sync_all(gz, [batch("b1", good, bad, bad_id), batch("b2", later)])

    assert first.batch_id == "b1"
    assert list(first.record_outcomes) == [CREATED, REJECTED, REJECTED]
    assert rejections(first) == [
        (1, "bad-1", "NAME_MISSING", "name", INVALID_ARGUMENT),
        (2, "bad-2", "ID_NUMBER_BAD_CHECK_CHARACTER", "id_number", INVALID_ARGUMENT),
    ]
    assert (first.record_counts.created, first.record_counts.rejected) == (1, 2)
    assert not first.HasField("batch_rejection")
    assert first.HasField("applied_at")
    for r in first.record_rejections:
        assert bad_id.id_number not in r.message
        assert bad_id.id_number[:17] not in r.message

    assert second.batch_id == "b2"
    assert list(second.record_outcomes) == [CREATED]
    answer = await gz.check_enrollment(good.id_number, Purpose.DUPLICATE_CHECK, [1])
    assert answer.results[0].enrolled
    answer = await gz.check_enrollment(bad.id_number, Purpose.DUPLICATE_CHECK, [1])
    assert not answer.results[0].enrolled


async def test_acks_come_back_in_order_for_many_batches_on_one_stream(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    batches = [batch(f"b{n}", make_record(f"r{n}", sequence=n)) for n in range(12)]
    acks = await sync_all(client_for(GZ), batches, window=3)
    assert [a.batch_id for a in acks] == [f"b{n}" for n in range(12)]
    assert all(list(a.record_outcomes) == [CREATED] for a in acks)


async def test_oversized_batch_is_refused_whole_and_the_stream_stays_usable(
    hub_factory: Any, client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    small = await hub_factory(max_batch_items=2)
    gz = client_for(GZ, port=small.port)
    too_big = batch("big", *(make_record(f"r{n}", sequence=n) for n in range(3)))
    fits = batch("fits", make_record("r0", sequence=0), make_record("r1", sequence=1))
    refused, applied = await sync_all(gz, [too_big, fits])

    assert refused.batch_id == "big"
    r = refused.batch_rejection
    assert (r.reason, r.field, r.code) == ("BATCH_TOO_LARGE", "records", RESOURCE_EXHAUSTED)
    assert list(refused.record_outcomes) == []
    assert list(applied.record_outcomes) == [CREATED, CREATED]
    state = await gz.get_sync_state()
    assert state.batches_applied == 1
    assert state.records_held == 2


async def test_too_many_households_is_refused_naming_households(
    hub_factory: Any, client_for: Callable[..., HubClient], sync_all: Sync
) -> None:
    small = await hub_factory(max_batch_items=1)
    households = [person_pb2.Household(household_id=f"h{n}", version=1, residence_division="440106") for n in range(2)]
    ack = await single(sync_all, client_for(GZ, port=small.port), batch("hh", households=households))
    assert (ack.batch_rejection.reason, ack.batch_rejection.field) == ("BATCH_TOO_LARGE", "households")


@pytest.mark.parametrize(
    ("batch_id", "reason"),
    [
        pytest.param("", "CLIENT_ID_MISSING", id="empty"),
        pytest.param("批次-1", "CLIENT_ID_INVALID", id="non-ascii"),
        pytest.param("b\n1", "CLIENT_ID_INVALID", id="unprintable"),
        pytest.param("b" * 129, "CLIENT_ID_INVALID", id="too-long"),
    ],
)
async def test_invalid_batch_id_refuses_the_batch_and_applies_nothing(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync, batch_id: str, reason: str
) -> None:
    gz = client_for(GZ)
    refused, applied = await sync_all(
        gz, [batch(batch_id, make_record("r1")), batch("ok", make_record("r2", sequence=2))]
    )
    assert (refused.batch_rejection.reason, refused.batch_rejection.field) == (reason, "batch_id")
    assert refused.batch_rejection.code == INVALID_ARGUMENT
    assert list(applied.record_outcomes) == [CREATED]
    assert (await gz.get_sync_state()).records_held == 1


async def test_a_batch_id_of_128_characters_is_accepted(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    ack = await single(sync_all, client_for(GZ), batch("b" * 128, make_record()))
    assert list(ack.record_outcomes) == [CREATED]


async def test_an_empty_batch_is_acknowledged(client_for: Callable[..., HubClient], sync_all: Sync) -> None:
    ack = await single(sync_all, client_for(GZ), batch("empty"))
    assert list(ack.record_outcomes) == []
    assert not ack.HasField("batch_rejection")


# -- rules through the wire -------------------------------------------------------------------


async def test_record_residing_in_another_province_is_permission_denied(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    # Guangdong's node sends a record of a person living (and granted dibao) in Henan.
    foreign = make_record("r-henan", province="410000")
    ack = await single(sync_all, client_for(GZ), batch("b1", foreign))
    assert list(ack.record_outcomes) == [REJECTED]
    assert rejections(ack) == [(0, "r-henan", "PROVINCE_NOT_PERMITTED", "residence_division", PERMISSION_DENIED)]


async def test_granting_division_in_another_province_is_permission_denied(
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    make_enrollment: Callable[..., Any],
    sync_all: Sync,
) -> None:
    rec = make_record("r1", enrollments=[make_enrollment(granting_division="410105")])
    ack = await single(sync_all, client_for(GZ), batch("b1", rec))
    assert rejections(ack) == [
        (0, "r1", "PROVINCE_NOT_PERMITTED", "enrollments[0].granting_division", PERMISSION_DENIED)
    ]


async def test_the_province_comes_from_the_certificate(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    ack = await single(sync_all, client_for(ZZ), batch("b1", make_record("r-henan", province="410000")))
    assert list(ack.record_outcomes) == [CREATED]
    state = await client_for(GZ).get_sync_state()
    assert (state.province_code, state.node_name, state.records_held) == ("440000", "gz-01", 0)


async def test_hukou_in_another_province_is_accepted(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    ack = await single(sync_all, client_for(GZ), batch("b1", make_record("migrant", hukou_province="510000")))
    assert list(ack.record_outcomes) == [CREATED]


async def test_impossible_dates_are_rejected_as_date_impossible(
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    make_enrollment: Callable[..., Any],
    sync_all: Sync,
) -> None:
    feb_30 = person_pb2.Date(year=2023, month=2, day=30)
    start = make_record("start", enrollments=[make_enrollment()])
    start.enrollments[0].start_date.CopyFrom(feb_30)
    end = make_record("end", sequence=2)
    end.enrollments[0].end_date.CopyFrom(person_pb2.Date(year=2023, month=13, day=1))
    birth = make_record("birth", sequence=3, birth_date=feb_30)
    fine = make_record("fine", sequence=4)
    ack = await single(sync_all, client_for(GZ), batch("b1", start, end, birth, fine))
    assert list(ack.record_outcomes) == [REJECTED, REJECTED, REJECTED, CREATED]
    assert rejections(ack) == [
        (0, "start", "DATE_IMPOSSIBLE", "enrollments[0].start_date", INVALID_ARGUMENT),
        (1, "end", "DATE_IMPOSSIBLE", "enrollments[0].end_date", INVALID_ARGUMENT),
        (2, "birth", "DATE_IMPOSSIBLE", "birth_date", INVALID_ARGUMENT),
    ]


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        pytest.param(
            {"monthly_amount_fen": -100}, "AMOUNT_NEGATIVE", "enrollments[0].monthly_amount_fen", id="negative"
        ),
        pytest.param({"program": 42}, "UNKNOWN_ENUM_VALUE", "enrollments[0].program", id="program"),
        pytest.param({"status": 9}, "UNKNOWN_ENUM_VALUE", "enrollments[0].status", id="status"),
    ],
)
async def test_bad_enrollment_values_are_rejected_naming_the_field(
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    sync_all: Sync,
    change: dict[str, int],
    reason: str,
    field: str,
) -> None:
    rec = make_record("r1")
    for name, value in change.items():
        setattr(rec.enrollments[0], name, value)
    ack = await single(sync_all, client_for(GZ), batch("b1", rec))
    assert rejections(ack) == [(0, "r1", reason, field, INVALID_ARGUMENT)]


async def test_unknown_gender_value_is_rejected(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    ack = await single(sync_all, client_for(GZ), batch("b1", make_record("r1", gender=7)))
    assert rejections(ack) == [(0, "r1", "UNKNOWN_ENUM_VALUE", "gender", INVALID_ARGUMENT)]


# -- idempotency -------------------------------------------------------------------------------


async def test_resent_batch_is_replayed_with_identical_outcomes(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    gz = client_for(GZ)
    request = batch("b1", make_record("r1"), make_record("r2", name="李4"))
    (first,) = await sync_all(gz, [request])
    (again,) = await sync_all(gz, [request])
    assert not first.replayed
    assert again.replayed
    assert list(again.record_outcomes) == list(first.record_outcomes) == [CREATED, REJECTED]
    assert list(again.record_rejections) == list(first.record_rejections)
    assert again.applied_at == first.applied_at
    assert again.record_counts == first.record_counts
    state = await gz.get_sync_state()
    assert state.batches_applied == 1
    assert state.record_counts.created == 1


async def test_same_records_under_a_new_batch_id_are_unchanged(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    gz = client_for(GZ)
    records = [make_record("r1"), make_record("r2", sequence=2), make_record("bad", version=0)]
    await sync_all(gz, [batch("b1", *records)])
    (ack,) = await sync_all(gz, [batch("b2", *records)])
    assert not ack.replayed
    assert list(ack.record_outcomes) == [UNCHANGED, UNCHANGED, REJECTED]


async def test_batch_id_reused_with_other_content_is_refused(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    gz = client_for(GZ)
    await sync_all(gz, [batch("b1", make_record("r1"))])
    (ack,) = await sync_all(gz, [batch("b1", make_record("r1", version=2, name="张三丰"))])
    assert ack.batch_rejection.reason == "BATCH_ID_REUSED"
    assert ack.batch_rejection.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    state = await gz.get_sync_state()
    assert (state.batches_applied, state.record_counts.updated) == (1, 0)


async def test_versions_update_go_stale_and_conflict_through_the_wire(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    gz = client_for(GZ)
    acks = await sync_all(
        gz,
        [
            batch("b1", make_record("r1", version=2)),
            batch("b2", make_record("r1", version=3)),
            batch("b3", make_record("r1", version=1)),
            batch("b4", make_record("r1", version=3, name="李四")),
        ],
    )
    assert [list(a.record_outcomes) for a in acks] == [[CREATED], [UPDATED], [STALE], [REJECTED]]
    assert rejections(acks[3])[0][2:4] == ("VERSION_CONFLICT", "version")


# -- GetSyncState ------------------------------------------------------------------------------


async def test_get_sync_state_reports_the_node_and_its_province(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    gz = client_for(GZ)
    empty = await gz.get_sync_state()
    assert (empty.province_code, empty.node_name, empty.last_batch_id, empty.batches_applied) == (
        "440000",
        "gz-01",
        "",
        0,
    )
    assert not empty.HasField("last_batch_time")
    assert not empty.HasField("watermark")

    await sync_all(
        gz,
        [
            batch("b1", make_record("r1", updated_at_us=1_700_000_000_000_000), make_record("x", version=0)),
            batch("b2", make_record("r2", sequence=2, updated_at_us=1_710_000_000_123_000)),
        ],
    )
    state = await gz.get_sync_state()
    assert state.last_batch_id == "b2"
    assert state.batches_applied == 2
    assert state.records_held == 2
    assert state.records_retired == 0
    assert (state.record_counts.created, state.record_counts.rejected) == (2, 1)
    assert state.HasField("last_batch_time")
    assert state.watermark.ToMicroseconds() == 1_710_000_000_123_000


# -- RetireRecords -----------------------------------------------------------------------------


def retirement(record_id: str, version: int, reason: int = records_pb2.RETIREMENT_REASON_EXITED) -> Any:
    return records_pb2.RecordRetirement(record_id=record_id, version=version, reason=reason)


async def test_retire_records_tombstones_and_a_retry_returns_the_same_result(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    gz = client_for(GZ)
    rec = make_record("r1")
    await sync_all(gz, [batch("b1", rec)])
    items = [retirement("r1", 2), retirement("ghost", 2), retirement("r1", 3, reason=0)]
    first = await gz.retire_records("req-1", items)
    assert list(first.outcomes) == [UPDATED, REJECTED, REJECTED]
    assert [(r.index, r.item_id, r.reason, r.field) for r in first.rejections] == [
        (1, "ghost", "RECORD_NOT_FOUND", "record_id"),
        (2, "r1", "REASON_MISSING", "reason"),
    ]
    assert first.rejections[0].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert not first.replayed

    again = await gz.retire_records("req-1", items)
    assert again.replayed
    assert list(again.outcomes) == list(first.outcomes)
    assert list(again.rejections) == list(first.rejections)

    answer = await gz.check_enrollment(rec.id_number, Purpose.DUPLICATE_CHECK, [1])
    assert not answer.results[0].enrolled
    state = await gz.get_sync_state()
    assert (state.records_held, state.records_retired) == (1, 1)


async def test_retire_request_id_reused_for_another_request_fails_precondition(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    gz = client_for(GZ)
    await sync_all(gz, [batch("b1", make_record("r1"), make_record("r2", sequence=2))])
    await gz.retire_records("req-1", [retirement("r1", 2)])
    with pytest.raises(FailedPrecondition) as caught:
        await gz.retire_records("req-1", [retirement("r2", 2)])
    assert (caught.value.reason, caught.value.field) == ("REQUEST_ID_REUSED", "request_id")


async def test_retire_records_refuses_a_missing_request_id(client_for: Callable[..., HubClient]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client_for(GZ).retire_records("", [retirement("r1", 2)])
    assert (caught.value.reason, caught.value.field) == ("CLIENT_ID_MISSING", "request_id")


async def test_retire_records_refuses_too_many_retirements(
    hub_factory: Any, client_for: Callable[..., HubClient]
) -> None:
    small = await hub_factory(max_batch_items=2)
    with pytest.raises(ResourceExhausted) as caught:
        await client_for(GZ, port=small.port).retire_records("req", [retirement(f"r{n}", 2) for n in range(3)])
    assert (caught.value.reason, caught.value.field) == ("BATCH_TOO_LARGE", "retirements")


async def test_a_province_cannot_retire_another_provinces_record(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    await sync_all(client_for(ZZ), [batch("b1", make_record("r-henan", province="410000"))])
    result = await client_for(GZ).retire_records("req-1", [retirement("r-henan", 2)])
    assert [r.reason for r in result.rejections] == ["RECORD_NOT_FOUND"]


# -- graceful shutdown -------------------------------------------------------------------------


async def test_shutdown_keeps_acknowledged_batches_and_ends_the_stream_unavailable(
    hub_factory: Any, client_for: Callable[..., HubClient], make_record: Callable[..., Any], tmp_path: Any
) -> None:
    data_dir = tmp_path / "restartable"
    first_hub: HubServer = await hub_factory(data_dir)
    gz = client_for(GZ, port=first_hub.port)
    outbox: asyncio.Queue[records_pb2.SyncRecordsRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[records_pb2.SyncRecordsRequest]:
        while (item := await outbox.get()) is not None:
            yield item

    acks: list[records_pb2.SyncRecordsResponse] = []
    first_ack = asyncio.Event()

    async def consume() -> None:
        async for ack in gz.sync(requests()):
            acks.append(ack)
            first_ack.set()

    consumer = asyncio.create_task(consume())
    rec = make_record("r1")
    await outbox.put(batch("b1", rec))
    await asyncio.wait_for(first_ack.wait(), 10)
    # The stream is open and idle, waiting for the node's next batch, when the hub is told to stop.
    await first_hub.stop(grace=5)
    ended: HutongError | None = None
    try:
        await asyncio.wait_for(consumer, 10)
    except HutongError as exc:
        ended = exc
    finally:
        await outbox.put(None)
    # Either the stream completed, or it ended telling the node to reconnect.
    assert ended is None or (isinstance(ended, Unavailable) and ended.reason == "HUB_SHUTTING_DOWN")
    assert [list(a.record_outcomes) for a in acks] == [[CREATED]]

    second_hub: HubServer = await hub_factory(data_dir)
    again = client_for(GZ, port=second_hub.port)
    state = await again.get_sync_state()
    assert (state.last_batch_id, state.batches_applied, state.records_held) == ("b1", 1, 1)
    answer = await again.check_enrollment(rec.id_number, Purpose.DUPLICATE_CHECK, [1])
    assert answer.results[0].enrolled
    (replay,) = [a async for a in again.sync([batch("b1", rec)])]
    assert replay.replayed


async def test_shutdown_under_load_loses_no_acknowledged_batch(
    hub_factory: Any, client_for: Callable[..., HubClient], make_record: Callable[..., Any], tmp_path: Any
) -> None:
    data_dir = tmp_path / "busy"
    first_hub: HubServer = await hub_factory(data_dir)
    gz = client_for(GZ, port=first_hub.port)
    sent: list[records_pb2.SyncRecordsRequest] = []

    async def requests() -> AsyncIterator[records_pb2.SyncRecordsRequest]:
        for n in range(200):
            request = batch(f"b{n}", *(make_record(f"r{n}-{k}", sequence=(5 * n + k) % 1000) for k in range(5)))
            sent.append(request)
            yield request
            await asyncio.sleep(0)

    acks: list[records_pb2.SyncRecordsResponse] = []
    stopper: asyncio.Task[None] | None = None
    outcome: HutongError | None = None
    try:
        async for ack in gz.sync(requests(), window=4):
            acks.append(ack)
            if len(acks) == 3:
                stopper = asyncio.create_task(first_hub.stop(grace=5))
    except HutongError as exc:
        outcome = exc
    assert stopper is not None
    await stopper
    assert outcome is None or (isinstance(outcome, Unavailable) and outcome.reason == "HUB_SHUTTING_DOWN")
    assert len(acks) >= 3
    assert [a.batch_id for a in acks] == [f"b{n}" for n in range(len(acks))]

    second_hub: HubServer = await hub_factory(data_dir)
    again = client_for(GZ, port=second_hub.port)
    state = await again.get_sync_state()
    assert state.batches_applied >= len(acks)
    # Every acknowledged batch is held: resending it replays the original acknowledgement.
    replays = [a async for a in again.sync(sent[: len(acks)])]
    assert all(r.replayed for r in replays)
    assert [list(r.record_outcomes) for r in replays] == [list(a.record_outcomes) for a in acks]


async def test_households_sync_alongside_records(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    head = person_pb2.HouseholdMember(record_id="r1", relation=person_pb2.HOUSEHOLD_RELATION_HEAD)
    good = person_pb2.Household(
        household_id="h1", version=1, residence_division="440106", members=[head], monthly_income_per_member_fen=30_000
    )
    foreign = person_pb2.Household(household_id="h2", version=1, residence_division="410105", members=[head])
    odd = person_pb2.Household(
        household_id="h3", version=1, residence_division="440106",
        members=[person_pb2.HouseholdMember(record_id="r1", relation=99)],
    )  # fmt: skip
    gz = client_for(GZ)
    first, second = await sync_all(
        gz,
        [
            batch("b1", make_record("r1", household_id="h1"), households=[good, foreign, odd]),
            batch("b2", households=[good]),
        ],
    )
    assert list(first.record_outcomes) == [CREATED]
    assert list(first.household_outcomes) == [CREATED, REJECTED, REJECTED]
    assert [(r.index, r.item_id, r.reason, r.field, r.code) for r in first.household_rejections] == [
        (1, "h2", "PROVINCE_NOT_PERMITTED", "residence_division", PERMISSION_DENIED),
        (2, "h3", "UNKNOWN_ENUM_VALUE", "members[0].relation", INVALID_ARGUMENT),
    ]
    assert list(second.household_outcomes) == [UNCHANGED]


async def test_id_numbers_are_normalised_before_linking(
    client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    rec = make_record("r1")
    full_width = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in rec.id_number)
    spaced = make_record(
        "r2", province="410000", hukou_province="440000", id_number=f" {full_width[:6]} {full_width[6:]}"
    )
    await sync_all(client_for(GZ), [batch("b1", rec)])
    (ack,) = await sync_all(client_for(ZZ), [batch("b1", spaced)])
    assert list(ack.record_outcomes) == [CREATED]
    answer = await client_for(GZ).check_enrollment(rec.id_number, Purpose.DUPLICATE_CHECK, [1])
    assert list(answer.results[0].province_codes) == ["410000", "440000"]


async def test_extreme_but_valid_numbers_survive_the_round_trip(
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    make_enrollment: Callable[..., Any],
    sync_all: Sync,
) -> None:
    rec = make_record(
        "r" * 64,
        version=2**63 - 1,
        enrollments=[make_enrollment(amount_fen=10_000_000, start=None)],
    )
    rec.enrollments[0].start_date.CopyFrom(person_pb2.Date(year=1, month=1, day=1))
    (ack,) = await sync_all(client_for(GZ), [batch("b1", rec)])
    assert list(ack.record_outcomes) == [CREATED]
    found = await client_for(GZ).lookup_person(rec.id_number, Purpose.AUDIT)
    (entry,) = found.enrollments
    assert entry.record_id == "r" * 64
    assert entry.enrollment.monthly_amount_fen == 10_000_000
    assert (entry.enrollment.start_date.year, entry.enrollment.start_date.month) == (1, 1)


# -- a node that goes away mid-stream -------------------------------------------------------------


def _pending(qualname_suffix: str) -> list[asyncio.Task[Any]]:
    """Unfinished tasks of this event loop (the hub runs in it too) whose coroutine name ends so."""
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().__qualname__.endswith(qualname_suffix)]


async def _until(predicate: Callable[[], bool], *, attempts: int = 500) -> bool:
    for _ in range(attempts):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@contextmanager
def database_write_locked(hub: HubServer) -> Iterator[None]:
    """Hold SQLite's write lock from another connection, so that the hub's writes queue up behind it."""
    con = sqlite3.connect(hub.settings.data_dir / DATABASE_FILE, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


async def _cancel_stream_under_backpressure(
    hub: HubServer, demo_pki: DemoPki, make_record: Callable[..., Any], metadata: tuple[tuple[str, str], ...]
) -> None:
    """Open a stream, let the hub's pipeline fill up behind a locked database, then cancel the call."""
    tls = demo_pki.nodes[GZ].tls
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    requests = [batch(f"b{n}", make_record(f"r{n}", sequence=n)) for n in range(10)]
    with database_write_locked(hub):
        async with grpc.aio.secure_channel(f"localhost:{hub.port}", credentials) as channel:
            call = records_pb2_grpc.RecordExchangeServiceStub(channel).SyncRecords(iter(requests), metadata=metadata)
            # One batch being written behind the lock, the next ones prepared and queued, and the
            # reader waiting for a free slot in the pipeline.
            assert await _until(lambda: bool(_pending("SyncRecords.<locals>.read")))
            await asyncio.sleep(0.3)
            call.cancel()
            await asyncio.sleep(0.1)


async def test_a_stream_cancelled_by_the_node_under_backpressure_leaves_no_task_behind(
    hub: HubServer, demo_pki: DemoPki, make_record: Callable[..., Any], bearer: Callable[..., Any]
) -> None:
    await _cancel_stream_under_backpressure(hub, demo_pki, make_record, await bearer(GZ))
    # Every stream's reader task must end with its stream; a leftover one leaks per reconnecting node.
    leftover = _pending("SyncRecords.<locals>.read")
    assert await _until(lambda: not _pending("SyncRecords.<locals>.read"), attempts=200), leftover


async def test_a_stream_cancelled_by_the_node_is_not_logged_as_ok(
    hub: HubServer, demo_pki: DemoPki, make_record: Callable[..., Any], bearer: Callable[..., Any]
) -> None:
    metadata = await bearer(GZ)
    with capture_logs(processors=[merge_contextvars]) as logs:
        await _cancel_stream_under_backpressure(hub, demo_pki, make_record, metadata)
    finished = [e for e in logs if e["event"] == "rpc_finished" and e.get("rpc") == "SyncRecords"]
    assert len(finished) == 1
    assert finished[0]["code"] != "OK"
