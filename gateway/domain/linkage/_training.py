"""Estimating the model from the data: u from random pairs, m by EM on blocked pairs, λ from both.

No weight is set by hand. Training goes:

1. **u** (P(level | non-match)) from pairs of records drawn at random, which are almost all
   non-matches. The chance of exact agreement on a single value (ID number, surname, given name,
   birth date, gender) is computed exactly from the population's value counts instead
   (Σ c_v(c_v − 1) / n(n − 1)), since a sample sees too few agreements on a birth date to
   estimate it; so is the chance of a day and month swapped.
2. **m** (P(level | match)) by expectation-maximisation, one session per blocking rule, over the
   pairs that rule produces (Splink's scheme): u stays fixed, the session's own match share and
   the m of every comparison the rule does *not* decide are estimated; the comparisons it decides
   (surname and birth date for ``birth_surname``) are held out, since all of its pairs agree on
   them. Each comparison's m is the average over the sessions that estimated it, weighted by
   their expected matches. EM runs on the histogram of comparison vectors, not on pairs, so a
   session costs milliseconds whatever its size.
3. **λ** (the probability that two random records match): the fixed point of a one-parameter
   EM over every candidate pair of the population, m and u held: λ · (comparable pairs) equals
   the expected number of matches among the candidates (pairs outside every block count as
   non-matches, which is why they are outside). It starts from a first estimate that needs no
   model of the whole vector: each session R found ``λ_R · |pairs_R|`` matches, short of all of
   them by R's recall, which the *other* sessions measure (the posterior-weighted share of their
   matches that R also produces); the median over R, divided by the comparable pairs. Both are
   kept in the model's training summary.
4. A random pair is a match with probability λ, so the sampled u are contaminated by λ·m;
   u is corrected to ``(u_raw − λ m) / (1 − λ)`` and the EM sessions run once more with it.
   This matters for the ID number, whose random agreements are nearly all the same person.
5. **Term frequencies** of surnames and given names shared by at least ``tf_min_count`` persons.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.domain.linkage._blocking import HELD_OUT, BlockingRule, blocking_keys
from gateway.domain.linkage._compare import (
    COMPARISONS,
    NULL,
    RecordFeatures,
    compare,
    exact_values,
    features_of,
)
from gateway.domain.linkage._model import ComparisonParameters, LinkageModel
from gateway.domain.linkage._record import LinkageRecord
from gateway.errors import InvalidArgument

__all__ = ["EmSession", "TrainingSettings", "expectation_maximisation", "train_model"]

_K = len(COMPARISONS)
_LEVELS = tuple(len(c.levels) for c in COMPARISONS)
_SURNAME, _GIVEN, _BIRTH = 1, 2, 3
# Pseudo-counts that keep a level never observed from getting an infinite weight.
_U_PSEUDO = 0.5
_M_PSEUDO = 0.01


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """How a model is trained; the defaults suit a few thousand to a few million records."""

    #: Random pairs drawn to estimate u.
    random_pairs: int = 100_000
    #: Seed of every random choice: equal data and settings give an equal model.
    seed: int = 20261130
    #: Whether records of one source (province) are compared with each other, or only across sources.
    link_within_source: bool = True
    #: Blocks with more records than this are left out of training (and capped when linking).
    max_block_size: int = 500
    #: EM sessions with more pairs are subsampled to this many.
    max_pairs_per_session: int = 1_000_000
    #: EM stops after this many iterations, or when no parameter moves by more than ``tolerance``.
    max_iterations: int = 200
    tolerance: float = 1e-6
    #: A surname or given name is listed for term-frequency adjustment when this many records carry it.
    tf_min_count: int = 10


@dataclass(frozen=True, slots=True)
class EmSession:
    """The outcome of one EM session."""

    rule: BlockingRule
    pairs: int
    #: The session's match share: P(match | the pair shares a key of this rule).
    match_share: float
    #: Per comparison, the estimated m (None for a comparison the rule holds out or never observes).
    m: tuple[tuple[float, ...] | None, ...]
    iterations: int
    converged: bool


Pattern = tuple[int, ...]


def expectation_maximisation(
    patterns: Counter[Pattern],
    u: Sequence[Sequence[float]],
    *,
    held_out: frozenset[int] = frozenset(),
    max_iterations: int = 200,
    tolerance: float = 1e-6,
) -> tuple[float, list[list[float] | None], list[float], int, bool]:
    """EM over a histogram of comparison vectors with u fixed.

    Returns the match share, m per comparison (None where held out or never observed), the
    posterior match probability of each pattern (in ``patterns``' order), the iterations run and
    whether the run converged.
    """
    items = list(patterns.items())
    active = [k for k in range(len(u)) if k not in held_out and any(g[k] != NULL for g, _ in items)]
    m: list[list[float] | None] = [None] * len(u)
    for k in active:
        levels = len(u[k])
        # Start from "matches mostly agree": 0.8 on the first level, the rest falling off.
        tail = [0.5**i for i in range(1, levels)]
        m[k] = [0.8] + [0.2 * t / sum(tail) for t in tail]
    share = 0.1
    posteriors = [0.0] * len(items)
    iterations = 0
    converged = False
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - the count is returned
        # E-step.
        expected = 0.0
        for i, (g, count) in enumerate(items):
            pm, pu = share, 1.0 - share
            for k in active:
                level = g[k]
                if level != NULL:
                    pm *= m[k][level]  # type: ignore[index]
                    pu *= u[k][level]
            post = pm / (pm + pu) if pm + pu > 0 else 0.0
            posteriors[i] = post
            expected += post * count
        total = sum(count for _, count in items)
        new_share = min(max(expected / total, 1e-9), 1.0 - 1e-9)
        # M-step.
        delta = abs(new_share - share)
        share = new_share
        for k in active:
            sums = [_M_PSEUDO] * len(u[k])
            for (g, count), post in zip(items, posteriors, strict=True):
                level = g[k]
                if level != NULL:
                    sums[level] += post * count
            norm = sum(sums)
            new = [s / norm for s in sums]
            old = m[k]
            assert old is not None
            delta = max(delta, *(abs(a - b) for a, b in zip(new, old, strict=True)))
            m[k] = new
        if delta < tolerance:
            converged = True
            break
    return share, m, posteriors, iterations, converged


def _total_pairs(features: Sequence[RecordFeatures], within: bool) -> int:
    n = len(features)
    if within:
        return n * (n - 1) // 2
    sizes = Counter(f.province for f in features)
    return (n * n - sum(s * s for s in sizes.values())) // 2


def _value_u(features: Sequence[RecordFeatures], k: int, within: bool) -> dict[int, float]:
    """Levels of comparison k whose u follows from value counts alone: exact agreement, and for
    the birth date day and month swapped (Σ over dates of c(y-m-d)·c(y-d-m))."""
    counts: Counter[object] = Counter()
    by_source: Counter[tuple[str, object]] = Counter()
    sources: Counter[str] = Counter()
    for f in features:
        value = exact_values(f)[k]
        if value is not None:
            counts[value] += 1
            if not within:
                by_source[(f.province, value)] += 1
                sources[f.province] += 1
    n = sum(counts.values())
    pairs = n * (n - 1) if within else n * n - sum(s * s for s in sources.values())
    if pairs <= 0:
        return {}

    def agreeing(partner: Callable[[Any], Any]) -> int:
        # Ordered pairs of comparable records whose values are partners (equal, or swapped).
        same_record = sum(c for v, c in counts.items() if partner(v) == v)
        total = sum(c * counts.get(partner(v), 0) for v, c in counts.items()) - (same_record if within else 0)
        if not within:
            total -= sum(c * by_source.get((s, partner(v)), 0) for (s, v), c in by_source.items())
        return total

    out = {0: agreeing(lambda v: v) / pairs}
    if k == _BIRTH:
        out[1] = agreeing(lambda v: (v[0], v[2], v[1]) if v[1] != v[2] else None) / pairs
    return out


def _sample_u(
    features: Sequence[RecordFeatures], settings: TrainingSettings, rng: random.Random
) -> tuple[list[list[float]], int]:
    """Level shares among random comparable pairs (u before correction), and the pairs drawn."""
    n = len(features)
    within = settings.link_within_source
    total = _total_pairs(features, within)
    draws = min(settings.random_pairs, total)
    patterns: Counter[Pattern] = Counter()
    drawn = 0
    everyone = range(n)
    for _ in range(50):  # each round draws what is still missing; rejections make a few rounds
        if drawn >= draws:
            break
        picks = rng.choices(everyone, k=2 * (draws - drawn) + 16)
        for i, j in zip(picks[::2], picks[1::2], strict=True):
            a, b = features[i], features[j]
            if i == j or (not within and a.province == b.province):
                continue
            patterns[compare(a, b)] += 1
            drawn += 1
            if drawn == draws:
                break
    counts = [[0] * levels for levels in _LEVELS]
    for gamma, count in patterns.items():
        for k, level in enumerate(gamma):
            if level != NULL:
                counts[k][level] += count
    u: list[list[float]] = []
    floor = 1.0 / (2.0 * max(total, 1))
    for k in range(_K):
        row = counts[k]
        known = _value_u(features, k, within) if sum(row) > 0 else {}
        # Levels known from the value counts take their share; the others split the rest as sampled.
        rest = {level: c + _U_PSEUDO for level, c in enumerate(row) if level not in known}
        scale = (1.0 - sum(known.values())) / sum(rest.values())
        values = [max(known[level], floor) if level in known else rest[level] * scale for level in range(len(row))]
        u.append([x / sum(values) for x in values])
    return u, drawn


def _blocked_pairs(features: Sequence[RecordFeatures], settings: TrainingSettings) -> dict[tuple[int, int], int]:
    """Every candidate pair of the training population, with the mask of the rules that produce it."""
    blocks: dict[str, list[int]] = defaultdict(list)
    rule_of: dict[str, BlockingRule] = {}
    for i, f in enumerate(features):
        for rule, key in blocking_keys(f):
            members = blocks[key]
            if not members or members[-1] != i:
                members.append(i)
            rule_of[key] = rule
    within = settings.link_within_source
    pairs: dict[tuple[int, int], int] = defaultdict(int)
    for key, members in blocks.items():
        if len(members) < 2 or len(members) > settings.max_block_size:
            continue
        bit = 1 << rule_of[key]
        for x in range(len(members)):
            i = members[x]
            province = features[i].province
            for y in range(x + 1, len(members)):
                j = members[y]
                if within or features[j].province != province:
                    pairs[(i, j)] |= bit
    return pairs


def _term_frequencies(features: Sequence[RecordFeatures], k: int, min_count: int) -> tuple[dict[str, float], float]:
    counts: Counter[str] = Counter()
    for f in features:
        value = f.name.surname.text if k == _SURNAME else f.name.given.text
        if value:
            counts[value] += 1
    n = sum(counts.values())
    if not n:
        return {}, 0.0
    listed = {v: c / n for v, c in counts.items() if c >= min_count}
    rare = [c for v, c in counts.items() if v not in listed]
    floor = sum(c * c for c in rare) / (n * sum(rare)) if rare else 1.0 / n
    return listed, max(floor, 1.0 / n)


def _run_sessions(
    histograms: dict[BlockingRule, Counter[tuple[Pattern, int]]],
    u: Sequence[Sequence[float]],
    settings: TrainingSettings,
) -> tuple[list[EmSession], dict[BlockingRule, list[tuple[int, float, int]]]]:
    sessions: list[EmSession] = []
    # Per rule: (rule mask, posterior, count) of each histogram cell, for the recall estimates.
    cells: dict[BlockingRule, list[tuple[int, float, int]]] = {}
    for rule, histogram in histograms.items():
        held = HELD_OUT[rule]
        patterns: Counter[Pattern] = Counter()
        for (gamma, _), count in histogram.items():
            patterns[tuple(NULL if k in held else level for k, level in enumerate(gamma))] += count
        share, m, posteriors, iterations, converged = expectation_maximisation(
            patterns, u, held_out=held, max_iterations=settings.max_iterations, tolerance=settings.tolerance
        )
        post_of = dict(zip(patterns.keys(), posteriors, strict=True))
        cells[rule] = [
            (mask, post_of[tuple(NULL if k in held else level for k, level in enumerate(gamma))], count)
            for (gamma, mask), count in histogram.items()
        ]
        sessions.append(
            EmSession(
                rule=rule,
                pairs=sum(histogram.values()),
                match_share=share,
                m=tuple(None if row is None else tuple(row) for row in m),
                iterations=iterations,
                converged=converged,
            )
        )
    return sessions, cells


def _combine_m(sessions: Sequence[EmSession], u: Sequence[Sequence[float]]) -> list[list[float]]:
    m: list[list[float]] = []
    for k in range(_K):
        weighted = [0.0] * _LEVELS[k]
        weight_sum = 0.0
        for session in sessions:
            row = session.m[k]
            if row is None:
                continue
            w = session.match_share * session.pairs
            weight_sum += w
            for level, p in enumerate(row):
                weighted[level] += w * p
        if weight_sum > 0:
            m.append([x / weight_sum for x in weighted])
        else:
            # Never observed (e.g. no source has addresses): no evidence either way.
            m.append(list(u[k]))
    return m


def _estimate_matches(
    sessions: Sequence[EmSession], cells: dict[BlockingRule, list[tuple[int, float, int]]]
) -> tuple[float | None, dict[BlockingRule, float]]:
    """Total matches among comparable pairs (median over rules), and each rule's estimated recall."""
    recalls: dict[BlockingRule, float] = {}
    totals: list[float] = []
    for session in sessions:
        rule = session.rule
        bit = 1 << rule
        shares = []
        for other in sessions:
            if other.rule == rule:
                continue
            matched = sum(post * count for _, post, count in cells[other.rule])
            if matched <= 0:
                continue
            shares.append(sum(post * count for mask, post, count in cells[other.rule] if mask & bit) / matched)
        if not shares:
            continue
        recall = statistics.fmean(shares)
        recalls[rule] = recall
        if recall >= 0.05 and session.pairs:
            totals.append(session.match_share * session.pairs / recall)
    return (statistics.median(totals) if totals else None), recalls


def _population_lambda(
    patterns: Counter[Pattern], m: Sequence[Sequence[float]], u: Sequence[Sequence[float]], total: int, start: float
) -> float:
    """λ such that λ·total equals the expected matches among the candidate pairs (a one-parameter EM).

    Pairs outside every block count as non-matches: blocking exists because they almost all are.
    """
    ratios = []
    for gamma, count in patterns.items():
        ratio = 1.0
        for k, level in enumerate(gamma):
            if level != NULL:
                ratio *= m[k][level] / u[k][level]
        ratios.append((ratio, count))
    lam = start
    for _ in range(200):
        odds = lam / (1.0 - lam)
        expected = sum(count * odds * r / (1.0 + odds * r) for r, count in ratios)
        new = min(max(expected / total, 1.0 / total), 0.5)
        if abs(new - lam) <= 1e-4 * lam:
            return new
        lam = new
    return lam


def train_model(records: Sequence[LinkageRecord], settings: TrainingSettings | None = None) -> LinkageModel:
    """Estimate a model from ``records`` (the population to link, or a fair sample of it)."""
    settings = settings or TrainingSettings()
    features = [features_of(r) for r in records]
    if len(features) < 2:
        raise InvalidArgument("training needs at least two records", reason="LINKAGE_TRAINING_TOO_SMALL")
    rng = random.Random(settings.seed)  # noqa: S311 - sampling pairs, not making secrets
    within = settings.link_within_source
    total = _total_pairs(features, within)
    if total <= 0:
        raise InvalidArgument(
            "training needs at least one comparable pair (two sources when only linking across sources)",
            reason="LINKAGE_TRAINING_TOO_SMALL",
        )
    u_raw, drawn = _sample_u(features, settings, rng)

    pairs = _blocked_pairs(features, settings)
    histograms: dict[BlockingRule, Counter[tuple[Pattern, int]]] = {rule: Counter() for rule in BlockingRule}
    per_rule = Counter(rule for mask in pairs.values() for rule in BlockingRule if mask & (1 << rule))
    keep = {rule: min(1.0, settings.max_pairs_per_session / count) for rule, count in per_rule.items() if count}
    candidates: Counter[Pattern] = Counter()
    for (i, j), mask in pairs.items():
        gamma = compare(features[i], features[j])
        candidates[gamma] += 1
        for rule in BlockingRule:
            if mask & (1 << rule) and (keep[rule] >= 1.0 or rng.random() < keep[rule]):
                histograms[rule][(gamma, mask)] += 1
    histograms = {rule: h for rule, h in histograms.items() if h}
    if not histograms:
        raise InvalidArgument("no blocking rule produced a candidate pair", reason="LINKAGE_TRAINING_TOO_SMALL")

    u = u_raw
    lam = 1.0 / total
    summary_rounds = []
    sessions: list[EmSession] = []
    recalls: dict[BlockingRule, float] = {}
    m: list[list[float]] = []
    for round_ in (1, 2):
        sessions, cells = _run_sessions(histograms, u, settings)
        m = _combine_m(sessions, u)
        matches, recalls = _estimate_matches(sessions, cells)
        if matches is not None:
            lam = min(max(matches / total, 1.0 / total), 0.5)
        recall_lambda = lam
        lam = _population_lambda(candidates, m, u, total, lam)
        summary_rounds.append(
            {
                "round": round_,
                "lambda_from_session_recall": recall_lambda,
                "lambda": lam,
                "expected_matches": lam * total,
            }
        )
        # Random pairs include matches with probability λ: take their share out of u.
        floor = 1.0 / (2.0 * total)
        u = []
        for k in range(_K):
            row = [max((ur - lam * mk) / (1.0 - lam), floor) for ur, mk in zip(u_raw[k], m[k], strict=True)]
            u.append([x / sum(row) for x in row])

    comparisons = []
    for k, spec in enumerate(COMPARISONS):
        m_row = [max(x, 1e-9) for x in m[k]]
        u_row = [max(x, 1e-12) for x in u[k]]
        frequencies: dict[str, float] = {}
        floor = 0.0
        if spec.term_frequency:
            frequencies, floor = _term_frequencies(features, k, settings.tf_min_count)
        comparisons.append(
            ComparisonParameters(
                name=spec.name,
                levels=spec.levels,
                m=tuple(x / sum(m_row) for x in m_row),
                u=tuple(x / sum(u_row) for x in u_row),
                term_frequencies=frequencies,
                term_frequency_floor=floor,
            )
        )
    training: dict[str, Any] = {
        "records": len(features),
        "sources": len({f.province for f in features}),
        "link_within_source": within,
        "comparable_pairs": total,
        "random_pairs": drawn,
        "blocked_pairs": len(pairs),
        "rounds": summary_rounds,
        "sessions": [
            {
                "rule": s.rule.name.lower(),
                "pairs": s.pairs,
                "match_share": round(s.match_share, 6),
                "recall": None if s.rule not in recalls else round(recalls[s.rule], 4),
                "iterations": s.iterations,
                "converged": s.converged,
            }
            for s in sessions
        ],
        "seed": settings.seed,
    }
    return LinkageModel(tuple(comparisons), lam, training)
