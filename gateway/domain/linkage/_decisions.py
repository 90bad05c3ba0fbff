"""What the linker decided about a pair, with the evidence to record and audit it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.domain.linkage._model import ComparisonEvidence

__all__ = ["LinkDecision", "LinkOutcome", "LinkRule"]


class LinkRule(StrEnum):
    """Why a pair scored as it did."""

    #: Both records carry the same valid ID number (normalised, 15 digits lengthened): linked outright.
    ID_NUMBER = "id_number"
    #: The Fellegi–Sunter match probability.
    PROBABILISTIC = "probabilistic"


class LinkOutcome(StrEnum):
    """What happens to a scored pair."""

    #: At or above the link threshold: linked, and recorded with its evidence.
    LINK = "link"
    #: In the grey band: queued for a person to accept or reject.
    REVIEW = "review"


@dataclass(frozen=True, slots=True)
class LinkDecision:
    """One scored pair: the new (or queried) record, a held one, the score and every comparison's say."""

    record_key: str
    other_key: str
    rule: LinkRule
    outcome: LinkOutcome
    #: Total match weight in bits (log2 odds), prior included.
    match_weight: float
    #: Calibrated match probability (1.0 for an ID-number link).
    match_probability: float
    evidence: tuple[ComparisonEvidence, ...]

    @property
    def pair(self) -> frozenset[str]:
        """The two record keys, unordered."""
        return frozenset((self.record_key, self.other_key))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, to store next to the link or the review item."""
        return {
            "record_key": self.record_key,
            "other_key": self.other_key,
            "rule": self.rule.value,
            "outcome": self.outcome.value,
            "match_weight": round(self.match_weight, 4),
            "match_probability": self.match_probability,
            "evidence": [e.as_dict() for e in self.evidence],
        }
