"""Tests of gateway.domain.identity: GB 11643 ID numbers."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import divisions, identity
from gateway.domain.identity import (
    Gender,
    IdKind,
    IdNumber,
    check_character,
    is_valid_id_number,
    make_id_number,
    normalize_id_number,
    parse_id_number,
    propose_corrections,
)
from gateway.errors import InvalidArgument, InvalidIdNumber

TODAY = dt.date(2025, 6, 1)
CLASSIC = "11010519491231002X"

_COUNTIES = sorted(c for p in sorted(divisions.MAINLAND_PROVINCES) for c in divisions.counties_of(p))

county_codes = st.sampled_from(_COUNTIES)
birth_dates = st.dates(min_value=identity.EARLIEST_BIRTH, max_value=TODAY)
sequences = st.integers(min_value=0, max_value=999)


@st.composite
def valid_numbers(draw: st.DrawFn) -> str:
    """Valid 18-character numbers of every kind."""
    kind = draw(st.sampled_from(IdKind))
    if kind is IdKind.RESIDENT:
        division = draw(county_codes)
    elif kind is IdKind.HK_MACAU_TAIWAN_RESIDENCE:
        division = draw(st.sampled_from(["810000", "820000", "830000"]))
    else:
        province = draw(st.sampled_from(sorted(divisions.MAINLAND_PROVINCES)))
        nationality = draw(st.integers(min_value=0, max_value=999))
        division = f"9{province[:2]}{nationality:03d}"
    return make_id_number(division, draw(birth_dates), draw(sequences))


def reference_check(first17: str) -> str:
    """The check character straight from the standard's formula, for comparison."""
    s = sum(int(a) * w for a, w in zip(first17, identity.WEIGHTS, strict=True))
    return "10X98765432"[s % 11]


def assert_no_digits_leak(error: InvalidIdNumber, *numbers: str) -> None:
    """No message, repr or metadata of the error holds a number or a 6-character run of it."""
    texts = [str(error), repr(error), error.message, *error.error_metadata().values()]
    for number in (n for n in numbers if len(n) >= 6):
        windows = {number[i : i + 6] for i in range(len(number) - 5)} | {number}
        for text in texts:
            for window in windows:
                assert window not in text


def parse_error(raw: str, today: dt.date = TODAY) -> InvalidIdNumber:
    with pytest.raises(InvalidIdNumber) as info:
        parse_id_number(raw, today=today)
    assert info.value.field == "id_number"
    assert_no_digits_leak(info.value, normalize_id_number(raw))
    return info.value


# --- the check character -------------------------------------------------------------------


def test_check_character_of_classic_example_computed_by_hand() -> None:
    # 1·7 + 1·9 + 0·10 + 1·5 + 0·8 + 5·4 + 1·2 + 9·1 + 4·6 + 9·3 + 1·7 + 2·9 + 3·10 + 1·5 + 0·8
    # + 0·4 + 2·2 = 167; 167 mod 11 = 2, which maps to X.
    assert check_character("11010519491231002") == "X"


def test_check_character_of_more_hand_computed_examples() -> None:
    # 4·7+4·9+0+3·5+0+4·4+1·2+9·1+9·6+0+0+3·9+0+7·5+0+0+1·2 = 224; 224 mod 11 = 4 -> 8.
    assert check_character("44030419900307001") == "8"
    # All zeros: S = 0 -> 1.
    assert check_character("00000000000000000") == "1"


@given(st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_check_character_agrees_with_the_standard_formula(first17: str) -> None:
    assert check_character(first17) == reference_check(first17)


@pytest.mark.parametrize("bad", ["", "1101051949123100", "110105194912310021", "1101051949123100X", "١" * 17])
def test_check_character_rejects_anything_but_17_ascii_digits(bad: str) -> None:
    with pytest.raises(InvalidIdNumber) as info:
        check_character(bad)
    assert info.value.reason == "ID_NUMBER_MALFORMED"


# --- parsing valid numbers -----------------------------------------------------------------


def test_classic_example_is_valid_and_parsed() -> None:
    number = parse_id_number(CLASSIC, today=TODAY)
    assert number.value == CLASSIC
    assert number.division_code == "110105"
    assert number.province_code == "110000"
    assert number.birth_date == dt.date(1949, 12, 31)
    assert number.sequence == 2
    assert number.gender is Gender.FEMALE
    assert number.kind is IdKind.RESIDENT
    assert is_valid_id_number(CLASSIC)


def test_odd_sequence_is_male_even_is_female() -> None:
    assert parse_id_number(make_id_number("320102", dt.date(1980, 1, 1), 123)).gender is Gender.MALE
    assert parse_id_number(make_id_number("320102", dt.date(1980, 1, 1), 124)).gender is Gender.FEMALE


def test_gender_values_equal_the_wire_enum() -> None:
    # hutong.v1 Gender: GENDER_MALE = 1, GENDER_FEMALE = 2.
    assert (int(Gender.MALE), int(Gender.FEMALE)) == (1, 2)


@given(county_codes, birth_dates, sequences)
def test_generated_resident_number_round_trips(division: str, birth: dt.date, sequence: int) -> None:
    value = make_id_number(division, birth, sequence)
    assert value[17] == reference_check(value[:17])
    number = parse_id_number(value, today=TODAY)
    assert number.value == value
    assert number.division_code == division
    assert number.province_code == division[:2] + "0000"
    assert number.birth_date == birth
    assert number.sequence == sequence
    assert number.gender is (Gender.MALE if sequence % 2 else Gender.FEMALE)
    assert number.kind is IdKind.RESIDENT


@given(valid_numbers())
def test_every_valid_number_parses_to_itself_and_its_province_is_known(value: str) -> None:
    number = parse_id_number(value, today=TODAY)
    assert number == IdNumber(value)
    assert number.province_code in divisions.PROVINCE_CODES


def test_division_code_of_an_id_number_need_not_exist_any_more() -> None:
    # 110103 (崇文区) was merged into Dongcheng in 2010; numbers issued there stay valid.
    assert not divisions.is_known_division("110103")
    number = parse_id_number(make_id_number("110103", dt.date(1960, 5, 4), 17), today=TODAY)
    assert number.division_code == "110103"
    assert number.kind is IdKind.RESIDENT


@pytest.mark.parametrize(("prefix", "province"), [("810000", "810000"), ("820000", "820000"), ("830000", "710000")])
def test_hk_macau_taiwan_residence_permits_are_recognised(prefix: str, province: str) -> None:
    number = parse_id_number(make_id_number(prefix, dt.date(1990, 3, 7), 31), today=TODAY)
    assert number.kind is IdKind.HK_MACAU_TAIWAN_RESIDENCE
    assert number.province_code == province


def test_foreign_permanent_resident_id_takes_its_province_from_digits_two_and_three() -> None:
    number = parse_id_number(make_id_number("931840", dt.date(1985, 7, 1), 12), today=TODAY)
    assert number.kind is IdKind.FOREIGN_PERMANENT_RESIDENT
    assert number.province_code == "310000"
    assert number.birth_date == dt.date(1985, 7, 1)


def test_foreign_permanent_resident_id_with_unknown_province_is_refused() -> None:
    error = parse_error(make_id_number("900840", dt.date(1985, 7, 1), 12))
    assert error.reason == "ID_NUMBER_BAD_DIVISION"
    assert "2-3" in error.message


def test_repr_hides_the_number() -> None:
    number = parse_id_number(CLASSIC, today=TODAY)
    assert CLASSIC not in repr(number)
    assert CLASSIC not in str(number)
    assert "RESIDENT" in repr(number)


def test_born_today_is_accepted_by_default_clock() -> None:
    today = dt.date.today()
    assert is_valid_id_number(make_id_number("110105", today, 1))


def test_born_tomorrow_is_refused_by_default_clock() -> None:
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    with pytest.raises(InvalidIdNumber) as info:
        parse_id_number(make_id_number("110105", tomorrow, 1))
    assert info.value.reason == "ID_NUMBER_BAD_BIRTH_DATE"


def test_explicit_today_bounds_the_birth_date() -> None:
    value = make_id_number("110105", dt.date(2025, 6, 2), 1)
    assert parse_error(value, today=dt.date(2025, 6, 1)).reason == "ID_NUMBER_BAD_BIRTH_DATE"
    assert parse_id_number(value, today=dt.date(2025, 6, 2)).birth_date == dt.date(2025, 6, 2)


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "11010519491231002x",
        " 11010519491231002X ",
        "110105 19491231 002X",
        "110105\u300019491231\u3000002X",
        "110105\t19491231\n002x\r\n",
        "１１０１０５１９４９１２３１００２Ｘ",
        "１１０１０５１９４９１２３１００２ｘ",
        "１１０１０５\u3000１９４９１２３１\u3000００２x",
    ],
)
def test_spaced_lowercase_and_full_width_forms_normalise_to_the_same_number(raw: str) -> None:
    assert normalize_id_number(raw) == CLASSIC
    assert parse_id_number(raw, today=TODAY).value == CLASSIC


def test_normalisation_removes_every_unicode_whitespace_character() -> None:
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    for space in spaces:
        assert normalize_id_number(f"1{space}2{space}x") == "12X"


_FULL_WIDTH = {chr(0xFF10 + d): str(d) for d in range(10)} | {"Ｘ": "X", "ｘ": "X", "x": "X"}


@given(st.text(alphabet=st.sampled_from([*"0123456789Xx", *_FULL_WIDTH, " ", "\u3000", "\t", "a", "é"])))
def test_normalisation_equals_the_rule_drop_spaces_then_map_width_and_case(raw: str) -> None:
    expected = "".join(_FULL_WIDTH.get(c, c) for c in raw if not c.isspace())
    assert normalize_id_number(raw) == expected


def test_normalisation_leaves_other_characters_for_validation_to_refuse() -> None:
    assert normalize_id_number("11010519491231002Y") == "11010519491231002Y"
    assert parse_error("11010519491231002Y").reason == "ID_NUMBER_MALFORMED"


# --- 15-digit numbers ----------------------------------------------------------------------


def test_fifteen_digit_number_becomes_eighteen_with_19_and_a_check_character() -> None:
    number = parse_id_number("110105491231002", today=TODAY)
    assert number.value == CLASSIC
    assert number.birth_date == dt.date(1949, 12, 31)


@pytest.mark.parametrize("sequence", ["996", "997", "998", "999"])
def test_fifteen_digit_centenarian_sequences_mean_born_in_the_1800s(sequence: str) -> None:
    number = parse_id_number(f"330102950817{sequence}", today=TODAY)
    first17 = f"33010218950817{sequence}"
    assert number.value == first17 + reference_check(first17)
    assert number.birth_date == dt.date(1895, 8, 17)


def test_fifteen_digit_sequence_995_is_an_ordinary_1900s_birth() -> None:
    assert parse_id_number("330102950817995", today=TODAY).birth_date == dt.date(1995, 8, 17)


def test_fifteen_digit_centenarian_born_before_1890_is_refused() -> None:
    error = parse_error("330102850817997")
    assert error.reason == "ID_NUMBER_BAD_BIRTH_DATE"
    assert "7-12" in error.message


@given(county_codes, st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(1999, 12, 31)), sequences)
def test_fifteen_digit_number_converts_to_the_matching_eighteen_digit_one(
    division: str, birth: dt.date, sequence: int
) -> None:
    short = f"{division}{birth:%y%m%d}{sequence:03d}"
    if sequence >= 996:
        # Centenarian sequences point to the 1800s instead.
        birth = birth.replace(year=birth.year - 100)
        if birth < identity.EARLIEST_BIRTH:
            assert not is_valid_id_number(short, today=TODAY)
            return
    assert parse_id_number(short, today=TODAY).value == make_id_number(division, birth, sequence)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "   ", "\u3000", "\t\n"])
def test_missing_number_is_refused_as_missing(raw: str) -> None:
    error = parse_error(raw)
    assert error.reason == "ID_NUMBER_MISSING"


@pytest.mark.parametrize(("raw", "length"), [(CLASSIC[:17], 17), (CLASSIC + "1", 19), ("1101", 4)])
def test_wrong_length_is_malformed_and_says_the_length(raw: str, length: int) -> None:
    error = parse_error(raw)
    assert error.reason == "ID_NUMBER_MALFORMED"
    assert f"expected 18 characters (or 15 for a first-generation number), got {length}" in error.message


@pytest.mark.parametrize(
    ("raw", "position"),
    [
        ("1101A519491231002X", 5),
        ("X10105194912310021", 1),
        ("1101051949123100X2", 17),
        ("11010519491231002-", 18),
        ("1101051949123100٢X", 17),
        ("11010549123100A", 15),
        ("11010549123100X", 15),
    ],
)
def test_bad_character_is_malformed_and_names_its_position(raw: str, position: int) -> None:
    error = parse_error(raw)
    assert error.reason == "ID_NUMBER_MALFORMED"
    assert f"position {position} " in error.message
    assert error.metadata == {"position": str(position)}


def test_wrong_check_character_is_an_error_never_silently_fixed() -> None:
    error = parse_error("110105194912310021")
    assert error.reason == "ID_NUMBER_BAD_CHECK_CHARACTER"
    assert error.message == "check character does not match (position 18)"
    assert not is_valid_id_number("110105194912310021")


@pytest.mark.parametrize("prefix", ["000000", "190000", "200000", "720000", "830100"])
def test_resident_number_outside_any_province_is_refused(prefix: str) -> None:
    error = parse_error(make_id_number(prefix, dt.date(1970, 1, 1), 1))
    assert error.reason == "ID_NUMBER_BAD_DIVISION"
    assert error.message == "digits at positions 1-2 are not a province code"


@pytest.mark.parametrize(
    ("birth", "problem"),
    [
        ("19490230", "is not a calendar date"),
        ("19491301", "is not a calendar date"),
        ("19490000", "is not a calendar date"),
        ("00000101", "is not a calendar date"),
        ("18891231", "is before 1890"),
        ("20250602", "is in the future"),
        ("29991231", "is in the future"),
    ],
)
def test_impossible_early_or_future_birth_date_is_refused(birth: str, problem: str) -> None:
    first17 = f"110105{birth}002"
    error = parse_error(first17 + reference_check(first17))
    assert error.reason == "ID_NUMBER_BAD_BIRTH_DATE"
    assert error.message == f"birth date (positions 7-14) {problem}"


def test_errors_are_invalid_arguments() -> None:
    assert issubclass(InvalidIdNumber, InvalidArgument)
    assert parse_error("1").code_name == "INVALID_ARGUMENT"


# --- typos: detection and proposals --------------------------------------------------------


@given(valid_numbers(), st.integers(min_value=0, max_value=17), st.data())
def test_single_substitution_is_detected_and_original_is_proposed(
    value: str, position: int, data: st.DataObject
) -> None:
    alphabet = "0123456789X" if position == 17 else "0123456789"
    replacement = data.draw(st.sampled_from([c for c in alphabet if c != value[position]]))
    typo = value[:position] + replacement + value[position + 1 :]
    with pytest.raises(InvalidIdNumber) as info:
        parse_id_number(typo, today=TODAY)
    assert info.value.reason == "ID_NUMBER_BAD_CHECK_CHARACTER"
    assert_no_digits_leak(info.value, typo, value)
    proposals = propose_corrections(typo, today=TODAY)
    assert value in proposals


@given(valid_numbers(), st.integers(min_value=0, max_value=16))
def test_adjacent_transposition_is_detected_and_original_is_proposed(value: str, position: int) -> None:
    if value[position] == value[position + 1]:
        return
    typo = value[:position] + value[position + 1] + value[position] + value[position + 2 :]
    with pytest.raises(InvalidIdNumber) as info:
        parse_id_number(typo, today=TODAY)
    assert info.value.reason in {"ID_NUMBER_BAD_CHECK_CHARACTER", "ID_NUMBER_MALFORMED"}
    assert_no_digits_leak(info.value, typo, value)
    assert value in propose_corrections(typo, today=TODAY)


@given(valid_numbers())
def test_valid_number_gets_no_proposals(value: str) -> None:
    assert propose_corrections(value, today=TODAY) == []


def test_proposals_are_sorted_unique_valid_and_one_typo_away() -> None:
    typo = "11010519491231003X"
    proposals = propose_corrections(typo, today=TODAY)
    assert CLASSIC in proposals
    assert proposals == sorted(set(proposals))
    for proposal in proposals:
        assert is_valid_id_number(proposal, today=TODAY)
        differing = [i for i in range(18) if proposal[i] != typo[i]]
        is_substitution = len(differing) == 1
        is_transposition = (
            len(differing) == 2
            and differing[1] == differing[0] + 1
            and proposal[differing[0]] == typo[differing[1]]
            and proposal[differing[1]] == typo[differing[0]]
        )
        assert is_substitution or is_transposition


def test_proposals_exclude_numbers_with_impossible_dates_or_provinces() -> None:
    for proposal in propose_corrections("11010519491231003X", today=TODAY):
        number = parse_id_number(proposal, today=TODAY)
        assert identity.EARLIEST_BIRTH <= number.birth_date <= TODAY
        assert number.province_code in divisions.PROVINCE_CODES


def test_proposals_accept_spaced_lowercase_input() -> None:
    assert CLASSIC in propose_corrections("110105 19491231 003x", today=TODAY)


@pytest.mark.parametrize("raw", ["", "1101051949123100", "110105491231003", "11010519491231003Y"])
def test_no_proposals_for_numbers_that_are_not_18_digits_and_x(raw: str) -> None:
    assert propose_corrections(raw, today=TODAY) == []


# --- make_id_number ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("division", "sequence"), [("11010", 1), ("1101050", 1), ("11010a", 1), ("110105", -1), ("110105", 1000)]
)
def test_make_id_number_refuses_bad_parts(division: str, sequence: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        make_id_number(division, dt.date(1980, 1, 1), sequence)


def test_make_id_number_builds_the_classic_example() -> None:
    assert make_id_number("110105", dt.date(1949, 12, 31), 2) == CLASSIC


def test_public_names_are_pinned() -> None:
    assert set(identity.__all__) == {
        "EARLIEST_BIRTH",
        "WEIGHTS",
        "Gender",
        "IdKind",
        "IdNumber",
        "check_character",
        "is_valid_id_number",
        "make_id_number",
        "mask_id_number",
        "normalize_id_number",
        "parse_id_number",
        "propose_corrections",
    }


@given(valid_numbers())
def test_a_masked_number_keeps_four_characters_at_each_end_and_hides_the_birth_date(number: str) -> None:
    masked = identity.mask_id_number(number)
    assert len(masked) == len(number)
    assert masked[:4] == number[:4]
    assert masked[-4:] == number[-4:]
    assert masked[4:-4] == "*" * 10
    assert number[6:14] not in masked  # the birth date


def test_short_values_are_masked_without_revealing_most_of_them() -> None:
    assert identity.mask_id_number("") == ""
    assert identity.mask_id_number("123") == "***"
    assert identity.mask_id_number("12345678") == "12****78"
