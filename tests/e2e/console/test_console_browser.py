"""The hub's web console in a real headless Chromium: log in by client certificate, read the pages.

A real hub (HTTPS console with the hub's certificate, demo CA) holds a little synced data; the
browser (drive.cjs, playwright-core) presents a node's certificate as a person would, follows the
console's own links and reads what is shown: statuses, titles, table cells. Screenshots of every
page land in build/test-artifacts/console/<test name>/ (see conftest.py).

To cover another page: add an entry to ``TOUR`` (how to get there) with a check of what it shows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.client import HubClient
from gateway.domain.identity import make_id_number
from gateway.hub.server import HubServer, load_policy
from gateway.hub.tokens import CONSOLE_AUDIENCE
from hutong.v1 import notification_pb2, person_pb2, records_pb2
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"  # a node: no console role
ZZ = "hutong://province/410000/node/zz-01"  # a node, and the ministry's operator: admin
CD = "hutong://province/510000/node/cd-01"  # the ministry's audit desk: audit:read
#: The person make_record builds by default (hukou in Guangzhou's Haizhu district), held by 440000 and 410000.
PERSON = make_id_number("440106", dt.date(1960, 5, 6), 123)
DUPLICATE = notification_pb2.EventKind.Value("EVENT_KIND_DUPLICATE_ENROLLMENT")

Capture = dict[str, Any]
Step = dict[str, Any]
Browse = Callable[..., Awaitable[dict[str, Capture]]]


@pytest.fixture
def crypto_suite() -> str:
    return "intl"  # the pages do not depend on the suite: one browser run per test is enough


@pytest.fixture
async def console_hub(hub_factory: Any, demo_pki: DemoPki, tmp_path: Path) -> HubServer:
    """A hub serving its console on HTTPS, with an auditor (CD) and an operator (ZZ) in its policy."""
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[defaults]\nscopes = ["records:write", "query:enrollment"]\n'
        f'[nodes."{CD}"]\nscopes = ["audit:read"]\n'
        f'[nodes."{ZZ}"]\nscopes = ["records:write", "query:enrollment", "admin"]\n',
        encoding="utf-8",
    )
    hub: HubServer = await hub_factory(
        console_listen=("127.0.0.1", 0), policy=load_policy(policy), ca_registry=demo_pki.registry_path
    )
    assert hub.console_port
    return hub


async def sync(client: HubClient, batch_id: str, *records: person_pb2.PersonRecord) -> None:
    async for _ in client.sync([records_pb2.SyncRecordsRequest(batch_id=batch_id, records=records)]):
        pass


@pytest.fixture
async def synced_hub(
    console_hub: HubServer,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
) -> HubServer:
    """Two provinces synced: 440000 two people, 410000 one of them again (a duplicate dibao).

    440000 acknowledges the duplicate it is told of; nothing else is acknowledged or answered.
    Then a checkpoint is signed and the hub's own check of its log has run.
    """
    gz, zz = client_for(GZ, port=console_hub.port), client_for(ZZ, port=console_hub.port)
    await sync(gz, "g-1", make_record("gd-1"), make_record("gd-2", sequence=125))
    await sync(zz, "h-1", make_record("ha-1", province="410000", hukou_province="440000"))
    events = gz.subscribe("0")
    try:
        async with asyncio.timeout(10):
            async for event in events:
                if event.kind == DUPLICATE:
                    await gz.acknowledge_events([event.event_id])
                    break
    finally:
        await events.aclose()
    assert console_hub.audit is not None
    assert console_hub.audit_monitor is not None
    await console_hub.audit.checkpoint()
    await console_hub.audit_monitor.check()
    return console_hub


def base_url(hub: HubServer) -> str:
    # "localhost": the name in the hub's certificate, and the origin the client certificate is for.
    return f"https://localhost:{hub.console_port}"


def certificate(demo_pki: DemoPki, uri: str) -> tuple[Path, Path]:
    creds = demo_pki.nodes[uri]
    return Path(creds.cert_path), Path(creds.key_path)


def table(capture: Capture, table_id: str) -> list[dict[str, str]]:
    """The body rows of table #table_id as {header: cell text}: checks survive new columns."""
    for found in capture["tables"]:
        if found["id"] == table_id:
            header, *rows = found["rows"]
            return [dict(zip(header, row, strict=True)) for row in rows]
    raise AssertionError(f"no table #{table_id} on {capture['url']}: {[t['id'] for t in capture['tables']]}")


def assert_clean(capture: Capture) -> None:
    """A page served and shown whole: 200, its stylesheet loaded, nothing refused by the CSP or failed."""
    assert capture["status"] == 200, capture["text"]
    assert capture["title"].endswith("· Hutong 互通")
    assert capture["problems"] == []


# -- the tour: the pages a viewer with a console role reads, in order ---------------------------


@dataclass(frozen=True)
class Viewer:
    uri: str
    roles: str  # as the overview lists them


AUDITOR = Viewer(CD, "audit:read")
OPERATOR = Viewer(ZZ, "admin")


def nav(path: str) -> Step:
    """Follow the console's own link in the header, as a person would."""
    return {"click": f'header nav a[href="{path}"]'}


def check_overview(page: Capture, viewer: Viewer) -> None:
    assert_clean(page)
    assert page["title"].startswith("Overview")
    assert viewer.uri in page["text"]
    assert f"Roles\n{viewer.roles}\n" in page["text"]  # the <dt> and its <dd>
    assert "3 in 2 provinces" in page["text"]  # records held
    assert {"viewer-uri", "viewer-roles", "audit-size", "records-held"} <= set(page["ids"])


def check_provinces(page: Capture, viewer: Viewer) -> None:
    assert_clean(page)
    assert page["url"].endswith("/provinces")
    rows = {(row["Province"], row["Node"]): row for row in table(page, "provinces")}
    assert set(rows) == {("440000", "gz-01"), ("410000", "zz-01")}
    gz, zz = rows["440000", "gz-01"], rows["410000", "zz-01"]
    assert (gz["Batches"], gz["Records held"], gz["Created"], gz["Updated"], gz["Rejected"]) == (
        "1",
        "2",
        "2",
        "0",
        "0",
    )
    assert (zz["Batches"], zz["Records held"], zz["Created"], zz["Updated"], zz["Rejected"]) == (
        "1",
        "1",
        "1",
        "0",
        "0",
    )
    # Each was told of the duplicate; 440000 acknowledged that, not its resident enrolled in 410000.
    assert (gz["Unacknowledged"], gz["Overdue"]) == ("1", "0")
    assert (zz["Unacknowledged"], zz["Overdue"]) == ("1", "0")
    assert gz["Last sync (UTC)"] != "never"
    # The chart (inline SVG): this hour's bar holds the three records acknowledged.
    assert "synced-per-hour" in page["ids"]
    assert "peak 3/h" in page["text"]


def check_loop(page: Capture, viewer: Viewer) -> None:
    assert_clean(page)
    assert page["url"].endswith("/loop")
    counts = {
        (row["Province"], row["Event"]): (row["Pushed"], row["Acknowledged"], row["Answered"], row["Overdue"])
        for row in table(page, "loop")
    }
    assert counts == {
        ("440000", "duplicate enrollment"): ("1", "1", "0", "0"),
        ("440000", "resident enrolled elsewhere"): ("1", "0", "0", "0"),  # its hukou, enrolled in 410000
        ("410000", "duplicate enrollment"): ("1", "0", "0", "0"),
    }


def check_audit(page: Capture, viewer: Viewer) -> None:
    assert_clean(page)
    assert page["title"].startswith("Exchange log")
    methods = [row["Method"] for row in table(page, "entries")]
    assert methods.count("SyncRecords") == 4  # each call and its batch
    assert "IssueToken" in methods
    outcomes = {row["Method"]: row["Outcome"] for row in table(page, "entries")}
    assert outcomes.pop("Subscribe") == "CANCELLED"  # the node closed its notification stream
    assert set(outcomes.values()) == {"OK"}
    assert table(page, "checkpoints")[0]["Size"] != ""
    assert {"verification", "audit-search", "log-size"} <= set(page["ids"])


def check_status(page: Capture, viewer: Viewer) -> None:
    # The frame the Audit page shows: the hub's own check, done once by the fixture.
    assert page["status"] == 200
    assert page["text"].startswith("Verified up to entry ")
    assert "monitor" in page["ids"]


def check_person(page: Capture, viewer: Viewer) -> None:
    assert_clean(page)
    number = PERSON
    assert number not in page["text"]
    assert f"{number[:4]}{'*' * 10}{number[-4:]}" in page["text"]
    held = table(page, "person-records")
    assert sorted(row["Province"] for row in held) == ["410000", "440000"]
    assert {row["Programme"] for row in held} == {"dibao"}
    assert [row["Programme"] for row in table(page, "person-findings")] == ["dibao"]
    assert [row["Method"] for row in table(page, "person-entries")] == ["SyncRecords", "SyncRecords"]


def check_entry(page: Capture, viewer: Viewer) -> None:
    assert_clean(page)
    assert page["title"].startswith("Entry ")
    assert "/hutong.v1.RecordExchangeService/SyncRecords" in page["text"]
    assert "the proof below verifies" in page["text"]
    assert {"proof-verdict", "proof-path", "leaf"} <= set(page["ids"])


def check_certificates(page: Capture, viewer: Viewer) -> None:
    assert_clean(page)
    rows = {row["Holder"]: row for row in table(page, "certificates")}
    for uri in (GZ, ZZ, CD):
        assert rows[uri]["State"] == "valid"
        assert rows[uri]["Kind"] == "node"
    assert {row["Kind"] for row in rows.values()} == {"root", "hub", "node"}
    assert "no-crl" in page["ids"]  # this hub enforces no CRL, and says so


def check_tiers(page: Capture, viewer: Viewer) -> None:
    assert_clean(page)
    assert page["url"].endswith("/tiers")
    # This hub runs without tier rules and has decided nothing: the page says how to configure tiering.
    assert "no-tiers" in page["ids"]
    assert "This hub does not tier" in page["text"]
    for needed in ("tiers.rules", "tiers.standards", "--tier-rules", "--standards"):
        assert needed in page["text"]
    assert [t["id"] for t in page["tables"]] == []  # nothing counted: no table, no chart
    assert "tiers-chart" not in page["ids"]


PERSON_SEARCH: Sequence[Step] = (
    nav("/person"),
    {"fill": 'input[name="q"]', "value": PERSON},
    {"select": 'select[name="why"]', "value": "audit"},
)

#: (capture name, how to get there from the previous page, what must be shown).
TOUR: Sequence[tuple[str, Sequence[Step], Callable[[Capture, Viewer], None]]] = (
    ("overview", [{"goto": "/"}], check_overview),
    ("provinces", [nav("/provinces")], check_provinces),
    ("loop", [nav("/loop")], check_loop),
    ("audit", [nav("/audit")], check_audit),
    ("person", [*PERSON_SEARCH, {"click": "#look-up"}], check_person),
    ("entry", [{"click": "#person-entries tbody tr:first-child a"}], check_entry),
    ("certificates", [nav("/certificates")], check_certificates),
    ("tiers", [nav("/tiers")], check_tiers),
    ("audit-status", [{"goto": "/audit/status"}], check_status),  # the Audit page's frame, alone
)


@pytest.mark.parametrize("viewer", [AUDITOR, OPERATOR], ids=["auditor", "operator"])
async def test_a_viewer_logs_in_by_certificate_and_reads_every_page(
    synced_hub: HubServer, demo_pki: DemoPki, console_browser: Browse, viewer: Viewer
) -> None:
    steps: list[Step] = []
    for name, how, _ in TOUR:
        steps += [*how, {"capture": name}]
    pages = await console_browser(base_url(synced_hub), steps, certificate=certificate(demo_pki, viewer.uri))
    assert list(pages) == [name for name, _, _ in TOUR]
    for name, _, check in TOUR:
        check(pages[name], viewer)


# -- who may not ------------------------------------------------------------------------------


async def test_without_a_certificate_the_console_asks_for_a_login(
    console_hub: HubServer, console_browser: Browse
) -> None:
    pages = await console_browser(
        base_url(console_hub),
        [{"goto": "/"}, {"capture": "overview"}, {"goto": "/provinces"}, {"capture": "provinces"}],
    )
    for page in pages.values():
        assert page["status"] == 401
        assert page["title"].startswith("Log in")
        assert "certificate" in page["text"]
        assert {"token", "login"} <= set(page["ids"])  # the console token form: its field and button
        assert "viewer" not in page["ids"]  # nobody is named in the header
    assert pages["provinces"]["url"].endswith("/provinces")  # asked in place, not redirected


async def test_a_console_token_logs_in_through_the_form_and_logs_out(
    synced_hub: HubServer, console_browser: Browse
) -> None:
    assert synced_hub.tokens is not None
    token, _ = synced_hub.tokens.issue(
        "auditor:li.na", ["audit:read"], None, audience=CONSOLE_AUDIENCE, lifetime_seconds=600
    )
    pages = await console_browser(
        base_url(synced_hub),
        [
            {"goto": "/provinces"},
            {"fill": "#token", "value": "not-a-console-token"},
            {"click": "#login"},
            {"capture": "token-refused"},
            {"fill": "#token", "value": token},
            {"click": "#login"},
            {"capture": "logged-in"},
            {"click": "#logout"},
            {"capture": "logged-out"},
            {"goto": "/provinces"},
            {"capture": "after-logout"},
        ],
    )
    refused = pages["token-refused"]
    assert refused["status"] == 401, refused["text"]
    assert "login-error" in refused["ids"]
    assert "not accepted" in refused["text"]
    logged_in = pages["logged-in"]
    check_provinces(logged_in, AUDITOR)  # back where the login was asked for
    assert "auditor:li.na · audit:read" in logged_in["text"]
    assert pages["logged-out"]["url"].endswith("/login")
    assert pages["after-logout"]["status"] == 401


async def test_a_node_without_a_console_role_is_told_which_roles_it_needs(
    console_hub: HubServer, demo_pki: DemoPki, console_browser: Browse
) -> None:
    pages = await console_browser(
        base_url(console_hub),
        [
            {"goto": "/"},
            {"capture": "overview"},
            {"goto": "/provinces"},
            {"capture": "provinces"},
            {"goto": "/loop"},
            {"capture": "loop"},
        ],
        certificate=certificate(demo_pki, GZ),
    )
    overview = pages["overview"]
    assert_clean(overview)  # logged in: the overview needs no role
    assert GZ in overview["text"]
    assert "none: ask the ministry for admin or audit:read" in overview["text"]
    for name in ("provinces", "loop"):
        page = pages[name]
        assert page["status"] == 403
        assert page["title"].startswith("Not allowed")
        assert "admin, audit:read" in page["text"]
        assert GZ in page["text"]  # the header says who was refused
        assert not {"provinces", "loop", "synced-per-hour"} & set(page["ids"])  # no table, no chart
