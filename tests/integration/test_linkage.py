"""Identity linkage over real mTLS: unverified records linked within SyncRecords, the review queue, splits, restarts."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.audit import AuditEntry
from gateway.client import HubClient
from gateway.domain.identity import make_id_number
from gateway.domain.model import Program, Purpose
from gateway.errors import HutongError
from gateway.hub.server import DATABASE_FILE, HubServer, load_policy
from gateway.rpc_status import error_from_rpc
from hutong.v1 import linkage_pb2, linkage_pb2_grpc, notification_pb2, person_pb2, records_pb2
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
CD = "hutong://province/510000/node/cd-01"  # the ministry's review desk, in these tests
DECISION = notification_pb2.EventKind.Value("EVENT_KIND_REVIEW_DECISION")
DUPLICATE = notification_pb2.EventKind.Value("EVENT_KIND_DUPLICATE_ENROLLMENT")
OPEN = linkage_pb2.REVIEW_STATE_OPEN
ACCEPT, REJECT = linkage_pb2.REVIEW_DECISION_ACCEPT, linkage_pb2.REVIEW_DECISION_REJECT
LINKED, SPLIT = linkage_pb2.LINEAGE_EVENT_KIND_LINKED, linkage_pb2.LINEAGE_EVENT_KIND_SPLIT

# 王秀英, born 1962-03-07 in Guangzhou (广东): her valid 18-digit number.
WANG_BIRTH = dt.date(1962, 3, 7)
WANG_ID = make_id_number("440106", WANG_BIRTH, 124)
# 刘淑兰 (广东) and 刘淑英 (河南, no number): the same birth date, one character apart: the grey band.
LIU_BIRTH = dt.date(1958, 11, 21)
LIU_ID = make_id_number("440106", LIU_BIRTH, 246)
# 陈桂兰 (广东) and 陈桂英 (河南, no number): another grey-band pair, to be rejected.
CHEN_BIRTH = dt.date(1949, 6, 14)
CHEN_ID = make_id_number("440106", CHEN_BIRTH, 88)


def typo(number: str) -> str:
    """The number with a wrong check character: what a clerk's slip leaves."""
    return number[:-1] + ("0" if number[-1] != "0" else "1")


@pytest.fixture
def crypto_suite() -> str:
    return "intl"


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    """成都's node doubles as the ministry's review desk: it holds linkage:review."""
    path = tmp_path / "policy.toml"
    path.write_text(
        '[defaults]\nscopes = ["records:write", "query:enrollment"]\n'
        f'[nodes."{CD}"]\nscopes = ["records:write", "query:enrollment", "linkage:review", "audit:read"]\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def linkage_hub(hub_factory: Any, policy_path: Path) -> HubServer:
    hub: HubServer = await hub_factory(policy=load_policy(policy_path))
    return hub


@pytest.fixture
def client(linkage_hub: HubServer, client_for: Callable[..., HubClient]) -> Callable[..., HubClient]:
    return lambda uri, port=None: client_for(uri, port=port or linkage_hub.port)


class Reviewer:
    """Raw LinkageReviewService calls as one node (the Python client has no methods for them)."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self.stub = linkage_pb2_grpc.LinkageReviewServiceStub(channel)
        self.metadata = metadata

    async def __call__(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc.code(), exc.details(), exc.trailing_metadata()) from exc


@pytest.fixture
async def reviewer_for(demo_pki: DemoPki, client: Callable[..., HubClient]) -> AsyncIterator[Callable[..., Any]]:
    channels: list[grpc.aio.Channel] = []

    async def make(uri: str = CD, *, port: int) -> Reviewer:
        tls = demo_pki.nodes[uri].tls
        channel = grpc.aio.secure_channel(
            f"localhost:{port}", grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
        )
        channels.append(channel)
        return Reviewer(channel, await client(uri, port=port).call_metadata())

    yield make
    for channel in channels:
        await channel.close()


def wang_gd(make_record: Callable[..., Any]) -> person_pb2.PersonRecord:
    return make_record("gd-wang", name="王秀英", birth=WANG_BIRTH, sequence=124)


def wang_ha(make_record: Callable[..., Any], **fields: Any) -> person_pb2.PersonRecord:
    """河南's record of the same woman: a mistyped number, a homophone (瑛 for 英), flagged unverified."""
    base: dict[str, Any] = {
        "province": "410000",
        "hukou_province": "440000",
        "name": "王秀瑛",
        "id_number": typo(WANG_ID),
        "id_number_unverified": True,
        "birth_date": person_pb2.Date(year=1962, month=3, day=7),
    }
    base.update(fields)
    return make_record("ha-wang", **base)


def unverified_ha(
    make_record: Callable[..., Any], record_id: str, name: str, birth: dt.date, **fields: Any
) -> person_pb2.PersonRecord:
    """A 河南 record without any ID number."""
    base: dict[str, Any] = {
        "province": "410000",
        "name": name,
        "id_number": "",
        "id_number_unverified": True,
        "birth_date": person_pb2.Date(year=birth.year, month=birth.month, day=birth.day),
    }
    base.update(fields)
    return make_record(record_id, **base)


async def sync(client: HubClient, batch_id: str, *records: person_pb2.PersonRecord) -> records_pb2.SyncRecordsResponse:
    acks = [a async for a in client.sync([records_pb2.SyncRecordsRequest(batch_id=batch_id, records=records)])]
    return acks[0]


async def provinces_enrolled(client: HubClient, id_number: str) -> list[str]:
    answer = await client.check_enrollment(id_number, Purpose.DUPLICATE_CHECK, [Program.DIBAO])
    return list(answer.results[0].province_codes)


async def events_of(client: HubClient, kind: int, want: int, seconds: float = 10.0) -> list[Any]:
    out: list[Any] = []
    events = client.subscribe("0")
    try:
        async with asyncio.timeout(seconds):
            async for event in events:
                if event.kind == kind:
                    out.append(event)
                    if len(out) >= want:
                        break
    finally:
        await events.aclose()
    return out


def ref(province: str, record_id: str) -> linkage_pb2.RecordRef:
    return linkage_pb2.RecordRef(province_code=province, record_id=record_id)


def audit_entries(hub: HubServer, method_suffix: str) -> list[Any]:
    con = sqlite3.connect(hub.settings.data_dir / DATABASE_FILE)
    try:
        rows = con.execute("SELECT entry FROM audit_entries WHERE method LIKE ? ORDER BY seq", (f"%{method_suffix}",))
        return [AuditEntry.decode(bytes(row[0])) for row in rows]
    finally:
        con.close()


async def test_an_unverified_record_is_linked_within_the_sync_call_and_counts_as_the_same_person(
    client: Callable[..., HubClient],
    make_record: Callable[..., Any],
    reviewer_for: Callable[..., Any],
    linkage_hub: HubServer,
) -> None:
    gd, ha = client(GZ), client(ZZ)
    assert (await sync(gd, "g1", wang_gd(make_record))).record_counts.created == 1
    ack = await sync(ha, "h1", wang_ha(make_record))
    assert ack.record_counts.created == 1, ack

    # Within that call: CheckEnrollment by her valid number sees both provinces' dibao …
    assert await provinces_enrolled(gd, WANG_ID) == ["410000", "440000"]
    # … and the duplicate enrollment is found and pushed to both provinces.
    (gd_event,) = await events_of(gd, DUPLICATE, 1)
    (ha_event,) = await events_of(ha, DUPLICATE, 1)
    assert list(gd_event.other_province_codes) == ["410000"]
    assert list(ha_event.record_ids) == ["ha-wang"]

    review = await reviewer_for(port=linkage_hub.port)
    lineage = await review("GetLineage", linkage_pb2.GetLineageRequest(record=ref("410000", "ha-wang")))
    held = await review("GetLineage", linkage_pb2.GetLineageRequest(record=ref("440000", "gd-wang")))
    assert lineage.id_number_unverified
    assert not held.id_number_unverified
    assert lineage.person_key == held.person_key
    assert [(r.province_code, r.record_id) for r in lineage.person_records] == [
        ("410000", "ha-wang"),
        ("440000", "gd-wang"),
    ]
    (link,) = lineage.links
    assert link.made_by == "linker"
    assert not link.HasField("ended_at")
    assert link.evidence.rule == "probabilistic"
    assert link.evidence.match_probability >= 0.99
    assert link.evidence.model_version == 1
    levels = {c.comparison: c.level for c in link.evidence.comparisons}
    assert levels["id_number"] == "one_typo"
    assert levels["given_name"] == "homophone"
    (event,) = lineage.events
    assert event.kind == LINKED
    assert event.actor == "linker"
    (change,) = event.person_key_changes
    assert change.record == ref("410000", "ha-wang")
    assert change.after == held.person_key
    assert change.before != change.after  # the provisional key

    # The batch's linkage decisions are an entry of the exchange log, naming the model and the persons.
    (entry,) = audit_entries(linkage_hub, "/hutong.hub.Linker/LinkRecords")
    assert entry.batch_id == "h1"
    assert entry.caller == ZZ
    assert entry.counts["links"] == 1
    assert entry.counts["model_version"] == 1
    assert held.person_key.hex() in entry.person_keys
    assert change.before.hex() in entry.person_keys
    # The provisional key is a keyed hash of province and record id, never of the mistyped number.
    con = sqlite3.connect(linkage_hub.settings.data_dir / DATABASE_FILE)
    try:
        (provisional,) = con.execute(
            "SELECT provisional_key FROM linkage_unverified WHERE province='410000' AND record_id='ha-wang'"
        ).fetchone()
        (sealed,) = con.execute("SELECT sealed_pii FROM records WHERE record_id='ha-wang'").fetchone()
    finally:
        con.close()
    assert bytes(provisional) == change.before
    assert typo(WANG_ID).encode() not in bytes(sealed)


async def test_a_record_arriving_before_the_valid_one_is_linked_when_the_valid_one_arrives(
    client: Callable[..., HubClient], make_record: Callable[..., Any]
) -> None:
    gd, ha = client(GZ), client(ZZ)
    await sync(ha, "h1", wang_ha(make_record))
    assert await provinces_enrolled(gd, WANG_ID) == []
    await sync(gd, "g1", wang_gd(make_record))
    assert await provinces_enrolled(gd, WANG_ID) == ["410000", "440000"]


async def test_grey_band_pairs_are_queued_then_accepted_or_rejected_and_both_provinces_are_told(
    client: Callable[..., HubClient],
    make_record: Callable[..., Any],
    reviewer_for: Callable[..., Any],
    linkage_hub: HubServer,
) -> None:
    gd, ha = client(GZ), client(ZZ)
    await sync(
        gd,
        "g1",
        make_record("gd-liu", name="刘淑兰", birth=LIU_BIRTH, sequence=246),
        make_record("gd-chen", name="陈桂兰", birth=CHEN_BIRTH, sequence=88),
    )
    await sync(
        ha,
        "h1",
        unverified_ha(make_record, "ha-liu", "刘淑英", LIU_BIRTH),
        unverified_ha(make_record, "ha-chen", "陈桂英", CHEN_BIRTH),
    )
    # Neither pair reaches the link threshold: nothing is merged silently.
    assert await provinces_enrolled(gd, LIU_ID) == ["440000"]
    review = await reviewer_for(port=linkage_hub.port)
    page = await review("ListReviewItems", linkage_pb2.ListReviewItemsRequest(state=OPEN, page_size=1))
    (liu,) = page.items
    assert page.next_page_token
    (chen,) = (
        await review("ListReviewItems", linkage_pb2.ListReviewItemsRequest(state=OPEN, page_token=page.next_page_token))
    ).items
    assert (liu.record, liu.other_record) == (ref("410000", "ha-liu"), ref("440000", "gd-liu"))
    assert 0.5 <= liu.evidence.match_probability < 0.99
    assert liu.state == OPEN
    henan = await review("ListReviewItems", linkage_pb2.ListReviewItemsRequest(province_code="410000"))
    assert [i.review_id for i in henan.items] == [liu.review_id, chen.review_id]
    sichuan = await review("ListReviewItems", linkage_pb2.ListReviewItemsRequest(province_code="510000"))
    assert list(sichuan.items) == []

    accepted = await review(
        "DecideReviewItem",
        linkage_pb2.DecideReviewItemRequest(
            request_id="d-1", review_id=liu.review_id, decision=ACCEPT, reason="same woman: 河南 visit confirmed"
        ),
    )
    assert accepted.item.state == linkage_pb2.REVIEW_STATE_ACCEPTED
    assert accepted.item.decided_by == CD
    assert accepted.person_keys[0] == accepted.person_keys[1]
    assert await provinces_enrolled(gd, LIU_ID) == ["410000", "440000"]
    again = await review(
        "DecideReviewItem",
        linkage_pb2.DecideReviewItemRequest(
            request_id="d-1", review_id=liu.review_id, decision=ACCEPT, reason="same woman: 河南 visit confirmed"
        ),
    )
    assert again.replayed
    assert again.person_keys == accepted.person_keys
    with pytest.raises(HutongError) as decided:
        await review(
            "DecideReviewItem",
            linkage_pb2.DecideReviewItemRequest(request_id="d-2", review_id=liu.review_id, decision=REJECT, reason="x"),
        )
    assert decided.value.reason == "LINKAGE_REVIEW_DECIDED"

    rejected = await review(
        "DecideReviewItem",
        linkage_pb2.DecideReviewItemRequest(
            request_id="d-3", review_id=chen.review_id, decision=REJECT, reason="two women: different fathers"
        ),
    )
    assert rejected.item.state == linkage_pb2.REVIEW_STATE_REJECTED
    assert rejected.person_keys[0] != rejected.person_keys[1]
    assert await provinces_enrolled(gd, CHEN_ID) == ["440000"]

    # Each decision is pushed to both provinces, under the subject of its review item.
    gd_events = await events_of(gd, DECISION, 2)
    ha_events = await events_of(ha, DECISION, 2)
    assert [list(e.record_ids) for e in gd_events] == [["gd-liu"], ["gd-chen"]]
    assert [list(e.record_ids) for e in ha_events] == [["ha-liu"], ["ha-chen"]]
    assert all(list(e.other_province_codes) == ["410000"] for e in gd_events)
    assert "linked as one person" in gd_events[0].summary
    assert "kept apart" in gd_events[1].summary

    # Every review call is an audited entry carrying the persons it touched.
    decisions = audit_entries(linkage_hub, "/hutong.v1.LinkageReviewService/DecideReviewItem")
    assert [e.outcome for e in decisions] == ["OK", "OK", "FAILED_PRECONDITION", "OK"]
    assert decisions[0].caller == CD
    assert decisions[0].purpose == "duplicate-check"
    assert accepted.person_keys[0].hex() in decisions[0].person_keys
    assert {k.hex() for k in rejected.person_keys} <= set(decisions[3].person_keys)
    listed = audit_entries(linkage_hub, "/hutong.v1.LinkageReviewService/ListReviewItems")
    assert [e.counts["items"] for e in listed] == [1, 1, 2, 0]
    assert len(listed[0].person_keys) == 2  # the persons listed are named


async def test_a_split_undoes_a_link_and_the_lineage_keeps_both(
    client: Callable[..., HubClient],
    make_record: Callable[..., Any],
    reviewer_for: Callable[..., Any],
    linkage_hub: HubServer,
) -> None:
    gd, ha = client(GZ), client(ZZ)
    await sync(gd, "g1", wang_gd(make_record))
    await sync(ha, "h1", wang_ha(make_record))
    review = await reviewer_for(port=linkage_hub.port)
    request = linkage_pb2.SplitLinkRequest(
        request_id="s-1",
        record=ref("410000", "ha-wang"),
        other_record=ref("440000", "gd-wang"),
        reason="different mothers' names on the 户口簿",
    )
    split = await review("SplitLink", request)
    assert split.event.kind == SPLIT
    assert split.event.actor == CD
    assert split.person_keys[0] != split.person_keys[1]
    assert (await review("SplitLink", request)).replayed
    assert await provinces_enrolled(gd, WANG_ID) == ["440000"]

    lineage = await review("GetLineage", linkage_pb2.GetLineageRequest(record=ref("410000", "ha-wang")))
    assert [e.kind for e in lineage.events] == [LINKED, SPLIT]
    (link,) = lineage.links
    assert link.HasField("ended_at")
    assert lineage.person_key == split.person_keys[0]
    assert [(r.province_code, r.record_id) for r in lineage.person_records] == [("410000", "ha-wang")]
    with pytest.raises(HutongError) as missing:
        await review("SplitLink", linkage_pb2.SplitLinkRequest(request_id="s-2", reason="again", record=ref(
            "410000", "ha-wang"), other_record=ref("440000", "gd-wang")))  # fmt: skip
    assert missing.value.reason == "LINKAGE_LINK_NOT_FOUND"
    # A new version, linked afresh, does not link what a person split.
    await sync(ha, "h2", wang_ha(make_record, version=2, hukou_province="410000"))
    assert await provinces_enrolled(gd, WANG_ID) == ["440000"]
    lineage = await review("GetLineage", linkage_pb2.GetLineageRequest(record=ref("410000", "ha-wang")))
    assert [e.kind for e in lineage.events] == [LINKED, SPLIT]
    assert lineage.id_number_unverified


async def test_after_a_restart_the_index_is_warm_links_hold_and_new_records_still_link(
    hub_factory: Any,
    policy_path: Path,
    demo_pki: DemoPki,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    reviewer_for: Callable[..., Any],
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hub-restarted"
    first: HubServer = await hub_factory(data_dir=data_dir, policy=load_policy(policy_path))
    await sync(client_for(GZ, port=first.port), "g1", wang_gd(make_record), make_record(
        "gd-liu", name="刘淑兰", birth=LIU_BIRTH, sequence=246))  # fmt: skip
    await sync(client_for(ZZ, port=first.port), "h1", wang_ha(make_record))
    await first.stop(0)

    second: HubServer = await hub_factory(data_dir=data_dir, policy=load_policy(policy_path))
    gd, ha = client_for(GZ, port=second.port), client_for(ZZ, port=second.port)
    assert await provinces_enrolled(gd, WANG_ID) == ["410000", "440000"]
    assert second.store is not None
    assert second.store.linkage is not None
    assert second.store.linkage.model_version == 1
    # A new unverified record (a mistyped number, 刘淑兰 written right) links on arrival after the restart.
    await sync(ha, "h2", make_record(
        "ha-liu", province="410000", name="刘淑兰", id_number=typo(LIU_ID), id_number_unverified=True,
        birth_date=person_pb2.Date(year=1958, month=11, day=21)))  # fmt: skip
    assert await provinces_enrolled(gd, LIU_ID) == ["410000", "440000"]
    review = await reviewer_for(port=second.port)
    lineage = await review("GetLineage", linkage_pb2.GetLineageRequest(record=ref("410000", "ha-wang")))
    assert [e.kind for e in lineage.events] == [LINKED]


async def test_under_the_sm_suite_the_same_person_is_linked(
    hub_factory: Any, client_for: Callable[..., HubClient], make_record: Callable[..., Any]
) -> None:
    hub: HubServer = await hub_factory(crypto_suite="sm")
    gd, ha = client_for(GZ, port=hub.port), client_for(ZZ, port=hub.port)
    await sync(gd, "g1", wang_gd(make_record))
    await sync(ha, "h1", wang_ha(make_record))
    assert await provinces_enrolled(gd, WANG_ID) == ["410000", "440000"]


async def test_without_the_flag_an_invalid_number_is_rejected_as_before(
    client: Callable[..., HubClient], make_record: Callable[..., Any]
) -> None:
    ha = client(ZZ)
    ack = await sync(
        ha,
        "h1",
        make_record("plain", province="410000", id_number=typo(WANG_ID)),
        make_record("empty", province="410000", id_number=""),
        unverified_ha(make_record, "no-birth", "王秀瑛", WANG_BIRTH, birth_date=None),
    )
    reasons = {r.item_id: r.reason for r in ack.record_rejections}
    assert reasons == {
        "plain": "ID_NUMBER_BAD_CHECK_CHARACTER",
        "empty": "ID_NUMBER_MISSING",
        "no-birth": "BIRTH_DATE_MISSING",
    }


async def test_a_flagged_record_with_a_valid_number_is_linked_by_the_number_rule(
    client: Callable[..., HubClient], make_record: Callable[..., Any], reviewer_for: Callable[..., Any],
    linkage_hub: HubServer,
) -> None:  # fmt: skip
    gd, ha = client(GZ), client(ZZ)
    await sync(gd, "g1", wang_gd(make_record))
    # 河南 holds her first-generation 15-digit number, flagged: it passes the check, so the
    # linker's first rule links it outright to the record holding the same number.
    short = WANG_ID[:6] + WANG_ID[8:17]
    await sync(ha, "h1", wang_ha(make_record, id_number=short))
    assert await provinces_enrolled(gd, WANG_ID) == ["410000", "440000"]
    review = await reviewer_for(port=linkage_hub.port)
    lineage = await review("GetLineage", linkage_pb2.GetLineageRequest(record=ref("410000", "ha-wang")))
    assert lineage.id_number_unverified
    (link,) = lineage.links
    assert link.evidence.rule == "id_number"
    assert link.evidence.match_probability == 1.0
    # A flagged number nobody else holds does not make the record that number's person.
    other = make_id_number("410105", dt.date(1970, 1, 2), 35)
    await sync(ha, "h2", unverified_ha(make_record, "ha-zhou", "周建国", dt.date(1970, 1, 2), id_number=other))
    assert await provinces_enrolled(ha, other) == []


async def test_review_calls_need_the_linkage_review_scope(
    client: Callable[..., HubClient], reviewer_for: Callable[..., Any], linkage_hub: HubServer
) -> None:
    review = await reviewer_for(GZ, port=linkage_hub.port)
    with pytest.raises(HutongError) as denied:
        await review("ListReviewItems", linkage_pb2.ListReviewItemsRequest())
    assert denied.value.reason == "SCOPE_MISSING"
