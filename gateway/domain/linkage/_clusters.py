"""Clusters of linked records, with the lineage of every merge and split.

A cluster is a connected component of the active links. Links are kept (not only the union they
caused), so a link can be split again: the cluster it held together falls into the components
that remain. Every change is an event with a sequence number, the clusters before and after, the
decision that caused it, and who did it and why; each record keeps the list of events that
touched its cluster, so ``lineage(record)`` answers "how did this record come to be grouped with
these others" without scanning the log.

Cluster ids are stable where they can be: a merge keeps the id of the older cluster, and after a
split the part holding the oldest record keeps it; the other parts get new ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from gateway.domain.linkage._decisions import LinkDecision
from gateway.errors import FailedPrecondition, NotFound

__all__ = ["ClusterLedger", "EventKind", "LineageEvent"]


class EventKind(StrEnum):
    """What changed."""

    #: A link made on arrival (ID number, or a probability at or above the link threshold).
    LINKED = "linked"
    #: A reviewer accepted a grey-band pair: linked.
    REVIEW_ACCEPTED = "review_accepted"
    #: A reviewer rejected a grey-band pair: not linked, and not proposed again.
    REVIEW_REJECTED = "review_rejected"
    #: A link was undone.
    SPLIT = "split"
    #: Every link of one record was undone.
    DETACHED = "detached"


@dataclass(frozen=True, slots=True)
class LineageEvent:
    """One change to the clusters (or a decision not to change them)."""

    sequence: int
    kind: EventKind
    #: The pair linked, split or rejected, or the one record detached.
    record_keys: tuple[str, ...]
    clusters_before: tuple[str, ...]
    clusters_after: tuple[str, ...]
    #: The scored pair behind a link or a review; None for a split or a detach.
    decision: LinkDecision | None
    #: Who: ``"linker"`` for automatic links, else the reviewer or operator.
    actor: str
    reason: str


class ClusterLedger:
    """Records, their links, their clusters and the history of all three."""

    def __init__(self) -> None:
        self._order: dict[str, int] = {}
        self._cluster_of: dict[str, str] = {}
        self._members: dict[str, set[str]] = {}
        self._links: dict[str, dict[str, LinkDecision]] = {}
        self._events: list[LineageEvent] = []
        self._events_of: dict[str, list[int]] = {}
        self._next_cluster = 0

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def _new_cluster(self) -> str:
        self._next_cluster += 1
        return f"c{self._next_cluster}"

    def add(self, key: str) -> str:
        """File a new record as a cluster of its own; returns its cluster id."""
        if key in self._order:
            raise FailedPrecondition("record is already in the index", reason="LINKAGE_RECORD_EXISTS", record=key)
        self._order[key] = len(self._order)
        cluster = self._new_cluster()
        self._cluster_of[key] = cluster
        self._members[cluster] = {key}
        self._links[key] = {}
        self._events_of[key] = []
        return cluster

    def remove(self, key: str) -> None:
        """Forget a record without links (alone in its cluster); the events that named it stay in the log."""
        self._require(key)
        if self._links[key]:
            raise FailedPrecondition("a linked record cannot be removed", reason="LINKAGE_RECORD_LINKED", record=key)
        cluster = self._cluster_of.pop(key)
        del self._members[cluster]
        del self._order[key], self._links[key], self._events_of[key]

    def _require(self, key: str) -> None:
        if key not in self._order:
            raise NotFound("record is not in the index", reason="LINKAGE_RECORD_NOT_FOUND", record=key)

    def cluster_of(self, key: str) -> str:
        """The id of the cluster holding ``key``."""
        self._require(key)
        return self._cluster_of[key]

    def members(self, cluster: str) -> frozenset[str]:
        """The records of one cluster."""
        if cluster not in self._members:
            raise NotFound("no such cluster", reason="LINKAGE_CLUSTER_NOT_FOUND", metadata={"cluster": cluster})
        return frozenset(self._members[cluster])

    @property
    def clusters(self) -> dict[str, frozenset[str]]:
        """Every cluster: id → record keys (singletons included)."""
        return {cluster: frozenset(members) for cluster, members in self._members.items()}

    def links_of(self, key: str) -> tuple[LinkDecision, ...]:
        """The active links of one record, with the decisions that made them."""
        self._require(key)
        return tuple(self._links[key].values())

    def lineage(self, key: str) -> tuple[LineageEvent, ...]:
        """Every event that changed (or decided not to change) the cluster of ``key``, oldest first."""
        self._require(key)
        return tuple(self._events[i] for i in self._events_of[key])

    @property
    def events(self) -> tuple[LineageEvent, ...]:
        """The whole history, oldest first."""
        return tuple(self._events)

    def _record(
        self,
        kind: EventKind,
        keys: tuple[str, ...],
        before: tuple[str, ...],
        after: tuple[str, ...],
        decision: LinkDecision | None,
        actor: str,
        reason: str,
        touched: Iterable[str],
    ) -> LineageEvent:
        event = LineageEvent(len(self._events) + 1, kind, keys, before, after, decision, actor, reason)
        index = len(self._events)
        self._events.append(event)
        for key in touched:
            self._events_of[key].append(index)
        return event

    def link(self, decision: LinkDecision, *, kind: EventKind, actor: str, reason: str) -> LineageEvent:
        """Link the decision's pair, merging their clusters."""
        a, b = decision.record_key, decision.other_key
        self._require(a)
        self._require(b)
        self._links[a][b] = decision
        self._links[b][a] = decision
        ca, cb = self._cluster_of[a], self._cluster_of[b]
        if ca == cb:
            return self._record(kind, (a, b), (ca,), (ca,), decision, actor, reason, self._members[ca])
        # The older cluster (lower number) keeps its id.
        keep, gone = sorted((ca, cb), key=lambda c: int(c[1:]))
        moved = self._members.pop(gone)
        for key in moved:
            self._cluster_of[key] = keep
        self._members[keep] |= moved
        return self._record(kind, (a, b), (ca, cb), (keep,), decision, actor, reason, self._members[keep])

    def record_rejection(self, decision: LinkDecision, *, actor: str, reason: str) -> LineageEvent:
        """Note that a reviewer refused to link the decision's pair (the clusters stay as they are)."""
        a, b = decision.record_key, decision.other_key
        self._require(a)
        self._require(b)
        ca, cb = self._cluster_of[a], self._cluster_of[b]
        clusters = (ca,) if ca == cb else (ca, cb)
        touched = self._members[ca] | self._members[cb]
        return self._record(EventKind.REVIEW_REJECTED, (a, b), clusters, clusters, decision, actor, reason, touched)

    def _components(self, members: set[str]) -> list[set[str]]:
        """Connected components of ``members`` over the active links, oldest record's component first."""
        left = set(members)
        parts: list[set[str]] = []
        for start in sorted(members, key=self._order.__getitem__):
            if start not in left:
                continue
            part = {start}
            stack = [start]
            left.discard(start)
            while stack:
                for other in self._links[stack.pop()]:
                    if other in left:
                        left.discard(other)
                        part.add(other)
                        stack.append(other)
            parts.append(part)
        return parts

    def _regroup(self, cluster: str) -> tuple[str, ...]:
        members = self._members[cluster]
        parts = self._components(members)
        ids = [cluster] + [self._new_cluster() for _ in parts[1:]]
        for part, cid in zip(parts, ids, strict=True):
            self._members[cid] = part
            for key in part:
                self._cluster_of[key] = cid
        return tuple(ids)

    def split(self, a: str, b: str, *, actor: str, reason: str) -> LineageEvent:
        """Undo the link between ``a`` and ``b``; their cluster falls apart if nothing else holds it."""
        self._require(a)
        self._require(b)
        if b not in self._links[a]:
            raise NotFound(
                "the two records are not linked", reason="LINKAGE_LINK_NOT_FOUND", record=a, metadata={"other": b}
            )
        decision = self._links[a].pop(b)
        del self._links[b][a]
        cluster = self._cluster_of[a]
        touched = set(self._members[cluster])
        after = self._regroup(cluster)
        return self._record(EventKind.SPLIT, (a, b), (cluster,), after, decision, actor, reason, touched)

    def detach(self, key: str, *, actor: str, reason: str) -> LineageEvent:
        """Undo every link of ``key``, leaving it alone in a cluster."""
        self._require(key)
        for other in list(self._links[key]):
            del self._links[other][key]
        self._links[key].clear()
        cluster = self._cluster_of[key]
        touched = set(self._members[cluster])
        after = self._regroup(cluster)
        return self._record(EventKind.DETACHED, (key,), (cluster,), after, None, actor, reason, touched)
