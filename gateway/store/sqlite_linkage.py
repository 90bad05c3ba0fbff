"""Identity linkage in SQLite: the hub's warm linkage index, and the links, reviews and lineage it decides.

:class:`LinkageLedger` works on the connection the store hands it, inside the store's writer
thread, like :mod:`gateway.store.sqlite_audit` and :mod:`gateway.store.sqlite_loop`. It keeps
the in-memory :class:`~gateway.domain.linkage.LinkageIndex` and writes every decision in the
transaction of the batch (or the reviewer's call) that made it.

**What the index holds.** Every record whose province flagged its ID number unverified (an
*unverified record*, held under a provisional person key), the records with valid numbers linked
or in review with them, and up to ``max_transient`` more read in as candidates (least recently
used go). The valid population is not held in full: a record with a valid number is identified by
its number (its person key), and its linkage features would cost about 0.1 ms and 3 KB each.
Instead the ledger keeps a *birth-date directory*: per date of birth, the person keys of the live
records born on it (16 bytes a record), appended on the sync path at a cost of well under a
microsecond. An unverified record arriving asks for candidates:

* the person keys of the valid numbers its own number could be (itself, a 15-digit number
  lengthened, the GB 11643 corrections one typo away): looked up in the person-key index;
* the directory under its birth date, the date with day and month swapped, and the dates one of
  year, month or day off by one (records of the other gender are not read);

the candidates' rows are read and unsealed, filed in the index (*materialised*), and the record
is added: linked where the model's probability reaches the link threshold, queued for review in
the grey band. Arriving the other way round — the valid record after the unverified one — the
valid record is scored against the unverified records alone when its person key is one an
unverified number could be, or its birth date (or the swapped one) is one an unverified record
states; otherwise it costs only its directory entry. That check is near zero while unverified
records are few; if they come to cover most birth dates it becomes a scoring of every valid
record (about 0.3 ms), and belongs in a background sweep.

**Person keys.** A cluster of linked records answers to one person key, its *anchor*: the
smallest person key among its records with valid numbers, or, without any, the smallest
provisional key. Unverified records are re-keyed to their cluster's anchor (``records.person_key``
is updated in the same transaction), so duplicate-enrollment findings and CheckEnrollment see
them as that person; records with valid numbers always keep their own key. The anchor depends
only on the cluster's members, so a rebuild gives the same keys.

**Rollback.** The index is memory; a transaction can roll back after it changed. Every
transaction that changes the linker's state bumps ``linkage_state.generation`` and the ledger's
copy; before each use the ledger compares them and rebuilds the index from the tables if they
differ. Directory entries of rolled-back records are only hints: a candidate whose row is not
there is skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.audit import AuditEntry
from gateway.domain.identity import is_valid_id_number
from gateway.domain.linkage import (
    ComparisonEvidence,
    EventKind,
    LineageEvent,
    LinkageIndex,
    LinkageModel,
    LinkageRecord,
    LinkDecision,
    LinkOutcome,
    LinkRule,
    LinkSettings,
    ReviewItem,
    ReviewStatus,
    bootstrap_model,
    features_of,
    normalize_name,
    train_model,
)
from gateway.domain.linkage._index import AddResult
from gateway.domain.model import Outcome
from gateway.domain.protection import FieldSealer, PersonKeyer
from gateway.domain.records import PreparedRecord, unseal_pii
from gateway.errors import FailedPrecondition, NotFound, StoreError
from gateway.store.base import (
    LineageEventView,
    LineageView,
    LinkView,
    NodeRef,
    PersonKeyChange,
    RecordKey,
    ReviewView,
)
from gateway.store.engine import Connection
from gateway.store.sqlite_audit import AuditLedger
from gateway.store.sqlite_loop import EVENT_KINDS, LoopLedger

__all__ = [
    "LINKER",
    "LinkageLedger",
    "LinkageStatus",
    "ModelInfo",
    "current_model",
    "probe_dates",
    "record_key",
    "sample_records",
    "split_key",
    "store_model",
]

log = structlog.get_logger("hutong.linkage")

#: The actor of the links the hub makes as records arrive.
LINKER = "linker"
#: The method name of the audit entry a batch's linkage decisions get (one per batch that linked).
LINK_METHOD = "/hutong.hub.Linker/LinkRecords"
#: hutong.v1.LineageEventKind numbers.
_KIND = {
    EventKind.LINKED: 1,
    EventKind.REVIEW_ACCEPTED: 2,
    EventKind.REVIEW_REJECTED: 3,
    EventKind.SPLIT: 4,
    EventKind.DETACHED: 5,
}
_LINKED, _ACCEPTED, _REJECTED_KIND, _SPLIT, _DETACHED = 1, 2, 3, 4, 5
#: hutong.v1.ReviewState numbers.
OPEN, ACCEPTED, REJECTED, SUPERSEDED = 1, 2, 3, 4
_STATUS = {
    OPEN: ReviewStatus.OPEN,
    ACCEPTED: ReviewStatus.ACCEPTED,
    REJECTED: ReviewStatus.REJECTED,
    SUPERSEDED: ReviewStatus.SUPERSEDED,
}
_WRITTEN = frozenset((int(Outcome.CREATED), int(Outcome.UPDATED)))
_UPDATED = int(Outcome.UPDATED)
_KEY_BYTES = 16
_CHUNK = 500


def record_key(province: str, record_id: str) -> str:
    """The index's name of a record: ``province/record_id``."""
    return f"{province}/{record_id}"


def split_key(key: str) -> RecordKey:
    """(province, record id) of a record key (a record id may itself hold ``/``)."""
    province, _, record_id = key.partition("/")
    return province, record_id


def _date_int(year: int, month: int, day: int) -> int:
    return year * 10000 + month * 100 + day


def probe_dates(birth: int) -> tuple[int, ...]:
    """The ``yyyymmdd`` dates whose records may be an unverified record's born on ``birth``.

    The date itself, day and month swapped, and each of year, month and day one off: the
    errors between two provinces' registers that the model's birth-date levels expect.
    """
    year, month, day = birth // 10000, birth // 100 % 100, birth % 100
    dates = {birth, _date_int(year, day, month), _date_int(year - 1, month, day), _date_int(year + 1, month, day)}
    for m in (month - 1, month + 1):
        if 1 <= m <= 12:
            dates.add(_date_int(year, m, day))
    for d in (day - 1, day + 1):
        if 1 <= d <= 31:
            dates.add(_date_int(year, month, d))
    return tuple(sorted(dates))


def _trigger_dates(birth: int) -> tuple[int, ...]:
    """The dates whose valid records are scored against an unverified record on arrival: as stated, or swapped."""
    year, month, day = birth // 10000, birth // 100 % 100, birth % 100
    swapped = _date_int(year, day, month)
    return (birth,) if swapped == birth else (birth, swapped)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def decision_of(data: Mapping[str, Any]) -> LinkDecision:
    """A :class:`LinkDecision` from its ``as_dict()``."""
    return LinkDecision(
        record_key=str(data["record_key"]),
        other_key=str(data["other_key"]),
        rule=LinkRule(data["rule"]),
        outcome=LinkOutcome(data["outcome"]),
        match_weight=float(data["match_weight"]),
        match_probability=float(data["match_probability"]),
        evidence=tuple(
            ComparisonEvidence(
                str(e["comparison"]), str(e["level"]), float(e["weight"]), bool(e["term_frequency_adjusted"])
            )
            for e in data["evidence"]
        ),
    )


def _linkage_record(
    sealer: FieldSealer,
    province: str,
    record_id: str,
    sealed: bytes,
    gender: int,
    birth: int,
    hukou: str,
    residence: str,
    household_id: str,
    household: frozenset[str] = frozenset(),
) -> LinkageRecord:
    id_number, name = unseal_pii(sealer, sealed, province, record_id)
    return LinkageRecord(
        key=record_key(province, record_id),
        province=province,
        name=name,
        id_number=id_number,
        birth_date=f"{birth:08d}" if birth else None,
        gender=gender,
        hukou_division=hukou,
        residence_division=residence,
        household_id=household_id,
        household_members=household,
    )


_ROW = "province, record_id, sealed_pii, gender, birth_date, hukou_division, residence_division, household_id"
#: Positions in a ``_ROW``.
_PROVINCE, _RECORD_ID, _BIRTH, _HOUSEHOLD = 0, 1, 4, 7


def co_members(
    con: Connection, sealer: FieldSealer, records: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str], frozenset[str]]:
    """The normalised names of each record's household co-members, from the households the province sent.

    ``records``: (province, record id, household id). A household is read once however many of
    its members are asked about; its live members' names are unsealed once. Names, not person
    keys: a household that moved is registered again with the same names, while its members'
    keys differ wherever the new province could not give valid numbers. Records without a
    household, or whose household the province has not sent, get an empty set.
    """
    wanted: dict[tuple[str, str], list[str]] = {}
    for province, record_id, household_id in records:
        if household_id:
            wanted.setdefault((province, household_id), []).append(record_id)
    if not wanted:
        return {}
    rosters: dict[tuple[str, str], list[str]] = {}
    households = list(wanted)
    for start in range(0, len(households), _CHUNK):
        chunk = households[start : start + _CHUNK]
        for province, household_id, members in con.execute(
            "SELECT province, household_id, members FROM households WHERE (province, household_id) IN"
            f" (VALUES {','.join(['(?,?)'] * len(chunk))})",
            [v for pair in chunk for v in pair],
        ):
            rosters[(province, household_id)] = [line.partition("\t")[0] for line in members.splitlines() if line]
    member_keys = list(dict.fromkeys((p, m) for (p, _), ids in rosters.items() for m in ids))
    names: dict[tuple[str, str], str] = {}
    for start in range(0, len(member_keys), _CHUNK):
        chunk = member_keys[start : start + _CHUNK]
        for province, record_id, sealed in con.execute(
            "SELECT province, record_id, sealed_pii FROM records WHERE (province, record_id) IN"
            f" (VALUES {','.join(['(?,?)'] * len(chunk))}) AND retired_reason=0",
            [v for pair in chunk for v in pair],
        ):
            name = normalize_name(unseal_pii(sealer, sealed, province, record_id)[1])
            if name:
                names[(province, record_id)] = name
    out: dict[tuple[str, str], frozenset[str]] = {}
    for (province, household_id), record_ids in wanted.items():
        roster = rosters.get((province, household_id), ())
        for record_id in record_ids:
            out[(province, record_id)] = frozenset(
                names[(province, m)] for m in roster if m != record_id and (province, m) in names
            )
    return out


def linkage_records(con: Connection, sealer: FieldSealer, rows: Sequence[Sequence[Any]]) -> list[LinkageRecord]:
    """Unsealed linker records of ``_ROW`` rows, with their household co-members."""
    household = co_members(con, sealer, ((r[_PROVINCE], r[_RECORD_ID], r[_HOUSEHOLD]) for r in rows))
    empty: frozenset[str] = frozenset()
    return [
        _linkage_record(
            sealer,
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            row[7],
            household.get((row[0], row[1]), empty),
        )
        for row in rows
    ]


def sample_records(con: Connection, sealer: FieldSealer, limit: int) -> list[LinkageRecord]:
    """Up to ``limit`` live records, evenly spread over the table in key order (deterministic), unsealed."""
    total = con.execute("SELECT count(*) FROM records WHERE retired_reason=0").fetchone()[0]
    take = min(limit, total)
    if not take:
        return []
    # Row n (from 1, in key order) is taken when it crosses the next of ``take`` evenly spaced
    # marks; chosen in the database, so only the sample crosses to the hub, however large the table.
    picked = con.execute(
        f"SELECT {_ROW} FROM (SELECT {_ROW}, ROW_NUMBER() OVER (ORDER BY province, record_id) AS n"
        " FROM records WHERE retired_reason=0) sample WHERE n * ? / ? > (n - 1) * ? / ? ORDER BY n",
        (take, total, take, total),
    ).fetchall()
    out = []
    for start in range(0, len(picked), _CHUNK):
        out.extend(linkage_records(con, sealer, picked[start : start + _CHUNK]))
    return out


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One stored linkage model."""

    version: int
    source: str
    records: int
    created_at_us: int
    digest: bytes
    model: LinkageModel


def store_model(con: Connection, model: LinkageModel, *, source: str, records: int, now: int) -> int:
    """Add ``model`` as the newest version; returns its version."""
    text = model.to_json()
    (version,) = con.execute(
        "INSERT INTO linkage_models (created_at_us, source, records, digest, model) VALUES (?,?,?,?,?)"
        " RETURNING version",
        (now, source, records, hashlib.sha256(text.encode()).digest(), text),
    ).fetchone()
    return int(version)


def current_model(con: Connection) -> ModelInfo | None:
    """The newest stored model, or None."""
    row = con.execute(
        "SELECT version, source, records, created_at_us, digest, model FROM linkage_models"
        " ORDER BY version DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return ModelInfo(row[0], row[1], row[2], row[3], bytes(row[4]), LinkageModel.from_json(row[5]))


@dataclass(frozen=True, slots=True)
class LinkageStatus:
    """What opening (or rebuilding) the index found, for the start-up log and operators."""

    model_version: int
    model_source: str
    #: True when this start trained or stored the model (a new version).
    model_created: bool
    #: True when no hub had linked with this model version before (it deserves an audit entry).
    model_first_use: bool
    #: Records the model was trained on (0 for the bootstrap model).
    model_records: int
    #: SHA-256 of the model's JSON.
    model_digest: bytes
    #: Records filed in the index (unverified ones and the valid ones linked or in review with them).
    held: int
    unverified: int
    #: Person keys in the birth-date directory (every live record).
    directory: int
    active_links: int
    open_reviews: int
    seconds: float


@dataclass
class _Work:
    """What one transaction's linkage did: for the audit entry and the findings."""

    now: int
    touched: set[bytes] = field(default_factory=set)
    persons: set[bytes] = field(default_factory=set)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    links: int = 0
    reviews: int = 0
    superseded: int = 0
    rekeyed: int = 0
    compared: int = 0
    materialised: int = 0


class LinkageLedger:
    """The hub's warm linkage index and its tables; every method runs in the store's writer thread."""

    def __init__(
        self,
        keyer: PersonKeyer,
        sealer: FieldSealer,
        settings: LinkSettings | None = None,
        *,
        max_candidates: int = 2000,
        max_transient: int = 10_000,
        train_min_records: int = 10_000,
        train_sample: int = 100_000,
    ) -> None:
        self._keyer = keyer
        self._sealer = sealer
        self.settings = settings or LinkSettings()
        #: At most this many valid records are read in for one unverified record (a guard).
        self.max_candidates = max_candidates
        #: Valid records read in as candidates but neither linked nor in review stay filed, for the
        #: next unverified record born on the same dates, up to this many (least recently used go).
        self.max_transient = max_transient
        #: A hub without a model trains one at start when it holds this many live records; else bootstrap.
        self.train_min_records = train_min_records
        self.train_sample = train_sample
        #: Other hub replicas write the same database (set by the store): candidates come from the
        #: database's birth-date index rather than this process's directory, and the index is
        #: checked against the tables at every batch, not only at batches that link.
        self.shared = False
        self.model: LinkageModel | None = None
        self.model_version = 0
        self.model_source = ""
        self.index: LinkageIndex | None = None
        self._directory: dict[int, bytearray] = {}
        self._person_key: dict[str, bytes] = {}
        self._unverified: dict[str, bytes] = {}
        self._trigger_births: set[int] = set()
        self._trigger_keys: set[bytes] = set()
        self._transient: OrderedDict[str, None] = OrderedDict()
        #: Records named by a review item (open or decided): kept filed.
        self._reviewed: set[str] = set()
        self._generation = 0

    # -- start-up --------------------------------------------------------------------------------

    def open(self, con: Connection, now: int) -> LinkageStatus:
        """Load the newest model (training or bootstrapping the first) and build the index from the tables."""
        started = time.perf_counter()
        info = current_model(con)
        created = info is None
        if info is None:
            live = con.execute("SELECT count(*) FROM records WHERE retired_reason=0").fetchone()[0]
            if live >= self.train_min_records:
                records = sample_records(con, self._sealer, self.train_sample)
                model, source, trained_on = train_model(records), "trained", len(records)
            else:
                model, source, trained_on = bootstrap_model(), "bootstrap", 0
            store_model(con, model, source=source, records=trained_on, now=now)
            info = current_model(con)
            assert info is not None
        self.model, self.model_version, self.model_source = info.model, info.version, info.source
        first_use = (
            con.execute(
                "UPDATE linkage_models SET first_used_at_us=? WHERE version=? AND first_used_at_us=0",
                (now, info.version),
            ).rowcount
            > 0
        )
        self._rebuild(con)
        assert self.index is not None
        return LinkageStatus(
            model_version=self.model_version,
            model_source=self.model_source,
            model_created=created,
            model_first_use=first_use,
            model_records=info.records,
            model_digest=info.digest,
            held=len(self.index),
            unverified=len(self._unverified),
            directory=sum(len(v) for v in self._directory.values()) // _KEY_BYTES,
            active_links=con.execute("SELECT count(*) FROM linkage_links WHERE ended_seq=0").fetchone()[0],
            open_reviews=len(self.index.review_queue()),
            seconds=time.perf_counter() - started,
        )

    def _hold_rows(self, con: Connection, rows: Sequence[Sequence[Any]]) -> list[str]:
        """File ``_ROW`` rows followed by their person key in the index; their record keys."""
        assert self.index is not None
        keys = []
        for row, record in zip(rows, linkage_records(con, self._sealer, rows), strict=True):
            self.index.hold(record)
            self._person_key[record.key] = bytes(row[8])
            keys.append(record.key)
        return keys

    def _expect(self, key: str, birth: int) -> None:
        """Remember what a valid record arriving later must have to be scored against this unverified one."""
        assert self.index is not None
        if birth:
            self._trigger_births.update(_trigger_dates(birth))
        for number in self.index.features(key).id_keys:
            if len(number) == 18 and is_valid_id_number(number):
                self._trigger_keys.add(self._keyer.person_key(number))

    def _rebuild(self, con: Connection) -> None:
        """The index from the tables: unverified records, the records linked or in review with them, decisions."""
        assert self.model is not None
        self.index = index = LinkageIndex(self.model, self.settings)
        directory: dict[int, bytearray] = {}
        self._directory = directory
        self._person_key, self._unverified = {}, {}
        self._trigger_births, self._trigger_keys = set(), set()
        self._transient, self._reviewed = OrderedDict(), set()
        live = () if self.shared else con.execute("SELECT birth_date, person_key FROM records WHERE retired_reason=0")
        for birth, person_key in live:
            keys = directory.get(birth)
            if keys is None:
                directory[birth] = bytearray(person_key)
            else:
                keys += person_key
        rows = con.execute(
            f"SELECT {', '.join('r.' + c.strip() for c in _ROW.split(','))}, r.person_key, u.provisional_key"
            " FROM linkage_unverified u JOIN records r ON r.province=u.province AND r.record_id=u.record_id"
        ).fetchall()
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            for row, key in zip(chunk, self._hold_rows(con, chunk), strict=True):
                self._unverified[key] = bytes(row[9])
                self._expect(key, row[_BIRTH])
        wanted: set[str] = set()
        for a, b in con.execute("SELECT record_a, record_b FROM linkage_links WHERE ended_seq=0"):
            wanted.update((a, b))
        for a, b, state in con.execute("SELECT record_a, record_b, state FROM linkage_reviews"):
            self._reviewed.update((a, b))
            if state == OPEN:
                wanted.update((a, b))
        self._hold_rows(con, self._rows(con, sorted(wanted - set(self._person_key))))
        for a, b, decision, made_by, reason in con.execute(
            "SELECT l.record_a, l.record_b, l.decision, l.made_by, e.reason FROM linkage_links l"
            " JOIN linkage_events e ON e.seq=l.made_seq WHERE l.ended_seq=0 ORDER BY l.made_seq"
        ):
            if a in index and b in index:
                kind = EventKind.LINKED if made_by == LINKER else EventKind.REVIEW_ACCEPTED
                index.restore_link(decision_of(json.loads(decision)), kind=kind, actor=made_by, reason=reason)
        for review_id, decision, state, decided_by, reason in con.execute(
            "SELECT review_id, decision, state, decided_by, reason FROM linkage_reviews ORDER BY review_id"
        ):
            item = ReviewItem(review_id, decision_of(json.loads(decision)), _STATUS[state], decided_by, reason)
            index.restore_review(item)
        for a, b in con.execute("SELECT record_a, record_b FROM linkage_links WHERE ended_kind=?", (_SPLIT,)):
            index.keep_apart(a, b)
        self._generation = con.execute("SELECT generation FROM linkage_state").fetchone()[0]

    @staticmethod
    def _rows(con: Connection, keys: Sequence[str]) -> list[Sequence[Any]]:
        """The ``_ROW`` rows (and person keys) of the records named, those the hub holds, in ``keys`` order."""
        out = []
        for key in keys:
            row = con.execute(
                f"SELECT {_ROW}, person_key FROM records WHERE province=? AND record_id=?", split_key(key)
            )
            found = row.fetchone()
            if found is not None:
                out.append(found)
        return out

    def _check(self, con: Connection) -> None:
        """Rebuild the index if a transaction that changed it was rolled back."""
        stored = con.execute("SELECT generation FROM linkage_state").fetchone()[0]
        if stored != self._generation:
            log.warning("linkage_index_rebuilt", stored_generation=stored, memory_generation=self._generation)
            self._rebuild(con)

    def _bump(self, con: Connection) -> None:
        con.execute("UPDATE linkage_state SET generation=generation+1")
        self._generation += 1

    # -- the sync path ---------------------------------------------------------------------------

    def link_batch(
        self,
        con: Connection,
        audit: AuditLedger,
        node: NodeRef,
        batch_id: str,
        records: Sequence[PreparedRecord],
        outcomes: bytearray,
        now: int,
    ) -> set[bytes]:
        """Link the batch's written records (inside its transaction); the person keys whose findings may change.

        The common case — records with valid numbers, none of them awaited by an unverified record —
        costs a directory entry each and nothing else.
        """
        if self.index is None:
            return set()
        if self.shared:
            self._check(con)  # another replica may have linked, or held new unverified records
        index = self.index
        assert index is not None
        directory = self._directory
        births, keys = self._trigger_births, self._trigger_keys
        unverified: list[PreparedRecord] = []
        awaited: list[PreparedRecord] = []
        for r in records:
            outcome = outcomes[r.position]
            if outcome not in _WRITTEN:
                continue
            if r.identity_unverified:
                unverified.append(r)
                continue
            birth = r.birth_yyyymmdd
            if not self.shared:
                held = directory.get(birth)
                if held is None:
                    directory[birth] = bytearray(r.person_key)
                else:
                    held += r.person_key
            if (
                birth in births
                or r.person_key in keys
                or (outcome == _UPDATED and record_key(node.province_code, r.record_id) in index)
            ):
                awaited.append(r)
        if not unverified and not awaited:
            return set()
        self._check(con)
        # Bumped before the index changes: if this transaction rolls back, the stored generation
        # falls back behind the ledger's and the next use rebuilds the index.
        self._bump(con)
        work = _Work(now)
        province = node.province_code
        for r in awaited:
            self._link_valid(con, province, r, work)
        for r in unverified:
            self._link_unverified(con, province, r, work)
        if work.decisions or work.rekeyed:
            audit.append(con, [self._audit_entry(audit, node, batch_id, work)])
        self._evict()
        return work.touched

    def person_key_of(self, province: str, record_id: str, default: bytes) -> bytes:
        """The person key a record answers to after linkage (its cluster's, if it is held), else ``default``."""
        return self._person_key.get(record_key(province, record_id), default)

    def _evict(self) -> None:
        """Forget the least recently wanted candidates beyond ``max_transient`` (unless linked or reviewed since)."""
        assert self.index is not None
        transient = self._transient
        while len(transient) > self.max_transient:
            key, _ = transient.popitem(last=False)
            if key in self.index and not self.index.links_of(key) and key not in self._reviewed:
                self.index.drop(key)
                self._person_key.pop(key, None)

    def _record(self, con: Connection, province: str, r: PreparedRecord) -> LinkageRecord:
        household = co_members(con, self._sealer, [(province, r.record_id, r.household_id)])
        return _linkage_record(
            self._sealer,
            province,
            r.record_id,
            r.sealed_pii,
            r.gender,
            r.birth_yyyymmdd,
            r.hukou_division,
            r.residence_division,
            r.household_id,
            household.get((province, r.record_id), frozenset()),
        )

    def _link_valid(self, con: Connection, province: str, r: PreparedRecord, work: _Work) -> None:
        """A record with a valid number arrived or changed: score it against the unverified records only."""
        assert self.index is not None
        index = self.index
        record = self._record(con, province, r)
        key = record.key
        if key in index:
            was_unverified = self._unverified.pop(key, None) is not None
            if was_unverified:
                con.execute("DELETE FROM linkage_unverified WHERE province=? AND record_id=?", (province, r.record_id))
            self._person_key[key] = r.person_key
            replaced = index.replace(record)
            if not replaced and not was_unverified:
                return
            if replaced:
                self._supersede(con, key, "the record changed", work)
            # Its identity changed (or is now its number): its links are decided afresh.
            if index.links_of(key):
                self._detach(con, key, "the record changed", work)
            self._apply(con, index.relink(key, among=self._unverified), work)
            return
        candidates = index.candidates(record, among=self._unverified)
        if not candidates.links and not candidates.reviews:
            return
        self._person_key[key] = r.person_key
        work.materialised += 1
        self._apply(con, index.add(record, among=self._unverified), work)

    def _link_unverified(self, con: Connection, province: str, r: PreparedRecord, work: _Work) -> None:
        """A record without a valid number arrived or changed: read in its candidates and link it."""
        assert self.index is not None
        index = self.index
        record = self._record(con, province, r)
        key = record.key
        self._materialise(con, record, work)
        if key in index:
            was_valid = key not in self._unverified
            if was_valid:  # its province can no longer vouch for its number
                self._unverified[key] = r.person_key
                con.execute(
                    "INSERT INTO linkage_unverified VALUES (?,?,?) ON CONFLICT DO NOTHING",
                    (province, r.record_id, r.person_key),
                )
            replaced = index.replace(record)
            self._expect(key, r.birth_yyyymmdd)
            if not replaced and not was_valid:
                # The upsert wrote the provisional key over the one its cluster gave it: put that back.
                current = self._person_key[key]
                if current != r.person_key:
                    self._write_key(con, key, current)
                    work.touched.update((current, r.person_key))
                return
            if replaced:
                self._supersede(con, key, "the record changed", work)
            if index.links_of(key):
                self._detach(con, key, "the record changed", work)
            else:
                self._person_key[key] = r.person_key
            self._apply(con, index.relink(key), work)
            return
        self._unverified[key] = r.person_key
        self._person_key[key] = r.person_key
        con.execute(
            "INSERT INTO linkage_unverified VALUES (?,?,?) ON CONFLICT DO NOTHING",
            (province, r.record_id, r.person_key),
        )
        result = index.add(record)
        self._expect(key, r.birth_yyyymmdd)
        work.persons.add(r.person_key)
        self._apply(con, result, work)

    def _materialise(self, con: Connection, record: LinkageRecord, work: _Work) -> None:
        """File the live records an unverified record may be (by number neighbours and birth dates) in the index."""
        assert self.index is not None
        features = features_of(record)
        wanted: dict[bytes, None] = {}
        for number in features.id_keys:
            if len(number) == 18 and is_valid_id_number(number):
                wanted[self._keyer.person_key(number)] = None
        # The stated date and its swap first (the cap keeps the likeliest), then the ones a step off.
        births = [_date_int(*features.birth)] if features.birth is not None else []
        if len(features.id_number) == 18 and features.id_number[6:14].isdigit():
            births.append(int(features.id_number[6:14]))
        dates = dict.fromkeys(date for birth in births for date in _trigger_dates(birth))
        dates.update(dict.fromkeys(date for birth in births for date in probe_dates(birth)))
        cap = self.max_candidates * _KEY_BYTES
        for date in dates:
            if self.shared:  # the newest records born that day, from the database's index
                wanted.update(
                    (bytes(k), None)
                    for (k,) in con.execute(
                        "SELECT person_key FROM records WHERE birth_date=? AND retired_reason=0"
                        " ORDER BY received_at_us DESC LIMIT ?",
                        (date, self.max_candidates),
                    )
                )
                continue
            blob = self._directory.get(date)
            if blob:
                tail = blob[-cap:]
                for start in range(len(tail) - _KEY_BYTES, -1, -_KEY_BYTES):
                    wanted[bytes(tail[start : start + _KEY_BYTES])] = None
        person_keys = list(wanted)[: self.max_candidates]
        index = self.index
        # A record of the other gender cannot reach the review band (the model weighs it at about
        # -17 bits): not worth reading in. Unknown on either side keeps the record.
        gender = " AND gender IN (0, ?)" if features.gender else ""
        for start in range(0, len(person_keys), _CHUNK):
            chunk = person_keys[start : start + _CHUNK]
            rows = con.execute(
                f"SELECT {_ROW}, person_key FROM records WHERE person_key IN ({','.join('?' * len(chunk))})"
                f" AND retired_reason=0{gender}",
                (*chunk, features.gender) if gender else chunk,
            ).fetchall()
            new = []
            for row in rows:
                key = record_key(row[0], row[1])
                if key in self._transient:
                    self._transient.move_to_end(key)
                elif key not in index and key != record.key:
                    new.append(row)
            for key in self._hold_rows(con, new):
                self._transient[key] = None
            work.materialised += len(new)

    # -- decisions and their consequences --------------------------------------------------------

    def _anchor(self, members: Iterable[str]) -> bytes:
        members = list(members)
        valid = [self._person_key[m] for m in members if m not in self._unverified and m in self._person_key]
        if valid:
            return min(valid)
        return min(self._unverified[m] for m in members if m in self._unverified)

    def _write_key(self, con: Connection, key: str, person_key: bytes) -> None:
        province, record_id = split_key(key)
        con.execute(
            "UPDATE records SET person_key=? WHERE province=? AND record_id=?", (person_key, province, record_id)
        )

    def _rekey(self, con: Connection, clusters: Iterable[str], work: _Work) -> list[PersonKeyChange]:
        """Give the unverified records of ``clusters`` their cluster's person key; returns the changes."""
        assert self.index is not None
        changes = []
        for cluster in dict.fromkeys(clusters):
            members = self.index.members(cluster)
            anchor = self._anchor(members)
            for key in sorted(members):
                if key not in self._unverified:
                    continue
                before = self._person_key[key]
                if before == anchor:
                    continue
                self._write_key(con, key, anchor)
                self._person_key[key] = anchor
                changes.append(PersonKeyChange(split_key(key), before, anchor))
                work.touched.update((before, anchor))
                work.persons.update((before, anchor))
        work.rekeyed += len(changes)
        return changes

    def _persist(
        self,
        con: Connection,
        event: LineageEvent,
        changes: Sequence[PersonKeyChange],
        work: _Work,
        *,
        model_version: int,
    ) -> int:
        """Write one lineage event, the records it touched and the link it made or undid; returns its sequence."""
        assert self.index is not None
        kind = _KIND[event.kind]
        decision = event.decision.as_dict() if event.decision is not None else None
        (seq,) = con.execute(
            "INSERT INTO linkage_events (kind, records, decision, model_version, actor, reason, rekeyed, at_us)"
            " VALUES (?,?,?,?,?,?,?,?) RETURNING seq",
            (
                kind,
                _json(list(event.record_keys)),
                _json(decision) if decision is not None else "",
                model_version,
                event.actor,
                event.reason,
                _json([["/".join(c.record), c.before.hex(), c.after.hex()] for c in changes]),
                work.now,
            ),
        ).fetchone()
        # The records of the pair's clusters as they stand (a later link of the same arrival may
        # already have merged an event's cluster into another).
        touched = set(event.record_keys)
        for cluster in {self.index.cluster_of(key) for key in event.record_keys}:
            touched.update(self.index.members(cluster))
        con.executemany(
            "INSERT INTO linkage_event_records VALUES (?,?) ON CONFLICT DO NOTHING", [(k, seq) for k in touched]
        )
        if kind in (_LINKED, _ACCEPTED) and decision is not None:
            con.execute(
                "INSERT INTO linkage_links (record_a, record_b, decision, model_version, made_by, made_seq,"
                " created_at_us) VALUES (?,?,?,?,?,?,?)",
                (
                    event.record_keys[0],
                    event.record_keys[1],
                    _json(decision),
                    model_version,
                    event.actor,
                    seq,
                    work.now,
                ),
            )
        elif kind == _SPLIT:
            a, b = event.record_keys
            con.execute(
                "UPDATE linkage_links SET ended_seq=?, ended_kind=?, ended_at_us=? WHERE ended_seq=0"
                " AND ((record_a=? AND record_b=?) OR (record_a=? AND record_b=?))",
                (seq, kind, work.now, a, b, b, a),
            )
        elif kind == _DETACHED:
            (a,) = event.record_keys
            con.execute(
                "UPDATE linkage_links SET ended_seq=?, ended_kind=?, ended_at_us=? WHERE ended_seq=0"
                " AND (record_a=? OR record_b=?)",
                (seq, kind, work.now, a, a),
            )
        if decision is not None:
            work.decisions.append({"seq": seq, "kind": kind, **decision})
        for key in event.record_keys:
            person_key = self._person_key.get(key)
            if person_key is not None:
                work.persons.add(person_key)
        return int(seq)

    def _supersede(self, con: Connection, key: str, reason: str, work: _Work) -> None:
        """Close the record's open review items: their evidence was about what it no longer says."""
        assert self.index is not None
        for item in self.index.supersede(key, actor=LINKER, reason=reason):
            con.execute(
                "UPDATE linkage_reviews SET state=?, decided_at_us=?, decided_by=?, reason=? WHERE review_id=?",
                (SUPERSEDED, work.now, LINKER, reason, item.review_id),
            )
            work.superseded += 1
            work.decisions.append({"review_id": item.review_id, "state": ReviewStatus.SUPERSEDED.value})
            for k in item.decision.pair:
                if k in self._person_key:
                    work.persons.add(self._person_key[k])

    def retired(
        self,
        con: Connection,
        audit: AuditLedger,
        node: NodeRef,
        request_id: str,
        record_ids: Sequence[str],
        now: int,
    ) -> None:
        """Records the province withdrew: their open review items close (nobody need decide about them)."""
        if self.index is None:
            return
        keys = [record_key(node.province_code, rid) for rid in record_ids]
        held = [key for key in keys if key in self.index]
        if not held:
            return
        self._check(con)
        self._bump(con)
        work = _Work(now)
        for key in held:
            if key in self.index:
                self._supersede(con, key, "the record was retired", work)
        if work.decisions:
            audit.append(con, [self._audit_entry(audit, node, request_id, work, batch=False)])

    def _detach(self, con: Connection, key: str, reason: str, work: _Work) -> None:
        assert self.index is not None
        event = self.index.detach(key, actor=LINKER, reason=reason)
        if key in self._unverified:
            # A detached unverified record answers to its own provisional key again, until relinked.
            self._person_key[key], before = self._unverified[key], self._person_key[key]
            if before != self._unverified[key]:
                self._write_key(con, key, self._unverified[key])
                work.touched.update((before, self._unverified[key]))
        changes = self._rekey(con, event.clusters_after, work)
        self._persist(con, event, changes, work, model_version=self.model_version)

    def _apply(self, con: Connection, result: AddResult, work: _Work) -> None:
        """Persist what adding (or relinking) a record did: links, review items, re-keyed records."""
        assert self.index is not None
        work.compared += result.compared
        for item in result.reviews:
            d = item.decision
            (pa, _), (pb, _) = split_key(d.record_key), split_key(d.other_key)
            con.execute(
                "INSERT INTO linkage_reviews (review_id, record_a, record_b, province_a, province_b, decision,"
                " model_version, state, created_at_us) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    item.review_id,
                    d.record_key,
                    d.other_key,
                    pa,
                    pb,
                    _json(d.as_dict()),
                    self.model_version,
                    OPEN,
                    work.now,
                ),
            )
            work.decisions.append({"review_id": item.review_id, **d.as_dict()})
            for k in (d.record_key, d.other_key):
                self._reviewed.add(k)
                self._transient.pop(k, None)
                if k in self._person_key:
                    work.persons.add(self._person_key[k])
        work.reviews += len(result.reviews)
        work.links += len(result.events)
        for event in result.events:
            for k in event.record_keys:
                self._transient.pop(k, None)
        changes = self._rekey(con, [result.cluster], work)
        for n, event in enumerate(result.events):
            last = n == len(result.events) - 1
            self._persist(con, event, changes if last else (), work, model_version=self.model_version)

    def _audit_entry(
        self, audit: AuditLedger, node: NodeRef, request_id: str, work: _Work, *, batch: bool = True
    ) -> AuditEntry:
        counts = {
            "links": work.links,
            "reviews": work.reviews,
            "superseded": work.superseded,
            "rekeyed": work.rekeyed,
            "compared": work.compared,
            "materialised": work.materialised,
            "model_version": self.model_version,
        }
        return AuditEntry(
            time_us=work.now,
            request_id=request_id,
            caller=node.uri,
            province=node.province_code,
            subject=LINKER,
            method=LINK_METHOD,
            purpose="duplicate-check",
            outcome="OK",
            counts={k: v for k, v in counts.items() if v},
            person_keys=[k.hex() for k in work.persons],
            payload_digest=audit.hash_fn(_json(work.decisions).encode()).hex(),
            batch_id=request_id if batch else "",
        )

    # -- reviewers -------------------------------------------------------------------------------

    def _ensure_held(self, con: Connection, keys: Iterable[str]) -> None:
        assert self.index is not None
        missing = [key for key in keys if key not in self.index]
        rows = self._rows(con, missing)
        if len(rows) < len(missing):
            found = {record_key(row[_PROVINCE], row[_RECORD_ID]) for row in rows}
            key = next(k for k in missing if k not in found)
            raise NotFound("the hub holds no such record", reason="RECORD_NOT_FOUND", record=key)
        self._hold_rows(con, rows)

    def _tell(
        self, con: Connection, loop: LoopLedger, keys: Sequence[str], subject: str, summary: str, now: int
    ) -> None:
        """Push a REVIEW_DECISION event to each province whose record the decision concerns."""
        by_province: dict[str, list[str]] = {}
        for key in keys:
            province, record_id = split_key(key)
            by_province.setdefault(province, []).append(record_id)
        for province, record_ids in sorted(by_province.items()):
            others = sorted(p for p in by_province if p != province)
            loop.push(
                con,
                province=province,
                kind=EVENT_KINDS["review_decision"],
                subject=subject,
                fields={"recordIds": sorted(record_ids), "otherProvinceCodes": others, "summary": summary},
                now=now,
            )

    def decide(
        self,
        con: Connection,
        loop: LoopLedger,
        node: NodeRef,
        review_id: int,
        accept: bool,
        reason: str,
        now: int,
    ) -> tuple[tuple[bytes, bytes], set[bytes]]:
        """Accept or reject an open review item as ``node``: persist, re-key, tell both provinces.

        Returns the pair's person keys after the decision and every person key touched.
        """
        if self.index is None:
            raise StoreError("linkage is not open", reason="LINKAGE_CLOSED")
        self._check(con)
        row = con.execute(
            "SELECT record_a, record_b, state, model_version FROM linkage_reviews WHERE review_id=?", (review_id,)
        ).fetchone()
        if row is None:
            raise NotFound(
                "no review item with this id", reason="LINKAGE_REVIEW_NOT_FOUND", metadata={"review_id": str(review_id)}
            )
        a, b, state, model_version = row
        if state != OPEN:
            raise FailedPrecondition(
                "the review item is no longer open: it was decided, or superseded by a change of its records",
                reason="LINKAGE_REVIEW_DECIDED",
                metadata={"review_id": str(review_id)},
            )
        self._ensure_held(con, (a, b))
        self._bump(con)
        work = _Work(now)
        before = {self._person_key[a], self._person_key[b]}
        if accept:
            event = self.index.accept(review_id, actor=node.uri, reason=reason)
        else:
            event = self.index.reject(review_id, actor=node.uri, reason=reason)
        changes = self._rekey(con, event.clusters_after, work) if accept else []
        self._persist(con, event, changes, work, model_version=model_version)
        con.execute(
            "UPDATE linkage_reviews SET state=?, decided_at_us=?, decided_by=?, reason=? WHERE review_id=?",
            (ACCEPTED if accept else REJECTED, now, node.uri, reason, review_id),
        )
        verb = "linked as one person" if accept else "kept apart as two persons"
        self._tell(con, loop, (a, b), f"review:{review_id}", f"a reviewer {verb} review item {review_id}", now)
        keys = (self._person_key[a], self._person_key[b])
        touched = work.touched | before | set(keys)
        return keys, touched

    def split(
        self,
        con: Connection,
        loop: LoopLedger,
        node: NodeRef,
        a: str,
        b: str,
        reason: str,
        now: int,
    ) -> tuple[int, tuple[bytes, bytes], set[bytes]]:
        """Undo the link between two records as ``node``; (the event's sequence, their person keys, touched)."""
        if self.index is None:
            raise StoreError("linkage is not open", reason="LINKAGE_CLOSED")
        self._check(con)
        if a not in self.index or b not in self.index:
            raise NotFound(
                "the two records are not linked", reason="LINKAGE_LINK_NOT_FOUND", metadata={"record": a, "other": b}
            )
        row = con.execute(
            "SELECT model_version FROM linkage_links WHERE ended_seq=0"
            " AND ((record_a=? AND record_b=?) OR (record_a=? AND record_b=?))",
            (a, b, b, a),
        ).fetchone()
        self._bump(con)
        work = _Work(now)
        before = {self._person_key[a], self._person_key[b]}
        event = self.index.split(a, b, actor=node.uri, reason=reason)
        changes = self._rekey(con, event.clusters_after, work)
        seq = self._persist(con, event, changes, work, model_version=row[0] if row else self.model_version)
        self._tell(con, loop, (a, b), f"split:{seq}", "a reviewer split a link: the records are kept apart", now)
        keys = (self._person_key[a], self._person_key[b])
        return seq, keys, work.touched | before | set(keys)

    # -- reads (any connection) ------------------------------------------------------------------

    @staticmethod
    def _review_view(row: Sequence[Any]) -> ReviewView:
        review_id, a, b, decision, version, state, created, decided, by, reason, key_a, key_b = row
        return ReviewView(
            review_id,
            state,
            split_key(a),
            split_key(b),
            json.loads(decision),
            version,
            created,
            decided,
            by,
            reason,
            (bytes(key_a or b""), bytes(key_b or b"")),
        )

    # The records' current person keys come along, for the audit entry of the call that reads them.
    _REVIEW_COLUMNS = (
        "v.review_id, v.record_a, v.record_b, v.decision, v.model_version, v.state, v.created_at_us,"
        " v.decided_at_us, v.decided_by, v.reason,"
        " (SELECT person_key FROM records WHERE province=v.province_a"
        "  AND record_id=substr(v.record_a, length(v.province_a) + 2)),"
        " (SELECT person_key FROM records WHERE province=v.province_b"
        "  AND record_id=substr(v.record_b, length(v.province_b) + 2))"
        " FROM linkage_reviews v"
    )

    @classmethod
    def review_items(cls, con: Connection, *, province: str, state: int, after: int, limit: int) -> list[ReviewView]:
        """Review items with an id above ``after``, oldest first."""
        where = ["v.review_id > ?"]
        args: list[Any] = [after]
        if state:
            where.append("v.state = ?")
            args.append(state)
        if province:
            where.append("(v.province_a = ? OR v.province_b = ?)")
            args.extend((province, province))
        rows = con.execute(
            f"SELECT {cls._REVIEW_COLUMNS} WHERE {' AND '.join(where)} ORDER BY v.review_id LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [cls._review_view(row) for row in rows]

    @classmethod
    def review(cls, con: Connection, review_id: int) -> ReviewView | None:
        """One review item."""
        row = con.execute(f"SELECT {cls._REVIEW_COLUMNS} WHERE v.review_id=?", (review_id,)).fetchone()
        return None if row is None else cls._review_view(row)

    @staticmethod
    def _event_view(row: Sequence[Any]) -> LineageEventView:
        seq, kind, records, decision, version, actor, reason, rekeyed, at = row
        return LineageEventView(
            seq,
            kind,
            tuple(split_key(k) for k in json.loads(records)),
            json.loads(decision) if decision else None,
            version,
            actor,
            reason,
            at,
            tuple(
                PersonKeyChange(split_key(k), bytes.fromhex(before), bytes.fromhex(after))
                for k, before, after in json.loads(rekeyed)
            ),
        )

    _EVENT_COLUMNS = "seq, kind, records, decision, model_version, actor, reason, rekeyed, at_us"

    @classmethod
    def event(cls, con: Connection, seq: int) -> LineageEventView | None:
        """One lineage event."""
        row = con.execute(f"SELECT {cls._EVENT_COLUMNS} FROM linkage_events WHERE seq=?", (seq,)).fetchone()
        return None if row is None else cls._event_view(row)

    @classmethod
    def lineage(cls, con: Connection, record: RecordKey) -> LineageView | None:
        """One record's person, its cluster's links (holding and undone) and the events that touched it."""
        province, record_id = record
        row = con.execute(
            "SELECT person_key FROM records WHERE province=? AND record_id=?", (province, record_id)
        ).fetchone()
        if row is None:
            return None
        person_key = bytes(row[0])
        key = record_key(province, record_id)
        unverified = (
            con.execute(
                "SELECT 1 FROM linkage_unverified WHERE province=? AND record_id=?", (province, record_id)
            ).fetchone()
            is not None
        )
        persons = tuple(
            (p, r)
            for p, r in con.execute(
                "SELECT province, record_id FROM records WHERE person_key=? AND retired_reason=0 ORDER BY province,"
                " record_id",
                (person_key,),
            )
        )
        # The cluster: the records reachable over links that hold.
        cluster, frontier = {key}, [key]
        while frontier:
            current = frontier.pop()
            for a, b in con.execute(
                "SELECT record_a, record_b FROM linkage_links WHERE ended_seq=0 AND (record_a=? OR record_b=?)",
                (current, current),
            ):
                other = b if a == current else a
                if other not in cluster:
                    cluster.add(other)
                    frontier.append(other)
        links: dict[int, LinkView] = {}
        for member in sorted(cluster):
            for link_id, a, b, decision, version, made_by, created, ended in con.execute(
                "SELECT link_id, record_a, record_b, decision, model_version, made_by, created_at_us, ended_at_us"
                " FROM linkage_links WHERE record_a=? OR record_b=?",
                (member, member),
            ):
                links[link_id] = LinkView(
                    split_key(a), split_key(b), json.loads(decision), version, made_by, created, ended
                )
        columns = ", ".join("e." + c.strip() for c in cls._EVENT_COLUMNS.split(","))
        events = tuple(
            cls._event_view(r)
            for r in con.execute(
                f"SELECT {columns} FROM linkage_event_records x JOIN linkage_events e ON e.seq=x.seq"
                " WHERE x.record=? ORDER BY e.seq",
                (key,),
            )
        )
        return LineageView(record, person_key, unverified, persons, tuple(links[i] for i in sorted(links)), events)
