"""The Store protocol: what the hub needs from its database, whatever the engine.

Every mutating method runs in one transaction: the records, the batch's acknowledgement
(its idempotency record), the node's counters and the duplicate-enrollment findings are
committed together or not at all, and the acknowledgement is returned only after commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.audit import AuditEntry
from gateway.domain.model import Outcome, Program
from gateway.domain.records import PreparedBatch, Rejection, Retirement

__all__ = [
    "AuditFilter",
    "BatchAck",
    "Finding",
    "HeldEnrollments",
    "HubStats",
    "LineageEventView",
    "LineageView",
    "LinkView",
    "NodeRef",
    "PersonKeyChange",
    "RecordKey",
    "RetireAck",
    "Retirement",
    "ReviewDecisionResult",
    "ReviewView",
    "SplitResult",
    "Store",
    "SyncState",
    "decode_rejections",
    "encode_rejections",
]


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What an auditor asks for; empty fields do not filter."""

    #: Entries answered at or after this time (microseconds since the epoch); 0: no bound.
    since_us: int = 0
    #: Entries answered before this time; 0: no bound.
    until_us: int = 0
    province: str = ""
    #: RPC name, short (``CheckEnrollment``) or full (``/hutong.v1.AssistanceQueryService/CheckEnrollment``).
    method: str = ""
    purpose: str = ""
    person_key: bytes = b""


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A calling node, as proven by its certificate."""

    province_code: str
    node_name: str

    @property
    def uri(self) -> str:
        """The node's identity URI, as in its certificate."""
        return f"hutong://province/{self.province_code}/node/{self.node_name}"


@dataclass(slots=True)
class BatchAck:
    """The hub's acknowledgement of one batch."""

    batch_id: str
    #: One ``Outcome`` value per record, as bytes (compact and cheap to store).
    record_outcomes: bytes
    household_outcomes: bytes
    record_rejections: list[Rejection]
    household_rejections: list[Rejection]
    applied_at_us: int
    replayed: bool = False
    #: Set when the whole batch was refused and nothing applied.
    batch_rejection: Rejection | None = None

    def counts(self) -> dict[Outcome, int]:
        """Record outcomes counted by kind."""
        outcomes = self.record_outcomes
        return {o: outcomes.count(o) for o in Outcome if o is not Outcome.UNSPECIFIED}


@dataclass(slots=True)
class RetireAck:
    """Outcome of a RetireRecords call."""

    outcomes: bytes
    rejections: list[Rejection]
    replayed: bool = False
    #: Person keys of the records the call addressed (for the audit entry; empty on a replay).
    person_keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class SyncState:
    """What the hub holds for one node and its province."""

    last_batch_id: str
    last_batch_at_us: int
    batches_applied: int
    records_held: int
    records_retired: int
    counts: Mapping[Outcome, int]
    watermark_us: int


@dataclass(frozen=True, slots=True)
class HeldEnrollments:
    """One province's live record of a person: its enrollments, packed."""

    province_code: str
    record_id: str
    enrollments: bytes
    #: Mask of programmes with an ACTIVE enrollment (``Program.bit``).
    active_programs: int
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class Finding:
    """A duplicate enrollment: one programme active for one person in several provinces."""

    finding_id: str
    program: Program
    province_codes: tuple[str, ...]
    open: bool
    detected_at_us: int
    resolved_at_us: int


@dataclass(frozen=True, slots=True)
class HubStats:
    """Totals for dashboards and the demo's summary."""

    records_by_province: Mapping[str, int]
    retired_records: int
    households: int
    open_findings_by_program: Mapping[Program, int] = field(default_factory=dict)
    resolved_findings: int = 0
    batches: int = 0


def encode_rejections(rejections: Sequence[Rejection]) -> str:
    """JSON for stored rejections (kept with the batch so a replay returns them)."""
    return json.dumps(
        [[r.index, r.item_id, r.reason, r.field, r.message, r.code_name] for r in rejections],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def decode_rejections(text: str) -> list[Rejection]:
    """What :func:`encode_rejections` wrote."""
    return [Rejection(*row) for row in json.loads(text)]


class Store(Protocol):
    """The hub's persistence. Implementations: SQLite (embedded), PostgreSQL (production)."""

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None:
        """Finish pending work and disconnect."""

    async def apply_batch(
        self,
        node: NodeRef,
        batch_id: str,
        digest: bytes,
        batch: PreparedBatch,
        audit: Callable[[BatchAck], AuditEntry] | None = None,
    ) -> BatchAck:
        """Apply one batch idempotently; a known batch_id returns the original acknowledgement.

        ``audit(ack)``, when given, builds the batch's audit entry, which is appended to the
        exchange log in the same transaction (also for a replay or a refused reuse).
        """

    async def retire_records(
        self,
        node: NodeRef,
        request_id: str,
        retirements: Sequence[Retirement],
        rejected: Sequence[Rejection],
        count: int,
    ) -> RetireAck:
        """Retire records idempotently by request_id; tombstones keep the record.

        ``rejected`` are items already refused by validation; they are stored with the
        result so that a retry returns exactly the original answer.
        """

    async def sync_state(self, node: NodeRef) -> SyncState:
        """What the hub holds for this node and its province."""

    async def enrollments_of(self, person_keys: Sequence[bytes]) -> dict[bytes, list[HeldEnrollments]]:
        """Live records holding enrollments, by person key (absent keys map to nothing)."""

    async def findings_of(self, person_key: bytes) -> list[Finding]:
        """Duplicate-enrollment findings about one person, open first."""

    async def stats(self) -> HubStats:
        """Totals across the hub."""

    # -- the exchange log (gateway.audit): entries, checkpoints, proofs -----------------------

    async def append_audit(self, entries: Sequence[AuditEntry]) -> int:
        """Append entries to the exchange log, durably, gapless; returns the index of the first."""

    async def add_checkpoint(self, sign: Callable[[int, bytes], tuple[int, str]]) -> tuple[int, str] | None:
        """Sign (``sign(size, root) -> (time_us, note)``) and store a checkpoint of the committed log.

        None when the current size already has one.
        """

    async def audit_tree(self) -> tuple[int, bytes]:
        """Size and root hash of the committed log."""

    async def latest_checkpoint(self) -> tuple[int, str] | None:
        """(size, note) of the newest signed checkpoint."""

    async def checkpoint_at(self, size: int) -> str | None:
        """The signed checkpoint of exactly ``size`` entries, if there is one."""

    async def recent_checkpoints(self, limit: int) -> list[tuple[int, int, str]]:
        """(size, time_us, note) of the newest ``limit`` signed checkpoints, newest first."""

    async def audit_entries(self, filt: AuditFilter, *, after: int, limit: int, size: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (index, entry bytes) matching ``filt``, from index ``after``, below ``size``."""

    async def audit_entry(self, index: int) -> tuple[bytes, bytes] | None:
        """(entry bytes, leaf hash) of one entry."""

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof; TreeRangeInvalid beyond the committed log."""

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof; TreeRangeInvalid beyond the committed log."""

    # -- identity linkage (gateway.store.sqlite_linkage): review queue, splits, lineage --------

    async def review_items(self, *, province_code: str, state: int, after: int, limit: int) -> list[ReviewView]:
        """Review items with an id above ``after``, oldest first; ``province_code``/``state`` filter when set."""

    async def decide_review(
        self, node: NodeRef, request_id: str, review_id: int, accept: bool, reason: str
    ) -> ReviewDecisionResult:
        """Accept or reject an open review item as ``node``; idempotent by request_id.

        Tells both records' provinces (EVENT_KIND_REVIEW_DECISION) in the same transaction.
        """

    async def split_link(
        self, node: NodeRef, request_id: str, record: RecordKey, other: RecordKey, reason: str
    ) -> SplitResult:
        """Undo the link between two records as ``node``; idempotent by request_id."""

    async def lineage(self, record: RecordKey) -> LineageView | None:
        """One record's person, its cluster's links and lineage events; None when the hub holds no such record."""


#: A record as linkage names it: (province code, record id).
RecordKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ReviewView:
    """One review item as stored."""

    review_id: int
    #: hutong.v1.ReviewState: 1 open, 2 accepted, 3 rejected.
    state: int
    #: The record whose arrival raised it.
    record: RecordKey
    other_record: RecordKey
    #: ``LinkDecision.as_dict()``: the score and every comparison's level and weight.
    decision: Mapping[str, Any]
    model_version: int
    created_at_us: int
    decided_at_us: int = 0
    decided_by: str = ""
    reason: str = ""
    #: The person keys the two records hold now (record, other record); empty for a record gone.
    person_keys: tuple[bytes, bytes] = (b"", b"")


@dataclass(frozen=True, slots=True)
class LinkView:
    """One link between two records, holding or undone."""

    record: RecordKey
    other_record: RecordKey
    decision: Mapping[str, Any]
    model_version: int
    #: ``linker`` or the reviewer's node URI.
    made_by: str
    created_at_us: int
    #: 0 while the link holds.
    ended_at_us: int = 0


@dataclass(frozen=True, slots=True)
class PersonKeyChange:
    """A record re-keyed by a linkage event."""

    record: RecordKey
    before: bytes
    after: bytes


@dataclass(frozen=True, slots=True)
class LineageEventView:
    """One lineage event as stored."""

    seq: int
    #: hutong.v1.LineageEventKind: 1 linked, 2 review accepted, 3 review rejected, 4 split, 5 detached.
    kind: int
    records: tuple[RecordKey, ...]
    #: The scored pair behind it (``LinkDecision.as_dict()``); None for a detach.
    decision: Mapping[str, Any] | None
    model_version: int
    actor: str
    reason: str
    at_us: int
    rekeyed: tuple[PersonKeyChange, ...] = ()


@dataclass(frozen=True, slots=True)
class LineageView:
    """One record's person, the links of its cluster and the events that touched it."""

    record: RecordKey
    person_key: bytes
    unverified: bool
    #: Every live record held under ``person_key``.
    person_records: tuple[RecordKey, ...]
    links: tuple[LinkView, ...]
    events: tuple[LineageEventView, ...]


@dataclass(frozen=True, slots=True)
class ReviewDecisionResult:
    """What a review decision did."""

    review: ReviewView
    #: The person keys of the item's two records after the decision (record, other record).
    person_keys: tuple[bytes, bytes]
    replayed: bool
    #: Every person key the decision touched (before and after), for the audit entry.
    touched: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class SplitResult:
    """What a split did."""

    event: LineageEventView
    person_keys: tuple[bytes, bytes]
    replayed: bool
    touched: tuple[bytes, ...] = ()
