"""A province's node reaching for another province's data: refused per record, per field, per id, and logged.

The province is the one of the caller's certificate (DESIGN §5). What belongs to another province is
answered exactly as what does not exist (RECORD_NOT_FOUND, VERIFICATION_NOT_FOUND, EVENT_NOT_FOUND,
unknown event ids), so ids reveal nothing; and nothing of the other province's data changes.
Enrollment questions (CheckEnrollment, LookupPerson) are cross-province by design and not here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from gateway.client import HubClient
from gateway.domain.access import AccessPolicy
from gateway.domain.identity import parse_id_number
from gateway.domain.model import Purpose
from gateway.errors import NotFound
from gateway.hub.server import HubServer
from gateway.store.verifications import StoredVerification
from hutong.v1 import notification_pb2, person_pb2, records_pb2, verification_pb2

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
CREATED = records_pb2.OUTCOME_CREATED
REJECTED = records_pb2.OUTCOME_REJECTED
RECORDS = "/hutong.v1.RecordExchangeService/"
NOTIFICATIONS = "/hutong.v1.NotificationService/"
DUPLICATE = notification_pb2.EventKind.Value("EVENT_KIND_DUPLICATE_ENROLLMENT")


def person_key(hub: HubServer, id_number: str) -> bytes:
    """The hub's keyed hash of an ID number."""
    assert hub.keyer is not None
    return hub.keyer.person_key(parse_id_number(id_number).value)


async def sync(client: HubClient, batch: records_pb2.SyncRecordsRequest) -> records_pb2.SyncRecordsResponse:
    """One batch on its own stream; its acknowledgement."""
    (ack,) = [a async for a in client.sync([batch])]
    return ack


async def first_events(client: HubClient, cursor: str = "", *, want: int) -> list[notification_pb2.Event]:
    """The first ``want`` events of a subscription (ten seconds at most)."""
    out: list[notification_pb2.Event] = []
    events = client.subscribe(cursor)
    try:
        async with asyncio.timeout(10):
            async for event in events:
                out.append(event)
                if len(out) >= want:
                    break
    finally:
        await events.aclose()
    return out


async def test_a_henan_node_cannot_write_guangdong_records_or_households_and_the_batch_entry_shows_it(
    hub: HubServer,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    make_enrollment: Callable[..., person_pb2.Enrollment],
    exchange_log: Callable[..., Any],
) -> None:
    zz, gz = client_for(ZZ), client_for(GZ)
    own = make_record("own", province="410000")
    lives_in_gd = make_record("gd-resident", province="440000", sequence=5)
    granted_in_gd = make_record(
        "gd-granted", province="410000", sequence=6, enrollments=[make_enrollment(province="440000")]
    )
    households = [
        person_pb2.Household(household_id="h-gd", version=1, residence_division="440106"),
        person_pb2.Household(household_id="h-own", version=1, residence_division="410105"),
    ]
    batch = records_pb2.SyncRecordsRequest(
        batch_id="b1", records=[own, lives_in_gd, granted_in_gd], households=households
    )
    ack = await sync(zz, batch)

    assert list(ack.record_outcomes) == [CREATED, REJECTED, REJECTED]
    assert [(r.index, r.item_id, r.reason, r.field, r.code) for r in ack.record_rejections] == [
        (1, "gd-resident", "PROVINCE_NOT_PERMITTED", "residence_division", PERMISSION_DENIED),
        (2, "gd-granted", "PROVINCE_NOT_PERMITTED", "enrollments[0].granting_division", PERMISSION_DENIED),
    ]
    assert list(ack.household_outcomes) == [REJECTED, CREATED]
    assert [(r.item_id, r.reason, r.field, r.code) for r in ack.household_rejections] == [
        ("h-gd", "PROVINCE_NOT_PERMITTED", "residence_division", PERMISSION_DENIED)
    ]
    # Nothing of it is held: no province shows the refused persons enrolled, Henan holds one record.
    for refused in (lives_in_gd, granted_in_gd):
        answer = await gz.check_enrollment(refused.id_number, Purpose.DUPLICATE_CHECK)
        assert not any(r.enrolled for r in answer.results)
    assert (await zz.get_sync_state()).records_held == 1

    (entry,) = [e for _, e in await exchange_log(hub) if e.batch_id == "b1"]
    assert (entry.method, entry.caller, entry.outcome) == (RECORDS + "SyncRecords", ZZ, "OK")
    # Outcome counts are the records' (the refused household shows only in the ack).
    assert dict(entry.counts) == {"created": 1, "rejected": 2, "records": 3, "households": 2}
    # The entry names the person whose record was written, not those the hub refused to take.
    assert list(entry.person_keys) == [person_key(hub, own.id_number).hex()]


async def test_retiring_another_provinces_record_is_answered_as_for_one_that_does_not_exist(
    hub: HubServer,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    entries_of: Callable[..., Any],
) -> None:
    gz, zz = client_for(GZ), client_for(ZZ)
    guangdong = make_record("r-gd")
    ack = await sync(gz, records_pb2.SyncRecordsRequest(batch_id="g1", records=[guangdong]))
    assert list(ack.record_outcomes) == [CREATED]
    retirements = [
        records_pb2.RecordRetirement(record_id=rid, version=2, reason=records_pb2.RETIREMENT_REASON_EXITED)
        for rid in ("r-gd", "ghost")
    ]
    result = await zz.retire_records("retire-foreign", retirements)

    theirs, nobodys = result.rejections
    assert (theirs.index, theirs.item_id, nobodys.index, nobodys.item_id) == (0, "r-gd", 1, "ghost")
    assert (theirs.reason, theirs.field, theirs.code) == (nobodys.reason, nobodys.field, nobodys.code)
    assert (theirs.reason, theirs.code) == ("RECORD_NOT_FOUND", NOT_FOUND)
    assert list(result.outcomes) == [REJECTED, REJECTED]
    answer = await gz.check_enrollment(guangdong.id_number, Purpose.DUPLICATE_CHECK, [person_pb2.PROGRAM_DIBAO])
    assert list(answer.results[0].province_codes) == ["440000"]  # still enrolled: nothing was retired
    assert (await gz.get_sync_state()).records_retired == 0

    # The client sends the request id as the call's x-request-id.
    (entry,) = await entries_of(hub, "retire-foreign")
    assert (entry.method, entry.caller, entry.outcome) == (RECORDS + "RetireRecords", ZZ, "OK")
    assert dict(entry.counts) == {"retirements": 2, "rejected": 2}
    assert entry.person_keys == ()


async def test_another_provinces_verification_is_not_found_like_one_that_does_not_exist(
    hub_factory: Any,
    client_for: Callable[..., HubClient],
    id_number_of: Callable[..., str],
    exchange_log: Callable[..., Any],
) -> None:
    """A verification of Guangdong's, stored as RequestVerification would store it.

    Starting one through RequestVerification needs province nodes to ask
    (tests/integration/test_verification.py does that); reading it is what is tested here, so
    it is put in the store directly, pending, with a lease long enough that no replica resumes it.
    """
    scopes = ["records:write", "query:enrollment", "verification:request"]
    hub = await hub_factory(policy=AccessPolicy.from_mapping({"defaults": {"scopes": scopes}}))
    assert hub.store is not None
    keys = (person_key(hub, id_number_of("440000")),)
    now_us = time.time_ns() // 1000
    verification_id = "vf-" + secrets.token_hex(12)
    _, replayed = await hub.store.start_verification(
        StoredVerification(
            verification_id=verification_id,
            province="440000",
            node="gz-01",
            request_id="req-1",
            request_digest=hashlib.sha256(b"req-1").digest(),
            sealed_request=b"",
            person_keys=keys,
            purpose=int(Purpose.ELIGIBILITY_REVIEW),
            state=verification_pb2.VERIFICATION_STATE_PENDING,
            created_at_us=now_us,
            lease_until_us=now_us + int(dt.timedelta(days=1).total_seconds() * 1_000_000),
        )
    )
    assert not replayed
    gz, zz = client_for(GZ, port=hub.port), client_for(ZZ, port=hub.port)
    assert (await gz.get_verification(verification_id)).state == verification_pb2.VERIFICATION_STATE_PENDING

    with pytest.raises(NotFound) as theirs:
        await zz.get_verification(verification_id)
    with pytest.raises(NotFound) as nobodys:
        await zz.get_verification("vf-" + secrets.token_hex(12))
    assert (theirs.value.reason, theirs.value.field) == ("VERIFICATION_NOT_FOUND", "verification_id")
    assert (theirs.value.reason, theirs.value.field, theirs.value.metadata) == (
        nobodys.value.reason,
        nobodys.value.field,
        nobodys.value.metadata,
    )

    reads = [e for _, e in await exchange_log(hub) if e.method.endswith("/GetVerification")]
    assert [(e.caller, e.outcome) for e in reads] == [(GZ, "OK"), (ZZ, "NOT_FOUND"), (ZZ, "NOT_FOUND")]
    assert list(reads[0].person_keys) == [k.hex() for k in keys]
    # The refusal names no person of the verification it did not disclose.
    assert reads[1].person_keys == reads[2].person_keys == ()
    assert reads[1].purpose == ""


async def test_another_provinces_events_cannot_be_acknowledged_or_reported_and_stay_pending_for_it(
    hub: HubServer,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    exchange_log: Callable[..., Any],
) -> None:
    gz, zz = client_for(GZ), client_for(ZZ)
    await sync(gz, records_pb2.SyncRecordsRequest(batch_id="g1", records=[make_record("gz-a")]))
    # Henan enrols a person with a Guangdong hukou whom Guangdong assists too: both provinces are told.
    duplicate = make_record("zz-b", province="410000", hukou_province="440000")
    await sync(zz, records_pb2.SyncRecordsRequest(batch_id="z1", records=[duplicate]))
    guangdongs = await first_events(gz, want=2)
    henans = await first_events(zz, "0", want=1)
    assert not {e.event_id for e in guangdongs} & {e.event_id for e in henans}
    theirs = [e.event_id for e in guangdongs]
    assert hub.store is not None
    before = {s.province: s for s in await hub.store.loop_state()}

    acknowledged = await zz.acknowledge_events([*theirs, "ev-missing"])
    assert list(acknowledged.unknown_event_ids) == [*theirs, "ev-missing"]
    assert acknowledged.cursor == "0"  # Henan acknowledged none of its own
    with pytest.raises(NotFound) as reported:
        await zz.report_outcome("report-foreign", theirs[0], notification_pb2.EVENT_OUTCOME_NOT_ELIGIBLE, "not ours")
    with pytest.raises(NotFound) as missing:
        await zz.report_outcome("report-missing", "ev-missing", notification_pb2.EVENT_OUTCOME_NOT_ELIGIBLE, "x")
    assert (reported.value.reason, reported.value.field) == ("EVENT_NOT_FOUND", "event_id")
    assert (reported.value.reason, reported.value.field) == (missing.value.reason, missing.value.field)

    # Guangdong's events are untouched: unacknowledged (delivered again), without an outcome.
    assert [e.event_id for e in await first_events(gz, want=2)] == theirs
    after = {s.province: s for s in await hub.store.loop_state()}
    assert after["440000"] == before["440000"]
    await gz.report_outcome("report-own", theirs[0], notification_pb2.EVENT_OUTCOME_ASSISTED)

    log = [
        e
        for _, e in await exchange_log(hub)
        if e.caller == ZZ and e.method.startswith(NOTIFICATIONS) and not e.method.endswith("/Subscribe")
    ]
    calls = [(e.method.removeprefix(NOTIFICATIONS), e.outcome) for e in log]
    assert calls == [("AcknowledgeEvents", "OK"), ("ReportOutcome", "NOT_FOUND"), ("ReportOutcome", "NOT_FOUND")]
    assert dict(log[0].counts) == {"events": 3}
    assert [e.request_id for e in log[1:]] == ["report-foreign", "report-missing"]
    assert all(e.person_keys == () for e in log)
    assert {e.kind for e in henans} == {DUPLICATE}
