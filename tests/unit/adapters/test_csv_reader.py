"""Tests of adapters.csv_reader: encodings, titles, quoting quirks, and every broken row kept as a row."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.csv_reader import MAX_ROW_LINES, read_delimited
from adapters.source import DATA, HEADER, TOTAL, SourceError, SourceRow

HEADER_LINE = "编号,姓名,金额"


def write(tmp_path: Path, content: str | bytes, encoding: str = "utf-8", name: str = "export.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return path


def rows(
    path: Path,
    *,
    encoding: str = "utf-8",
    delimiter: str = ",",
    quote: str = '"',
    header_row: int = 1,
    total_pattern: str | None = None,
) -> list[SourceRow]:
    return list(
        read_delimited(
            path,
            encoding=encoding,
            delimiter=delimiter,
            quote=quote,
            header_row=header_row,
            total_pattern=total_pattern,
        )
    )


def data_rows(found: list[SourceRow]) -> list[SourceRow]:
    return [r for r in found if r.kind == DATA]


def outline(found: list[SourceRow]) -> list[tuple[str, str, str | None]]:
    """(location, kind, error reason) of each row."""
    return [(r.location, r.kind, r.error[0] if r.error else None) for r in found]


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8", "utf-8-sig"])
def test_chinese_headers_and_values_are_read_in_each_encoding(tmp_path: Path, encoding: str) -> None:
    path = write(tmp_path, f"{HEADER_LINE}\nGD001,张三,880.00\nGD002,欧阳娜娜,1\n", encoding)
    found = rows(path, encoding=encoding)
    assert outline(found) == [("line 1", HEADER, None), ("line 2", DATA, None), ("line 3", DATA, None)]
    assert found[0].raw == HEADER_LINE
    assert found[1].fields == {"编号": "GD001", "姓名": "张三", "金额": "880.00"}
    assert found[2].fields == {"编号": "GD002", "姓名": "欧阳娜娜", "金额": "1"}
    assert found[1].raw == "GD001,张三,880.00"


def test_utf8_sig_drops_the_byte_order_mark_from_the_first_header_name(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff编号,姓名\nA1,李四\n")
    (_, row) = rows(path, encoding="utf-8-sig")
    assert row.fields == {"编号": "A1", "姓名": "李四"}


def test_utf8_sig_reads_a_file_without_a_byte_order_mark(tmp_path: Path) -> None:
    path = write(tmp_path, "编号,姓名\nA1,李四\n")
    (_, row) = rows(path, encoding="utf-8-sig")
    assert row.fields == {"编号": "A1", "姓名": "李四"}


def test_gb18030_reads_characters_gbk_does_not_have(tmp_path: Path) -> None:
    name = "王𠮷"  # U+20BB7 is a four-byte GB18030 character, not in GBK
    path = write(tmp_path, f"编号,姓名\nA1,{name}\n", "gb18030")
    assert rows(path, encoding="gb18030")[1].fields == {"编号": "A1", "姓名": name}
    # The same bytes read as GBK spoil only that row.
    (_, row) = rows(path, encoding="gbk")
    assert row.error is not None
    assert row.error[0] == "ENCODING_INVALID"


def test_title_lines_before_the_header_row_are_structure(tmp_path: Path) -> None:
    path = write(tmp_path, f"广东省低保对象导出\n导出时间：2026年11月28日\n{HEADER_LINE}\nGD001,张三,1\n", "gbk")
    found = rows(path, encoding="gbk", header_row=3)
    assert outline(found) == [
        ("line 1", HEADER, None),
        ("line 2", HEADER, None),
        ("line 3", HEADER, None),
        ("line 4", DATA, None),
    ]
    assert found[0].raw == "广东省低保对象导出"
    assert found[3].fields == {"编号": "GD001", "姓名": "张三", "金额": "1"}


def test_header_names_are_stripped_of_surrounding_spaces(tmp_path: Path) -> None:
    path = write(tmp_path, " 编号 ,\t姓名\nA1, 张三 \n")
    (_, row) = rows(path)
    assert row.fields == {"编号": "A1", "姓名": " 张三 "}  # values are left to the transforms


def test_quoted_delimiters_and_doubled_quotes_are_one_field(tmp_path: Path) -> None:
    path = write(tmp_path, f'{HEADER_LINE}\nGD001,"张,三","1,395.50"\nGD002,"备注含""引号""",2\n', "gbk")
    (_, first, second) = rows(path, encoding="gbk")
    assert first.fields == {"编号": "GD001", "姓名": "张,三", "金额": "1,395.50"}
    assert second.fields == {"编号": "GD002", "姓名": '备注含"引号"', "金额": "2"}


def test_a_quoted_line_break_makes_one_row_spanning_lines(tmp_path: Path) -> None:
    path = write(tmp_path, f'{HEADER_LINE}\nGD001,"两行\n备注",1\nGD002,李四,2\n', "gbk")
    found = rows(path, encoding="gbk")
    assert outline(found) == [("line 1", HEADER, None), ("line 2", DATA, None), ("line 4", DATA, None)]
    assert found[1].fields == {"编号": "GD001", "姓名": "两行\n备注", "金额": "1"}
    assert found[1].raw == 'GD001,"两行\n备注",1'
    assert found[2].fields == {"编号": "GD002", "姓名": "李四", "金额": "2"}


def test_crlf_line_ends_are_not_part_of_values(tmp_path: Path) -> None:
    path = write(tmp_path, b'a,b\r\n1,"x\r\ny"\r\n2,3\r\n')
    found = rows(path)
    assert [r.fields for r in data_rows(found)] == [{"a": "1", "b": "x\ny"}, {"a": "2", "b": "3"}]


def test_an_unterminated_quote_is_refused_and_the_following_rows_still_come_out(tmp_path: Path) -> None:
    path = write(tmp_path, f'{HEADER_LINE}\nGD001,"张三,1\nGD002,李四,2\nGD003,王五,3\n', "gbk")
    found = rows(path, encoding="gbk")
    assert outline(found) == [
        ("line 1", HEADER, None),
        ("line 2", DATA, "QUOTE_UNTERMINATED"),
        ("line 3", DATA, None),
        ("line 4", DATA, None),
    ]
    assert found[1].fields is None
    assert found[1].raw == 'GD001,"张三,1'
    assert found[1].error == ("QUOTE_UNTERMINATED", "a quote opened on line 2 is never closed")
    assert [r.fields["编号"] for r in found[2:] if r.fields] == ["GD002", "GD003"]


def test_an_unterminated_quote_far_from_the_end_gives_back_the_rows_after_it(tmp_path: Path) -> None:
    good = [f"GD{i:03d},张三,{i}" for i in range(MAX_ROW_LINES + 10)]
    path = write(tmp_path, "\n".join([HEADER_LINE, 'BAD,"李四,1', *good]) + "\n", "gbk")
    found = rows(path, encoding="gbk")
    assert outline(found)[1] == ("line 2", DATA, "QUOTE_UNTERMINATED")
    assert [r.fields["编号"] for r in found[2:] if r.fields] == [f"GD{i:03d}" for i in range(MAX_ROW_LINES + 10)]
    assert all(r.error is None for r in found[2:])


def test_a_stray_quote_inside_an_unquoted_field_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'a,b\n1,ab"c\n2,3\n')
    assert outline(rows(path))[1:] == [("line 2", DATA, "QUOTE_UNTERMINATED"), ("line 3", DATA, None)]


def test_a_blank_line_after_an_unterminated_quote_at_the_end_is_not_a_row(tmp_path: Path) -> None:
    path = write(tmp_path, 'a,b\n1,"x\n2,y\n\n3,z\n')
    assert outline(rows(path))[1:] == [
        ("line 2", DATA, "QUOTE_UNTERMINATED"),
        ("line 3", DATA, None),
        ("line 5", DATA, None),
    ]


@pytest.mark.parametrize("encoding", ["gbk", "utf-8"])
def test_a_line_with_undecodable_bytes_spoils_only_its_own_row(tmp_path: Path, encoding: str) -> None:
    content = (
        f"{HEADER_LINE}\nGD001,张三,1\n".encode(encoding) + b"GD002,\xff\xfe,2\n" + "GD003,王五,3\n".encode(encoding)
    )
    found = rows(write(tmp_path, content), encoding=encoding)
    assert outline(found) == [
        ("line 1", HEADER, None),
        ("line 2", DATA, None),
        ("line 3", DATA, "ENCODING_INVALID"),
        ("line 4", DATA, None),
    ]
    assert found[2].raw == "GD002,\\xff\\xfe,2"
    assert found[2].fields is None
    assert found[3].fields == {"编号": "GD003", "姓名": "王五", "金额": "3"}


def test_too_many_or_too_few_columns_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER_LINE}\nGD001,张三,1,多出\nGD002,李四\nGD003,王五,3\n", "gbk")
    found = rows(path, encoding="gbk")
    assert outline(found)[1:] == [
        ("line 2", DATA, "COLUMN_COUNT"),
        ("line 3", DATA, "COLUMN_COUNT"),
        ("line 4", DATA, None),
    ]
    assert found[1].error == ("COLUMN_COUNT", "line 2 has 4 columns; the header has 3")
    assert found[2].error == ("COLUMN_COUNT", "line 3 has 2 columns; the header has 3")


def test_trailing_empty_columns_are_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER_LINE}\nGD001,张三,1,\nGD002,李四,2,,  \nGD003,王五,3,,x\n", "gbk")
    found = rows(path, encoding="gbk")
    assert [r.fields for r in found[1:3]] == [
        {"编号": "GD001", "姓名": "张三", "金额": "1"},
        {"编号": "GD002", "姓名": "李四", "金额": "2"},
    ]
    assert outline(found)[3] == ("line 4", DATA, "COLUMN_COUNT")


def test_a_totals_row_is_structure_not_data(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER_LINE}\nGD001,张三,1\n合计,,24人\n", "gbk")
    found = rows(path, encoding="gbk", total_pattern="^合计,")
    assert outline(found) == [("line 1", HEADER, None), ("line 2", DATA, None), ("line 3", TOTAL, None)]
    assert found[2].raw == "合计,,24人"
    assert found[2].fields is None


def test_without_a_total_pattern_a_totals_row_is_data(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER_LINE}\n合计,,24人\n", "gbk")
    assert rows(path, encoding="gbk")[1].fields == {"编号": "合计", "姓名": "", "金额": "24人"}


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER_LINE}\n\nGD001,张三,1\n   \n\r\nGD002,李四,2\n\n")
    found = rows(path)
    assert outline(found) == [("line 1", HEADER, None), ("line 3", DATA, None), ("line 6", DATA, None)]


def test_tsv_and_other_delimiters_and_quotes(tmp_path: Path) -> None:
    tsv = write(tmp_path, "编号\t姓名\nA1\t张,三\n", name="x.tsv")
    assert rows(tsv, delimiter="\t")[1].fields == {"编号": "A1", "姓名": "张,三"}
    semi = write(tmp_path, "编号;姓名\nA1;'张;三'\n", name="y.csv")
    assert rows(semi, delimiter=";", quote="'")[1].fields == {"编号": "A1", "姓名": "张;三"}


def test_a_file_without_its_header_line_cannot_be_read(tmp_path: Path) -> None:
    empty = write(tmp_path, b"", name="empty.csv")
    with pytest.raises(SourceError) as caught:
        rows(empty)
    assert caught.value.field == str(empty)
    assert "has no header line 1" in caught.value.message
    titles_only = write(tmp_path, "标题\n", name="titles.csv")
    with pytest.raises(SourceError, match="has no header line 3"):
        rows(titles_only, header_row=3)


def test_a_missing_file_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    with pytest.raises(SourceError) as caught:
        rows(path)
    assert caught.value.field == str(path)
    assert caught.value.reason == "SOURCE_UNREADABLE"
    assert "cannot open" in caught.value.message


def test_an_oversized_quoted_field_is_not_an_exception(tmp_path: Path) -> None:
    path = write(tmp_path, 'a,b\n1,"' + "x" * 200_000 + '"\n2,3\n')
    found = rows(path)
    assert found[1].fields is not None or found[1].error is not None
    assert found[2].fields == {"a": "2", "b": "3"}


def test_an_oversized_unquoted_field_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n1," + "x" * 200_000 + "\n2,3\n")
    found = rows(path)
    assert found[1].fields == {"a": "1", "b": "x" * 200_000}
    assert found[2].fields == {"a": "2", "b": "3"}


def test_two_lines_with_a_stray_quote_each_are_not_an_exception(tmp_path: Path) -> None:
    path = write(tmp_path, 'a,b\n1,身高5"\n2,身高6"\n3,ok\n')
    found = rows(path)
    assert all(r.error is not None for r in found if r.kind == DATA and r.fields is None)
    assert found[-1].fields == {"a": "3", "b": "ok"}


def test_a_header_line_csv_cannot_split_is_a_source_error_naming_file_and_line(tmp_path: Path) -> None:
    # A bare CR inside the header (csv.reader: "new-line character seen in unquoted field").
    path = write(tmp_path, "title\n编号,姓\r名\nA1,李四\n")
    with pytest.raises(SourceError) as caught:
        rows(path, header_row=2)
    assert (caught.value.reason, caught.value.field) == ("HEADER_INVALID", str(path))
    assert caught.value.metadata == {"line": "2"}
