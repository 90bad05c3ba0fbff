"""``hutong hub loop``, ``hutong hub rules-check`` and ``hutong signals submit``: the closed loop from the shell."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from gateway.client import HubClient
from gateway.domain.monitoring import load_rules
from gateway.errors import ConfigError
from gateway.hub.config import HubConfig
from gateway.hub.ops_commands import hub_database
from gateway.store.sqlite_loop import LoopLedger
from hutong.v1 import notification_pb2, signal_pb2
from pki import TlsMaterial

__all__ = ["hub_loop", "rules_check", "submit_signals"]

EXIT_OK, EXIT_OVERDUE = 0, 4


def hub_loop(config: HubConfig, *, as_json: bool = False) -> int:
    """Per province: events pushed, acknowledged, reported back, overdue and open; exit 4 if any is overdue.

    Reads the database ``config`` names (SQLite or PostgreSQL) on a read-only connection: a running hub is fine.
    """
    with hub_database(config) as con:
        states = LoopLedger.loop_state(con)
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


def submit_signals(path: Path, *, hub: str, tls: TlsMaterial, server_name: str | None) -> int:
    """``hutong signals submit FILE``: a department's risk signals (JSON Lines of ``hutong.v1.Signal``) to the hub.

    Sent 1,000 at a time; each chunk's request_id is a digest of its lines, so running the command
    again over the same file is safe (the hub answers with the original results). Prints where each
    signal went; exit 0 when all were pushed, 4 when some were refused (each named with its field),
    3 when a line is not a Signal.
    """
    signals: list[signal_pb2.Signal] = []
    lines: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", reason="FILE_MISSING", field="file") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            signals.append(json_format.Parse(line, signal_pb2.Signal()))
        except json_format.ParseError as exc:
            raise ConfigError(f"{path} line {number} is not a Signal: {exc}", field=f"line {number}") from None
        lines.append(line)
    return asyncio.run(_send_signals(path.name, signals, lines, hub=hub, tls=tls, server_name=server_name))


async def _send_signals(
    name: str,
    signals: list[signal_pb2.Signal],
    lines: list[str],
    *,
    hub: str,
    tls: TlsMaterial,
    server_name: str | None,
) -> int:
    refused = 0
    console = Console()
    table = Table(title=f"signals from {name}")
    for column in ("signal", "pushed to", "matched", "refused"):
        table.add_column(column)
    async with HubClient(hub, tls=tls, server_name=server_name, scopes=["signals:write"]) as client:
        for start in range(0, len(signals), 1000):
            chunk = lines[start : start + 1000]
            request_id = "signals-" + hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:32]
            response = await client.submit_signals(request_id, signals[start : start + 1000])
            for r in response.results:
                if r.HasField("rejection"):
                    refused += 1
                    table.add_row(r.signal_id, "", "", f"{r.rejection.reason} ({r.rejection.field})")
                else:
                    table.add_row(r.signal_id, ", ".join(r.province_codes), "yes" if r.matched else "by residence", "")
    console.print(table)
    console.print(f"{len(signals) - refused:,} pushed, {refused:,} refused")
    return EXIT_OVERDUE if refused else EXIT_OK
