"""The closed loop over real mTLS: events pushed to provinces, acknowledged, reported back; departments' signals."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.client import HubClient
from gateway.errors import HutongError, InvalidArgument, NotFound, PermissionDenied
from gateway.hub.server import DATABASE_FILE, HubServer, load_policy
from gateway.store.sqlite_loop import Deadlines
from hutong.v1 import notification_pb2, person_pb2, records_pb2, signal_pb2
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
CD = "hutong://province/510000/node/cd-01"
KIND = notification_pb2.EventKind
DUPLICATE = KIND.Value("EVENT_KIND_DUPLICATE_ENROLLMENT")
RESIDENT = KIND.Value("EVENT_KIND_RESIDENT_ENROLLED_ELSEWHERE")
RETIRED = KIND.Value("EVENT_KIND_RETIRED_ELSEWHERE")
SIGNAL = KIND.Value("EVENT_KIND_RISK_SIGNAL")
OVERDUE = KIND.Value("EVENT_KIND_OVERDUE")


@pytest.fixture
def crypto_suite() -> str:
    return "intl"


@pytest.fixture
async def loop_hub(hub_factory: Any, tmp_path: Path) -> HubServer:
    """A hub whose policy lets 成都 (CD) also submit signals, as a department would."""
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[defaults]\nscopes = ["records:write", "query:enrollment"]\n'
        f'[nodes."{CD}"]\nscopes = ["records:write", "query:enrollment", "signals:write"]\n',
        encoding="utf-8",
    )
    hub: HubServer = await hub_factory(policy=load_policy(policy))
    return hub


@pytest.fixture
def client(demo_pki: DemoPki, loop_hub: HubServer, client_for: Callable[..., HubClient]) -> Callable[[str], HubClient]:
    return lambda uri: client_for(uri, port=loop_hub.port)


async def drain(client: HubClient, cursor: str = "", *, want: int, seconds: float = 10.0) -> list[Any]:
    """The first ``want`` events of a subscription."""
    out: list[Any] = []
    events = client.subscribe(cursor)
    try:
        async with asyncio.timeout(seconds):
            async for event in events:
                out.append(event)
                if len(out) >= want:
                    break
    finally:
        await events.aclose()
    return out


async def sync(client: HubClient, batch_id: str, *records: person_pb2.PersonRecord) -> None:
    acks = [a async for a in client.sync([records_pb2.SyncRecordsRequest(batch_id=batch_id, records=records)])]
    assert acks[0].record_counts.rejected == 0, acks[0]


async def test_a_duplicate_is_pushed_to_both_provinces_and_closed_when_both_report(
    client: Callable[[str], HubClient], make_record: Callable[..., Any], loop_hub: HubServer
) -> None:
    gz, zz = client(GZ), client(ZZ)
    await sync(gz, "g1", make_record("gz-a"))
    await sync(zz, "z1", make_record("zz-b", province="410000", hukou_province="440000"))

    (gz_event,) = [e for e in await drain(gz, want=2) if e.kind == DUPLICATE]
    (zz_event,) = [e for e in await drain(zz, want=1) if e.kind == DUPLICATE]
    assert list(gz_event.record_ids) == ["gz-a"]
    assert list(zz_event.record_ids) == ["zz-b"]
    assert list(gz_event.other_province_codes) == ["410000"]
    assert gz_event.program == person_pb2.PROGRAM_DIBAO
    assert gz_event.finding_id == zz_event.finding_id
    assert gz_event.respond_by.seconds > gz_event.created_at.seconds
    # 河南 enrolled a person whose hukou is in 广东: 广东 is told that too.
    resident = [e for e in await drain(gz, want=2) if e.kind == RESIDENT]
    assert [list(e.other_province_codes) for e in resident] == [["410000"]]

    first = await gz.report_outcome("r-gz", gz_event.event_id, notification_pb2.EVENT_OUTCOME_ASSISTED)
    assert not first.closed
    again = await gz.report_outcome("r-gz", gz_event.event_id, notification_pb2.EVENT_OUTCOME_ASSISTED)
    assert again.replayed
    second = await zz.report_outcome(
        "r-zz", zz_event.event_id, notification_pb2.EVENT_OUTCOME_NOT_ELIGIBLE, "moved to 广东 in 2025"
    )
    assert second.closed
    con = sqlite3.connect(loop_hub.settings.data_dir / DATABASE_FILE)
    try:
        assert con.execute("SELECT is_open FROM findings WHERE finding_id=?", (gz_event.finding_id,)).fetchone() == (0,)
    finally:
        con.close()
    states = {s.province: s for s in await loop_hub.store.loop_state()}
    assert (states["440000"].pushed, states["440000"].reported) == (2, 1)
    assert (states["410000"].pushed, states["410000"].reported, states["410000"].open) == (1, 1, 0)


async def test_events_are_redelivered_until_acknowledged_and_resume_after_the_cursor(
    client: Callable[[str], HubClient], make_record: Callable[..., Any]
) -> None:
    gz, zz = client(GZ), client(ZZ)
    await sync(gz, "g1", make_record("gz-a"), make_record("gz-c", sequence=5))
    await sync(
        zz,
        "z1",
        make_record("zz-b", province="410000", hukou_province="440000"),
        make_record("zz-d", province="410000", hukou_province="440000", sequence=5),
    )
    events = await drain(gz, want=4)
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    # Not acknowledged: a new subscription gets the same events again, with the same ids.
    again = await drain(gz, want=4)
    assert [e.event_id for e in again] == [e.event_id for e in events]
    ack = await gz.acknowledge_events([events[0].event_id, events[1].event_id, "ev-not-ours"])
    assert ack.cursor == str(events[1].sequence)
    assert list(ack.unknown_event_ids) == ["ev-not-ours"]
    rest = await drain(gz, want=2)
    assert [e.event_id for e in rest] == [e.event_id for e in events[2:]]
    # An explicit cursor wins over the acknowledged one.
    assert [e.event_id for e in await drain(gz, str(events[2].sequence), want=1)] == [events[3].event_id]


async def test_a_retirement_is_pushed_to_the_provinces_still_assisting(
    client: Callable[[str], HubClient], make_record: Callable[..., Any]
) -> None:
    gz, zz = client(GZ), client(ZZ)
    await sync(gz, "g1", make_record("gz-a"))
    await sync(zz, "z1", make_record("zz-b", province="410000", hukou_province="440000"))
    await zz.retire_records(
        "ret-1",
        [records_pb2.RecordRetirement(record_id="zz-b", version=2, reason=records_pb2.RETIREMENT_REASON_DECEASED)],
    )
    retired = [e for e in await drain(gz, want=3) if e.kind == RETIRED]
    assert len(retired) == 1
    assert "died" in retired[0].summary
    assert list(retired[0].record_ids) == ["gz-a"]


async def test_signals_go_to_the_holding_provinces_or_the_residence_and_bad_ones_alone_are_refused(
    client: Callable[[str], HubClient], make_record: Callable[..., Any], id_number_of: Callable[..., str]
) -> None:
    gz, cd = client(GZ), client(CD)
    await sync(gz, "g1", make_record("gz-a"))
    held = id_number_of("440000")
    stranger = id_number_of("410000", sequence=77)
    signals = [
        signal_pb2.Signal(
            signal_id="yb-1",
            kind=notification_pb2.SIGNAL_KIND_LARGE_MEDICAL_EXPENSE,
            id_number=held,
            name="张三",
            occurred_on=person_pb2.Date(year=2026, month=11, day=2),
            amount_fen=8_800_000,
        ),
        signal_pb2.Signal(
            signal_id="yb-2",
            kind=notification_pb2.SIGNAL_KIND_JOB_LOSS,
            id_number=stranger,
            name="李四",
            residence_division="510104",
        ),
        signal_pb2.Signal(
            signal_id="yb-3", kind=notification_pb2.SIGNAL_KIND_DEATH, id_number=held[:-1] + "0", name="x"
        ),
        signal_pb2.Signal(signal_id="yb-4", id_number=held, name="张三"),
    ]
    response = await cd.submit_signals("sig-1", signals)
    results = list(response.results)
    assert [list(r.province_codes) for r in results[:2]] == [["440000"], ["510000"]]
    assert [r.matched for r in results[:2]] == [True, False]
    assert results[2].rejection.field == "id_number"
    assert results[3].rejection.reason == "SIGNAL_KIND_MISSING"
    replay = await cd.submit_signals("sig-1", signals)
    assert replay.replayed
    assert [list(r.province_codes) for r in replay.results[:2]] == [["440000"], ["510000"]]

    (event,) = [e for e in await drain(gz, want=1) if e.kind == SIGNAL]
    assert (event.signal.id_number, event.signal.name, event.signal.amount_fen) == (held, "张三", 8_800_000)
    assert event.signal.source == CD
    assert list(event.record_ids) == ["gz-a"]
    (routed,) = await drain(cd, want=1)
    assert (routed.signal.id_number, list(routed.record_ids)) == (stranger, [])


async def test_signals_need_their_scope(client: Callable[[str], HubClient], id_number_of: Callable[..., str]) -> None:
    with pytest.raises(PermissionDenied) as denied:
        await client(GZ).submit_signals(
            "s", [signal_pb2.Signal(signal_id="a", kind=1, id_number=id_number_of("440000"), name="张三")]
        )
    assert denied.value.reason == "SCOPE_MISSING"


async def test_reports_are_checked_and_only_for_the_callers_events(
    client: Callable[[str], HubClient], make_record: Callable[..., Any]
) -> None:
    gz, zz = client(GZ), client(ZZ)
    await sync(gz, "g1", make_record("gz-a"))
    await sync(zz, "z1", make_record("zz-b", province="410000", hukou_province="440000"))
    (event,) = [e for e in await drain(zz, want=1) if e.kind == DUPLICATE]
    with pytest.raises(NotFound):
        await gz.report_outcome("x1", event.event_id, notification_pb2.EVENT_OUTCOME_ASSISTED)
    with pytest.raises(InvalidArgument) as no_reason:
        await zz.report_outcome("x2", event.event_id, notification_pb2.EVENT_OUTCOME_NOT_ELIGIBLE)
    assert no_reason.value.field == "reason"
    with pytest.raises(InvalidArgument) as no_outcome:
        await zz.report_outcome("x3", event.event_id, 0)
    assert no_outcome.value.field == "outcome"
    await zz.report_outcome("x4", event.event_id, notification_pb2.EVENT_OUTCOME_ALREADY_HANDLED)
    with pytest.raises(HutongError) as reused:
        await zz.report_outcome("x4", event.event_id, notification_pb2.EVENT_OUTCOME_ASSISTED)
    assert reused.value.reason == "REQUEST_ID_REUSED"


async def test_overdue_events_are_escalated_once(
    client: Callable[[str], HubClient], make_record: Callable[..., Any], loop_hub: HubServer
) -> None:
    loop_hub.store.loop.deadlines = Deadlines(duplicate_enrollment=0, resident_enrolled_elsewhere=0)
    gz, zz = client(GZ), client(ZZ)
    await sync(gz, "g1", make_record("gz-a"))
    await sync(zz, "z1", make_record("zz-b", province="410000", hukou_province="440000"))
    await asyncio.sleep(0.01)
    assert await loop_hub.store.mark_overdue() == 3  # two duplicate notices and one resident notice
    assert await loop_hub.store.mark_overdue() == 0
    overdue = [e for e in await drain(zz, want=2) if e.kind == OVERDUE]
    assert len(overdue) == 1
    states = {s.province: s for s in await loop_hub.store.loop_state()}
    assert states["410000"].overdue == 1
    # Reporting the original settles the overdue notice too.
    await zz.report_outcome("late", overdue[0].overdue_event_id, notification_pb2.EVENT_OUTCOME_ASSISTED)
    states = {s.province: s for s in await loop_hub.store.loop_state()}
    assert states["410000"].overdue == 0


async def test_every_loop_call_is_in_the_exchange_log(
    client: Callable[[str], HubClient], make_record: Callable[..., Any], loop_hub: HubServer
) -> None:
    gz = client(GZ)
    await sync(gz, "g1", make_record("gz-a"))
    await gz.acknowledge_events([])
    con = sqlite3.connect(loop_hub.settings.data_dir / DATABASE_FILE)
    try:
        methods = {m for (m,) in con.execute("SELECT method FROM audit_entries")}
    finally:
        con.close()
    assert "/hutong.v1.NotificationService/AcknowledgeEvents" in methods


RULES = """
[lines.dibao]
"44" = 950

[[rules]]
id = "dibao-marginal-candidate"
description = "income below 1.5 x the dibao line and not on dibao"
income_below = { line = "dibao", times = 1.5 }
not_enrolled = ["dibao", "dibao-marginal", "extreme-poverty"]
"""


async def test_monitoring_rules_push_a_matching_household_once_and_their_change_is_audited(
    hub_factory: Any,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    make_enrollment: Callable[..., Any],
    tmp_path: Path,
) -> None:
    from gateway.domain.monitoring import parse_rules

    data = tmp_path / "hub-rules"
    hub: HubServer = await hub_factory(data_dir=data, monitoring_rules=parse_rules(RULES))
    gz = client_for(GZ, port=hub.port)
    temporary = make_enrollment(program=person_pb2.PROGRAM_TEMPORARY_ASSISTANCE)
    member = make_record("gz-a", household_id="H1", enrollments=[temporary])

    def household(income_yuan: int, version: int) -> person_pb2.Household:
        return person_pb2.Household(
            household_id="H1",
            version=version,
            residence_division="440106",
            members=[person_pb2.HouseholdMember(record_id="gz-a", relation=person_pb2.HOUSEHOLD_RELATION_HEAD)],
            monthly_income_per_member_fen=income_yuan * 100,
        )

    async def send(batch_id: str, *households: person_pb2.Household) -> None:
        request = records_pb2.SyncRecordsRequest(batch_id=batch_id, records=[member], households=households)
        (ack,) = [a async for a in gz.sync([request])]
        assert not ack.household_rejections, ack

    await send("b1", household(1200, 1))  # 1,200 < 1.5 x 950: a candidate
    await send("b2", household(1300, 2))  # still matching: not pushed again
    alerts = [e for e in await drain(gz, want=1) if e.kind == KIND.Value("EVENT_KIND_MONITORING_ALERT")]
    assert [(e.rule_id, e.household_id, list(e.record_ids)) for e in alerts] == [
        ("dibao-marginal-candidate", "H1", ["gz-a"])
    ]
    assert "1200.00" in alerts[0].summary
    await send("b3", household(2000, 3))  # no longer matching
    await send("b4", household(1000, 4))  # matching again: a new alert
    again = [e for e in await drain(gz, want=2) if e.kind == KIND.Value("EVENT_KIND_MONITORING_ALERT")]
    assert len(again) == 2
    assert again[0].event_id != again[1].event_id

    await hub.stop(0)
    restarted: HubServer = await hub_factory(data_dir=data, monitoring_rules=parse_rules(RULES), port=hub.port)
    await restarted.stop(0)
    con = sqlite3.connect(data / DATABASE_FILE)
    try:
        loads = con.execute(
            "SELECT count(*) FROM audit_entries WHERE method='/hutong.hub.Operator/LoadMonitoringRules'"
        ).fetchone()[0]
    finally:
        con.close()
    assert loads == 1  # the same rules again are not a change
