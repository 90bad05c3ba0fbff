"""The hub's trust boundary through real gRPC: mTLS, node identity, insecure mode, health and reflection."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.client import HubClient
from gateway.domain.model import Purpose
from gateway.errors import ConfigError, HutongError, Unauthenticated
from gateway.hub.server import HubServer, HubSettings
from gateway.rpc_status import INSECURE_IDENTITY_KEY, error_from_rpc
from hutong.v1 import records_pb2, records_pb2_grpc
from pki import CertificateAuthority, DemoPki, NodeIdentity, TlsMaterial, generate_key, write_node_credentials

GZ = "hutong://province/440000/node/gz-01"

Sync = Callable[..., Awaitable[list[records_pb2.SyncRecordsResponse]]]


def secure_channel(
    port: int, *, ca_pem: bytes, key_pem: bytes | None = None, chain_pem: bytes | None = None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(ca_pem, key_pem, chain_pem)
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def assert_nothing_written(client: HubClient, id_number: str) -> None:
    state = await client.get_sync_state()
    assert (state.batches_applied, state.records_held) == (0, 0)
    answer = await client.check_enrollment(id_number, Purpose.AUDIT)
    assert not any(r.enrolled for r in answer.results)


# -- mTLS --------------------------------------------------------------------------------------


async def test_client_certificate_from_another_ca_is_refused_and_writes_nothing(
    demo_pki: DemoPki,
    hub: HubServer,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    tmp_path: Path,
) -> None:
    rogue_ca = CertificateAuthority.create("Rogue CA")
    # Same node identity as a real node, same server trust: only the issuing CA differs.
    rogue = write_node_credentials(rogue_ca, tmp_path / "rogue", NodeIdentity("440000", "gz-01"))
    tls = TlsMaterial(
        cert_chain_pem=rogue.tls.cert_chain_pem,
        private_key_pem=rogue.tls.private_key_pem,
        ca_pem=demo_pki.hub_tls.ca_pem,
    )
    impostor = client_for(tls=tls)
    rec = make_record("r1")
    with pytest.raises(HutongError) as caught:
        async for _ in impostor.sync([records_pb2.SyncRecordsRequest(batch_id="b1", records=[rec])]):
            pass  # pragma: no cover - no acknowledgement may arrive
    assert caught.value.code_name == "UNAVAILABLE"
    with pytest.raises(HutongError) as unary:
        await impostor.get_sync_state()
    assert unary.value.code_name == "UNAVAILABLE"
    await assert_nothing_written(client_for(GZ), rec.id_number)


async def test_connection_without_a_client_certificate_is_refused(
    demo_pki: DemoPki, hub: HubServer, client_for: Callable[..., HubClient], make_record: Callable[..., Any]
) -> None:
    rec = make_record("r1")
    async with secure_channel(hub.port, ca_pem=demo_pki.hub_tls.ca_pem) as channel:
        stub = records_pb2_grpc.RecordExchangeServiceStub(channel)
        call = stub.SyncRecords(iter([records_pb2.SyncRecordsRequest(batch_id="b1", records=[rec])]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await assert_nothing_written(client_for(GZ), rec.id_number)


async def test_certificate_without_a_node_identity_is_unauthenticated(
    demo_pki: DemoPki,
    hub: HubServer,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    sync_all: Sync,
) -> None:
    # The hub's own server certificate chains to the CA and allows client auth, but names no node.
    nameless = client_for(tls=demo_pki.hub_tls)
    with pytest.raises(Unauthenticated) as unary:
        await nameless.get_sync_state()
    assert unary.value.reason == "NODE_IDENTITY_MISSING"
    rec = make_record("r1")
    with pytest.raises(Unauthenticated) as stream:
        await sync_all(nameless, [records_pb2.SyncRecordsRequest(batch_id="b1", records=[rec])])
    assert stream.value.reason == "NODE_IDENTITY_MISSING"
    await assert_nothing_written(client_for(GZ), rec.id_number)


async def test_a_second_node_of_a_province_is_known_by_its_own_name(
    demo_pki: DemoPki, hub: HubServer, client_for: Callable[..., HubClient], tmp_path: Path
) -> None:
    extra = write_node_credentials(demo_pki.ca, tmp_path / "extra", NodeIdentity("440000", "sz-02"))
    state = await client_for(tls=extra.tls).get_sync_state()
    assert (state.province_code, state.node_name) == ("440000", "sz-02")


def hand_made_client_tls(
    ca: CertificateAuthority, uris: Sequence[str], *, not_before: dt.datetime, not_after: dt.datetime
) -> TlsMaterial:
    """A client certificate signed by ``ca`` with exactly the SAN URIs and validity given."""
    key = generate_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return TlsMaterial.from_objects([cert], key, [ca.cert])


async def test_certificate_naming_two_nodes_is_unauthenticated(
    demo_pki: DemoPki, hub: HubServer, client_for: Callable[..., HubClient]
) -> None:
    now = dt.datetime.now(dt.UTC)
    tls = hand_made_client_tls(
        demo_pki.ca,
        ["hutong://province/440000/node/gz-01", "hutong://province/410000/node/zz-01"],
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=1),
    )
    with pytest.raises(Unauthenticated) as caught:
        await client_for(tls=tls).get_sync_state()
    assert caught.value.reason == "NODE_IDENTITY_AMBIGUOUS"


async def test_expired_client_certificate_is_refused_at_the_tls_layer(
    demo_pki: DemoPki, hub: HubServer, client_for: Callable[..., HubClient]
) -> None:
    now = dt.datetime.now(dt.UTC)
    tls = hand_made_client_tls(
        demo_pki.ca, [GZ], not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1)
    )
    with pytest.raises(HutongError) as caught:
        await client_for(tls=tls).get_sync_state()
    assert caught.value.code_name == "UNAVAILABLE"


# -- health and reflection ---------------------------------------------------------------------


async def test_health_check_answers_serving(demo_pki: DemoPki, hub: HubServer) -> None:
    node = demo_pki.nodes[GZ].tls
    async with secure_channel(
        hub.port, ca_pem=node.ca_pem, key_pem=node.private_key_pem, chain_pem=node.cert_chain_pem
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hutong.v1.RecordExchangeService", "hutong.v1.AssistanceQueryService"):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_hutong_services(demo_pki: DemoPki, hub: HubServer) -> None:
    node = demo_pki.nodes[GZ].tls
    async with secure_channel(
        hub.port, ca_pem=node.ca_pem, key_pem=node.private_key_pem, chain_pem=node.cert_chain_pem
    ) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        responses = [r async for r in call]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"hutong.v1.RecordExchangeService", "hutong.v1.AssistanceQueryService", "grpc.health.v1.Health"} <= names


async def test_health_reports_not_serving_once_shutdown_begins(hub_factory: Any, demo_pki: DemoPki) -> None:
    hub = await hub_factory()
    node = demo_pki.nodes[GZ].tls
    async with secure_channel(
        hub.port, ca_pem=node.ca_pem, key_pem=node.private_key_pem, chain_pem=node.cert_chain_pem
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await hub.stop(grace=1)
        statuses = []
        # The watch may end with a status error as the server goes away; only what it said counts.
        with contextlib.suppress(grpc.aio.AioRpcError):
            while (message := await watch.read()) is not grpc.aio.EOF:
                statuses.append(message.status)
        assert statuses[:1] == [health_pb2.HealthCheckResponse.NOT_SERVING]


# -- configuration and insecure mode -------------------------------------------------------------


# S104: binding every interface is exactly what the hub must refuse here.
@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "hub.example.org", "::"])  # noqa: S104
def test_insecure_mode_refuses_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HubServer(HubSettings(data_dir=tmp_path, host=host, insecure=True))
    assert (caught.value.reason, caught.value.field) == ("INSECURE_NOT_LOOPBACK", "host")


def test_a_hub_without_tls_material_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        HubServer(HubSettings(data_dir=tmp_path))
    assert caught.value.reason == "TLS_MISSING"


async def test_insecure_hub_on_loopback_takes_the_caller_from_metadata(
    hub_factory: Any, client_for: Callable[..., HubClient], make_record: Callable[..., Any], sync_all: Sync
) -> None:
    plain = await hub_factory(insecure=True)
    named = client_for(port=plain.port, insecure_identity=GZ)
    (ack,) = await sync_all(named, [records_pb2.SyncRecordsRequest(batch_id="b1", records=[make_record("r1")])])
    assert list(ack.record_outcomes) == [records_pb2.OUTCOME_CREATED]
    state = await named.get_sync_state()
    assert (state.province_code, state.node_name, state.records_held) == ("440000", "gz-01", 1)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        pytest.param((), "CALLER_UNKNOWN", id="no-metadata"),
        pytest.param(((INSECURE_IDENTITY_KEY, "hutong://province/99/node/x"),), "NODE_IDENTITY_INVALID", id="bad-uri"),
    ],
)
async def test_insecure_hub_needs_the_caller_named_in_metadata(
    hub_factory: Any, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    plain = await hub_factory(insecure=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plain.port}") as channel:
        stub = records_pb2_grpc.RecordExchangeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetSyncState(records_pb2.GetSyncStateRequest(), metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    error = error_from_rpc(caught.value.code(), caught.value.details(), caught.value.trailing_metadata())
    assert error.reason == reason


async def test_a_tls_hub_ignores_the_insecure_identity_metadata(
    demo_pki: DemoPki, hub: HubServer, client_for: Callable[..., HubClient], bearer: Callable[..., Any]
) -> None:
    # A real node cannot pose as another province by adding the debug metadata.
    node = demo_pki.nodes[GZ].tls
    async with secure_channel(
        hub.port, ca_pem=node.ca_pem, key_pem=node.private_key_pem, chain_pem=node.cert_chain_pem
    ) as channel:
        stub = records_pb2_grpc.RecordExchangeServiceStub(channel)
        state = await stub.GetSyncState(
            records_pb2.GetSyncStateRequest(),
            metadata=((INSECURE_IDENTITY_KEY, "hutong://province/410000/node/zz-01"), *await bearer(GZ)),
            timeout=10,
        )
    assert (state.province_code, state.node_name) == ("440000", "gz-01")


async def test_errors_carry_error_info_with_the_hutong_domain(
    demo_pki: DemoPki, hub: HubServer, bearer: Callable[..., Any]
) -> None:
    from google.rpc import error_details_pb2, status_pb2

    from hutong.v1 import query_pb2, query_pb2_grpc

    node = demo_pki.nodes[GZ].tls
    async with secure_channel(
        hub.port, ca_pem=node.ca_pem, key_pem=node.private_key_pem, chain_pem=node.cert_chain_pem
    ) as channel:
        stub = query_pb2_grpc.AssistanceQueryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckEnrollment(
                query_pb2.CheckEnrollmentRequest(id_number="x"), metadata=await bearer(GZ), timeout=10
            )
    details = dict(caught.value.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("PURPOSE_MISSING", "hutong", {"field": "purpose"})
