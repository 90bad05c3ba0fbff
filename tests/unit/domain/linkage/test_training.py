"""Tests of model estimation and serialisation (gateway.domain.linkage._training, _model)."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from gateway.domain.linkage import COMPARISONS, LinkageModel, expectation_maximisation
from gateway.errors import InvalidArgument

LEVEL = {spec.name: i for i, spec in enumerate(COMPARISONS)}


def _draw(weights: list[float], rng: random.Random) -> int:
    return rng.choices(range(len(weights)), weights=weights)[0]


def test_em_recovers_m_and_the_match_share_from_pairs_drawn_with_known_parameters() -> None:
    rng = random.Random(5)
    m_true = [[0.9, 0.07, 0.03], [0.85, 0.15], [0.7, 0.2, 0.1]]
    u = [[0.01, 0.09, 0.9], [0.05, 0.95], [0.02, 0.08, 0.9]]
    share_true = 0.2
    patterns: Counter[tuple[int, ...]] = Counter()
    for _ in range(40_000):
        params = m_true if rng.random() < share_true else u
        patterns[tuple(_draw(row, rng) for row in params)] += 1
    share, m, _, _, converged = expectation_maximisation(patterns, u)
    assert converged
    assert share == pytest.approx(share_true, abs=0.01)
    for estimated, true in zip(m, m_true, strict=True):
        assert estimated is not None
        assert estimated == pytest.approx(true, abs=0.02)


def test_em_leaves_held_out_comparisons_unestimated() -> None:
    patterns = Counter({(0, 0): 50, (1, 1): 500, (0, 1): 10})
    _, m, _, _, _ = expectation_maximisation(patterns, [[0.1, 0.9], [0.1, 0.9]], held_out=frozenset({1}))
    assert m[1] is None
    assert m[0] is not None


def test_trained_model_learns_what_agreement_means(model: LinkageModel) -> None:
    def weight(comparison: str, level: str) -> float:
        params = model.comparisons[LEVEL[comparison]]
        return params.weight(params.levels.index(level))

    assert weight("id_number", "equal") > 15
    assert weight("id_number", "both_valid_different") < -3
    assert weight("birth_date", "exact") > weight("birth_date", "day_month_swapped") > 0
    assert weight("birth_date", "different") < 0
    assert weight("given_name", "exact") > 0 > weight("given_name", "different")
    assert weight("household", "two_or_more_shared") > weight("household", "none_shared")
    # No address in the data: no evidence either way.
    assert all(abs(weight("address", level)) < 1e-9 for level in COMPARISONS[LEVEL["address"]].levels)
    # A few hundred duplicates among ~2,600 records: λ is of the order of duplicates / pairs.
    n = model.training["records"]
    assert 1e-5 < model.probability_two_random_records_match * n * (n - 1) / 2 / 500 < 10


def test_term_frequencies_list_common_names_only(model: LinkageModel) -> None:
    surname = model.comparisons[LEVEL["surname"]]
    assert surname.term_frequencies["王"] > surname.term_frequency_floor
    assert all(f >= 10 / model.training["records"] for f in surname.term_frequencies.values())


def test_model_json_round_trips_to_an_equal_model(model: LinkageModel) -> None:
    text = model.to_json()
    again = LinkageModel.from_json(text)
    assert again == model
    assert again.to_json() == text
    assert json.loads(text)["format"] == "hutong.linkage.model/1"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: "not json",
        lambda d: json.dumps({**d, "format": "other/1"}),
        lambda d: json.dumps({**d, "probability_two_random_records_match": 1.5}),
        lambda d: json.dumps({**d, "comparisons": d["comparisons"][:-1]}),
        lambda d: json.dumps({k: v for k, v in d.items() if k != "comparisons"}),
    ],
)
def test_model_from_json_refuses_what_is_not_a_model(model: LinkageModel, mangle: Any) -> None:
    with pytest.raises(InvalidArgument) as info:
        LinkageModel.from_json(mangle(model.as_dict()))
    assert info.value.reason == "LINKAGE_MODEL_INVALID"
