"""Household verification across provinces (gateway.hub.verification), against a real hub and real sources.

The sources are gRPC servers with the demo nodes' certificates that implement
``ProvinceNodeService.AnswerVerification`` as each test needs (answer, refuse, stall, or nothing
listening): the hub's side is under test here; the nodes' own answering is tested with the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.audit import AuditEntry
from gateway.client import HubClient
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from gateway.hub.federation import FederationSettings, NodeAddress, NodeDirectory
from gateway.hub.server import HubServer, load_policy
from gateway.store.base import AuditFilter
from hutong.v1 import node_pb2, node_pb2_grpc, notification_pb2, person_pb2, verification_pb2
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"  # asks
ZZ = "hutong://province/410000/node/zz-01"
CD = "hutong://province/510000/node/cd-01"
COMPLETED = notification_pb2.EventKind.Value("EVENT_KIND_VERIFICATION_COMPLETED")
REAL_ESTATE = verification_pb2.ITEM_CLASS_REAL_ESTATE
DEPOSIT = verification_pb2.ITEM_CLASS_DEPOSIT
VEHICLE = verification_pb2.ITEM_CLASS_VEHICLE
SECONDS = 1.5  # each source's deadline in these tests

Answer = Callable[[node_pb2.ProvinceNodeServiceAnswerVerificationRequest, grpc.aio.ServicerContext], Any]


@pytest.fixture
def crypto_suite() -> str:
    return "intl"


class Source(node_pb2_grpc.ProvinceNodeServiceServicer):
    """A source that answers as the test says, and remembers what it was asked."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[node_pb2.ProvinceNodeServiceAnswerVerificationRequest] = []

    async def FetchRecordDetail(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no details here")

    async def AnswerVerification(
        self, request: node_pb2.ProvinceNodeServiceAnswerVerificationRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.ProvinceNodeServiceAnswerVerificationResponse:
        self.asked.append(request)
        result = self.answer(request, context)
        if asyncio.iscoroutine(result):
            result = await result
        return result  # type: ignore[no-any-return]


@pytest.fixture
async def sources(demo_pki: DemoPki) -> AsyncIterator[Callable[[str, Source], Awaitable[int]]]:
    """``await sources(uri, source)``: serve a source with that node's certificate (mTLS); its port."""
    servers: list[grpc.aio.Server] = []

    async def start(uri: str, source: Source) -> int:
        tls = demo_pki.nodes[uri].tls
        server = grpc.aio.server()
        node_pb2_grpc.add_ProvinceNodeServiceServicer_to_server(source, server)
        credentials = grpc.ssl_server_credentials(
            [(tls.private_key_pem, tls.cert_chain_pem)], root_certificates=tls.ca_pem, require_client_auth=True
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        servers.append(server)
        await server.start()
        return port

    yield start
    for server in servers:
        await server.stop(0)


def answering(*items: verification_pb2.VerificationItem) -> Answer:
    def answer(request: Any, context: Any) -> node_pb2.ProvinceNodeServiceAnswerVerificationResponse:
        return node_pb2.ProvinceNodeServiceAnswerVerificationResponse(
            items=items, answer_id=f"node-{request.hub_request_id}"
        )

    return answer


def item(member: int, item_class: int, amount_fen: int, reference: str) -> verification_pb2.VerificationItem:
    return verification_pb2.VerificationItem(
        member_index=member, item_class=item_class, amount_fen=amount_fen, reference=reference, description=reference
    )  # type: ignore[arg-type]


POLICY = f"""
[defaults]
scopes = ["records:write", "query:enrollment"]
[nodes."{GZ}"]
scopes = ["records:write", "query:enrollment", "verification:request"]
[nodes."{ZZ}"]
scopes = ["records:write", "query:enrollment", "verification:request"]
"""


async def make_hub(
    hub_factory: Any, tmp_path: Path, *nodes: tuple[str, int], data_dir: Path | None = None
) -> HubServer:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    directory = NodeDirectory(tuple(NodeAddress(uri, uri.split("/")[3], f"127.0.0.1:{port}") for uri, port in nodes))
    hub: HubServer = await hub_factory(
        data_dir=data_dir,
        policy=load_policy(policy),
        node_directory=directory,
        federation=FederationSettings(verification_seconds=SECONDS, max_backoff=0.2),
    )
    return hub


def household(id_number_of: Callable[..., str]) -> list[verification_pb2.VerifiedMember]:
    return [
        verification_pb2.VerifiedMember(id_number=id_number_of("440000"), name="张三"),
        verification_pb2.VerifiedMember(id_number=id_number_of("440000", sequence=125), name="李四"),
    ]


def consent(days_ago: int = 3) -> verification_pb2.Consent:
    signed = dt.date.today() - dt.timedelta(days=days_ago)
    c = verification_pb2.Consent(consent_id="GZ-2026-000123", document_sha256=hashlib.sha256(b"signed").hexdigest())
    c.signed_on.year, c.signed_on.month, c.signed_on.day = signed.year, signed.month, signed.day
    return c


def request_of(
    id_number_of: Callable[..., str], request_id: str = "req-1", **overrides: Any
) -> verification_pb2.RequestVerificationRequest:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "members": household(id_number_of),
        "consent": consent(),
        "purpose": person_pb2.PURPOSE_ELIGIBILITY_REVIEW,
        "item_classes": [REAL_ESTATE, DEPOSIT],
    }
    fields.update(overrides)
    return verification_pb2.RequestVerificationRequest(**{k: v for k, v in fields.items() if v is not None})


async def completed(client: HubClient, verification_id: str) -> notification_pb2.Event:
    """The verification-completed event of this verification, from the notification stream."""
    events = client.subscribe("0")
    try:
        async with asyncio.timeout(SECONDS * 6):
            async for event in events:
                if event.kind == COMPLETED and event.verification_id == verification_id:
                    return event
    finally:
        await events.aclose()
    raise AssertionError("the stream ended")


async def log_of(hub: HubServer) -> list[AuditEntry]:
    assert hub.store is not None
    size, _ = await hub.store.audit_tree()
    return [
        AuditEntry.decode(d) for _, d in await hub.store.audit_entries(AuditFilter(), after=0, limit=10_000, size=size)
    ]


async def test_a_verification_across_three_provinces_with_one_node_down_reports_who_answered(
    free_port: Callable[[], int],
    hub_factory: Any,
    tmp_path: Path,
    sources: Callable[[str, Source], Awaitable[int]],
    client_for: Callable[..., HubClient],
    id_number_of: Callable[..., str],
) -> None:
    gz = Source(answering(item(0, REAL_ESTATE, 95_000_000, "粤(2020)广州市不动产权第001号")))
    zz = Source(
        answering(
            item(1, DEPOSIT, 1_234_56, "ZZ-BANK-7"),
            item(1, VEHICLE, 5_000_000, "豫A12345"),  # not asked for: discarded
            item(5, DEPOSIT, 1, "nobody"),  # no such member: discarded
        )
    )
    down = free_port()  # Sichuan's node does not answer
    hub = await make_hub(hub_factory, tmp_path, (GZ, await sources(GZ, gz)), (ZZ, await sources(ZZ, zz)), (CD, down))
    client = client_for(GZ, port=hub.port)
    request = request_of(id_number_of)
    started = await client.request_verification(request)
    assert started.state == verification_pb2.VERIFICATION_STATE_PENDING
    assert not started.replayed
    event = await completed(client, started.verification_id)
    assert "2 of 3 sources answered" in event.summary
    assert not event.HasField("respond_by")  # nothing to report back
    answer = await client.get_verification(started.verification_id)
    assert answer.state == verification_pb2.VERIFICATION_STATE_COMPLETE
    report = answer.report
    by_source = {s.source_uri: s for s in report.sources}
    assert set(by_source) == {GZ, ZZ, CD}
    assert (by_source[GZ].outcome, by_source[GZ].items) == (verification_pb2.SOURCE_OUTCOME_ANSWERED, 1)
    assert (by_source[ZZ].outcome, by_source[ZZ].items) == (verification_pb2.SOURCE_OUTCOME_ANSWERED, 1)
    assert by_source[ZZ].reason == "2 item(s) outside the request discarded"
    assert by_source[CD].outcome == verification_pb2.SOURCE_OUTCOME_FAILED
    assert "UNAVAILABLE" in by_source[CD].reason
    assert by_source[GZ].answer_id.startswith("node-" + started.verification_id)
    items = {(i.member_index, i.item_class, i.source_uri): i for i in report.items}
    assert set(items) == {(0, REAL_ESTATE, GZ), (1, DEPOSIT, ZZ)}
    # Marked by class when the source did not: registrations general, deposits sensitive.
    assert items[0, REAL_ESTATE, GZ].sensitivity == verification_pb2.SENSITIVITY_GENERAL
    assert items[1, DEPOSIT, ZZ].sensitivity == verification_pb2.SENSITIVITY_SENSITIVE
    assert items[1, DEPOSIT, ZZ].amount_fen == 123_456
    # Each source was asked once, with the normalised request and the requester named.
    for source in (gz, zz):
        assert len(source.asked) == 1
        asked = source.asked[0]
        assert [m.id_number for m in asked.members] == [m.id_number for m in request.members]
        assert asked.requester.node_uri == GZ
        assert list(asked.item_classes) == [REAL_ESTATE, DEPOSIT]
    # Every leg is in the hub's log, naming the source; then the completion. No ID number anywhere.
    entries = await log_of(hub)
    legs = [e for e in entries if e.method == "/hutong.v1.ProvinceNodeService/AnswerVerification"]
    assert {e.subject: e.outcome for e in legs} == {GZ: "OK", ZZ: "OK", CD: "UNAVAILABLE"}
    assert all(e.caller == GZ and e.purpose == "eligibility-review" and len(e.person_keys) == 2 for e in legs)
    assert {e.request_id for e in legs} == {f"{started.verification_id}/{n}" for n in range(3)}
    done = [e for e in entries if e.method == "/hutong.hub.Verifier/CompleteVerification"]
    assert len(done) == 1
    text = json.dumps([e.to_json_object() for e in entries], ensure_ascii=False)
    for member in request.members:
        assert member.id_number not in text
    # The report is sealed at rest: no amount or reference in the database file.
    raw = (hub.settings.data_dir / "hub.sqlite3").read_bytes()
    assert "粤(2020)".encode() not in raw


async def test_a_slow_source_times_out_and_a_refusing_one_is_named(
    hub_factory: Any,
    tmp_path: Path,
    sources: Callable[[str, Source], Awaitable[int]],
    client_for: Callable[..., HubClient],
    id_number_of: Callable[..., str],
) -> None:
    async def stall(request: Any, context: Any) -> Any:
        await asyncio.sleep(SECONDS * 3)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this department serves eligibility reviews only")

    hub = await make_hub(
        hub_factory, tmp_path, (GZ, await sources(GZ, Source(answering()))), (ZZ, await sources(ZZ, Source(stall))),
        (CD, await sources(CD, Source(refuse))),
    )  # fmt: skip
    client = client_for(GZ, port=hub.port)
    started = await client.request_verification(request_of(id_number_of))
    await completed(client, started.verification_id)
    report = (await client.get_verification(started.verification_id)).report
    by_source = {s.source_uri: s for s in report.sources}
    assert by_source[GZ].outcome == verification_pb2.SOURCE_OUTCOME_ANSWERED
    assert by_source[GZ].items == 0  # holds nothing: an answer all the same
    assert by_source[ZZ].outcome == verification_pb2.SOURCE_OUTCOME_TIMED_OUT
    assert by_source[ZZ].reason == f"no answer within {SECONDS:g}s"
    assert by_source[CD].outcome == verification_pb2.SOURCE_OUTCOME_REFUSED
    assert "this department serves eligibility reviews only" in by_source[CD].reason


async def test_without_a_valid_consent_scope_or_purpose_nothing_is_asked(
    hub_factory: Any,
    tmp_path: Path,
    sources: Callable[[str, Source], Awaitable[int]],
    client_for: Callable[..., HubClient],
    id_number_of: Callable[..., str],
) -> None:
    source = Source(answering())
    hub = await make_hub(hub_factory, tmp_path, (GZ, await sources(GZ, source)))
    client = client_for(GZ, port=hub.port)
    no_consent = request_of(id_number_of, "r-1")
    no_consent.ClearField("consent")
    with pytest.raises(InvalidArgument, match="consent") as missing:
        await client.request_verification(no_consent)
    assert missing.value.reason == "CONSENT_MISSING"
    with pytest.raises(FailedPrecondition) as expired:
        await client.request_verification(request_of(id_number_of, "r-2", consent=consent(days_ago=200)))
    assert expired.value.reason == "CONSENT_EXPIRED"
    assert expired.value.field == "consent.signed_on"
    bad_hash = consent()
    bad_hash.document_sha256 = "not-a-hash"
    with pytest.raises(InvalidArgument) as malformed:
        await client.request_verification(request_of(id_number_of, "r-3", consent=bad_hash))
    assert malformed.value.field == "consent.document_sha256"
    with pytest.raises(PermissionDenied) as purpose:
        await client.request_verification(
            request_of(id_number_of, "r-4", purpose=person_pb2.PURPOSE_DUPLICATE_CHECK)
        )  # duplicate-check
    assert purpose.value.reason == "PURPOSE_NOT_ALLOWED"
    with pytest.raises(PermissionDenied) as scope:
        await client_for(CD, port=hub.port).request_verification(request_of(id_number_of, "r-5"))
    assert scope.value.reason == "SCOPE_MISSING"
    bad_member = request_of(id_number_of, "r-6")
    bad_member.members[1].id_number = bad_member.members[1].id_number[:-1] + (
        "0" if bad_member.members[1].id_number[-1] != "0" else "1"
    )
    with pytest.raises(InvalidArgument) as member:
        await client.request_verification(bad_member)
    assert member.value.field == "members[1].id_number"
    await asyncio.sleep(0.2)
    assert source.asked == []
    refusals = [e for e in await log_of(hub) if e.method.endswith("/RequestVerification")]
    assert len(refusals) == 6  # every refusal is in the log too
    assert all(e.outcome != "OK" for e in refusals)


async def test_a_repeated_request_id_returns_the_same_verification_and_others_cannot_read_it(
    hub_factory: Any,
    tmp_path: Path,
    sources: Callable[[str, Source], Awaitable[int]],
    client_for: Callable[..., HubClient],
    id_number_of: Callable[..., str],
) -> None:
    source = Source(answering(item(0, REAL_ESTATE, 1, "x")))
    hub = await make_hub(hub_factory, tmp_path, (GZ, await sources(GZ, source)))
    client = client_for(GZ, port=hub.port)
    first = await client.request_verification(request_of(id_number_of, "same"))
    again = await client.request_verification(request_of(id_number_of, "same"))
    assert again.verification_id == first.verification_id
    assert again.replayed
    with pytest.raises(InvalidArgument) as reused:
        await client.request_verification(request_of(id_number_of, "same", item_classes=[VEHICLE]))
    assert reused.value.reason == "REQUEST_ID_REUSED"
    await completed(client, first.verification_id)
    assert len(source.asked) == 1  # asked once, however often it was requested
    with pytest.raises(NotFound):
        await client_for(ZZ, port=hub.port).get_verification(first.verification_id)
    with pytest.raises(NotFound):
        await client.get_verification("vf-nothing")


async def test_a_verification_left_pending_by_a_stopped_hub_is_resumed(
    hub_factory: Any,
    tmp_path: Path,
    sources: Callable[[str, Source], Awaitable[int]],
    client_for: Callable[..., HubClient],
    id_number_of: Callable[..., str],
) -> None:
    release = asyncio.Event()

    asked = asyncio.Event()

    async def wait_then_answer(request: Any, context: Any) -> Any:
        asked.set()
        await release.wait()
        return node_pb2.ProvinceNodeServiceAnswerVerificationResponse(items=[item(0, REAL_ESTATE, 7, "late")])

    source = Source(wait_then_answer)
    port = await sources(GZ, source)
    data_dir = tmp_path / "hub"
    hub = await make_hub(hub_factory, tmp_path, (GZ, port), data_dir=data_dir)
    client = client_for(GZ, port=hub.port)
    started = await client.request_verification(request_of(id_number_of))
    async with asyncio.timeout(5):
        await asked.wait()
    await hub.stop(0)  # mid-verification
    release.set()
    # Its replica is gone; once the lease runs out (here: at once), the next hub takes it over.
    with contextlib.closing(sqlite3.connect(data_dir / "hub.sqlite3")) as con:
        assert con.execute("SELECT state FROM verifications").fetchall() == [(1,)]
        con.execute("UPDATE verifications SET lease_until_us = 0")
        con.commit()
    restarted = await make_hub(hub_factory, tmp_path, (GZ, port), data_dir=data_dir)
    assert restarted.verifier is not None
    client = client_for(GZ, port=restarted.port)
    await completed(client, started.verification_id)
    report = (await client.get_verification(started.verification_id)).report
    assert [i.reference for i in report.items] == ["late"]
    assert await restarted.verifier.resume() == 0  # nothing left to take over
