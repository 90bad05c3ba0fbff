"""Tests of gateway.domain.records.check_record: every rule a record breaks, in the order the hub checks them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.identity import make_id_number
from gateway.domain.model import ALL_PROGRAMS, Enrollment, EnrollmentStatus, Gender, PersonRecord, Program
from gateway.domain.protection import FieldSealer, KeyMaterial, PersonKeyer
from gateway.domain.records import MAX_ENROLLMENTS, MAX_MONTHLY_AMOUNT_FEN, RecordPreparer, check_record
from gateway.errors import HutongError, InvalidDivision, InvalidIdNumber, InvalidRecord, PermissionDenied

TODAY = dt.date(2025, 6, 1)
GD = "440000"
TIANHE = "440106"
JINSHUI = "410105"
BIRTH = dt.date(1960, 5, 6)
MALE_ID = make_id_number(JINSHUI, BIRTH, 123)
BAD_CHECK_ID = MALE_ID[:17] + ("0" if MALE_ID[17] != "0" else "1")
NOW_US = int(dt.datetime(2025, 6, 1, 12, tzinfo=dt.UTC).timestamp()) * 1_000_000
DAY_US = 24 * 3600 * 1_000_000

KEYS = KeyMaterial(person_key_secret=b"s" * 32, sealing_keys={"k1": b"k" * 32}, active_key_id="k1")


def enrollment(**changes: Any) -> Enrollment:
    base = Enrollment(
        program=Program.DIBAO,
        status=EnrollmentStatus.ACTIVE,
        start_date=dt.date(2020, 1, 1),
        end_date=None,
        monthly_amount_fen=80_000,
        granting_division=TIANHE,
    )
    return dataclasses.replace(base, **changes)


def record(**changes: Any) -> PersonRecord:
    """A valid record written by Guangdong: hukou in Henan, residence in Tianhe, one active dibao."""
    base = PersonRecord(
        record_id="r-1",
        version=1,
        id_number=MALE_ID,
        name="张三",
        gender=Gender.UNSPECIFIED,
        birth_date=None,
        hukou_division=JINSHUI,
        residence_division=TIANHE,
        household_id="",
        enrollments=(enrollment(),),
        updated_at_us=0,
    )
    return dataclasses.replace(base, **changes)


def check(rec: PersonRecord, *, index: int | None = None) -> list[tuple[str | None, str]]:
    return [(e.field, e.reason) for e in check_record(rec, GD, today=TODAY, now_us=NOW_US, index=index).errors]


@pytest.fixture
def preparer() -> RecordPreparer:
    return RecordPreparer(PersonKeyer(KEYS.person_key_secret), FieldSealer(KEYS), today=TODAY)


# --- a good record ---------------------------------------------------------------------------


def test_a_good_record_has_no_errors_its_id_number_and_its_active_mask() -> None:
    checked = check_record(record(), GD, today=TODAY, now_us=NOW_US)
    assert checked.errors == []
    assert checked.id_number is not None
    assert checked.id_number.value == MALE_ID
    assert checked.active_programs == Program.DIBAO.bit


@pytest.mark.parametrize(
    ("enrollments", "mask"),
    [
        ((), 0),
        ((enrollment(status=EnrollmentStatus.SUSPENDED),), 0),
        ((enrollment(), enrollment(program=Program.MEDICAL)), Program.DIBAO.bit | Program.MEDICAL.bit),
        (
            (enrollment(), enrollment(program=Program.EXTREME_POVERTY, status=EnrollmentStatus.EXITED)),
            Program.DIBAO.bit,
        ),
        ((enrollment(status=EnrollmentStatus.EXITED), enrollment()), Program.DIBAO.bit),
        (
            tuple(enrollment(program=p) for p in Program if p is not Program.UNSPECIFIED),
            sum(p.bit for p in Program) - 1,
        ),
    ],
    ids=["none", "suspended", "two active", "active and exited", "exited then active again", "every programme"],
)
def test_the_active_mask_holds_the_programmes_with_an_active_enrollment(
    enrollments: tuple[Enrollment, ...], mask: int
) -> None:
    checked = check_record(record(enrollments=enrollments), GD, today=TODAY, now_us=NOW_US)
    assert checked.errors == []
    assert checked.active_programs == mask


def test_a_15_digit_id_number_is_parsed_to_18() -> None:
    short = MALE_ID[:6] + MALE_ID[8:17]
    checked = check_record(record(id_number=short), GD, today=TODAY, now_us=NOW_US)
    assert checked.errors == []
    assert checked.id_number is not None
    assert checked.id_number.value == MALE_ID


def test_matching_gender_and_birth_date_are_accepted() -> None:
    assert check(record(gender=Gender.MALE, birth_date=BIRTH)) == []


def test_updated_at_up_to_a_day_ahead_is_accepted() -> None:
    assert check(record(updated_at_us=NOW_US + DAY_US)) == []
    assert check(record(updated_at_us=NOW_US + DAY_US + 1)) == [("updated_at", "UPDATED_AT_IN_FUTURE")]


# --- every error, in order -------------------------------------------------------------------


def test_every_error_is_collected_in_the_hubs_order() -> None:
    bad = record(
        record_id="",
        version=0,
        id_number=BAD_CHECK_ID,
        name="张3",
        gender=7,
        hukou_division="999999",
        residence_division="110101",
        household_id=" h",
        updated_at_us=NOW_US + 2 * DAY_US,
        enrollments=(
            enrollment(program=0),
            enrollment(status=9),
            enrollment(start_date=None),
            enrollment(start_date=dt.date(2026, 6, 3)),
            enrollment(end_date=dt.date(2019, 12, 31)),
            enrollment(monthly_amount_fen=-1),
            enrollment(monthly_amount_fen=MAX_MONTHLY_AMOUNT_FEN + 1),
            enrollment(granting_division="110101"),
            enrollment(granting_division="4401"),
            enrollment(program=Program.MEDICAL),
            enrollment(program=Program.MEDICAL),
        ),
    )
    assert check(bad, index=3) == [
        ("record_id", "ITEM_ID_INVALID"),
        ("version", "VERSION_INVALID"),
        ("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER"),
        ("name", "NAME_INVALID"),
        ("gender", "UNKNOWN_ENUM_VALUE"),
        ("hukou_division", "DIVISION_UNKNOWN"),
        ("residence_division", "PROVINCE_NOT_PERMITTED"),
        ("household_id", "ITEM_ID_INVALID"),
        ("updated_at", "UPDATED_AT_IN_FUTURE"),
        ("enrollments[0].program", "PROGRAM_MISSING"),
        ("enrollments[1].status", "UNKNOWN_ENUM_VALUE"),
        ("enrollments[2].start_date", "DATE_MISSING"),
        ("enrollments[3].start_date", "DATE_IMPOSSIBLE"),
        ("enrollments[4].end_date", "DATE_RANGE_INVALID"),
        ("enrollments[5].monthly_amount_fen", "AMOUNT_NEGATIVE"),
        ("enrollments[6].monthly_amount_fen", "AMOUNT_TOO_LARGE"),
        ("enrollments[7].granting_division", "PROVINCE_NOT_PERMITTED"),
        ("enrollments[8].granting_division", "DIVISION_MALFORMED"),
        ("enrollments[10].program", "ENROLLMENT_DUPLICATED"),
    ]


def test_errors_name_the_record_or_its_position() -> None:
    errors = check_record(record(record_id="", name=""), GD, today=TODAY, now_us=NOW_US, index=3).errors
    assert [e.record for e in errors] == ["#3", ""]
    errors = check_record(record(id_number="123", name=""), GD, today=TODAY, now_us=NOW_US).errors
    assert [(e.record, e.reason) for e in errors] == [("r-1", "ID_NUMBER_MALFORMED"), ("r-1", "NAME_MISSING")]


def test_errors_keep_their_classes() -> None:
    bad = record(id_number=BAD_CHECK_ID, hukou_division="999999", residence_division="110101", version=0)
    errors = check_record(bad, GD, today=TODAY, now_us=NOW_US).errors
    assert [type(e) for e in errors] == [InvalidRecord, InvalidIdNumber, InvalidDivision, PermissionDenied]


def test_gender_and_birth_date_disagreeing_with_the_id_number_are_both_reported() -> None:
    assert check(record(gender=Gender.FEMALE, birth_date=dt.date(1960, 5, 7))) == [
        ("gender", "GENDER_MISMATCH"),
        ("birth_date", "BIRTH_DATE_MISMATCH"),
    ]


def test_an_invalid_id_number_hides_the_checks_that_need_it() -> None:
    assert check(record(id_number=BAD_CHECK_ID, gender=Gender.FEMALE, birth_date=dt.date(1999, 1, 1))) == [
        ("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")
    ]


def test_a_missing_residence_division_is_named() -> None:
    assert check(record(residence_division="")) == [("residence_division", "DIVISION_MISSING")]


def test_each_enrollment_reports_every_broken_rule_the_first_one_first() -> None:
    both = enrollment(program=0, monthly_amount_fen=-1, granting_division="110101")
    assert check(record(enrollments=(both,))) == [
        ("enrollments[0].program", "PROGRAM_MISSING"),
        ("enrollments[0].monthly_amount_fen", "AMOUNT_NEGATIVE"),
        ("enrollments[0].granting_division", "PROVINCE_NOT_PERMITTED"),
    ]


def test_too_many_enrollments_is_one_error_and_no_active_programme() -> None:
    many = tuple(enrollment(program=0) for _ in range(MAX_ENROLLMENTS + 1))
    checked = check_record(record(enrollments=many), GD, today=TODAY, now_us=NOW_US)
    assert [(e.field, e.reason) for e in checked.errors] == [("enrollments", "TOO_MANY_ENROLLMENTS")]
    assert checked.active_programs == 0
    assert check(record(enrollments=tuple(enrollment(status=2) for _ in range(MAX_ENROLLMENTS)))) == []


# --- the hub refuses on the first error ------------------------------------------------------

BAD_RECORDS: dict[str, PersonRecord] = {
    "empty record id": record(record_id=""),
    "version 0": record(version=0),
    "bad check character": record(id_number=BAD_CHECK_ID, name="张3"),
    "malformed id": record(id_number="44010619850230"),
    "name with a digit": record(name="张3", gender=9),
    "gender mismatch": record(gender=Gender.FEMALE, birth_date=dt.date(1999, 1, 1)),
    "unknown hukou": record(hukou_division="999999", residence_division="110101"),
    "residence in another province": record(residence_division="110101", household_id=" h"),
    "household id": record(household_id="x" * 65),
    "future update": record(updated_at_us=NOW_US + 2 * DAY_US, enrollments=(enrollment(program=0),)),
    "second enrollment": record(enrollments=(enrollment(), enrollment(monthly_amount_fen=-1))),
    "duplicate active": record(enrollments=(enrollment(), enrollment())),
    "granting in another province": record(enrollments=(enrollment(granting_division="110101"),)),
    "everything": record(record_id="", version=0, id_number="", name="", residence_division=""),
}


def error_view(exc: HutongError) -> tuple[type[HutongError], str, str | None, str | None, str, dict[str, str]]:
    return (type(exc), exc.reason, exc.field, exc.record, exc.message, exc.metadata)


@pytest.mark.parametrize("rec", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_the_first_error_is_what_the_hub_raises(preparer: RecordPreparer, rec: PersonRecord) -> None:
    checked = check_record(rec, GD, today=TODAY, now_us=NOW_US, index=5)
    assert checked.errors
    with pytest.raises(HutongError) as caught:
        preparer.prepare_record(5, GD, rec, TODAY, NOW_US)
    assert error_view(caught.value) == error_view(checked.errors[0])


def test_a_good_record_is_prepared_with_the_same_active_mask(preparer: RecordPreparer) -> None:
    rec = record(enrollments=(enrollment(), enrollment(program=Program.HOUSING)))
    prepared = preparer.prepare_record(0, GD, rec, TODAY, NOW_US)
    checked = check_record(rec, GD, today=TODAY, now_us=NOW_US)
    assert prepared.active_programs == checked.active_programs == Program.DIBAO.bit | Program.HOUSING.bit


MUTATIONS: dict[str, dict[str, Any]] = {
    "record_id": {"record_id": ""},
    "version": {"version": 0},
    "id_number": {"id_number": BAD_CHECK_ID},
    "name": {"name": "张3"},
    "gender": {"gender": Gender.FEMALE},
    "birth_date": {"birth_date": dt.date(1960, 5, 7)},
    "hukou": {"hukou_division": "999999"},
    "residence": {"residence_division": "110101"},
    "household": {"household_id": " h "},
    "updated_at": {"updated_at_us": NOW_US + 3 * DAY_US},
}
ENROLLMENT_MUTATIONS: dict[str, dict[str, Any]] = {
    "program": {"program": 0},
    "status": {"status": 0},
    "start": {"start_date": None},
    "end": {"end_date": dt.date(2000, 1, 1)},
    "amount": {"monthly_amount_fen": -5},
    "granting": {"granting_division": "110101"},
}


@settings(max_examples=50, deadline=None)
@given(
    record_changes=st.lists(st.sampled_from(sorted(MUTATIONS)), unique=True, max_size=4),
    enrollment_changes=st.lists(st.lists(st.sampled_from(sorted(ENROLLMENT_MUTATIONS)), max_size=2), max_size=3),
)
def test_check_record_and_the_hub_agree_on_any_mix_of_mistakes(
    record_changes: list[str], enrollment_changes: list[list[str]]
) -> None:
    changes: dict[str, Any] = {}
    for name in record_changes:
        changes.update(MUTATIONS[name])
    enrollments = []
    for i, names in enumerate(enrollment_changes):
        e: dict[str, Any] = {"program": ALL_PROGRAMS[i]}  # distinct programmes: no duplicate is meant
        for name in names:
            e.update(ENROLLMENT_MUTATIONS[name])
        enrollments.append(enrollment(**e))
    rec = record(enrollments=tuple(enrollments), **changes)
    checked = check_record(rec, GD, today=TODAY, now_us=NOW_US, index=0)
    # One error at most per broken record field; one per broken enrollment.
    broken_enrollments = sum(len(names) for names in enrollment_changes)
    assert len(checked.errors) <= len(record_changes) + broken_enrollments
    if not record_changes and not broken_enrollments:
        assert checked.errors == []
    preparer = RecordPreparer(PersonKeyer(KEYS.person_key_secret), FieldSealer(KEYS), today=TODAY)
    if checked.errors:
        with pytest.raises(HutongError) as caught:
            preparer.prepare_record(0, GD, rec, TODAY, NOW_US)
        assert error_view(caught.value) == error_view(checked.errors[0])
    else:
        assert preparer.prepare_record(0, GD, rec, TODAY, NOW_US).active_programs == checked.active_programs


def test_check_record_uses_the_wall_clock_only_through_now_us() -> None:
    later = time.time_ns() // 1000 + 10 * 365 * DAY_US
    rec = record(updated_at_us=later)
    assert check_record(rec, GD, today=TODAY, now_us=later).errors == []
