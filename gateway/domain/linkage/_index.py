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
"""

from __future__ import annotations

from collections.abc import Iterator
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

    def __len__(self) -> int:
        return len(self._features)

    def __contains__(self, key: object) -> bool:
        return key in self._features

    def _candidates(self, features: RecordFeatures, keys: list[str]) -> Iterator[RecordFeatures]:
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
                if within or other.province != features.province:
                    yield other

    def _score(self, features: RecordFeatures, keys: list[str]) -> CandidateSet:
        model = self.model
        link_at, review_at = self.settings.link_threshold, self.settings.review_threshold
        links: list[LinkDecision] = []
        reviews: list[LinkDecision] = []
        compared = 0
        for other in self._candidates(features, keys):
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
            decision = LinkDecision(
                features.key, other.key, rule, outcome, weight, probability, model.evidence(gamma, features, other)
            )
            (links if outcome is LinkOutcome.LINK else reviews).append(decision)
        links.sort(key=lambda d: (-d.match_probability, -d.match_weight, d.other_key))
        reviews.sort(key=lambda d: (-d.match_probability, -d.match_weight, d.other_key))
        return CandidateSet(tuple(links), tuple(reviews), compared)

    def candidates(self, record: LinkageRecord) -> CandidateSet:
        """What ``record`` would be linked to and what would go to review; changes nothing."""
        features = features_of(record)
        return self._score(features, [key for _, key in blocking_keys(features)])

    def add(self, record: LinkageRecord) -> AddResult:
        """Hold ``record``, link it where the evidence suffices, queue the grey band for review."""
        if record.key in self._features:
            raise FailedPrecondition(
                "record is already in the index", reason="LINKAGE_RECORD_EXISTS", record=record.key
            )
        features = features_of(record)
        keys = [key for _, key in blocking_keys(features)]
        scored = self._score(features, keys)
        self._features[record.key] = features
        for key in keys:
            members = self._blocks.get(key)
            if members is None:
                self._blocks[key] = [record.key]
            elif members[-1] != record.key:
                members.append(record.key)
        self._ledger.add(record.key)
        events = [
            self._ledger.link(decision, kind=EventKind.LINKED, actor=LINKER, reason=decision.rule.value)
            for decision in scored.links
        ]
        reviews = []
        for decision in scored.reviews:
            item = ReviewItem(len(self._reviews) + 1, decision)
            self._reviews[item.review_id] = item
            self._open[decision.pair] = item.review_id
            reviews.append(item)
        return AddResult(
            record.key,
            self._ledger.cluster_of(record.key),
            scored.links,
            tuple(reviews),
            tuple(events),
            scored.compared,
        )

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
        """Undo the link between two records; the lineage keeps the link and its undoing."""
        return self._ledger.split(record_key, other_key, actor=actor, reason=reason)

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

    def accept(self, review_id: int, *, actor: str, reason: str) -> LineageEvent:
        """Link a grey-band pair on a person's word."""
        item = self._decide(review_id, ReviewStatus.ACCEPTED, actor, reason)
        decision = replace(item.decision, outcome=LinkOutcome.LINK)
        return self._ledger.link(decision, kind=EventKind.REVIEW_ACCEPTED, actor=actor, reason=reason)

    def reject(self, review_id: int, *, actor: str, reason: str) -> LineageEvent:
        """Refuse a grey-band pair on a person's word; the refusal joins both records' lineage."""
        item = self._decide(review_id, ReviewStatus.REJECTED, actor, reason)
        return self._ledger.record_rejection(item.decision, actor=actor, reason=reason)
