"""The closed loop in SQLite: events pushed to provinces, acknowledgements, outcomes, escalation.

:class:`LoopLedger` writes events inside the transaction of the change that raised them (a
duplicate finding opened, a record retired, a signal received), so an event exists if and only
if its cause was committed, and a province is told each thing once per occurrence: an event's id
is derived from its cause, and a second write of the same id is ignored. Reads and the other
writes (acknowledge, report, escalate) run as ordinary store writes.

An event's ``subject`` names the matter: every province told about one duplicate finding
shares it, so the matter is closed once every one of them has reported what it did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.divisions import province_of
from gateway.domain.monitoring import HouseholdFacts, MonitoringRules
from gateway.errors import InvalidDivision
from gateway.store.engine import Connection

__all__ = [
    "EVENT_KINDS",
    "Deadlines",
    "LoopEvent",
    "LoopLedger",
    "PreparedSignal",
    "ProvinceLoop",
    "ReportResult",
    "SignalOutcome",
]

#: hutong.v1.EventKind numbers (notification.proto), by name.
EVENT_KINDS = {
    "duplicate_enrollment": 1,
    "resident_enrolled_elsewhere": 2,
    "retired_elsewhere": 3,
    "risk_signal": 4,
    "monitoring_alert": 5,
    "overdue": 6,
    "review_decision": 7,
    "verification_completed": 8,
    "tier_changed": 9,
}
_KIND_NAMES = {number: name for name, number in EVENT_KINDS.items()}
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Deadlines:
    """Days a province has to report an outcome, per kind of event."""

    duplicate_enrollment: int = 30
    resident_enrolled_elsewhere: int = 30
    retired_elsewhere: int = 15
    risk_signal: int = 15
    monitoring_alert: int = 30
    overdue: int = 7
    review_decision: int = 30
    #: None: nothing to report back (the province reads the report); never overdue.
    verification_completed: int | None = None
    #: None: the province is told; the help it gives follows its own procedures.
    tier_changed: int | None = None

    def respond_by(self, kind: int, now_us: int) -> int:
        """When an event of ``kind`` raised now is due; 0 when no outcome is expected."""
        days: int | None = getattr(self, _KIND_NAMES[kind])
        return 0 if days is None else now_us + days * _DAY_US


@dataclass(frozen=True)
class LoopEvent:
    """One stored event, as delivered."""

    seq: int
    event_id: str
    kind: int
    body: dict[str, Any]
    created_at_us: int
    respond_by_us: int
    sealed_pii: bytes | None
    subject: str


@dataclass(frozen=True)
class PreparedSignal:
    """A department's signal, checked and keyed by the servicer."""

    index: int
    signal_id: str
    kind: int
    person_key: bytes
    #: Where to send it when no province holds the person (from the stated residence or the ID number).
    fallback_province: str
    #: The event fields (protobuf JSON mapping) of the signal, without the ID number and name.
    fields: dict[str, Any]
    #: The ID number and name, sealed for the events (bound to the signal's subject).
    sealed_pii: bytes
    subject: str


@dataclass(frozen=True)
class SignalOutcome:
    """Where one signal went."""

    index: int
    signal_id: str
    provinces: tuple[str, ...]
    matched: bool


@dataclass(frozen=True)
class ReportResult:
    """The result of ReportOutcome."""

    recorded_at_us: int
    replayed: bool
    closed: bool


@dataclass
class ProvinceLoop:
    """The state of the loop for one province (``hutong hub loop``)."""

    province: str
    pushed: int = 0
    acknowledged: int = 0
    reported: int = 0
    overdue: int = 0
    open: int = 0
    by_outcome: dict[int, int] = field(default_factory=dict)


def subject_of_finding(finding_id: str, detected_at_us: int) -> str:
    """The matter of one occurrence of a duplicate finding."""
    return f"finding:{finding_id}:{detected_at_us}"


def _overdue_subject(event_id: str) -> str:
    return f"overdue:{event_id}"


def _event_id(subject: str, province: str) -> str:
    return "ev-" + hashlib.sha256(f"{subject}|{province}".encode()).hexdigest()[:24]


class LoopLedger:
    """Writes and reads the loop's tables on a connection the store hands it."""

    def __init__(self, deadlines: Deadlines | None = None) -> None:
        self.deadlines = deadlines or Deadlines()
        #: The monitoring rules the hub runs with (None: no rules, nothing is evaluated).
        self.rules: MonitoringRules | None = None

    # -- raising events (inside the cause's transaction) ---------------------------------------

    def push(
        self,
        con: Connection,
        *,
        province: str,
        kind: int,
        subject: str,
        fields: dict[str, Any],
        now: int,
        sealed_pii: bytes | None = None,
    ) -> bool:
        """Raise one event for ``province`` about ``subject``; False if that province was told already."""
        event_id = _event_id(subject, province)
        body = {"eventId": event_id, "kind": kind, **fields}
        cur = con.execute(
            "INSERT INTO events (province, event_id, kind, subject, body, created_at_us, respond_by_us,"
            " sealed_pii) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (
                province,
                event_id,
                kind,
                subject,
                json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                now,
                self.deadlines.respond_by(kind, now),
                sealed_pii,
            ),
        )
        return bool(cur.rowcount > 0)

    @staticmethod
    def records_of(con: Connection, person_key: bytes, province: str) -> list[str]:
        """The live record ids a province holds for a person."""
        return [
            rid
            for (rid,) in con.execute(
                "SELECT record_id FROM records WHERE person_key=? AND province=? AND retired_reason=0"
                " ORDER BY record_id",
                (person_key, province),
            )
        ]

    def finding_opened(
        self,
        con: Connection,
        *,
        finding_id: str,
        person_key: bytes,
        program: int,
        provinces: Sequence[str],
        detected_at_us: int,
        now: int,
    ) -> None:
        """A duplicate enrollment was found (or grew to more provinces): tell each province involved."""
        subject = subject_of_finding(finding_id, detected_at_us)
        for province in provinces:
            others = [p for p in provinces if p != province]
            self.push(
                con,
                province=province,
                kind=EVENT_KINDS["duplicate_enrollment"],
                subject=subject,
                fields={
                    "recordIds": self.records_of(con, person_key, province),
                    "program": program,
                    "otherProvinceCodes": others,
                    "findingId": finding_id,
                    "summary": f"also actively enrolled in the same programme by {', '.join(others)}",
                },
                now=now,
            )

    def resident_enrolled(
        self, con: Connection, writer: str, items: Iterable[tuple[str, int, str, bytes, int]], now: int
    ) -> None:
        """Records of ``writer`` newly active for persons whose hukou is elsewhere: tell the hukou province.

        ``items``: (record id, version, hukou division, person key, first active programme).
        """
        for record_id, version, hukou, person_key, program in items:
            try:
                home = province_of(hukou)
            except InvalidDivision:  # no hukou division given: nobody to tell
                continue
            if home == writer:
                continue
            self.push(
                con,
                province=home,
                kind=EVENT_KINDS["resident_enrolled_elsewhere"],
                subject=f"record:{writer}:{record_id}:{version}",
                fields={
                    "recordIds": self.records_of(con, person_key, home),
                    "program": program,
                    "otherProvinceCodes": [writer],
                    "summary": f"a person with hukou here was enrolled by {writer}",
                },
                now=now,
            )

    def retired(self, con: Connection, province: str, items: Iterable[tuple[str, int, bytes, int]], now: int) -> None:
        """Records retired by ``province`` of persons still assisted elsewhere: tell those provinces.

        ``items``: (record id, version, person key, retirement reason).
        """
        for record_id, version, person_key, reason in items:
            elsewhere = sorted(
                {
                    p
                    for (p,) in con.execute(
                        "SELECT DISTINCT province FROM records WHERE person_key=? AND province<>?"
                        " AND retired_reason=0 AND active_programs<>0",
                        (person_key, province),
                    )
                }
            )
            why = {1: "exited assistance", 2: "was withdrawn", 3: "died", 4: "moved away"}.get(reason, "was retired")
            for other in elsewhere:
                self.push(
                    con,
                    province=other,
                    kind=EVENT_KINDS["retired_elsewhere"],
                    subject=f"retired:{province}:{record_id}:{version}",
                    fields={
                        "recordIds": self.records_of(con, person_key, other),
                        "otherProvinceCodes": [province],
                        "summary": f"the person's record in {province} {why}; this province still assists them",
                    },
                    now=now,
                )

    # -- signals --------------------------------------------------------------------------------

    def submit_signals(
        self, con: Connection, source: str, signals: Sequence[PreparedSignal], now: int
    ) -> list[SignalOutcome]:
        """Match each signal to the provinces holding the person (or its fallback) and push it there."""
        out = []
        for s in signals:
            row = con.execute(
                "SELECT provinces FROM signals WHERE source=? AND signal_id=?", (source, s.signal_id)
            ).fetchone()
            if row is not None:  # the department sent it before: it went where it went
                held = tuple(p for p in row[0].split(",") if p)
                out.append(SignalOutcome(s.index, s.signal_id, held, True))
                continue
            holders = sorted(
                {
                    p
                    for (p,) in con.execute(
                        "SELECT DISTINCT province FROM records WHERE person_key=? AND retired_reason=0", (s.person_key,)
                    )
                }
            )
            targets = holders or ([s.fallback_province] if s.fallback_province else [])
            for province in targets:
                self.push(
                    con,
                    province=province,
                    kind=EVENT_KINDS["risk_signal"],
                    subject=s.subject,
                    fields={**s.fields, "recordIds": self.records_of(con, s.person_key, province)},
                    now=now,
                    sealed_pii=s.sealed_pii,
                )
            con.execute(
                "INSERT INTO signals VALUES (?,?,?,?,?,?)",
                (source, s.signal_id, s.kind, s.person_key, ",".join(targets), now),
            )
            out.append(SignalOutcome(s.index, s.signal_id, tuple(targets), bool(holders)))
        return out

    # -- monitoring -----------------------------------------------------------------------------

    def monitoring_hit(
        self,
        con: Connection,
        *,
        rule_id: str,
        province: str,
        household_id: str,
        record_ids: Sequence[str],
        summary: str,
        now: int,
    ) -> None:
        """A rule matched a household: push it once, until the household stops matching."""
        cur = con.execute(
            "INSERT INTO monitoring_hits VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
            (rule_id, province, household_id, now),
        )
        if cur.rowcount == 0:
            return
        self.push(
            con,
            province=province,
            kind=EVENT_KINDS["monitoring_alert"],
            subject=f"rule:{rule_id}:{province}:{household_id}:{now}",
            fields={"ruleId": rule_id, "householdId": household_id, "recordIds": list(record_ids), "summary": summary},
            now=now,
        )

    def monitor(self, con: Connection, province: str, household_ids: Sequence[str], now: int) -> None:
        """Evaluate the rules on these households of ``province``, as they stand in this transaction."""
        rules = self.rules
        if rules is None:
            return
        for start in range(0, len(household_ids), 500):
            chunk = list(household_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            # Households by primary key, then their members' records by primary key: no scan of the
            # province's records (the records table has no index by household).
            households = con.execute(
                "SELECT household_id, residence_division, income_fen, members FROM households"
                f" WHERE province=? AND household_id IN ({marks})",
                (province, *chunk),
            ).fetchall()
            wanted = sorted({line.split("\t", 1)[0] for *_, text in households for line in text.splitlines() if line})
            active_of: dict[str, int] = {}
            for at in range(0, len(wanted), 500):
                part = wanted[at : at + 500]
                active_of.update(
                    con.execute(
                        "SELECT record_id, active_programs FROM records"
                        f" WHERE province=? AND record_id IN ({','.join('?' * len(part))}) AND retired_reason=0",
                        (province, *part),
                    ).fetchall()
                )
            members = {
                hid: [
                    (rid, active_of[rid])
                    for rid in (line.split("\t", 1)[0] for line in text.splitlines() if line)
                    if rid in active_of
                ]
                for hid, _residence, _income, text in households
            }
            for hid, residence, income, _text in households:
                held = members.get(hid, [])
                if not held:
                    continue  # no live member: nobody to help
                mask = 0
                for _, active in held:
                    mask |= active
                facts = HouseholdFacts(
                    province=province,
                    household_id=hid,
                    residence_division=residence,
                    income_per_member_fen=income,
                    active_programs=mask,
                    members=len(held),
                    record_ids=tuple(sorted(rid for rid, _ in held)),
                )
                matched = {rule.id: why for rule, why in rules.evaluate(facts)}
                for rule in rules.rules:
                    if rule.id in matched:
                        self.monitoring_hit(
                            con,
                            rule_id=rule.id,
                            province=province,
                            household_id=hid,
                            record_ids=facts.record_ids,
                            summary=matched[rule.id],
                            now=now,
                        )
                    else:
                        self.monitoring_cleared(con, rule.id, province, hid)

    @staticmethod
    def monitoring_cleared(con: Connection, rule_id: str, province: str, household_id: str) -> None:
        """The household no longer matches the rule: a later match is a new alert."""
        con.execute(
            "DELETE FROM monitoring_hits WHERE rule_id=? AND province=? AND household_id=?",
            (rule_id, province, household_id),
        )

    @staticmethod
    def record_rules(con: Connection, digest: bytes, text: str, now: int) -> bool:
        """Remember a set of rules; True when the hub has not run with it before."""
        cur = con.execute("INSERT INTO monitoring_rules VALUES (?,?,?) ON CONFLICT DO NOTHING", (digest, now, text))
        return bool(cur.rowcount > 0)

    # -- delivery -------------------------------------------------------------------------------

    @staticmethod
    def events_after(con: Connection, province: str, after: int, limit: int) -> list[LoopEvent]:
        """The province's events with a sequence above ``after``, in order."""
        return [
            LoopEvent(seq, event_id, kind, json.loads(body), created, respond_by, sealed, subject)
            for seq, event_id, kind, body, created, respond_by, sealed, subject in con.execute(
                "SELECT seq, event_id, kind, body, created_at_us, respond_by_us, sealed_pii, subject FROM events"
                " WHERE province=? AND seq>? ORDER BY seq LIMIT ?",
                (province, after, limit),
            )
        ]

    @staticmethod
    def cursor(con: Connection, province: str, node: str) -> int:
        """The node's cursor: every event of its province up to it was acknowledged (by a node of the province)."""
        row = con.execute("SELECT cursor FROM event_cursors WHERE province=? AND node=?", (province, node)).fetchone()
        return 0 if row is None else int(row[0])

    def acknowledge(
        self, con: Connection, province: str, node: str, event_ids: Sequence[str], now: int
    ) -> tuple[int, list[str]]:
        """Mark events acknowledged by ``node``; returns its new cursor and the ids that are not its province's."""
        unknown = []
        for event_id in event_ids:
            cur = con.execute(
                "UPDATE events SET acked_at_us=CASE WHEN acked_at_us=0 THEN ? ELSE acked_at_us END"
                " WHERE event_id=? AND province=?",
                (now, event_id, province),
            )
            if cur.rowcount == 0:
                unknown.append(event_id)
        # The cursor moves over the province's events in order up to the first one not yet acknowledged.
        cursor = start = self.cursor(con, province, node)
        for seq, acked in con.execute(
            "SELECT seq, acked_at_us FROM events WHERE province=? AND seq>? ORDER BY seq", (province, cursor)
        ):
            if not acked:
                break
            cursor = seq
        if cursor != start:
            con.execute(
                "INSERT INTO event_cursors VALUES (?,?,?)"
                " ON CONFLICT (province, node) DO UPDATE SET cursor=excluded.cursor",
                (province, node, cursor),
            )
        return cursor, unknown

    @staticmethod
    def event(con: Connection, event_id: str) -> tuple[str, int, str, int] | None:
        """(province, kind, subject, outcome) of an event."""
        row = con.execute(
            "SELECT province, kind, subject, outcome FROM events WHERE event_id=?", (event_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def report(
        self,
        con: Connection,
        *,
        province: str,
        node: str,
        event_id: str,
        outcome: int,
        reason: str,
        now: int,
    ) -> ReportResult:
        """Record a province's outcome; closes the matter when every province it was pushed to has reported."""
        con.execute(
            "UPDATE events SET outcome=?, outcome_reason=?, outcome_at_us=?, outcome_node=?,"
            " acked_at_us=CASE WHEN acked_at_us=0 THEN ? ELSE acked_at_us END WHERE event_id=? AND province=?",
            (outcome, reason, now, node, now, event_id, province),
        )
        _, kind, subject, _ = self.event(con, event_id) or ("", 0, "", 0)
        waiting = con.execute(
            "SELECT count(*) FROM events WHERE subject=? AND outcome=0 AND kind<>?", (subject, EVENT_KINDS["overdue"])
        ).fetchone()[0]
        closed = waiting == 0
        if closed and kind == EVENT_KINDS["duplicate_enrollment"]:
            finding_id = subject.split(":")[1]
            con.execute(
                "UPDATE findings SET is_open=0, resolved_at_us=? WHERE finding_id=? AND is_open=1", (now, finding_id)
            )
        if kind != EVENT_KINDS["overdue"]:
            # An overdue notice is settled by the outcome of the event it is about (found by its subject).
            con.execute(
                "UPDATE events SET outcome=?, outcome_at_us=? WHERE subject=? AND outcome=0",
                (outcome, now, _overdue_subject(event_id)),
            )
        return ReportResult(now, False, closed)

    def mark_overdue(self, con: Connection, now: int) -> int:
        """Escalate events past their respond_by without an outcome: an OVERDUE event to the same province."""
        rows = con.execute(
            "SELECT seq, province, event_id, kind, body FROM events"
            " WHERE respond_by_us>0 AND respond_by_us<? AND outcome=0 AND overdue_at_us=0 AND kind<>?",
            (now, EVENT_KINDS["overdue"]),
        ).fetchall()
        for seq, province, event_id, _kind, body in rows:
            con.execute("UPDATE events SET overdue_at_us=? WHERE seq=?", (now, seq))
            original = json.loads(body)
            self.push(
                con,
                province=province,
                kind=EVENT_KINDS["overdue"],
                subject=_overdue_subject(event_id),
                fields={
                    "overdueEventId": event_id,
                    "recordIds": original.get("recordIds", []),
                    "summary": "no outcome reported in time: " + str(original.get("summary", "")),
                },
                now=now,
            )
        return len(rows)

    @staticmethod
    def loop_by_kind(con: Connection) -> list[tuple[str, str, int, int, int, int]]:
        """Per province and kind of event: (province, kind, pushed, acknowledged, answered, overdue); in order."""
        return [
            (province, _KIND_NAMES.get(kind, str(kind)), pushed, acked, reported, overdue)
            for province, kind, pushed, acked, reported, overdue in con.execute(
                "SELECT province, kind, count(*), count(*) FILTER (WHERE acked_at_us<>0),"
                " count(*) FILTER (WHERE outcome<>0), count(*) FILTER (WHERE overdue_at_us<>0 AND outcome=0)"
                " FROM events WHERE kind<>? GROUP BY province, kind ORDER BY province, kind",
                (EVENT_KINDS["overdue"],),
            )
        ]

    @staticmethod
    def loop_state(con: Connection) -> list[ProvinceLoop]:
        """Per province: events pushed, acknowledged, reported, overdue, still open (overdue notices not counted)."""
        out: dict[str, ProvinceLoop] = {}
        for province, pushed, acked, reported, overdue, open_ in con.execute(
            "SELECT province, count(*), count(*) FILTER (WHERE acked_at_us<>0), count(*) FILTER (WHERE outcome<>0),"
            " count(*) FILTER (WHERE overdue_at_us<>0 AND outcome=0), count(*) FILTER (WHERE outcome=0)"
            " FROM events WHERE kind<>? GROUP BY province ORDER BY province",
            (EVENT_KINDS["overdue"],),
        ):
            out[province] = ProvinceLoop(province, pushed, acked, reported, overdue, open_)
        for province, outcome, n in con.execute(
            "SELECT province, outcome, count(*) FROM events WHERE kind<>? AND outcome<>0 GROUP BY province, outcome",
            (EVENT_KINDS["overdue"],),
        ):
            out[province].by_outcome[outcome] = n
        return list(out.values())
