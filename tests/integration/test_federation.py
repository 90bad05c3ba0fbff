"""Federated record detail over real mTLS: a node asks the hub, the hub asks the holding provinces' nodes.

Every server is real (hub and province nodes on 127.0.0.1, port 0, certificates of the demo CA;
node certificates name 127.0.0.1 so the hub verifies them by address), every exchange log a real
SQLite file, and the nodes answer from :class:`SqliteDetails`, a detail source on a SQLite file of
the test's own. A node that must be slow runs on an event loop of its own, in a thread, so that
its blocked lookups stall that node only, as a slow node on another machine would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway import errors
from gateway.audit import AuditEntry
from gateway.client import HubClient, RetryConfig
from gateway.commands import run_query
from gateway.domain.access import AccessPolicy
from gateway.domain.identity import parse_id_number
from gateway.domain.model import Purpose
from gateway.domain.protection import PersonKeyer
from gateway.hub.disclosure import detail_fields
from gateway.hub.federation import FederationSettings, NodeAddress, NodeDirectory
from gateway.hub.keys import load_or_create_keys
from gateway.hub.server import DATABASE_FILE, HubServer
from gateway.node.serve import AUDIT_DATABASE, DetailSource, NodeServer, NodeServerSettings
from hutong.v1 import node_pb2, node_pb2_grpc, person_pb2, query_pb2, records_pb2
from pki import DemoPki, TlsMaterial

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
CD = "hutong://province/510000/node/cd-01"

#: ZZ asks for details; GZ and CD hold the person's records. GZ has no query:detail.
DETAIL_SCOPES = ["records:write", "query:enrollment", "query:detail"]
POLICY = AccessPolicy.from_mapping({"nodes": {ZZ: {"scopes": DETAIL_SCOPES}}})

HUB_QUERY = "/hutong.v1.AssistanceQueryService/FetchRecordDetail"
NODE_DETAIL = "/hutong.v1.ProvinceNodeService/FetchRecordDetail"


MakeRecord = Callable[..., person_pb2.PersonRecord]
Sync = Callable[..., Awaitable[list[records_pb2.SyncRecordsResponse]]]


@pytest.fixture
def crypto_suite() -> str:
    """Federation does not depend on the hub's crypto suite: one run per test."""
    return "intl"


# -- a detail source on a real SQLite file ---------------------------------------------------------


class SqliteDetails:
    """A DetailSource: record id → the serialized RecordDetail, in a SQLite file."""

    def __init__(self, path: Path) -> None:
        self._con = sqlite3.connect(path, check_same_thread=False)
        self._con.execute("CREATE TABLE IF NOT EXISTS details (record_id TEXT PRIMARY KEY, detail BLOB NOT NULL)")

    def put(self, detail: node_pb2.RecordDetail) -> None:
        """Hold ``detail`` under its record's id."""
        with self._con:
            self._con.execute(
                "INSERT OR REPLACE INTO details VALUES (?, ?)", (detail.record.record_id, detail.SerializeToString())
            )

    def record_detail(self, record_id: str) -> node_pb2.RecordDetail | None:
        """The detail held for ``record_id``, unfiltered."""
        row = self._con.execute("SELECT detail FROM details WHERE record_id = ?", (record_id,)).fetchone()
        return None if row is None else node_pb2.RecordDetail.FromString(row[0])

    def close(self) -> None:
        """Close the file."""
        self._con.close()


class SlowDetails(SqliteDetails):
    """A detail source whose every lookup takes ``delay`` seconds (a node under load)."""

    def __init__(self, path: Path, delay: float) -> None:
        super().__init__(path)
        self.delay = delay

    def record_detail(self, record_id: str) -> node_pb2.RecordDetail | None:
        """The detail, late."""
        time.sleep(self.delay)
        return super().record_detail(record_id)


Details = Callable[..., SqliteDetails]


@pytest.fixture
def details(tmp_path: Path) -> Iterator[Details]:
    """``details(name, delay=0.0)``: a detail source on ``<tmp>/<name>.sqlite``, closed after the test."""
    made: list[SqliteDetails] = []

    def make(name: str, *, delay: float = 0.0) -> SqliteDetails:
        path = tmp_path / f"{name}.sqlite"
        source = SlowDetails(path, delay) if delay else SqliteDetails(path)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def detail_of(record: person_pb2.PersonRecord) -> node_pb2.RecordDetail:
    """What a province node holds for ``record``: the record, extra attributes, where and when it was exported."""
    detail = node_pb2.RecordDetail(
        record=record,
        attributes={"disability_grade": "二级", "caseworker": "王芳"},
        source=node_pb2.RecordSource(file="dibao-2026-11.csv", location="line 42"),
    )
    detail.exported_at.FromDatetime(dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC))
    return detail


# -- servers ---------------------------------------------------------------------------------------


class NodeFactory(Protocol):
    """Starts a province node's federation server on 127.0.0.1, port 0."""

    async def __call__(
        self, uri: str, source: DetailSource, *, hub_name: str = "", tls: TlsMaterial | None = None, port: int = 0
    ) -> NodeServer: ...


@pytest.fixture
async def node_factory(demo_pki: DemoPki, tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Real node servers with the demo node certificates; every one is stopped after the test."""
    started: list[NodeServer] = []

    async def start(
        uri: str, source: DetailSource, *, hub_name: str = "", tls: TlsMaterial | None = None, port: int = 0
    ) -> NodeServer:
        settings = NodeServerSettings(
            data_dir=tmp_path / f"node-{len(started)}",
            tls=tls or demo_pki.nodes[uri].tls,
            host="127.0.0.1",
            port=port,
            hub_name=hub_name,
            checkpoint_seconds=3600.0,
        )
        node = NodeServer(settings, source)
        started.append(node)
        await node.start()
        return node

    yield start
    for node in reversed(started):
        await node.stop(0)


class ThreadedNode:
    """A node server on its own event loop in a thread: a blocked detail source stalls that node only."""

    def __init__(self, settings: NodeServerSettings, source: DetailSource) -> None:
        self.server = NodeServer(settings, source)
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.port = await self.server.start()
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(0)

    def start(self) -> int:
        """Start the thread; returns the bound port."""
        self._thread.start()
        assert self._ready.wait(30), "the threaded node did not start"
        return self.port

    def stop(self) -> None:
        """Stop the server and join the thread."""
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def directory(*nodes: tuple[str, int]) -> NodeDirectory:
    """A federation directory of (node URI, loopback port) pairs."""
    return NodeDirectory(tuple(NodeAddress(uri, uri.split("/")[3], f"127.0.0.1:{port}") for uri, port in nodes))


@contextmanager
def client(demo_pki: DemoPki, uri: str, hub: HubServer, *, deadline: float = 10.0) -> Iterator[HubClient]:
    """A HubClient for ``uri`` whose calls have ``deadline`` seconds (and no retries)."""
    retry = RetryConfig(initial_backoff=0.01, max_backoff=0.05, total_deadline=3.0, max_attempts=1,
                        attempt_timeout=deadline)  # fmt: skip
    yield HubClient(f"localhost:{hub.port}", tls=demo_pki.nodes[uri].tls, retry=retry)


async def fetch(
    demo_pki: DemoPki, hub: HubServer, id_number: str, purpose: Purpose, *, uri: str = ZZ, **options: Any
) -> query_pb2.FetchRecordDetailResponse:
    """FetchRecordDetail as ``uri`` (ZZ: holds query:detail)."""
    deadline = options.pop("deadline", 10.0)
    with client(demo_pki, uri, hub, deadline=deadline) as hub_client:
        try:
            return await hub_client.fetch_record_detail(id_number, purpose, **options)
        finally:
            await hub_client.close()


def log_entries(database: Path) -> list[AuditEntry]:
    """Every entry of an exchange log (the hub's or a node's SQLite file), by index."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as con:
        return [AuditEntry.decode(bytes(e)) for (e,) in con.execute("SELECT entry FROM audit_entries ORDER BY seq")]


def person_key(hub: HubServer, id_number: str) -> str:
    """The hub's person key (hex) of an ID number."""
    keys = load_or_create_keys(hub.settings.data_dir)
    return PersonKeyer(keys.person_key_secret, suite=keys.suite).person_key(parse_id_number(id_number).value).hex()


@dataclass
class Federation:
    """A person held by two provinces (GZ: 440000, CD: 510000), their nodes, and a hub that knows both."""

    hub: HubServer
    gz_node: NodeServer | None
    cd_node: NodeServer | None
    gz_record: person_pb2.PersonRecord
    cd_record: person_pb2.PersonRecord


@pytest.fixture
def person(make_record: MakeRecord) -> tuple[person_pb2.PersonRecord, person_pb2.PersonRecord]:
    """The same person (hukou in Guangdong) as held by GZ and by CD, each with one active dibao."""
    gz = make_record("gz-r1", province="440000", updated_at_us=1_764_000_000_000_000)
    cd = make_record("cd-r7", province="510000", hukou_province="440000", updated_at_us=1_764_000_000_000_000)
    assert gz.id_number == cd.id_number
    return gz, cd


async def sync_to(hub: HubServer, demo_pki: DemoPki, sync_all: Sync, uri: str, record: Any) -> None:
    """Sync one record to the hub as ``uri``."""
    with client(demo_pki, uri, hub) as hub_client:
        try:
            (ack,) = await sync_all(hub_client, [records_pb2.SyncRecordsRequest(batch_id="b1", records=[record])])
        finally:
            await hub_client.close()
    assert list(ack.record_outcomes) == [records_pb2.OUTCOME_CREATED]


FederationFactory = Callable[..., Awaitable[Federation]]


@pytest.fixture
def federation(
    free_port: Callable[[], int],
    details: Details,
    hub_factory: Any,
    node_factory: NodeFactory,
    demo_pki: DemoPki,
    tmp_path: Path,
    sync_all: Sync,
    person: tuple[person_pb2.PersonRecord, person_pb2.PersonRecord],
) -> FederationFactory:
    """``await federation(cd="up"|"down"|"missing"|"unregistered", cd_hub_name=..., **hub_settings)``."""

    async def make(
        *, cd: str = "up", cd_hub_name: str = "", policy: AccessPolicy = POLICY, **settings: Any
    ) -> Federation:
        gz_record, cd_record = person
        gz_source = details("gz-details")
        gz_source.put(detail_of(gz_record))
        cd_source = details("cd-details")
        if cd != "missing":
            cd_source.put(detail_of(cd_record))
        gz_node = await node_factory(GZ, gz_source)
        listed = [(GZ, gz_node.port)]
        cd_node = None
        if cd in ("up", "missing"):
            cd_node = await node_factory(CD, cd_source, hub_name=cd_hub_name)
            listed.append((CD, cd_node.port))
        elif cd == "down":
            listed.append((CD, free_port()))
        hub = await hub_factory(policy=policy, node_directory=directory(*listed), **settings)
        await sync_to(hub, demo_pki, sync_all, GZ, gz_record)
        await sync_to(hub, demo_pki, sync_all, CD, cd_record)
        return Federation(hub, gz_node, cd_node, gz_record, cd_record)

    return make


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed raw call."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            info = error_details_pb2.ErrorInfo()
            assert status_pb2.Status.FromString(value).details[0].Unpack(info)
            return info
    raise AssertionError("no status details")


# -- the hub forwards, the nodes answer, filtered by purpose --------------------------------------


async def test_the_hub_forwards_to_each_holding_province_and_returns_details_filtered_by_purpose(
    federation: FederationFactory, demo_pki: DemoPki
) -> None:
    f = await federation()
    answer = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.DUPLICATE_CHECK)

    assert not answer.failures
    assert [(d.province_code, d.node_uri) for d in answer.details] == [("440000", GZ), ("510000", CD)]
    gz = answer.details[0]
    assert list(gz.disclosed_fields) == sorted(detail_fields(Purpose.DUPLICATE_CHECK))
    # A duplicate check sees who the person is and when each enrollment ran, not what it pays,
    # the province's record id, its extra attributes, or where the record came from.
    assert (gz.record.id_number, gz.record.name) == (f.gz_record.id_number, f.gz_record.name)
    assert gz.record.hukou_division == f.gz_record.hukou_division
    assert gz.record.enrollments[0].start_date == f.gz_record.enrollments[0].start_date
    assert gz.record.enrollments[0].program == person_pb2.PROGRAM_DIBAO
    assert gz.record.enrollments[0].monthly_amount_fen == 0
    assert gz.record.record_id == ""
    assert not gz.record.HasField("updated_at")
    assert not gz.attributes
    assert not gz.HasField("source")
    assert not gz.HasField("exported_at")
    wire = answer.SerializeToString()
    for secret in ("gz-r1", "cd-r7", "二级", "dibao-2026-11.csv"):
        assert secret.encode() not in wire

    follow_up = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.MONITORING_FOLLOW_UP)
    gz, cd = follow_up.details
    assert gz.record == f.gz_record
    assert cd.record == f.cd_record
    assert dict(gz.attributes) == {"disability_grade": "二级", "caseworker": "王芳"}
    assert (gz.source.file, gz.source.location) == ("dibao-2026-11.csv", "line 42")
    assert gz.exported_at.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
    assert set(gz.disclosed_fields) == detail_fields(Purpose.MONITORING_FOLLOW_UP)


async def test_a_province_code_asks_only_that_province(federation: FederationFactory, demo_pki: DemoPki) -> None:
    f = await federation()

    answer = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.AUDIT, province_code="510000")

    assert [d.province_code for d in answer.details] == ["510000"]
    assert answer.details[0].record.record_id == "cd-r7"
    with pytest.raises(errors.InvalidArgument) as bad:
        await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.AUDIT, province_code="440100")
    assert (bad.value.reason, bad.value.field) == ("PROVINCE_CODE_INVALID", "province_code")
    with pytest.raises(errors.NotFound) as absent:
        await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.AUDIT, province_code="410000")
    assert (absent.value.reason, absent.value.field) == ("RECORD_NOT_FOUND", "province_code")


# -- who may ask -------------------------------------------------------------------------------------


async def test_a_node_without_query_detail_is_refused_and_no_node_is_asked(
    federation: FederationFactory, demo_pki: DemoPki
) -> None:
    f = await federation()

    with pytest.raises(errors.PermissionDenied) as refused:
        await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.DUPLICATE_CHECK, uri=GZ)

    assert refused.value.reason == "SCOPE_MISSING"
    assert refused.value.metadata["scope"] == "query:detail"
    assert f.gz_node is not None
    assert f.cd_node is not None
    for node in (f.gz_node, f.cd_node):
        assert log_entries(node.settings.data_dir / AUDIT_DATABASE) == []


async def test_a_purpose_the_policy_does_not_allow_for_details_is_refused(
    federation: FederationFactory, demo_pki: DemoPki
) -> None:
    policy = AccessPolicy.from_mapping(
        {"nodes": {ZZ: {"scopes": DETAIL_SCOPES}}, "scopes": {"query:detail": {"purposes": ["monitoring-follow-up"]}}}
    )
    f = await federation(policy=policy)

    with pytest.raises(errors.PermissionDenied) as refused:
        await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.DUPLICATE_CHECK)
    answer = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.MONITORING_FOLLOW_UP)

    assert (refused.value.reason, refused.value.field) == ("PURPOSE_NOT_ALLOWED", "purpose")
    assert len(answer.details) == 2


async def test_a_node_certificate_calling_a_node_directly_is_permission_denied_and_logged(
    details: Details, node_factory: NodeFactory, demo_pki: DemoPki, tmp_path: Path, make_record: MakeRecord
) -> None:
    source = details("cd-details")
    source.put(detail_of(make_record("cd-r7", province="510000")))
    node = await node_factory(CD, source)
    request = node_pb2.ProvinceNodeServiceFetchRecordDetailRequest(
        record_id="cd-r7",
        purpose=person_pb2.PURPOSE_AUDIT,
        requester=node_pb2.Requester(node_uri=GZ, province_code="440000"),
    )

    async def call(tls: TlsMaterial) -> node_pb2.ProvinceNodeServiceFetchRecordDetailResponse:
        credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", credentials) as channel:
            response: node_pb2.ProvinceNodeServiceFetchRecordDetailResponse = (
                await node_pb2_grpc.ProvinceNodeServiceStub(channel).FetchRecordDetail(request, timeout=10)
            )
            return response

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(demo_pki.nodes[GZ].tls)  # a province asking another province directly
    # The hub's certificate is let in, and sees the record filtered by purpose.
    answer = await call(demo_pki.hub_tls)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(refused.value)
    assert info.reason == "HUB_CERTIFICATE_REQUIRED"
    assert info.metadata["cause_reason"] == "NODE_CERTIFICATE"
    assert answer.detail.record.record_id == "cd-r7"
    assert (answer.detail.province_code, answer.detail.node_uri) == ("510000", CD)
    denied, served = log_entries(node.settings.data_dir / AUDIT_DATABASE)
    assert (denied.method, denied.outcome, denied.caller, denied.subject) == (
        NODE_DETAIL, "PERMISSION_DENIED", GZ, ""
    )  # fmt: skip
    assert (served.outcome, served.caller, served.subject) == ("OK", GZ, "hub:localhost")


async def test_a_node_pinned_to_another_hub_name_refuses_this_hub(
    details: Details, node_factory: NodeFactory, demo_pki: DemoPki, tmp_path: Path, make_record: MakeRecord
) -> None:
    source = details("cd-details")
    source.put(detail_of(make_record("cd-r7", province="510000")))
    node = await node_factory(CD, source, hub_name="hub.mca.example")
    tls = demo_pki.hub_tls
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    request = node_pb2.ProvinceNodeServiceFetchRecordDetailRequest(
        record_id="cd-r7",
        purpose=person_pb2.PURPOSE_AUDIT,
        requester=node_pb2.Requester(node_uri=GZ, province_code="440000"),
    )

    async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await node_pb2_grpc.ProvinceNodeServiceStub(channel).FetchRecordDetail(request, timeout=10)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(refused.value).reason == "HUB_NAME_MISMATCH"


# -- partial answers ------------------------------------------------------------------------------


async def test_a_node_that_is_down_is_a_node_unavailable_failure_while_the_other_province_answers(
    federation: FederationFactory, demo_pki: DemoPki
) -> None:
    f = await federation(cd="down")

    answer = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.ELIGIBILITY_REVIEW)

    assert [(d.province_code, d.record.name) for d in answer.details] == [("440000", f.gz_record.name)]
    assert [(x.province_code, x.reason) for x in answer.failures] == [
        ("510000", query_pb2.DETAIL_FAILURE_REASON_NODE_UNAVAILABLE)
    ]
    assert CD in answer.failures[0].message
    assert f.gz_record.id_number not in answer.failures[0].message


async def test_a_node_refusing_the_hub_is_a_node_refused_failure_and_is_not_asked_again(
    federation: FederationFactory, demo_pki: DemoPki
) -> None:
    f = await federation(cd_hub_name="hub.mca.example")

    answer = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.AUDIT)

    assert [d.province_code for d in answer.details] == ["440000"]
    assert [(x.province_code, x.reason) for x in answer.failures] == [
        ("510000", query_pb2.DETAIL_FAILURE_REASON_NODE_REFUSED)
    ]
    assert "HUB_NAME_MISMATCH" in answer.failures[0].message
    assert f.cd_node is not None
    # PERMISSION_DENIED is never retried: the node saw the question once.
    assert [e.outcome for e in log_entries(f.cd_node.settings.data_dir / AUDIT_DATABASE)] == ["PERMISSION_DENIED"]


async def test_a_node_that_comes_back_within_the_deadline_is_retried_and_answers(
    free_port: Callable[[], int],
    details: Details,
    hub_factory: Any,
    node_factory: NodeFactory,
    demo_pki: DemoPki,
    tmp_path: Path,
    sync_all: Sync,
    person: tuple[person_pb2.PersonRecord, person_pb2.PersonRecord],
) -> None:
    _, cd_record = person
    source = details("cd-details")
    source.put(detail_of(cd_record))
    port = free_port()
    hub = await hub_factory(
        policy=POLICY,
        node_directory=directory((CD, port)),
        federation=FederationSettings(max_attempts=50, initial_backoff=0.02, max_backoff=0.2),
    )
    await sync_to(hub, demo_pki, sync_all, CD, cd_record)

    async def come_back() -> None:
        await asyncio.sleep(0.3)  # the first attempts find nothing listening: UNAVAILABLE, retried
        await node_factory(CD, source, port=port)

    answer, _ = await asyncio.gather(fetch(demo_pki, hub, cd_record.id_number, Purpose.AUDIT), come_back())

    assert not answer.failures
    assert [d.record.record_id for d in answer.details] == ["cd-r7"]


async def test_a_province_without_a_node_in_the_directory_is_node_not_registered(
    federation: FederationFactory, demo_pki: DemoPki
) -> None:
    f = await federation(cd="unregistered")

    answer = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.ELIGIBILITY_REVIEW)

    assert [d.province_code for d in answer.details] == ["440000"]
    assert [(x.province_code, x.reason) for x in answer.failures] == [
        ("510000", query_pb2.DETAIL_FAILURE_REASON_NODE_NOT_REGISTERED)
    ]


async def test_a_slow_node_is_a_deadline_exceeded_failure_within_the_callers_deadline(
    details: Details,
    hub_factory: Any,
    node_factory: NodeFactory,
    demo_pki: DemoPki,
    tmp_path: Path,
    sync_all: Sync,
    person: tuple[person_pb2.PersonRecord, person_pb2.PersonRecord],
) -> None:
    gz_record, cd_record = person
    gz_source = details("gz-details")
    gz_source.put(detail_of(gz_record))
    slow_source = details("cd-details", delay=3.0)
    slow_source.put(detail_of(cd_record))
    gz_node = await node_factory(GZ, gz_source)
    slow = ThreadedNode(
        NodeServerSettings(data_dir=tmp_path / "slow", tls=demo_pki.nodes[CD].tls, host="127.0.0.1", port=0),
        slow_source,
    )
    slow_port = slow.start()
    try:
        hub = await hub_factory(policy=POLICY, node_directory=directory((GZ, gz_node.port), (CD, slow_port)))
        await sync_to(hub, demo_pki, sync_all, GZ, gz_record)
        await sync_to(hub, demo_pki, sync_all, CD, cd_record)

        # The caller gives the call 2 s: the hub gives the nodes that, less its margin, and answers in time
        # (the client would raise DEADLINE_EXCEEDED otherwise) with what the fast province sent.
        answer = await fetch(demo_pki, hub, gz_record.id_number, Purpose.AUDIT, deadline=2.0)
    finally:
        await asyncio.to_thread(slow.stop)

    assert [d.province_code for d in answer.details] == ["440000"]
    assert [(x.province_code, x.reason) for x in answer.failures] == [
        ("510000", query_pb2.DETAIL_FAILURE_REASON_DEADLINE_EXCEEDED)
    ]
    (hub_entry,) = [e for e in log_entries(hub.settings.data_dir / DATABASE_FILE) if e.method == HUB_QUERY]
    assert (hub_entry.outcome, dict(hub_entry.counts)) == ("OK", {"records": 2, "details": 1, "failures": 1})


async def test_a_record_the_node_does_not_hold_is_a_record_not_found_failure(
    federation: FederationFactory, demo_pki: DemoPki, id_number_of: Callable[..., str]
) -> None:
    f = await federation(cd="missing")

    answer = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.AUDIT)

    assert [d.province_code for d in answer.details] == ["440000"]
    assert [(x.province_code, x.reason) for x in answer.failures] == [
        ("510000", query_pb2.DETAIL_FAILURE_REASON_RECORD_NOT_FOUND)
    ]
    # A person the hub holds no record of is NOT_FOUND for the whole call: there is nobody to ask.
    with pytest.raises(errors.NotFound) as unknown:
        await fetch(demo_pki, f.hub, id_number_of("410000", sequence=77), Purpose.AUDIT)
    assert (unknown.value.reason, unknown.value.field) == ("RECORD_NOT_FOUND", "id_number")


# -- audited on both sides -----------------------------------------------------------------------


async def test_the_hub_and_each_node_log_the_call_and_the_nodes_name_the_original_requester(
    federation: FederationFactory, demo_pki: DemoPki
) -> None:
    f = await federation()
    answer = await fetch(demo_pki, f.hub, f.gz_record.id_number, Purpose.CROSS_REGION_APPLICATION)
    assert len(answer.details) == 2

    (hub_entry,) = [e for e in log_entries(f.hub.settings.data_dir / DATABASE_FILE) if e.method == HUB_QUERY]
    assert (hub_entry.caller, hub_entry.province, hub_entry.subject) == (ZZ, "410000", ZZ)
    assert (hub_entry.purpose, hub_entry.outcome) == ("cross-region-application", "OK")
    assert list(hub_entry.person_keys) == [person_key(f.hub, f.gz_record.id_number)]
    assert dict(hub_entry.counts) == {"records": 2, "details": 2, "failures": 0}
    assert f.gz_node is not None
    assert f.cd_node is not None
    for node in (f.gz_node, f.cd_node):
        (node_entry,) = log_entries(node.settings.data_dir / AUDIT_DATABASE)
        assert node_entry.method == NODE_DETAIL
        # The node's entry names who asked the hub, the hub that forwarded it, and the hub's request id.
        assert (node_entry.caller, node_entry.province) == (ZZ, "410000")
        assert node_entry.subject == "hub:localhost"
        assert node_entry.request_id == hub_entry.request_id
        assert (node_entry.purpose, node_entry.outcome) == ("cross-region-application", "OK")
        assert dict(node_entry.counts) == {"records": 1}
        assert node_entry.payload_digest
    # At shutdown each node signs a checkpoint covering its entry.
    await f.gz_node.stop(0)
    with closing(sqlite3.connect(f"file:{f.gz_node.settings.data_dir / AUDIT_DATABASE}?mode=ro", uri=True)) as con:
        assert con.execute("SELECT max(size) FROM audit_checkpoints").fetchone()[0] == 1


# -- the CLI -----------------------------------------------------------------------------------------


async def test_hutong_query_detail_prints_the_details_and_the_provinces_that_failed(
    federation: FederationFactory, demo_pki: DemoPki, capsys: pytest.CaptureFixture[str]
) -> None:
    f = await federation(cd="down")
    options: dict[str, Any] = {
        "hub": f"localhost:{f.hub.port}",
        "id_number": f.gz_record.id_number,
        "purpose": int(Purpose.MONITORING_FOLLOW_UP),
        "programs": [],
        "tls": demo_pki.nodes[ZZ].tls,
        "server_name": None,
    }

    assert await run_query("detail", **options, as_json=True) == 0
    out = capsys.readouterr().out  # the servers' log lines go to stdout too, around the document
    printed, _ = json.JSONDecoder().raw_decode(out, out.index("{\n"))
    assert [d["provinceCode"] for d in printed["details"]] == ["440000"]
    assert printed["details"][0]["record"]["recordId"] == "gz-r1"
    assert [x["reason"] for x in printed["failures"]] == ["DETAIL_FAILURE_REASON_NODE_UNAVAILABLE"]

    assert await run_query("detail", **options, province_code="510000") == 5  # no province answered
    shown = capsys.readouterr().out
    assert "510000" in shown
    assert "node unavailable" in shown
