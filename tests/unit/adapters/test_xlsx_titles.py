"""Excel rosters with a title above a merged two-row header (``title_rows``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from openpyxl import Workbook

from adapters.profile import ProfileError, parse_profile
from adapters.source import DATA, HEADER
from adapters.xlsx_reader import read_xlsx
from gateway.errors import ConfigError


def roster(path: Path) -> Path:
    book = Workbook()
    sheet = book.active
    sheet.title = "花名册"
    sheet.append(["某县低保花名册（2024年3月）"])
    sheet.merge_cells("A1:D1")  # the title spans the sheet
    sheet.append(["制表单位：民政局"])
    sheet.append(["姓名", "救助信息", None, "备注"])
    sheet.append([None, "类别", "金额", None])
    sheet.merge_cells("A3:A4")
    sheet.merge_cells("B3:C3")
    sheet.merge_cells("D3:D4")
    sheet.append(["张三", "城市低保", 880, ""])
    sheet.append(["李四", "农村低保", 660.5, "新增"])
    book.save(path)
    return path


def test_title_rows_are_structure_and_the_header_below_names_the_fields(tmp_path: Path) -> None:
    rows = list(read_xlsx(roster(tmp_path / "r.xlsx"), title_rows=2, header_rows=2))
    assert [(r.location, r.kind) for r in rows[:4]] == [
        ("row 1", HEADER),
        ("row 2", HEADER),
        ("row 3", HEADER),
        ("row 4", HEADER),
    ]
    data = [r for r in rows if r.kind == DATA]
    assert [r.location for r in data] == ["row 5", "row 6"]
    assert data[0].fields == {"姓名": "张三", "救助信息/类别": "城市低保", "救助信息/金额": "880", "备注": ""}
    assert data[1].fields is not None
    assert data[1].fields["救助信息/金额"] == "660.5"


def test_without_title_rows_the_title_would_name_the_fields(tmp_path: Path) -> None:
    rows = list(read_xlsx(roster(tmp_path / "r.xlsx"), header_rows=4))
    data = [r for r in rows if r.kind == DATA]
    assert data[0].fields is not None
    assert all(name.startswith("某县低保花名册") for name in data[0].fields)


def test_title_rows_must_be_a_count(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_xlsx(tmp_path / "r.xlsx", title_rows=-1)
    data = {
        "source": {"name": "x", "province": "510000", "format": "xlsx"},
        "format": {"title_rows": "2"},
        "record": {"record_id": "a", "id_number": "b", "name": "c", "residence_division": "d"},
    }
    with pytest.raises(ProfileError) as caught:
        parse_profile(data)
    assert caught.value.field == "format.title_rows"
    data["format"] = {"title_rows": 2}
    assert parse_profile(data).options["title_rows"] == 2
