"""Write the sample exports of three provinces: ``python -m adapters.samples.make_samples [--check]``.

Each sample holds 30 made-up persons in 12 households (sizes 3, 2, 4, 1, 3, 2, 4, 3, 1, 2, 3, 2),
drawn with a fixed seed: names (one per file with 堃, a GBK character outside GB2312), valid
GB 11643 ID numbers (``make_id_number``, the sequence odd for men and even for women) issued in
counties of the province, programmes and statuses in the province's own words, dates in its own
format, money in yuan with two decimals. Every run writes the same bytes (``--check`` verifies the
committed files instead of writing them).

Each file also holds rows that must not get through, each for one reason, listed below with the
reason expected downstream (the reason codes of ``gateway.domain.identity`` and
``gateway.domain.records``; a date that does not exist fails the profile's date transform).

``jiangsu-320000.xml`` — 江苏, an XML web-service export, GBK, declared ``encoding="GBK"``; namespace
:data:`JIANGSU_NAMESPACE`; ``<js:家庭 户编号=...>`` households holding their own fields
(所属区县, 家庭地址, 救助类别, 保障状态, 开始日期, 月保障金 for the whole household) before their
``<js:成员 序号=...>`` members (姓名, 性别, 身份证号, 出生日期, 与户主关系, 联系方式/@电话).
救助类别 城市低保 / 农村低保 / 特困供养; 保障状态 在保 / 停保 / 退出; dates ``2021年3月1日``.
Read with ``read_xml(path, record_path="js:家庭/js:成员", namespaces={"js": JIANGSU_NAMESPACE},
fields=JIANGSU_FIELDS)``: 30 ``data`` rows. Bad:

* element 5: 身份证号 with a wrong check character → ``ID_NUMBER_BAD_CHECK_CHARACTER``;
* element 10 (a household of one): 所属区县 340104, a district of Anhui → ``PROVINCE_NOT_PERMITTED``;
* element 15: 身份证号 empty → ``ID_NUMBER_MISSING``;
* element 23 (a household of one): 开始日期 ``2021年2月30日``, a day that does not exist → the date transform;
* element 26: 性别 女 for an ID number with an odd sequence (a man's) → ``GENDER_MISMATCH``.

``henan-410000.dbf`` — 河南, a county office's dBase III table, GBK (language driver 0x7A), one
record per person with the household's fields repeated; columns :data:`HENAN_COLUMNS` (Chinese
names). 救助类别 城市低保 / 农村低保 / 农村五保; 状态 正常 / 暂停 / 注销; 出生日期 a dBase date,
开始日期 text ``20210301``; 月救助金 N(9,2) per household; 残疾 a logical. Read with
``read_dbf(path, encoding="gbk")``: 32 records, 30 ``data`` and 2 ``deleted`` (records 10 and 27,
members who left their households, flagged deleted and never packed away). Bad:

* record 5: 身份证号 with a wrong check character → ``ID_NUMBER_BAD_CHECK_CHARACTER``;
* record 11: 区县代码 130102, a district of Hebei → ``PROVINCE_NOT_PERMITTED``;
* record 19: 姓名 holds the bytes ``FF FE``, not GBK → rejected by the reader, ``ENCODING_INVALID``;
* record 24: 开始日期 ``20210230``, a day that does not exist → the date transform;
* record 28: 出生日期 a year off the ID number's → ``BIRTH_DATE_MISMATCH``.

``sichuan-510000.xlsx`` — 四川, an Excel roster, sheet ``低保花名册``, two header rows with merged
cells: 户编号, 姓名, 性别, 公民身份号码, 出生日期, 与户主关系 each merged over both rows, then the
groups 户籍地 (区县代码, 详细地址) and 救助信息 (救助类别, 保障状态, 开始日期, 月保障金（元）);
户编号 merged down over each household's rows. 救助类别 城市低保 / 农村低保 / 特困人员; 保障状态
在保 / 停发 / 退保; dates are Excel dates (开始日期 shown as ``2021年3月1日``); 区县代码 typed as a
number; 月保障金 per person. Read with ``read_xlsx(path, header_rows=2, total_pattern="^(合计|总计)")``:
2 ``header`` rows, 31 ``data`` rows (30 persons and the empty row 18), 1 ``total`` row (row 34,
合计), and two empty bordered rows after it that are not rows of the export. Bad:

* row 7: 公民身份号码 typed as a number, which Excel keeps to 15 significant digits
  (``…071000``) → ``ID_NUMBER_BAD_CHECK_CHARACTER``;
* row 12: 区县代码 500103, a district of Chongqing → ``PROVINCE_NOT_PERMITTED``;
* row 15: a note typed right of the last column → rejected by the reader, ``COLUMN_COUNT``;
* row 18: empty, between two households → rejected by the reader, ``ROW_EMPTY``;
* row 26: 开始日期 typed as the text ``2021-02-30``, a day that does not exist → the date transform;
* row 30: 月保障金 -320.00 → ``AMOUNT_NEGATIVE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import random
import struct
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import escape, quoteattr

from openpyxl import Workbook
from openpyxl.styles import Alignment, Border, Font, Side
from openpyxl.writer.excel import ExcelWriter

from gateway.domain.divisions import counties_of, division_name
from gateway.domain.identity import is_valid_id_number, make_id_number

__all__ = [
    "HENAN_COLUMNS",
    "JIANGSU_FIELDS",
    "JIANGSU_NAMESPACE",
    "SAMPLES",
    "DbfColumn",
    "Household",
    "Person",
    "build",
    "dbf_bytes",
    "henan_dbf",
    "households",
    "jiangsu_xml",
    "main",
    "sichuan_xlsx",
]

#: Where the sample files live (this package).
SAMPLES = Path(__file__).parent
SEED = 20240301
#: When the samples were "exported": file headers and workbook properties carry it.
EXPORTED = dt.datetime(2024, 3, 1, 8, 30)
_SIZES = (3, 2, 4, 1, 3, 2, 4, 3, 1, 2, 3, 2)

JIANGSU_NAMESPACE = "urn:jsmz:shjz:dbxx:1.0"
#: The ``fields`` that read every value of the Jiangsu sample, relative to a ``js:成员``.
JIANGSU_FIELDS = (
    "js:姓名",
    "js:性别",
    "js:身份证号",
    "js:出生日期",
    "js:与户主关系",
    "js:联系方式/@电话",
    "@序号",
    "../@户编号",
    "../js:所属区县",
    "../js:家庭地址",
    "../js:救助类别",
    "../js:保障状态",
    "../js:开始日期",
    "../js:月保障金",
)


class DbfColumn(NamedTuple):
    """A dBase III column: name (at most 10 bytes in the table's encoding), type, width, decimals."""

    name: str
    type: str
    length: int
    decimals: int = 0


#: The columns of the Henan sample.
HENAN_COLUMNS = (
    DbfColumn("户编号", "C", 14),
    DbfColumn("姓名", "C", 20),
    DbfColumn("性别", "C", 2),
    DbfColumn("身份证号", "C", 18),
    DbfColumn("出生日期", "D", 8),
    DbfColumn("与户主关系", "C", 10),
    DbfColumn("区县代码", "C", 6),
    DbfColumn("家庭住址", "C", 60),
    DbfColumn("救助类别", "C", 8),
    DbfColumn("状态", "C", 4),
    DbfColumn("开始日期", "C", 8),
    DbfColumn("月救助金", "N", 9, 2),
    DbfColumn("家庭人口", "N", 2),
    DbfColumn("残疾", "L", 1),
)

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程魏苏吕丁任沈姚卢"
_GIVEN = {
    "男": "建国华明军伟强磊洋勇杰涛超平刚兵志飞鹏海林文德福波斌金宝成亮东辉",
    "女": "秀英丽芳敏静艳娟霞桂兰红玉梅春燕凤琴云萍淑珍莉慧娜婷雪芬翠",
}
_STREETS = ("人民路", "建设路", "解放路", "新华街", "和平路", "光明街", "中山路", "文化巷", "幸福村", "跃进村")


@dataclasses.dataclass(frozen=True)
class Person:
    """A made-up member of a household."""

    name: str
    gender: str  # 男 or 女
    birth: dt.date
    relation: str
    id_number: str
    phone: str


@dataclasses.dataclass(frozen=True)
class Household:
    """A made-up household and its one enrolment."""

    number: str
    county: str
    address: str
    program: str
    status: str
    start: dt.date
    monthly_fen: int
    members: tuple[Person, ...]


def _day(rng: random.Random, first: dt.date, last: dt.date) -> dt.date:
    return first + dt.timedelta(days=rng.randrange((last - first).days + 1))


def _person(rng: random.Random, county: str, surname: str, gender: str, birth: dt.date, relation: str) -> Person:
    given = "".join(rng.choice(_GIVEN[gender]) for _ in range(rng.choice((1, 2, 2))))
    # GB 11643: an odd sequence for a man, an even one for a woman.
    sequence = 2 * rng.randrange(0, 499) + 1 if gender == "男" else 2 * rng.randrange(1, 500)
    phone = "1" + rng.choice(("39", "58", "87", "36", "51")) + f"{rng.randrange(10**8):08d}"
    return Person(surname + given, gender, birth, relation, make_id_number(county, birth, sequence), phone)


def households(province: str, programs: Sequence[str], statuses: Sequence[str], seed: int) -> list[Household]:
    """Twelve households of the province (sizes :data:`_SIZES`), the same for the same seed."""
    rng = random.Random(seed)  # noqa: S311 - made-up sample data, not secrets
    counties = rng.sample(counties_of(province), 4)
    result = []
    for index, size in enumerate(_SIZES, start=1):
        county = rng.choice(counties)
        surname = rng.choice(_SURNAMES)
        head_gender = rng.choice(("男", "女"))
        head_birth = _day(rng, dt.date(1946, 1, 1), dt.date(1985, 12, 31))
        members = [_person(rng, county, surname, head_gender, head_birth, "本人")]
        if size > 1:
            spouse_gender = "女" if head_gender == "男" else "男"
            spouse_birth = _day(rng, head_birth - dt.timedelta(days=1500), head_birth + dt.timedelta(days=1500))
            members.append(_person(rng, county, rng.choice(_SURNAMES), spouse_gender, spouse_birth, "配偶"))
        while len(members) < size:
            first = dt.date(head_birth.year + 21, 1, 1)
            birth = _day(rng, first, min(dt.date(first.year + 14, 12, 31), dt.date(2019, 12, 31)))
            child_surname = surname if head_gender == "男" else members[-1].name[0]
            members.append(_person(rng, county, child_surname, rng.choice(("男", "女")), birth, "子女"))
        start = _day(rng, dt.date(2014, 1, 1), dt.date(2023, 12, 31))
        street = rng.choice(_STREETS)
        address = f"{division_name(county)}{street}{rng.randrange(1, 300)}号"
        result.append(
            Household(
                number=f"{county}{start.year}{index:04d}",
                county=county,
                address=address,
                program=rng.choice(programs),
                status=rng.choice((statuses[0],) * 6 + tuple(statuses[1:])),
                start=start,
                monthly_fen=rng.randrange(3000, 18000) * 10,
                members=tuple(members),
            )
        )
    # One name with 堃, which GBK has and GB2312 lacks: the readers must not narrow GBK to GB2312.
    household = result[6]
    head = household.members[0]
    renamed = dataclasses.replace(head, name=head.name[0] + "堃")
    result[6] = dataclasses.replace(household, members=(renamed, *household.members[1:]))
    return result


def _replace_member(household: Household, index: int, **changes: object) -> Household:
    members = list(household.members)
    members[index] = dataclasses.replace(members[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(household, members=tuple(members))


def _wrong_check(id_number: str) -> str:
    """The same number with the next check character: the typo the check character exists to catch."""
    alphabet = "0123456789X"
    return id_number[:17] + alphabet[(alphabet.index(id_number[17]) + 1) % len(alphabet)]


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _chinese_date(day: dt.date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def jiangsu_xml() -> bytes:
    """The Jiangsu sample: households of members in GBK XML with a namespace."""
    homes = households("320000", ("城市低保", "农村低保", "特困供养"), ("在保", "停保", "退出"), SEED)
    homes[1] = _replace_member(homes[1], 1, id_number=_wrong_check(homes[1].members[1].id_number))
    homes[3] = dataclasses.replace(homes[3], county="340104")
    homes[5] = _replace_member(homes[5], 1, id_number="")
    man = homes[10].members[0]
    homes[10] = _replace_member(homes[10], 0, gender="女" if man.gender == "男" else "男")
    start_texts = {8: "2021年2月30日"}
    stamp = EXPORTED.isoformat()
    lines = [
        '<?xml version="1.0" encoding="GBK"?>',
        f'<js:低保数据交换 xmlns:js="{JIANGSU_NAMESPACE}" 行政区划="320000" 导出时间="{stamp}">',
    ]
    for index, home in enumerate(homes):
        lines.append(f"  <js:家庭 户编号={quoteattr(home.number)}>")
        own = (
            ("所属区县", home.county),
            ("家庭地址", home.address),
            ("救助类别", home.program),
            ("保障状态", home.status),
            ("开始日期", start_texts.get(index, _chinese_date(home.start))),
            ("月保障金", _yuan(home.monthly_fen)),
        )
        lines.extend(f"    <js:{tag}>{escape(value)}</js:{tag}>" for tag, value in own)
        for number, member in enumerate(home.members, start=1):
            lines.append(f'    <js:成员 序号="{number}">')
            lines.append(f"      <js:姓名>{escape(member.name)}</js:姓名>")
            lines.append(f"      <js:性别>{member.gender}</js:性别>")
            if member.id_number:
                lines.append(f"      <js:身份证号>{member.id_number}</js:身份证号>")
            else:
                lines.append("      <js:身份证号/>")
            lines.append(f"      <js:出生日期>{_chinese_date(member.birth)}</js:出生日期>")
            lines.append(f"      <js:与户主关系>{member.relation}</js:与户主关系>")
            if member.relation == "本人":
                lines.append(f'      <js:联系方式 电话="{member.phone}"/>')
            lines.append("    </js:成员>")
        lines.append("  </js:家庭>")
    lines.append("</js:低保数据交换>")
    return ("\n".join(lines) + "\n").encode("gbk")


def henan_dbf() -> bytes:
    """The Henan sample: a GBK dBase III table, one record per person, two of them deleted."""
    homes = households("410000", ("城市低保", "农村低保", "农村五保"), ("正常", "暂停", "注销"), SEED + 1)
    homes[1] = _replace_member(homes[1], 1, id_number=_wrong_check(homes[1].members[1].id_number))
    homes[3] = dataclasses.replace(homes[3], county="130102")
    rng = random.Random(SEED + 11)  # noqa: S311 - made-up sample data, not secrets
    records: list[tuple[bool, list[object]]] = []
    for index, home in enumerate(homes):
        for number, member in enumerate(home.members):
            name: object = member.name
            if (index, number) == (6, 2):
                name = member.name[0].encode("gbk") + b"\xff\xfe"  # a corrupted name: not GBK
            birth = member.birth
            if (index, number) == (10, 0):
                birth = dt.date(birth.year - 1, birth.month, min(birth.day, 28))
            start = "20210230" if index == 8 else home.start.strftime("%Y%m%d")
            values: list[object] = [
                home.number,
                name,
                member.gender,
                member.id_number,
                birth,
                member.relation,
                home.county,
                home.address,
                home.program,
                home.status,
                start,
                _yuan(home.monthly_fen),
                str(len(home.members)),
                rng.random() < 0.15,
            ]
            records.append((False, values))
        if index in (2, 9):
            # A member who left the household: flagged deleted, never packed away.
            left = _person(rng, home.county, home.members[0].name[0], "男", dt.date(1990 + index, 5, 17), "子女")
            values = list(records[-1][1])
            values[1:6] = [left.name, left.gender, left.id_number, left.birth, left.relation]
            records.append((True, values))
    return dbf_bytes(HENAN_COLUMNS, records, encoding="gbk", language_driver=0x7A, updated=EXPORTED.date())


def dbf_bytes(
    columns: Sequence[DbfColumn],
    records: Sequence[tuple[bool, Sequence[object]]],
    *,
    encoding: str,
    language_driver: int,
    updated: dt.date,
) -> bytes:
    """A dBase III table (version byte 0x03, no memo): ``records`` are (deleted, values) pairs.

    Values: text (or raw bytes) for ``C``, text or a number for ``N``, a date (or raw text) for
    ``D``, a bool or None for ``L``; each must fit its column.
    """
    record_size = 1 + sum(c.length for c in columns)
    header_size = 32 + 32 * len(columns) + 1
    out = bytearray(
        struct.pack(
            "<BBBBIHH", 0x03, updated.year - 1900, updated.month, updated.day, len(records), header_size, record_size
        )
    )
    out += bytes(17) + bytes([language_driver]) + bytes(2)  # reserved; byte 29 is the language driver
    for column in columns:
        name = column.name.encode(encoding)
        if len(name) > 10:
            raise ValueError(f"column name {column.name!r} is longer than 10 bytes")
        out += name.ljust(11, b"\0") + column.type.encode("ascii") + bytes(4)
        out += bytes([column.length, column.decimals]) + bytes(14)
    out += b"\r"
    for deleted, values in records:
        out += b"*" if deleted else b" "
        for column, value in zip(columns, values, strict=True):
            out += _dbf_value(column, value, encoding)
    out += b"\x1a"
    return bytes(out)


def _dbf_value(column: DbfColumn, value: object, encoding: str) -> bytes:
    if column.type == "C":
        data = value if isinstance(value, bytes) else str(value).encode(encoding)
        data = data.ljust(column.length, b" ")
    elif column.type in "NF":
        if isinstance(value, float):
            value = f"{value:.{column.decimals}f}"
        data = str(value).encode("ascii").rjust(column.length, b" ")
    elif column.type == "D":
        data = value.strftime("%Y%m%d").encode("ascii") if isinstance(value, dt.date) else str(value or "").encode()
        data = data.ljust(8, b" ")
    elif column.type == "L":
        data = b"?" if value is None else (b"T" if value else b"F")
    else:
        raise ValueError(f"column type {column.type!r} is not written here")
    if len(data) != column.length:
        raise ValueError(f"the value of {column.name} does not fit its {column.length} bytes")
    return data


#: The Sichuan roster's columns: (row 1, row 2) header texts; row 1 "" under a group.
_SICHUAN_HEADER = (
    ("户编号", ""),
    ("姓名", ""),
    ("性别", ""),
    ("公民身份号码", ""),
    ("出生日期", ""),
    ("与户主关系", ""),
    ("户籍地", "区县代码"),
    ("", "详细地址"),
    ("救助信息", "救助类别"),
    ("", "保障状态"),
    ("", "开始日期"),
    ("", "月保障金（元）"),
)
_SICHUAN_MERGES = ("A1:A2", "B1:B2", "C1:C2", "D1:D2", "E1:E2", "F1:F2", "G1:H1", "I1:L1")


def sichuan_xlsx() -> bytes:
    """The Sichuan sample: an Excel roster with merged headers, a totals row and an empty row."""
    homes = households("510000", ("城市低保", "农村低保", "特困人员"), ("在保", "停发", "退保"), SEED + 5)
    homes[3] = dataclasses.replace(homes[3], county="500103")
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "低保花名册"
    side = Side(style="thin")
    border = Border(left=side, right=side, top=side, bottom=side)
    width = len(_SICHUAN_HEADER)
    for column, texts in enumerate(_SICHUAN_HEADER, start=1):
        for row, text in enumerate(texts, start=1):
            cell = sheet.cell(row, column, text or None)
            cell.font = Font(bold=True)
            cell.alignment = Alignment(horizontal="center", vertical="center")
            cell.border = border
    for merged in _SICHUAN_MERGES:
        sheet.merge_cells(merged)

    def bordered_row(row: int) -> None:
        for column in range(1, width + 1):
            sheet.cell(row, column).border = border

    row = 3
    total_fen = 0
    persons = 0
    for index, home in enumerate(homes):
        if index == 6:
            bordered_row(row)  # an empty row left between two households
            row += 1
        first_row = row
        share = home.monthly_fen // len(home.members) // 10 * 10
        for number, member in enumerate(home.members):
            id_value: object = member.id_number
            id_format = "@"
            if (index, number) == (1, 1):
                # Typed as a number: Excel keeps 15 significant digits.
                id_value = int(member.id_number[:15]) * 1000
                id_format = "0"
                if is_valid_id_number(str(id_value)):
                    raise AssertionError("the truncated ID number must be invalid")
            start: object = home.start
            if index == 8:
                start = "2021-02-30"
            fen = -32000 if (index, number) == (10, 1) else share
            values: list[tuple[object, str]] = [
                (home.number if number == 0 else None, "General"),
                (member.name, "General"),
                (member.gender, "General"),
                (id_value, id_format),
                (member.birth, "yyyy-mm-dd"),
                (member.relation, "General"),
                (int(home.county), "0"),
                (home.address, "General"),
                (home.program, "General"),
                (home.status, "General"),
                (start, 'yyyy"年"m"月"d"日"'),
                (fen / 100, "0.00"),
            ]
            for column, (value, number_format) in enumerate(values, start=1):
                cell = sheet.cell(row, column, value)
                cell.number_format = number_format
                cell.border = border
            if (index, number) == (4, 2):
                sheet.cell(row, width + 1, "已迁出，待核实")
            total_fen += fen
            persons += 1
            row += 1
        if len(home.members) > 1:
            sheet.merge_cells(start_row=first_row, start_column=1, end_row=row - 1, end_column=1)
    bordered_row(row)
    sheet.cell(row, 1, "合计")
    sheet.cell(row, 2, f"共{persons}人")
    sheet.cell(row, width, total_fen / 100).number_format = "0.00"
    # Bordered rows left empty below the table, as templates have them.
    bordered_row(row + 1)
    bordered_row(row + 2)
    for letter, size in zip("ABCDEFGHIJKL", (20, 10, 6, 22, 12, 10, 10, 28, 10, 10, 16, 14), strict=True):
        sheet.column_dimensions[letter].width = size
    sheet.freeze_panes = "A3"
    properties = workbook.properties
    properties.creator = properties.lastModifiedBy = "社会救助信息系统"
    properties.created = properties.modified = EXPORTED
    buffer = io.BytesIO()
    # ExcelWriter rather than Workbook.save, which stamps the current time as "modified".
    ExcelWriter(workbook, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED)).save()
    return _fixed_zip(buffer.getvalue())


def _fixed_zip(data: bytes) -> bytes:
    """The same archive with fixed entry times, stored uncompressed.

    zipfile stamps each entry with the current time; and deflate output may differ between zlib
    builds (zlib-ng), so the committed file would not be reproducible everywhere. Readers do not care.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            target.writestr(entry, source.read(info))
    return out.getvalue()


def build() -> dict[str, bytes]:
    """Every sample file's name and bytes."""
    return {
        "jiangsu-320000.xml": jiangsu_xml(),
        "henan-410000.dbf": henan_dbf(),
        "sichuan-510000.xlsx": sichuan_xlsx(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write the samples (or, with ``--check``, report those that differ from what would be written)."""
    parser = argparse.ArgumentParser(prog="python -m adapters.samples.make_samples", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument("--directory", type=Path, default=SAMPLES, help="where the samples are (default: this package)")
    options = parser.parse_args(argv)
    stale = 0
    for name, data in build().items():
        path = options.directory / name
        if options.check:
            if not path.is_file() or path.read_bytes() != data:
                print(f"{path} is not what make_samples writes")
                stale += 1
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
