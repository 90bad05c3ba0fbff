"""``hutong hub tiers`` and ``hutong hub standards``: tiers (分层分类) and the standards behind them, from the shell."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from gateway.domain.divisions import is_known_division
from gateway.domain.standards import Standard, StandardsRegistry, StandardValue, load_standards
from gateway.domain.tiers import load_tier_rules
from gateway.domain.verification import today_in_china
from gateway.errors import ConfigError
from gateway.hub.config import HubConfig
from gateway.hub.ops_commands import hub_database
from gateway.store import tiers
from gateway.store.engine import Connection
from gateway.store.tiers import TierCount

__all__ = ["hub_standards", "hub_tiers"]

EXIT_OK = 0
EXIT_REJECTED = 4


def _columns(counts: Sequence[TierCount], rules: Sequence[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """(id, label) per tier column: the rules' tiers in their order, then tiers only ``counts`` has, by id.

    ``rules`` is (id, label) per tier of the rule set at hand (empty: none). A tier the rules do not
    name (decided under older rules) has no label. The untiered ('') are a column of their own.
    """
    known = {tier_id for tier_id, _ in rules}
    extra = sorted({c.tier for c in counts if c.tier and c.tier not in known})
    return [*rules, *((tier_id, None) for tier_id in extra)]


def _rules_in_force(con: Connection) -> tuple[str, list[tuple[str, str]]] | None:
    """(version, [(id, label)]) of the rules the stored decisions were made under; None if none are kept.

    The hub keeps each rule set's canonical JSON by digest (``tier_inputs``) and names the one in
    force in ``tier_state``: the labels of the decisions counted, whatever the config says now.
    """
    stored = tiers.state(con)
    text = tiers.inputs_of(con, stored[0]) if stored is not None else None
    if text is None:
        return None
    try:
        data = json.loads(text)
        return str(data["version"]), [(str(t["id"]), str(t["label"])) for t in data["tiers"]]
    except (ValueError, KeyError, TypeError):  # not a rule set this release can read: fall back
        return None


def hub_tiers(config: HubConfig, *, as_json: bool = False) -> int:
    """Persons per province and tier, with the untiered and the totals; exit 0.

    Reads the database ``config`` names (SQLite or PostgreSQL) on a read-only connection: a running
    hub is fine. Tiers are ordered and labelled by the rules the decisions were made under (kept in
    the database), else by ``tiers.rules`` in ``config``, else by id.
    """
    with hub_database(config) as con:
        counts = tiers.tier_counts(con)
        in_force = None if as_json else _rules_in_force(con)
    if as_json:
        rows = [{"province": c.province, "tier": c.tier, "persons": c.persons} for c in counts]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return EXIT_OK
    rules_path = config.tier_rules
    version, named = in_force or ("", [])
    source = "in force: the hub's database keeps them"
    if in_force is None and rules_path is not None:
        rules = load_tier_rules(rules_path)
        version, named, source = rules.version, [(t.id, t.label) for t in rules.tiers], f"from {rules_path}"
    columns = _columns(counts, named)
    by_province: dict[str, dict[str, int]] = {}
    for c in counts:
        by_province.setdefault(c.province, {})[c.tier] = c.persons
    title = "tiered identification: persons per province and tier"
    table = Table(title=Text(title + (f" (tier rules {version})" if version else "")))
    table.add_column("province", no_wrap=True)
    for column in (*(tier_id for tier_id, _ in columns), "untiered", "total"):
        table.add_column(column, justify="right", no_wrap=True)
    totals: dict[str, int] = {}
    provinces = sorted(by_province)
    for i, province in enumerate(provinces):
        held = by_province[province]
        for tier, n in held.items():
            totals[tier] = totals.get(tier, 0) + n
        cells = [held.get(tier_id, 0) for tier_id, _ in columns] + [held.get("", 0), sum(held.values())]
        table.add_row(province, *(f"{n:,}" for n in cells), end_section=i == len(provinces) - 1)
    cells = [totals.get(tier_id, 0) for tier_id, _ in columns] + [totals.get("", 0), sum(totals.values())]
    table.add_row("total", *(f"{n:,}" for n in cells))
    console = Console()
    # Tier ids are up to 40 characters: wider than the terminal, the table still shows every column whole.
    needed = Measurement.get(console, console.options.update_width(1000), table).maximum
    if needed > console.width:
        console = Console(width=needed)
    console.print(table)
    if not named:
        console.print("no tier rules at hand: tiers shown by id (--config with tiers.rules labels them)")
    else:
        console.print(f"tier rules {version} ({source}):", markup=False, highlight=False, soft_wrap=True)
        for tier_id, label in columns:  # labels are the rules' text: printed as is, never as rich markup
            legend = label if label is not None else "not in these tier rules (decided under older rules)"
            console.print(f"{tier_id}: {legend}", markup=False, highlight=False, soft_wrap=True)
    if not counts:
        console.print("no tier decisions yet: the hub tiers when tiers.rules and tiers.standards are set in hub.toml")
    return EXIT_OK


def hub_standards(paths: Sequence[Path], *, division: str | None, day: str | None, as_json: bool) -> int:
    """Check standards files as the hub reads them; with ``division``, the values in force there on ``day``.

    Exit 0 when every row loaded, 4 when some were rejected (each printed with its line and reason),
    3 when a file cannot be read or its header is wrong.
    """
    try:
        when = dt.date.fromisoformat(day) if day else today_in_china()
    except ValueError:
        raise ConfigError(f"--date {day!r} is not YYYY-MM-DD", reason="DATE_INVALID", field="date") from None
    files = [load_standards(path) for path in paths]
    registry = StandardsRegistry.from_files(*files)
    rejected = sum(len(f.rejected) for f in files)
    in_force: dict[str, StandardValue | None] = {}
    history: dict[str, list[StandardValue]] = {}
    if division is not None:
        if not is_known_division(division):
            raise ConfigError(
                f"--division {division!r} is not a current GB/T 2260 code", reason="DIVISION_UNKNOWN", field="division"
            )
        for standard in Standard:
            in_force[standard.value] = registry.at(division, standard, when)
            prefixes = sorted({division[:2] + "0000", division[:4] + "00", division})
            history[standard.value] = [v for prefix in prefixes for v in registry.history(prefix, standard)]
    if as_json:
        print(
            json.dumps(
                {
                    "files": [
                        {
                            "file": str(path),
                            "rows": f.rows_read,
                            "loaded": f.loaded,
                            "rejected": [
                                {"line": r.line, "reason": r.reason, "message": r.message} for r in f.rejected
                            ],
                        }
                        for path, f in zip(paths, files, strict=True)
                    ],
                    "digest": registry.digest.hex(),
                    "division": division,
                    "day": when.isoformat(),
                    "in_force": {k: v.to_json() if v else None for k, v in in_force.items()},
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return EXIT_REJECTED if rejected else EXIT_OK
    console = Console()
    for path, f in zip(paths, files, strict=True):
        console.print(f"{path}: {f.rows_read} rows, {f.loaded} loaded, {len(f.rejected)} rejected")
        for r in f.rejected:
            console.print(f"  line {r.line}: {r.reason}: {r.message}", markup=False)
    console.print(f"{len(registry)} values; registry digest sha256:{registry.digest.hex()}")
    if division is not None:
        table = Table(title=f"in force at {division} on {when.isoformat()}")
        for column in ("standard", "monthly (yuan)", "set for", "since", "document"):
            table.add_column(column)
        for name, value in in_force.items():
            if value is None:
                table.add_row(name, "none", "", "", "")
            else:
                table.add_row(
                    name,
                    f"{value.monthly_fen / 100:,.2f}",
                    value.division,
                    value.effective_from.isoformat(),
                    value.document,
                )
        console.print(table)
        past = Table(title="history at this division and the divisions above it")
        for column in ("standard", "division", "since", "monthly (yuan)", "document"):
            past.add_column(column)
        for name, values in history.items():
            for v in values:
                past.add_row(name, v.division, v.effective_from.isoformat(), f"{v.monthly_fen / 100:,.2f}", v.document)
        console.print(past)
    return EXIT_REJECTED if rejected else EXIT_OK
