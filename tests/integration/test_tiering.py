"""Tiered identification on a real hub (gateway.hub.tiering): decided as data arrives, re-tiered as standards change.

Guangzhou's households (residence 440106) under the example tier rules (deploy/tiers.example.toml)
and a dibao line of 1,230 yuan (rural, the rules' reading of an unknown area): on dibao → core;
no programme and income below 1.5 × the line → marginal; below 2 × → other monitored; above →
no tier.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditEntry
from gateway.client import HubClient
from gateway.domain.standards import StandardsRegistry, parse_standards
from gateway.domain.tiers import TierRules, load_tier_rules, reproduce
from gateway.hub.server import HubServer
from gateway.store.base import AuditFilter
from hutong.v1 import person_pb2, records_pb2

GZ = "hutong://province/440000/node/gz-01"
ROOT = Path(__file__).resolve().parents[2]
TIER_CHANGED = 9


@pytest.fixture
def crypto_suite() -> str:
    return "intl"


def standards(dibao_yuan: int) -> StandardsRegistry:
    text = (
        "division,standard,monthly_yuan,effective_from,document\n"
        f"440100,dibao_rural,{dibao_yuan},2025-01-01,穗民规字〔2025〕3号\n"
        f"440100,dibao_urban,{dibao_yuan},2025-01-01,穗民规字〔2025〕3号\n"
    )
    parsed = parse_standards(text)
    assert not parsed.rejected
    return StandardsRegistry.from_files(parsed)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The hub's database: SQLite in its data directory, or a schema of the test PostgreSQL server."""
    return "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def rules() -> TierRules:
    return load_tier_rules(ROOT / "deploy" / "tiers.example.toml")


def household(household_id: str, record_id: str, income_yuan: int) -> person_pb2.Household:
    head = person_pb2.HouseholdMember(record_id=record_id, relation=person_pb2.HOUSEHOLD_RELATION_HEAD)
    return person_pb2.Household(
        household_id=household_id,
        version=1 if income_yuan < 4000 else 2,
        residence_division="440106",
        members=[head],
        monthly_income_per_member_fen=income_yuan * 100,
    )


async def sync(client: HubClient, batch_id: str, records: list[Any], households: list[Any]) -> None:
    request = records_pb2.SyncRecordsRequest(batch_id=batch_id, records=records, households=households)
    async for _ in client.sync([request]):
        pass


async def tiers_of(hub: HubServer, keys: dict[str, bytes]) -> dict[str, tuple[str, dict[str, Any]]]:
    """record id of each person → (tier, evidence)."""
    assert hub.store is not None
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for record_id, key in keys.items():
        stored = await hub.store.tier_of(key)
        if stored is not None:
            out[record_id] = (stored.tier, json.loads(stored.evidence))
    return out


async def tier_events(hub: HubServer) -> list[tuple[str, str, list[str]]]:
    assert hub.store is not None
    return [
        (e.body.get("previousTier", ""), e.body.get("tier", ""), e.body.get("recordIds", []))
        for e in await hub.store.events_after("440000", 0)
        if e.kind == TIER_CHANGED
    ]


async def test_persons_are_tiered_as_they_arrive_and_retiered_when_a_standard_changes(
    hub_factory: Any,
    tmp_path: Path,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    rules: TierRules,
    id_number_of: Callable[..., str],
    store_url: str,
) -> None:
    data_dir = tmp_path / "hub"
    hub = await hub_factory(
        data_dir=data_dir, store_url=store_url, tier_rules=rules, standards=standards(1230), tier_seconds=3600.0
    )
    gz = client_for(GZ, port=hub.port)
    none: list[person_pb2.Enrollment] = []
    await sync(
        gz,
        "b1",
        [
            make_record("on-dibao", sequence=101),
            make_record("poor", sequence=102, enrollments=none, household_id="h-poor"),
            make_record("near", sequence=103, enrollments=none, household_id="h-near"),
            make_record("well", sequence=104, enrollments=none, household_id="h-well"),
        ],
        [household("h-poor", "poor", 1500), household("h-near", "near", 2000), household("h-well", "well", 3000)],
    )
    assert hub.tierer is not None
    await hub.tierer.settle()
    keys = {
        record_id: hub.keyer.person_key(id_number_of("440000", sequence=sequence))  # type: ignore[union-attr]
        for record_id, sequence in (("on-dibao", 101), ("poor", 102), ("near", 103), ("well", 104))
    }
    decided = await tiers_of(hub, keys)
    assert {r: t for r, (t, _) in decided.items()} == {
        "on-dibao": "core",
        "poor": "marginal",  # 1,500 < 1.5 × 1,230 = 1,845
        "near": "other_monitored",  # 2,000 < 2 × 1,230 = 2,460
        "well": "",  # no tier
    }
    # The evidence reproduces every decision, standards and thresholds included.
    for tier, evidence in decided.values():
        assert (reproduce(evidence, rules).tier or "") == tier
    assert decided["poor"][1]["standards"]["dibao_rural"]["document"] == "穗民规字〔2025〕3号"
    assert any("unknown" in a for a in decided["poor"][1]["assumptions"])  # households carry no area
    # The province is told of each tier it now has to act on; "well" stayed out of every tier.
    assert sorted(await tier_events(hub)) == [
        ("", "core", ["on-dibao"]),
        ("", "marginal", ["poor"]),
        ("", "other_monitored", ["near"]),
    ]
    assert hub.store is not None
    counts = {(c.province, c.tier): c.persons for c in await hub.store.tier_counts()}
    assert counts == {
        ("440000", ""): 1,
        ("440000", "core"): 1,
        ("440000", "marginal"): 1,
        ("440000", "other_monitored"): 1,
    }

    # A household's income rises: its member leaves the marginal tier, and the province is told.
    await sync(gz, "b2", [], [household("h-poor", "poor", 5000)])
    await hub.tierer.settle()
    assert (await tiers_of(hub, keys))["poor"][0] == ""
    assert ("marginal", "", ["poor"]) in await tier_events(hub)

    # Guangzhou raises its dibao line to 1,400 yuan: "near" (2,000 < 1.5 × 1,400 = 2,100) becomes
    # marginal when the hub runs with the new standards; nobody else changes.
    before = len(await tier_events(hub))
    await hub.stop(0)
    hub = await hub_factory(
        data_dir=data_dir, store_url=store_url, tier_rules=rules, standards=standards(1400), tier_seconds=3600.0
    )
    assert hub.tierer is not None
    await hub.tierer.settle()
    assert {r: t for r, (t, _) in (await tiers_of(hub, keys)).items()} == {
        "on-dibao": "core",
        "poor": "",
        "near": "marginal",
        "well": "",
    }
    assert (await tier_events(hub))[before:] == [("other_monitored", "marginal", ["near"])]
    # The new registry is an entry of the exchange log, and so is the round that changed a tier.
    assert hub.store is not None
    size, _ = await hub.store.audit_tree()
    methods = [
        AuditEntry.decode(d).method
        for _, d in await hub.store.audit_entries(AuditFilter(), after=0, limit=10_000, size=size)
    ]
    assert methods.count("/hutong.hub.Operator/LoadStandards") == 2
    assert methods.count("/hutong.hub.Operator/LoadTierRules") == 1
    assert "/hutong.hub.Tierer/DecideTiers" in methods


async def test_without_tier_rules_nothing_is_marked(hub: HubServer) -> None:
    assert hub.tierer is None
    assert hub.store is not None
    assert not hub.store.tiering
    assert await hub.store.tier_counts() == []
