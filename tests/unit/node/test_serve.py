"""The node's federation server in-process: its ``[serve]`` settings, its certificate, and the requests it refuses.

Real servers on port 0, real certificates of the demo CA, a real SQLite exchange log; the hub
is played by a raw channel holding the demo hub certificate.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.audit import AuditEntry
from gateway.errors import ConfigError
from gateway.node.config import load_node_config
from gateway.node.serve import AUDIT_DATABASE, NodeServer, NodeServerSettings
from hutong.v1 import node_pb2, node_pb2_grpc, person_pb2
from pki import DemoPki

CD = "hutong://province/510000/node/cd-01"
GZ = "hutong://province/440000/node/gz-01"


class OneRecord:
    """A detail source holding one record (the protocol needs nothing more)."""

    def record_detail(self, record_id: str) -> node_pb2.RecordDetail | None:
        if record_id != "cd-r7":
            return None
        return node_pb2.RecordDetail(
            province_code="990000",  # a source's own say about the province is overridden
            record=person_pb2.PersonRecord(record_id="cd-r7", name="李秀英", household_id="H-1"),
            attributes={"caseworker": "王芳"},
        )


@pytest.fixture
async def node(demo_pki: DemoPki, tmp_path: Path) -> AsyncIterator[NodeServer]:
    server = NodeServer(
        NodeServerSettings(data_dir=tmp_path / "node", tls=demo_pki.nodes[CD].tls, host="127.0.0.1", port=0),
        OneRecord(),
    )
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture
async def hub_channel(demo_pki: DemoPki, node: NodeServer) -> AsyncIterator[grpc.aio.Channel]:
    tls = demo_pki.hub_tls
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", credentials) as channel:
        yield channel


def request(**fields: object) -> node_pb2.ProvinceNodeServiceFetchRecordDetailRequest:
    base: dict[str, object] = {
        "record_id": "cd-r7",
        "purpose": person_pb2.PURPOSE_ELIGIBILITY_REVIEW,
        "requester": node_pb2.Requester(node_uri=GZ, province_code="440000"),
        "hub_request_id": "hub-req-1",
    }
    base.update(fields)
    return node_pb2.ProvinceNodeServiceFetchRecordDetailRequest(**base)  # type: ignore[arg-type]


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


async def test_the_hub_gets_the_record_filtered_with_the_nodes_own_province_and_uri(
    node: NodeServer, hub_channel: grpc.aio.Channel
) -> None:
    answer = await node_pb2_grpc.ProvinceNodeServiceStub(hub_channel).FetchRecordDetail(request(), timeout=10)

    assert (answer.detail.province_code, answer.detail.node_uri) == ("510000", CD)
    assert (answer.detail.record.name, answer.detail.record.household_id) == ("李秀英", "H-1")
    assert dict(answer.detail.attributes) == {"caseworker": "王芳"}
    assert answer.detail.record.record_id == ""  # not disclosed for an eligibility review
    (entry,) = node_log(node)
    assert (entry.request_id, entry.caller, entry.province, entry.subject, entry.purpose) == (
        "hub-req-1", GZ, "440000", "hub:localhost", "eligibility-review"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "code", "reason", "field"),
    [
        ({"record_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "RECORD_ID_MISSING", "record_id"),
        ({"record_id": "nobody"}, grpc.StatusCode.NOT_FOUND, "RECORD_NOT_FOUND", "record_id"),
        ({"purpose": 0}, grpc.StatusCode.INVALID_ARGUMENT, "PURPOSE_MISSING", "purpose"),
        (
            {"requester": node_pb2.Requester(node_uri="hutong://province/440000/node/GZ", province_code="440000")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUESTER_INVALID",
            "requester.node_uri",
        ),
        (
            {"requester": node_pb2.Requester(node_uri=GZ, province_code="410000")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUESTER_INVALID",
            "requester.province_code",
        ),
        ({"hub_request_id": "x" * 129}, grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_INVALID", "hub_request_id"),
    ],
)
async def test_a_bad_request_is_refused_naming_the_field_and_still_logged(
    node: NodeServer,
    hub_channel: grpc.aio.Channel,
    fields: dict[str, object],
    code: grpc.StatusCode,
    reason: str,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node_pb2_grpc.ProvinceNodeServiceStub(hub_channel).FetchRecordDetail(request(**fields), timeout=10)

    assert refused.value.code() == code
    info = error_info(refused.value)
    assert (info.reason, info.metadata["field"]) == (reason, field)
    (entry,) = node_log(node)
    assert entry.outcome == code.name


async def test_health_is_served_without_a_hub_certificate_check(
    node: NodeServer, hub_channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(hub_channel)
    for service in ("", "hutong.v1.ProvinceNodeService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert node_log(node) == []


def test_a_node_server_needs_the_nodes_own_certificate(demo_pki: DemoPki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        NodeServer(NodeServerSettings(data_dir=tmp_path, tls=demo_pki.hub_tls), OneRecord())

    assert (refused.value.reason, refused.value.field) == ("NODE_CERTIFICATE_REQUIRED", "serve.cert")


def _config(tmp_path: Path, serve: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\ndata_dir = "data"\nprofile = "profile.toml"\n'
        '[hub]\naddress = "hub.example:7443"\nca = "ca.pem"\ncert = "node.pem"\nkey = "node.key"\n' + serve,
        encoding="utf-8",
    )
    return path


def test_the_serve_section_may_pin_the_hub_name_and_give_a_crl(tmp_path: Path) -> None:
    config = load_node_config(
        _config(tmp_path, '[serve]\nlisten = "127.0.0.1:0"\nhub_name = "hub.mca.example"\ncrl = "crl.pem"\n')
    )

    assert (config.serve.host, config.serve.port) == ("127.0.0.1", 0)
    assert config.serve.hub_name == "hub.mca.example"
    assert config.serve.crl == tmp_path / "crl.pem"
    assert load_node_config(_config(tmp_path, "")).serve.hub_name == ""


@pytest.mark.parametrize(
    ("serve", "field"),
    [
        ('[serve]\nhub_name = ""\n', "serve.hub_name"),
        ("[serve]\nhub_name = 7\n", "serve.hub_name"),
        ('[serve]\nhub = "x"\n', "serve.hub"),
    ],
)
def test_a_bad_serve_key_is_named(tmp_path: Path, serve: str, field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_node_config(_config(tmp_path, serve))

    assert refused.value.field == field
