"""Tests of adapters.run and ``hutong adapt``: every row of every file accounted for, records the hub can parse."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from google.protobuf import json_format
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.mapping import FieldProblem
from adapters.profile import Profile, load_profile
from adapters.run import Reject, Summary, adapt, record_to_json
from gateway.cli import main
from gateway.domain.divisions import MAINLAND_PROVINCES, counties_of
from gateway.domain.identity import make_id_number
from gateway.domain.model import Enrollment, EnrollmentStatus, Gender, PersonRecord, Program
from gateway.domain.records import MAX_MONTHLY_AMOUNT_FEN
from hutong.v1 import person_pb2

ADAPTERS = Path(__file__).resolve().parents[3] / "adapters"
PROFILES = ADAPTERS / "profiles"
SAMPLES = ADAPTERS / "samples"
GD_PROFILE = PROFILES / "guangdong-440000.toml"
ZJ_PROFILE = PROFILES / "zhejiang-330000.toml"
BJ_PROFILE = PROFILES / "beijing-110000.toml"
GD_SAMPLE = SAMPLES / "guangdong-440000.csv"
ZJ_SAMPLE = SAMPLES / "zhejiang-330000.dat"
BJ_SAMPLE = SAMPLES / "beijing-110000.jsonl"
TODAY = dt.date(2026, 11, 30)
CST = dt.timezone(dt.timedelta(hours=8))


@dataclasses.dataclass
class Outcome:
    summary: Summary
    records: list[PersonRecord]
    rejects: list[Reject]

    @property
    def by_id(self) -> dict[str, PersonRecord]:
        return {r.record_id: r for r in self.records}


def run(profile: Profile | Path, *paths: Path) -> Outcome:
    if isinstance(profile, Path):
        profile = load_profile(profile)
    records: list[PersonRecord] = []
    rejects: list[Reject] = []
    summary = adapt(profile, paths, on_record=records.append, on_reject=rejects.append, today=TODAY)
    return Outcome(summary, records, rejects)


def reject_outline(rejects: list[Reject]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    return [(r.location, r.record_id, [(p.field, p.reason) for p in r.problems]) for r in rejects]


# --- the shipped samples ---------------------------------------------------------------------


def test_the_guangdong_sample_is_accounted_for_row_by_row() -> None:
    out = run(GD_PROFILE, GD_SAMPLE)
    (file,) = out.summary.files
    assert (file.rows_read, file.produced, file.rejected) == (25, 18, 7)
    assert file.structure == Counter({"header": 3, "total": 1})
    assert file.failure == ""
    assert reject_outline(out.rejects) == [
        ("line 7", "GDJZ000004", [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")]),
        ("line 13", "GDJZ000010", [("residence_division", "PROVINCE_NOT_PERMITTED")]),
        ("line 15", "GDJZ000012", [("enrollments[0].start_date", "DATE_INVALID")]),
        ("line 17", "GDJZ000014", [("enrollments[0].program", "CODE_UNKNOWN")]),
        (
            "line 19",
            "GDJZ000016",
            [("name", "NAME_INVALID"), ("enrollments[0].monthly_amount_fen", "AMOUNT_NEGATIVE")],
        ),
        ("line 28", "", [("row", "COLUMN_COUNT")]),
        ("line 29", "", [("row", "ENCODING_INVALID")]),
    ]
    messages = {r.location: r.problems[0].message for r in out.rejects}
    assert messages["line 7"].startswith("check character does not match (position 18); single-typo corrections")
    assert "440106200401119216" in messages["line 7"]  # one of the proposals, none applied
    assert messages["line 15"] == "'2021年2月30日' is not a calendar date"
    assert messages["line 17"] == "'助学补贴' is not in the program code table of the profile"
    assert messages["line 28"] == "line 28 has 19 columns; the header has 17"
    assert out.rejects[6].raw.startswith("25,GDJZ000025,GD00015,\\xff\\xfe,")
    assert [r.record_id for r in out.records] == [
        f"GDJZ{n:06d}" for n in (1, 2, 3, 5, 6, 7, 8, 9, 11, 13, 15, 17, 18, 19, 20, 21, 22, 23)
    ]
    assert out.summary.reasons == Counter(
        {
            "ID_NUMBER_BAD_CHECK_CHARACTER": 1,
            "PROVINCE_NOT_PERMITTED": 1,
            "DATE_INVALID": 1,
            "CODE_UNKNOWN": 1,
            "NAME_INVALID": 1,
            "AMOUNT_NEGATIVE": 1,
            "COLUMN_COUNT": 1,
            "ENCODING_INVALID": 1,
        }
    )


def test_the_guangdong_sample_gives_the_records_it_states() -> None:
    records = run(GD_PROFILE, GD_SAMPLE).by_id
    assert records["GDJZ000001"] == PersonRecord(
        record_id="GDJZ000001",
        version=1,
        id_number="440103196709156699",
        name="何伟",
        gender=Gender.MALE,
        birth_date=dt.date(1967, 9, 15),
        hukou_division="440103",
        residence_division="440103",
        household_id="GD00001",
        enrollments=(Enrollment(Program.DIBAO, EnrollmentStatus.ACTIVE, dt.date(2025, 3, 19), None, 76_600, "440103"),),
        updated_at_us=0,
    )
    # A 15-digit number becomes 18; full-width digits become ASCII.
    assert records["GDJZ000006"].id_number == make_id_number("440103", dt.date(1965, 3, 14), 123)
    assert records["GDJZ000006"].enrollments[0].end_date == dt.date(2016, 11, 5)
    assert records["GDJZ000006"].enrollments[0].monthly_amount_fen == 30_950
    assert records["GDJZ000008"].id_number == "440111195105024199"
    assert records["GDJZ000017"].id_number == "44011519740719290X"
    assert records["GDJZ000013"].enrollments[0].status == EnrollmentStatus.EXITED
    assert records["GDJZ000018"].enrollments[0].monthly_amount_fen == 106_950
    # The row whose remark holds a line break is one record.
    assert records["GDJZ000023"].name == "黄建华"


def test_the_zhejiang_sample_is_accounted_for_row_by_row() -> None:
    out = run(ZJ_PROFILE, ZJ_SAMPLE)
    (file,) = out.summary.files
    assert (file.rows_read, file.produced, file.rejected) == (23, 18, 5)
    assert file.structure == Counter({"header": 1, "trailer": 1})
    assert file.failure == ""  # the trailer's count, 23, matches
    assert reject_outline(out.rejects) == [
        ("line 4", "ZJ0000000003", [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")]),
        ("line 6", "ZJ0000000005", [("enrollments[0].program", "CODE_UNKNOWN")]),
        ("line 8", "", [("row", "ENCODING_INVALID")]),
        ("line 11", "", [("row", "RECORD_TYPE_UNKNOWN")]),
        ("line 24", "", [("row", "LINE_TOO_SHORT")]),
    ]
    messages = [r.problems[0].message for r in out.rejects]
    assert messages[1] == "'09' is not in the program code table of the profile"
    assert messages[2] == "field 姓名 of line 8 is not valid gbk: a character cut in half by its byte range?"
    assert messages[3] == "record type 'X' is not a data, header or trailer type"
    assert messages[4] == "line 24 has 30 bytes; field 身份证号 needs 91"
    assert [r.record_id for r in out.records] == [
        f"ZJ{n:010d}" for n in (1, 2, 4, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21)
    ]


def test_the_zhejiang_sample_gives_the_records_it_states() -> None:
    records = run(ZJ_PROFILE, ZJ_SAMPLE).by_id
    assert records["ZJ0000000001"] == PersonRecord(
        record_id="ZJ0000000001",
        version=1,
        id_number="330102196107185378",
        name="徐伟",
        gender=Gender.MALE,
        birth_date=None,
        hukou_division="",
        residence_division="330102",
        household_id="ZJH0000001",
        enrollments=(Enrollment(Program.DIBAO, EnrollmentStatus.ACTIVE, dt.date(2025, 6, 22), None, 80_955, "330102"),),
        updated_at_us=0,
    )
    assert records["ZJ0000000011"].enrollments == (
        Enrollment(
            Program.EXTREME_POVERTY,
            EnrollmentStatus.SUSPENDED,
            dt.date(2022, 4, 23),
            dt.date(2023, 4, 23),
            114_876,
            "330110",
        ),
    )
    assert records["ZJ0000000009"].id_number == make_id_number("330105", dt.date(1962, 8, 8), 456)


def test_the_beijing_sample_is_accounted_for_row_by_row() -> None:
    out = run(BJ_PROFILE, BJ_SAMPLE)
    (file,) = out.summary.files
    assert (file.rows_read, file.produced, file.rejected) == (19, 13, 6)
    assert file.structure == Counter()
    assert reject_outline(out.rejects) == [
        ("line 2", "BJ-000002", [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")]),
        ("line 4", "BJ-000004", [("enrollments[0].status", "CODE_UNKNOWN")]),
        ("line 6", "BJ-000006", [("enrollments[0].start_date", "DATE_INVALID")]),
        ("line 8", "BJ-000008", [("name", "NAME_MISSING")]),
        ("line 10", "", [("row", "JSON_INVALID")]),
        ("line 12", "", [("row", "JSON_INVALID")]),
    ]
    assert out.rejects[5].problems[0].message == "line 12 is not a JSON object"
    assert [r.record_id for r in out.records] == [
        f"BJ-{n:06d}" for n in (1, 3, 5, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17)
    ]


def test_the_beijing_sample_gives_the_records_it_states() -> None:
    records = run(BJ_PROFILE, BJ_SAMPLE).by_id
    updated = dt.datetime(2026, 11, 8, 14, 30, tzinfo=CST)
    assert records["BJ-000001"] == PersonRecord(
        record_id="BJ-000001",
        version=1,
        id_number="110101196712120268",
        name="刘强",
        gender=Gender.FEMALE,
        birth_date=None,
        hukou_division="",
        residence_division="110101",
        household_id="BJH00001",
        enrollments=(
            Enrollment(Program.DIBAO_MARGINAL, EnrollmentStatus.ACTIVE, dt.date(2025, 11, 1), None, 181_600, "110101"),
        ),
        updated_at_us=int(updated.timestamp()) * 1_000_000,
    )
    assert records["BJ-000007"].enrollments[0].status == EnrollmentStatus.SUSPENDED
    assert records["BJ-000013"].enrollments[0].monthly_amount_fen == 124_150


def test_on_row_is_called_once_per_data_row_and_totals_add_up_over_files() -> None:
    calls: list[None] = []
    summary = adapt(
        load_profile(GD_PROFILE),
        [GD_SAMPLE, GD_SAMPLE],
        on_record=lambda r: None,
        on_reject=lambda r: None,
        on_row=lambda: calls.append(None),
        today=TODAY,
    )
    assert len(calls) == summary.rows_read == 50
    assert (summary.produced, summary.rejected) == (36, 14)
    assert summary.reasons["COLUMN_COUNT"] == 2
    assert summary.failed_files == []


# --- the record and reject files --------------------------------------------------------------


def all_sample_records() -> list[PersonRecord]:
    return [
        *run(GD_PROFILE, GD_SAMPLE).records,
        *run(ZJ_PROFILE, ZJ_SAMPLE).records,
        *run(BJ_PROFILE, BJ_SAMPLE).records,
    ]


def assert_parses_back(record: PersonRecord) -> None:
    """record_to_json parses as a hutong.v1.PersonRecord holding the same values."""
    message = json_format.Parse(record_to_json(record), person_pb2.PersonRecord())
    assert message.record_id == record.record_id
    assert message.version == record.version
    assert message.id_number == record.id_number
    assert message.name == record.name
    assert message.gender == record.gender
    if record.birth_date is None:
        assert not message.HasField("birth_date")
    else:
        b = message.birth_date
        assert dt.date(b.year, b.month, b.day) == record.birth_date
    assert message.hukou_division == record.hukou_division
    assert message.residence_division == record.residence_division
    assert message.household_id == record.household_id
    assert len(message.enrollments) == len(record.enrollments)
    for got, want in zip(message.enrollments, record.enrollments, strict=True):
        assert (got.program, got.status) == (want.program, want.status)
        assert dt.date(got.start_date.year, got.start_date.month, got.start_date.day) == want.start_date
        if want.end_date is None:
            assert not got.HasField("end_date")
        else:
            assert dt.date(got.end_date.year, got.end_date.month, got.end_date.day) == want.end_date
        assert got.monthly_amount_fen == want.monthly_amount_fen
        assert got.granting_division == want.granting_division
    if record.updated_at_us:
        assert message.updated_at.seconds * 1_000_000 + message.updated_at.nanos // 1000 == record.updated_at_us
    else:
        assert not message.HasField("updated_at")


def test_every_sample_record_parses_back_with_json_format() -> None:
    records = all_sample_records()
    assert len(records) == 18 + 18 + 13
    for record in records:
        assert_parses_back(record)


def test_record_to_json_writes_the_protobuf_json_mapping() -> None:
    record = run(BJ_PROFILE, BJ_SAMPLE).by_id["BJ-000001"]
    assert json.loads(record_to_json(record)) == {
        "recordId": "BJ-000001",
        "version": "1",
        "idNumber": "110101196712120268",
        "name": "刘强",
        "gender": "GENDER_FEMALE",
        "residenceDivision": "110101",
        "householdId": "BJH00001",
        "enrollments": [
            {
                "program": "PROGRAM_DIBAO_MARGINAL",
                "status": "ENROLLMENT_STATUS_ACTIVE",
                "startDate": {"year": 2025, "month": 11, "day": 1},
                "monthlyAmountFen": "181600",
                "grantingDivision": "110101",
            }
        ],
        "updatedAt": "2026-11-08T06:30:00Z",
    }
    assert "刘强" in record_to_json(record)  # UTF-8, not \u escapes


def test_reject_to_json_is_one_line_with_every_problem() -> None:
    reject = Reject(
        "export.csv",
        "line 7",
        '4,GDJZ000004,"周洋"',
        (FieldProblem("name", "NAME_INVALID", "bad name"), FieldProblem("row", "X", "y")),
        "GDJZ000004",
    )
    line = reject.to_json()
    assert "\n" not in line
    assert "周洋" in line
    assert list(json.loads(line)) == ["file", "location", "record_id", "errors", "raw"]
    assert json.loads(line) == {
        "file": "export.csv",
        "location": "line 7",
        "record_id": "GDJZ000004",
        "errors": [
            {"field": "name", "reason": "NAME_INVALID", "message": "bad name"},
            {"field": "row", "reason": "X", "message": "y"},
        ],
        "raw": '4,GDJZ000004,"周洋"',
    }
    without_id = dataclasses.replace(reject, record_id="", raw="a\nb")
    assert "record_id" not in json.loads(without_id.to_json())
    assert json.loads(without_id.to_json())["raw"] == "a\nb"


# --- files that break --------------------------------------------------------------------------


def test_a_missing_file_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    out = run(GD_PROFILE, missing, GD_SAMPLE)
    first, second = out.summary.files
    assert first.path == str(missing)
    assert "cannot open" in first.failure
    assert (first.rows_read, first.produced, first.rejected) == (0, 0, 0)
    assert (second.rows_read, second.produced, second.rejected) == (25, 18, 7)
    assert second.failure == ""
    assert out.summary.failed_files == [first]


def renamed_column(tmp_path: Path) -> Path:
    content = GD_SAMPLE.read_bytes().replace("姓名".encode("gbk"), "名字".encode("gbk"), 1)
    path = tmp_path / "renamed.csv"
    path.write_bytes(content)
    return path


def test_a_file_missing_a_mapped_column_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    out = run(GD_PROFILE, renamed_column(tmp_path), GD_SAMPLE)
    first, second = out.summary.files
    assert "has no field '姓名', which the profile maps" in first.failure
    assert "名字" in first.failure
    assert (first.produced, first.rejected) == (0, 0)
    assert (second.rows_read, second.produced, second.rejected, second.failure) == (25, 18, 7, "")
    assert out.summary.failed_files == [first]


def test_a_file_missing_a_mapped_column_keeps_the_accounting(tmp_path: Path) -> None:
    out = run(GD_PROFILE, renamed_column(tmp_path))
    (file,) = out.summary.files
    assert file.failure
    assert file.rows_read == file.produced + file.rejected
    assert out.summary.rows_read == out.summary.produced + out.summary.rejected


def test_a_csv_without_its_header_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "titles.csv"
    path.write_bytes("标题一\n标题二\n".encode("gbk"))
    (file,) = run(GD_PROFILE, path).summary.files
    assert "has no header line 3" in file.failure
    assert file.structure == Counter({"header": 2})
    assert file.rows_read == 0


def test_a_trailer_count_that_disagrees_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "wrong-count.dat"
    path.write_bytes(ZJ_SAMPLE.read_bytes().replace(b"T00000023", b"T00000030"))
    out = run(ZJ_PROFILE, path)
    (file,) = out.summary.files
    assert file.failure == "the trailer says 30 data records; the file holds 23"
    assert (file.rows_read, file.produced, file.rejected) == (23, 18, 5)
    assert out.summary.failed_files == [file]


# --- property: round trip ------------------------------------------------------------------------

NAME_CHARS = (
    "张王李赵刘陈杨黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯董程曹袁邓许沈曾彭吕苏卢"
    "蒋蔡魏叶伟芳娜秀英敏静丽强磊军洋勇艳杰涛明超霞平刚兰"
)
REMARK_CHARS = '备注,"住址XX路 ，'
MAINLAND_COUNTIES = sorted(c for p in sorted(MAINLAND_PROVINCES) for c in counties_of(p)[:5])
PROGRAMS = (Program.DIBAO, Program.EXTREME_POVERTY, Program.DIBAO_MARGINAL)

#: The column names of the Guangdong layout, as the sample writes them (its third line).
GD_HEADER = GD_SAMPLE.read_bytes().split(b"\n")[2].decode("gbk").split(",")
GD_GENDER = {Gender.MALE: "男", Gender.FEMALE: "女"}
GD_PROGRAM = {Program.DIBAO: "农村低保", Program.EXTREME_POVERTY: "特困供养", Program.DIBAO_MARGINAL: "低保边缘"}
GD_STATUS = {EnrollmentStatus.ACTIVE: "在保", EnrollmentStatus.SUSPENDED: "停保", EnrollmentStatus.EXITED: "退出"}
ZJ_GENDER = {Gender.MALE: "1", Gender.FEMALE: "2"}
ZJ_PROGRAM = {Program.DIBAO: "01", Program.EXTREME_POVERTY: "02", Program.DIBAO_MARGINAL: "03"}
ZJ_STATUS = {EnrollmentStatus.ACTIVE: "1", EnrollmentStatus.SUSPENDED: "2", EnrollmentStatus.EXITED: "3"}
BJ_GENDER = {Gender.MALE: "M", Gender.FEMALE: "F"}
BJ_PROGRAM = {Program.DIBAO: "DB", Program.EXTREME_POVERTY: "TK", Program.DIBAO_MARGINAL: "BY"}
BJ_STATUS = {EnrollmentStatus.ACTIVE: "NORMAL", EnrollmentStatus.SUSPENDED: "STOPPED"}


@dataclasses.dataclass(frozen=True)
class Person:
    """One person as a province states it; each layout writes it in its own way."""

    n: int
    id_number: str
    birth: dt.date
    name: str
    hukou: str
    residence: str
    program: Program
    status: EnrollmentStatus
    start: dt.date
    end: dt.date | None
    fen: int
    granting: str
    updated: dt.datetime
    remark: str

    @property
    def gender(self) -> Gender:
        return Gender.MALE if int(self.id_number[16]) % 2 else Gender.FEMALE

    @property
    def household(self) -> str:
        return f"H{self.n // 2:05d}"

    def enrollment(self) -> Enrollment:
        return Enrollment(self.program, self.status, self.start, self.end, self.fen, self.granting)


@st.composite
def people(
    draw: st.DrawFn, province: str, statuses: tuple[EnrollmentStatus, ...], remark_breaks: bool = True
) -> list[Person]:
    """One to six valid persons living and assisted in ``province``."""
    own = counties_of(province)
    out = []
    for n in range(1, draw(st.integers(min_value=1, max_value=6)) + 1):
        birth = draw(st.dates(dt.date(1930, 1, 1), dt.date(2010, 12, 31)))
        start = draw(st.dates(dt.date(2005, 1, 1), dt.date(2025, 12, 31)))
        length = draw(st.none() | st.integers(min_value=0, max_value=1000))
        updated = draw(st.datetimes(dt.datetime(2020, 1, 1), dt.datetime(2025, 12, 31)))
        remark_alphabet = REMARK_CHARS + ("\n" if remark_breaks else "")
        out.append(
            Person(
                n=n,
                id_number=make_id_number(
                    draw(st.sampled_from(MAINLAND_COUNTIES)), birth, draw(st.integers(min_value=0, max_value=999))
                ),
                birth=birth,
                name=draw(st.text(NAME_CHARS, min_size=2, max_size=5)),
                hukou=draw(st.sampled_from(MAINLAND_COUNTIES)),
                residence=draw(st.sampled_from(own)),
                program=draw(st.sampled_from(PROGRAMS)),
                status=draw(st.sampled_from(statuses)),
                start=start,
                end=None if length is None else start + dt.timedelta(days=length),
                fen=draw(st.integers(min_value=0, max_value=MAX_MONTHLY_AMOUNT_FEN)),
                granting=draw(st.sampled_from(own)),
                updated=updated.replace(microsecond=0),
                remark=draw(st.text(remark_alphabet, max_size=8)),
            )
        )
    return out


def expected(p: Person, record_id: str, **changes: Any) -> PersonRecord:
    """The record a layout should give for ``p``: what every layout states, and ``changes``."""
    base = PersonRecord(
        record_id=record_id,
        version=1,
        id_number=p.id_number,
        name=p.name,
        gender=p.gender,
        birth_date=None,
        hukou_division="",
        residence_division=p.residence,
        household_id=p.household,
        enrollments=(p.enrollment(),),
        updated_at_us=0,
    )
    return dataclasses.replace(base, **changes)


def chinese_date(day: dt.date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def yuan(fen: int) -> str:
    whole = f"{fen // 100:,}"
    return whole if fen % 100 == 0 else f"{whole}.{fen % 100:02d}"


def guangdong_csv(persons: list[Person]) -> bytes:
    """The Guangdong layout: two title lines, the header, rows, a totals row; GBK."""
    buffer = io.StringIO()
    buffer.write("广东省社会救助信息系统 低保对象导出\n导出时间：2026年11月28日\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(GD_HEADER)
    for p in persons:
        writer.writerow(
            [
                str(p.n),
                f"GDJZ{p.n:06d}",
                p.household,
                p.name,
                GD_GENDER[p.gender],
                p.id_number,
                p.birth.strftime("%Y%m%d"),
                p.hukou,
                p.residence,
                "户主",
                GD_PROGRAM[p.program],
                GD_STATUS[p.status],
                chinese_date(p.start),
                "" if p.end is None else chinese_date(p.end),
                yuan(p.fen),
                p.granting,
                p.remark,
            ]
        )
    buffer.write(f"合计,,,,,,,,,,,,,,{len(persons)}人,,\n")
    return buffer.getvalue().encode("gbk")


def guangdong_record(p: Person) -> PersonRecord:
    return expected(p, f"GDJZ{p.n:06d}", birth_date=p.birth, hukou_division=p.hukou)


def padded(text: str, width: int) -> bytes:
    raw = text.encode("gbk")
    assert len(raw) <= width
    return raw + b" " * (width - len(raw))


def zhejiang_dat(persons: list[Person]) -> bytes:
    """The Zhejiang layout: a header record, data records of GBK byte widths, a trailer with the count."""
    lines = [b"H" + padded("浙江省民政救助系统数据交换", 40) + b"20261128"]
    for p in persons:
        lines.append(
            b"D"
            + padded(f"ZJ{p.n:010d}", 12)
            + padded(p.name, 10)
            + p.id_number.encode()
            + ZJ_GENDER[p.gender].encode()
            + p.residence.encode()
            + ZJ_PROGRAM[p.program].encode()
            + ZJ_STATUS[p.status].encode()
            + p.start.strftime("%Y%m%d").encode()
            + (b" " * 8 if p.end is None else p.end.strftime("%Y%m%d").encode())
            + f"{p.fen:08d}".encode()
            + p.granting.encode()
            + padded(p.household, 10)
        )
    lines.append(f"T{len(persons):08d}".encode())
    return b"\n".join(lines) + b"\n"


def zhejiang_record(p: Person) -> PersonRecord:
    return expected(p, f"ZJ{p.n:010d}")


def beijing_jsonl(persons: list[Person]) -> bytes:
    """The Beijing layout: one nested JSON object a line, amounts as JSON numbers of yuan."""
    lines = []
    for p in persons:
        obj: dict[str, Any] = {
            "serial": f"BJ-{p.n:06d}",
            "person": {"name": p.name, "idCard": p.id_number, "sex": BJ_GENDER[p.gender]},
            "household": {"id": p.household, "address": {"division": p.residence}},
            "assistance": [
                {
                    "type": BJ_PROGRAM[p.program],
                    "state": BJ_STATUS[p.status],
                    "from": p.start.isoformat(),
                    "to": None if p.end is None else p.end.isoformat(),
                    "amount": p.fen / 100,
                    "office": p.granting,
                }
            ],
            "updated": p.updated.strftime("%Y-%m-%d %H:%M:%S"),
        }
        lines.append(json.dumps(obj, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def beijing_record(p: Person) -> PersonRecord:
    updated_us = int(p.updated.replace(tzinfo=CST).timestamp()) * 1_000_000
    return expected(p, f"BJ-{p.n:06d}", updated_at_us=updated_us)


ALL_STATUSES = (EnrollmentStatus.ACTIVE, EnrollmentStatus.SUSPENDED, EnrollmentStatus.EXITED)
BJ_STATUSES = (EnrollmentStatus.ACTIVE, EnrollmentStatus.SUSPENDED)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def profiles() -> dict[str, Profile]:
    return {"gd": load_profile(GD_PROFILE), "zj": load_profile(ZJ_PROFILE), "bj": load_profile(BJ_PROFILE)}


def adapt_bytes(profile: Profile, content: bytes, suffix: str) -> Outcome:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"export{suffix}"
        path.write_bytes(content)
        return run(profile, path)


@PROPERTY
@given(persons=people("440000", ALL_STATUSES))
def test_guangdong_csv_round_trip(profiles: dict[str, Profile], persons: list[Person]) -> None:
    out = adapt_bytes(profiles["gd"], guangdong_csv(persons), ".csv")
    assert out.rejects == []
    assert out.records == [guangdong_record(p) for p in persons]
    (file,) = out.summary.files
    assert file.structure == Counter({"header": 3, "total": 1})
    assert file.failure == ""


@PROPERTY
@given(persons=people("330000", ALL_STATUSES))
def test_zhejiang_fixed_width_round_trip(profiles: dict[str, Profile], persons: list[Person]) -> None:
    out = adapt_bytes(profiles["zj"], zhejiang_dat(persons), ".dat")
    assert out.rejects == []
    assert out.records == [zhejiang_record(p) for p in persons]
    (file,) = out.summary.files
    assert file.structure == Counter({"header": 1, "trailer": 1})
    assert file.failure == ""  # the trailer's count matches


@PROPERTY
@given(persons=people("110000", BJ_STATUSES))
def test_beijing_json_lines_round_trip(profiles: dict[str, Profile], persons: list[Person]) -> None:
    out = adapt_bytes(profiles["bj"], beijing_jsonl(persons), ".jsonl")
    assert out.rejects == []
    assert out.records == [beijing_record(p) for p in persons]
    for record in out.records:
        assert_parses_back(record)


# --- property: accounting under damage -------------------------------------------------------------

BAD_BYTES = (b"\xff", b"\x80", b"\x81\x20", b"\xfe\x7f")
#: (operation, which line, where in it, which payload or other line)
Damage = tuple[str, int, int, int]
ALL_DAMAGE = ("cut", "invalid", "columns", "quote", "nodelim", "swap", "split", "blank")
#: Damage that keeps every line's count of quotes even (for CSV whose remarks hold no line break).
QUOTE_SAFE_DAMAGE = ("cut-keeping-quotes", "invalid", "columns", "nodelim", "swap", "blank")


def damages(kinds: tuple[str, ...]) -> st.SearchStrategy[list[Damage]]:
    one = st.tuples(st.sampled_from(kinds), st.integers(0, 99), st.integers(0, 999), st.integers(0, 99))
    return st.lists(one, min_size=1, max_size=5)


def damage(content: bytes, first_data_line: int, harm: list[Damage]) -> bytes:
    """``content`` with each damage applied to a line from ``first_data_line`` (0-based) on."""
    lines = content.split(b"\n")[:-1]
    for op, which, where, other in harm:
        count = len(lines) - first_data_line
        if count <= 0:
            break
        i = first_data_line + which % count
        line = lines[i]
        pos = where % (len(line) + 1)
        if op == "cut":
            lines[i] = line[:pos]
        elif op == "cut-keeping-quotes":
            lines[i] = line[:pos] + b'"' * line[pos:].count(b'"')
        elif op == "invalid":
            lines[i] = line[:pos] + BAD_BYTES[other % len(BAD_BYTES)] + line[pos:]
        elif op == "columns":
            lines[i] = line + b",x,,y"
        elif op == "quote":
            lines[i] = line[:pos] + b'"' + line[pos:]
        elif op == "nodelim":
            k = line.find(b",", pos)
            k = line.rfind(b",") if k < 0 else k
            k = k if k >= 0 else min(pos, len(line) - 1)
            lines[i] = line[:k] + line[k + 1 :]
        elif op == "swap":
            j = first_data_line + other % count
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "split":
            lines[i : i + 1] = [line[:pos], line[pos:]]
        elif op == "blank":
            lines.insert(i, b"")
    return b"\n".join(lines) + b"\n"


def assert_accounted(out: Outcome, content: bytes) -> None:
    (file,) = out.summary.files
    assert file.rows_read == file.produced + file.rejected
    assert (len(out.records), len(out.rejects)) == (file.produced, file.rejected)
    assert all(reject.problems for reject in out.rejects)
    assert all(p.reason and p.field and p.message for reject in out.rejects for p in reject.problems)
    assert file.failure == "" or file.failure.startswith("the trailer says")
    assert file.rows_read + sum(file.structure.values()) <= content.count(b"\n")
    for record in out.records:
        assert_parses_back(record)


EXAMPLE_PERSONS = [
    Person(
        n=n,
        id_number=make_id_number("440106", dt.date(1980, 1, n), 100 + n),
        birth=dt.date(1980, 1, n),
        name="张三",
        hukou="440106",
        residence="440106",
        program=Program.DIBAO,
        status=EnrollmentStatus.ACTIVE,
        start=dt.date(2020, 1, 1),
        end=None,
        fen=88_000,
        granting="440106",
        updated=dt.datetime(2026, 1, 1, 8, 0),
        remark="",
    )
    for n in (1, 2, 3)
]


@PROPERTY
@given(persons=people("440000", ALL_STATUSES, remark_breaks=False), harm=damages(QUOTE_SAFE_DAMAGE))
def test_guangdong_csv_accounting_holds_under_damage(
    profiles: dict[str, Profile], persons: list[Person], harm: list[Damage]
) -> None:
    content = damage(guangdong_csv(persons), 3, harm)
    assert_accounted(adapt_bytes(profiles["gd"], content, ".csv"), content)


@PROPERTY
@given(persons=people("440000", ALL_STATUSES), harm=damages(ALL_DAMAGE))
@example(persons=EXAMPLE_PERSONS, harm=[("quote", 0, 30, 0), ("quote", 1, 30, 0)])
def test_guangdong_csv_accounting_holds_under_any_damage(
    profiles: dict[str, Profile], persons: list[Person], harm: list[Damage]
) -> None:
    content = damage(guangdong_csv(persons), 3, harm)
    assert_accounted(adapt_bytes(profiles["gd"], content, ".csv"), content)


@PROPERTY
@given(persons=people("330000", ALL_STATUSES), harm=damages(ALL_DAMAGE))
def test_zhejiang_fixed_width_accounting_holds_under_damage(
    profiles: dict[str, Profile], persons: list[Person], harm: list[Damage]
) -> None:
    content = damage(zhejiang_dat(persons), 1, harm)
    assert_accounted(adapt_bytes(profiles["zj"], content, ".dat"), content)


@PROPERTY
@given(persons=people("110000", BJ_STATUSES), harm=damages(ALL_DAMAGE))
def test_beijing_json_lines_accounting_holds_under_damage(
    profiles: dict[str, Profile], persons: list[Person], harm: list[Damage]
) -> None:
    content = damage(beijing_jsonl(persons), 0, harm)
    assert_accounted(adapt_bytes(profiles["bj"], content, ".jsonl"), content)


# --- hutong adapt ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _keep_logging_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``main`` configures structlog to the (captured) stderr; give later tests back what they had.

    Rich wraps its summary at the terminal width; a wide one keeps each line whole for the asserts.
    """
    monkeypatch.setenv("COLUMNS", "400")
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_cli_adapt_writes_records_and_rejects_and_exits_4_on_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rej = tmp_path / "records.jsonl", tmp_path / "rejects.jsonl"
    code = main(["adapt", "--profile", str(GD_PROFILE), str(GD_SAMPLE), "-o", str(out), "--rejects", str(rej)])
    assert code == 4
    records, rejects = lines_of(out), lines_of(rej)
    assert (len(records), len(rejects)) == (18, 7)
    for line in records:
        json_format.Parse(line, person_pb2.PersonRecord())
    assert [json.loads(line)["location"] for line in rejects] == [
        "line 7",
        "line 13",
        "line 15",
        "line 17",
        "line 19",
        "line 28",
        "line 29",
    ]
    err = capsys.readouterr().err
    assert "rows read 25 = records 18 + rejected 7" in err


def test_cli_adapt_exits_0_for_a_clean_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "clean.csv"
    source.write_bytes(guangdong_csv(EXAMPLE_PERSONS))
    out, rej = tmp_path / "records.jsonl", tmp_path / "rejects.jsonl"
    code = main(["adapt", "--profile", str(GD_PROFILE), str(source), "-o", str(out), "--rejects", str(rej)])
    assert code == 0
    assert len(lines_of(out)) == 3
    assert lines_of(rej) == []
    assert "rows read 3 = records 3 + rejected 0" in capsys.readouterr().err


def test_cli_adapt_writes_records_to_stdout_without_o(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["adapt", "--profile", str(BJ_PROFILE), str(BJ_SAMPLE)])
    assert code == 4
    captured = capsys.readouterr()
    records = captured.out.splitlines()
    assert len(records) == 13
    assert json.loads(records[0])["recordId"] == "BJ-000001"
    assert "line 10: row: JSON_INVALID" in captured.err  # the first rejects are shown without --rejects


def test_cli_adapt_check_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, rej = tmp_path / "records.jsonl", tmp_path / "rejects.jsonl"
    code = main(
        ["adapt", "--check", "--profile", str(ZJ_PROFILE), str(ZJ_SAMPLE), "-o", str(out), "--rejects", str(rej)]
    )
    assert code == 4
    assert not out.exists()
    assert not rej.exists()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "rows read 23 = records 18 + rejected 5" in captured.err


def test_cli_adapt_exits_4_when_a_file_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "clean.csv"
    source.write_bytes(guangdong_csv(EXAMPLE_PERSONS))
    out = tmp_path / "records.jsonl"
    code = main(["adapt", "--profile", str(GD_PROFILE), str(tmp_path / "missing.csv"), str(source), "-o", str(out)])
    assert code == 4
    assert len(lines_of(out)) == 3  # the readable file is still adapted


def test_cli_profile_lint_accepts_a_good_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["adapt", "profile-lint", str(ZJ_PROFILE)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    assert "浙江省民政救助系统" in out


def test_cli_profile_lint_exits_3_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        GD_PROFILE.read_text(encoding="utf-8").replace('amount = "yuan"', 'amount = "jiao"'), encoding="utf-8"
    )
    assert main(["adapt", "profile-lint", str(bad)]) == 3
    err = capsys.readouterr().err
    assert "enrollments[0].monthly_amount_fen.amount" in err
    assert "PROFILE_INVALID" in err


def test_cli_adapt_with_a_bad_profile_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[source]\n", encoding="utf-8")
    out = tmp_path / "records.jsonl"
    assert main(["adapt", "--profile", str(bad), str(GD_SAMPLE), "-o", str(out)]) == 3
    assert "source.name" in capsys.readouterr().err
    assert not out.exists()


def test_cli_adapt_without_a_profile_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["adapt", str(GD_SAMPLE)]) == 3
    assert "--profile is required" in capsys.readouterr().err


def test_cli_profile_lint_needs_exactly_one_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["adapt", "profile-lint", str(GD_PROFILE), str(ZJ_PROFILE)]) == 3
    assert "usage: hutong adapt profile-lint PROFILE" in capsys.readouterr().err
