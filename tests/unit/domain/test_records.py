"""Tests of gateway.domain.records: validation and preparation of records, version rules, codecs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.identity import make_id_number
from gateway.domain.model import (
    Enrollment,
    EnrollmentStatus,
    Gender,
    Household,
    HouseholdMember,
    Outcome,
    PersonRecord,
    Program,
    RetirementReason,
)
from gateway.domain.protection import FieldSealer, KeyMaterial, PersonKeyer
from gateway.domain.records import (
    MAX_ENROLLMENTS,
    MAX_HOUSEHOLD_MEMBERS,
    MAX_ITEM_ID_LENGTH,
    MAX_MONTHLY_AMOUNT_FEN,
    RecordPreparer,
    Rejection,
    check_retirement,
    decide_outcome,
    decode_enrollments,
    encode_enrollments,
    pii_associated_data,
    rejection_from_error,
    unseal_pii,
)
from gateway.errors import InvalidIdNumber, InvalidRecord, PermissionDenied

TODAY = dt.date(2025, 6, 1)
GD = "440000"
TIANHE = "440106"  # a county of Guangdong, the writing province in these tests
JINSHUI = "410105"  # a county of Henan
BIRTH = dt.date(1960, 5, 6)
MALE_ID = make_id_number(JINSHUI, BIRTH, 123)  # odd sequence: male
FEMALE_ID = make_id_number(TIANHE, dt.date(1985, 11, 30), 124)
NAME = "张三"

KEYS = KeyMaterial(person_key_secret=b"s" * 32, sealing_keys={"k1": b"k" * 32}, active_key_id="k1")


def enrollment(**changes: object) -> Enrollment:
    base = Enrollment(
        program=Program.DIBAO,
        status=EnrollmentStatus.ACTIVE,
        start_date=dt.date(2020, 1, 1),
        end_date=None,
        monthly_amount_fen=80_000,
        granting_division=TIANHE,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def record(**changes: object) -> PersonRecord:
    """A valid record written by Guangdong: hukou in Henan, residence in Tianhe, one active dibao."""
    base = PersonRecord(
        record_id="r-1",
        version=1,
        id_number=MALE_ID,
        name=NAME,
        gender=Gender.UNSPECIFIED,
        birth_date=None,
        hukou_division=JINSHUI,
        residence_division=TIANHE,
        household_id="",
        enrollments=(enrollment(),),
        updated_at_us=0,
        content_hash=b"hash",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def sealer() -> FieldSealer:
    return FieldSealer(KEYS)


@pytest.fixture
def keyer() -> PersonKeyer:
    return PersonKeyer(KEYS.person_key_secret)


@pytest.fixture
def preparer(keyer: PersonKeyer, sealer: FieldSealer) -> RecordPreparer:
    return RecordPreparer(keyer, sealer, today=TODAY)


def rejection_of(preparer: RecordPreparer, rec: PersonRecord, province: str = GD) -> Rejection:
    batch = preparer.prepare_batch(province, [rec])
    assert batch.records == []
    (only,) = batch.record_rejections
    return only


# -- a good record ----------------------------------------------------------------------------


def test_valid_record_is_prepared_without_raw_id_number_or_name(
    preparer: RecordPreparer, keyer: PersonKeyer, sealer: FieldSealer
) -> None:
    batch = preparer.prepare_batch(GD, [record()])
    assert batch.record_rejections == []
    (prepared,) = batch.records
    assert prepared.record_id == "r-1"
    assert prepared.person_key == keyer.person_key(MALE_ID)
    assert prepared.birth_yyyymmdd == 19600506
    assert prepared.active_programs == Program.DIBAO.bit
    assert decode_enrollments(prepared.enrollments) == (enrollment(),)
    assert unseal_pii(sealer, prepared.sealed_pii, GD, "r-1") == (MALE_ID, NAME)
    for value in prepared:
        if isinstance(value, bytes):
            assert MALE_ID.encode() not in value
            assert NAME.encode() not in value
        else:
            assert MALE_ID not in str(value)
            assert NAME not in str(value)


def test_gender_is_taken_from_the_id_number_when_the_record_leaves_it_unspecified(preparer: RecordPreparer) -> None:
    (male,) = preparer.prepare_batch(GD, [record()]).records
    (female,) = preparer.prepare_batch(GD, [record(id_number=FEMALE_ID, hukou_division=TIANHE)]).records
    assert male.gender == Gender.MALE
    assert female.gender == Gender.FEMALE


def test_matching_gender_and_birth_date_are_accepted(preparer: RecordPreparer) -> None:
    batch = preparer.prepare_batch(GD, [record(gender=Gender.MALE, birth_date=BIRTH)])
    assert batch.record_rejections == []


def test_hukou_in_another_province_is_allowed(preparer: RecordPreparer) -> None:
    batch = preparer.prepare_batch(GD, [record(hukou_division=JINSHUI)])
    assert batch.record_rejections == []
    assert batch.records[0].hukou_division == JINSHUI


def test_hukou_division_may_be_left_empty(preparer: RecordPreparer) -> None:
    assert preparer.prepare_batch(GD, [record(hukou_division="")]).record_rejections == []


def test_lower_case_x_and_fifteen_digit_numbers_give_the_same_person_key(preparer: RecordPreparer) -> None:
    with_x = next(make_id_number(TIANHE, BIRTH, s) for s in range(1000) if make_id_number(TIANHE, BIRTH, s)[-1] == "X")
    upper = preparer.prepare_batch(GD, [record(id_number=with_x)]).records[0]
    lower = preparer.prepare_batch(GD, [record(id_number=with_x.lower())]).records[0]
    assert upper.person_key == lower.person_key

    eighteen = make_id_number(TIANHE, dt.date(1975, 3, 9), 41)
    fifteen = eighteen[:6] + eighteen[8:17]
    long_form = preparer.prepare_batch(GD, [record(id_number=eighteen)]).records[0]
    short_form = preparer.prepare_batch(GD, [record(id_number=fifteen)]).records[0]
    assert long_form.person_key == short_form.person_key


def test_name_is_sealed_without_surrounding_spaces(preparer: RecordPreparer, sealer: FieldSealer) -> None:
    (prepared,) = preparer.prepare_batch(GD, [record(name="  张三 ")]).records
    assert unseal_pii(sealer, prepared.sealed_pii, GD, "r-1") == (MALE_ID, NAME)


def test_sealed_pii_is_bound_to_its_province_and_record(preparer: RecordPreparer, sealer: FieldSealer) -> None:
    (prepared,) = preparer.prepare_batch(GD, [record()]).records
    with pytest.raises(Exception, match="failed authentication"):
        unseal_pii(sealer, prepared.sealed_pii, GD, "r-2")
    with pytest.raises(Exception, match="failed authentication"):
        unseal_pii(sealer, prepared.sealed_pii, "410000", "r-1")


def test_active_mask_holds_only_active_enrollments(preparer: RecordPreparer) -> None:
    rec = record(
        enrollments=(
            enrollment(program=Program.DIBAO),
            enrollment(program=Program.MEDICAL),
            enrollment(program=Program.EXTREME_POVERTY, status=EnrollmentStatus.EXITED),
            enrollment(program=Program.HOUSING, status=EnrollmentStatus.SUSPENDED),
        )
    )
    (prepared,) = preparer.prepare_batch(GD, [rec]).records
    assert prepared.active_programs == Program.DIBAO.bit | Program.MEDICAL.bit


def test_an_exited_and_an_active_enrollment_in_one_programme_are_not_a_duplicate(preparer: RecordPreparer) -> None:
    rec = record(enrollments=(enrollment(status=EnrollmentStatus.EXITED), enrollment()))
    assert preparer.prepare_batch(GD, [rec]).record_rejections == []


@pytest.mark.parametrize("amount", [0, MAX_MONTHLY_AMOUNT_FEN])
def test_amount_bounds_are_inclusive(preparer: RecordPreparer, amount: int) -> None:
    rec = record(enrollments=(enrollment(monthly_amount_fen=amount),))
    assert preparer.prepare_batch(GD, [rec]).record_rejections == []


def test_end_date_on_the_start_date_is_accepted(preparer: RecordPreparer) -> None:
    rec = record(enrollments=(enrollment(end_date=dt.date(2020, 1, 1)),))
    assert preparer.prepare_batch(GD, [rec]).record_rejections == []


def test_exactly_max_enrollments_are_accepted(preparer: RecordPreparer) -> None:
    rec = record(enrollments=tuple(enrollment(status=EnrollmentStatus.EXITED) for _ in range(MAX_ENROLLMENTS)))
    assert preparer.prepare_batch(GD, [rec]).record_rejections == []


# -- every rejection ----------------------------------------------------------------------------

REJECTIONS = [
    pytest.param(record(version=0), "VERSION_INVALID", "version", id="version-zero"),
    pytest.param(record(version=-3), "VERSION_INVALID", "version", id="version-negative"),
    pytest.param(record(record_id=" r-1"), "ITEM_ID_INVALID", "record_id", id="record-id-spaces"),
    pytest.param(record(record_id="r\n1"), "ITEM_ID_INVALID", "record_id", id="record-id-unprintable"),
    pytest.param(record(record_id="r" * (MAX_ITEM_ID_LENGTH + 1)), "ITEM_ID_INVALID", "record_id", id="record-id-long"),
    pytest.param(record(household_id="h 1 "), "ITEM_ID_INVALID", "household_id", id="household-id"),
    pytest.param(record(name=""), "NAME_MISSING", "name", id="name-empty"),
    pytest.param(record(name=" \u3000 "), "NAME_MISSING", "name", id="name-blank"),
    pytest.param(record(name="张三3"), "NAME_INVALID", "name", id="name-digit"),
    pytest.param(record(name="张\t三"), "NAME_INVALID", "name", id="name-unprintable"),
    pytest.param(record(name="张" * 65), "NAME_INVALID", "name", id="name-long"),
    pytest.param(record(gender=Gender.FEMALE), "GENDER_MISMATCH", "gender", id="gender-mismatch"),
    pytest.param(record(gender=7), "UNKNOWN_ENUM_VALUE", "gender", id="gender-unknown"),
    pytest.param(record(birth_date=dt.date(1960, 5, 7)), "BIRTH_DATE_MISMATCH", "birth_date", id="birth-date"),
    pytest.param(record(residence_division=""), "DIVISION_MISSING", "residence_division", id="residence-missing"),
    pytest.param(record(residence_division="440199"), "DIVISION_UNKNOWN", "residence_division", id="residence-unknown"),
    pytest.param(record(residence_division="44010"), "DIVISION_MALFORMED", "residence_division", id="residence-short"),
    pytest.param(record(hukou_division="419999"), "DIVISION_UNKNOWN", "hukou_division", id="hukou-unknown"),
    pytest.param(
        record(updated_at_us=time.time_ns() // 1000 + 3 * 86_400_000_000),
        "UPDATED_AT_IN_FUTURE",
        "updated_at",
        id="updated-at-future",
    ),
    pytest.param(
        record(enrollments=(enrollment(program=0),)), "PROGRAM_MISSING", "enrollments[0].program", id="program-missing"
    ),
    pytest.param(
        record(enrollments=(enrollment(program=42),)),
        "UNKNOWN_ENUM_VALUE",
        "enrollments[0].program",
        id="program-unknown",
    ),
    pytest.param(
        record(enrollments=(enrollment(), enrollment(program=Program.MEDICAL, status=0))),
        "STATUS_MISSING",
        "enrollments[1].status",
        id="status-missing",
    ),
    pytest.param(
        record(enrollments=(enrollment(status=9),)), "UNKNOWN_ENUM_VALUE", "enrollments[0].status", id="status-unknown"
    ),
    pytest.param(
        record(enrollments=(enrollment(start_date=None),)), "DATE_MISSING", "enrollments[0].start_date", id="start-none"
    ),
    pytest.param(
        record(enrollments=(enrollment(start_date=TODAY + dt.timedelta(days=400)),)),
        "DATE_IMPOSSIBLE",
        "enrollments[0].start_date",
        id="start-far-ahead",
    ),
    pytest.param(
        record(enrollments=(enrollment(end_date=dt.date(2019, 12, 31)),)),
        "DATE_RANGE_INVALID",
        "enrollments[0].end_date",
        id="end-before-start",
    ),
    pytest.param(
        record(enrollments=(enrollment(monthly_amount_fen=-1),)),
        "AMOUNT_NEGATIVE",
        "enrollments[0].monthly_amount_fen",
        id="amount-negative",
    ),
    pytest.param(
        record(enrollments=(enrollment(monthly_amount_fen=MAX_MONTHLY_AMOUNT_FEN + 1),)),
        "AMOUNT_TOO_LARGE",
        "enrollments[0].monthly_amount_fen",
        id="amount-too-large",
    ),
    pytest.param(
        record(enrollments=(enrollment(granting_division="440199"),)),
        "DIVISION_UNKNOWN",
        "enrollments[0].granting_division",
        id="granting-unknown",
    ),
    pytest.param(
        record(enrollments=(enrollment(), enrollment(start_date=dt.date(2021, 1, 1)))),
        "ENROLLMENT_DUPLICATED",
        "enrollments[1].program",
        id="two-active-dibao",
    ),
    pytest.param(
        record(enrollments=tuple(enrollment(status=EnrollmentStatus.EXITED) for _ in range(MAX_ENROLLMENTS + 1))),
        "TOO_MANY_ENROLLMENTS",
        "enrollments",
        id="too-many-enrollments",
    ),
]


@pytest.mark.parametrize(("rec", "reason", "field"), REJECTIONS)
def test_each_broken_rule_rejects_the_record_naming_reason_and_field(
    preparer: RecordPreparer, rec: PersonRecord, reason: str, field: str
) -> None:
    rejection = rejection_of(preparer, rec)
    assert (rejection.reason, rejection.field) == (reason, field)
    assert rejection.index == 0
    assert rejection.item_id == rec.record_id
    assert rejection.code_name == "INVALID_ARGUMENT"
    assert rejection.message


@pytest.mark.parametrize(
    ("rec", "field"),
    [
        pytest.param(record(residence_division=JINSHUI), "residence_division", id="residence"),
        pytest.param(
            record(enrollments=(enrollment(granting_division=JINSHUI),)),
            "enrollments[0].granting_division",
            id="granting",
        ),
        pytest.param(
            record(enrollments=(enrollment(program=Program.MEDICAL), enrollment(granting_division="510104"))),
            "enrollments[1].granting_division",
            id="second-granting",
        ),
    ],
)
def test_divisions_outside_the_writing_province_are_permission_denied(
    preparer: RecordPreparer, rec: PersonRecord, field: str
) -> None:
    rejection = rejection_of(preparer, rec)
    assert rejection.reason == "PROVINCE_NOT_PERMITTED"
    assert rejection.field == field
    assert rejection.code_name == "PERMISSION_DENIED"


def test_permission_denied_error_names_the_calling_province(preparer: RecordPreparer) -> None:
    with pytest.raises(PermissionDenied) as caught:
        preparer.prepare_record(0, GD, record(residence_division=JINSHUI), TODAY, time.time_ns() // 1000)
    assert caught.value.record == "r-1"
    assert caught.value.metadata == {"caller_province": GD}


def test_the_same_record_is_accepted_from_its_own_province(preparer: RecordPreparer) -> None:
    rec = record(residence_division=JINSHUI, enrollments=(enrollment(granting_division=JINSHUI),))
    assert preparer.prepare_batch("410000", [rec]).record_rejections == []


@pytest.mark.parametrize(
    ("id_number", "reason"),
    [
        pytest.param("", "ID_NUMBER_MISSING", id="missing"),
        pytest.param(MALE_ID[:-1] + ("0" if MALE_ID[-1] != "0" else "1"), "ID_NUMBER_BAD_CHECK_CHARACTER", id="check"),
        pytest.param(MALE_ID[:10] + "A" + MALE_ID[11:], "ID_NUMBER_MALFORMED", id="letter"),
        pytest.param(MALE_ID[:12], "ID_NUMBER_MALFORMED", id="short"),
        pytest.param(make_id_number(JINSHUI, dt.date(2030, 1, 1), 1), "ID_NUMBER_BAD_BIRTH_DATE", id="born-later"),
        pytest.param(make_id_number("990101", BIRTH, 1), "ID_NUMBER_BAD_DIVISION", id="division"),
    ],
)
def test_id_number_errors_carry_the_record_id(preparer: RecordPreparer, id_number: str, reason: str) -> None:
    rec = record(record_id="case-17", id_number=id_number)
    with pytest.raises(InvalidIdNumber) as caught:
        preparer.prepare_record(3, GD, rec, TODAY, time.time_ns() // 1000)
    assert caught.value.reason == reason
    assert caught.value.field == "id_number"
    assert caught.value.record == "case-17"
    rejection = rejection_of(preparer, rec)
    assert (rejection.item_id, rejection.reason, rejection.field) == ("case-17", reason, "id_number")
    if id_number:
        assert id_number not in rejection.message


def test_empty_record_id_is_named_by_its_position(preparer: RecordPreparer) -> None:
    with pytest.raises(InvalidRecord) as caught:
        preparer.prepare_record(7, GD, record(record_id=""), TODAY, time.time_ns() // 1000)
    assert caught.value.reason == "ITEM_ID_INVALID"
    assert caught.value.record == "#7"


def test_first_broken_rule_wins(preparer: RecordPreparer) -> None:
    rec = record(version=0, name="", residence_division="")
    assert rejection_of(preparer, rec).reason == "VERSION_INVALID"


# -- batches ----------------------------------------------------------------------------------


def test_one_bad_record_does_not_stop_the_others(preparer: RecordPreparer) -> None:
    records = [record(record_id="a"), record(record_id="b", name=""), record(record_id="c")]
    batch = preparer.prepare_batch(GD, records)
    assert [r.record_id for r in batch.records] == ["a", "c"]
    assert [r.position for r in batch.records] == [0, 2]
    assert [(r.index, r.item_id, r.reason) for r in batch.record_rejections] == [(1, "b", "NAME_MISSING")]
    assert batch.record_count == 3


def test_items_refused_upstream_keep_their_rejection_and_position(preparer: RecordPreparer) -> None:
    upstream = Rejection(1, "b", "DATE_IMPOSSIBLE", "birth_date", "not a calendar date", "INVALID_ARGUMENT")
    batch = preparer.prepare_batch(
        GD, [record(record_id="a"), None, record(record_id="c")], record_rejections=[upstream]
    )
    assert [r.position for r in batch.records] == [0, 2]
    assert batch.record_rejections == [upstream]
    assert batch.record_count == 3


def test_households_are_prepared_and_rejected_one_by_one(preparer: RecordPreparer) -> None:
    good = Household("h-1", 1, TIANHE, (HouseholdMember("r-1", 1), HouseholdMember("r-2", 3)), 50_000)
    households = [
        good,
        dataclasses.replace(good, household_id="h-2", residence_division=JINSHUI),
        dataclasses.replace(good, household_id="h-3", monthly_income_per_member_fen=-5),
        dataclasses.replace(good, household_id="h-4", members=(HouseholdMember("r-1", 99),)),
        dataclasses.replace(
            good,
            household_id="h-5",
            members=tuple(HouseholdMember(f"r{i}", 3) for i in range(MAX_HOUSEHOLD_MEMBERS + 1)),
        ),
        dataclasses.replace(good, household_id="h-6", version=0),
    ]
    batch = preparer.prepare_batch(GD, [], households)
    assert [h.household_id for h in batch.households] == ["h-1"]
    assert batch.households[0].members == "r-1\t1\nr-2\t3"
    assert [(r.item_id, r.reason, r.field) for r in batch.household_rejections] == [
        ("h-2", "PROVINCE_NOT_PERMITTED", "residence_division"),
        ("h-3", "AMOUNT_NEGATIVE", "monthly_income_per_member_fen"),
        ("h-4", "UNKNOWN_ENUM_VALUE", "members[0].relation"),
        ("h-5", "TOO_MANY_MEMBERS", "members"),
        ("h-6", "VERSION_INVALID", "version"),
    ]
    assert batch.household_count == 6


def test_rejection_from_error_copies_reason_field_message_and_code() -> None:
    exc = PermissionDenied("outside", reason="PROVINCE_NOT_PERMITTED", field="residence_division", record="x")
    assert rejection_from_error(4, "x", exc) == Rejection(
        4, "x", "PROVINCE_NOT_PERMITTED", "residence_division", "outside", "PERMISSION_DENIED"
    )


# -- version rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "version", "content_hash", "expected"),
    [
        pytest.param(None, 1, b"a", Outcome.CREATED, id="nothing-held"),
        pytest.param(None, 9, b"a", Outcome.CREATED, id="nothing-held-any-version"),
        pytest.param((1, b"a"), 2, b"b", Outcome.UPDATED, id="higher"),
        pytest.param((1, b"a"), 2, b"a", Outcome.UPDATED, id="higher-same-content"),
        pytest.param((2, b"a"), 2, b"a", Outcome.UNCHANGED, id="resend"),
        pytest.param((2, b"a"), 2, b"b", None, id="same-version-other-content"),
        pytest.param((3, b"a"), 2, b"a", Outcome.STALE, id="lower"),
        pytest.param((3, b"a"), 2, b"b", Outcome.STALE, id="lower-other-content"),
    ],
)
def test_decide_outcome_follows_the_version_table(
    held: tuple[int, bytes] | None, version: int, content_hash: bytes, expected: Outcome | None
) -> None:
    assert decide_outcome(held, version, content_hash) is expected


# -- retirements ------------------------------------------------------------------------------


def test_valid_retirement_is_returned_typed() -> None:
    retirement = check_retirement(2, "r-1", 3, 1)
    assert (retirement.index, retirement.record_id, retirement.version) == (2, "r-1", 3)
    assert retirement.reason is RetirementReason.EXITED


@pytest.mark.parametrize(
    ("record_id", "version", "reason", "expected", "field"),
    [
        pytest.param("", 1, 1, "ITEM_ID_INVALID", "record_id", id="no-id"),
        pytest.param("r-1", 0, 1, "VERSION_INVALID", "version", id="version"),
        pytest.param("r-1", 2, 0, "REASON_MISSING", "reason", id="reason-missing"),
        pytest.param("r-1", 2, 17, "UNKNOWN_ENUM_VALUE", "reason", id="reason-unknown"),
    ],
)
def test_bad_retirements_are_refused(record_id: str, version: int, reason: int, expected: str, field: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        check_retirement(0, record_id, version, reason)
    assert (caught.value.reason, caught.value.field) == (expected, field)


# -- enrollment codec -------------------------------------------------------------------------

_DIVISIONS = st.text(alphabet="0123456789", min_size=6, max_size=6)
_DATES = st.one_of(st.none(), st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)))
_ENROLLMENTS = st.builds(
    Enrollment,
    program=st.integers(0, 255),
    status=st.integers(0, 255),
    start_date=_DATES,
    end_date=_DATES,
    monthly_amount_fen=st.integers(-(2**63), 2**63 - 1),
    granting_division=_DIVISIONS,
)


@given(st.lists(_ENROLLMENTS, max_size=MAX_ENROLLMENTS))
def test_enrollment_codec_round_trips(enrollments: list[Enrollment]) -> None:
    blob = encode_enrollments(enrollments)
    assert len(blob) == 24 * len(enrollments)
    assert decode_enrollments(blob) == tuple(enrollments)


def test_pii_associated_data_names_province_and_record() -> None:
    assert pii_associated_data(GD, "r-1") == b"440000/r-1"


# -- no raw ID number in any rejection --------------------------------------------------------------


@st.composite
def _records_with_faults(draw: st.DrawFn) -> PersonRecord:
    division = draw(st.sampled_from([TIANHE, JINSHUI, "110105", "510104"]))
    number = make_id_number(division, draw(st.dates(dt.date(1900, 1, 1), TODAY)), draw(st.integers(0, 999)))
    mutation = draw(st.sampled_from(["none", "check", "digit", "truncate", "lower", "spaces"]))
    position = draw(st.integers(0, 16))
    if mutation == "check":
        number = number[:-1] + ("0" if number[-1] != "0" else "1")
    elif mutation == "digit":
        number = number[:position] + str((int(number[position]) + 1) % 10) + number[position + 1 :]
    elif mutation == "truncate":
        number = number[: draw(st.integers(1, 17))]
    elif mutation == "lower":
        number = number.lower()
    elif mutation == "spaces":
        number = f" {number[:6]} {number[6:]} "
    return record(
        id_number=number,
        name=draw(st.sampled_from([NAME, "", "李4", "王五"])),
        gender=draw(st.sampled_from([0, 1, 2, 5])),
        birth_date=draw(st.sampled_from([None, BIRTH])),
        residence_division=draw(st.sampled_from([TIANHE, JINSHUI, "", "440199"])),
        enrollments=(
            enrollment(
                monthly_amount_fen=draw(st.sampled_from([-1, 0, 80_000, MAX_MONTHLY_AMOUNT_FEN + 1])),
                granting_division=draw(st.sampled_from([TIANHE, JINSHUI])),
            ),
        ),
    )


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_records_with_faults())
def test_no_rejection_message_contains_the_raw_id_number_or_name(preparer: RecordPreparer, rec: PersonRecord) -> None:
    batch = preparer.prepare_batch(GD, [rec])
    raw = rec.id_number.strip()
    compact = "".join(raw.split()).upper()
    for rejection in batch.record_rejections:
        for text in (rejection.message, rejection.field, rejection.reason, rejection.item_id):
            if len(compact) >= 6:
                assert compact not in text.upper()
                assert compact[:14] not in text
            if rec.name:
                assert rec.name not in text
