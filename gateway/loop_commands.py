"""``hutong hub loop`` and ``hutong hub rules-check``: the closed loop, seen by the ministry's operators."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gateway.domain.monitoring import load_rules
from gateway.errors import ConfigError
from gateway.hub.server import DATABASE_FILE
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_loop import ProvinceLoop
from hutong.v1 import notification_pb2

__all__ = ["hub_loop", "rules_check"]

EXIT_OK, EXIT_OVERDUE = 0, 4


def hub_loop(data_dir: Path, *, as_json: bool = False) -> int:
    """Per province: events pushed, acknowledged, reported back, overdue and open; exit 4 if any is overdue."""
    path = data_dir / DATABASE_FILE
    if not path.exists():
        raise ConfigError(f"no hub database in {data_dir}", reason="FILE_MISSING", field="data_dir")

    async def read() -> list[ProvinceLoop]:
        store = SqliteStore(path)
        await store.open()
        try:
            return await store.loop_state()
        finally:
            await store.close()

    states = asyncio.run(read())
    names: dict[int, str] = {
        int(v): k.removeprefix("EVENT_OUTCOME_").lower() for k, v in notification_pb2.EventOutcome.items()
    }
    rows = [
        {
            "province": s.province,
            "pushed": s.pushed,
            "acknowledged": s.acknowledged,
            "reported": s.reported,
            "overdue": s.overdue,
            "open": s.open,
            "outcomes": {names.get(k, str(k)): v for k, v in sorted(s.by_outcome.items())},
        }
        for s in states
    ]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        table = Table(title="the closed loop: events per province (overdue notices not counted)")
        for column in ("province", "pushed", "acknowledged", "reported", "overdue", "open", "outcomes"):
            table.add_column(column, justify="left" if column in ("province", "outcomes") else "right")
        for s in states:
            outcomes = ", ".join(f"{names.get(k, k)} {v:,}" for k, v in sorted(s.by_outcome.items()))
            counts = (s.pushed, s.acknowledged, s.reported, s.overdue, s.open)
            table.add_row(s.province, *(f"{n:,}" for n in counts), outcomes)
        Console().print(table)
    return EXIT_OVERDUE if any(s.overdue for s in states) else EXIT_OK


def rules_check(path: Path) -> int:
    """Validate a monitoring rules file; print its rules and digest."""
    rules = load_rules(path)
    for rule in rules.rules:
        print(f"{rule.id}: {rule.description}")
    print(f"{len(rules.rules)} rules; digest sha256:{rules.digest.hex()}")
    return EXIT_OK
