"""Verification sources: ``[[verification.sources]]`` read from node.toml, files mapped to items, the index kept.

Real files (GBK CSV, JSON Lines) and a real SQLite index in a temporary directory; the config is
read by the node's own loader, so every error is the one an operator sees.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.domain.identity import make_id_number
from gateway.domain.model import Purpose
from gateway.domain.verification import ItemClass, Sensitivity
from gateway.errors import ConfigError
from gateway.node.config import load_node_config
from gateway.node.verification import (
    DEFAULT_PURPOSES,
    SOURCE_KEYS,
    ItemIndex,
    VerificationSettings,
    parse_amount_fen,
)

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
ALL_CLASSES = {c for c in ItemClass if c is not ItemClass.UNSPECIFIED}

LI = make_id_number("440106", dt.date(1958, 3, 9), 21)
WANG = make_id_number("440103", dt.date(1984, 2, 2), 186)
ZHAO = make_id_number("510104", dt.date(1990, 7, 1), 33)
#: A 15-digit (1989) number and the 18-character number it becomes.
SHORT, LENGTHENED = "440103650314123", "44010319650314123X"
#: LI with a wrong check character.
LI_TYPO = LI[:17] + ("0" if LI[17] != "0" else "1")

NODE = (
    '[node]\ndata_dir = "data"\nprofile = "profile.toml"\n'
    '[hub]\naddress = "hub:7443"\nca = "ca.pem"\ncert = "n.pem"\nkey = "n.key"\n'
)

REAL_ESTATE = """
[[verification.sources]]
name = "不动产登记"
file = "real-estate.csv"
format = "csv"
encoding = "gbk"
item_class = "real_estate"
id_number = "证件号码"
reference = "权证号"
description = "{用途} {面积}平方米, {坐落}"
amount = "价值(元)"
amount_unit = "yuan"
as_of = "登记日期"
date_format = "YYYY年M月D日"
"""
HEADER = "权证号,证件号码,坐落,用途,面积,价值(元),登记日期\n"


def settings(tmp_path: Path, section: str) -> VerificationSettings:
    """The [verification] section as the node's loader reads it, from a node.toml in ``tmp_path``."""
    path = tmp_path / "node.toml"
    path.write_text(NODE + section, encoding="utf-8")
    return load_node_config(path).verification


def write_gbk(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("gbk"))
    return path


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ItemIndex]:
    opened = ItemIndex.open(tmp_path / "verification.sqlite")
    yield opened
    opened.close()


def test_the_example_sources_index_every_row_and_answer_by_member(tmp_path: Path) -> None:
    config = load_node_config(DEPLOY / "node.example.toml")
    found = ItemIndex.open(tmp_path / "v.sqlite")
    try:
        summaries = found.update(config.verification.sources)
        held = found.lookup(["440106198402026185", LENGTHENED, "440104200308180861"], ALL_CLASSES)
    finally:
        found.close()

    assert [(s.name, s.rows, s.loaded, s.rejected) for s in summaries] == [
        ("不动产登记", 4, 4, 0),
        ("社保待遇与公积金", 4, 4, 0),
    ]
    assert config.verification.purposes == DEFAULT_PURPOSES
    assert [(i, h.item_class, h.sensitivity, h.amount_fen, h.as_of) for i, h in held] == [
        (0, ItemClass.REAL_ESTATE, Sensitivity.GENERAL, 86_000_000, dt.date(2021, 11, 3)),
        (0, ItemClass.HOUSING_FUND, Sensitivity.SENSITIVE, 4_560_000, dt.date(2026, 10, 31)),
        # The 15-digit number of the file is found under its 18-character form; 410000.5 yuan.
        (1, ItemClass.REAL_ESTATE, Sensitivity.GENERAL, 41_000_050, dt.date(2008, 1, 20)),
        # No value in the file: 0.
        (2, ItemClass.REAL_ESTATE, Sensitivity.GENERAL, 0, dt.date(2016, 6, 1)),
    ]
    assert held[0][1].description == "住宅 62.3平方米, 天河区天河北路XX号XX房"
    assert held[0][1].reference == "粤(2021)广州市不动产权第0234567号"
    assert held[1][1].description == "住房公积金账户余额"


def test_every_data_row_is_an_item_or_a_reject_naming_its_line_and_problems(tmp_path: Path, index: ItemIndex) -> None:
    rows = [
        f'A1,{LI},天河区,住宅,89.5,"1,250,000.00",2019年4月12日',  # line 2: an item
        f"A2,{LI_TYPO},天河区,住宅,60,100,2019年4月12日",  # 3: wrong check character
        "A3,,天河区,住宅,60,100,2019年4月12日",  # 4: no ID number
        f"A4,{WANG},天河区,住宅,60,12.345,2019年4月12日",  # 5: three decimals
        f"A5,{WANG},天河区,住宅,60,-100,2019年4月31日",  # 6: negative, and no 31 April
        f"A6,{WANG},天河区,住宅",  # 7: too few columns
        f"A7,{SHORT},天河区,商业,25,0.29,2008年1月20日",  # 8: an item (15 digits lengthened)
    ]
    write_gbk(tmp_path / "real-estate.csv", HEADER + "\n".join(rows) + "\n")
    (summary,) = index.update(settings(tmp_path, REAL_ESTATE).sources)

    assert (summary.rows, summary.loaded, summary.rejected) == (7, 2, 5)
    assert summary.loaded + summary.rejected == summary.rows
    rejects = {r.location: [(p.field, p.reason) for p in r.problems] for r in index.rejects("不动产登记")}
    assert rejects == {
        "line 3": [("id_number", "ID_NUMBER_BAD_CHECK_CHARACTER")],
        "line 4": [("id_number", "ID_NUMBER_MISSING")],
        "line 5": [("amount", "AMOUNT_INVALID")],
        "line 6": [("amount", "AMOUNT_NEGATIVE"), ("as_of", "DATE_INVALID")],
        "line 7": [("row", "COLUMN_COUNT")],
    }
    assert summary.reasons == {
        "ID_NUMBER_BAD_CHECK_CHARACTER": 1,
        "ID_NUMBER_MISSING": 1,
        "AMOUNT_INVALID": 1,
        "AMOUNT_NEGATIVE": 1,
        "DATE_INVALID": 1,
        "COLUMN_COUNT": 1,
    }
    # No reject message repeats an ID number, not even the mistyped one.
    assert not any(LI_TYPO in p.message for r in index.rejects("不动产登记") for p in r.problems)
    (li,) = index.lookup([LI], {ItemClass.REAL_ESTATE})
    assert (li[1].amount_fen, li[1].location) == (125_000_000, "line 2")
    (short,) = index.lookup([LENGTHENED], {ItemClass.REAL_ESTATE})
    assert short[1].amount_fen == 29


def test_bytes_not_in_the_encoding_reject_their_row_only(tmp_path: Path, index: ItemIndex) -> None:
    good = f"A1,{LI},天河区,住宅,60,100,2019年4月12日\n".encode("gbk")
    broken = f"A2,{WANG},".encode("gbk") + b"\xff\xfe" + ",住宅,60,100,2019年4月12日\n".encode("gbk")
    (tmp_path / "real-estate.csv").write_bytes(HEADER.encode("gbk") + broken + good)

    (summary,) = index.update(settings(tmp_path, REAL_ESTATE).sources)

    assert (summary.loaded, summary.rejected, summary.reasons) == (1, 1, {"ENCODING_INVALID": 1})


@pytest.mark.parametrize(
    ("text", "unit", "fen"),
    [
        ("0.29", "yuan", 29),  # 0.29 * 100 is 28.999999999999996 in floats
        ("19.99", "yuan", 1999),
        ("1,234,567.89", "yuan", 123_456_789),
        ("410000.5", "yuan", 41_000_050),
        ("7", "yuan", 700),
        (" 12.30 ", "yuan", 1230),
        ("92233720368547758.07", "yuan", 2**63 - 1),
        ("125000050", "fen", 125_000_050),
        ("1,000", "fen", 1000),
    ],
)
def test_yuan_become_integer_fen_exactly(text: str, unit: str, fen: int) -> None:
    assert parse_amount_fen(text, unit) == fen


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("12.345", "yuan"),
        ("1e5", "yuan"),
        ("-1", "yuan"),
        ("1,23", "yuan"),
        ("¥12", "yuan"),
        ("1.5", "fen"),
        ("92233720368547758.08", "yuan"),
        ("", "yuan"),
    ],
)
def test_what_is_not_an_amount_is_refused(text: str, unit: str) -> None:
    with pytest.raises(ValueError, match="is"):
        parse_amount_fen(text, unit)


@pytest.mark.parametrize(
    ("pattern", "text", "day"),
    [
        ("YYYYMMDD", "20240131", dt.date(2024, 1, 31)),
        ("YYYY-MM-DD", "2024-01-31", dt.date(2024, 1, 31)),
        ("YYYY年M月D日", "2024年1月31日", dt.date(2024, 1, 31)),
        ("YYYY/M/D HH:mm:ss", "2024/1/31 08:30:00", dt.date(2024, 1, 31)),
    ],
)
def test_the_as_of_date_is_read_in_the_sources_pattern(
    tmp_path: Path, index: ItemIndex, pattern: str, text: str, day: dt.date
) -> None:
    write_gbk(tmp_path / "real-estate.csv", HEADER + f"A1,{LI},天河区,住宅,60,100,{text}\n")
    section = REAL_ESTATE.replace('date_format = "YYYY年M月D日"', f'date_format = "{pattern}"')

    (summary,) = index.update(settings(tmp_path, section).sources)

    assert summary.rejected == 0
    ((_, item),) = index.lookup([LI], {ItemClass.REAL_ESTATE})
    assert item.as_of == day


PENSIONS = """
[[verification.sources]]
name = "社保"
file = "benefits.jsonl"
format = "jsonl"
class_column = "benefit.type"
id_number = "person.id"
reference = "ref"
description = "{benefit.name}"
amount = "benefit.amount"
amount_unit = "yuan"

[verification.sources.classes]
"01" = "pension"
"11" = "housing_fund"
" 21 " = "wage_income"
"""


PENSION_ROW = {"person": {"id": LI}, "ref": "P1", "benefit": {"type": "01", "name": "养老金", "amount": 1}}


def jsonl(path: Path, *rows: dict[str, object]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_a_code_table_gives_each_row_its_class_and_an_unknown_code_rejects_the_row(
    tmp_path: Path, index: ItemIndex
) -> None:
    def row(code: str, amount: object) -> dict[str, object]:
        return {"person": {"id": LI}, "ref": f"R{code}", "benefit": {"type": code, "name": "待遇", "amount": amount}}

    jsonl(tmp_path / "benefits.jsonl", row("01", 3120.5), row("11", "45600"), row("21", 8000), row("99", 1), row("", 1))

    (summary,) = index.update(settings(tmp_path, PENSIONS).sources)

    assert (summary.rows, summary.loaded, summary.rejected) == (5, 3, 2)
    assert summary.reasons == {"CLASS_CODE_UNKNOWN": 1, "CLASS_MISSING": 1}
    held = index.lookup([LI], ALL_CLASSES)
    assert [(h.item_class, h.sensitivity, h.amount_fen, h.reference) for _, h in held] == [
        (ItemClass.PENSION, Sensitivity.SENSITIVE, 312_050, "R01"),
        (ItemClass.HOUSING_FUND, Sensitivity.SENSITIVE, 4_560_000, "R11"),
        (ItemClass.WAGE_INCOME, Sensitivity.SENSITIVE, 800_000, "R21"),
    ]
    # Only the classes asked for.
    assert [h.item_class for _, h in index.lookup([LI], {ItemClass.PENSION, ItemClass.VEHICLE})] == [ItemClass.PENSION]


def test_a_sensitivity_override_marks_every_item_of_the_source(tmp_path: Path, index: ItemIndex) -> None:
    write_gbk(tmp_path / "real-estate.csv", HEADER + f"A1,{LI},天河区,住宅,60,100,2019年4月12日\n")

    index.update(settings(tmp_path, REAL_ESTATE + 'sensitivity = "sensitive"\n').sources)

    ((_, item),) = index.lookup([LI], {ItemClass.REAL_ESTATE})
    assert item.sensitivity == Sensitivity.SENSITIVE


def test_lookup_answers_each_member_by_position_and_only_what_is_held(tmp_path: Path, index: ItemIndex) -> None:
    write_gbk(
        tmp_path / "real-estate.csv",
        HEADER + f"A1,{LI},天河区,住宅,60,100,2019年4月12日\nA2,{ZHAO},武侯区,住宅,70,200,2020年1月2日\n",
    )
    index.update(settings(tmp_path, REAL_ESTATE).sources)

    held = index.lookup([WANG, ZHAO, LI], {ItemClass.REAL_ESTATE})

    assert [(position, item.reference) for position, item in held] == [(1, "A2"), (2, "A1")]
    assert index.lookup([LI], {ItemClass.VEHICLE}) == []


def test_an_unchanged_file_is_not_read_again_a_changed_file_or_mapping_is(tmp_path: Path, index: ItemIndex) -> None:
    path = write_gbk(tmp_path / "real-estate.csv", HEADER + f"A1,{LI},天河区,住宅,60,100,2019年4月12日\n")
    sources = settings(tmp_path, REAL_ESTATE).sources

    assert [s.reindexed for s in index.update(sources)] == [True]
    assert [s.reindexed for s in index.update(sources)] == [False]

    # Touched but the same bytes (copied again): the SHA-256 says unchanged.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert [(s.reindexed, s.loaded) for s in index.update(sources)] == [(False, 1)]

    write_gbk(path, HEADER + f"A9,{WANG},越秀区,商业,25,300,2020年1月2日\n")
    assert [(s.reindexed, s.loaded) for s in index.update(sources)] == [(True, 1)]
    assert index.lookup([LI], ALL_CLASSES) == []
    assert [h.reference for _, h in index.lookup([WANG], ALL_CLASSES)] == ["A9"]

    # The same file under another mapping: amounts in fen now.
    changed = settings(tmp_path, REAL_ESTATE.replace('amount_unit = "yuan"', 'amount_unit = "fen"')).sources
    assert [s.reindexed for s in index.update(changed)] == [True]
    assert [h.amount_fen for _, h in index.lookup([WANG], ALL_CLASSES)] == [300]


def test_the_index_survives_a_restart_and_drops_a_source_no_longer_configured(tmp_path: Path) -> None:
    write_gbk(tmp_path / "real-estate.csv", HEADER + f"A1,{LI},天河区,住宅,60,100,2019年4月12日\n")
    jsonl(tmp_path / "benefits.jsonl", PENSION_ROW)
    path = tmp_path / "verification.sqlite"
    first = ItemIndex.open(path)
    first.update(settings(tmp_path, REAL_ESTATE + PENSIONS).sources)
    first.close()

    again = ItemIndex.open(path)
    try:
        assert [s.reindexed for s in again.update(settings(tmp_path, REAL_ESTATE + PENSIONS).sources)] == [False, False]
        again.update(settings(tmp_path, PENSIONS).sources)
        assert [h.source for _, h in again.lookup([LI], ALL_CLASSES)] == ["社保"]
        again.update(())
        assert again.lookup([LI], ALL_CLASSES) == []
    finally:
        again.close()


def test_a_rebuild_that_fails_leaves_the_previous_index(tmp_path: Path, index: ItemIndex) -> None:
    jsonl(tmp_path / "benefits.jsonl", PENSION_ROW)
    index.update(settings(tmp_path, PENSIONS).sources)

    typo = settings(tmp_path, PENSIONS.replace('id_number = "person.id"', 'id_number = "person.idNo"')).sources
    with pytest.raises(ConfigError) as refused:
        index.update(typo)

    assert (refused.value.reason, refused.value.field) == ("COLUMN_MISSING", "verification.sources[0].id_number")
    assert [h.reference for _, h in index.lookup([LI], ALL_CLASSES)] == ["P1"]


def test_a_large_file_is_indexed_in_batches_with_every_row_counted(tmp_path: Path, index: ItemIndex) -> None:
    numbers = [
        make_id_number("440106", dt.date(1950, 1, 1) + dt.timedelta(days=n // 500), n % 500) for n in range(12_001)
    ]
    lines = [f"R{n},{number},天河区,住宅,60,{n}.5,2019年4月12日" for n, number in enumerate(numbers)]
    lines[7_777] = "R7777,,天河区,住宅,60,1,2019年4月12日"
    write_gbk(tmp_path / "real-estate.csv", HEADER + "\n".join(lines) + "\n")

    (summary,) = index.update(settings(tmp_path, REAL_ESTATE).sources)

    assert (summary.rows, summary.loaded, summary.rejected) == (12_001, 12_000, 1)
    ((_, item),) = index.lookup([numbers[12_000]], {ItemClass.REAL_ESTATE})
    assert item.amount_fen == 1_200_050


def test_the_log_has_each_sources_counts_and_no_id_number(tmp_path: Path, index: ItemIndex) -> None:
    rows = f"A1,{LI},天河区,住宅,60,100,2019年4月12日\nA2,{LI_TYPO},天河区,住宅,60,100,2019年4月12日\n"
    write_gbk(tmp_path / "real-estate.csv", HEADER + rows)

    with capture_logs() as logs:
        index.update(settings(tmp_path, REAL_ESTATE).sources)

    (indexed,) = [e for e in logs if e["event"] == "verification_source_indexed"]
    assert (indexed["source"], indexed["loaded"], indexed["rejected"]) == ("不动产登记", 1, 1)
    (rejected,) = [e for e in logs if e["event"] == "verification_row_rejected"]
    assert rejected["location"] == "line 3"
    assert not re.search(r"\d{15}", json.dumps(logs, default=str, ensure_ascii=False))


def test_a_node_without_a_verification_section_serves_none(tmp_path: Path) -> None:
    served = settings(tmp_path, "")

    assert (served.served, served.sources, served.purposes) == (False, (), DEFAULT_PURPOSES)
    assert served.consent_valid_days == 180
    chosen = settings(tmp_path, '[verification]\npurposes = ["eligibility-review"]\nconsent_valid_days = 90\n')
    assert (chosen.served, chosen.purposes, chosen.consent_valid_days) == (
        False, frozenset({Purpose.ELIGIBILITY_REVIEW}), 90
    )  # fmt: skip


def source(**changes: str | None) -> str:
    """A valid [[verification.sources]] table with keys changed (a value) or left out (None)."""
    keys: dict[str, str | None] = {
        "name": '"不动产"',
        "file": '"real-estate.csv"',
        "format": '"csv"',
        "item_class": '"real_estate"',
        "id_number": '"证件号码"',
    }
    keys.update(changes)
    return "[[verification.sources]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ('[verification]\npurposes = ["eligibility"]\n', "verification.purposes"),
        ("[verification]\npurposes = []\n", "verification.purposes"),
        ("[verification]\nconsent_valid_days = 0\n", "verification.consent_valid_days"),
        ('[verification]\nsources = "x.csv"\n', "verification.sources"),
        ("[verification]\nsource = []\n", "verification.source"),
        (source(id_number=None), "verification.sources[0].id_number"),
        (source(name=None), "verification.sources[0].name"),
        (source(file=None), "verification.sources[0].file"),
        (source(format='"xml"'), "verification.sources[0].format"),
        (source(encoding='"latin-1"'), "verification.sources[0].encoding"),
        (source(delimiter='";;"'), "verification.sources[0].delimiter"),
        (source(format='"jsonl"', delimiter='","'), "verification.sources[0].delimiter"),
        (source(item_class='"house"'), "verification.sources[0].item_class"),
        (source(item_class=None), "verification.sources[0].item_class"),
        (source(class_column='"类别"'), "verification.sources[0].item_class"),
        (source(item_class=None, class_column='"类别"'), "verification.sources[0].classes"),
        (
            source(item_class=None, class_column='"类别"', classes='{ "01" = "house" }'),
            "verification.sources[0].classes.01",
        ),
        (source(classes='{ "01" = "pension" }'), "verification.sources[0].classes"),
        (source(amount='"价值"'), "verification.sources[0].amount_unit"),
        (source(amount='"价值"', amount_unit='"jiao"'), "verification.sources[0].amount_unit"),
        (source(amount_unit='"yuan"'), "verification.sources[0].amount"),
        (source(as_of='"日期"'), "verification.sources[0].date_format"),
        (source(as_of='"日期"', date_format='"DD/MM"'), "verification.sources[0].date_format"),
        (source(as_of='"日期"', date_format='"YYYYMMDD YYYY"'), "verification.sources[0].date_format"),
        (source(file='"real\\u0000estate.csv"'), "verification.sources[0].file"),  # a NUL byte
        (source(file='"~no-such-user-of-hutong/real-estate.csv"'), "verification.sources[0].file"),
        (source(date_format='"YYYYMMDD"'), "verification.sources[0].as_of"),
        (source(sensitivity='"secret"'), "verification.sources[0].sensitivity"),
        (source(colour='"red"'), "verification.sources[0].colour"),
        (source(reference='""'), "verification.sources[0].reference"),
        (source() + source(), "verification.sources[1].name"),
    ],
)
def test_a_mistake_in_the_section_is_a_config_error_naming_the_key(tmp_path: Path, section: str, field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings(tmp_path, section)

    assert refused.value.field == field


def test_a_source_that_is_not_a_regular_file_is_named_when_indexed(tmp_path: Path, index: ItemIndex) -> None:
    (tmp_path / "real-estate.csv").mkdir()
    with pytest.raises(ConfigError) as refused:
        index.update(settings(tmp_path, REAL_ESTATE).sources)
    assert (refused.value.reason, refused.value.field) == ("FILE_MISSING", "verification.sources[0].file")
    assert "is not a regular file" in refused.value.message


def test_a_missing_file_or_a_column_the_header_lacks_is_named_when_indexed(tmp_path: Path, index: ItemIndex) -> None:
    write_gbk(tmp_path / "real-estate.csv", HEADER)
    with pytest.raises(ConfigError) as missing:
        index.update(settings(tmp_path, REAL_ESTATE + source(name='"车辆"', file='"vehicles.csv"')).sources)
    assert (missing.value.reason, missing.value.field) == ("FILE_MISSING", "verification.sources[1].file")

    with pytest.raises(ConfigError) as column:
        index.update(settings(tmp_path, REAL_ESTATE.replace('"价值(元)"', '"估值"')).sources)
    assert (column.value.reason, column.value.field) == ("COLUMN_MISSING", "verification.sources[0].amount")

    with pytest.raises(ConfigError) as placeholder:
        index.update(settings(tmp_path, REAL_ESTATE.replace("{坐落}", "{地址}")).sources)
    assert (placeholder.value.reason, placeholder.value.field) == (
        "COLUMN_MISSING", "verification.sources[0].description"
    )  # fmt: skip


def test_config_md_documents_every_source_key() -> None:
    text = (DEPLOY / "CONFIG.md").read_text(encoding="utf-8")
    start = text.index("### `[[verification.sources]]`")
    end = text.find("\n#", start + 1)
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text[start : end if end != -1 else len(text)], re.MULTILINE))

    assert documented == set(SOURCE_KEYS)
