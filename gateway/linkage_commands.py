"""``hutong hub linkage train|status|model``: identity linkage, seen and tuned by the ministry's operators.

All three find the hub's database as ``hutong hub serve`` does (``--config hub.toml`` or
``--data-dir``; SQLite or PostgreSQL) and read it on a read-only connection: a running hub is
fine. ``train`` estimates a new model from the records the hub holds (their ID numbers and names
unsealed in this process, never written anywhere) and stores it as the newest version through the
store's writer (its write transaction excludes the hub's writers, every replica's on PostgreSQL);
the hub links with it from its next start, and the first batch it links is an exchange-log entry
naming the version.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway.domain.linkage import LinkageModel, TrainingSettings, train_model
from gateway.domain.protection import FieldSealer
from gateway.errors import ConfigError
from gateway.hub.config import HubConfig
from gateway.hub.keys import KEYS_FILE, load_or_create_keys
from gateway.hub.ops_commands import hub_config, hub_database, hub_store
from gateway.store.sqlite_linkage import current_model, sample_records

__all__ = ["linkage_model", "linkage_status", "linkage_train", "run_linkage"]

EXIT_OK = 0


def _sealer(config: HubConfig) -> FieldSealer:
    data_dir = config.require_data_dir()
    if not (data_dir / KEYS_FILE).exists():
        raise ConfigError(
            f"{data_dir} holds no {KEYS_FILE}: is it a hub's data directory, and has the hub run?",
            reason="FILE_MISSING",
            field="hub.data_dir",
        )
    return FieldSealer(load_or_create_keys(data_dir))


async def _store_model(config: HubConfig, model: LinkageModel, records: int) -> int:
    """Add ``model`` as the newest version, in a write transaction of the hub's store; returns its version."""
    store = hub_store(config)
    await store.open()
    try:
        return await store.add_linkage_model(model, source="trained", records=records)
    finally:
        await store.close()


def _time(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if us else "-"


def linkage_train(config: HubConfig, *, sample: int, min_records: int, as_json: bool = False) -> int:
    """Train a model on (a sample of) the hub's live records and store it as the newest version."""
    if sample < 2:
        raise ConfigError("--sample must be at least 2", reason="SAMPLE_INVALID", field="sample")
    sealer = _sealer(config)
    console = Console(stderr=True)
    started = time.perf_counter()
    with hub_database(config) as con:
        records = sample_records(con, sealer, sample)
    if len(records) < min_records:
        raise ConfigError(
            f"the hub holds {len(records):,} live records; a model needs at least {min_records:,}"
            " (--min-records). Until then the hub links with the bootstrap model",
            reason="LINKAGE_TRAINING_TOO_SMALL",
            field="data_dir",
        )
    console.print(f"training on {len(records):,} records (read and unsealed in {time.perf_counter() - started:.1f}s)")
    model = train_model(records, TrainingSettings())
    seconds = time.perf_counter() - started
    version = asyncio.run(_store_model(config, model, len(records)))
    summary = {
        "version": version,
        "records": len(records),
        "seconds": round(seconds, 1),
        "probability_two_random_records_match": model.probability_two_random_records_match,
        "weights": {c.name: [round(c.weight(i), 2) for i in range(len(c.levels))] for c in model.comparisons},
    }
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        table = Table(title=f"linkage model version {version}: weight of each level (bits), strongest first")
        table.add_column("comparison")
        table.add_column("levels")
        for c in model.comparisons:
            table.add_row(c.name, ", ".join(f"{label} {c.weight(i):+.1f}" for i, label in enumerate(c.levels)))
        Console().print(table)
        print(
            f"model version {version} trained on {len(records):,} records in {seconds:.1f}s;"
            " the hub links with it from its next start"
        )
    return EXIT_OK


def linkage_status(config: HubConfig, *, as_json: bool = False) -> int:
    """The models the hub has, and what linkage holds: unverified records, links, review items, lineage."""
    with hub_database(config) as con:
        models = [
            {
                "version": v,
                "source": source,
                "records": records,
                "created": _time(created),
                "first_used": _time(used),
                "probability_two_random_records_match": json.loads(text)["probability_two_random_records_match"],
            }
            for v, source, records, created, used, text in con.execute(
                "SELECT version, source, records, created_at_us, first_used_at_us, model FROM linkage_models"
                " ORDER BY version"
            )
        ]

        def one(sql: str) -> int:
            return int(con.execute(sql).fetchone()[0])

        counts: dict[str, Any] = {
            "unverified_records": one("SELECT count(*) FROM linkage_unverified"),
            "links_holding": one("SELECT count(*) FROM linkage_links WHERE ended_seq=0"),
            "links_undone": one("SELECT count(*) FROM linkage_links WHERE ended_seq<>0"),
            "reviews_open": one("SELECT count(*) FROM linkage_reviews WHERE state=1"),
            "reviews_accepted": one("SELECT count(*) FROM linkage_reviews WHERE state=2"),
            "reviews_rejected": one("SELECT count(*) FROM linkage_reviews WHERE state=3"),
            "reviews_superseded": one("SELECT count(*) FROM linkage_reviews WHERE state=4"),
            "lineage_events": one("SELECT count(*) FROM linkage_events"),
        }
    if as_json:
        print(json.dumps({"models": models, **counts}, ensure_ascii=False, indent=2))
        return EXIT_OK
    table = Table(title="linkage models (the hub links with the newest from its next start)")
    for column in ("version", "source", "records", "created", "first used", "λ"):
        table.add_column(column, justify="right" if column in ("version", "records", "λ") else "left")
    for m in models:
        table.add_row(
            str(m["version"]), m["source"], f"{m['records']:,}", m["created"], m["first_used"],
            f"{m['probability_two_random_records_match']:.3g}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    for name, value in counts.items():
        console.print(f"{name.replace('_', ' ')}: {value:,}")
    return EXIT_OK


def linkage_model(config: HubConfig, *, version: int | None = None) -> int:
    """Print one model's JSON (the newest by default): every weight a link was scored with."""
    with hub_database(config) as con:
        if version is None:
            info = current_model(con)
            text = info.model.to_json() if info is not None else None
        else:
            row = con.execute("SELECT model FROM linkage_models WHERE version=?", (version,)).fetchone()
            text = None if row is None else str(row[0])
    if text is None:
        raise ConfigError(
            "no such linkage model version" if version else "the hub has no linkage model yet; start it once",
            reason="LINKAGE_MODEL_NOT_FOUND",
            field="version",
        )
    print(text)
    return EXIT_OK


def run_linkage(args: argparse.Namespace) -> int:
    """Dispatch ``hutong hub linkage COMMAND``."""
    config = hub_config(args.config, data_dir=args.data_dir)
    if args.linkage_command == "train":
        return linkage_train(config, sample=args.sample, min_records=args.min_records, as_json=args.json)
    if args.linkage_command == "status":
        return linkage_status(config, as_json=args.json)
    return linkage_model(config, version=args.version)
