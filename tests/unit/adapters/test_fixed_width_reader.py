"""Tests of adapters.fixed_width_reader: byte ranges of the encoding, record types, broken lines kept as rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.fixed_width_reader import read_fixed_width
from adapters.source import DATA, HEADER, TRAILER, SourceError, SourceRow

#: id [1, 6], name [7, 10] (five GBK characters at most), amount [17, 4].
FIELDS = {"编号": (1, 6), "姓名": (7, 10), "金额": (17, 4)}


def gbk(text: str, width: int) -> bytes:
    """``text`` in GBK, padded with spaces to ``width`` bytes."""
    raw = text.encode("gbk")
    assert len(raw) <= width
    return raw + b" " * (width - len(raw))


def data_line(record_id: str, name: str, amount: str, kind: bytes = b"D") -> bytes:
    return kind + gbk(record_id, 6) + gbk(name, 10) + gbk(amount, 4)


def write(tmp_path: Path, *lines: bytes, end: bytes = b"\n") -> Path:
    path = tmp_path / "export.dat"
    path.write_bytes(b"".join(line + end for line in lines))
    return path


def read(
    path: Path,
    *,
    encoding: str = "gbk",
    record_type: tuple[int, int] | None = (0, 1),
    trailer_count: tuple[int, int] | None = (1, 8),
    data: str = "D",
    header: str = "H",
    trailer: str = "T",
) -> list[SourceRow]:
    return list(
        read_fixed_width(
            path,
            encoding=encoding,
            fields=FIELDS,
            record_type=record_type,
            data=data,
            header=header,
            trailer=trailer,
            trailer_count=trailer_count,
        )
    )


def outline(found: list[SourceRow]) -> list[tuple[str, str, str | None]]:
    return [(r.location, r.kind, r.error[0] if r.error else None) for r in found]


def test_fields_are_gbk_byte_ranges(tmp_path: Path) -> None:
    path = write(tmp_path, data_line("ZJ0001", "张三", "0880"), data_line("ZJ0002", "欧阳娜娜", "1234"))
    first, second = read(path)
    # A Chinese character is two bytes: 张三 fills 4 of the 10 bytes of its range.
    assert first.fields == {"编号": "ZJ0001", "姓名": "张三      ", "金额": "0880"}
    assert second.fields == {"编号": "ZJ0002", "姓名": "欧阳娜娜  ", "金额": "1234"}
    assert first.location == "line 1"
    assert first.raw == "DZJ0001张三      0880"


def test_header_and_trailer_are_structure_and_the_trailer_states_its_count(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        b"H" + gbk("浙江省民政救助系统", 30),
        data_line("ZJ0001", "张三", "0880"),
        data_line("ZJ0002", "李四", "0100"),
        b"T00000002",
    )
    found = read(path)
    assert outline(found) == [
        ("line 1", HEADER, None),
        ("line 2", DATA, None),
        ("line 3", DATA, None),
        ("line 4", TRAILER, None),
    ]
    assert found[0].raw.startswith("H浙江省民政救助系统")
    assert found[3].claimed_rows == 2
    assert found[3].fields is None


@pytest.mark.parametrize(
    ("trailer", "count", "claimed"),
    [(b"T0000abc1", (1, 8), None), (b"T", (1, 8), None), (b"T00000007", None, None), (b"T  000007", (1, 8), 7)],
    ids=["not a number", "too short", "no count range", "padded"],
)
def test_a_trailer_count_is_read_only_when_it_is_a_number(
    tmp_path: Path, trailer: bytes, count: tuple[int, int] | None, claimed: int | None
) -> None:
    (row,) = read(write(tmp_path, trailer), trailer_count=count)
    assert row.kind == TRAILER
    assert row.claimed_rows == claimed


def test_an_unknown_record_type_is_refused_and_named(tmp_path: Path) -> None:
    path = write(tmp_path, b"Xunexpected record type", data_line("ZJ0001", "张三", "0880"))
    bad, good = read(path)
    assert bad.kind == DATA
    assert bad.fields is None
    assert bad.error == ("RECORD_TYPE_UNKNOWN", "record type 'X' is not a data, header or trailer type")
    assert bad.raw == "Xunexpected record type"
    assert good.fields is not None


def test_multi_byte_record_type_codes(tmp_path: Path) -> None:
    path = write(tmp_path, b"00header", b"01" + gbk("ZJ0001", 6), b"9900000001")
    found = list(
        read_fixed_width(
            path,
            encoding="gbk",
            fields={"编号": (2, 6)},
            record_type=(0, 2),
            data="01",
            header="00",
            trailer="99",
            trailer_count=(2, 8),
        )
    )
    assert [r.kind for r in found] == [HEADER, DATA, TRAILER]
    assert found[1].fields == {"编号": "ZJ0001"}
    assert found[2].claimed_rows == 1


def test_a_line_too_short_for_its_ranges_is_refused_naming_the_first_field_cut(tmp_path: Path) -> None:
    path = write(tmp_path, b"DZJ0001\xd5\xc5", data_line("ZJ0002", "李四", "0100"))
    short, good = read(path)
    assert short.error == ("LINE_TOO_SHORT", "line 1 has 9 bytes; field 姓名 needs 21")
    assert short.raw == "DZJ0001张"
    assert good.fields is not None


def test_a_range_cutting_a_character_in_half_is_refused_naming_the_field(tmp_path: Path) -> None:
    # The name was written one byte late: its range [7, 10] ends in the middle of its fifth character.
    line = b"D" + gbk("ZJ0001", 6) + b" " + "欧阳娜娜张".encode("gbk") + b"0880"
    path = write(tmp_path, line, data_line("ZJ0002", "李四", "0100"))
    bad, good = read(path)
    assert bad.fields is None
    assert bad.error is not None
    assert bad.error[0] == "ENCODING_INVALID"
    assert "field 姓名 of line 1 is not valid gbk" in bad.error[1]
    assert good.fields == {"编号": "ZJ0002", "姓名": "李四      ", "金额": "0100"}


def test_bytes_not_in_the_encoding_are_refused_and_shown_escaped(tmp_path: Path) -> None:
    line = b"D" + gbk("ZJ0001", 6) + b"\xff\xfe" + b" " * 8 + b"0880"
    bad, good = read(write(tmp_path, line, data_line("ZJ0002", "李四", "0100")))
    assert bad.error is not None
    assert bad.error[0] == "ENCODING_INVALID"
    assert bad.raw == "DZJ0001\\xff\\xfe        0880"
    assert good.error is None


def test_bytes_outside_every_range_do_not_matter(tmp_path: Path) -> None:
    (row,) = read(write(tmp_path, data_line("ZJ0001", "张三", "0880") + b"\xff tail"))
    assert row.fields == {"编号": "ZJ0001", "姓名": "张三      ", "金额": "0880"}


def test_without_a_record_type_every_line_is_data(tmp_path: Path) -> None:
    path = write(tmp_path, data_line("ZJ0001", "张三", "0880", kind=b"H"), data_line("ZJ0002", "李四", "0100", b"T"))
    found = read(path, record_type=None)
    assert [r.kind for r in found] == [DATA, DATA]
    assert [r.fields["编号"] for r in found if r.fields] == ["ZJ0001", "ZJ0002"]


def test_blank_lines_are_not_rows_and_crlf_is_not_data(tmp_path: Path) -> None:
    path = write(
        tmp_path, data_line("ZJ0001", "张三", "0880"), b"", b"   ", data_line("ZJ0002", "李四", "0100"), end=b"\r\n"
    )
    found = read(path)
    assert outline(found) == [("line 1", DATA, None), ("line 4", DATA, None)]
    assert found[1].fields == {"编号": "ZJ0002", "姓名": "李四      ", "金额": "0100"}


def test_utf8_byte_ranges_count_three_bytes_a_character(tmp_path: Path) -> None:
    line = b"D" + b"ZJ0001" + "张三".encode() + b"    " + b"0880"
    (row,) = read(write(tmp_path, line), encoding="utf-8")
    assert row.fields == {"编号": "ZJ0001", "姓名": "张三    ", "金额": "0880"}


def test_utf8_sig_drops_the_byte_order_mark(tmp_path: Path) -> None:
    line = b"D" + b"ZJ0001" + "张三".encode() + b"    " + b"0880"
    (row,) = read(write(tmp_path, b"\xef\xbb\xbf" + line), encoding="utf-8-sig")
    assert row.fields == {"编号": "ZJ0001", "姓名": "张三    ", "金额": "0880"}


def test_a_missing_file_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "missing.dat"
    with pytest.raises(SourceError) as caught:
        read(path)
    assert caught.value.field == str(path)
    assert "cannot open" in caught.value.message
