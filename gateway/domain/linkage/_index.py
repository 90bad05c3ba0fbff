"""The incremental linker: a new record is linked as it arrives, against what is held, in memory.

``add(record)`` costs one feature computation, one look-up per blocking key and one comparison
per candidate; nothing is re-run over the population, so it fits inside a sync call. The order of
decisions for one record:

1. every held record sharing a blocking key with it is a candidate (a block holding more than
   ``max_block_size`` records contributes only its most recent ones: a guard, not a rule);
2. a candidate with the same *valid* ID number (normalised, 15 digits lengthened) is linked
   outright: the first rule of identity;
3. any other candidate gets the model's match probability: at or above ``link_threshold`` it is
   linked, in ``[review_threshold, link_threshold)`` it is queued for review, below it is dropped;
4. two records carrying two *different valid* ID numbers are never linked without a person,
   whatever their probability: one person holding two numbers (一人多证) is a finding to review,
   not a merge to make silently.

Every link and every review decision is a :class:`LineageEvent` carrying the scored
:class:`LinkDecision`, so the hub can persist and audit it.

A pair a person kept apart (a rejected review item, a split link) is never linked or proposed
again by the linker. For a hub that keeps its decisions elsewhere and rebuilds the index at
start, :meth:`LinkageIndex.hold` files a record without scoring it (a link target, or a record
whose links are about to be restored), :meth:`~LinkageIndex.restore_link` and
:meth:`~LinkageIndex.restore_review` put back what was decided, :meth:`~LinkageIndex.replace`
swaps a held record's fields for a new version, :meth:`~LinkageIndex.relink` scores a held
record afresh and :meth:`~LinkageIndex.drop` forgets one without links.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum

from gateway.domain.linkage._blocking import blocking_keys
from gateway.domain.linkage._clusters import ClusterLedger, EventKind, LineageEvent
from gateway.domain.linkage._compare import RecordFeatures, compare, features_of
from gateway.domain.linkage._decisions import LinkDecision, LinkOutcome, LinkRule
from gateway.domain.linkage._model import LinkageModel, probability_of_weight
from gateway.domain.linkage._record import LinkageRecord
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound

__all__ = ["AddResult", "CandidateSet", "LinkSettings", "LinkageIndex", "ReviewItem", "ReviewStatus"]

#: The actor of automatic decisions.
LINKER = "linker"


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Policy of an index: thresholds and which pairs are compared."""

    #: Match probability at or above which a pair is linked without review.
    link_threshold: float = 0.99
    #: Match probability at or above which (and below ``link_threshold``) a pair goes to review.
    review_threshold: float = 0.5
    #: Whether records of one source (province) are compared with each other.
    link_within_source: bool = True
    #: At most this many of a block's most recent records are compared with a new one.
    max_block_size: int = 500

    def __post_init__(self) -> None:
        if not 0.0 < self.review_threshold <= self.link_threshold <= 1.0:
            raise InvalidArgument(
                "thresholds must satisfy 0 < review_threshold <= link_threshold <= 1",
                reason="LINKAGE_THRESHOLDS_INVALID",
            )
        if self.max_block_size < 1:
            raise InvalidArgument("max_block_size must be at least 1", reason="LINKAGE_SETTINGS_INVALID")


@dataclass(frozen=True, slots=True)
class CandidateSet:
    """What a record would be linked to, and what would go to review, best first."""

    links: tuple[LinkDecision, ...]
    reviews: tuple[LinkDecision, ...]
    #: How many held records were compared.
    compared: int


@dataclass(frozen=True, slots=True)
class AddResult:
    """What adding one record did."""

    record_key: str
    #: The record's cluster after its links.
    cluster: str
    links: tuple[LinkDecision, ...]
    #: Review items opened for grey-band pairs.
    reviews: tuple[ReviewItem, ...]
    events: tuple[LineageEvent, ...]
    compared: int


class ReviewStatus(StrEnum):
    """Where a review item stands."""

    OPEN = "open"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    #: Closed undecided: one of its records changed or was withdrawn, so its evidence no longer holds.
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """A grey-band pair waiting for (or having had) a person's decision."""

    review_id: int
    decision: LinkDecision
    status: ReviewStatus = ReviewStatus.OPEN
    decided_by: str = ""
    reason: str = ""


class LinkageIndex:
    """Records held for linkage, their blocks, clusters, lineage and review queue."""

    def __init__(self, model: LinkageModel, settings: LinkSettings | None = None) -> None:
        self.model = model
        self.settings = settings or LinkSettings()
        self._features: dict[str, RecordFeatures] = {}
        self._blocks: dict[str, list[str]] = {}
        self._ledger = ClusterLedger()
        self._reviews: dict[int, ReviewItem] = {}
        self._open: dict[frozenset[str], int] = {}
        #: Pairs a person kept apart (rejected, split): never linked or proposed again.
        self._apart: set[frozenset[str]] = set()
        self._next_review = 1

    def __len__(self) -> int:
        return len(self._features)

    def __contains__(self, key: object) -> bool:
        return key in self._features

    def _candidates(
        self, features: RecordFeatures, keys: list[str], among: Container[str] | None = None
    ) -> Iterator[RecordFeatures]:
        seen = {features.key}
        cap = self.settings.max_block_size
        within = self.settings.link_within_source
        held = self._features
        for key in keys:
            members = self._blocks.get(key)
            if not members:
                continue
            for other_key in members[-cap:] if len(members) > cap else members:
                if other_key in seen:
                    continue
                seen.add(other_key)
                other = held[other_key]
                if (within or other.province != features.province) and (among is None or other_key in among):
                    yield other

    def _settled(self, a: str, b: str) -> bool:
        """Whether a person already decided the pair (kept apart) or it waits for one (open review)."""
        pair = frozenset((a, b))
        return pair in self._apart or pair in self._open

    def _score(self, features: RecordFeatures, keys: list[str], among: Container[str] | None = None) -> CandidateSet:
        model = self.model
        link_at, review_at = self.settings.link_threshold, self.settings.review_threshold
        links: list[LinkDecision] = []
        reviews: list[LinkDecision] = []
        compared = 0
        for other in self._candidates(features, keys, among):
            compared += 1
            gamma = compare(features, other)
            weight = model.match_weight(gamma, features, other)
            if features.id_valid and gamma[0] == 0 and other.id_valid:
                rule, probability, outcome = LinkRule.ID_NUMBER, 1.0, LinkOutcome.LINK
            else:
                rule, probability = LinkRule.PROBABILISTIC, probability_of_weight(weight)
                if probability >= link_at and not (features.id_valid and other.id_valid):
                    outcome = LinkOutcome.LINK
                elif probability >= review_at:
                    outcome = LinkOutcome.REVIEW
                else:
                    continue
            if (self._apart or self._open) and self._settled(features.key, other.key):
                continue
            decision = LinkDecision(
                features.key, other.key, rule, outcome, weight, probability, model.evidence(gamma, features, other)
            )
            (links if outcome is LinkOutcome.LINK else reviews).append(decision)
        links.sort(key=lambda d: (-d.match_probability, -d.match_weight, d.other_key))
        reviews.sort(key=lambda d: (-d.match_probability, -d.match_weight, d.other_key))
        return CandidateSet(tuple(links), tuple(reviews), compared)

    def candidates(self, record: LinkageRecord, *, among: Container[str] | None = None) -> CandidateSet:
        """What ``record`` would be linked to and what would go to review; changes nothing.

        ``among`` restricts the comparison to the held records it contains (see :meth:`add`).
        """
        features = features_of(record)
        return self._score(features, [key for _, key in blocking_keys(features)], among)

    def _require_new(self, key: str) -> None:
        if key in self._features:
            raise FailedPrecondition("record is already in the index", reason="LINKAGE_RECORD_EXISTS", record=key)

    def _require_held(self, key: str) -> RecordFeatures:
        features = self._features.get(key)
        if features is None:
            raise NotFound("record is not in the index", reason="LINKAGE_RECORD_NOT_FOUND", record=key)
        return features

    def _file(self, features: RecordFeatures, keys: list[str]) -> None:
        self._features[features.key] = features
        for key in keys:
            members = self._blocks.get(key)
            if members is None:
                self._blocks[key] = [features.key]
            elif members[-1] != features.key:
                members.append(features.key)

    def _unfile(self, features: RecordFeatures) -> None:
        for _, key in blocking_keys(features):
            members = self._blocks.get(key)
            if members is not None and features.key in members:
                members.remove(features.key)
                if not members:
                    del self._blocks[key]

    def _apply(self, record_key: str, scored: CandidateSet) -> AddResult:
        """Link the scored links, queue the scored reviews."""
        events = [
            self._ledger.link(decision, kind=EventKind.LINKED, actor=LINKER, reason=decision.rule.value)
            for decision in scored.links
        ]
        reviews = []
        for decision in scored.reviews:
            item = ReviewItem(self._next_review, decision)
            self._next_review += 1
            self._reviews[item.review_id] = item
            self._open[decision.pair] = item.review_id
            reviews.append(item)
        return AddResult(
            record_key,
            self._ledger.cluster_of(record_key),
            scored.links,
            tuple(reviews),
            tuple(events),
            scored.compared,
        )

    def add(self, record: LinkageRecord, *, among: Container[str] | None = None) -> AddResult:
        """Hold ``record``, link it where the evidence suffices, queue the grey band for review.

        ``among`` compares it only with the held records it contains: for a hub that links a
        record identified by its number only to the records it cannot identify by theirs.
        """
        self._require_new(record.key)
        features = features_of(record)
        keys = [key for _, key in blocking_keys(features)]
        scored = self._score(features, keys, among)
        self._file(features, keys)
        self._ledger.add(record.key)
        return self._apply(record.key, scored)

    def hold(self, record: LinkageRecord) -> str:
        """File ``record`` without scoring it (a link target); returns its cluster, a new singleton."""
        self._require_new(record.key)
        features = features_of(record)
        self._file(features, [key for _, key in blocking_keys(features)])
        return self._ledger.add(record.key)

    def drop(self, record_key: str) -> None:
        """Forget a held record that has no links (a link target no longer wanted); its review items stay."""
        features = self._require_held(record_key)
        self._ledger.remove(record_key)
        self._unfile(features)
        del self._features[record_key]

    def features(self, record_key: str) -> RecordFeatures:
        """What the index holds of one record."""
        return self._require_held(record_key)

    def replace(self, record: LinkageRecord) -> bool:
        """Swap a held record's fields for a new version's, keeping its links; False when nothing changed."""
        old = self._require_held(record.key)
        features = features_of(record)
        if features == old:
            return False
        self._unfile(old)
        self._file(features, [key for _, key in blocking_keys(features)])
        return True

    def relink(self, record_key: str, *, among: Container[str] | None = None) -> AddResult:
        """Score a held record against the others again: link it, queue the grey band (after :meth:`replace`).

        Pairs already linked, kept apart or waiting for review are left as they are.
        """
        features = self._require_held(record_key)
        linked = {d.other_key if d.record_key == record_key else d.record_key for d in self.links_of(record_key)}
        scored = self._score(features, [key for _, key in blocking_keys(features)], among)
        if linked:
            scored = CandidateSet(
                tuple(d for d in scored.links if d.other_key not in linked),
                tuple(d for d in scored.reviews if d.other_key not in linked),
                scored.compared,
            )
        return self._apply(record_key, scored)

    def restore_link(self, decision: LinkDecision, *, kind: EventKind, actor: str, reason: str) -> LineageEvent:
        """Put back a link decided earlier (both records held); the index's own lineage records it again."""
        return self._ledger.link(decision, kind=kind, actor=actor, reason=reason)

    def restore_review(self, item: ReviewItem) -> None:
        """Put back a review item with its id and status (both records need not be held)."""
        self._reviews[item.review_id] = item
        pair = item.decision.pair
        if item.status is ReviewStatus.OPEN:
            self._open[pair] = item.review_id
        else:
            self._open.pop(pair, None)
            if item.status is ReviewStatus.REJECTED:
                self._apart.add(pair)
        self._next_review = max(self._next_review, item.review_id + 1)

    def keep_apart(self, record_key: str, other_key: str) -> None:
        """Never link or propose the pair again (restoring a split or a rejection)."""
        self._apart.add(frozenset((record_key, other_key)))

    # --- Clusters and lineage --------------------------------------------------------------

    @property
    def clusters(self) -> dict[str, frozenset[str]]:
        """Every cluster: id → record keys (singletons included)."""
        return self._ledger.clusters

    def cluster_of(self, record_key: str) -> str:
        """The id of the cluster holding a record."""
        return self._ledger.cluster_of(record_key)

    def members(self, cluster: str) -> frozenset[str]:
        """The records of one cluster."""
        return self._ledger.members(cluster)

    def links_of(self, record_key: str) -> tuple[LinkDecision, ...]:
        """A record's active links."""
        return self._ledger.links_of(record_key)

    def lineage(self, record_key: str) -> tuple[LineageEvent, ...]:
        """Every event that touched the record's cluster, oldest first."""
        return self._ledger.lineage(record_key)

    @property
    def events(self) -> tuple[LineageEvent, ...]:
        """The whole lineage log, oldest first."""
        return self._ledger.events

    def split(self, record_key: str, other_key: str, *, actor: str, reason: str) -> LineageEvent:
        """Undo the link between two records; the lineage keeps the link and its undoing; the pair stays apart."""
        event = self._ledger.split(record_key, other_key, actor=actor, reason=reason)
        self._apart.add(frozenset((record_key, other_key)))
        return event

    def detach(self, record_key: str, *, actor: str, reason: str) -> LineageEvent:
        """Undo every link of one record."""
        return self._ledger.detach(record_key, actor=actor, reason=reason)

    # --- Review queue ------------------------------------------------------------------------

    def review_queue(self) -> tuple[ReviewItem, ...]:
        """Open review items, oldest first."""
        return tuple(self._reviews[i] for i in sorted(self._open.values()))

    def review(self, review_id: int) -> ReviewItem:
        """One review item, open or decided."""
        item = self._reviews.get(review_id)
        if item is None:
            raise NotFound(
                "no such review item", reason="LINKAGE_REVIEW_NOT_FOUND", metadata={"review_id": str(review_id)}
            )
        return item

    def _decide(self, review_id: int, status: ReviewStatus, actor: str, reason: str) -> ReviewItem:
        item = self.review(review_id)
        if item.status is not ReviewStatus.OPEN:
            raise FailedPrecondition(
                f"review item is already {item.status.value}",
                reason="LINKAGE_REVIEW_DECIDED",
                metadata={"review_id": str(review_id)},
            )
        if not actor:
            raise InvalidArgument("a review decision needs an actor", reason="LINKAGE_ACTOR_MISSING", field="actor")
        decided = replace(item, status=status, decided_by=actor, reason=reason)
        self._reviews[review_id] = decided
        del self._open[item.decision.pair]
        return decided

    def supersede(self, record_key: str, *, actor: str, reason: str) -> tuple[ReviewItem, ...]:
        """Close the open review items of a record whose fields changed (or that was withdrawn), oldest first.

        Their evidence described the old version; a reviewer's word on it would decide a pair
        nobody scored. :meth:`relink` after :meth:`replace` queues the pair again if the new
        version still falls in the grey band.
        """
        closed = []
        for pair, review_id in sorted(self._open.items(), key=lambda kv: kv[1]):
            if record_key in pair:
                closed.append(self._decide(review_id, ReviewStatus.SUPERSEDED, actor, reason))
        return tuple(closed)

    def accept(self, review_id: int, *, actor: str, reason: str) -> LineageEvent:
        """Link a grey-band pair on a person's word."""
        item = self._decide(review_id, ReviewStatus.ACCEPTED, actor, reason)
        decision = replace(item.decision, outcome=LinkOutcome.LINK)
        return self._ledger.link(decision, kind=EventKind.REVIEW_ACCEPTED, actor=actor, reason=reason)

    def reject(self, review_id: int, *, actor: str, reason: str) -> LineageEvent:
        """Refuse a grey-band pair on a person's word; the refusal joins both records' lineage."""
        item = self._decide(review_id, ReviewStatus.REJECTED, actor, reason)
        self._apart.add(item.decision.pair)
        return self._ledger.record_rejection(item.decision, actor=actor, reason=reason)
