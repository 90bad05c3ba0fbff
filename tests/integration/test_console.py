"""The hub's console (gateway.console): probes, metrics, token keys and the CRL, against real hubs."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.client import HubClient
from gateway.console.app import make_app
from gateway.domain.model import Program, Purpose
from gateway.errors import StoreUnavailable
from gateway.hub.server import HubServer, load_policy
from hutong.v1 import notification_pb2, person_pb2, records_pb2
from pki import DemoPki
from pki.operator import RevokedEntry, write_public_pem

GZ = "hutong://province/440000/node/gz-01"
DUPLICATE = notification_pb2.EventKind.Value("EVENT_KIND_DUPLICATE_ENROLLMENT")


@pytest.fixture
def crypto_suite() -> str:
    return "intl"


@pytest.fixture
async def console(hub: HubServer) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(hub))) as client:
        yield client


async def sync(client: HubClient, batch_id: str, *records: person_pb2.PersonRecord) -> None:
    async for _ in client.sync([records_pb2.SyncRecordsRequest(batch_id=batch_id, records=records)]):
        pass


async def test_liveness_and_readiness_of_a_serving_hub(console: TestClient[Any, Any]) -> None:
    assert (await console.get("/healthz")).status == 200
    ready = await console.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert body == {
        "ready": True,
        "checks": {"serving": "ok", "store": "ok", "audit_log": "ok", "certificate": "ok"},
    }


async def test_readiness_fails_naming_the_check_when_the_log_cannot_be_written_or_the_hub_drains(
    hub: HubServer, console: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse() -> None:
        raise StoreUnavailable("lost the database connection")

    assert hub.store is not None
    monkeypatch.setattr(hub.store, "ping_writer", refuse)
    failing = await console.get("/readyz")
    assert failing.status == 503
    checks = (await failing.json())["checks"]
    assert checks["audit_log"].startswith("the exchange log cannot be written: lost the database connection")
    assert checks["store"] == "ok"
    monkeypatch.undo()
    hub.draining = True
    draining = await console.get("/readyz")
    assert draining.status == 503
    assert (await draining.json())["checks"]["serving"] == "the hub is stopping"
    assert (await console.get("/healthz")).status == 200  # alive, though not ready


async def test_metrics_count_calls_and_read_the_shared_state(
    console: TestClient[Any, Any],
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    id_number_of: Callable[..., str],
) -> None:
    gd = client_for(GZ)
    await sync(gd, "b-1", make_record("gd-1"), make_record("gd-2", sequence=125))
    await sync(gd, "b-1", make_record("gd-1"), make_record("gd-2", sequence=125))  # a resend: replayed
    for _ in range(3):
        await gd.check_enrollment(id_number_of("440000"), Purpose.DUPLICATE_CHECK, [Program.DIBAO])
    response = await console.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    lines = set(text.splitlines())
    assert 'hutong_rpcs_total{code="OK",method="/hutong.v1.AssistanceQueryService/CheckEnrollment"} 3.0' in lines
    assert 'hutong_rpcs_total{code="OK",method="/hutong.v1.RecordExchangeService/SyncRecords"} 2.0' in lines
    assert 'hutong_rpc_duration_seconds_count{method="/hutong.v1.AssistanceQueryService/CheckEnrollment"} 3.0' in lines
    # From the database: acknowledged once (the replay counts nothing), held, logged.
    assert 'hutong_records_synced{node="gz-01",outcome="created",province="440000"} 2.0' in lines
    assert 'hutong_records_synced{node="gz-01",outcome="updated",province="440000"} 0.0' in lines
    assert 'hutong_records_held{province="440000"} 2.0' in lines
    size = next(float(line.split()[1]) for line in lines if line.startswith("hutong_audit_tree_size "))
    assert size >= 6  # a token, two streams with their batches, three queries
    # No person-level data on the page: no ID number, no name.
    assert id_number_of("440000") not in text


async def test_the_jwks_verifies_the_hubs_access_tokens(
    console: TestClient[Any, Any], client_for: Callable[..., HubClient]
) -> None:
    response = await console.get("/.well-known/jwks.json")
    assert response.status == 200
    keys = (await response.json())["keys"]
    token = dict(await client_for(GZ).call_metadata())["authorization"].split(" ", 1)[1]
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in keys if k["kid"] == kid]
    assert "d" not in jwk  # public keys only
    claims = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], options={"verify_aud": False, "verify_iss": False}
    )
    assert claims["sub"]


async def test_the_crl_is_served_in_der_and_absent_without_one(
    hub_factory: Any, demo_pki: DemoPki, tmp_path: Path
) -> None:
    crl_path = tmp_path / "crl.pem"
    crl = demo_pki.ca.sign_crl(
        [RevokedEntry(4242, dt.datetime.now(dt.UTC))], crl_number=7, next_update=dt.timedelta(days=1)
    )
    write_public_pem(crl_path, crl.public_bytes(serialization.Encoding.PEM), field="crl", overwrite=True)
    with_crl = await hub_factory(crl_path=crl_path)
    without = await hub_factory()
    async with TestClient(TestServer(make_app(with_crl))) as console:
        served = await console.get("/crl")
        assert served.status == 200
        assert served.headers["Content-Type"] == "application/pkix-crl"
        parsed = x509.load_der_x509_crl(await served.read())
        assert parsed.get_revoked_certificate_by_serial_number(4242) is not None
    async with TestClient(TestServer(make_app(without))) as console:
        assert (await console.get("/crl")).status == 404


async def test_the_console_port_speaks_tls_with_the_hub_certificate(hub_factory: Any, demo_pki: DemoPki) -> None:
    hub = await hub_factory(console_listen=("127.0.0.1", 0))
    assert hub.console_port
    trusting = ssl.create_default_context(cadata=demo_pki.hub_tls.ca_pem.decode())
    async with aiohttp.ClientSession() as session:
        # A probe or Prometheus comes without a client certificate.
        async with session.get(f"https://localhost:{hub.console_port}/healthz", ssl=trusting) as response:
            assert response.status == 200
        async with session.get(f"https://localhost:{hub.console_port}/readyz", ssl=trusting) as response:
            assert json.loads(await response.text())["ready"] is True
        # Plain HTTP is not spoken.
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://localhost:{hub.console_port}/healthz") as response:
                await response.read()
    await hub.stop(0)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"https://localhost:{hub.console_port}/healthz", ssl=trusting) as response:
                await response.read()


# -- pages ------------------------------------------------------------------------------------

ZZ = "hutong://province/410000/node/zz-01"
CD = "hutong://province/510000/node/cd-01"  # the ministry's audit desk, in these tests


@pytest.fixture
async def paged_hub(hub_factory: Any, tmp_path: Path) -> HubServer:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[defaults]\nscopes = ["records:write", "query:enrollment"]\n'
        f'[nodes."{CD}"]\nscopes = ["query:enrollment", "audit:read"]\n',
        encoding="utf-8",
    )
    hub: HubServer = await hub_factory(console_listen=("127.0.0.1", 0), policy=load_policy(policy))
    return hub


def as_node(demo_pki: DemoPki, uri: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=demo_pki.hub_tls.ca_pem.decode())
    if uri is not None:
        creds = demo_pki.nodes[uri]
        context.load_cert_chain(creds.cert_path, creds.key_path)
    return context


async def page(hub: HubServer, demo_pki: DemoPki, path: str, uri: str | None) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://localhost:{hub.console_port}{path}", ssl=as_node(demo_pki, uri)) as response,
    ):
        return response.status, await response.text(), response.headers


async def test_pages_need_a_certificate_and_the_role_they_name(paged_hub: HubServer, demo_pki: DemoPki) -> None:
    status, text, headers = await page(paged_hub, demo_pki, "/", None)
    assert status == 401
    assert "needs your certificate" in text
    status, text, headers = await page(paged_hub, demo_pki, "/", GZ)
    assert status == 200
    assert GZ in text
    assert "script-src 'none'" in headers["Content-Security-Policy"]
    status, text, _ = await page(paged_hub, demo_pki, "/provinces", GZ)
    assert status == 403
    assert "admin, audit:read" in text


async def test_the_provinces_page_shows_each_node_and_the_hours_it_synced(
    paged_hub: HubServer,
    demo_pki: DemoPki,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    id_number_of: Callable[..., str],
) -> None:
    await sync(client_for(GZ, port=paged_hub.port), "g-1", make_record("gd-1"), make_record("gd-2", sequence=125))
    await sync(client_for(ZZ, port=paged_hub.port), "h-1", make_record("ha-1", province="410000"))
    status, text, _ = await page(paged_hub, demo_pki, "/provinces", CD)
    assert status == 200
    assert '<tr data-province="440000" data-node="gz-01">' in text
    assert '<tr data-province="410000" data-node="zz-01">' in text
    row = text.split('data-node="gz-01">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="n">2</td>' in row  # held and created
    # This hour's bar holds the three records acknowledged.
    assert 'data-records="3"' in text
    # Counts only: no ID number and no name on the page.
    assert id_number_of("440000") not in text
    static = await page(paged_hub, demo_pki, "/static/console.css", CD)
    assert static[0] == 200
    assert "svg.chart" in static[1]


async def test_a_revoked_certificate_is_no_login(hub_factory: Any, demo_pki: DemoPki, tmp_path: Path) -> None:
    crl_path = tmp_path / "crl.pem"
    serial = x509.load_pem_x509_certificate(demo_pki.nodes[GZ].tls.cert_chain_pem).serial_number
    crl = demo_pki.ca.sign_crl(
        [RevokedEntry(serial, dt.datetime.now(dt.UTC))], crl_number=1, next_update=dt.timedelta(days=1)
    )
    write_public_pem(crl_path, crl.public_bytes(serialization.Encoding.PEM), field="crl", overwrite=True)
    hub = await hub_factory(console_listen=("127.0.0.1", 0), crl_path=crl_path)
    assert (await page(hub, demo_pki, "/", GZ))[0] == 401
    assert (await page(hub, demo_pki, "/", ZZ))[0] == 200


async def test_the_loop_page_counts_what_was_pushed_and_what_came_back(
    paged_hub: HubServer,
    demo_pki: DemoPki,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
) -> None:
    gd, ha = client_for(GZ, port=paged_hub.port), client_for(ZZ, port=paged_hub.port)
    # The same person on dibao in two provinces: both are told.
    await sync(gd, "g-1", make_record("gd-1"))
    await sync(ha, "h-1", make_record("ha-1", province="410000", hukou_province="440000"))
    events = gd.subscribe("0")
    try:
        async with asyncio.timeout(10):
            async for event in events:
                if event.kind == DUPLICATE:
                    await gd.acknowledge_events([event.event_id])
                    break
    finally:
        await events.aclose()
    status, text, _ = await page(paged_hub, demo_pki, "/loop", CD)
    assert status == 200

    def row(province: str) -> list[str]:
        cells = text.split(f'<tr data-province="{province}" data-kind="duplicate enrollment">', 1)[1]
        return [c.split("</td>", 1)[0] for c in cells.split("</tr>", 1)[0].split('class="n">')[1:]]

    assert row("440000") == ["1", "1", "0", "0"]  # pushed, acknowledged, answered, overdue
    assert row("410000") == ["1", "0", "0", "0"]
    assert (await page(paged_hub, demo_pki, "/loop", GZ))[0] == 403
