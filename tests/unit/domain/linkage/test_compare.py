"""Tests of comparison levels and blocking keys (gateway.domain.linkage._compare, _blocking)."""

from __future__ import annotations

import datetime as dt

from gateway.domain.identity import make_id_number
from gateway.domain.linkage import COMPARISONS, NULL, BlockingRule, LinkageRecord, blocking_keys, compare, features_of

ID_18 = make_id_number("110105", dt.date(1949, 12, 31), 2)  # 11010519491231002X
ID_15 = ID_18[:6] + ID_18[8:17]
LEVEL = {spec.name: i for i, spec in enumerate(COMPARISONS)}


def _levels(a: LinkageRecord, b: LinkageRecord) -> dict[str, str]:
    gamma = compare(features_of(a), features_of(b))
    return {
        spec.name: "null" if level == NULL else spec.levels[level]
        for spec, level in zip(COMPARISONS, gamma, strict=True)
    }


def _record(key: str, **fields: object) -> LinkageRecord:
    return LinkageRecord(key, **fields)  # type: ignore[arg-type]


def test_fifteen_digit_number_equals_its_eighteen_digit_form() -> None:
    a, b = _record("a", id_number=ID_18), _record("b", id_number=ID_15)
    fa, fb = features_of(a), features_of(b)
    assert fa.id_valid
    assert fb.id_valid
    assert fa.id_number == fb.id_number
    assert _levels(a, b)["id_number"] == "equal"


def test_mistyped_number_is_one_typo_from_the_valid_one_and_proposes_it_as_a_key() -> None:
    typo = ID_18[:10] + ID_18[11] + ID_18[10] + ID_18[12:]  # adjacent swap in the birth date
    assert _levels(_record("a", id_number=ID_18), _record("b", id_number=typo))["id_number"] == "one_typo"
    keys = {
        key for rule, key in blocking_keys(features_of(_record("b", id_number=typo))) if rule is BlockingRule.ID_NUMBER
    }
    assert f"i|{ID_18}" in keys


def test_two_valid_different_numbers_are_their_own_level() -> None:
    other = make_id_number("110105", dt.date(1949, 12, 31), 4)
    assert _levels(_record("a", id_number=ID_18), _record("b", id_number=other))["id_number"] == "both_valid_different"


def test_birth_date_levels() -> None:
    def level(x: object, y: object) -> str:
        return _levels(_record("a", birth_date=x), _record("b", birth_date=y))["birth_date"]

    assert level(dt.date(1962, 3, 7), "19620307") == "exact"
    assert level(dt.date(1962, 3, 7), dt.date(1962, 7, 3)) == "day_month_swapped"
    assert level(dt.date(1962, 3, 7), dt.date(1963, 3, 7)) == "one_component_off"
    assert level("19620230", dt.date(1962, 2, 28)) == "one_component_off"  # an impossible date still counts
    assert level(dt.date(1962, 3, 7), dt.date(1962, 11, 20)) == "same_year"
    assert level(dt.date(1962, 3, 7), dt.date(1980, 11, 20)) == "different"
    assert level(None, dt.date(1980, 11, 20)) == "null"


def test_missing_birth_date_and_division_are_read_from_a_mistyped_number() -> None:
    typo = ID_18[:16] + ("0" if ID_18[16] != "0" else "1") + ID_18[17]
    features = features_of(_record("a", id_number=typo))
    assert not features.id_valid
    assert features.birth == (1949, 12, 31)
    assert features.divisions == ("110105",)


def test_division_levels_use_both_hukou_and_residence() -> None:
    def level(a: tuple[str, str], b: tuple[str, str]) -> str:
        return _levels(
            _record("a", hukou_division=a[0], residence_division=a[1]),
            _record("b", hukou_division=b[0], residence_division=b[1]),
        )["division"]

    assert level(("440106", "440106"), ("410105", "440106")) == "same_county"
    assert level(("440106", ""), ("440104", "")) == "same_prefecture"
    assert level(("440106", ""), ("440307", "")) == "same_province"
    assert level(("440106", ""), ("410105", "")) == "different"
    assert level(("", ""), ("410105", "")) == "null"


def test_household_overlap_levels() -> None:
    def level(a: set[str], b: set[str]) -> str:
        return _levels(_record("a", household_members=frozenset(a)), _record("b", household_members=frozenset(b)))[
            "household"
        ]

    assert level({"李秀英", "王浩然"}, {"李秀英", "王浩然", "王一诺"}) == "two_or_more_shared"
    assert level({"李秀英"}, {"李秀英", "王浩然"}) == "one_shared"
    assert level({"李秀英"}, {"王浩然"}) == "none_shared"
    assert level(set(), {"王浩然"}) == "null"


def test_dotted_and_undotted_minority_names_compare_exact() -> None:
    levels = _levels(_record("a", name="阿依古丽·买买提"), _record("b", name="阿依古丽买买提"))
    assert (levels["surname"], levels["given_name"]) == ("exact", "exact")


def test_swapped_surname_and_given_name_are_compared_crossed() -> None:
    levels = _levels(
        _record("a", surname="campbell", given_name="joshua"), _record("b", surname="joshua", given_name="campbell")
    )
    assert (levels["surname"], levels["given_name"]) == ("exact", "exact")


def test_blocking_keys_survive_a_swapped_day_and_month() -> None:
    a = features_of(_record("a", name="王秀英", birth_date=dt.date(1962, 3, 7)))
    b = features_of(_record("b", name="王秀英", birth_date=dt.date(1962, 7, 3)))
    shared = {key for _, key in blocking_keys(a)} & {key for _, key in blocking_keys(b)}
    assert any(key.startswith("bs|") for key in shared)
