"""Identity linkage beyond ID numbers: the pure core (no I/O, no gRPC, no SQL).

Records with the same valid ID number are linked outright (the first rule of identity); the
others are linked probabilistically, Fellegi–Sunter style, on name (characters, pinyin,
traditional/simplified, dotted minority names), birth date, gender, divisions, household
co-members, a mistyped ID number's remains and, where a source has one, the address.

* :class:`LinkageRecord` — what the linker reads of a person record;
* :func:`train_model` — m and u estimated from the data (random pairs, EM over blocked pairs),
  λ from the sessions' recall, term frequencies of names → a :class:`LinkageModel` (JSON);
* :class:`LinkageIndex` — incremental: ``add(record)`` links a record as it arrives;
  ``candidates(record)`` asks without adding; clusters, lineage, split, detach, review queue;
  ``hold``/``replace``/``relink`` and ``restore_*`` for a hub that rebuilds it from its store;
* :func:`bootstrap_model` — the model shipped with Hutong, for a hub with no population yet.

Modules: ``_names`` (normalisation, pinyin), ``_compare`` (features and comparison levels),
``_blocking`` (rules), ``_model`` (weights, probability, JSON), ``_training`` (u, EM, λ),
``_decisions`` (a scored pair), ``_clusters`` (clusters with lineage), ``_index`` (the linker).
"""

from __future__ import annotations

from gateway.domain.linkage._blocking import BlockingRule, blocking_keys
from gateway.domain.linkage._clusters import EventKind, LineageEvent
from gateway.domain.linkage._compare import COMPARISONS, NULL, ComparisonSpec, RecordFeatures, compare, features_of
from gateway.domain.linkage._decisions import LinkDecision, LinkOutcome, LinkRule
from gateway.domain.linkage._index import AddResult, CandidateSet, LinkageIndex, LinkSettings, ReviewItem, ReviewStatus
from gateway.domain.linkage._model import (
    MODEL_FORMAT,
    ComparisonEvidence,
    ComparisonParameters,
    LinkageModel,
    bootstrap_model,
    probability_of_weight,
)
from gateway.domain.linkage._names import name_features, normalize_name
from gateway.domain.linkage._record import LinkageRecord
from gateway.domain.linkage._training import EmSession, TrainingSettings, expectation_maximisation, train_model

__all__ = [
    "COMPARISONS",
    "MODEL_FORMAT",
    "NULL",
    "AddResult",
    "BlockingRule",
    "CandidateSet",
    "ComparisonEvidence",
    "ComparisonParameters",
    "ComparisonSpec",
    "EmSession",
    "EventKind",
    "LineageEvent",
    "LinkDecision",
    "LinkOutcome",
    "LinkRule",
    "LinkSettings",
    "LinkageIndex",
    "LinkageModel",
    "LinkageRecord",
    "RecordFeatures",
    "ReviewItem",
    "ReviewStatus",
    "TrainingSettings",
    "blocking_keys",
    "bootstrap_model",
    "compare",
    "expectation_maximisation",
    "features_of",
    "name_features",
    "normalize_name",
    "probability_of_weight",
    "train_model",
]
