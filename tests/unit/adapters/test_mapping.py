"""Tests of adapters.mapping: transforms, code tables, dates, amounts, then the hub's rules, every problem named."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest

from adapters.mapping import FieldProblem, RowMapper, halfwidth, parse_date
from adapters.profile import parse_profile
from gateway.domain.identity import make_id_number
from gateway.domain.model import Enrollment, EnrollmentStatus, Gender, PersonRecord, Program

TODAY = dt.date(2026, 11, 30)
BIRTH = dt.date(1960, 5, 6)
ID_MALE = make_id_number("410105", BIRTH, 123)  # hukou in Henan, odd sequence
ID_FEMALE = make_id_number("440106", dt.date(1985, 11, 30), 124)

BASE: dict[str, Any] = {
    "source": {"name": "测试导出", "province": "440000", "format": "csv"},
    "record": {
        "record_id": {"from": "编号", "transforms": ["trim"]},
        "id_number": {"from": "身份证", "transforms": ["trim", "halfwidth", "upper"]},
        "name": {"from": "姓名", "transforms": ["trim"]},
        "gender": {"from": "性别", "codes": "gender"},
        "birth_date": {"from": "出生", "date": "YYYYMMDD"},
        "hukou_division": "户籍地",
        "residence_division": "居住地",
        "household_id": "户号",
    },
    "enrollments": [
        {
            "program": {"from": "类别", "codes": "program"},
            "status": {"from": "状态", "codes": "status"},
            "start_date": {"from": "开始", "date": "YYYY-MM-DD"},
            "end_date": {"from": "结束", "date": "YYYY-MM-DD"},
            "monthly_amount_fen": {"from": "金额", "amount": "yuan"},
            "granting_division": "审批地",
        }
    ],
    "codes": {
        "gender": {"男": "male", "女": "female"},
        "program": {
            "城市低保": "dibao",
            "农村低保": "dibao",
            "特困供养": "extreme-poverty",
            "临时救助": "temporary-assistance",
        },
        "status": {"在保": "active", "停保": "suspended", "退出": "exited"},
    },
}

ROW: dict[str, str] = {
    "编号": "GD001",
    "身份证": ID_MALE,
    "姓名": "张三",
    "性别": "男",
    "出生": "19600506",
    "户籍地": "410105",
    "居住地": "440106",
    "户号": "H001",
    "类别": "城市低保",
    "状态": "在保",
    "开始": "2020-01-01",
    "结束": "",
    "金额": "880.00",
    "审批地": "440106",
}

GOOD = PersonRecord(
    record_id="GD001",
    version=1,
    id_number=ID_MALE,
    name="张三",
    gender=Gender.MALE,
    birth_date=BIRTH,
    hukou_division="410105",
    residence_division="440106",
    household_id="H001",
    enrollments=(
        Enrollment(
            program=Program.DIBAO,
            status=EnrollmentStatus.ACTIVE,
            start_date=dt.date(2020, 1, 1),
            end_date=None,
            monthly_amount_fen=88_000,
            granting_division="440106",
        ),
    ),
    updated_at_us=0,
)


def profile_data() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def mapper_of(data: Mapping[str, Any]) -> RowMapper:
    return RowMapper(parse_profile(data), today=TODAY)


def run(data: Mapping[str, Any] | None = None, /, **changes: str) -> tuple[PersonRecord | None, list[FieldProblem]]:
    """Map ROW with ``changes`` (keyword = source field) under the profile ``data`` (default BASE)."""
    row = {**ROW, **changes}
    return mapper_of(data or BASE).map(row)


def record_of(data: Mapping[str, Any] | None = None, /, **changes: str) -> PersonRecord:
    record, problems = run(data, **changes)
    assert problems == []
    assert record is not None
    return record


def problems_of(data: Mapping[str, Any] | None = None, /, **changes: str) -> list[tuple[str, str]]:
    record, problems = run(data, **changes)
    assert record is None
    assert problems
    return [(p.field, p.reason) for p in problems]


def only_problem(data: Mapping[str, Any] | None = None, /, **changes: str) -> FieldProblem:
    record, problems = run(data, **changes)
    assert record is None
    (problem,) = problems
    return problem


def test_a_good_row_becomes_the_record_it_states() -> None:
    assert record_of() == GOOD


# --- transforms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("１２３Ｘ", "123X"),
        ("ＡＢＣａｂｃ", "ABCabc"),
        ("！＂＃～", '!"#~'),
        ("\u3000张\u3000三\u3000", " 张 三 "),
        ("张三，李四", "张三,李四"),
        ("plain 123", "plain 123"),
    ],
)
def test_halfwidth_turns_full_width_forms_into_ascii(text: str, expected: str) -> None:
    assert halfwidth(text) == expected


@pytest.mark.parametrize(
    ("transforms", "text", "expected"),
    [
        (["trim"], "  H001 \u3000", "H001"),
        (["halfwidth"], "Ｈ００１", "H001"),
        (["upper"], "h001x", "H001X"),
        (["lower"], "H001X", "h001x"),
        (["nospace"], " H 0\t0 1\u3000", "H001"),
        (["digits"], "GD-00\u00a01号", "001"),
        (["halfwidth", "upper", "nospace"], " ｈ　００１ ", "H001"),
        ([], "H001", "H001"),
    ],
)
def test_each_transform_applies_in_order(transforms: list[str], text: str, expected: str) -> None:
    data = profile_data()
    data["record"]["household_id"] = {"from": "户号", "transforms": transforms}
    assert record_of(data, 户号=text).household_id == expected


def test_a_value_empty_after_transforms_counts_as_empty() -> None:
    data = profile_data()
    data["record"]["household_id"] = {"from": "户号", "transforms": ["digits"], "default": "无"}
    assert record_of(data, 户号="GD-").household_id == "无"


# --- code tables ---------------------------------------------------------------------------


def test_a_local_code_becomes_the_national_value() -> None:
    record = record_of(性别="男", 类别=" 特困供养 ", 状态="停保")
    assert record.gender == Gender.MALE
    assert (record.enrollments[0].program, record.enrollments[0].status) == (
        Program.EXTREME_POVERTY,
        EnrollmentStatus.SUSPENDED,
    )


@pytest.mark.parametrize(
    ("source", "value", "field", "kind"),
    [
        ("类别", "助学补贴", "enrollments[0].program", "program"),
        ("状态", "PAUSED", "enrollments[0].status", "status"),
        ("性别", "未知", "gender", "gender"),
    ],
)
def test_a_local_code_missing_from_the_table_is_refused_naming_the_value(
    source: str, value: str, field: str, kind: str
) -> None:
    problem = only_problem(**{source: value})
    assert problem == FieldProblem(field, "CODE_UNKNOWN", f"{value!r} is not in the {kind} code table of the profile")


def test_an_empty_optional_code_is_unset() -> None:
    assert record_of(性别="").gender == Gender.UNSPECIFIED


# --- dates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "day", "clock"),
    [
        ("YYYYMMDD", "20210301", dt.date(2021, 3, 1), (0, 0, 0)),
        ("YYYY-MM-DD", "2021-03-01", dt.date(2021, 3, 1), (0, 0, 0)),
        ("YYYY/M/D", "2021/3/1", dt.date(2021, 3, 1), (0, 0, 0)),
        ("YYYY/M/D", "2021/03/01", dt.date(2021, 3, 1), (0, 0, 0)),
        ("YYYY/M/D", "2021/12/31", dt.date(2021, 12, 31), (0, 0, 0)),
        ("YYYY年M月D日", "2021年3月1日", dt.date(2021, 3, 1), (0, 0, 0)),
        ("YYYY年MM月DD日", "2021年03月01日", dt.date(2021, 3, 1), (0, 0, 0)),
        ("DD.MM.YYYY", "01.03.2021", dt.date(2021, 3, 1), (0, 0, 0)),
        ("YYYY-MM-DD HH:mm:ss", "2026-11-08 14:30:05", dt.date(2026, 11, 8), (14, 30, 5)),
        ("YYYY-MM-DD HH:mm:ss", "2026-11-08 9:30:05", dt.date(2026, 11, 8), (9, 30, 5)),
        ("YYYY-MM-DDTHH:mm", "2026-11-08T23:59", dt.date(2026, 11, 8), (23, 59, 0)),
        ("excel", "44256", dt.date(2021, 3, 1), (0, 0, 0)),
        ("excel", "44256.5", dt.date(2021, 3, 1), (12, 0, 0)),
        ("excel", "44256.0", dt.date(2021, 3, 1), (0, 0, 0)),
        ("excel", "61", dt.date(1900, 3, 1), (0, 0, 0)),
        ("excel", "2958465", dt.date(9999, 12, 31), (0, 0, 0)),
    ],
)
def test_parse_date_reads_every_documented_pattern(
    pattern: str, text: str, day: dt.date, clock: tuple[int, int, int]
) -> None:
    assert parse_date(text, pattern) == (day, clock)


@pytest.mark.parametrize(("serial", "day"), [("1", dt.date(1900, 1, 1)), ("59", dt.date(1900, 2, 28))])
def test_parse_date_reads_excel_serials_before_march_1900(serial: str, day: dt.date) -> None:
    assert parse_date(serial, "excel")[0] == day


@pytest.mark.parametrize(
    ("pattern", "text", "says"),
    [
        ("YYYY-MM-DD", "2021-02-30", "is not a calendar date"),
        ("YYYYMMDD", "20210230", "is not a calendar date"),
        ("YYYYMMDD", "20211301", "is not a calendar date"),
        ("YYYY年M月D日", "2021年2月30日", "is not a calendar date"),
        ("YYYY-MM-DD", "2021-3-1", "does not match the pattern YYYY-MM-DD"),
        ("YYYYMMDD", "2021031", "does not match the pattern YYYYMMDD"),
        ("YYYY/M/D", "2021/3/1 extra", "does not match"),
        ("YYYY-MM-DD HH:mm:ss", "2026-11-08 24:00:00", "is not a time of day"),
        ("YYYY-MM-DD HH:mm:ss", "2026-11-08 12:60:00", "is not a time of day"),
        ("excel", "x44256", "is not an Excel date serial number"),
        ("excel", "0", "is out of range"),
        ("excel", "-5", "is out of range"),
        ("excel", "2958466", "is out of range"),
    ],
)
def test_parse_date_says_why_a_date_is_refused(pattern: str, text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_date(text, pattern)


def test_an_impossible_date_is_refused_naming_the_field() -> None:
    problem = only_problem(开始="2021-02-30")
    assert problem == FieldProblem("enrollments[0].start_date", "DATE_INVALID", "'2021-02-30' is not a calendar date")


def test_a_birth_date_in_another_layout_is_refused_naming_the_field() -> None:
    assert problems_of(出生="1960-05-06") == [("birth_date", "DATE_INVALID")]


def test_an_excel_serial_date_is_read_through_the_rules() -> None:
    data = profile_data()
    data["enrollments"][0]["start_date"] = {"from": "开始", "date": "excel"}
    assert record_of(data, 开始="44256").enrollments[0].start_date == dt.date(2021, 3, 1)


@pytest.mark.parametrize(
    ("offset", "utc"),
    [
        ("+08:00", dt.datetime(2026, 11, 8, 6, 30, 5, tzinfo=dt.UTC)),
        ("+00:00", dt.datetime(2026, 11, 8, 14, 30, 5, tzinfo=dt.UTC)),
        ("-05:30", dt.datetime(2026, 11, 8, 20, 0, 5, tzinfo=dt.UTC)),
    ],
)
def test_updated_at_is_read_in_the_profiles_utc_offset(offset: str, utc: dt.datetime) -> None:
    data = profile_data()
    data["source"]["utc_offset"] = offset
    data["record"]["updated_at"] = {"from": "更新", "date": "YYYY-MM-DD HH:mm:ss"}
    record = record_of(data, 更新="2026-11-08 14:30:05")
    assert record.updated_at_us == int(utc.timestamp()) * 1_000_000


def test_updated_at_in_the_future_is_refused() -> None:
    data = profile_data()
    data["record"]["updated_at"] = {"from": "更新", "date": "YYYY-MM-DD HH:mm:ss"}
    assert problems_of(data, 更新="2999-01-01 00:00:00") == [("updated_at", "UPDATED_AT_IN_FUTURE")]


def test_an_excel_serial_just_before_midnight_is_not_an_exception() -> None:
    data = profile_data()
    data["record"]["updated_at"] = {"from": "更新", "date": "excel"}
    record, _ = run(data, 更新="44256.999999")
    assert record is not None
    assert (
        record.updated_at_us
        == int(dt.datetime(2021, 3, 2, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()) * 1_000_000
    )


def test_a_start_date_more_than_a_year_ahead_is_refused() -> None:
    assert problems_of(开始="2028-01-01") == [("enrollments[0].start_date", "DATE_IMPOSSIBLE")]


def test_an_end_date_before_the_start_is_refused() -> None:
    assert problems_of(结束="2019-12-31") == [("enrollments[0].end_date", "DATE_RANGE_INVALID")]


# --- amounts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("880", 88_000),
        ("880.5", 88_050),
        ("880.50", 88_050),
        ("1,395.50", 139_550),
        ("0.05", 5),
        ("0", 0),
        (" 766.00 ", 76_600),
        ("100000", 10_000_000),
    ],
)
def test_an_amount_in_yuan_becomes_fen(text: str, fen: int) -> None:
    assert record_of(金额=text).enrollments[0].monthly_amount_fen == fen


@pytest.mark.parametrize("text", ["1.234", "abc", "8 80", "¥880", "880.", ".5", "1e3", "880元"])
def test_an_amount_that_is_not_yuan_is_refused(text: str) -> None:
    problem = only_problem(金额=text)
    assert (problem.field, problem.reason) == ("enrollments[0].monthly_amount_fen", "AMOUNT_INVALID")
    assert "is not an amount in yuan" in problem.message


def test_a_negative_amount_is_read_then_refused_by_the_rules() -> None:
    problem = only_problem(金额="-50.00")
    assert (problem.field, problem.reason) == ("enrollments[0].monthly_amount_fen", "AMOUNT_NEGATIVE")


def test_an_amount_above_the_ceiling_is_refused() -> None:
    assert problems_of(金额="100000.01") == [("enrollments[0].monthly_amount_fen", "AMOUNT_TOO_LARGE")]


def test_an_empty_amount_is_unset() -> None:
    assert record_of(金额="").enrollments[0].monthly_amount_fen == 0


@pytest.mark.parametrize("text", ["12,34", "1,2", "88,0.50"])
def test_misplaced_thousands_separators_are_refused(text: str) -> None:
    assert problems_of(金额=text) == [("enrollments[0].monthly_amount_fen", "AMOUNT_INVALID")]


def fen_profile() -> dict[str, Any]:
    data = profile_data()
    data["enrollments"][0]["monthly_amount_fen"] = {"from": "金额", "amount": "fen"}
    return data


@pytest.mark.parametrize(
    ("text", "fen"), [("88000", 88_000), ("00080955", 80_955), (" 5 ", 5), ("0", 0), ("1,000", 1_000)]
)
def test_an_amount_in_fen_is_an_integer(text: str, fen: int) -> None:
    assert record_of(fen_profile(), 金额=text).enrollments[0].monthly_amount_fen == fen


@pytest.mark.parametrize("text", ["880.00", "8a", "-", "5-"])
def test_an_amount_in_fen_that_is_not_an_integer_is_refused(text: str) -> None:
    problem = only_problem(fen_profile(), 金额=text)
    assert (problem.field, problem.reason) == ("enrollments[0].monthly_amount_fen", "AMOUNT_INVALID")


def test_a_negative_amount_in_fen_is_refused_by_the_rules() -> None:
    assert problems_of(fen_profile(), 金额="-5") == [("enrollments[0].monthly_amount_fen", "AMOUNT_NEGATIVE")]


@pytest.mark.parametrize("text", ["--5", "①", "²"])
def test_an_amount_in_fen_int_cannot_read_is_refused_not_an_exception(text: str) -> None:
    problem = only_problem(fen_profile(), 金额=text)
    assert problem.reason == "AMOUNT_INVALID"


# --- numbers, defaults, constants, optional fields -----------------------------------------


def test_version_is_read_from_the_source_or_defaults_to_one() -> None:
    assert record_of().version == 1
    data = profile_data()
    data["record"]["version"] = "版本"
    assert record_of(data, 版本="7").version == 7
    assert problems_of(data, 版本="v7") == [("version", "NUMBER_INVALID")]
    assert problems_of(data, 版本="0") == [("version", "VERSION_INVALID")]


def test_a_version_int_cannot_read_is_refused_not_an_exception() -> None:
    data = profile_data()
    data["record"]["version"] = "版本"
    assert problems_of(data, 版本="②") == [("version", "NUMBER_INVALID")]


def test_constants_replace_source_fields() -> None:
    data = profile_data()
    data["record"]["version"] = {"value": 3}
    data["record"]["residence_division"] = {"value": "440106"}
    data["enrollments"][0]["status"] = {"value": "在保", "codes": "status"}
    record = record_of(data, 居住地="", 状态="")
    assert record.version == 3
    assert record.residence_division == "440106"
    assert record.enrollments[0].status == EnrollmentStatus.ACTIVE


def test_a_default_fills_an_empty_or_blank_source_value() -> None:
    data = profile_data()
    data["record"]["household_id"] = {"from": "户号", "default": "H000"}
    data["record"]["gender"] = {"from": "性别", "codes": "gender", "default": "男"}
    data["enrollments"][0]["monthly_amount_fen"] = {"from": "金额", "amount": "yuan", "default": "500"}
    assert record_of(data, 户号="H9").household_id == "H9"
    for empty in ("", "   ", "\u3000"):
        record = record_of(data, 户号=empty, 性别=empty, 金额=empty)
        assert record.household_id == "H000"
        assert record.gender == Gender.MALE
        assert record.enrollments[0].monthly_amount_fen == 50_000


def test_a_missing_source_field_reads_as_empty() -> None:
    row = {k: v for k, v in ROW.items() if k not in ("户号", "结束", "户籍地")}
    record, problems = mapper_of(BASE).map(row)
    assert problems == []
    assert record is not None
    assert (record.household_id, record.enrollments[0].end_date, record.hukou_division) == ("", None, "")


def test_empty_optional_fields_are_left_unset() -> None:
    record = record_of(结束="", 出生="", 户籍地="", 户号="", 性别="", 金额="")
    assert record.enrollments[0].end_date is None
    assert record.birth_date is None
    assert (record.hukou_division, record.household_id, record.gender) == ("", "", 0)


def test_an_end_date_is_read_when_given() -> None:
    assert record_of(结束="2021-06-30").enrollments[0].end_date == dt.date(2021, 6, 30)


@pytest.mark.parametrize(
    ("source", "field", "reason"),
    [
        ("编号", "record_id", "ITEM_ID_INVALID"),
        ("身份证", "id_number", "ID_NUMBER_MISSING"),
        ("姓名", "name", "NAME_MISSING"),
        ("居住地", "residence_division", "DIVISION_MISSING"),
        ("类别", "enrollments[0].program", "PROGRAM_MISSING"),
        ("状态", "enrollments[0].status", "STATUS_MISSING"),
        ("开始", "enrollments[0].start_date", "DATE_MISSING"),
        ("审批地", "enrollments[0].granting_division", "DIVISION_MALFORMED"),
    ],
)
def test_an_empty_required_field_is_refused_naming_the_field(source: str, field: str, reason: str) -> None:
    assert problems_of(**{source: "  "}) == [(field, reason)]


# --- enrollment groups and `when` ----------------------------------------------------------


def two_groups() -> dict[str, Any]:
    """Dibao always; temporary assistance only when its programme column is filled."""
    data = profile_data()
    data["enrollments"].append(
        {
            "when": {"from": "临时类别", "transforms": ["trim"]},
            "program": {"from": "临时类别", "codes": "program"},
            "status": {"value": "退出", "codes": "status"},
            "start_date": {"from": "临时日期", "date": "YYYY-MM-DD"},
            "monthly_amount_fen": {"from": "临时金额", "amount": "yuan"},
            "granting_division": "临时审批地",
        }
    )
    return data


TEMPORARY = {"临时类别": "临时救助", "临时日期": "2024-02-01", "临时金额": "300", "临时审批地": "440103"}


def test_an_enrollment_group_with_when_is_made_only_when_its_source_is_not_empty() -> None:
    data = two_groups()
    alone = record_of(data, 临时类别=" ", 临时日期="nonsense", 临时审批地="999999")
    assert len(alone.enrollments) == 1
    both = record_of(data, **TEMPORARY)
    assert both.enrollments[1] == Enrollment(
        program=Program.TEMPORARY_ASSISTANCE,
        status=EnrollmentStatus.EXITED,
        start_date=dt.date(2024, 2, 1),
        end_date=None,
        monthly_amount_fen=30_000,
        granting_division="440103",
    )


def test_enrollment_problems_name_the_profiles_enrollments_table() -> None:
    data = two_groups()
    # The first group is skipped too, so the hub's enrollments[0] is the profile's enrollments[1].
    data["enrollments"][0]["when"] = "类别"
    problems = problems_of(data, 类别="", **{**TEMPORARY, "临时审批地": "110101"})
    assert problems == [("enrollments[1].granting_division", "PROVINCE_NOT_PERMITTED")]
    problems = problems_of(data, 类别="", **{**TEMPORARY, "临时日期": "2024-02-30"})
    assert problems == [("enrollments[1].start_date", "DATE_INVALID")]


def test_two_active_enrollments_in_one_programme_are_refused() -> None:
    data = two_groups()
    data["enrollments"][1]["status"] = {"value": "在保", "codes": "status"}
    assert problems_of(data, **{**TEMPORARY, "临时类别": "农村低保"}) == [
        ("enrollments[1].program", "ENROLLMENT_DUPLICATED")
    ]


# --- ID numbers ----------------------------------------------------------------------------


def test_a_15_digit_id_number_becomes_18_digits_in_the_record() -> None:
    short = ID_MALE[:6] + ID_MALE[8:17]  # drop the century and the check character
    assert len(short) == 15
    record = record_of(身份证=short)
    assert record.id_number == ID_MALE
    assert (record.birth_date, record.gender) == (BIRTH, Gender.MALE)


@pytest.mark.parametrize("transforms", [["trim", "halfwidth", "upper"], []])
def test_full_width_id_digits_and_a_lower_x_are_normalised(transforms: list[str]) -> None:
    data = profile_data()
    data["record"]["id_number"] = {"from": "身份证", "transforms": transforms}
    wide = "".join(chr(0xFF10 + int(c)) for c in ID_MALE)
    assert record_of(data, 身份证=wide).id_number == ID_MALE
    with_x = make_id_number("440115", dt.date(1974, 7, 19), 290)
    assert with_x.endswith("X")
    assert record_of(data, 身份证=with_x.lower(), 性别="女", 出生="19740719").id_number == with_x


def test_a_wrong_check_character_is_refused_with_corrections_proposed_never_applied() -> None:
    wrong = ID_MALE[:17] + ("0" if ID_MALE[17] != "0" else "1")
    record, problems = run(身份证=wrong)
    assert record is None
    (problem,) = problems
    assert (problem.field, problem.reason) == ("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")
    assert problem.message.startswith("check character does not match (position 18)")
    assert "single-typo corrections that would be valid (not applied): " in problem.message
    proposals = problem.message.rpartition(": ")[2].split(", ")
    assert ID_MALE in proposals
    assert wrong not in proposals


def test_gender_and_birth_date_must_agree_with_the_id_number() -> None:
    assert problems_of(性别="女", 出生="19600507") == [
        ("gender", "GENDER_MISMATCH"),
        ("birth_date", "BIRTH_DATE_MISMATCH"),
    ]


# --- every problem, once -------------------------------------------------------------------


def test_every_independent_problem_of_a_row_is_reported() -> None:
    problems = problems_of(姓名="张3", 性别="未知", 开始="2021-02-30")
    assert sorted(problems) == [
        ("enrollments[0].start_date", "DATE_INVALID"),
        ("gender", "CODE_UNKNOWN"),
        ("name", "NAME_INVALID"),
    ]


def test_many_problems_across_record_and_enrollment() -> None:
    problems = problems_of(编号="", 居住地="110101", 户籍地="123", 出生="19600230", 金额="abc", 状态="?")
    assert sorted(problems) == sorted(
        [
            ("birth_date", "DATE_INVALID"),
            ("enrollments[0].status", "CODE_UNKNOWN"),
            ("enrollments[0].monthly_amount_fen", "AMOUNT_INVALID"),
            ("record_id", "ITEM_ID_INVALID"),
            ("hukou_division", "DIVISION_MALFORMED"),
            ("residence_division", "PROVINCE_NOT_PERMITTED"),
        ]
    )


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"类别": "助学"}, "enrollments[0].program", "CODE_UNKNOWN"),  # the hub would say PROGRAM_MISSING
        ({"状态": "?"}, "enrollments[0].status", "CODE_UNKNOWN"),  # STATUS_MISSING
        ({"开始": "2021-02-30"}, "enrollments[0].start_date", "DATE_INVALID"),  # DATE_MISSING
        ({"出生": "1960"}, "birth_date", "DATE_INVALID"),
    ],
)
def test_a_field_with_a_source_problem_is_not_reported_again_by_the_rules(
    changes: dict[str, str], field: str, reason: str
) -> None:
    assert problems_of(**changes) == [(field, reason)]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"类别": "助学", "金额": "-5"},
            [("enrollments[0].program", "CODE_UNKNOWN"), ("enrollments[0].monthly_amount_fen", "AMOUNT_NEGATIVE")],
        ),
        (
            {"状态": "?", "审批地": "110101"},
            [("enrollments[0].status", "CODE_UNKNOWN"), ("enrollments[0].granting_division", "PROVINCE_NOT_PERMITTED")],
        ),
        (
            {"开始": "2021-02-30", "审批地": "110101"},
            [
                ("enrollments[0].start_date", "DATE_INVALID"),
                ("enrollments[0].granting_division", "PROVINCE_NOT_PERMITTED"),
            ],
        ),
    ],
)
def test_a_source_problem_does_not_hide_the_other_problems_of_its_enrollment(
    changes: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    assert sorted(problems_of(**changes)) == sorted(expected)


def test_a_problem_turns_into_the_reject_files_json() -> None:
    problem = FieldProblem("name", "NAME_MISSING", "name is required")
    assert problem.to_json() == {"field": "name", "reason": "NAME_MISSING", "message": "name is required"}


def test_a_female_record_from_a_female_id() -> None:
    record = record_of(身份证=ID_FEMALE, 性别="女", 出生="19851130", 户籍地="440106")
    assert (record.gender, record.id_number) == (Gender.FEMALE, ID_FEMALE)
