"""Standards registry: every row loaded or rejected, exact amounts, lookups by longest prefix and date."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.domain.standards import (
    Standard,
    StandardsRegistry,
    StandardValue,
    changed_on,
    division_prefix,
    load_standards,
    parse_standards,
)
from gateway.errors import ConfigError, InvalidArgument, InvalidDivision

EXAMPLE = Path(__file__).parents[3] / "deploy" / "standards.example.csv"
HEADER = "division,standard,monthly_yuan,effective_from,document\n"
D = dt.date


def registry(*rows: tuple[str, Standard, dt.date, int]) -> StandardsRegistry:
    return StandardsRegistry(StandardValue(div, std, day, fen) for div, std, day, fen in rows)


def test_every_row_is_loaded_or_rejected_with_its_line_and_reason() -> None:
    text = (
        "# a comment, not a row\n"
        + HEADER
        + "440000,dibao_urban,950,2025-01-01,粤民规字〔2024〕12号\n"  # line 3
        + "\n"  # blank: not a row
        + "449999,dibao_urban,950,2025-01-01,\n"  # 5: no such division
        + "44000,dibao_urban,950,2025-01-01,\n"  # 6: malformed division
        + "440100,dibao,950,2025-01-01,\n"  # 7: unknown standard
        + "440100,dibao_urban,9.505,2025-01-01,\n"  # 8: three decimals
        + "440100,dibao_urban,-5,2025-01-01,\n"  # 9: negative
        + "440100,dibao_urban,0,2025-01-01,\n"  # 10: zero
        + "440100,dibao_urban,1230,2025-02-30,\n"  # 11: no such day
        + "440100,dibao_urban,1230,2025/07/01,\n"  # 12: not YYYY-MM-DD
        + "440100,dibao_urban,1230,2025-07-01,\n"  # 13: loaded
        + "440100,dibao_urban,1240,2025-07-01,\n"  # 14: same key, another amount
        + "440100,dibao_urban,1230,2025-07-01,again\n"  # 15: the same amount again: agrees, loaded once
        + "440100,dibao_urban,1230\n"  # 16: too few columns
        + '440100,"dibao_urban,1230,2025-07-01,\n'  # 17: an open quote
        + "440100,dibao_rural,1230,2025-07-01,,\n"  # 18: a trailing delimiter is tolerated
    )
    result = parse_standards(text)
    assert result.rows_read == 15
    assert result.rows_read == result.loaded + len(result.rejected)
    assert result.loaded == 4
    assert [(r.line, r.reason) for r in result.rejected] == [
        (5, "DIVISION_UNKNOWN"),
        (6, "DIVISION_MALFORMED"),
        (7, "STANDARD_UNKNOWN"),
        (8, "AMOUNT_INVALID"),
        (9, "AMOUNT_INVALID"),
        (10, "AMOUNT_INVALID"),
        (11, "DATE_INVALID"),
        (12, "DATE_INVALID"),
        (14, "DUPLICATE_CONFLICT"),
        (16, "COLUMN_COUNT"),
        (17, "CSV_MALFORMED"),
    ]
    assert "line 13" in result.rejected[8].message
    assert [(v.division, v.standard, v.monthly_fen) for v in result.values] == [
        ("440000", Standard.DIBAO_URBAN, 95_000),
        ("440100", Standard.DIBAO_URBAN, 123_000),
        ("440100", Standard.DIBAO_RURAL, 123_000),
    ]
    assert result.values[0].document == "粤民规字〔2024〕12号"
    assert result.summary().endswith("rows read 15: loaded 4, rejected 11")


@pytest.mark.parametrize(
    ("yuan", "fen"),
    [("1230", 123_000), ("1230.5", 123_050), ("0.29", 29), ("1000.01", 100_001), ("0.07", 7), ("99999.99", 9_999_999)],
)
def test_yuan_become_fen_exactly(yuan: str, fen: int) -> None:
    (value,) = parse_standards(HEADER + f"440000,dibao_urban,{yuan},2025-01-01,\n").values
    assert value.monthly_fen == fen


@pytest.mark.parametrize("yuan", ["1e3", "1,230", "１２３０", "", "0.001", "100000.01", "nan", " . "])
def test_amounts_that_are_not_plain_yuan_are_rejected(yuan: str) -> None:
    result = parse_standards(HEADER + f'440000,dibao_urban,"{yuan}",2025-01-01,\n')
    assert [r.reason for r in result.rejected] == ["AMOUNT_INVALID"]


def test_gbk_and_bom_files_are_read_and_a_bad_line_spoils_only_itself() -> None:
    body = HEADER + "440000,dibao_urban,950,2025-01-01,粤民规字〔2024〕12号\n"
    gbk = parse_standards(body.encode("gbk"))
    assert gbk.encoding == "gb18030"
    assert gbk.values[0].document == "粤民规字〔2024〕12号"
    bom = parse_standards("\ufeff".encode() + body.encode())
    assert bom.encoding == "utf-8-sig"
    assert bom.values[0].division == "440000"
    assert parse_standards(body.encode("gbk"), encoding="gbk").values == gbk.values
    # Told UTF-8, a GBK line is rejected on its own; the rows around it load.
    mixed = (
        HEADER + "440000,dibao_urban,950,2025-01-01,\n"
    ).encode() + "440000,dibao_rural,800,2025-01-01,粤\n".encode("gbk")
    mixed += b"440000,extreme_poverty,1235,2025-01-01,\r\n"
    result = parse_standards(mixed, encoding="utf-8")
    assert [(r.line, r.reason) for r in result.rejected] == [(3, "ENCODING_INVALID")]
    assert result.loaded == 2
    with pytest.raises(ConfigError) as bad:
        parse_standards(b"x", encoding="klingon")
    assert bad.value.field == "encoding"


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("division,standard,monthly_fen,effective_from", "monthly_fen"),
        ("division,standard,effective_from", "monthly_yuan"),
        ("division,standard,monthly_yuan,effective_from,standard", "standard"),
    ],
)
def test_a_bad_header_sinks_the_file_naming_the_column(header: str, field: str) -> None:
    with pytest.raises(ConfigError) as bad:
        parse_standards(header + "\n440000,dibao_urban,950,2025-01-01\n")
    assert bad.value.field == field


def test_headers_are_read_in_any_order_and_case() -> None:
    result = parse_standards("Effective_From, Monthly_Yuan ,STANDARD,division\n2025-01-01,950,dibao_rural,440000\n")
    assert result.values == (StandardValue("440000", Standard.DIBAO_RURAL, D(2025, 1, 1), 95_000),)
    with pytest.raises(ConfigError):
        parse_standards("# only a comment\n")


def test_a_province_file_may_name_only_its_own_divisions() -> None:
    text = HEADER + "440100,dibao_urban,1230,2025-07-01,\n410100,dibao_urban,840,2025-07-01,\n"
    result = parse_standards(text, province="440000")
    assert [(r.line, r.reason) for r in result.rejected] == [(3, "DIVISION_OUTSIDE_PROVINCE")]
    with pytest.raises(ConfigError):
        parse_standards(text, province="440100")


def test_lookups_take_the_longest_prefix_in_force_on_the_day() -> None:
    reg = registry(
        ("440000", Standard.DIBAO_URBAN, D(2025, 1, 1), 95_000),
        ("440000", Standard.DIBAO_URBAN, D(2026, 1, 1), 98_000),
        ("440100", Standard.DIBAO_URBAN, D(2025, 7, 1), 123_000),
        ("440106", Standard.DIBAO_URBAN, D(2026, 7, 1), 130_000),
    )
    at = reg.at
    assert at("440106", Standard.DIBAO_URBAN, D(2024, 12, 31)) is None  # before any version
    assert at("440106", Standard.DIBAO_URBAN, D(2025, 1, 1)).monthly_fen == 95_000  # type: ignore[union-attr]
    assert at("440106", Standard.DIBAO_URBAN, D(2025, 6, 30)).monthly_fen == 95_000  # type: ignore[union-attr]
    gz = at("440106", Standard.DIBAO_URBAN, D(2025, 7, 1))
    assert gz is not None
    assert (gz.division, gz.monthly_fen, gz.effective_from) == ("440100", 123_000, D(2025, 7, 1))
    # The county's own version is not in force yet: the prefecture's answers.
    assert at("440106", Standard.DIBAO_URBAN, D(2026, 6, 30)).division == "440100"  # type: ignore[union-attr]
    assert at("440106", Standard.DIBAO_URBAN, D(2026, 7, 1)).monthly_fen == 130_000  # type: ignore[union-attr]
    # Elsewhere in Guangdong the province's history applies.
    assert at("440303", Standard.DIBAO_URBAN, D(2025, 12, 31)).monthly_fen == 95_000  # type: ignore[union-attr]
    assert at("440303", Standard.DIBAO_URBAN, D(2026, 1, 1)).monthly_fen == 98_000  # type: ignore[union-attr]
    assert at("440303", Standard.DIBAO_RURAL, D(2026, 1, 1)) is None
    assert at("410105", Standard.DIBAO_URBAN, D(2026, 1, 1)) is None
    assert [v.monthly_fen for v in reg.history("440000", Standard.DIBAO_URBAN)] == [95_000, 98_000]
    assert reg.history("440106", Standard.DIBAO_RURAL) == ()
    with pytest.raises(InvalidDivision):
        at("4401", Standard.DIBAO_URBAN, D(2026, 1, 1))


def test_division_prefixes_follow_the_code_level() -> None:
    assert [division_prefix(c) for c in ("440000", "440100", "440106", "441900")] == ["44", "4401", "440106", "4419"]


def test_publishing_the_same_key_again_is_a_correction_and_is_reported() -> None:
    old = registry(("440100", Standard.DIBAO_URBAN, D(2025, 7, 1), 123_000))
    fix = StandardValue("440100", Standard.DIBAO_URBAN, D(2025, 7, 1), 123_500, "穗民规字〔2025〕4号")
    new = StandardValue("440100", Standard.DIBAO_URBAN, D(2026, 7, 1), 126_000)
    same = StandardValue("440100", Standard.DIBAO_URBAN, D(2025, 7, 1), 123_000)
    publication = old.publish([same, fix, new])
    assert publication.added == (new,)
    assert publication.replaced == ((same, fix),)
    assert publication.unchanged == 1
    assert [v.monthly_fen for v in publication.registry.history("440100", Standard.DIBAO_URBAN)] == [123_500, 126_000]
    assert len(old) == 1  # registries are immutable


def test_the_digest_names_the_values_not_their_order_and_survives_the_canonical_form() -> None:
    rows = [
        ("440000", Standard.DIBAO_URBAN, D(2025, 1, 1), 95_000),
        ("410000", Standard.EXTREME_POVERTY, D(2025, 1, 1), 89_700),
    ]
    a, b = registry(*rows), registry(*reversed(rows))
    assert a.digest == b.digest
    assert a == b
    assert a.digest != registry(rows[0]).digest
    again = StandardsRegistry.from_canonical(a.canonical())
    assert again.digest == a.digest
    assert list(again) == list(a)
    with pytest.raises(InvalidArgument) as bad:
        StandardsRegistry.from_canonical('{"schema":1,"values":[{"division":"44"}]}')
    assert bad.value.field == "values[0]"


def test_changes_name_the_prefixes_whose_value_in_force_differs() -> None:
    old = registry(
        ("440000", Standard.DIBAO_URBAN, D(2025, 1, 1), 95_000),
        ("440100", Standard.DIBAO_URBAN, D(2025, 7, 1), 123_000),
        ("410000", Standard.DIBAO_URBAN, D(2025, 1, 1), 69_000),
    )
    new = old.publish(
        [
            StandardValue("440100", Standard.DIBAO_URBAN, D(2026, 1, 1), 126_000),
            StandardValue("510000", Standard.DIBAO_RURAL, D(2026, 1, 1), 56_000),
            StandardValue("410000", Standard.DIBAO_URBAN, D(2026, 9, 1), 72_000),  # later than the day asked
        ]
    ).registry
    day = D(2026, 3, 1)
    assert changed_on(old, new, day) == {("4401", Standard.DIBAO_URBAN), ("51", Standard.DIBAO_RURAL)}
    assert changed_on(old, old, day) == frozenset()
    # One registry, two days: what takes effect in between.
    assert changed_on(new, new, D(2026, 9, 1), old_day=day) == {("41", Standard.DIBAO_URBAN)}
    assert new.next_change(day) == D(2026, 9, 1)
    assert new.next_change(D(2026, 9, 1)) is None


def test_the_example_file_loads_every_row() -> None:
    result = load_standards(EXAMPLE)
    assert result.rejected == ()
    assert result.rows_read == result.loaded > 10
    reg = StandardsRegistry.from_files(result)
    conghua = reg.at("440117", Standard.DIBAO_RURAL, D(2026, 3, 1))
    assert conghua is not None
    assert (conghua.division, conghua.monthly_fen) == ("440117", 118_000)
    assert reg.at("440117", Standard.DIBAO_RURAL, D(2026, 7, 1)).monthly_fen == 123_000  # type: ignore[union-attr]
    assert reg.at("440106", Standard.DIBAO_RURAL, D(2026, 3, 1)).division == "440100"  # type: ignore[union-attr]
    assert reg.at("440303", Standard.DIBAO_URBAN, D(2025, 3, 1)).monthly_fen == 95_000  # type: ignore[union-attr]
    assert reg.at("440303", Standard.DIBAO_URBAN, D(2026, 3, 1)).monthly_fen == 98_000  # type: ignore[union-attr]
    assert reg.at("510104", Standard.DIBAO_URBAN, D(2026, 3, 1)).monthly_fen == 100_050  # type: ignore[union-attr]
    for province in ("410105", "510104", "440106"):
        for standard in Standard:
            assert reg.at(province, standard, D(2026, 3, 1)) is not None
    with pytest.raises(ConfigError) as missing:
        load_standards(EXAMPLE.with_name("no-such.csv"))
    assert missing.value.reason == "FILE_MISSING"


def test_a_stored_registry_that_json_cannot_rebuild_is_refused_naming_the_key() -> None:
    # JSON can hold a lone surrogate ("\ud800"); UTF-8, and so the registry's digest, cannot.
    surrogate = (
        '{"schema":1,"values":[{"division":"440000","document":"\\ud800","effective_from":"2025-01-01",'
        '"monthly_fen":95000,"standard":"dibao_urban"}]}'
    )
    with pytest.raises(InvalidArgument) as bad:
        StandardsRegistry.from_canonical(surrogate)
    assert (bad.value.field, bad.value.reason) == ("values[0].document", "STANDARD_VALUE_INVALID")
    with pytest.raises(InvalidArgument) as deep:
        StandardsRegistry.from_canonical("[" * 100_000 + "]" * 100_000)
    assert (deep.value.field, deep.value.reason) == ("standards", "STANDARDS_INVALID")
