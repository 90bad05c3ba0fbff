"""Tests of gateway.domain.divisions: GB/T 2260 division codes."""

from __future__ import annotations

from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import divisions
from gateway.domain.divisions import (
    MAINLAND_PROVINCES,
    PROVINCE_CODES,
    counties_of,
    division_name,
    is_known_division,
    province_of,
    validate_division,
)
from gateway.errors import InvalidDivision

DESIGN_PROVINCE_PREFIXES = (
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65"
)


def _table_rows() -> list[tuple[str, str]]:
    text = resources.files("gateway.domain").joinpath("data", "divisions.tsv").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            code, name = line.split("\t")
            rows.append((code, name))
    return rows


def test_mainland_provinces_are_the_31_of_the_design() -> None:
    assert {p[:2] for p in MAINLAND_PROVINCES} == set(DESIGN_PROVINCE_PREFIXES.split())
    assert len(MAINLAND_PROVINCES) == 31


def test_province_codes_add_taiwan_hong_kong_and_macau() -> None:
    assert set(PROVINCE_CODES) == MAINLAND_PROVINCES | {"710000", "810000", "820000"}
    assert PROVINCE_CODES["110000"] == "北京市"
    assert PROVINCE_CODES["810000"] == "香港特别行政区"


def test_table_file_starts_with_its_source_and_holds_unique_well_formed_rows() -> None:
    text = resources.files("gateway.domain").joinpath("data", "divisions.tsv").read_text(encoding="utf-8")
    assert text.startswith("# source: ")
    rows = _table_rows()
    codes = [code for code, _ in rows]
    assert len(codes) == len(set(codes))
    assert len(rows) > 3000
    for code, name in rows:
        assert len(code) == 6
        assert code.isascii()
        assert code.isdigit()
        assert name
        assert name.strip() == name


def test_table_names_of_provinces_match_the_constant() -> None:
    names = dict(_table_rows())
    for code, name in PROVINCE_CODES.items():
        assert names[code] == name


def test_every_mainland_province_has_counties() -> None:
    for province in MAINLAND_PROVINCES:
        counties = counties_of(province)
        assert counties, province
        assert counties == sorted(counties)
        assert all(c[:2] == province[:2] and c[4:] != "00" for c in counties)


def test_every_table_code_lies_in_a_province() -> None:
    for code, _ in _table_rows():
        assert province_of(code) in PROVINCE_CODES


def test_taiwan_hong_kong_macau_list_no_counties() -> None:
    for province in ("710000", "810000", "820000"):
        assert counties_of(province) == []


def test_counties_of_refuses_non_province_codes() -> None:
    with pytest.raises(InvalidDivision) as info:
        counties_of("110105")
    assert info.value.reason == "DIVISION_UNKNOWN_PROVINCE"
    with pytest.raises(InvalidDivision) as info:
        counties_of("11")
    assert info.value.reason == "DIVISION_MALFORMED"


def test_counties_of_returns_a_copy() -> None:
    counties_of("110000").clear()
    assert counties_of("110000")


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("110105", "朝阳区"),
        ("440300", "深圳市"),
        ("650000", "新疆维吾尔自治区"),
        ("653228", "和康县"),  # established 2024
        ("540481", "米林市"),  # county became a city in 2023
    ],
)
def test_current_divisions_are_known_with_their_names(code: str, name: str) -> None:
    assert is_known_division(code)
    assert division_name(code) == name
    assert validate_division(code, field="residence_division") == code


@pytest.mark.parametrize("code", ["110103", "540422", "999999", "110199"])
def test_abolished_or_never_issued_codes_are_unknown(code: str) -> None:
    # 110103 崇文区 merged in 2010; 540422 米林县 became 540481 米林市.
    assert not is_known_division(code)
    assert division_name(code) is None
    with pytest.raises(InvalidDivision) as info:
        validate_division(code, field="hukou_division", record="r-17")
    error = info.value
    assert error.reason == "DIVISION_UNKNOWN"
    assert (error.field, error.record) == ("hukou_division", "r-17")
    assert "record r-17, field hukou_division" in str(error)


@pytest.mark.parametrize("code", ["", "11010", "1101050", "11010a", "１１０１０５", "١١٠١٠٥", " 110105"])
def test_malformed_codes_are_refused_as_malformed_naming_field_and_record(code: str) -> None:
    with pytest.raises(InvalidDivision) as info:
        validate_division(code, field="residence_division", record="r-1")
    error = info.value
    assert error.reason == "DIVISION_MALFORMED"
    assert error.field == "residence_division"
    assert error.record == "r-1"
    assert error.code_name == "INVALID_ARGUMENT"


@given(st.text(max_size=8))
def test_validate_division_accepts_exactly_the_known_codes(code: str) -> None:
    if is_known_division(code):
        assert validate_division(code, field="f") == code
    else:
        with pytest.raises(InvalidDivision):
            validate_division(code, field="f")


@given(st.sampled_from(sorted(PROVINCE_CODES)), st.integers(min_value=0, max_value=9999))
def test_province_of_keeps_the_first_two_digits(province: str, rest: int) -> None:
    assert province_of(f"{province[:2]}{rest:04d}") == province


def test_province_of_refuses_malformed_and_unknown_province_codes() -> None:
    with pytest.raises(InvalidDivision) as info:
        province_of("1101")
    assert info.value.reason == "DIVISION_MALFORMED"
    with pytest.raises(InvalidDivision) as info:
        province_of("990101", field="granting_division", record="r-2")
    assert info.value.reason == "DIVISION_UNKNOWN_PROVINCE"
    assert (info.value.field, info.value.record) == ("granting_division", "r-2")


def test_public_names_are_pinned() -> None:
    assert set(divisions.__all__) == {
        "MAINLAND_PROVINCES",
        "PROVINCE_CODES",
        "counties_of",
        "division_name",
        "is_known_division",
        "province_of",
        "validate_division",
    }
