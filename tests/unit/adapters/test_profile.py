"""Tests of adapters.profile: the shipped profiles load, and every mistake in a profile names its key."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.profile import ProfileError, load_profile, parse_profile
from gateway.errors import ConfigError

PROFILES = Path(__file__).resolve().parents[3] / "adapters" / "profiles"

Mutation = Callable[[dict[str, Any]], None]


def csv_profile() -> dict[str, Any]:
    """A small valid CSV profile, as parsed TOML."""
    return {
        "source": {"name": "测试导出", "province": "440000", "format": "csv", "encoding": "gbk"},
        "format": {"header_row": 2, "total_pattern": "^合计,"},
        "record": {
            "record_id": "编号",
            "id_number": {"from": "身份证", "transforms": ["trim", "halfwidth", "upper"]},
            "name": {"from": "姓名", "transforms": ["trim"]},
            "gender": {"from": "性别", "codes": "gender"},
            "birth_date": {"from": "出生日期", "date": "YYYYMMDD"},
            "residence_division": "居住地",
            "version": {"value": 2},
        },
        "enrollments": [
            {
                "program": {"from": "类别", "codes": "program"},
                "status": {"from": "状态", "codes": "status"},
                "start_date": {"from": "开始", "date": "YYYY年M月D日"},
                "monthly_amount_fen": {"from": "金额", "amount": "yuan"},
                "granting_division": "审批地",
            }
        ],
        "codes": {
            "gender": {"男": "male", "女": "female"},
            "program": {"低保": "dibao", "特困": "extreme-poverty"},
            "status": {"在保": "active", "停保": "suspended"},
        },
    }


def fixed_width_profile() -> dict[str, Any]:
    """A small valid fixed-width profile, as parsed TOML."""
    return {
        "source": {"name": "定长", "province": "330000", "format": "fixed-width", "encoding": "gbk"},
        "format": {"record_type": [0, 1], "trailer_count": [1, 8]},
        "fields": {"编号": [1, 12], "姓名": [13, 10], "身份证号": [23, 18], "居住地": [41, 6]},
        "record": {
            "record_id": "编号",
            "id_number": "身份证号",
            "name": {"from": "姓名", "transforms": ["trim"]},
            "residence_division": "居住地",
        },
    }


def put(*path: str | int, value: object) -> Mutation:
    """A mutation setting the key at ``path``."""

    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def drop(*path: str | int) -> Mutation:
    """A mutation removing the key at ``path``."""

    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def error_of(data: dict[str, Any]) -> ProfileError:
    with pytest.raises(ProfileError) as caught:
        parse_profile(data)
    return caught.value


# --- the shipped profiles -------------------------------------------------------------------


def test_guangdong_profile_loads_with_title_lines_totals_and_one_enrollment_group() -> None:
    profile = load_profile(PROFILES / "guangdong-440000.toml")
    assert (profile.province, profile.format, profile.encoding) == ("440000", "csv", "gbk")
    assert profile.options == {"delimiter": ",", "quote": '"', "header_row": 3, "total_pattern": "^合计,"}
    assert set(profile.record) == {
        "record_id",
        "id_number",
        "name",
        "gender",
        "birth_date",
        "hukou_division",
        "residence_division",
        "household_id",
    }
    assert profile.record["id_number"].transforms == ("trim", "halfwidth", "upper")
    assert profile.record["birth_date"].date == "YYYYMMDD"
    assert profile.record["gender"].codes == {"男": 1, "女": 2}
    (group,) = profile.enrollments
    assert group["monthly_amount_fen"].amount == "yuan"
    assert group["end_date"].date == "YYYY年M月D日"
    assert group["start_date"].target == "enrollments[0].start_date"
    assert group["program"].codes == {"城市低保": 1, "农村低保": 1, "特困供养": 2, "低保边缘": 3}
    assert profile.byte_fields == {}
    assert profile.utc_offset_minutes == 480
    assert "救助证编号" in profile.source_fields
    assert "备注" not in profile.source_fields  # a column no rule reads
    assert profile.household["relation"].source == "与户主关系"


def test_zhejiang_profile_loads_with_byte_ranges_and_record_types() -> None:
    profile = load_profile(PROFILES / "zhejiang-330000.toml")
    assert (profile.province, profile.format, profile.encoding) == ("330000", "fixed-width", "gbk")
    assert profile.options == {
        "record_type": (0, 1),
        "data": "D",
        "header": "H",
        "trailer": "T",
        "trailer_count": (1, 8),
    }
    assert profile.byte_fields["姓名"] == (13, 10)
    assert profile.byte_fields["户号"] == (81, 10)
    assert len(profile.byte_fields) == 12
    assert profile.enrollments[0]["monthly_amount_fen"].amount == "fen"
    assert set(profile.source_fields) == set(profile.byte_fields)


def test_beijing_profile_loads_with_dotted_paths_and_a_datetime() -> None:
    profile = load_profile(str(PROFILES / "beijing-110000.toml"))
    assert (profile.province, profile.format, profile.encoding) == ("110000", "jsonl", "utf-8")
    assert profile.options == {}
    assert profile.record["updated_at"].kind == "datetime"
    assert profile.record["updated_at"].date == "YYYY-MM-DD HH:mm:ss"
    assert profile.enrollments[0]["program"].source == "assistance.0.type"
    assert profile.record["residence_division"].source == "household.address.division"


def test_a_valid_profile_keeps_defaults_constants_and_source_order() -> None:
    data = csv_profile()
    del data["source"]["encoding"]
    data["source"]["utc_offset"] = "-05:30"
    data["format"] = {}
    data["record"]["household_id"] = {"from": "户号", "default": "无"}
    profile = parse_profile(data, path=Path("x.toml"))
    assert profile.path == Path("x.toml")
    assert profile.encoding == "utf-8"
    assert profile.utc_offset_minutes == -330
    assert profile.options["header_row"] == 1
    assert profile.options["total_pattern"] is None
    version = profile.record["version"]
    assert (version.source, version.constant) == (None, "2")  # an integer constant is kept as text
    household = profile.record["household_id"]
    assert (household.source, household.constant) == ("户号", "无")
    # Source fields in the order the rules name them, each once.
    assert profile.source_fields[:3] == ("编号", "身份证", "姓名")
    assert len(profile.source_fields) == len(set(profile.source_fields))


def test_tsv_defaults_to_a_tab_delimiter() -> None:
    data = csv_profile()
    data["source"]["format"] = "tsv"
    assert parse_profile(data).options["delimiter"] == "\t"


def test_a_when_rule_is_kept_with_its_enrollment_group() -> None:
    data = csv_profile()
    data["enrollments"][0]["when"] = {"from": "类别", "transforms": ["trim"]}
    (group,) = parse_profile(data).enrollments
    assert group["when"].source == "类别"
    assert group["when"].target == "enrollments[0].when"


def test_a_profile_error_is_a_config_error() -> None:
    data = csv_profile()
    data["bogus"] = 1
    exc = error_of(data)
    assert isinstance(exc, ConfigError)
    assert exc.reason == "PROFILE_INVALID"


# --- every mistake names its key -----------------------------------------------------------

NAME_RULE = {"from": "姓名"}

CASES: list[tuple[str, Mutation, str, str]] = [
    ("unknown top-level key", put("recrod", value={}), "recrod", "is not a known key"),
    ("unknown source key", put("source", "charset", value="gbk"), "source.charset", "is not a known key"),
    ("missing [source]", drop("source"), "source", "is required"),
    ("missing [record]", drop("record"), "record", "is required"),
    (
        "unknown key in a rule",
        put("record", "name", value={"from": "姓名", "trnsforms": ["trim"]}),
        "record.name.trnsforms",
        "is not a known key",
    ),
    ("unknown standard field", put("record", "nickname", value="昵称"), "record.nickname", "is not a known key"),
    (
        "unknown key in an enrollment",
        put("enrollments", 0, "amount", value="金额"),
        "enrollments[0].amount",
        "is not a known key",
    ),
    ("unknown format", put("source", "format", value="parquet"), "source.format", "'parquet' is not a format"),
    ("unknown encoding", put("source", "encoding", value="big5"), "source.encoding", "'big5' is not supported"),
    (
        "unknown province",
        put("source", "province", value="990000"),
        "source.province",
        "'990000' is not a province code",
    ),
    (
        "a city is not a province",
        put("source", "province", value="440100"),
        "source.province",
        "is not a province code",
    ),
    ("missing name", drop("source", "name"), "source.name", "is required"),
    ("empty name", put("source", "name", value=""), "source.name", "must be non-empty text"),
    ("bad utc offset", put("source", "utc_offset", value="8"), "source.utc_offset", "must be like +08:00"),
    (
        "rule with neither from nor value",
        put("record", "name", value={"transforms": ["trim"]}),
        "record.name.from",
        "is required (or compose fields with template, or give a constant with value)",
    ),
    ("from not text", put("record", "name", value={"from": 3}), "record.name.from", "must be non-empty text"),
    (
        "value and default",
        put("record", "version", value={"value": 1, "default": 2}),
        "record.version.value",
        "not both",
    ),
    (
        "value and from",
        put("record", "version", value={"value": 1, "from": "版本"}),
        "record.version.value",
        "a constant takes no from",
    ),
    (
        "constant neither text nor integer",
        put("record", "version", value={"value": True}),
        "record.version.value",
        "must be text or an integer",
    ),
    (
        "rule neither text nor table",
        put("record", "name", value=["姓名"]),
        "record.name",
        "must be a source field name or a table",
    ),
    (
        "unknown transform",
        put("record", "name", value={"from": "姓名", "transforms": ["strip"]}),
        "record.name.transforms",
        "unknown transform 'strip'",
    ),
    (
        "code-kind field without codes",
        put("record", "gender", value={"from": "性别"}),
        "record.gender.codes",
        "is required",
    ),
    (
        "enrollment status without codes",
        put("enrollments", 0, "status", value="状态"),
        "enrollments[0].status.codes",
        "is required",
    ),
    (
        "codes naming a missing table",
        put("record", "gender", value={"from": "性别", "codes": "sex"}),
        "record.gender.codes",
        "names no [codes.sex] table",
    ),
    (
        "codes on a field that takes none",
        put("record", "name", value={"from": "姓名", "codes": "gender"}),
        "record.name.codes",
        "name takes no code table",
    ),
    (
        "code value that is not a national value",
        put("codes", "program", "低保", value="dibaoo"),
        "codes.program.低保",
        "'dibaoo' is not a national value",
    ),
    ("empty code table", put("codes", "status", value={}), "codes.status", "must be a non-empty table"),
    (
        "code value not text",
        put("codes", "status", "在保", value=1),
        "codes.status.在保",
        "must be the name of a national value",
    ),
    (
        "date rule without a pattern",
        put("record", "birth_date", value={"from": "出生日期"}),
        "record.birth_date.date",
        "is required: the date pattern",
    ),
    (
        "date pattern without YYYY",
        put("record", "birth_date", value={"from": "出生日期", "date": "YY-MM-DD"}),
        "record.birth_date.date",
        "needs YYYY",
    ),
    (
        "date pattern without a day",
        put("enrollments", 0, "start_date", value={"from": "开始", "date": "YYYY年M月"}),
        "enrollments[0].start_date.date",
        "needs YYYY, M or MM, and D or DD",
    ),
    (
        "time pattern on a date-only field",
        put("record", "birth_date", value={"from": "出生日期", "date": "YYYY-MM-DD HH:mm:ss"}),
        "record.birth_date.date",
        "has a time part; only updated_at takes one",
    ),
    (
        "date pattern naming the year twice",
        put("record", "birth_date", value={"from": "出生日期", "date": "YYYYMMDD-YYYY"}),
        "record.birth_date.date",
        "names the year more than once",
    ),
    (
        "date pattern naming the month as M and MM",
        put("enrollments", 0, "start_date", value={"from": "开始", "date": "YYYY-M-DD MM"}),
        "enrollments[0].start_date.date",
        "names the month more than once",
    ),
    (
        "date pattern on a field that is not a date",
        put("record", "name", value={"from": "姓名", "date": "YYYYMMDD"}),
        "record.name.date",
        "name is not a date",
    ),
    (
        "amount not yuan or fen",
        put("enrollments", 0, "monthly_amount_fen", value={"from": "金额", "amount": "jiao"}),
        "enrollments[0].monthly_amount_fen.amount",
        'must be "yuan"',
    ),
    (
        "amount on a field that is not an amount",
        put("record", "name", value={"from": "姓名", "amount": "yuan"}),
        "record.name.amount",
        "name is not an amount",
    ),
    (
        "optional is not a key (every field but the required ones may be empty)",
        put("record", "name", value={"from": "姓名", "optional": True}),
        "record.name.optional",
        "is not a known key",
    ),
    (
        "[fields] on a CSV profile",
        put("fields", value={"姓名": [0, 4]}),
        "fields",
        "byte ranges are for fixed-width sources only",
    ),
    (
        "bad total_pattern regex",
        put("format", "total_pattern", value="^合计("),
        "format.total_pattern",
        "is not a valid regular expression",
    ),
    ("two-character delimiter", put("format", "delimiter", value=";;"), "format.delimiter", "must be one character"),
    ("header_row zero", put("format", "header_row", value=0), "format.header_row", "at least 1"),
    (
        "fixed-width option on a CSV",
        put("format", "record_type", value=[0, 1]),
        "format.record_type",
        "is not a known key",
    ),
    ("enrollments not an array", put("enrollments", value={}), "enrollments", "must be an array of tables"),
    (
        "enrollment missing a required field",
        drop("enrollments", 0, "granting_division"),
        "enrollments[0].granting_division",
        "is required",
    ),
]


@pytest.mark.parametrize(("mutate", "key", "says"), [pytest.param(m, k, s, id=i) for i, m, k, s in CASES])
def test_a_profile_mistake_names_its_key(mutate: Mutation, key: str, says: str) -> None:
    data = csv_profile()
    parse_profile(copy.deepcopy(data))  # the base is valid
    mutate(data)
    exc = error_of(data)
    assert exc.field == key
    assert says in exc.message
    assert str(exc).startswith(f"field {key}: ")  # the key is said once, by the error itself


@pytest.mark.parametrize("target", ["record_id", "id_number", "name", "residence_division"])
def test_each_required_record_field_is_required(target: str) -> None:
    data = csv_profile()
    del data["record"][target]
    exc = error_of(data)
    assert exc.field == f"record.{target}"
    assert "is required" in exc.message


@pytest.mark.parametrize("key", ["data", "header", "trailer"])
def test_a_fixed_width_record_code_must_be_writable_in_the_encoding(key: str) -> None:
    data = fixed_width_profile()
    data["format"][key] = "²"  # not in GBK: the reader compares the code's bytes with each line's
    exc = error_of(data)
    assert exc.field == f"format.{key}"
    assert "cannot be written in gbk" in exc.message


def test_fixed_width_without_fields_is_refused() -> None:
    data = fixed_width_profile()
    del data["fields"]
    exc = error_of(data)
    assert exc.field == "fields"
    assert "is required" in exc.message


@pytest.mark.parametrize(
    "bad",
    [[13, 0], [-1, 10], [13], [13, 10, 2], "13-23", [1.5, 2], [True, 2], [13, "10"]],
    ids=["zero length", "negative start", "one number", "three numbers", "text", "float", "bool", "text length"],
)
def test_a_bad_byte_range_is_refused_naming_the_field(bad: object) -> None:
    data = fixed_width_profile()
    data["fields"]["姓名"] = bad
    exc = error_of(data)
    assert exc.field == "fields.姓名"
    assert "[start, length]" in exc.message


def test_a_bad_record_type_range_is_refused() -> None:
    data = fixed_width_profile()
    data["format"]["record_type"] = [0, 0]
    assert error_of(data).field == "format.record_type"


def test_an_empty_record_type_code_is_refused() -> None:
    data = fixed_width_profile()
    data["format"]["trailer"] = ""
    exc = error_of(data)
    assert exc.field == "format.trailer"
    assert "must be non-empty text" in exc.message


def test_a_fixed_width_enrollment_rule_reading_no_byte_range_is_refused() -> None:
    data = fixed_width_profile()
    data["enrollments"] = [
        {
            "program": {"from": "类型", "codes": "program"},
            "status": {"value": "1", "codes": "status"},
            "start_date": {"value": "20200101", "date": "YYYYMMDD"},
            "granting_division": "居住地",
        }
    ]
    data["codes"] = {"program": {"01": "dibao"}, "status": {"1": "active"}}
    exc = error_of(data)
    assert exc.field == "enrollments[0].program.from"
    assert "'类型' is not one of the [fields] byte ranges" in exc.message


def test_a_fixed_width_record_rule_reading_no_byte_range_names_its_key() -> None:
    data = fixed_width_profile()
    data["record"]["name"] = {"from": "名字"}
    exc = error_of(data)
    assert "'名字' is not one of the [fields] byte ranges" in exc.message
    assert exc.field == "record.name.from"


@pytest.mark.parametrize(("table", "national"), [("gender", "dibao"), ("program", "exited"), ("status", "male")])
def test_a_code_table_of_another_kind_is_refused(table: str, national: str) -> None:
    data = csv_profile()
    local = next(iter(data["codes"][table]))
    data["codes"][table][local] = national
    exc = error_of(data)
    assert exc.field is not None
    assert exc.field.startswith(f"codes.{table}.")  # names the entry
    assert "is not a" in exc.message


def test_xml_needs_a_record_path() -> None:
    data = csv_profile()
    data["source"]["format"] = "xml"
    del data["format"]
    exc = error_of(data)
    assert exc.field == "format.record_path"
    assert "is required" in exc.message


def test_invalid_toml_is_refused_naming_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[source]\nname = "未闭合\n', encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.field == "profile"
    assert "is not valid TOML" in caught.value.message
    assert str(path) in caught.value.message


def test_a_missing_profile_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.field == "profile"
    assert caught.value.reason == "FILE_MISSING"
    assert "does not exist" in caught.value.message


def test_a_profile_file_with_a_mistake_names_the_key(tmp_path: Path) -> None:
    text = (PROFILES / "guangdong-440000.toml").read_text(encoding="utf-8")
    path = tmp_path / "gd.toml"
    path.write_text(
        text.replace('gender = { from = "性别", codes = "gender" }', 'gender = { from = "性别", codes = "sex" }')
    )
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.field == "record.gender.codes"
    assert "record.gender.codes: names no [codes.sex] table" in str(caught.value)
    assert str(caught.value).endswith("[PROFILE_INVALID]")
