"""Tiered identification (分层分类): which tier of the low-income population a person belongs to.

A tier rule set is TOML with a version (every key is documented in ``deploy/tiers.example.toml``)::

    version = "2026.1"
    unknown_area = "rural"          # what "dibao" means for a household of unknown area

    [[tiers]]                       # ordered: the first tier that matches wins
    id = "core"
    label = "核心保障对象（低保、特困）"
    [tiers.when]                    # one set of conditions...
    enrolled = ["dibao", "extreme-poverty"]

    [[tiers]]
    id = "marginal"
    label = "低保边缘人口"
    [[tiers.when]]                  # ...or several alternatives, any of which matches
    enrolled = ["dibao-marginal"]
    [[tiers.when]]
    income_below = { standard = "dibao", times = 1.5 }

All conditions of one alternative must hold: ``enrolled`` (actively on one of the programmes),
``not_enrolled`` (on none of them), ``members_at_least``, ``income_below`` / ``income_at_least``
(income per member against a multiple of a local standard), ``income_after_rigid_below``
(household income less rigid expenditure, per member, against a multiple of a standard) and
``rigid_expenditure_ratio_at_least`` (rigid expenditure at least this share of household income).
A standard is one of :class:`~gateway.domain.standards.Standard` or ``dibao``, which reads the
urban or rural line by the household's area. Mistakes raise ConfigError naming the key
(``tiers[2].when[1].income_below.times``; ``tiers[0].when.enrolled[1]`` for a single table).

Semantics the issue left open, decided here:

* An income not assessed (-1), or a rigid expenditure not known (-1), never satisfies a condition
  that needs it, ``income_at_least`` included; the evidence says which was unknown.
* A standard with no value at the residence on the day (none published) fails its condition.
* For an area ``unknown``, ``dibao`` is read per ``unknown_area``: ``rural`` (the default; the
  lower line in every province, so "below" conditions are the stricter), ``urban``, or ``none``
  (the condition fails). Either way the evidence records the assumption.
* ``rigid_expenditure_ratio_at_least`` needs a positive rigid expenditure: 0 spent is no hardship,
  whatever the income.

:func:`evaluate` returns a :class:`TierDecision` whose ``evidence`` holds everything the decision
used (facts, each standard consulted with its division, effective date and document, thresholds,
assumptions) as JSON-native data; :func:`reproduce` recomputes the decision from the evidence and
the rules alone. All arithmetic is exact (integers and Decimal), so a reproduction never differs
by a rounding.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.domain.model import ALL_PROGRAMS, Program
from gateway.domain.monitoring import HouseholdFacts
from gateway.domain.standards import Standard, StandardsRegistry, StandardValue, changed_on
from gateway.errors import ConfigError, InvalidArgument
from gateway.toml_config import read_text

__all__ = [
    "DIBAO",
    "EVIDENCE_SCHEMA",
    "Area",
    "IncomeBound",
    "PersonFacts",
    "Tier",
    "TierDecision",
    "TierRules",
    "When",
    "affected",
    "could_change",
    "evaluate",
    "load_tier_rules",
    "parse_tier_rules",
    "reproduce",
    "rules_from_canonical",
]

#: The standard name that reads the urban or the rural dibao line by the household's area.
DIBAO = "dibao"
#: Version of the evidence layout; evidence of another schema is refused.
EVIDENCE_SCHEMA = 1
_STANDARD_NAMES = (DIBAO, *(s.value for s in Standard))
_PROGRAMS = {p.name.lower().replace("_", "-"): p for p in ALL_PROGRAMS}
_KNOWN_BITS = sum(p.bit for p in ALL_PROGRAMS)
#: Exact for any amount and factor a rules file can hold, whatever context the caller has set.
_EXACT = Context(prec=80)
_SLUG = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_UNKNOWN_AREA = ("rural", "urban", "none")
_TOP_KEYS = frozenset({"version", "unknown_area", "tiers"})
_TIER_KEYS = frozenset({"id", "label", "description", "when"})
_BOUNDS = ("income_below", "income_at_least", "income_after_rigid_below")
_WHEN_KEYS = frozenset({"enrolled", "not_enrolled", "members_at_least", "rigid_expenditure_ratio_at_least", *_BOUNDS})


class Area(StrEnum):
    """Where a household lives, for the urban or rural dibao line (城市 / 农村)."""

    URBAN = "urban"
    RURAL = "rural"
    UNKNOWN = "unknown"


def _bad_fact(message: str, key: str) -> InvalidArgument:
    return InvalidArgument(message, reason="TIER_FACTS_INVALID", field=key)


def _is_count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _program_names(mask: int) -> list[str]:
    return [name for name, p in _PROGRAMS.items() if mask & p.bit]


@dataclass(frozen=True, slots=True)
class PersonFacts:
    """What tiering looks at: one person and their household as the hub holds them."""

    #: The national person key (keyed hash of the ID number).
    person_key: bytes
    #: The province responsible for the person (``440000``): where changes are pushed.
    province: str
    #: 6-digit residence division: selects the local standards.
    residence_division: str
    area: Area
    #: Programmes the person is actively enrolled in (a Program.bit mask).
    active_programs: int
    #: Household income per member, fen per month; -1 when not assessed.
    income_per_member_fen: int
    #: Household rigid expenditure (medical, education...), fen per month; -1 when not known.
    rigid_expenditure_fen: int
    #: Live members of the household, the person included.
    members: int

    def __post_init__(self) -> None:
        if not isinstance(self.person_key, bytes) or not self.person_key:
            raise _bad_fact("person_key must be non-empty bytes", "person_key")
        for key in ("province", "residence_division"):
            code = getattr(self, key)
            if not isinstance(code, str) or len(code) != 6 or not code.isascii() or not code.isdigit():
                raise _bad_fact(f"{key} must be a 6-digit division code", key)
        if not self.province.endswith("0000"):
            raise _bad_fact("province must be a province code (xx0000)", "province")
        if not isinstance(self.area, Area):
            raise _bad_fact("area must be an Area", "area")
        if not _is_count(self.active_programs, 0) or self.active_programs & ~_KNOWN_BITS:
            raise _bad_fact("active_programs must be a mask of Program bits", "active_programs")
        for key in ("income_per_member_fen", "rigid_expenditure_fen"):
            if not _is_count(getattr(self, key), -1):
                raise _bad_fact(f"{key} must be a whole number of fen, or -1 when unknown", key)
        if not _is_count(self.members, 1):
            raise _bad_fact("members must be at least 1 (the person is one)", "members")

    @classmethod
    def from_household(
        cls, household: HouseholdFacts, *, person_key: bytes, area: Area, rigid_expenditure_fen: int = -1
    ) -> PersonFacts:
        """The facts of one member of a household the monitoring rules already look at.

        A household listing no live members still counts the person: ``members`` is at least 1.
        """
        return cls(
            person_key=person_key,
            province=household.province,
            residence_division=household.residence_division,
            area=area,
            active_programs=household.active_programs,
            income_per_member_fen=household.income_per_member_fen,
            rigid_expenditure_fen=rigid_expenditure_fen,
            members=max(household.members, 1),
        )

    @property
    def household_income_fen(self) -> int:
        """Monthly household income (income per member × members); -1 when not assessed."""
        return -1 if self.income_per_member_fen < 0 else self.income_per_member_fen * self.members

    def to_json(self) -> dict[str, Any]:
        """The facts as JSON-native data (programmes by name, the key in hex)."""
        return {
            "person_key": self.person_key.hex(),
            "province": self.province,
            "residence_division": self.residence_division,
            "area": self.area.value,
            "active_programs": _program_names(self.active_programs),
            "income_per_member_fen": self.income_per_member_fen,
            "rigid_expenditure_fen": self.rigid_expenditure_fen,
            "members": self.members,
        }

    @classmethod
    def from_json(cls, data: Any) -> PersonFacts:
        """Rebuild facts from :meth:`to_json`'s output; InvalidArgument names the key that is wrong."""
        keys = {
            "person_key",
            "province",
            "residence_division",
            "area",
            "active_programs",
            "income_per_member_fen",
            "rigid_expenditure_fen",
            "members",
        }
        if not isinstance(data, Mapping) or set(data) != keys:
            raise _bad_fact(f"facts must hold exactly {', '.join(sorted(keys))}", "facts")
        try:
            key = bytes.fromhex(data["person_key"])
        except (TypeError, ValueError):
            raise _bad_fact("facts.person_key must be hex", "facts.person_key") from None
        try:
            area = Area(data["area"])
        except ValueError:
            raise _bad_fact("facts.area must be urban, rural or unknown", "facts.area") from None
        names = data["active_programs"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n in _PROGRAMS for n in names):
            raise _bad_fact("facts.active_programs must list programme names", "facts.active_programs")
        mask = 0
        for name in names:
            mask |= _PROGRAMS[name].bit
        try:
            return cls(
                key,
                data["province"],
                data["residence_division"],
                area,
                mask,
                data["income_per_member_fen"],
                data["rigid_expenditure_fen"],
                data["members"],
            )
        except InvalidArgument as exc:
            exc.field = f"facts.{exc.field}"
            raise


@dataclass(frozen=True, slots=True)
class IncomeBound:
    """A multiple of a local standard: ``{ standard = "dibao", times = 1.5 }``."""

    #: ``dibao`` (by area) or a :class:`Standard` value.
    standard: str
    times: Decimal


@dataclass(frozen=True, slots=True)
class When:
    """One alternative of a tier: all its conditions must hold. Zero / None means not asked."""

    enrolled: int = 0
    not_enrolled: int = 0
    members_at_least: int = 0
    income_below: IncomeBound | None = None
    income_at_least: IncomeBound | None = None
    income_after_rigid_below: IncomeBound | None = None
    rigid_expenditure_ratio_at_least: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier: matched when any of its alternatives matches."""

    id: str
    label: str
    description: str
    when: tuple[When, ...]


def _dec(value: Decimal) -> str:
    """A Decimal as its shortest exact text: ``1.50`` → ``1.5``, ``142500.0`` → ``142500``."""
    return format(value.normalize(_EXACT), "f")


def _bound_json(bound: IncomeBound | None) -> dict[str, str] | None:
    return None if bound is None else {"standard": bound.standard, "times": _dec(bound.times)}


@dataclass(frozen=True)
class TierRules:
    """A whole tier rule set, checked, with the digest that names it."""

    version: str
    #: ``rural``, ``urban`` or ``none``: how ``dibao`` reads for an unknown area.
    unknown_area: str
    tiers: tuple[Tier, ...]
    text: str = field(default="", compare=False, repr=False)

    def canonical(self) -> str:
        """The rules as canonical JSON: equal rules, equal text, whatever the file's layout."""
        return json.dumps(
            {
                "schema": 1,
                "version": self.version,
                "unknown_area": self.unknown_area,
                "tiers": [
                    {
                        "id": t.id,
                        "label": t.label,
                        "description": t.description,
                        "when": [
                            {
                                "enrolled": _program_names(w.enrolled),
                                "not_enrolled": _program_names(w.not_enrolled),
                                "members_at_least": w.members_at_least,
                                "income_below": _bound_json(w.income_below),
                                "income_at_least": _bound_json(w.income_at_least),
                                "income_after_rigid_below": _bound_json(w.income_after_rigid_below),
                                "rigid_expenditure_ratio_at_least": None
                                if w.rigid_expenditure_ratio_at_least is None
                                else _dec(w.rigid_expenditure_ratio_at_least),
                            }
                            for w in t.when
                        ],
                    }
                    for t in self.tiers
                ],
            },
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        )

    @functools.cached_property
    def digest(self) -> bytes:
        """SHA-256 of the canonical form. Rules with another digest re-tier everyone."""
        return hashlib.sha256(self.canonical().encode()).digest()

    @functools.cached_property
    def _digest_hex(self) -> str:
        return self.digest.hex()

    def tier(self, tier_id: str) -> Tier:
        """The tier with this id; KeyError if there is none."""
        for t in self.tiers:
            if t.id == tier_id:
                return t
        raise KeyError(tier_id)

    def standards_used(self) -> frozenset[Standard]:
        """Every standard some condition may consult (``dibao`` stands for both lines)."""
        out: set[Standard] = set()
        for t in self.tiers:
            for w in t.when:
                for bound in (w.income_below, w.income_at_least, w.income_after_rigid_below):
                    if bound is None:
                        continue
                    if bound.standard == DIBAO:
                        out |= {Standard.DIBAO_URBAN, Standard.DIBAO_RURAL}
                    else:
                        out.add(Standard(bound.standard))
        return frozenset(out)


@dataclass(frozen=True)
class TierDecision:
    """The tier of one person on one day, and the evidence that reproduces it."""

    #: The tier's id; None when no tier matched (untiered).
    tier: str | None
    label: str | None
    #: Position of the tier in ``[[tiers]]`` and of the alternative in its ``when``.
    tier_index: int | None
    when_index: int | None
    rules_version: str
    rules_digest: bytes
    day: dt.date
    person_key: bytes
    #: JSON-native: schema, rules, day, facts, standards consulted, assumptions, decision, basis.
    evidence: dict[str, Any]
    #: Every alternative checked, in order, with each condition's figures (derived; not stored).
    trace: tuple[dict[str, Any], ...]

    def canonical_evidence(self) -> str:
        """The evidence as canonical JSON (what the hub stores and pushes)."""
        return _canonical(self.evidence)

    @property
    def evidence_digest(self) -> bytes:
        """SHA-256 of the canonical evidence (for the audit log)."""
        return hashlib.sha256(self.canonical_evidence().encode()).digest()

    @property
    def consulted(self) -> frozenset[Standard]:
        """The standards this decision read (found or not): only a change to these can change it."""
        return frozenset(Standard(name) for name in self.evidence["standards"])

    def summary(self) -> str:
        """One line for people: the tier and the conditions that put the person there."""
        if self.tier is None:
            return "no tier matched"
        parts = [_describe(c, self.evidence["standards"]) for c in self.evidence["basis"]]
        return f"{self.tier} ({self.label}): " + "; ".join(parts)


def _canonical(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _yuan(fen: int | str) -> str:
    return f"{Decimal(fen) / 100:.2f}"


def _describe(check: Mapping[str, Any], standards: Mapping[str, Any]) -> str:
    kind = check["condition"]
    if kind in ("enrolled", "not_enrolled"):
        word = "enrolled in one of" if kind == "enrolled" else "enrolled in none of"
        return f"{word} {', '.join(check['programmes'])}"
    if kind == "members_at_least":
        return f"at least {check['at_least']} members"
    if kind == "rigid_expenditure_ratio_at_least":
        return (
            f"rigid expenditure {_yuan(check['rigid_expenditure_fen'])} yuan at least {check['ratio']} × household"
            f" income {_yuan(check['household_income_fen'])} yuan"
        )
    value = standards[check["resolved"]]
    source = f"{value['division']} from {value['effective_from']}"
    if value["document"]:
        source += f", {value['document']}"
    line = f"{check['times']} × {check['resolved']} {_yuan(check['line_fen'])} yuan ({source})"
    if kind == "income_after_rigid_below":
        return (
            f"household income less rigid expenditure {_yuan(check['income_after_rigid_fen'])} yuan below {line}"
            f" × {check['members']} members = {_yuan(check['threshold_fen'])} yuan"
        )
    word = "below" if kind == "income_below" else "at least"
    return (
        f"income {_yuan(check['income_per_member_fen'])} yuan per member {word} {line}"
        f" = {_yuan(check['threshold_fen'])} yuan"
    )


Lookup = Callable[[Standard], StandardValue | None]


class _Run:
    """One evaluation: the checks, and what it consulted and assumed along the way."""

    def __init__(self, rules: TierRules, facts: PersonFacts, lookup: Lookup) -> None:
        self.rules = rules
        self.facts = facts
        self.lookup = lookup
        self.standards: dict[str, dict[str, Any] | None] = {}
        self.assumptions: list[str] = []

    def assume(self, text: str) -> None:
        if text not in self.assumptions:
            self.assumptions.append(text)

    def resolve(self, name: str) -> Standard | None:
        if name != DIBAO:
            return Standard(name)
        area = self.facts.area
        if area is Area.UNKNOWN:
            how = self.rules.unknown_area
            if how == "none":
                self.assume('area unknown: "dibao" has no line (unknown_area = "none"), its conditions fail')
                return None
            self.assume(f'area unknown: "dibao" read as the {how} line (unknown_area = "{how}")')
            area = Area(how)
        return Standard.DIBAO_URBAN if area is Area.URBAN else Standard.DIBAO_RURAL

    def consult(self, standard: Standard) -> StandardValue | None:
        value = self.lookup(standard)
        self.standards[standard.value] = None if value is None else value.to_json()
        return value

    def when(self, w: When) -> list[dict[str, Any]]:
        f = self.facts
        checks: list[dict[str, Any]] = []
        if w.enrolled:
            checks.append(
                {
                    "condition": "enrolled",
                    "programmes": _program_names(w.enrolled),
                    "holds": bool(f.active_programs & w.enrolled),
                }
            )
        if w.not_enrolled:
            checks.append(
                {
                    "condition": "not_enrolled",
                    "programmes": _program_names(w.not_enrolled),
                    "holds": not f.active_programs & w.not_enrolled,
                }
            )
        if w.members_at_least:
            checks.append(
                {
                    "condition": "members_at_least",
                    "at_least": w.members_at_least,
                    "holds": f.members >= w.members_at_least,
                }
            )
        for kind in _BOUNDS:
            bound = getattr(w, kind)
            if bound is not None:
                checks.append(self.income(kind, bound))
        if w.rigid_expenditure_ratio_at_least is not None:
            checks.append(self.ratio(w.rigid_expenditure_ratio_at_least))
        return checks

    def unknown(self, check: dict[str, Any], what: str) -> dict[str, Any]:
        if what == "income":
            self.assume("income not assessed (-1): no condition on income holds")
        elif what == "rigid_expenditure":
            self.assume("rigid expenditure not known (-1): no condition on it holds")
        elif what == "standard":
            self.assume(f"no {check['resolved']} standard in force at the residence on the day")
        # "area": resolve() has already recorded how the unknown area was read.
        check["unknown"] = what
        check["holds"] = False
        return check

    def income(self, kind: str, bound: IncomeBound) -> dict[str, Any]:
        f = self.facts
        check: dict[str, Any] = {"condition": kind, "standard": bound.standard, "times": _dec(bound.times)}
        standard = self.resolve(bound.standard)
        if standard is None:
            return self.unknown(check, "area")
        check["resolved"] = standard.value
        value = self.consult(standard)
        if value is None:
            return self.unknown(check, "standard")
        check["line_fen"] = value.monthly_fen
        threshold = _EXACT.multiply(Decimal(value.monthly_fen), bound.times)
        if kind == "income_after_rigid_below":
            # Compared as household totals: dividing by members would not be exact.
            threshold = _EXACT.multiply(threshold, Decimal(f.members))
            check["members"] = f.members
        check["threshold_fen"] = _dec(threshold)
        if f.income_per_member_fen < 0:
            return self.unknown(check, "income")
        if kind != "income_after_rigid_below":
            check["income_per_member_fen"] = f.income_per_member_fen
            below = f.income_per_member_fen < threshold
            check["holds"] = below if kind == "income_below" else not below
            return check
        if f.rigid_expenditure_fen < 0:
            return self.unknown(check, "rigid_expenditure")
        check["household_income_fen"] = f.household_income_fen
        check["rigid_expenditure_fen"] = f.rigid_expenditure_fen
        check["income_after_rigid_fen"] = f.household_income_fen - f.rigid_expenditure_fen
        check["holds"] = check["income_after_rigid_fen"] < threshold
        return check

    def ratio(self, ratio: Decimal) -> dict[str, Any]:
        f = self.facts
        check: dict[str, Any] = {"condition": "rigid_expenditure_ratio_at_least", "ratio": _dec(ratio)}
        if f.income_per_member_fen < 0:
            return self.unknown(check, "income")
        if f.rigid_expenditure_fen < 0:
            return self.unknown(check, "rigid_expenditure")
        threshold = _EXACT.multiply(Decimal(f.household_income_fen), ratio)
        check["household_income_fen"] = f.household_income_fen
        check["rigid_expenditure_fen"] = f.rigid_expenditure_fen
        check["threshold_fen"] = _dec(threshold)
        check["holds"] = f.rigid_expenditure_fen > 0 and f.rigid_expenditure_fen >= threshold
        return check


def _decide(rules: TierRules, facts: PersonFacts, day: dt.date, lookup: Lookup) -> TierDecision:
    run = _Run(rules, facts, lookup)
    trace: list[dict[str, Any]] = []
    found: tuple[int, int, list[dict[str, Any]]] | None = None
    for i, tier in enumerate(rules.tiers):
        for j, w in enumerate(tier.when):
            # Every condition of an alternative is checked (no short cut): the trace shows all that failed.
            checks = run.when(w)
            holds = all(c["holds"] for c in checks)
            trace.append({"tier": tier.id, "tier_index": i, "when_index": j, "holds": holds, "conditions": checks})
            if holds:
                found = (i, j, checks)
                break
        if found is not None:
            break
    matched = None if found is None else rules.tiers[found[0]]
    evidence = {
        "schema": EVIDENCE_SCHEMA,
        "rules": {"version": rules.version, "digest": rules._digest_hex},
        "day": day.isoformat(),
        "facts": facts.to_json(),
        "standards": run.standards,
        "assumptions": run.assumptions,
        "decision": {
            "tier": None if matched is None else matched.id,
            "tier_index": None if found is None else found[0],
            "when_index": None if found is None else found[1],
        },
        "basis": [] if found is None else found[2],
    }
    return TierDecision(
        tier=None if matched is None else matched.id,
        label=None if matched is None else matched.label,
        tier_index=None if found is None else found[0],
        when_index=None if found is None else found[1],
        rules_version=rules.version,
        rules_digest=rules.digest,
        day=day,
        person_key=facts.person_key,
        evidence=evidence,
        trace=tuple(trace),
    )


def evaluate(rules: TierRules, registry: StandardsRegistry, facts: PersonFacts, day: dt.date) -> TierDecision:
    """The person's tier on ``day``: the first tier one of whose alternatives holds, with its evidence."""
    return _decide(rules, facts, day, lambda standard: registry.at(facts.residence_division, standard, day))


def _bad_evidence(message: str, key: str, reason: str = "TIER_EVIDENCE_INVALID") -> InvalidArgument:
    return InvalidArgument(message, reason=reason, field=f"evidence.{key}")


def reproduce(evidence: Mapping[str, Any], rules: TierRules) -> TierDecision:
    """Recompute a decision from its evidence and the rules alone; refuse evidence it does not reproduce.

    Raises InvalidArgument: TIER_RULES_MISMATCH for evidence of another rules version or digest,
    TIER_EVIDENCE_INVALID for evidence that is malformed or inconsistent (a standard not in force
    at the residence on the day), TIER_EVIDENCE_MISMATCH when the recomputed evidence differs.
    """
    if not isinstance(evidence, Mapping) or evidence.get("schema") != EVIDENCE_SCHEMA:
        raise _bad_evidence(f"evidence must be a mapping of schema {EVIDENCE_SCHEMA}", "schema")
    recorded = evidence.get("rules")
    if not isinstance(recorded, Mapping):
        raise _bad_evidence("evidence.rules must name a version and a digest", "rules")
    if recorded.get("version") != rules.version or recorded.get("digest") != rules.digest.hex():
        raise InvalidArgument(
            f"the evidence was decided under rules {recorded.get('version')!r}, not {rules.version!r}"
            f" ({rules.digest.hex()[:16]})",
            reason="TIER_RULES_MISMATCH",
            field="evidence.rules",
            metadata={"evidence_version": str(recorded.get("version")), "rules_version": rules.version},
        )
    day_text = evidence.get("day")
    try:
        day = dt.date.fromisoformat(day_text) if isinstance(day_text, str) else None
    except ValueError:
        day = None
    if day is None:
        raise _bad_evidence("evidence.day must be YYYY-MM-DD", "day")
    facts = PersonFacts.from_json(evidence.get("facts"))
    raw = evidence.get("standards")
    if not isinstance(raw, Mapping):
        raise _bad_evidence("evidence.standards must be a mapping", "standards")
    standards: dict[Standard, StandardValue | None] = {}
    for name, data in raw.items():
        try:
            standard = Standard(name)
        except ValueError:
            raise _bad_evidence(f"{name!r} is not a standard", f"standards.{name}") from None
        value = None if data is None else StandardValue.from_json(data, field=f"evidence.standards.{name}")
        if value is not None and (
            value.standard is not standard
            or not facts.residence_division.startswith(value.prefix)
            or value.effective_from > day
        ):
            raise _bad_evidence(
                f"the {name} value is not one that could be in force at {facts.residence_division} on {day}",
                f"standards.{name}",
            )
        standards[standard] = value

    def lookup(standard: Standard) -> StandardValue | None:
        if standard not in standards:
            raise _bad_evidence(
                f"the decision needs the {standard.value} standard, which the evidence lacks",
                f"standards.{standard.value}",
                reason="TIER_EVIDENCE_MISMATCH",
            )
        return standards[standard]

    decision = _decide(rules, facts, day, lookup)
    try:
        given = _canonical(evidence)
    except (TypeError, ValueError):
        raise _bad_evidence("evidence must hold JSON data only", "schema") from None
    if decision.canonical_evidence() != given:
        differs = sorted(
            k for k in set(decision.evidence) | set(evidence) if decision.evidence.get(k) != evidence.get(k)
        )
        raise InvalidArgument(
            f"the evidence does not reproduce: {', '.join(differs) or 'its encoding'} differ",
            reason="TIER_EVIDENCE_MISMATCH",
            field=f"evidence.{differs[0]}" if differs else "evidence",
        )
    return decision


def affected(
    old: StandardsRegistry,
    new: StandardsRegistry,
    day: dt.date,
    *,
    rules: TierRules | None = None,
    old_day: dt.date | None = None,
) -> frozenset[tuple[str, Standard]]:
    """The (division prefix, standard) pairs whose value in force changed, limited to those ``rules`` use.

    Same arguments as :func:`~gateway.domain.standards.changed_on`. A person can change tier only if
    :func:`could_change` says so; a new rule set (another digest) re-tiers everyone instead.
    """
    changes = changed_on(old, new, day, old_day=old_day)
    if rules is None:
        return changes
    used = rules.standards_used()
    return frozenset((prefix, standard) for prefix, standard in changes if standard in used)


def could_change(
    changes: Collection[tuple[str, Standard]], residence_division: str, standards: Iterable[Standard] | None = None
) -> bool:
    """Whether a change (from :func:`affected`) touches a person living in ``residence_division``.

    Pass the previous decision's :attr:`TierDecision.consulted` as ``standards`` to be exact: a
    decision reads only those standards, so if none of them changed at a prefix of the residence,
    re-evaluating it gives the same decision. Without it, any standard counts.
    """
    wanted = None if standards is None else frozenset(standards)
    return any(
        residence_division.startswith(prefix) and (wanted is None or standard in wanted) for prefix, standard in changes
    )


def _number(value: Any, key: str) -> Decimal:
    number = Decimal(-1)
    if isinstance(value, Decimal):  # from a canonical text (TierRules.from_canonical): exact already
        number = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            number = Decimal(-1)
    if not number.is_finite() or number <= 0:
        raise ConfigError(f"{key} must be a positive number", field=key)
    return number


def _programs(value: Any, key: str) -> int:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list of programmes", field=key)
    mask = 0
    for i, name in enumerate(value):
        program: Program | None = _PROGRAMS.get(name) if isinstance(name, str) else None
        if program is None:
            raise ConfigError(f"{key}[{i}] must be one of {', '.join(_PROGRAMS)}, not {name!r}", field=f"{key}[{i}]")
        mask |= program.bit
    return mask


def _bound(value: Any, key: str) -> IncomeBound:
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table {{ standard = ..., times = ... }}", field=key)
    for extra in sorted(set(value) - {"standard", "times"}):
        raise ConfigError(f"unknown key {key}.{extra}", field=f"{key}.{extra}")
    for needed in ("standard", "times"):
        if needed not in value:
            raise ConfigError(f"{key}.{needed} is required", field=f"{key}.{needed}")
    standard = value["standard"]
    if standard not in _STANDARD_NAMES:
        raise ConfigError(
            f"{key}.standard must be one of {', '.join(_STANDARD_NAMES)}, not {standard!r}", field=f"{key}.standard"
        )
    return IncomeBound(standard, _number(value["times"], f"{key}.times"))


def _when(value: Any, at: str) -> When:
    if not isinstance(value, dict):
        raise ConfigError(f"{at} must be a table of conditions", field=at)
    for extra in sorted(set(value) - _WHEN_KEYS):
        raise ConfigError(f"unknown key {at}.{extra}", field=f"{at}.{extra}")
    if not value:
        raise ConfigError(f"{at} has no condition: it would match everyone", field=at)
    members = value.get("members_at_least", 0)
    if "members_at_least" in value and not _is_count(members, 1):
        raise ConfigError(f"{at}.members_at_least must be a whole number, 1 or more", field=f"{at}.members_at_least")
    ratio_key = "rigid_expenditure_ratio_at_least"
    bounds = {kind: _bound(value[kind], f"{at}.{kind}") if kind in value else None for kind in _BOUNDS}
    return When(
        enrolled=_programs(value["enrolled"], f"{at}.enrolled") if "enrolled" in value else 0,
        not_enrolled=_programs(value["not_enrolled"], f"{at}.not_enrolled") if "not_enrolled" in value else 0,
        members_at_least=members,
        income_below=bounds["income_below"],
        income_at_least=bounds["income_at_least"],
        income_after_rigid_below=bounds["income_after_rigid_below"],
        rigid_expenditure_ratio_at_least=_number(value[ratio_key], f"{at}.{ratio_key}") if ratio_key in value else None,
    )


def _text(value: Any, key: str, *, required: bool, limit: int) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ConfigError(f"{key} must be a non-empty string of at most {limit} characters", field=key)
    if not value.isascii():
        try:  # TOML cannot hold a lone surrogate, JSON ("\ud800") can: the digest hashes the text as UTF-8
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{key} must be Unicode text (it holds a lone surrogate)", field=key) from None
    return value.strip()


def parse_tier_rules(text: str, *, source: str = "tiers") -> TierRules:
    """Check a tier rule set; every mistake raises ConfigError naming its key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not TOML: {exc}", field="tiers") from None
    return _rules_of(doc, source, text)


def rules_from_canonical(text: str) -> TierRules:
    """The rule set a :meth:`TierRules.canonical` text describes, with the same digest.

    The hub keeps the rule sets decisions were made under by digest (their canonical text), so
    that the evidence of an old decision still reproduces after the rules changed.
    """
    try:
        data = json.loads(text)
        doc = {
            "version": data["version"],
            "unknown_area": data["unknown_area"],
            "tiers": [
                {
                    "id": t["id"],
                    "label": t["label"],
                    **({"description": t["description"]} if t["description"] else {}),
                    "when": [_canonical_when(w) for w in t["when"]],
                }
                for t in data["tiers"]
            ],
        }
    except RecursionError:  # json.loads, on arrays or objects nested thousands deep
        raise ConfigError("not a canonical tier rule set: nested too deep", field="tiers") from None
    except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
        raise ConfigError(f"not a canonical tier rule set: {exc}", field="tiers") from None
    return _rules_of(doc, "canonical tier rules", "")


def _canonical_when(w: Any) -> dict[str, Any]:
    if not isinstance(w, dict):
        raise TypeError("a condition set (when) must be an object")
    out: dict[str, Any] = {}
    for key, value in w.items():
        if value is None or value == [] or value == 0:
            continue  # canonical() writes every condition; absent ones as null, [] or 0
        if key in _BOUNDS:
            out[key] = {"standard": value["standard"], "times": Decimal(value["times"])}
        elif key == "rigid_expenditure_ratio_at_least":
            out[key] = Decimal(value)
        else:
            out[key] = value
    return out


def _rules_of(doc: Mapping[str, Any], source: str, text: str) -> TierRules:
    for extra in sorted(set(doc) - _TOP_KEYS):
        raise ConfigError(f"unknown key {extra!r} in {source}", field=extra)
    version = _text(doc.get("version"), "version", required=True, limit=64)
    unknown_area = doc.get("unknown_area", "rural")
    if unknown_area not in _UNKNOWN_AREA:
        raise ConfigError(f"unknown_area must be one of {', '.join(_UNKNOWN_AREA)}", field="unknown_area")
    raw = doc.get("tiers")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("tiers must be a non-empty array of tables ([[tiers]])", field="tiers")
    tiers: list[Tier] = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        at = f"tiers[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(f"{at} must be a table", field=at)
        for extra in sorted(set(t) - _TIER_KEYS):
            raise ConfigError(f"unknown key {at}.{extra}", field=f"{at}.{extra}")
        tid = t.get("id")
        if not isinstance(tid, str) or not _SLUG.fullmatch(tid):
            raise ConfigError(
                f"{at}.id must be a slug: a lower-case letter, then up to 39 of a-z, 0-9, _ and -", field=f"{at}.id"
            )
        if tid in seen:
            raise ConfigError(f"{at}.id {tid!r} is used twice", field=f"{at}.id")
        seen.add(tid)
        label = _text(t.get("label"), f"{at}.label", required=True, limit=100)
        description = _text(t.get("description"), f"{at}.description", required=False, limit=1000)
        when = t.get("when")
        alternatives: tuple[When, ...]
        if isinstance(when, dict):  # [tiers.when]: one alternative
            alternatives = (_when(when, f"{at}.when"),)
        elif isinstance(when, list) and when:  # [[tiers.when]]: any of several
            alternatives = tuple(_when(w, f"{at}.when[{j}]") for j, w in enumerate(when))
        else:
            raise ConfigError(f"{at}.when must be a table or a non-empty array of tables", field=f"{at}.when")
        tiers.append(Tier(tid, label, description, alternatives))
    return TierRules(version=version, unknown_area=unknown_area, tiers=tuple(tiers), text=text)


def load_tier_rules(path: Path) -> TierRules:
    """Read and check a tier rule set."""
    text = read_text(path, what="tier rules", field="tier_rules")
    return parse_tier_rules(text, source=str(path))
