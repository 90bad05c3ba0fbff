"""The console's Tiers page (gateway.console.pages): persons per tier per province, against a real hub."""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.domain.tiers import load_tier_rules, parse_tier_rules
from gateway.hub.server import HubServer, load_policy
from gateway.store import tiers
from pki import DemoPki

ROOT = Path(__file__).resolve().parents[2]
GZ = "hutong://province/440000/node/gz-01"  # a node: no console role
CD = "hutong://province/510000/node/cd-01"  # the ministry's audit desk, in these tests
#: (province, tier, persons); "legacy" is a tier of older rules, '' the untiered.
DECIDED = [
    ("440000", "core", 3),
    ("440000", "marginal", 1),
    ("440000", "", 2),
    ("410000", "core", 1),
    ("410000", "legacy", 1),
]

#: A bar's segment in the chart: (colour class, width, province, tier, persons).
SEGMENT = re.compile(
    r'<rect class="([^"]+)" x="[^"]+" y="\d+" width="([^"]+)" height="16"'
    r' data-province="(\d+)" data-tier="([^"]*)" data-persons="(\d+)"'
)


@pytest.fixture
def crypto_suite() -> str:
    return "intl"  # the page does not depend on the suite


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


def decide(hub: HubServer, decided: Sequence[tuple[str, str, int]]) -> None:
    """Store tier decisions in the hub's database as its tiering would (this hub runs none: nothing undoes them)."""
    assert hub.store is not None
    engine = hub.store.engine
    con = engine.connect()
    try:
        con.execute(engine.begin)
        for province, tier, persons in decided:
            for n in range(persons):
                tiers.write_decision(
                    con,
                    decided=tiers.Decided(
                        person_key=hashlib.sha256(f"{province}/{tier}/{n}".encode()).digest(),
                        province=province,
                        residence_division=province[:2] + "0106",
                        tier=tier,
                        previous_tier="",
                        evidence="{}",
                        evidence_digest=hashlib.sha256(b"{}").digest(),
                        summary="",
                        changed=bool(tier),
                    ),
                    rules_digest=b"r",
                    standards_digest=b"s",
                    day="2026-03-01",
                    now=1,
                )
        con.execute("COMMIT")
    finally:
        con.close()


def as_node(demo_pki: DemoPki, uri: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=demo_pki.hub_tls.ca_pem.decode())
    creds = demo_pki.nodes[uri]
    context.load_cert_chain(creds.cert_path, creds.key_path)
    return context


async def page(hub: HubServer, demo_pki: DemoPki, uri: str) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://localhost:{hub.console_port}/tiers", ssl=as_node(demo_pki, uri)) as response,
    ):
        return response.status, await response.text(), response.headers


def cells(text: str, province: str) -> list[str]:
    """The numbers of the table row of ``province`` (or "total"), in the columns' order."""
    found = text.split(f'<tr data-province="{province}">', 1)[1].split("</tr>", 1)[0]
    return re.findall(r'<td class="n">([^<]*)</td>', found)


def headings(text: str) -> list[str]:
    """The tier ids of the table's columns, in order ('' for the untiered)."""
    return re.findall(r'<th class="n" data-tier="([^"]*)"', text.split('<table id="tiers">', 1)[1])


async def test_the_tiers_page_counts_and_charts_persons_per_tier_in_the_order_of_the_rules(
    paged_hub: HubServer, demo_pki: DemoPki
) -> None:
    rules = load_tier_rules(ROOT / "deploy" / "tiers.example.toml")
    paged_hub.tier_rules = rules  # as if started with tiers.rules, without its tiering task
    decide(paged_hub, DECIDED)
    status, text, headers = await page(paged_hub, demo_pki, CD)
    assert status == 200, text
    assert "script-src 'none'" in headers["Content-Security-Policy"]
    assert '<dd id="rules-version">2026.1</dd>' in text
    assert f"sha256:{rules.digest.hex()}" in text
    assert '<dd id="persons-decided">8</dd>' in text
    assert "no-tiers" not in text
    # The rules' tiers in their order (nobody in the last two), then older rules' tiers by id, then the untiered.
    assert headings(text) == ["core", "marginal", "rigid_expenditure", "other_monitored", "legacy", ""]
    assert '<th class="n" data-tier="core" title="core">核心保障对象（特困人员、低保对象）</th>' in text
    assert 'data-tier="legacy" title="legacy: not in the rules in force' in text
    assert cells(text, "440000") == ["3", "1", "0", "0", "0", "2", "6"]
    assert cells(text, "410000") == ["1", "0", "0", "0", "1", "0", "2"]
    assert cells(text, "total") == ["4", "1", "0", "0", "1", "2", "8"]
    # The chart: a bar per province, a segment per tier someone is in, on one scale (the largest province: 6).
    chart = text.split('id="tiers-chart"', 1)[1].split("</svg>", 1)[0]
    segments = SEGMENT.findall(chart)
    assert [(cls, p, t, int(n)) for cls, _, p, t, n in segments] == [
        ("t0", "410000", "core", 1),
        ("t4", "410000", "legacy", 1),
        ("t0", "440000", "core", 3),
        ("t1", "440000", "marginal", 1),
        ("untiered", "440000", "", 2),
    ]
    widths = {(p, t): float(w) for _, w, p, t, _ in segments}
    assert widths["440000", "core"] == pytest.approx(3 * widths["410000", "core"], abs=0.2)  # one decimal each
    assert sum(w for (p, _), w in widths.items() if p == "440000") == pytest.approx(520, abs=0.2)
    for tier in rules.tiers:  # the legend names every tier of the rules
        assert f'data-tier="{tier.id}">{tier.label}</text>' in chart
    assert 'data-tier="legacy">legacy (older rules)</text>' in chart
    assert 'data-tier="">Untiered</text>' in chart
    # Counts only: no person key on the page.
    assert hashlib.sha256(b"440000/core/0").hexdigest() not in text


async def test_without_tier_rules_the_page_says_how_to_configure_tiering(
    paged_hub: HubServer, demo_pki: DemoPki
) -> None:
    status, text, _ = await page(paged_hub, demo_pki, CD)
    assert status == 200, text
    notice = text.split('id="no-tiers">', 1)[1].split("</p>", 1)[0]
    for needed in ("<code>tiers.rules</code>", "<code>tiers.standards</code>", "--tier-rules", "--standards"):
        assert needed in notice
    assert '<table id="tiers">' not in text  # nothing decided: no table, no chart
    assert "tiers-chart" not in text
    # Decisions from an earlier configuration are still counted, their tiers by id.
    decide(paged_hub, DECIDED)
    status, text, _ = await page(paged_hub, demo_pki, CD)
    assert "The counts below are decisions made under" in text
    assert headings(text) == ["core", "legacy", "marginal", ""]
    assert cells(text, "total") == ["4", "1", "1", "2", "8"]


async def test_labels_from_the_rules_are_escaped_in_the_table_and_the_chart(
    paged_hub: HubServer, demo_pki: DemoPki
) -> None:
    paged_hub.tier_rules = parse_tier_rules(
        'version = "x"\n[[tiers]]\nid = "core"\nlabel = "<script>alert(1)</script> & co"\n'
        '[tiers.when]\nenrolled = ["dibao"]\n'
    )
    decide(paged_hub, [("440000", "core", 1)])
    status, text, _ = await page(paged_hub, demo_pki, CD)
    assert status == 200
    assert "<script>" not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co") == 3  # the heading, a bar, the legend


async def test_a_node_without_a_console_role_may_not_read_the_tiers(paged_hub: HubServer, demo_pki: DemoPki) -> None:
    decide(paged_hub, DECIDED)
    status, text, _ = await page(paged_hub, demo_pki, GZ)
    assert status == 403
    assert "admin, audit:read" in text
    assert 'data-province="440000"' not in text
