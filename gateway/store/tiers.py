"""The hub's tier tables (``migrations/*/0006_tiers.sql``), on any engine.

Functions over a connection the store hands them, inside its transactions. Deciding a tier is
pure (:mod:`gateway.domain.tiers`); this module marks who must be decided again, reads what a
decision looks at, and writes decisions with the events they cause.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.store.engine import Connection

__all__ = [
    "Decided",
    "PersonInputs",
    "StoredTier",
    "TierCount",
    "current",
    "done",
    "inputs_of",
    "mark_all",
    "mark_dirty",
    "mark_households",
    "mark_residences",
    "person_inputs",
    "record_inputs",
    "set_state",
    "state",
    "take_dirty",
    "tier_counts",
    "write_decision",
]

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class PersonInputs:
    """What the hub holds about one person that a tier decision looks at."""

    person_key: bytes
    #: The province of the newest live record (where the person is counted).
    province: str
    #: The residence of that record's household (else of the record).
    residence_division: str
    #: Programmes actively enrolled in, in any province (Program.bit mask).
    active_programs: int
    #: The household's assessed monthly income per member, fen; -1 when not assessed or no household.
    income_per_member_fen: int
    members: int
    #: Live record ids by province: who is told when the tier changes.
    records: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredTier:
    """A person's stored decision."""

    tier: str
    evidence: str


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision to store (and, when the tier changed, to push to the provinces holding the person)."""

    person_key: bytes
    province: str
    residence_division: str
    #: The tier id now; '' when no tier matched.
    tier: str
    previous_tier: str
    #: The canonical evidence (gateway.domain.tiers) and its digest.
    evidence: str
    evidence_digest: bytes
    summary: str
    #: Whether the tier differs from the stored one (or there was none and now is one).
    changed: bool
    #: Live record ids by province: who is told.
    records: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TierCount:
    """Persons of one tier in one province."""

    province: str
    tier: str
    persons: int


def mark_dirty(con: Connection, person_keys: Iterable[bytes], now: int) -> None:
    """Mark persons to be decided again (a later mark replaces an earlier one)."""
    rows = [(key, now) for key in set(person_keys)]
    if rows:
        con.executemany(
            "INSERT INTO tier_dirty (person_key, marked_us) VALUES (?,?)"
            " ON CONFLICT (person_key) DO UPDATE SET marked_us = excluded.marked_us",
            rows,
        )


def mark_households(con: Connection, province: str, household_ids: Iterable[str], now: int) -> None:
    """Mark the members of households whose income or members changed."""
    ids = sorted(set(household_ids))
    record_ids: list[str] = []
    for i in range(0, len(ids), _CHUNK):
        part = ids[i : i + _CHUNK]
        for (members,) in con.execute(
            f"SELECT members FROM households WHERE province=? AND household_id IN ({','.join('?' * len(part))})",
            (province, *part),
        ):
            record_ids.extend(line.split("\t", 1)[0] for line in str(members).splitlines() if line)
    keys: list[bytes] = []
    for i in range(0, len(record_ids), _CHUNK):
        part = record_ids[i : i + _CHUNK]
        keys.extend(
            bytes(k)
            for (k,) in con.execute(
                f"SELECT person_key FROM records WHERE province=? AND record_id IN ({','.join('?' * len(part))})",
                (province, *part),
            )
        )
    mark_dirty(con, keys, now)


def _mark_selected(con: Connection, persons: str, args: tuple[object, ...], now: int) -> None:
    """Mark the persons a query selects (its one column: person_key)."""
    con.execute(
        # WHERE true: SQLite needs it to tell an upsert's ON CONFLICT from a join's ON.
        f"INSERT INTO tier_dirty (person_key, marked_us) SELECT person_key, ? FROM ({persons}) AS persons WHERE true"
        " ON CONFLICT (person_key) DO UPDATE SET marked_us = excluded.marked_us",
        (now, *args),
    )


def mark_all(con: Connection, now: int) -> None:
    """Mark everyone held or tiered (a new rule set)."""
    _mark_selected(con, "SELECT DISTINCT person_key FROM records WHERE retired_reason=0", (), now)
    _mark_selected(con, "SELECT person_key FROM tiers", (), now)


def mark_residences(con: Connection, prefixes: Iterable[str], now: int) -> None:
    """Mark the persons living under these division prefixes (a standard changed there)."""
    for prefix in sorted(set(prefixes)):
        pattern = (prefix + "%",)
        held = "SELECT DISTINCT person_key FROM records WHERE retired_reason=0 AND residence_division LIKE ?"
        _mark_selected(con, held, pattern, now)
        _mark_selected(con, "SELECT person_key FROM tiers WHERE residence_division LIKE ?", pattern, now)


def take_dirty(con: Connection, limit: int) -> list[tuple[bytes, int]]:
    """Up to ``limit`` marked persons, oldest marks first: (person key, mark)."""
    rows = con.execute(
        "SELECT person_key, marked_us FROM tier_dirty ORDER BY marked_us, person_key LIMIT ?", (limit,)
    ).fetchall()
    return [(bytes(k), int(m)) for k, m in rows]


def done(con: Connection, marks: Sequence[tuple[bytes, int]]) -> None:
    """Unmark decided persons, unless marked again since (their new mark stays)."""
    con.executemany("DELETE FROM tier_dirty WHERE person_key=? AND marked_us=?", list(marks))


def person_inputs(con: Connection, person_keys: Sequence[bytes]) -> dict[bytes, PersonInputs]:
    """The inputs of each person holding a live record (the others have none: no tier)."""
    out: dict[bytes, PersonInputs] = {}
    for i in range(0, len(person_keys), _CHUNK):
        part = list(person_keys[i : i + _CHUNK])
        rows = con.execute(
            "SELECT person_key, province, record_id, active_programs, household_id, residence_division, updated_at_us"
            f" FROM records WHERE person_key IN ({','.join('?' * len(part))}) AND retired_reason=0",
            part,
        ).fetchall()
        by_person: dict[bytes, list[tuple[str, str, int, str, str, int]]] = {}
        for key, province, record_id, active, household, residence, updated in rows:
            by_person.setdefault(bytes(key), []).append(
                (str(province), str(record_id), int(active), str(household), str(residence), int(updated))
            )
        for key, held in by_person.items():
            # The newest live record says where the person lives now (ties: the province code).
            province, _, _, household, residence, _ = max(held, key=lambda r: (r[5], r[0], r[1]))
            income, members = -1, 1
            if household:
                found = con.execute(
                    "SELECT residence_division, income_fen, members FROM households"
                    " WHERE province=? AND household_id=?",
                    (province, household),
                ).fetchone()
                if found is not None:
                    residence = str(found[0]) or residence
                    income = int(found[1])
                    members = max(1, sum(1 for line in str(found[2]).splitlines() if line))
            records: dict[str, list[str]] = {}
            active_programs = 0
            for p, record_id, active, *_ in held:
                records.setdefault(p, []).append(record_id)
                active_programs |= active
            out[key] = PersonInputs(key, province, residence, active_programs, income, members, records)
    return out


def current(con: Connection, person_keys: Sequence[bytes]) -> dict[bytes, StoredTier]:
    """The stored decisions of these persons."""
    out: dict[bytes, StoredTier] = {}
    for i in range(0, len(person_keys), _CHUNK):
        part = list(person_keys[i : i + _CHUNK])
        for key, tier, evidence in con.execute(
            f"SELECT person_key, tier, evidence FROM tiers WHERE person_key IN ({','.join('?' * len(part))})", part
        ):
            out[bytes(key)] = StoredTier(str(tier), str(evidence))
    return out


def write_decision(
    con: Connection, *, decided: Decided, rules_digest: bytes, standards_digest: bytes, day: str, now: int
) -> None:
    """Store a person's decision; ``changed_at_us`` moves only when the tier did."""
    d = decided
    con.execute(
        "INSERT INTO tiers (person_key, province, residence_division, tier, rules_digest, standards_digest, day,"
        " evidence, decided_at_us, changed_at_us) VALUES (?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (person_key) DO UPDATE SET province = excluded.province,"
        " residence_division = excluded.residence_division, tier = excluded.tier,"
        " rules_digest = excluded.rules_digest, standards_digest = excluded.standards_digest, day = excluded.day,"
        " evidence = excluded.evidence, decided_at_us = excluded.decided_at_us,"
        f" changed_at_us = {'excluded.changed_at_us' if d.changed else 'tiers.changed_at_us'}",
        (
            d.person_key,
            d.province,
            d.residence_division,
            d.tier,
            rules_digest,
            standards_digest,
            day,
            d.evidence,
            now,
            now,
        ),
    )


def forget(con: Connection, person_keys: Sequence[bytes]) -> None:
    """Drop the decisions of persons no province holds a live record of any more."""
    con.executemany("DELETE FROM tiers WHERE person_key=?", [(k,) for k in person_keys])


def tier_counts(con: Connection) -> list[TierCount]:
    """Persons per province and tier (the untiered as tier ''), in order."""
    rows = con.execute(
        "SELECT province, tier, COUNT(*) FROM tiers GROUP BY province, tier ORDER BY province, tier"
    ).fetchall()
    return [TierCount(str(p), str(t), int(n)) for p, t, n in rows]


def record_inputs(con: Connection, *, digest: bytes, kind: str, version: str, text: str, now: int) -> bool:
    """Keep a rule set's or registry's text by digest; True when it is new."""
    cur = con.execute(
        "INSERT INTO tier_inputs (digest, kind, version, text, loaded_at_us) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
        (digest, kind, version, text, now),
    )
    return bool(cur.rowcount > 0)


def inputs_of(con: Connection, digest: bytes) -> str | None:
    """The text kept under a digest."""
    row = con.execute("SELECT text FROM tier_inputs WHERE digest=?", (digest,)).fetchone()
    return None if row is None else str(row[0])


def state(con: Connection) -> tuple[bytes, bytes, str] | None:
    """(rules digest, standards digest, day) the stored decisions were computed under."""
    row = con.execute("SELECT rules_digest, standards_digest, day FROM tier_state WHERE id=1").fetchone()
    return None if row is None else (bytes(row[0]), bytes(row[1]), str(row[2]))


def set_state(con: Connection, rules_digest: bytes, standards_digest: bytes, day: str) -> None:
    """Record what the decisions are (being) computed under."""
    con.execute(
        "INSERT INTO tier_state (id, rules_digest, standards_digest, day) VALUES (1,?,?,?)"
        " ON CONFLICT (id) DO UPDATE SET rules_digest = excluded.rules_digest,"
        " standards_digest = excluded.standards_digest, day = excluded.day",
        (rules_digest, standards_digest, day),
    )
