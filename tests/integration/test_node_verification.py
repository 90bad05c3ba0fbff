"""A province node answers the hub's household verifications (AnswerVerification) from its declared sources.

Real node servers on port 0 with the demo PKI's certificates, real source files (a GBK CSV, a JSON
Lines file) declared in a real node.toml and indexed in the node's data directory at start; the hub
is played by a raw channel holding the demo hub certificate, as in the hub's own calls. Each call is
checked in the node's own exchange log too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.audit import AuditEntry
from gateway.client import HubClient
from gateway.domain.identity import make_id_number
from gateway.domain.verification import today_in_china
from gateway.hub.federation import FederationSettings, NodeAddress, NodeDirectory
from gateway.hub.server import load_policy
from gateway.node.config import load_node_config
from gateway.node.serve import AUDIT_DATABASE, NodeServer, NodeServerSettings
from gateway.node.verification import INDEX_DATABASE
from hutong.v1 import node_pb2, node_pb2_grpc, person_pb2, verification_pb2
from pki import DemoPki, TlsMaterial

GZ = "hutong://province/440000/node/gz-01"
CD = "hutong://province/510000/node/cd-01"
METHOD = "/hutong.v1.ProvinceNodeService/AnswerVerification"

LI = make_id_number("510104", dt.date(1958, 3, 9), 21)
WANG = make_id_number("510104", dt.date(1984, 2, 2), 186)
ZHAO = make_id_number("510105", dt.date(1990, 7, 1), 33)
NOBODY = make_id_number("510106", dt.date(1975, 5, 5), 55)

REAL_ESTATE_CSV = (
    "不动产权证号,权利人证件号,坐落,用途,评估价值(元),登记日期\n"
    f'川(2019)成都市不动产权第0012345号,{LI},武侯区XX路XX号,住宅,"980,000.00",2019年4月12日\n'
    f"川(2021)成都市不动产权第0023456号,{WANG},锦江区XX街XX号,车位,120000.5,2021年11月3日\n"
    f"川(2020)成都市不动产权第0034567号,{ZHAO},青羊区XX路XX号,住宅,650000,2020年1月2日\n"
)
BENEFITS = [
    {"id": LI, "kind": "P", "ref": "CDSB-1", "name": "城镇职工基本养老金", "fen": 288_000, "on": "20261031"},
    {"id": LI, "kind": "V", "ref": "川A12345", "name": "小型轿车", "fen": 0, "on": "20180301"},
    {"id": ZHAO, "kind": "P", "ref": "CDSB-2", "name": "城乡居民基本养老金", "fen": 18_800, "on": "20261031"},
]
VERIFICATION = """
[verification]
purposes = ["eligibility-review"]
consent_valid_days = 180

[[verification.sources]]
name = "不动产登记"
file = "sources/real-estate.csv"
format = "csv"
encoding = "gbk"
item_class = "real_estate"
id_number = "权利人证件号"
reference = "不动产权证号"
description = "{用途}, {坐落}"
amount = "评估价值(元)"
amount_unit = "yuan"
as_of = "登记日期"
date_format = "YYYY年M月D日"

[[verification.sources]]
name = "社保与车辆"
file = "sources/benefits.jsonl"
format = "jsonl"
class_column = "kind"
id_number = "id"
reference = "ref"
description = "{name}"
amount = "fen"
amount_unit = "fen"
as_of = "on"
date_format = "YYYYMMDD"

[verification.sources.classes]
P = "pension"
V = "vehicle"
"""


def write_node(directory: Path, demo_pki: DemoPki, verification: str) -> Path:
    """A node directory for CD: its source files and a node.toml declaring them; returns the config."""
    sources = directory / "sources"
    sources.mkdir(parents=True)
    (sources / "real-estate.csv").write_bytes(REAL_ESTATE_CSV.encode("gbk"))
    (sources / "benefits.jsonl").write_text(
        "".join(json.dumps(b, ensure_ascii=False) + "\n" for b in BENEFITS), encoding="utf-8"
    )
    node = demo_pki.nodes[CD]
    config = directory / "node.toml"
    config.write_text(
        '[node]\ndata_dir = "data"\nprofile = "profile.toml"\n'
        f'[hub]\naddress = "127.0.0.1:1"\nca = "{demo_pki.ca_cert_path}"\n'
        f'cert = "{node.cert_path}"\nkey = "{node.key_path}"\n'
        '[serve]\nlisten = "127.0.0.1:0"\nhub_name = "localhost"\n' + verification,
        encoding="utf-8",
    )
    return config


class NoRecords:
    """A detail source holding nothing: these tests ask for verifications only."""

    def record_detail(self, record_id: str) -> node_pb2.RecordDetail | None:
        return None


NodeStarter = Callable[[str], Awaitable[NodeServer]]


@pytest.fixture
async def start_node(demo_pki: DemoPki, tmp_path: Path) -> AsyncIterator[NodeStarter]:
    """Starts CD's node server from a node.toml with the given [verification] section (in process)."""
    started: list[NodeServer] = []

    async def start(verification: str) -> NodeServer:
        config = load_node_config(write_node(tmp_path / f"node-{len(started)}", demo_pki, verification))
        settings = NodeServerSettings(
            data_dir=config.data_dir,
            tls=demo_pki.nodes[CD].tls,
            host="127.0.0.1",
            port=0,
            hub_name=config.serve.hub_name,
            checkpoint_seconds=3600.0,
            verification=config.verification,
        )
        node = NodeServer(settings, NoRecords())
        started.append(node)
        await node.start()
        return node

    yield start
    for node in reversed(started):
        await node.stop(0)


async def answer(
    node: NodeServer, request: node_pb2.ProvinceNodeServiceAnswerVerificationRequest, tls: TlsMaterial
) -> node_pb2.ProvinceNodeServiceAnswerVerificationResponse:
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", credentials) as channel:
        response: node_pb2.ProvinceNodeServiceAnswerVerificationResponse = await node_pb2_grpc.ProvinceNodeServiceStub(
            channel
        ).AnswerVerification(request, timeout=10)
        return response


def question(**fields: object) -> node_pb2.ProvinceNodeServiceAnswerVerificationRequest:
    """The hub's question about the household LI, NOBODY, WANG: real estate and pensions, with today's consent."""
    today = today_in_china()
    base: dict[str, object] = {
        "verification_id": "vf-0123456789abcdef01234567",
        "members": [
            verification_pb2.VerifiedMember(id_number=LI, name="李秀英"),
            verification_pb2.VerifiedMember(id_number=NOBODY, name="张三"),
            verification_pb2.VerifiedMember(id_number=WANG, name="王芳"),
        ],
        "item_classes": [verification_pb2.ITEM_CLASS_REAL_ESTATE, verification_pb2.ITEM_CLASS_PENSION],
        "purpose": person_pb2.PURPOSE_ELIGIBILITY_REVIEW,
        "consent": consent(signed_on=today - dt.timedelta(days=10)),
        "requester": node_pb2.Requester(node_uri=GZ, province_code="440000"),
        "hub_request_id": "vf-0123456789abcdef01234567/2",
    }
    base.update(fields)
    return node_pb2.ProvinceNodeServiceAnswerVerificationRequest(**base)  # type: ignore[arg-type]


def consent(*, signed_on: dt.date) -> verification_pb2.Consent:
    return verification_pb2.Consent(
        consent_id="GZ-SQ-2026-0042",
        document_sha256="ab" * 32,
        signed_on=person_pb2.Date(year=signed_on.year, month=signed_on.month, day=signed_on.day),
    )


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            info = error_details_pb2.ErrorInfo()
            assert status_pb2.Status.FromString(value).details[0].Unpack(info)
            return info
    raise AssertionError("no status details")


def node_log(node: NodeServer) -> list[AuditEntry]:
    database = node.settings.data_dir / AUDIT_DATABASE
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as con:
        return [AuditEntry.decode(bytes(e)) for (e,) in con.execute("SELECT entry FROM audit_entries ORDER BY seq")]


async def test_the_hub_gets_the_items_of_the_members_and_classes_asked_each_marked(
    demo_pki: DemoPki, start_node: NodeStarter
) -> None:
    node = await start_node(VERIFICATION)

    response = await answer(node, question(), demo_pki.hub_tls)

    items = [
        (i.member_index, i.item_class, i.sensitivity, i.reference, i.amount_fen, (i.as_of.year, i.as_of.month))
        for i in response.items
    ]
    assert items == [
        (0, verification_pb2.ITEM_CLASS_REAL_ESTATE, verification_pb2.SENSITIVITY_GENERAL,
         "川(2019)成都市不动产权第0012345号", 98_000_000, (2019, 4)),
        (0, verification_pb2.ITEM_CLASS_PENSION, verification_pb2.SENSITIVITY_SENSITIVE, "CDSB-1", 288_000, (2026, 10)),
        (2, verification_pb2.ITEM_CLASS_REAL_ESTATE, verification_pb2.SENSITIVITY_GENERAL,
         "川(2021)成都市不动产权第0023456号", 12_000_050, (2021, 11)),
    ]  # fmt: skip
    # LI's vehicle was not asked for; ZHAO is not a member; NOBODY is held by no source.
    assert [i.description for i in response.items] == [
        "住宅, 武侯区XX路XX号",
        "城镇职工基本养老金",
        "车位, 锦江区XX街XX号",
    ]
    assert all(i.source_uri == "" for i in response.items)  # the hub sets it
    assert response.answer_id == "vf-0123456789abcdef01234567/2"

    (entry,) = node_log(node)
    assert (entry.method, entry.request_id, entry.caller, entry.province, entry.subject, entry.outcome) == (
        METHOD, "vf-0123456789abcdef01234567/2", GZ, "440000", "hub:localhost", "OK"
    )  # fmt: skip
    assert entry.purpose == "eligibility-review"
    assert dict(entry.counts) == {"members": 3, "classes": 2, "items": 3, "real_estate": 2, "pension": 1}
    assert list(entry.person_keys) == []
    assert not any(number.encode() in entry.encode() for number in (LI, WANG, NOBODY))


async def test_members_are_answered_by_their_position_even_the_15_digit_form(
    demo_pki: DemoPki, start_node: NodeStarter
) -> None:
    node = await start_node(VERIFICATION)
    first_generation = LI[:6] + LI[8:17]  # the 1989 form: no century, no check character
    members = [
        verification_pb2.VerifiedMember(id_number=ZHAO),
        verification_pb2.VerifiedMember(id_number=first_generation),
    ]

    response = await answer(
        node,
        question(members=members, item_classes=[verification_pb2.ITEM_CLASS_VEHICLE]),
        demo_pki.hub_tls,
    )

    assert [(i.member_index, i.item_class, i.reference) for i in response.items] == [
        (1, verification_pb2.ITEM_CLASS_VEHICLE, "川A12345")
    ]


@pytest.mark.parametrize(
    ("fields", "code", "reason", "field"),
    [
        (
            {"purpose": person_pb2.PURPOSE_MONITORING_FOLLOW_UP},
            grpc.StatusCode.PERMISSION_DENIED,
            "PURPOSE_NOT_SERVED",
            "purpose",
        ),
        ({"purpose": 0}, grpc.StatusCode.INVALID_ARGUMENT, "PURPOSE_MISSING", "purpose"),
        (
            {"consent": consent(signed_on=dt.datetime.now(dt.UTC).date() - dt.timedelta(days=181))},
            grpc.StatusCode.FAILED_PRECONDITION,
            "CONSENT_EXPIRED",
            "consent.signed_on",
        ),
        ({"consent": None}, grpc.StatusCode.INVALID_ARGUMENT, "CONSENT_MISSING", "consent.consent_id"),
        (
            {
                "members": [
                    verification_pb2.VerifiedMember(id_number=LI),
                    verification_pb2.VerifiedMember(id_number="x"),
                ]
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "ID_NUMBER_MALFORMED",
            "members[1].id_number",
        ),
        ({"members": []}, grpc.StatusCode.INVALID_ARGUMENT, "MEMBERS_INVALID", "members"),
        (
            {"members": [verification_pb2.VerifiedMember(id_number=LI), verification_pb2.VerifiedMember(id_number=LI)]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "MEMBER_DUPLICATE",
            "members[1].id_number",
        ),
        ({"item_classes": []}, grpc.StatusCode.INVALID_ARGUMENT, "ITEM_CLASSES_MISSING", "item_classes"),
        ({"item_classes": [4, 0]}, grpc.StatusCode.INVALID_ARGUMENT, "ITEM_CLASS_UNKNOWN", "item_classes[1]"),
        (
            {"requester": node_pb2.Requester(node_uri=GZ, province_code="510000")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUESTER_INVALID",
            "requester.province_code",
        ),
    ],
    ids=[
        "purpose-not-served",
        "no-purpose",
        "consent-expired",
        "no-consent",
        "bad-id-number",
        "no-members",
        "member-twice",
        "no-classes",
        "unknown-class",
        "requester-elsewhere",
    ],
)
async def test_a_question_the_node_does_not_answer_is_refused_naming_the_field_and_logged(
    demo_pki: DemoPki,
    start_node: NodeStarter,
    fields: dict[str, object],
    code: grpc.StatusCode,
    reason: str,
    field: str,
) -> None:
    node = await start_node(VERIFICATION)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await answer(node, question(**fields), demo_pki.hub_tls)

    assert refused.value.code() == code
    info = error_info(refused.value)
    assert (info.reason, info.metadata["field"]) == (reason, field)
    (entry,) = node_log(node)
    assert (entry.method, entry.outcome) == (METHOD, code.name)


async def test_a_bad_id_number_is_named_by_position_never_echoed(demo_pki: DemoPki, start_node: NodeStarter) -> None:
    node = await start_node(VERIFICATION)
    typo = LI[:17] + ("0" if LI[17] != "0" else "1")
    members = [verification_pb2.VerifiedMember(id_number=WANG), verification_pb2.VerifiedMember(id_number=typo)]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await answer(node, question(members=members), demo_pki.hub_tls)

    info = error_info(refused.value)
    assert (info.reason, info.metadata["field"]) == ("ID_NUMBER_BAD_CHECK_CHARACTER", "members[1].id_number")
    said = (refused.value.details() or "") + json.dumps(dict(info.metadata))
    assert typo not in said
    assert re.search(r"\d{15}", said) is None


async def test_a_node_certificate_is_refused_and_its_knock_logged(demo_pki: DemoPki, start_node: NodeStarter) -> None:
    node = await start_node(VERIFICATION)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await answer(node, question(), demo_pki.nodes[GZ].tls)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(refused.value).reason == "HUB_CERTIFICATE_REQUIRED"
    (entry,) = node_log(node)
    assert (entry.method, entry.caller, entry.outcome) == (METHOD, GZ, "PERMISSION_DENIED")
    assert dict(entry.counts) == {}


async def test_a_node_without_sources_says_it_takes_no_part(demo_pki: DemoPki, start_node: NodeStarter) -> None:
    node = await start_node("")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await answer(node, question(), demo_pki.hub_tls)

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "VERIFICATION_NOT_SERVED"
    assert not (node.settings.data_dir / INDEX_DATABASE).exists()
    (entry,) = node_log(node)
    assert (entry.method, entry.purpose, entry.outcome) == (METHOD, "eligibility-review", "FAILED_PRECONDITION")


async def test_every_call_is_an_entry_of_the_nodes_exchange_log(demo_pki: DemoPki, start_node: NodeStarter) -> None:
    node = await start_node(VERIFICATION)
    outcomes = []
    for n, purpose in enumerate(
        [person_pb2.PURPOSE_ELIGIBILITY_REVIEW, person_pb2.PURPOSE_AUDIT, person_pb2.PURPOSE_ELIGIBILITY_REVIEW]
    ):
        try:
            await answer(node, question(purpose=purpose, hub_request_id=f"vf-1/{n}"), demo_pki.hub_tls)
            outcomes.append("OK")
        except grpc.aio.AioRpcError as exc:
            outcomes.append(exc.code().name)

    entries = node_log(node)
    assert [(e.request_id, e.outcome) for e in entries] == [
        ("vf-1/0", "OK"), ("vf-1/1", "PERMISSION_DENIED"), ("vf-1/2", "OK")
    ]  # fmt: skip
    assert outcomes == [e.outcome for e in entries]


def test_node_serve_indexes_the_sources_at_start_and_only_changed_ones_at_a_restart(
    demo_pki: DemoPki, tmp_path: Path
) -> None:
    """``hutong node serve --config node.toml`` in a real process, started twice; its log never holds a number."""
    config = write_node(tmp_path / "node", demo_pki, VERIFICATION)
    logs = []
    for run in range(2):
        if run == 1:  # the pensions file changes between the runs; the property file does not
            jsonl = config.parent / "sources" / "benefits.jsonl"
            jsonl.write_text(jsonl.read_text(encoding="utf-8").replace("288000", "290000"), encoding="utf-8")
        port_file, log_path = tmp_path / f"node-{run}.port", tmp_path / f"node-{run}.log"
        command = [sys.executable, "-m", "gateway.cli", "node", "serve", "--config", str(config)]
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [*command, "--port-file", str(port_file)], stdout=out, stderr=out, env=os.environ
            )
        try:
            deadline = time.monotonic() + 60
            while not port_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the node did not start: {log_path.read_text(encoding='utf-8')}")
                time.sleep(0.05)
            tls = demo_pki.hub_tls
            credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
            with grpc.secure_channel(f"127.0.0.1:{int(port_file.read_text())}", credentials) as channel:
                response = node_pb2_grpc.ProvinceNodeServiceStub(channel).AnswerVerification(question(), timeout=10)
            assert [i.amount_fen for i in response.items] == [98_000_000, 288_000 if run == 0 else 290_000, 12_000_050]
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
        logs.append(log_path.read_text(encoding="utf-8"))

    assert logs[0].count("verification_source_indexed") == 2
    assert logs[1].count("verification_source_unchanged") == 1
    assert logs[1].count("verification_source_indexed") == 1
    for text in logs:
        assert not any(number in text for number in (LI, WANG, ZHAO, NOBODY))


async def test_a_hub_verification_gets_real_sources_answers_and_names_the_province_that_is_down(
    free_port: Callable[[], int],
    demo_pki: DemoPki,
    start_node: NodeStarter,
    hub_factory: Any,
    tmp_path: Path,
    client_for: Callable[..., HubClient],
) -> None:
    """The issue's case end to end: three provinces asked, Sichuan's node answers from its files, one is down."""
    sichuan = await start_node(VERIFICATION)
    henan_down = free_port()
    gz_source = await start_node("")  # a node with no [verification]: it takes no part, and says so
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[nodes."{GZ}"]\nscopes = ["records:write", "verification:request"]\n', encoding="utf-8")
    directory = NodeDirectory(
        (
            NodeAddress(GZ, "440000", f"127.0.0.1:{gz_source.port}", "127.0.0.1"),
            NodeAddress("hutong://province/410000/node/zz-01", "410000", f"127.0.0.1:{henan_down}"),
            NodeAddress(CD, "510000", f"127.0.0.1:{sichuan.port}", "127.0.0.1"),
        )
    )
    hub = await hub_factory(
        policy=load_policy(policy),
        node_directory=directory,
        federation=FederationSettings(verification_seconds=2.0, max_backoff=0.2),
    )
    client = client_for(GZ, port=hub.port)
    request = verification_pb2.RequestVerificationRequest(
        request_id="gz-2026-0001",
        members=[verification_pb2.VerifiedMember(id_number=LI), verification_pb2.VerifiedMember(id_number=NOBODY)],
        consent=consent(signed_on=today_in_china() - dt.timedelta(days=1)),
        purpose=person_pb2.PURPOSE_ELIGIBILITY_REVIEW,
        item_classes=[verification_pb2.ITEM_CLASS_REAL_ESTATE, verification_pb2.ITEM_CLASS_PENSION],
    )
    started = await client.request_verification(request)
    assert hub.verifier is not None
    await hub.verifier.wait(started.verification_id)
    answer = await client.get_verification(started.verification_id)
    assert answer.state == verification_pb2.VERIFICATION_STATE_COMPLETE
    outcomes = {s.province_code: (s.outcome, s.items) for s in answer.report.sources}
    assert outcomes == {
        "510000": (verification_pb2.SOURCE_OUTCOME_ANSWERED, 2),  # LI's flat and pension
        "410000": (verification_pb2.SOURCE_OUTCOME_FAILED, 0),  # down: named, the rest still reported
        "440000": (verification_pb2.SOURCE_OUTCOME_REFUSED, 0),  # serves no verification
    }
    refused = next(s for s in answer.report.sources if s.province_code == "440000")
    assert "VERIFICATION_NOT_SERVED" in refused.reason
    items = {(i.item_class, i.reference): i for i in answer.report.items}
    flat = items[verification_pb2.ITEM_CLASS_REAL_ESTATE, "川(2019)成都市不动产权第0012345号"]
    assert (flat.member_index, flat.amount_fen, flat.source_uri) == (0, 98_000_000, CD)
    assert items[verification_pb2.ITEM_CLASS_PENSION, "CDSB-1"].sensitivity == verification_pb2.SENSITIVITY_SENSITIVE
    # Sichuan's own log holds the leg under the hub's leg id, as the hub's log does.
    leg = next(s for s in answer.report.sources if s.province_code == "510000")
    with closing(sqlite3.connect(sichuan.settings.data_dir / AUDIT_DATABASE)) as con:
        ids = {row[0] for row in con.execute("SELECT entry FROM audit_entries")}
    assert any(json.loads(entry)["request_id"] == leg.answer_id for entry in ids)
