"""Tests of gateway.domain.policy: purposes, disclosure by purpose, exclusive programmes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.model import ALL_PROGRAMS, Program, Purpose
from gateway.domain.policy import (
    DISCLOSED_FIELDS,
    EXCLUSIVE_PROGRAMS,
    disclosed_fields,
    duplicate_programs,
    require_purpose,
)
from gateway.errors import InvalidArgument

BASE = {"province_code", "program", "status", "granting_division"}
REAL_PURPOSES = [p for p in Purpose if p is not Purpose.UNSPECIFIED]


def test_missing_purpose_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        require_purpose(0)
    assert caught.value.reason == "PURPOSE_MISSING"
    assert caught.value.field == "purpose"


@pytest.mark.parametrize("value", [6, 99, -1])
def test_unknown_purpose_is_refused_as_unknown_enum_value(value: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        require_purpose(value)
    assert caught.value.reason == "UNKNOWN_ENUM_VALUE"
    assert caught.value.field == "purpose"


@pytest.mark.parametrize("purpose", REAL_PURPOSES)
def test_every_stated_purpose_is_accepted(purpose: Purpose) -> None:
    assert require_purpose(int(purpose)) is purpose


def test_every_purpose_has_a_disclosure_rule() -> None:
    assert set(DISCLOSED_FIELDS) == set(REAL_PURPOSES)


@pytest.mark.parametrize("purpose", REAL_PURPOSES)
def test_every_purpose_sees_where_and_what_but_never_personal_data(purpose: Purpose) -> None:
    fields = disclosed_fields(purpose)
    assert fields >= BASE
    assert not fields & {"id_number", "name", "birth_date", "hukou_division", "residence_division"}


def test_cross_region_application_sees_no_amount_end_date_or_record_id() -> None:
    fields = disclosed_fields(Purpose.CROSS_REGION_APPLICATION)
    assert "start_date" in fields
    assert not fields & {"monthly_amount_fen", "end_date", "record_id", "updated_at"}


def test_duplicate_check_sees_when_but_not_how_much() -> None:
    fields = disclosed_fields(Purpose.DUPLICATE_CHECK)
    assert {"start_date", "end_date"} <= fields
    assert "monthly_amount_fen" not in fields
    assert "record_id" not in fields


def test_eligibility_review_sees_amounts_but_not_record_ids() -> None:
    fields = disclosed_fields(Purpose.ELIGIBILITY_REVIEW)
    assert "monthly_amount_fen" in fields
    assert "record_id" not in fields


@pytest.mark.parametrize("purpose", [Purpose.AUDIT, Purpose.MONITORING_FOLLOW_UP])
def test_audit_and_follow_up_see_record_ids(purpose: Purpose) -> None:
    assert {"record_id", "updated_at", "monthly_amount_fen", "end_date"} <= disclosed_fields(purpose)


def test_exclusive_programmes_are_the_four_income_tiers() -> None:
    assert set(EXCLUSIVE_PROGRAMS) == {
        Program.DIBAO,
        Program.EXTREME_POVERTY,
        Program.DIBAO_MARGINAL,
        Program.RIGID_EXPENDITURE,
    }


def test_dibao_active_in_two_provinces_is_a_duplicate_with_sorted_provinces() -> None:
    found = duplicate_programs({"440000": Program.DIBAO.bit, "410000": Program.DIBAO.bit})
    assert found == {Program.DIBAO: ("410000", "440000")}


def test_one_province_alone_is_never_a_duplicate() -> None:
    everything = sum(p.bit for p in ALL_PROGRAMS)
    assert duplicate_programs({"440000": everything}) == {}


def test_temporary_and_special_assistance_in_several_provinces_is_lawful() -> None:
    lawful = Program.TEMPORARY_ASSISTANCE.bit | Program.MEDICAL.bit | Program.HOUSING.bit
    assert duplicate_programs({"440000": lawful, "410000": lawful, "510000": lawful}) == {}


def test_each_exclusive_programme_is_reported_with_only_its_holders() -> None:
    found = duplicate_programs(
        {
            "510000": Program.DIBAO.bit | Program.EXTREME_POVERTY.bit,
            "440000": Program.DIBAO.bit,
            "410000": Program.EXTREME_POVERTY.bit | Program.MEDICAL.bit,
            "110000": 0,
        }
    )
    assert found == {
        Program.DIBAO: ("440000", "510000"),
        Program.EXTREME_POVERTY: ("410000", "510000"),
    }


@given(st.dictionaries(st.sampled_from(["110000", "410000", "440000", "510000"]), st.integers(0, 2**10 - 1)))
def test_duplicates_are_exactly_exclusive_programmes_held_by_two_or_more(masks: dict[str, int]) -> None:
    found = duplicate_programs(masks)
    for program in ALL_PROGRAMS:
        holders = tuple(sorted(p for p, m in masks.items() if m & program.bit))
        if program in EXCLUSIVE_PROGRAMS and len(holders) > 1:
            assert found[program] == holders
        else:
            assert program not in found
