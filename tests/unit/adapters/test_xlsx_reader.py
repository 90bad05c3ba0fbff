"""Tests of adapters.xlsx_reader: merged multi-row headers, cell values as text, totals, empty and overlong rows."""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import Workbook
from openpyxl.styles import Border, Side

from adapters.samples import make_samples
from adapters.source import DATA, HEADER, TOTAL, SourceError, SourceRow
from adapters.xlsx_reader import read_xlsx
from gateway.domain.identity import parse_id_number
from gateway.errors import ConfigError, InvalidIdNumber

SAMPLE = make_samples.SAMPLES / "sichuan-510000.xlsx"


def workbook(
    tmp_path: Path,
    rows: Sequence[Sequence[Any]],
    *,
    merges: Sequence[str] = (),
    formats: dict[str, str] | None = None,
    title: str = "Sheet",
    name: str = "export.xlsx",
) -> Path:
    """A workbook whose first sheet holds ``rows`` from A1 (None: no cell)."""
    book = Workbook()
    sheet = book.active
    sheet.title = title
    for row in rows:
        sheet.append(list(row))
    for merged in merges:
        sheet.merge_cells(merged)
    for cell, number_format in (formats or {}).items():
        sheet[cell].number_format = number_format
    path = tmp_path / name
    book.save(path)
    return path


def read(path: Path, **options: object) -> list[SourceRow]:
    return list(read_xlsx(path, **options))  # type: ignore[arg-type]


def outline(found: list[SourceRow]) -> list[tuple[str, str, str | None]]:
    return [(r.location, r.kind, r.error[0] if r.error else None) for r in found]


def test_a_one_row_header_names_the_fields(tmp_path: Path) -> None:
    path = workbook(
        tmp_path, [["户编号", "姓名", "身份证号"], ["SC001", "王堃", "510104199001011234"], ["SC002", "李娜", None]]
    )
    found = read(path)
    assert outline(found) == [("row 1", HEADER, None), ("row 2", DATA, None), ("row 3", DATA, None)]
    assert found[0].fields is None
    assert found[0].raw == "户编号,姓名,身份证号"
    assert found[1].fields == {"户编号": "SC001", "姓名": "王堃", "身份证号": "510104199001011234"}
    assert found[2].fields == {"户编号": "SC002", "姓名": "李娜", "身份证号": ""}
    assert found[1].raw == "SC001,王堃,510104199001011234"
    assert found[2].raw == "SC002,李娜"


def test_merged_header_cells_name_every_column_they_span_once(tmp_path: Path) -> None:
    rows: list[list[Any]] = [
        ["姓名", "救助信息", None, None, "备注"],
        [None, "开始日期", "月保障金", " 救助类别\n", None],
        ["张三", "2021-03-01", "880.00", "城市低保", "无"],
    ]
    path = workbook(tmp_path, rows, merges=["A1:A2", "B1:D1", "E1:E2"])
    found = read(path, header_rows=2)
    assert outline(found) == [("row 1", HEADER, None), ("row 2", HEADER, None), ("row 3", DATA, None)]
    assert found[2].fields == {
        "姓名": "张三",
        "救助信息/开始日期": "2021-03-01",
        "救助信息/月保障金": "880.00",
        "救助信息/救助类别": "城市低保",
        "备注": "无",
    }


def test_three_header_rows_and_a_block_merged_over_two_rows_and_columns(tmp_path: Path) -> None:
    rows: list[list[Any]] = [
        ["人员", None, "救助", None, None],
        ["基本信息", None, "低保", None, "特困"],
        ["姓名", "性别", "金额", "日期", None],
        ["甲", "男", "1", "2", "3"],
    ]
    path = workbook(tmp_path, rows, merges=["A1:B1", "A2:B2", "C1:E1", "C2:D2", "E2:E3"])
    (row,) = [r for r in read(path, header_rows=3) if r.kind == DATA]
    assert row.fields == {
        "人员/基本信息/姓名": "甲",
        "人员/基本信息/性别": "男",
        "救助/低保/金额": "1",
        "救助/低保/日期": "2",
        "救助/特困": "3",
    }


def test_unnamed_and_repeated_header_columns_get_their_letter(tmp_path: Path) -> None:
    path = workbook(tmp_path, [["姓名", None, "备注", "备注"], ["甲", "x", "a", "b"]])
    assert read(path)[1].fields == {"姓名": "甲", "(B)": "x", "备注": "a", "备注 (D)": "b"}


def test_cells_become_text(tmp_path: Path) -> None:
    header = ["文本", "整数", "整数值小数", "小数", "日期", "日期时间", "序列号", "布尔", "中文日期", "空格"]
    values = [
        "  0012 ",
        44256,
        1250.0,
        880.5,
        dt.date(2021, 3, 1),
        dt.datetime(2021, 3, 1, 14, 30, 5),
        44256,
        True,
        dt.date(1965, 12, 31),
        " ",
    ]
    formats = {"E2": "yyyy-mm-dd", "F2": "yyyy-mm-dd hh:mm:ss", "I2": 'yyyy"年"m"月"d"日"'}
    path = workbook(tmp_path, [header, values], formats=formats)
    assert read(path)[1].fields == {
        "文本": "  0012 ",
        "整数": "44256",
        "整数值小数": "1250",
        "小数": "880.5",
        "日期": "2021-03-01",
        "日期时间": "2021-03-01 14:30:05",
        "序列号": "44256",  # an Excel date without a date format stays a number
        "布尔": "TRUE",
        "中文日期": "1965-12-31",
        "空格": " ",
    }


def test_a_totals_row_is_a_total_not_data(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["户编号", "金额"], ["SC001", 100], [None, 50], ["合计", 150], ["总计：", 150]]
    found = read(workbook(tmp_path, rows), total_pattern="^(合计|总计)")
    assert outline(found) == [
        ("row 1", HEADER, None),
        ("row 2", DATA, None),
        ("row 3", DATA, None),
        ("row 4", TOTAL, None),
        ("row 5", TOTAL, None),
    ]
    assert found[3].fields == {"户编号": "合计", "金额": "150"}
    assert found[3].raw == "合计,150"
    # Without a pattern the same row is data.
    assert read(workbook(tmp_path, rows))[3].kind == DATA


def test_the_totals_pattern_looks_at_the_first_non_empty_cell(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["户编号", "姓名", "金额"], [None, "合计", 150]]
    assert read(workbook(tmp_path, rows), total_pattern="^合计")[1].kind == TOTAL


def test_an_empty_row_between_rows_is_rejected_and_empty_rows_at_the_end_are_not_rows(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    for row in (["姓名", "金额"], ["甲", 1], [None, None], [None, None], ["乙", 2]):
        sheet.append(row)
    side = Side(style="thin")
    for number in (6, 7, 8):  # empty, but written: they have borders
        for column in (1, 2):
            sheet.cell(number, column).border = Border(top=side, bottom=side)
    path = tmp_path / "export.xlsx"
    book.save(path)
    found = read(path)
    assert outline(found) == [
        ("row 1", HEADER, None),
        ("row 2", DATA, None),
        ("row 3", DATA, "ROW_EMPTY"),
        ("row 4", DATA, "ROW_EMPTY"),
        ("row 5", DATA, None),
    ]
    assert found[2].fields is None
    assert found[2].error == ("ROW_EMPTY", "row 3 is empty")
    assert found[2].raw == ""


def test_a_value_right_of_the_header_is_a_column_count_reject(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["姓名", "金额"], ["甲", 1, None], ["乙", 2, "已迁出"], [None, None, "备注"]]
    found = read(workbook(tmp_path, rows))
    assert outline(found) == [
        ("row 1", HEADER, None),
        ("row 2", DATA, None),
        ("row 3", DATA, "COLUMN_COUNT"),
        ("row 4", DATA, "COLUMN_COUNT"),
    ]
    assert found[2].error == ("COLUMN_COUNT", "row 3 has a value in column C, right of the header's 2 columns")
    assert found[2].raw == "乙,2,已迁出"
    assert found[3].raw == ",,备注"


def test_merged_data_cells_give_their_value_to_every_cell_they_span(tmp_path: Path) -> None:
    rows: list[list[Any]] = [
        ["户编号", "姓名", "备注", None],
        ["SC001", "甲", "同住", None],
        [None, "乙", None, None],
        [None, "丙", "外出务工", "x"],
        ["SC002", "丁", None, None],
    ]
    path = workbook(tmp_path, rows, merges=["A2:A4", "C2:C3", "C4:D4"])
    found = read(path)
    assert [r.fields for r in found[1:]] == [
        {"户编号": "SC001", "姓名": "甲", "备注": "同住"},
        {"户编号": "SC001", "姓名": "乙", "备注": "同住"},
        {"户编号": "SC001", "姓名": "丙", "备注": "外出务工"},  # merged across C4:D4, right of the header
        {"户编号": "SC002", "姓名": "丁", "备注": ""},
    ]
    assert found[3].raw == "SC001,丙,外出务工"


def test_a_sheet_is_chosen_by_name_and_the_first_is_the_default(tmp_path: Path) -> None:
    book = Workbook()
    book.active.title = "说明"
    book.active.append(["本表为导出说明"])
    roster = book.create_sheet("花名册")
    roster.append(["姓名"])
    roster.append(["甲"])
    path = tmp_path / "export.xlsx"
    book.save(path)
    assert [r.fields for r in read(path, sheet="花名册")] == [None, {"姓名": "甲"}]
    assert [r.raw for r in read(path)] == ["本表为导出说明"]
    with pytest.raises(SourceError, match="no worksheet '名单'") as caught:
        read(path, sheet="名单")
    assert caught.value.metadata == {"sheet": "名单"}


def test_cells_beyond_a_wrong_dimension_are_read(tmp_path: Path) -> None:
    path = workbook(tmp_path, [["姓名", "金额", "备注"], ["甲", 1, "全部读到"]])
    patched = tmp_path / "patched.xlsx"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(patched, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data, count = re.subn(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:A1"', data)
                assert count == 1
            target.writestr(info, data)
    assert read(patched)[1].fields == {"姓名": "甲", "金额": "1", "备注": "全部读到"}


def test_a_sheet_broken_midway_yields_the_rows_before_then_names_where(tmp_path: Path) -> None:
    path = workbook(tmp_path, [["姓名", "金额"], *[[f"人{i}", i] for i in range(1, 6)]])
    broken = tmp_path / "broken.xlsx"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = data[: data.index(b'<row r="5"')] + b'<row r="5"><c r="A5" t="inlineStr"><is><t>'
            target.writestr(info, data)
    found: list[SourceRow] = []
    with pytest.raises(SourceError) as caught:
        found.extend(read_xlsx(broken))
    assert [r.location for r in found] == ["row 1", "row 2", "row 3", "row 4"]
    assert caught.value.metadata == {"row": "4"}
    assert "cannot be read after row 4" in caught.value.message


def test_a_sheet_ending_before_its_header_rows_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="ends before its 2 header rows"):
        read(workbook(tmp_path, [["姓名"]]), header_rows=2)


def test_an_empty_header_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="header rows are empty"):
        read(workbook(tmp_path, [[None, None], ["甲", "乙"]]))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 broken", b"not a workbook"])
def test_a_file_that_is_not_a_workbook_is_a_source_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "export.xlsx"
    path.write_bytes(content)
    with pytest.raises(SourceError, match="not a readable Excel workbook") as caught:
        read(path)
    assert caught.value.field == str(path)


def test_a_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a readable Excel workbook"):
        read(tmp_path / "absent.xlsx")


def test_a_sheet_xml_with_a_doctype_is_refused(tmp_path: Path) -> None:
    path = workbook(tmp_path, [["姓名"], ["甲"]])
    patched = tmp_path / "patched.xlsx"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(patched, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                assert data.startswith(b"<worksheet")  # openpyxl writes no XML declaration
                data = b'<!DOCTYPE worksheet [<!ENTITY a "aaaa">]>' + data
            target.writestr(info, data)
    with pytest.raises(SourceError, match="DOCTYPE"):
        read(patched)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"header_rows": 0}, "header_rows must be"),
        ({"header_rows": True}, "header_rows must be"),
        ({"total_pattern": "(合计"}, "total_pattern is not a regular expression"),
    ],
)
def test_bad_options_are_config_errors_raised_at_once(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_xlsx(tmp_path / "never-opened.xlsx", **options)  # type: ignore[arg-type]


_CELL = st.text(alphabet=st.sampled_from("张王李赵欧阳堃娜低保特困0123456789 abcXYZ-.,，"), max_size=10)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.lists(_CELL, min_size=3, max_size=3), max_size=8))
def test_random_rows_round_trip(tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]]) -> None:
    header = ["编号", "姓名", "金额"]
    path = workbook(tmp_path_factory.mktemp("xlsx"), [header, *[[v or None for v in row] for row in rows]])
    found = read(path)
    # Empty rows at the end are not rows of the export; those before a row with values are rejects.
    while rows and not any(rows[-1]):
        rows.pop()
    expected = [(None, None)] + [
        (dict(zip(header, row, strict=True)), None) if any(row) else (None, "ROW_EMPTY") for row in rows
    ]
    assert [(r.fields, r.error[0] if r.error else None) for r in found] == expected


def read_sample() -> list[SourceRow]:
    return read(SAMPLE, header_rows=2, total_pattern="^(合计|总计)")


def test_the_sichuan_sample_is_what_the_generator_writes() -> None:
    assert SAMPLE.read_bytes() == make_samples.sichuan_xlsx()


def test_the_sichuan_sample_reads_as_documented() -> None:
    found = read_sample()
    assert Counter((r.kind, r.error[0] if r.error else None) for r in found) == {
        (HEADER, None): 2,
        (DATA, None): 29,
        (DATA, "COLUMN_COUNT"): 1,
        (DATA, "ROW_EMPTY"): 1,
        (TOTAL, None): 1,
    }
    assert [r.location for r in found] == [f"row {n}" for n in range(1, 35)]
    by_row = {int(r.location.split()[1]): r for r in found}
    assert by_row[15].error is not None
    assert by_row[15].error[0] == "COLUMN_COUNT"
    assert by_row[18].error == ("ROW_EMPTY", "row 18 is empty")
    assert by_row[34].kind == TOTAL
    assert by_row[34].raw.startswith("合计,共30人,")
    fields = {n: r.fields for n, r in by_row.items() if r.kind == DATA and r.fields is not None}
    assert list(fields[3]) == [
        "户编号",
        "姓名",
        "性别",
        "公民身份号码",
        "出生日期",
        "与户主关系",
        "户籍地/区县代码",
        "户籍地/详细地址",
        "救助信息/救助类别",
        "救助信息/保障状态",
        "救助信息/开始日期",
        "救助信息/月保障金（元）",
    ]
    assert any("堃" in f["姓名"] for f in fields.values())
    with pytest.raises(InvalidIdNumber) as caught:
        parse_id_number(fields[7]["公民身份号码"])
    assert caught.value.reason == "ID_NUMBER_BAD_CHECK_CHARACTER"
    assert fields[7]["公民身份号码"].endswith("000")
    assert fields[12]["户籍地/区县代码"] == "500103"
    assert fields[26]["救助信息/开始日期"] == "2021-02-30"
    assert fields[30]["救助信息/月保障金（元）"] == "-320"
    households = Counter(f["户编号"] for f in fields.values())
    assert len(households) == 12
    assert sum(households.values()) == 29  # the 30 persons less row 15
    for number, f in fields.items():
        assert f["户编号"], f"row {number}: merged household numbers fill every member's row"
        if number in {7, 12, 26, 30}:
            continue
        id_number = parse_id_number(f["公民身份号码"])
        assert id_number.province_code == "510000"
        assert id_number.birth_date.isoformat() == f["出生日期"]
        assert f["户籍地/区县代码"].startswith("51")
        assert dt.date.fromisoformat(f["救助信息/开始日期"])
        assert float(f["救助信息/月保障金（元）"]) > 0
        assert f["救助信息/救助类别"] in {"城市低保", "农村低保", "特困人员"}
        assert f["救助信息/保障状态"] in {"在保", "停发", "退保"}
