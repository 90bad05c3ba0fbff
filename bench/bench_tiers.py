"""Tiering benchmark (分层分类): how fast the hub decides tiers, and re-tiers a province when its line rises.

Run: ``.venv/bin/python bench/bench_tiers.py [--persons 200000]``

A national rule change re-tiers everyone: at 66 million persons the rate below says how long the
hub's tiers lag behind. In one run, on this machine, a hub runs in this process (SQLite, FULL
durability, mTLS, the example rules ``deploy/tiers.example.toml`` and standards
``deploy/standards.example.csv``) with its background tiering idle, so that each phase is timed
alone:

1. **ingest** of ``--persons`` synthetic Guangdong persons with their households (declared
   incomes drawn around the local lines), once into a hub without tier rules and once into one
   with them: the ratio is what marking persons in the batch's transaction costs;
2. **decide** everyone marked by the ingest (``Tierer.settle``: read inputs, evaluate, store each
   decision with its evidence and a ``TIER_CHANGED`` event, one exchange-log entry a chunk);
3. **baseline**: the same decisions evaluated in memory from inputs already read (no store), the
   rule engine alone;
4. **re-tier**: the hub takes a registry with Guangdong's provincial dibao line raised by 100
   yuan from the first of this month (what a restart with the new file does: the registry is
   kept and logged, the residents of the prefectures that follow the provincial line are marked),
   and decides them again; those whose tier changed are pushed.

It prints each figure, the ratios and the projection to 66 million persons.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from gateway.client import HubClient
from gateway.demo.population import PopulationSpec, iter_province_records
from gateway.domain.standards import StandardsRegistry, load_standards, parse_standards
from gateway.domain.tiers import load_tier_rules
from gateway.domain.verification import today_in_china
from gateway.hub.server import HubServer, HubSettings
from gateway.logs import configure_logging
from hutong.v1 import person_pb2, records_pb2
from pki import DemoPki, write_demo_pki

ROOT = Path(__file__).resolve().parents[1]
PROVINCE = "440000"
NODE = f"hutong://province/{PROVINCE}/node/bench-01"
BATCH = 1000
NATIONAL = 66_000_000


def batches(persons: int, seed: int) -> list[records_pb2.SyncRecordsRequest]:
    """The persons' records in batches, each with the households its records name (incomes seeded)."""
    rng = random.Random(seed)
    records = iter_province_records(PopulationSpec((PROVINCE,), persons, seed=seed), PROVINCE)
    out: list[records_pb2.SyncRecordsRequest] = []
    while chunk := list(itertools.islice(records, BATCH)):
        households: dict[str, person_pb2.Household] = {}
        for record in chunk:
            if not record.household_id:
                continue
            household = households.get(record.household_id)
            if household is None:
                # Per-member incomes from 300 to 2,800 yuan a month: around the lines (800-1,230), so
                # that every tier is populated and a 100-yuan rise moves some households.
                household = households[record.household_id] = person_pb2.Household(
                    household_id=record.household_id,
                    version=1,
                    residence_division=record.residence_division,
                    monthly_income_per_member_fen=rng.randrange(300, 2800) * 100,
                )
            relation = (
                person_pb2.HOUSEHOLD_RELATION_HEAD if not household.members else person_pb2.HOUSEHOLD_RELATION_OTHER
            )
            household.members.add(record_id=record.record_id, relation=relation)
        out.append(
            records_pb2.SyncRecordsRequest(
                batch_id=f"tiers-{len(out)}", records=chunk, households=list(households.values())
            )
        )
    return out


def raised(base: StandardsRegistry, day: dt.date) -> StandardsRegistry:
    """The registry with Guangdong's provincial dibao lines 100 yuan higher from the first of ``day``'s month."""
    start = day.replace(day=1).isoformat()
    text = (
        "division,standard,monthly_yuan,effective_from,document\n"
        f"440000,dibao_urban,1080,{start},粤民规字〔2026〕1号\n"
        f"440000,dibao_rural,930,{start},粤民规字〔2026〕1号\n"
    )
    extra = parse_standards(text)
    assert not extra.rejected, extra.rejected
    return StandardsRegistry([*base, *extra.values])


async def ingest(hub: HubServer, pki: DemoPki, requests: list[records_pb2.SyncRecordsRequest]) -> tuple[float, int]:
    """Stream the batches; seconds taken and records acknowledged as created."""
    client = HubClient(f"localhost:{hub.port}", tls=pki.nodes[NODE].tls)
    created = 0
    try:
        started = time.perf_counter()
        async for response in client.sync(requests):
            created += response.record_counts.created
        return time.perf_counter() - started, created
    finally:
        await client.close()


async def run(args: argparse.Namespace, root: Path) -> None:
    pki = write_demo_pki(root / "pki", provinces=[(PROVINCE, "bench-01")])
    rules = load_tier_rules(ROOT / "deploy" / "tiers.example.toml")
    base = StandardsRegistry.from_files(load_standards(ROOT / "deploy" / "standards.example.csv"))
    today = today_in_china()
    started = time.perf_counter()
    requests = batches(args.persons, args.seed)
    records = sum(len(r.records) for r in requests)
    print(f"prepared {records:,} records in {len(requests):,} batches in {time.perf_counter() - started:.1f}s")

    def settings(name: str, standards: StandardsRegistry | None = None) -> HubSettings:
        # tier_seconds: the background round runs once at start and then waits; the bench decides.
        return HubSettings(
            data_dir=root / name,
            tls=pki.hub_tls,
            host="127.0.0.1",
            port=0,
            tier_rules=rules if standards is not None else None,
            standards=standards,
            tier_seconds=3600.0,
        )

    plain = HubServer(settings("plain"))
    await plain.start()
    try:
        plain_seconds, plain_created = await ingest(plain, pki, requests)
    finally:
        await plain.stop(0)

    hub = HubServer(settings("tiered", base))
    await hub.start()
    try:
        tiered_seconds, created = await ingest(hub, pki, requests)
        assert created == plain_created, (created, plain_created)
        assert hub.tierer is not None
        assert hub.store is not None
        # The baseline: every marked person's inputs read once, then decided in memory only.
        marks, inputs, stored = await hub.store.tier_work(10 * records)
        started = time.perf_counter()
        for key, _ in marks:
            held = inputs.get(key)
            if held is not None:
                hub.tierer._decide(held, stored.get(key), today)  # the engine alone
        pure_seconds = time.perf_counter() - started
        marked = len(marks)
        started = time.perf_counter()
        await hub.tierer.settle()
        decide_seconds = time.perf_counter() - started
        tiers = Counter({c.tier or "(none)": c.persons for c in await hub.store.tier_counts()})

        # What a restart with the new registry does (Tierer.start): keep it, mark whom it changes.
        hub.tierer.standards = raised(base, today)
        started = time.perf_counter()
        await hub.tierer.prepare(today)
        remarked = len((await hub.store.tier_work(10 * records))[0])
        await hub.tierer.settle()
        retier_seconds = time.perf_counter() - started
        after = Counter({c.tier or "(none)": c.persons for c in await hub.store.tier_counts()})
    finally:
        await hub.stop(0)

    moved = sum(abs(after[t] - tiers[t]) for t in set(after) | set(tiers)) // 2
    decide_rate = marked / decide_seconds
    pure_rate = marked / pure_seconds
    retier_rate = remarked / retier_seconds if remarked else float("nan")

    def row(name: str, value: float, unit: str, note: str = "") -> None:
        print(f"{name:<44}{value:>14,.1f}  {unit:<12}{note}")

    print()
    print(f"{'figure':<44}{'value':>14}  {'unit':<12}note")
    row("ingest, no tier rules", plain_created / plain_seconds, "records/s")
    row(
        "ingest, tier rules (persons marked)",
        created / tiered_seconds,
        "records/s",
        f"ratio {plain_seconds / tiered_seconds:.2f} of the plain hub",
    )
    row("decide, hub (store, evidence, events, log)", decide_rate, "persons/s", f"{marked:,} persons")
    row("decide, rule engine alone (baseline)", pure_rate, "persons/s", f"hub/baseline {decide_rate / pure_rate:.2f}")
    row(
        "re-tier after the provincial line rose",
        retier_rate,
        "persons/s",
        f"{remarked:,} residents marked and decided",
    )
    hours = NATIONAL / decide_rate / 3600
    print(f"\n66,000,000 persons re-tiered by one hub at the decide rate: {hours:.1f} h")
    print("tiers after ingest:     " + ", ".join(f"{t} {n:,}" for t, n in sorted(tiers.items())))
    print("tiers after the rise:   " + ", ".join(f"{t} {n:,}" for t, n in sorted(after.items())))
    print(f"persons whose tier changed with the rise (at least): {moved:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=200_000, help="persons to ingest and tier (default 200,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    configure_logging("warning")
    root = Path(tempfile.mkdtemp(prefix="hutong-bench-tiers-"))
    try:
        asyncio.run(run(args, root))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
