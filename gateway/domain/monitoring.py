"""Monitoring rules (低收入人口动态监测): declarative conditions on households, pushed to the province when they match.

A rules file is TOML (``hutong hub serve --monitoring-rules FILE``; every key is documented in
``deploy/monitoring.example.toml``)::

    [lines.dibao]                 # the local dibao line, yuan per person per month,
    "44" = 950                    # by division: a 2-digit province, 4-digit prefecture or
    "4401" = 1230                 # 6-digit county prefix; the longest prefix wins

    [[rules]]
    id = "dibao-marginal-candidate"
    description = "income below 1.5 × the dibao line, and on none of dibao, dibao-marginal, extreme poverty"
    income_below = { line = "dibao", times = 1.5 }
    not_enrolled = ["dibao", "dibao-marginal", "extreme-poverty"]

A rule's conditions all hold for a match: ``income_below`` / ``income_at_least`` (a multiple of a
line at the household's residence), ``enrolled`` (some member actively on one of the programmes),
``not_enrolled`` (no member on any of them), ``members_at_least``. A rule matches a household once
and is pushed once, until the household stops matching. Mistakes raise ConfigError naming the key.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gateway.domain.model import Program
from gateway.errors import ConfigError
from gateway.toml_config import read_text

__all__ = ["HouseholdFacts", "MonitoringRules", "Rule", "load_rules", "parse_rules"]

_PROGRAMS = {p.name.lower().replace("_", "-"): p for p in Program if p is not Program.UNSPECIFIED}
_RULE_KEYS = frozenset(
    {"id", "description", "income_below", "income_at_least", "enrolled", "not_enrolled", "members_at_least"}
)


@dataclass(frozen=True)
class HouseholdFacts:
    """What a rule looks at: one household as the hub holds it."""

    province: str
    household_id: str
    residence_division: str
    #: -1 when the province did not assess it.
    income_per_member_fen: int
    #: Programmes any member is actively enrolled in (a Program.bit mask).
    active_programs: int
    members: int
    record_ids: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """One rule, checked."""

    id: str
    description: str
    income_below: tuple[str, Decimal] | None = None
    income_at_least: tuple[str, Decimal] | None = None
    enrolled: int = 0
    not_enrolled: int = 0
    members_at_least: int = 0


@dataclass(frozen=True)
class MonitoringRules:
    """A whole rules file: the lines and the rules, with the digest that names this version."""

    lines: Mapping[str, Mapping[str, int]]
    rules: tuple[Rule, ...]
    text: str

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical form: equal rules, equal digest, whatever the file's layout."""
        return hashlib.sha256(self.canonical().encode()).digest()

    def canonical(self) -> str:
        """The rules as canonical JSON (what the hub records and audits)."""
        return json.dumps(
            {
                "lines": {k: dict(sorted(v.items())) for k, v in sorted(self.lines.items())},
                "rules": [
                    {
                        "id": r.id,
                        "description": r.description,
                        "income_below": None if r.income_below is None else [r.income_below[0], str(r.income_below[1])],
                        "income_at_least": None
                        if r.income_at_least is None
                        else [r.income_at_least[0], str(r.income_at_least[1])],
                        "enrolled": r.enrolled,
                        "not_enrolled": r.not_enrolled,
                        "members_at_least": r.members_at_least,
                    }
                    for r in self.rules
                ],
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    def line_at(self, line: str, division: str) -> int | None:
        """The line (fen) at a division: the longest prefix given; None where the file sets none."""
        table = self.lines.get(line, {})
        for size in (6, 4, 2):
            value = table.get(division[:size])
            if value is not None:
                return value
        return None

    def evaluate(self, facts: HouseholdFacts) -> list[tuple[Rule, str]]:
        """The rules this household matches, each with a one-line summary."""
        out = []
        for rule in self.rules:
            why = self._matches(rule, facts)
            if why is not None:
                out.append((rule, why))
        return out

    def _matches(self, rule: Rule, f: HouseholdFacts) -> str | None:
        parts = []
        if rule.members_at_least and f.members < rule.members_at_least:
            return None
        if rule.enrolled and not f.active_programs & rule.enrolled:
            return None
        if rule.not_enrolled and f.active_programs & rule.not_enrolled:
            return None
        for bound, below in ((rule.income_below, True), (rule.income_at_least, False)):
            if bound is None:
                continue
            line = self.line_at(bound[0], f.residence_division)
            if line is None or f.income_per_member_fen < 0:
                return None  # no line for this place, or no assessed income: the rule cannot say
            limit = Decimal(line) * bound[1]
            income = Decimal(f.income_per_member_fen)
            if (income < limit) != below:
                return None
            parts.append(
                f"income {f.income_per_member_fen / 100:.2f} yuan per member "
                f"{'below' if below else 'at least'} {bound[1]} × the {bound[0]} line ({line / 100:.2f})"
            )
        return "; ".join([rule.description, *parts]) if parts else rule.description


def _programs(value: Any, field: str) -> int:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{field} must be a non-empty list of programmes", field=field)
    mask = 0
    for i, name in enumerate(value):
        program = _PROGRAMS.get(name) if isinstance(name, str) else None
        if program is None:
            raise ConfigError(
                f"{field}[{i}] must be one of {', '.join(sorted(_PROGRAMS))}, not {name!r}", field=f"{field}[{i}]"
            )
        mask |= program.bit
    return mask


def _positive(value: Any) -> Decimal | None:
    """``value`` as a Decimal when it is a finite number above 0 (TOML allows nan and inf), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number > 0 else None


def _bound(value: Any, field: str, lines: Mapping[str, Any]) -> tuple[str, Decimal]:
    if not isinstance(value, dict) or set(value) != {"line", "times"}:
        raise ConfigError(f"{field} must be a table with exactly line and times", field=field)
    line, times = value["line"], value["times"]
    if not isinstance(line, str):
        raise ConfigError(f"{field}.line must be the name of a [lines.NAME] table", field=f"{field}.line")
    if line not in lines:
        raise ConfigError(f"{field}.line names no [lines.{line}] table", field=f"{field}.line")
    factor = _positive(times)
    if factor is None:
        raise ConfigError(f"{field}.times must be a positive number", field=f"{field}.times")
    return line, factor


def parse_rules(text: str, *, source: str = "rules") -> MonitoringRules:
    """Check a rules file; every mistake names its key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not TOML: {exc}", field="rules") from None
    unknown = set(doc) - {"lines", "rules"}
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in {source}", field=sorted(unknown)[0])
    raw_lines = doc.get("lines", {})
    if not isinstance(raw_lines, dict):
        raise ConfigError("lines must be a table of tables", field="lines")
    lines: dict[str, dict[str, int]] = {}
    for name, table in raw_lines.items():
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"lines.{name} must be a table of division prefix = yuan", field=f"lines.{name}")
        lines[name] = {}
        for prefix, yuan in table.items():
            key = f"lines.{name}.{prefix}"
            if len(prefix) not in (2, 4, 6) or not (prefix.isascii() and prefix.isdigit()):
                raise ConfigError(f"{key}: a division prefix has 2, 4 or 6 digits", field=key)
            amount = _positive(yuan)
            if amount is None:
                raise ConfigError(f"{key} must be a positive amount in yuan", field=key)
            lines[name][prefix] = int((amount * 100).to_integral_value())
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError("rules must be an array of tables ([[rules]])", field="rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, r in enumerate(raw_rules):
        at = f"rules[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{at} must be a table", field=at)
        extra = set(r) - _RULE_KEYS
        if extra:
            key = sorted(extra)[0]
            raise ConfigError(f"unknown key {at}.{key}", field=f"{at}.{key}")
        rid = r.get("id")
        if not isinstance(rid, str) or not rid or not rid.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{at}.id must be a name of letters, digits, - and _", field=f"{at}.id")
        if rid in seen:
            raise ConfigError(f"{at}.id {rid!r} is used twice", field=f"{at}.id")
        seen.add(rid)
        description = r.get("description", "")
        if not isinstance(description, str) or not description.strip():
            raise ConfigError(f"{at}.description is required", field=f"{at}.description")
        members = r.get("members_at_least", 0)
        if isinstance(members, bool) or not isinstance(members, int) or members < 0:
            raise ConfigError(f"{at}.members_at_least must be a whole number", field=f"{at}.members_at_least")
        rule = Rule(
            id=rid,
            description=description.strip(),
            income_below=_bound(r["income_below"], f"{at}.income_below", lines) if "income_below" in r else None,
            income_at_least=_bound(r["income_at_least"], f"{at}.income_at_least", lines)
            if "income_at_least" in r
            else None,
            enrolled=_programs(r["enrolled"], f"{at}.enrolled") if "enrolled" in r else 0,
            not_enrolled=_programs(r["not_enrolled"], f"{at}.not_enrolled") if "not_enrolled" in r else 0,
            members_at_least=members,
        )
        if not (rule.income_below or rule.income_at_least or rule.enrolled or rule.not_enrolled):
            raise ConfigError(f"{at} has no condition: it would match every household", field=at)
        rules.append(rule)
    return MonitoringRules(lines=lines, rules=tuple(rules), text=text)


def load_rules(path: Path) -> MonitoringRules:
    """Read and check a rules file."""
    text = read_text(path, what="monitoring rules", field="monitoring_rules")
    return parse_rules(text, source=str(path))
