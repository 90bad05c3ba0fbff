"""``hutong hub tiers``: persons per tier (分层分类) per province, from the shell."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from gateway.domain.tiers import load_tier_rules
from gateway.hub.config import HubConfig
from gateway.hub.ops_commands import hub_database
from gateway.store import tiers
from gateway.store.engine import Connection
from gateway.store.tiers import TierCount

__all__ = ["hub_tiers"]

EXIT_OK = 0


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
