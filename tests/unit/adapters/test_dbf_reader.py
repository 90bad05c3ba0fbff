"""Tests of adapters.dbf_reader: GBK column names and values, deleted records in place, values as text, broken files."""

from __future__ import annotations

import datetime as dt
import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.dbf_reader import read_dbf
from adapters.samples import make_samples
from adapters.source import DATA, DELETED, SourceError, SourceRow
from gateway.domain.identity import parse_id_number
from gateway.errors import ConfigError, InvalidIdNumber

SAMPLE = make_samples.SAMPLES / "henan-410000.dbf"

#: (name, type, length, decimals)
Column = tuple[str, str, int, int]
PEOPLE: list[Column] = [("姓名", "C", 10, 0), ("身份证号", "C", 18, 0), ("月救助金", "N", 9, 2)]


def dbf_bytes(
    columns: list[Column],
    records: Sequence[tuple[bool, Sequence[object]]],
    *,
    encoding: str = "gbk",
    version: int = 0x03,
    declared: int | None = None,
    end_marker: bool = True,
) -> bytes:
    """A small dBase III (or, with version 0x30, FoxPro) table; bytes values are written as they are.

    FoxPro tables get the 263-byte backlink area after the field definitions, as Visual FoxPro writes.
    """
    backlink = 263 if version == 0x30 else 0
    header_size = 32 + 32 * len(columns) + 1 + backlink
    record_size = 1 + sum(c[2] for c in columns)
    count = len(records) if declared is None else declared
    out = bytearray(struct.pack("<BBBBIHH", version, 124, 3, 1, count, header_size, record_size))
    out += bytes(17) + b"\x7a" + bytes(2)
    for name, kind, length, decimals in columns:
        out += name.encode(encoding).ljust(11, b"\0") + kind.encode() + bytes(4) + bytes([length, decimals]) + bytes(14)
    out += b"\r" + bytes(backlink)
    for deleted, values in records:
        out += b"*" if deleted else b" "
        for (_, kind, length, _), value in zip(columns, values, strict=True):
            out += encode(value, kind, length, encoding)
    if end_marker:
        out += b"\x1a"
    return bytes(out)


def encode(value: object, kind: str, length: int, encoding: str) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif kind == "D" and isinstance(value, dt.date):
        data = value.strftime("%Y%m%d").encode()
    elif kind == "L":
        data = b"?" if value is None else b"T" if value else b"F"
    elif kind == "I":
        data = struct.pack("<i", value)
    else:
        data = str(value).encode(encoding)
    data = data.rjust(length) if kind in "NF" else data.ljust(length)
    assert len(data) == length, (value, length)
    return data


def write(tmp_path: Path, data: bytes, name: str = "export.dbf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read(path: Path, encoding: str = "gbk") -> list[SourceRow]:
    return list(read_dbf(path, encoding=encoding))


def test_chinese_column_names_and_values_round_trip(tmp_path: Path) -> None:
    columns: list[Column] = [
        ("户编号", "C", 12, 0),
        ("姓名", "C", 10, 0),
        ("出生日期", "D", 8, 0),
        ("月救助金", "N", 9, 2),
        ("家庭人口", "N", 2, 0),
        ("残疾", "L", 1, 0),
    ]
    path = write(
        tmp_path,
        dbf_bytes(
            columns,
            [
                (False, ["410105-001", "王堃", dt.date(1965, 3, 1), "1250.00", "3", True]),
                (False, ["410105-002", "欧阳娜娜", dt.date(2001, 12, 31), "880.50", "1", False]),
            ],
        ),
    )
    found = read(path)
    assert [(r.location, r.kind, r.error) for r in found] == [("record 1", DATA, None), ("record 2", DATA, None)]
    assert found[0].fields == {
        "户编号": "410105-001",
        "姓名": "王堃",
        "出生日期": "1965-03-01",
        "月救助金": "1250",
        "家庭人口": "3",
        "残疾": "T",
    }
    assert found[1].fields == {
        "户编号": "410105-002",
        "姓名": "欧阳娜娜",
        "出生日期": "2001-12-31",
        "月救助金": "880.50",
        "家庭人口": "1",
        "残疾": "F",
    }
    assert found[0].raw == "410105-001|王堃|1965-03-01|1250|3|T"


def test_deleted_records_are_yielded_in_their_place_as_deleted(tmp_path: Path) -> None:
    records = [
        (deleted, [f"人{i}", "", str(i)]) for i, deleted in enumerate([False, True, False, False, True], start=1)
    ]
    found = read(write(tmp_path, dbf_bytes(PEOPLE, records)))
    assert [(r.location, r.kind) for r in found] == [
        ("record 1", DATA),
        ("record 2", DELETED),
        ("record 3", DATA),
        ("record 4", DATA),
        ("record 5", DELETED),
    ]
    assert [r.fields["姓名"] if r.fields else None for r in found] == ["人1", "人2", "人3", "人4", "人5"]


@pytest.mark.parametrize(
    ("written", "read_as"),
    [
        (b"  1250.00", "1250"),
        (b"  1234.50", "1234.50"),
        (b"    -0.50", "-0.50"),
        (b"     12,5", "12.5"),
        (b"         ", ""),
        (b"        7", "7"),
        (b"0000012.0", "12"),
    ],
)
def test_numbers_are_read_as_written_without_zero_decimals(tmp_path: Path, written: bytes, read_as: str) -> None:
    (row,) = read(write(tmp_path, dbf_bytes([("金额", "N", 9, 2)], [(False, [written])])))
    assert row.fields == {"金额": read_as}


def test_text_loses_its_padding_on_the_right_only(tmp_path: Path) -> None:
    columns: list[Column] = [("备注", "C", 12, 0)]
    (row,) = read(write(tmp_path, dbf_bytes(columns, [(False, [b"  \xd5\xc5\xc8\xfd \x00 \x00"])])))
    assert row.fields == {"备注": "  张三"}


@pytest.mark.parametrize(
    ("written", "read_as"), [(b"T", "T"), (b"y", "T"), (b"F", "F"), (b"n", "F"), (b"?", ""), (b" ", "")]
)
def test_logicals_are_t_f_or_empty(tmp_path: Path, written: bytes, read_as: str) -> None:
    (row,) = read(write(tmp_path, dbf_bytes([("残疾", "L", 1, 0)], [(False, [written])])))
    assert row.fields == {"残疾": read_as}


@pytest.mark.parametrize("written", [b"        ", b"00000000"])
def test_blank_dates_are_empty(tmp_path: Path, written: bytes) -> None:
    (row,) = read(write(tmp_path, dbf_bytes([("出生日期", "D", 8, 0)], [(False, [written])])))
    assert row.fields == {"出生日期": ""}


def test_bytes_not_in_the_encoding_reject_the_row_naming_the_field(tmp_path: Path) -> None:
    records: list[tuple[bool, list[object]]] = [
        (False, ["张三", "410105196501011234", "100.00"]),
        (False, [b"\xc0\xee\xff\xfe", "410105196501011234", "200.00"]),
        (False, ["王五", "", ""]),
    ]
    found = read(write(tmp_path, dbf_bytes(PEOPLE, records)))
    assert [(r.kind, r.error[0] if r.error else None) for r in found] == [
        (DATA, None),
        (DATA, "ENCODING_INVALID"),
        (DATA, None),
    ]
    assert found[1].fields is None
    assert found[1].error == ("ENCODING_INVALID", "field 姓名 is not valid gbk")
    assert found[1].raw == "李\\xff\\xfe|410105196501011234|200"


def test_a_gbk_character_cut_by_the_field_width_is_not_valid(tmp_path: Path) -> None:
    # Four bytes hold 张 and the first half of 三.
    (row,) = read(write(tmp_path, dbf_bytes([("姓名", "C", 4, 0)], [(False, ["张三".encode("gbk")[:3]])])))
    assert row.error == ("ENCODING_INVALID", "field 姓名 is not valid gbk")


@pytest.mark.parametrize(
    ("column", "written", "what"),
    [
        (("出生日期", "D", 8, 0), b"20210230", "date"),
        (("出生日期", "D", 8, 0), b"2021-3-1", "date"),
        (("金额", "N", 9, 2), b"*********", "number"),
        (("金额", "N", 9, 2), b"  12.3.4 ", "number"),
        (("残疾", "L", 1, 0), b"X", "logical"),
    ],
)
def test_a_value_its_type_cannot_hold_rejects_the_row(
    tmp_path: Path, column: Column, written: bytes, what: str
) -> None:
    (row,) = read(write(tmp_path, dbf_bytes([column], [(False, [written])])))
    assert row.kind == DATA
    assert row.fields is None
    assert row.error == ("VALUE_INVALID", f"field {column[0]} does not hold a valid {what}")
    assert row.raw == written.decode().strip()


def test_a_deleted_record_with_bad_bytes_stays_deleted(tmp_path: Path) -> None:
    (row,) = read(write(tmp_path, dbf_bytes(PEOPLE, [(True, [b"\xff", "", ""])])))
    assert row.kind == DELETED
    assert row.error is not None
    assert row.error[0] == "ENCODING_INVALID"


def test_a_record_without_a_deletion_flag_is_rejected(tmp_path: Path) -> None:
    data = bytearray(dbf_bytes(PEOPLE, [(False, ["甲", "", "1"]), (False, ["乙", "", "2"])]))
    header_size, record_size = struct.unpack_from("<HH", data, 8)
    data[header_size + record_size] = ord("#")
    found = read(write(tmp_path, bytes(data)))
    assert found[0].error is None
    assert found[1].error == ("RECORD_FLAG_INVALID", "the record starts with byte 0x23, not a deletion flag")
    assert found[1].raw == "乙||2"


def test_a_file_cut_inside_a_record_yields_the_records_before_then_names_the_broken_one(tmp_path: Path) -> None:
    records: list[tuple[bool, list[object]]] = [(False, [f"人{i}", "", str(i)]) for i in range(1, 4)]
    data = dbf_bytes(PEOPLE, records, end_marker=False)
    path = write(tmp_path, data[:-10])
    found: list[SourceRow] = []
    with pytest.raises(SourceError) as caught:
        found.extend(read_dbf(path, encoding="gbk"))
    assert [r.location for r in found] == ["record 1", "record 2"]
    assert caught.value.field == str(path)
    assert caught.value.metadata == {"record": "3"}
    assert "record 3 is cut short" in caught.value.message


def test_a_file_with_fewer_records_than_its_header_declares_is_truncated(tmp_path: Path) -> None:
    records: list[tuple[bool, list[object]]] = [(False, ["甲", "", "1"])]
    path = write(tmp_path, dbf_bytes(PEOPLE, records, declared=3))
    found: list[SourceRow] = []
    with pytest.raises(SourceError, match="ends after record 1 but its header declares 3"):
        found.extend(read_dbf(path, encoding="gbk"))
    assert len(found) == 1


def test_no_end_of_file_marker_is_needed(tmp_path: Path) -> None:
    records: list[tuple[bool, list[object]]] = [(False, ["甲", "", "1"]), (True, ["乙", "", "2"])]
    found = read(write(tmp_path, dbf_bytes(PEOPLE, records, end_marker=False)))
    assert [r.kind for r in found] == [DATA, DELETED]


def test_a_foxpro_table_with_a_backlink_integers_and_null_flags(tmp_path: Path) -> None:
    columns: list[Column] = [("姓名", "C", 6, 0), ("人口", "I", 4, 0), ("_NullFlags", "0", 1, 0)]
    records: list[tuple[bool, list[object]]] = [(False, ["张三", 3, b"\x00"]), (False, ["李四", -1, b"\x00"])]
    found = read(write(tmp_path, dbf_bytes(columns, records, version=0x30)))
    assert [r.fields for r in found] == [{"姓名": "张三", "人口": "3"}, {"姓名": "李四", "人口": "-1"}]


def test_a_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open") as caught:
        read(tmp_path / "absent.dbf")
    assert caught.value.field == str(tmp_path / "absent.dbf")


@pytest.mark.parametrize("content", [b"", b"\x03\x7c\x03", b"PK\x03\x04 not a table at all, but a zip file..."])
def test_a_file_that_is_not_a_table_is_a_source_error(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(SourceError):
        read(write(tmp_path, content))


def test_a_header_whose_record_size_does_not_add_up_is_refused(tmp_path: Path) -> None:
    data = bytearray(dbf_bytes(PEOPLE, [(False, ["甲", "", "1"])]))
    struct.pack_into("<H", data, 10, 99)
    with pytest.raises(SourceError, match="header is inconsistent"):
        read(write(tmp_path, bytes(data)))


def test_a_column_name_twice_is_refused(tmp_path: Path) -> None:
    columns: list[Column] = [("姓名", "C", 4, 0), ("姓名", "C", 4, 0)]
    with pytest.raises(SourceError, match="appears twice"):
        read(write(tmp_path, dbf_bytes(columns, [(False, ["甲", "乙"])])))


def test_a_column_name_not_in_the_encoding_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, dbf_bytes(PEOPLE, [(False, ["甲", "", "1"])], encoding="utf-8"))
    with pytest.raises(SourceError, match="column name is not valid gbk"):
        read(path)


def test_an_unknown_encoding_is_a_config_error_raised_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown encoding"):
        read_dbf(tmp_path / "never-opened.dbf", encoding="no-such-codec")


_NAMES = st.text(alphabet=st.sampled_from("张王李赵欧阳堃娜低保特困 0123456789abcXYZ-·"), max_size=8).map(str.rstrip)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.booleans(),
            _NAMES,
            st.from_regex(r"[0-9]{0,17}[0-9X]?", fullmatch=True),
            st.one_of(st.just(""), st.decimals(min_value=0, max_value=99999, places=2).map(str)),
            st.one_of(st.none(), st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2099, 12, 31))),
        ),
        max_size=10,
    )
)
def test_random_records_round_trip(
    tmp_path_factory: pytest.TempPathFactory, records: list[tuple[bool, str, str, str, dt.date | None]]
) -> None:
    columns: list[Column] = [("姓名", "C", 16, 0), ("身份证号", "C", 18, 0), ("金额", "N", 9, 2), ("日期", "D", 8, 0)]
    rows = [(deleted, [name, id_number, amount, day or b""]) for deleted, name, id_number, amount, day in records]
    path = write(tmp_path_factory.mktemp("dbf"), dbf_bytes(columns, rows))
    found = read(path)

    def amount_text(amount: str) -> str:
        return "" if not amount else amount.removesuffix(".00") if amount.endswith(".00") else amount

    assert [(r.kind, r.fields) for r in found] == [
        (
            DELETED if deleted else DATA,
            {
                "姓名": name,
                "身份证号": id_number,
                "金额": amount_text(amount),
                "日期": day.isoformat() if day else "",
            },
        )
        for deleted, name, id_number, amount, day in records
    ]


def test_the_henan_sample_is_what_the_generator_writes() -> None:
    assert SAMPLE.read_bytes() == make_samples.henan_dbf()
    assert SAMPLE.read_bytes()[29] == 0x7A  # language driver: GBK (code page 936)


def test_the_henan_sample_reads_as_30_persons_and_2_deleted_with_the_documented_bad_ones() -> None:
    found = read(SAMPLE)
    assert len(found) == 32
    assert Counter((r.kind, r.error[0] if r.error else None) for r in found) == {
        (DATA, None): 29,
        (DATA, "ENCODING_INVALID"): 1,
        (DELETED, None): 2,
    }
    by_record = {int(r.location.split()[1]): r for r in found}
    assert list(by_record) == list(range(1, 33))
    assert [n for n, r in by_record.items() if r.kind == DELETED] == [10, 27]
    assert by_record[19].error == ("ENCODING_INVALID", "field 姓名 is not valid gbk")
    assert "\\xff\\xfe" in by_record[19].raw
    fields = {n: r.fields for n, r in by_record.items() if r.fields is not None}
    assert list(fields[1]) == [c.name for c in make_samples.HENAN_COLUMNS]
    assert any("堃" in f["姓名"] for f in fields.values())
    with pytest.raises(InvalidIdNumber) as caught:
        parse_id_number(fields[5]["身份证号"])
    assert caught.value.reason == "ID_NUMBER_BAD_CHECK_CHARACTER"
    assert fields[11]["区县代码"] == "130102"
    assert fields[24]["开始日期"] == "20210230"
    assert parse_id_number(fields[28]["身份证号"]).birth_date.isoformat() != fields[28]["出生日期"]
    for number, f in fields.items():
        if number in {5, 11, 24, 28}:
            continue
        id_number = parse_id_number(f["身份证号"])
        assert id_number.province_code == "410000"
        assert id_number.birth_date.isoformat() == f["出生日期"]
        assert f["区县代码"].startswith("41")
        assert dt.datetime.strptime(f["开始日期"], "%Y%m%d")
        assert f["救助类别"] in {"城市低保", "农村低保", "农村五保"}
        assert f["状态"] in {"正常", "暂停", "注销"}
        assert f["残疾"] in {"T", "F"}
