"""GB/T 2260 administrative division codes (行政区划代码).

A division code is six ASCII digits: two for the province, two for the prefecture, two for
the county. ``110000`` is Beijing, ``110105`` its Chaoyang district. The table of current
codes (``data/divisions.tsv``: province, prefecture and county level, with names) is package
data, loaded once on first use.

Two kinds of check live here, and they differ on purpose:

* ID numbers carry the division code in force when the number was issued, which may have
  been abolished or renumbered since. :mod:`gateway.domain.identity` therefore validates only
  the *province* of an ID number (:data:`PROVINCE_CODES`, which never changes).
* Divisions stated on a record (hukou, residence, granting division) describe the present,
  so :func:`validate_division` checks them against the current table.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import NamedTuple

from gateway.errors import ConfigError, InvalidDivision

__all__ = [
    "MAINLAND_PROVINCES",
    "PROVINCE_CODES",
    "counties_of",
    "division_name",
    "is_known_division",
    "province_of",
    "validate_division",
]

#: Province-level codes and their names: the 31 mainland provinces, then Taiwan, Hong Kong, Macau.
PROVINCE_CODES: Mapping[str, str] = MappingProxyType(
    {
        "110000": "北京市",
        "120000": "天津市",
        "130000": "河北省",
        "140000": "山西省",
        "150000": "内蒙古自治区",
        "210000": "辽宁省",
        "220000": "吉林省",
        "230000": "黑龙江省",
        "310000": "上海市",
        "320000": "江苏省",
        "330000": "浙江省",
        "340000": "安徽省",
        "350000": "福建省",
        "360000": "江西省",
        "370000": "山东省",
        "410000": "河南省",
        "420000": "湖北省",
        "430000": "湖南省",
        "440000": "广东省",
        "450000": "广西壮族自治区",
        "460000": "海南省",
        "500000": "重庆市",
        "510000": "四川省",
        "520000": "贵州省",
        "530000": "云南省",
        "540000": "西藏自治区",
        "610000": "陕西省",
        "620000": "甘肃省",
        "630000": "青海省",
        "640000": "宁夏回族自治区",
        "650000": "新疆维吾尔自治区",
        "710000": "台湾省",
        "810000": "香港特别行政区",
        "820000": "澳门特别行政区",
    }
)

#: The 31 mainland provinces, each of which runs a Hutong node.
MAINLAND_PROVINCES: frozenset[str] = frozenset(PROVINCE_CODES) - {"710000", "810000", "820000"}

_DIGITS = frozenset("0123456789")


class _Table(NamedTuple):
    names: dict[str, str]
    known: frozenset[str]
    counties: dict[str, tuple[str, ...]]


@functools.cache
def _table() -> _Table:
    """Load ``data/divisions.tsv`` once: ``code<TAB>name`` per line, ``#`` starts a comment."""
    resource = resources.files("gateway.domain").joinpath("data", "divisions.tsv")
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("division table is missing", reason="DIVISION_TABLE_MISSING") from exc
    names: dict[str, str] = {}
    counties: dict[str, list[str]] = {code: [] for code in PROVINCE_CODES}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line or line.startswith("#"):
            continue
        code, sep, name = line.partition("\t")
        if not sep or not _is_six_digits(code) or not name or code in names:
            raise ConfigError(
                f"division table line {lineno} is malformed or repeated",
                reason="DIVISION_TABLE_INVALID",
                metadata={"line": str(lineno)},
            )
        names[code] = name
        if code[4:] != "00":
            province = code[:2] + "0000"
            if province not in counties:
                raise ConfigError(
                    f"division table line {lineno} names an unknown province",
                    reason="DIVISION_TABLE_INVALID",
                    metadata={"line": str(lineno)},
                )
            counties[province].append(code)
    return _Table(
        names=names,
        known=frozenset(names),
        counties={province: tuple(sorted(codes)) for province, codes in counties.items()},
    )


def _is_six_digits(code: str) -> bool:
    # str.isdigit alone would accept non-ASCII digits such as "١" or "²".
    return len(code) == 6 and code.isascii() and code.isdigit()


def _malformed(field: str | None, record: str | None) -> InvalidDivision:
    return InvalidDivision(
        "division code must be 6 ASCII digits",
        reason="DIVISION_MALFORMED",
        field=field,
        record=record,
    )


def province_of(code: str, *, field: str | None = None, record: str | None = None) -> str:
    """The 6-digit province code (``xx0000``) of any 6-digit division code."""
    if not _is_six_digits(code):
        raise _malformed(field, record)
    province = code[:2] + "0000"
    if province not in PROVINCE_CODES:
        raise InvalidDivision(
            f"division code {code} does not start with a province code",
            reason="DIVISION_UNKNOWN_PROVINCE",
            field=field,
            record=record,
            metadata={"division_code": code},
        )
    return province


def validate_division(code: str, *, field: str, record: str | None = None) -> str:
    """Return ``code`` if it is a current GB/T 2260 division; raise :class:`InvalidDivision` if not."""
    if code in _table().known:
        return code
    if not _is_six_digits(code):
        raise _malformed(field, record)
    raise InvalidDivision(
        f"division code {code} is not a current GB/T 2260 code",
        reason="DIVISION_UNKNOWN",
        field=field,
        record=record,
        metadata={"division_code": code},
    )


def is_known_division(code: str) -> bool:
    """Whether ``code`` is a current division code at any level."""
    return code in _table().known


def division_name(code: str) -> str | None:
    """The Chinese name of a current division code, or None if it is not one."""
    return _table().names.get(code)


def counties_of(province_code: str) -> list[str]:
    """The county-level codes (last two digits not ``00``) of a province, sorted.

    Empty for Taiwan, Hong Kong and Macau, whose subdivisions GB/T 2260 does not list.
    """
    if not _is_six_digits(province_code):
        raise _malformed("province_code", None)
    try:
        return list(_table().counties[province_code])
    except KeyError:
        raise InvalidDivision(
            f"{province_code} is not a province code",
            reason="DIVISION_UNKNOWN_PROVINCE",
            field="province_code",
            metadata={"division_code": province_code},
        ) from None
