"""The Fellegi–Sunter model: m and u per comparison level, the prior, and the match weight of a pair.

For a pair with comparison vector γ, each comparison k at level l contributes the Bayes factor
``m_kl / u_kl``, where m is the chance of that level among matching pairs and u among non-matching
ones (both learnt from the data, see ``_training``). The total match weight is

    W = log2(λ / (1 − λ)) + Σ_k log2(m_k,γk / u_k,γk)        (NULL levels contribute 0)

with λ the probability that two random records match, and the match probability is
``1 / (1 + 2^−W)`` — calibrated as far as the comparisons are independent given the match status.

Term-frequency adjustment (surname, given name): two records agreeing exactly on 王 say less than
two agreeing on 欧阳; for an exact agreement on value v the u of the level is replaced by v's
frequency in the training population. Only values shared by at least ``tf_min_count`` persons are
listed in the model (so it holds no rare, identifying names); rarer ones get the floor, the average
frequency of the unlisted values.

A model is plain data and round-trips through JSON, so the hub can persist it, show it to an
auditor, and reload exactly the weights that made a link.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from gateway.domain.linkage._compare import COMPARISONS, NULL, RecordFeatures, names_of
from gateway.errors import InvalidArgument

__all__ = [
    "MODEL_FORMAT",
    "ComparisonEvidence",
    "ComparisonParameters",
    "LinkageModel",
    "bootstrap_model",
    "probability_of_weight",
]

#: The ``format`` field of a serialised model.
MODEL_FORMAT = "hutong.linkage.model/1"
_REASON = "LINKAGE_MODEL_INVALID"
_SURNAME, _GIVEN = 1, 2


def probability_of_weight(weight: float) -> float:
    """The match probability of a total match weight (log2 odds)."""
    if weight >= 60:
        return 1.0
    if weight <= -60:
        return 0.0
    return 1.0 / (1.0 + math.pow(2.0, -weight))


@dataclass(frozen=True, slots=True)
class ComparisonParameters:
    """The learnt parameters of one comparison."""

    name: str
    #: Level labels, strongest agreement first (as in ``COMPARISONS``).
    levels: tuple[str, ...]
    #: P(level | match), per level; sums to 1.
    m: tuple[float, ...]
    #: P(level | non-match), per level; sums to 1.
    u: tuple[float, ...]
    #: Frequency of each common value, for the term-frequency adjustment of the first level.
    term_frequencies: Mapping[str, float] = field(default_factory=dict)
    #: Frequency assumed for a value not in ``term_frequencies``; 0 means no adjustment.
    term_frequency_floor: float = 0.0

    def weight(self, level: int) -> float:
        """log2(m/u) of one level: the evidence it gives, in bits."""
        return math.log2(self.m[level] / self.u[level])

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "levels": [
                {"label": label, "m": m, "u": u, "weight": round(self.weight(i), 4)}
                for i, (label, m, u) in enumerate(zip(self.levels, self.m, self.u, strict=True))
            ],
            "term_frequencies": dict(sorted(self.term_frequencies.items(), key=lambda kv: (-kv[1], kv[0]))),
            "term_frequency_floor": self.term_frequency_floor,
        }


@dataclass(frozen=True, slots=True)
class ComparisonEvidence:
    """What one comparison said about a pair: its level and the weight it added."""

    comparison: str
    #: The level's label, or ``"null"`` when a record lacks the field.
    level: str
    #: Bits of evidence (log2 Bayes factor) this comparison added; 0 for null.
    weight: float
    #: Whether the weight was adjusted for the frequency of the agreeing value.
    term_frequency_adjusted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "comparison": self.comparison,
            "level": self.level,
            "weight": round(self.weight, 4),
            "term_frequency_adjusted": self.term_frequency_adjusted,
        }


@dataclass(frozen=True)
class LinkageModel:
    """A trained Fellegi–Sunter model; build one with ``train_model`` or ``LinkageModel.from_json``."""

    comparisons: tuple[ComparisonParameters, ...]
    #: λ: the probability that two records drawn at random (among those the index compares) match.
    probability_two_random_records_match: float
    #: What training saw and did (pairs per session, EM iterations, λ estimates); JSON-ready.
    training: Mapping[str, Any] = field(default_factory=dict)
    _weights: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    _prior: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(c.name for c in self.comparisons)
        expected = tuple(c.name for c in COMPARISONS)
        if names != expected:
            raise InvalidArgument(f"comparisons must be {', '.join(expected)}", reason=_REASON, field="comparisons")
        for params, spec in zip(self.comparisons, COMPARISONS, strict=True):
            if params.levels != spec.levels:
                raise InvalidArgument(
                    f"comparison {spec.name} must have the levels {', '.join(spec.levels)}",
                    reason=_REASON,
                    field=f"comparisons.{spec.name}.levels",
                )
            if len(params.m) != len(spec.levels) or len(params.u) != len(spec.levels):
                raise InvalidArgument(
                    f"comparison {spec.name} needs one m and one u per level",
                    reason=_REASON,
                    field=f"comparisons.{spec.name}",
                )
            if not all(0.0 < p <= 1.0 for p in (*params.m, *params.u)):
                raise InvalidArgument(
                    f"m and u of comparison {spec.name} must lie within (0, 1]",
                    reason=_REASON,
                    field=f"comparisons.{spec.name}",
                )
        prior = self.probability_two_random_records_match
        if not 0.0 < prior < 1.0:
            raise InvalidArgument(
                "probability_two_random_records_match must lie within (0, 1)",
                reason=_REASON,
                field="probability_two_random_records_match",
            )
        object.__setattr__(
            self, "_weights", tuple(tuple(c.weight(i) for i in range(len(c.m))) for c in self.comparisons)
        )
        object.__setattr__(self, "_prior", math.log2(prior / (1.0 - prior)))

    @property
    def prior_weight(self) -> float:
        """log2(λ / (1 − λ)): the weight of a pair before any comparison."""
        return self._prior

    def _tf_adjustment(self, k: int, value: str) -> float:
        params = self.comparisons[k]
        if params.term_frequency_floor <= 0.0:
            return 0.0
        frequency = params.term_frequencies.get(value, params.term_frequency_floor)
        # The exact level's u is the chance that two random records agree on *some* value;
        # for agreement on this value it is this value's frequency.
        return math.log2(params.u[0] / frequency)

    def match_weight(self, gamma: Sequence[int], a: RecordFeatures, b: RecordFeatures) -> float:
        """Total match weight of a pair with comparison vector ``gamma``."""
        weights = self._weights
        total = self._prior
        for k, level in enumerate(gamma):
            if level != NULL:
                total += weights[k][level]
        if gamma[_SURNAME] == 0 or gamma[_GIVEN] == 0:
            na, _ = names_of(a, b)
            if gamma[_SURNAME] == 0:
                total += self._tf_adjustment(_SURNAME, na.surname.text)
            if gamma[_GIVEN] == 0:
                total += self._tf_adjustment(_GIVEN, na.given.text)
        return total

    def evidence(self, gamma: Sequence[int], a: RecordFeatures, b: RecordFeatures) -> tuple[ComparisonEvidence, ...]:
        """Per comparison, the level and the weight it contributed to :meth:`match_weight`."""
        out = []
        na, _ = names_of(a, b)
        for k, level in enumerate(gamma):
            params = self.comparisons[k]
            if level == NULL:
                out.append(ComparisonEvidence(params.name, "null", 0.0))
                continue
            weight = self._weights[k][level]
            adjusted = False
            if level == 0 and k in (_SURNAME, _GIVEN) and params.term_frequency_floor > 0.0:
                value = na.surname.text if k == _SURNAME else na.given.text
                weight += self._tf_adjustment(k, value)
                adjusted = True
            out.append(ComparisonEvidence(params.name, params.levels[level], weight, adjusted))
        return tuple(out)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :meth:`to_json`)."""
        return {
            "format": MODEL_FORMAT,
            "probability_two_random_records_match": self.probability_two_random_records_match,
            "prior_weight": round(self._prior, 4),
            "comparisons": [c.as_dict() for c in self.comparisons],
            "training": dict(self.training),
        }

    def to_json(self) -> str:
        """The model as JSON text; :meth:`from_json` reads it back to an equal model."""
        return json.dumps(self.as_dict(), ensure_ascii=False, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> LinkageModel:
        """Read a model written by :meth:`to_json`; raise InvalidArgument (LINKAGE_MODEL_INVALID) if it is not one."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument("model is not valid JSON", reason=_REASON) from exc
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            raise InvalidArgument(f"model format must be {MODEL_FORMAT}", reason=_REASON, field="format")
        try:
            comparisons = tuple(
                ComparisonParameters(
                    name=str(c["name"]),
                    levels=tuple(str(level["label"]) for level in c["levels"]),
                    m=tuple(float(level["m"]) for level in c["levels"]),
                    u=tuple(float(level["u"]) for level in c["levels"]),
                    term_frequencies={str(k): float(v) for k, v in c.get("term_frequencies", {}).items()},
                    term_frequency_floor=float(c.get("term_frequency_floor", 0.0)),
                )
                for c in data["comparisons"]
            )
            prior = float(data["probability_two_random_records_match"])
            training = dict(data.get("training", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument("model is missing a field or has one of the wrong type", reason=_REASON) from exc
        return cls(comparisons, prior, training)


def bootstrap_model() -> LinkageModel:
    """The model a hub links with until it holds a population to train on (``bootstrap_model.json``).

    Trained on the benchmark's synthetic Chinese population (``bench/linkage_population.py``:
    the demo's persons in four provinces, with second registrations carrying missing, 15-digit
    and mistyped ID numbers, homophones, traditional characters, swapped day and month), with
    each record's household co-members by name, as the hub feeds them. Its term-frequency tables
    list only synthetic names. ``scripts/train_bootstrap_model.py`` makes it (``--check`` tells
    whether the committed file is what it would write). A hub trains its own with ``hutong hub
    linkage train``.
    """
    text = resources.files("gateway.domain.linkage").joinpath("bootstrap_model.json").read_text(encoding="utf-8")
    return LinkageModel.from_json(text)
