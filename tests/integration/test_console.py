"""The hub's console (gateway.console): probes, metrics, token keys and the CRL, against real hubs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import shutil
import sqlite3
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

from gateway.audit import AuditEntry, parse_checkpoint, verify_inclusion
from gateway.client import HubClient
from gateway.console.app import make_app
from gateway.domain.model import Program, Purpose
from gateway.errors import StoreUnavailable, Unauthenticated
from gateway.hub.server import HubServer, load_policy
from gateway.hub.tokens import CONSOLE_AUDIENCE
from gateway.store.base import AuditFilter
from hutong.v1 import notification_pb2, person_pb2, records_pb2
from pki import DemoPki
from pki.operator import Registry, RevocationReason, RevokedEntry, format_serial, write_public_pem

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
    assert "present your ministry CA certificate" in text
    assert 'action="/login"' in text
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


# -- login by console token --------------------------------------------------------------------


def console_token(hub: HubServer, *roles: str, subject: str = "auditor:li.na", lifetime: int = 600) -> str:
    assert hub.tokens is not None
    token, _ = hub.tokens.issue(subject, roles, None, audience=CONSOLE_AUDIENCE, lifetime_seconds=lifetime)
    return token


def browser(hub: HubServer, demo_pki: DemoPki) -> aiohttp.ClientSession:
    """A session without a client certificate that keeps cookies, as a browser would."""
    trusting = ssl.create_default_context(cadata=demo_pki.hub_tls.ca_pem.decode())
    return aiohttp.ClientSession(
        base_url=f"https://localhost:{hub.console_port}", connector=aiohttp.TCPConnector(ssl=trusting)
    )


async def log_in(session: aiohttp.ClientSession, token: str, next_path: str = "/") -> aiohttp.ClientResponse:
    async with session.post("/login", data={"token": token, "next": next_path}, allow_redirects=False) as response:
        await response.read()
        return response


async def test_a_console_token_logs_in_with_its_roles_and_logs_out(paged_hub: HubServer, demo_pki: DemoPki) -> None:
    async with browser(paged_hub, demo_pki) as session:
        async with session.get("/provinces") as response:
            assert response.status == 401
            assert 'name="next" value="/provinces"' in await response.text()
        response = await log_in(session, console_token(paged_hub, "audit:read"), "/provinces")
        assert response.status == 303
        assert response.headers["Location"] == "/provinces"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Secure" in cookie
        async with session.get("/provinces") as response:
            assert response.status == 200
            text = await response.text()
        assert "auditor:li.na" in text
        assert 'id="logout"' in text
        async with session.post("/logout", allow_redirects=False) as response:
            assert response.status == 303
        async with session.get("/provinces") as response:
            assert response.status == 401


async def test_login_refuses_api_tokens_expired_tokens_and_foreign_forms(
    paged_hub: HubServer, demo_pki: DemoPki
) -> None:
    assert paged_hub.tokens is not None
    api_token, _ = paged_hub.tokens.issue(GZ, ["admin"], None)
    async with browser(paged_hub, demo_pki) as session:
        refused = await log_in(session, api_token)
        assert refused.status == 401
        async with session.post("/login", data={"token": api_token}) as response:
            assert "this is an API token (audience hutong), not a console login" in await response.text()
        assert (await log_in(session, console_token(paged_hub, "admin", lifetime=-30))).status == 401
        assert (await log_in(session, "not.a.token")).status == 401
        # Only this console's own pages are a destination after login.
        ok = await log_in(session, console_token(paged_hub, "admin"), "//evil.example/")
        assert ok.headers["Location"] == "/"
        async with session.post(
            "/login", data={"token": console_token(paged_hub, "admin")}, headers={"Origin": "https://evil.example"}
        ) as response:
            assert response.status == 403
        async with session.post(
            "/login",
            data={"token": console_token(paged_hub, "admin")},
            headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        ) as response:
            assert response.status == 403
        # What a browser sends from the console's own page (Origin may be null).
        async with session.post(
            "/login",
            data={"token": console_token(paged_hub, "admin")},
            headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
    # The API refuses a console token: another audience.
    with pytest.raises(Unauthenticated, match="Audience doesn't match"):
        paged_hub.tokens.verify(console_token(paged_hub, "admin"), None)


async def test_a_bearer_console_token_works_for_scripts_and_roles_still_apply(
    paged_hub: HubServer, demo_pki: DemoPki
) -> None:
    async with browser(paged_hub, demo_pki) as session:
        headers = {"Authorization": f"Bearer {console_token(paged_hub, 'audit:read')}"}
        async with session.get("/audit", headers=headers) as response:
            assert response.status == 200
        headers = {"Authorization": f"Bearer {console_token(paged_hub, subject='visitor')}"}
        async with session.get("/audit", headers=headers) as response:
            assert response.status == 403


# -- certificates ------------------------------------------------------------------------------


async def test_the_certificates_page_lists_the_registry_and_flags_unpublished_revocations(
    hub_factory: Any,
    demo_pki: DemoPki,
    tmp_path: Path,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
) -> None:
    assert demo_pki.registry_path is not None
    registry_path = tmp_path / "registry.sqlite3"
    shutil.copyfile(demo_pki.registry_path, registry_path)
    registry = Registry.open(registry_path)
    zz = x509.load_pem_x509_certificate(demo_pki.nodes[ZZ].tls.cert_chain_pem)
    registry.revoke(format_serial(zz.serial_number), reason=RevocationReason.KEY_COMPROMISE, at=dt.datetime.now(dt.UTC))
    crl_path = tmp_path / "crl.pem"
    crl = demo_pki.ca.sign_crl([], crl_number=1, next_update=dt.timedelta(days=1))
    write_public_pem(crl_path, crl.public_bytes(serialization.Encoding.PEM), field="crl", overwrite=True)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[defaults]\nscopes = ["records:write"]\n[nodes."{CD}"]\nscopes = ["admin"]\n', encoding="utf-8")
    hub = await hub_factory(
        console_listen=("127.0.0.1", 0), ca_registry=registry_path, crl_path=crl_path, policy=load_policy(policy)
    )
    status, text, _ = await page(hub, demo_pki, "/certificates", CD)
    assert status == 200
    serial = format_serial(zz.serial_number)
    assert f'<tr data-serial="{serial}" data-state="revoked">' in text
    assert 'id="unpublished"' in text
    assert serial in text.split('id="unpublished"', 1)[1].split("</p>", 1)[0]
    gz_serial = format_serial(x509.load_pem_x509_certificate(demo_pki.nodes[GZ].tls.cert_chain_pem).serial_number)
    assert f'<tr data-serial="{gz_serial}" data-state="valid">' in text
    assert 'id="count-revoked">1<' in text
    only_revoked = (await page(hub, demo_pki, "/certificates?state=revoked", CD))[1]
    assert only_revoked.count("<tr data-serial=") == 1
    # The Provinces page shows each node's certificate.
    await sync(client_for(GZ, port=hub.port), "g-1", make_record("gd-1"))
    provinces = (await page(hub, demo_pki, "/provinces", CD))[1]
    row = provinces.split('data-node="gz-01">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="state-valid">valid</td>' in row


async def test_without_a_registry_the_certificates_page_says_how_to_configure_it(
    paged_hub: HubServer, demo_pki: DemoPki
) -> None:
    status, text, _ = await page(paged_hub, demo_pki, "/certificates", CD)
    assert status == 200
    assert "tls.ca_registry" in text


# -- the exchange log and the person page ------------------------------------------------------


@pytest.fixture
async def audited_hub(
    paged_hub: HubServer,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    id_number_of: Callable[..., str],
) -> HubServer:
    """The paged hub after a sync by two provinces and one enrollment question, with a signed checkpoint."""
    await sync(client_for(GZ, port=paged_hub.port), "g-1", make_record("gd-1"))
    # The same person, on dibao in Henan too.
    await sync(
        client_for(ZZ, port=paged_hub.port), "h-1", make_record("ha-1", province="410000", hukou_province="440000")
    )
    await client_for(ZZ, port=paged_hub.port).check_enrollment(id_number_of("440000"), Purpose.DUPLICATE_CHECK)
    assert paged_hub.audit is not None
    await paged_hub.audit.checkpoint()
    return paged_hub


async def log_entries(hub: HubServer) -> list[AuditEntry]:
    assert hub.store is not None
    size, _ = await hub.store.audit_tree()
    return [
        AuditEntry.decode(d) for _, d in await hub.store.audit_entries(AuditFilter(), after=0, limit=10_000, size=size)
    ]


def table_rows(text: str, table_id: str) -> list[str]:
    body = text.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]
    return body.split("<tbody>", 1)[1].split("<tr")[1:]


async def test_the_audit_page_lists_and_filters_the_log_without_naming_persons(
    audited_hub: HubServer, demo_pki: DemoPki
) -> None:
    status, text, _ = await page(audited_hub, demo_pki, "/audit", CD)
    assert status == 200
    methods = [row.split('title="', 1)[1].split(">", 1)[1].split("<", 1)[0] for row in table_rows(text, "entries")]
    assert methods.count("SyncRecords") == 4
    assert "CheckEnrollment" in methods
    size, _root = await audited_hub.store.audit_tree()  # type: ignore[union-attr]
    assert f'id="log-size">{size:,}<' in text
    assert f'<tr data-size="{size}">' in text  # the checkpoint just signed
    # Counts of persons, not their keys.
    for entry in await log_entries(audited_hub):
        for key in entry.person_keys:
            assert key not in text
    status, text, _ = await page(audited_hub, demo_pki, "/audit?method=CheckEnrollment&province=410000", CD)
    assert [r.split("<td>", 3)[2].split("<", 1)[0] for r in table_rows(text, "entries")] == [ZZ]
    status, text, _ = await page(audited_hub, demo_pki, "/audit?since=yesterday", CD)
    assert status == 400
    assert "since: &#39;yesterday&#39; is not a date" in text
    status, text, _ = await page(audited_hub, demo_pki, "/audit?person=440105196005061234&why=audit", CD)
    assert status == 400
    assert "use the Person page" in text


async def test_an_entry_shows_its_inclusion_proof_and_the_view_is_logged(
    audited_hub: HubServer, demo_pki: DemoPki
) -> None:
    entries = await log_entries(audited_hub)
    index = next(i for i, e in enumerate(entries) if e.method.endswith("/CheckEnrollment"))
    status, text, _ = await page(audited_hub, demo_pki, f"/audit/entry/{index}", CD)
    assert status == 200
    assert f"Entry {index} is in the log of {len(entries):,} entries" in text
    assert entries[index].person_keys[0] in text
    # The view named a person: it is in the log, with the viewer and the key.
    view = (await log_entries(audited_hub))[-1]
    assert view.method == "/hutong.hub.Console/ViewAuditEntry"
    assert (view.caller, view.subject, view.purpose) == (CD, CD, "audit")
    assert list(view.person_keys) == list(entries[index].person_keys)
    assert (await page(audited_hub, demo_pki, "/audit/entry/99999", CD))[0] == 404
    # The proof on the page checks against the signed checkpoint.
    proof = [
        li.split("</li>", 1)[0] for li in text.split('id="proof-path">', 1)[1].split("</ol>", 1)[0].split("<li>")[1:]
    ]
    assert audited_hub.store is not None
    note = await audited_hub.store.checkpoint_at(len(entries))
    assert note is not None
    leaf = entries[index].leaf_hash()
    verify_inclusion(leaf, index, len(entries), [bytes.fromhex(h) for h in proof], parse_checkpoint(note).root_hash)


async def test_the_person_page_masks_the_number_logs_the_view_and_reveals_only_with_query_detail(
    audited_hub: HubServer, demo_pki: DemoPki, id_number_of: Callable[..., str]
) -> None:
    number = id_number_of("440000")
    async with browser(audited_hub, demo_pki) as session:
        await log_in(session, console_token(audited_hub, "audit:read"))
        async with session.post("/person", data={"q": number, "why": "audit"}) as response:
            assert response.status == 200
            text = await response.text()
        assert number not in text
        assert f'id="person-id">{number[:4]}{"*" * 10}{number[-4:]}<' in text
        provinces = [row.split('data-province="', 1)[1].split('"', 1)[0] for row in table_rows(text, "person-records")]
        assert sorted(provinces) == ["410000", "440000"]
        view = (await log_entries(audited_hub))[-1]
        assert view.method == "/hutong.hub.Console/ViewPerson"
        assert (view.caller, view.subject, view.purpose) == ("", "auditor:li.na", "audit")
        assert view.counts["records"] == 2
        assert view.counts["revealed"] == 0
        assert number not in json.dumps(view.to_json_object())
        # The search found the entries that touched the person: both syncs and the question.
        methods = [r.split("</td><td>")[3] for r in table_rows(text, "person-entries")]
        assert methods == ["SyncRecords", "SyncRecords", "CheckEnrollment"]
        async with session.post("/person", data={"q": number, "why": "audit", "reveal": "1"}) as response:
            assert response.status == 400
            assert "reveal: showing a full ID number needs the query:detail role" in await response.text()
        async with session.post("/person", data={"q": number}) as response:
            assert response.status == 400
            assert "purpose: state why you look" in await response.text()
        async with session.get("/person", params={"q": number, "why": "audit"}) as response:
            assert response.status == 400  # a number never travels in an address
        size = len(await log_entries(audited_hub))
    async with browser(audited_hub, demo_pki) as session:
        await log_in(session, console_token(audited_hub, "admin", "query:detail", subject="operator:wang"))
        async with session.post("/person", data={"q": number, "why": "duplicate-check", "reveal": "1"}) as response:
            assert f'id="person-id">{number} (revealed, logged)<' in await response.text()
    view = (await log_entries(audited_hub))[-1]
    assert len(await log_entries(audited_hub)) == size + 1
    assert (view.subject, view.purpose, view.counts["revealed"]) == ("operator:wang", "duplicate-check", 1)


async def test_a_view_that_cannot_be_logged_is_not_shown(
    audited_hub: HubServer, demo_pki: DemoPki, id_number_of: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("lost the database connection")

    assert audited_hub.audit is not None
    monkeypatch.setattr(audited_hub.audit, "record", refuse)
    async with browser(audited_hub, demo_pki) as session:
        await log_in(session, console_token(audited_hub, "audit:read"))
        async with session.post("/person", data={"q": id_number_of("440000"), "why": "audit"}) as response:
            assert response.status == 503
            text = await response.text()
    assert "could not be recorded in the exchange log, so it is not shown" in text
    assert "410000" not in text


async def test_the_audit_page_frames_the_hubs_own_verification_and_metrics_report_it(
    audited_hub: HubServer, demo_pki: DemoPki
) -> None:
    assert audited_hub.audit_monitor is not None
    assert audited_hub.store is not None
    status = await audited_hub.audit_monitor.check()
    size, root = await audited_hub.store.audit_tree()
    assert (status.verified_size, status.verified_root, status.problem) == (size, root, None)
    text = (await page(audited_hub, demo_pki, "/audit", CD))[1]
    assert '<iframe class="status" src="/audit/status"' in text
    framed, text, headers = await page(audited_hub, demo_pki, "/audit/status", CD)
    assert framed == 200
    assert f'data-verified="{size}">Verified up to entry {size:,}' in text
    assert '<meta http-equiv="refresh"' in text  # live, without a script
    assert "frame-ancestors 'self'" in headers["Content-Security-Policy"]
    metrics = (await page(audited_hub, demo_pki, "/metrics", None))[1]
    assert f"hutong_audit_verified_size {float(size)}" in metrics
    assert "hutong_audit_inconsistent 0.0" in metrics


async def test_a_rewritten_entry_turns_the_verification_status_red(
    audited_hub: HubServer, demo_pki: DemoPki, client_for: Callable[..., HubClient], id_number_of: Callable[..., str]
) -> None:
    assert audited_hub.audit_monitor is not None
    assert audited_hub.audit is not None
    good = (await audited_hub.audit_monitor.check()).verified_size
    await client_for(ZZ, port=audited_hub.port).check_enrollment(id_number_of("440000"), Purpose.DUPLICATE_CHECK)
    entries = await log_entries(audited_hub)
    index = len(entries) - 1
    forged = dataclasses.replace(entries[index], purpose="audit").encode()
    with contextlib.closing(sqlite3.connect(audited_hub.settings.data_dir / "hub.sqlite3")) as con:
        con.execute("UPDATE audit_entries SET entry = ? WHERE seq = ?", (forged, index))
        con.commit()
    await audited_hub.audit.checkpoint()
    status = await audited_hub.audit_monitor.check()
    assert status.problem_reason == "ROOT_MISMATCH"
    text = (await page(audited_hub, demo_pki, "/audit/status", CD))[1]
    assert f'class="bad" data-verified="{good}">The log does NOT verify beyond entry {good:,}' in text
    metrics = (await page(audited_hub, demo_pki, "/metrics", None))[1]
    assert "hutong_audit_inconsistent 1.0" in metrics


# -- views that write log entries: origin (THREAT_MODEL G12) and what the entry page proves (G13) ---------------


async def get_from(hub: HubServer, demo_pki: DemoPki, path: str, site: str | None, **headers: str) -> tuple[int, str]:
    """GET ``path`` with a certificate login, as a browser that says the request came from ``site``."""
    sent = dict(headers)
    if site is not None:
        sent["Sec-Fetch-Site"] = site
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://localhost:{hub.console_port}{path}", ssl=as_node(demo_pki, CD), headers=sent) as response,
    ):
        return response.status, await response.text()


async def test_views_that_write_log_entries_refuse_requests_from_other_sites(
    audited_hub: HubServer, demo_pki: DemoPki
) -> None:
    entries = await log_entries(audited_hub)
    index = next(i for i, e in enumerate(entries) if e.person_keys)
    key = entries[index].person_keys[0]
    views = {
        f"/audit/entry/{index}": "/hutong.hub.Console/ViewAuditEntry",
        f"/audit?person={key}&why=audit": "/hutong.hub.Console/SearchAuditLog",
        f"/person?q={key}&why=audit": "/hutong.hub.Console/ViewPerson",
    }
    for path, method in views.items():
        size = len(await log_entries(audited_hub))
        # A certificate login goes along with a cross-site link or image: it may not write a view.
        for site, headers in (("cross-site", {}), ("same-site", {}), (None, {"Origin": "https://evil.example"})):
            status, text = await get_from(audited_hub, demo_pki, path, site, **headers)
            assert status == 403, (path, site)
            assert "Nothing was recorded or shown" in text
            shown, link = text.split('id="continue"', 1)
            assert key not in shown  # only in the link that repeats the request from here
            assert f'href="{path.replace("&", "&amp;")}"' in link
            assert len(await log_entries(audited_hub)) == size, (path, site)
        # From the console's own pages, or typed into the address bar, the view is shown and logged.
        for site in ("same-origin", "none", None):
            status, text = await get_from(audited_hub, demo_pki, path, site)
            assert status == 200, (path, site)
            assert key in text
            size += 1
            logged = await log_entries(audited_hub)
            assert len(logged) == size
            assert (logged[-1].method, logged[-1].subject) == (method, CD)


async def test_pages_that_write_nothing_open_from_other_sites(audited_hub: HubServer, demo_pki: DemoPki) -> None:
    entries = await log_entries(audited_hub)
    quiet = next(i for i, e in enumerate(entries) if not e.person_keys)
    size = len(entries)
    for path in ("/audit", f"/audit/entry/{quiet}", "/person"):
        status, _ = await get_from(audited_hub, demo_pki, path, "cross-site")
        assert status == 200, path
    assert len(await log_entries(audited_hub)) == size


async def test_an_entry_rewritten_with_its_stored_leaf_hash_left_alone_is_not_shown_as_proved(
    audited_hub: HubServer, demo_pki: DemoPki
) -> None:
    entries = await log_entries(audited_hub)
    index = next(i for i, e in enumerate(entries) if e.method.endswith("/CheckEnrollment"))
    stored = entries[index].leaf_hash()
    forged = dataclasses.replace(entries[index], purpose="audit")
    with contextlib.closing(sqlite3.connect(audited_hub.settings.data_dir / "hub.sqlite3")) as con:
        con.execute("UPDATE audit_entries SET entry = ? WHERE seq = ?", (forged.encode(), index))  # leaf_hash kept
        con.commit()

    status, text = await get_from(audited_hub, demo_pki, f"/audit/entry/{index}", "same-origin")

    assert status == 200
    # The page hashes the bytes it shows, as `hutong audit prove` does, and says they are not what was logged.
    assert f'id="leaf">{forged.leaf_hash().hex()}<' in text
    assert 'id="leaf-verdict">This entry is NOT what was logged' in text
    assert stored.hex() in text
    assert 'class="notice bad" id="proof-verdict">The proof does NOT verify' in text
    assert f"Entry {index} is in the log" not in text


async def test_an_untouched_entry_shows_the_hash_of_its_bytes_and_no_leaf_problem(
    audited_hub: HubServer, demo_pki: DemoPki
) -> None:
    entries = await log_entries(audited_hub)
    index = next(i for i, e in enumerate(entries) if e.method.endswith("/SyncRecords"))

    status, text = await get_from(audited_hub, demo_pki, f"/audit/entry/{index}", "same-origin")

    assert status == 200
    assert f'id="leaf">{entries[index].leaf_hash().hex()}<' in text
    assert 'id="leaf-verdict"' not in text
    assert f"Entry {index} is in the log" in text
