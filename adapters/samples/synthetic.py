"""Large synthetic exports in the Guangdong sample's layout (GBK CSV), for node tests and benchmarks.

Person ``n`` is always the same made-up person — record id ``GD`` + ``n``, a valid, unique ID
number, a one-person household — so a test can write an export, change some persons' amounts or
leave some out, write the re-export, and know exactly what the hub must end up holding.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.domain.divisions import counties_of
from gateway.domain.identity import make_id_number

__all__ = ["GUANGDONG_HEADER", "guangdong_person", "write_guangdong_export"]

GUANGDONG_HEADER = (
    "序号,救助证编号,户编号,姓名,性别,公民身份号码,出生日期,户籍地区划,居住地区划,与户主关系,救助类别,保障状态,"
    "起始日期,终止日期,月保障金(元),审批机关区划,备注"
)
_COUNTIES = counties_of("440000")
_FIRST_BIRTH = dt.date(1940, 1, 1)
_BIRTH_DAYS = 26_000  # births up to 2011
_NAMES = [a + b for a in "王李张刘陈杨黄赵吴周" for b in ("伟", "芳", "秀英", "建国", "敏", "静")]


def guangdong_person(n: int) -> tuple[str, str, str, dt.date, str]:
    """Person ``n``'s (record id, ID number, name, birth date, county)."""
    county = _COUNTIES[n % len(_COUNTIES)]
    rest = n // len(_COUNTIES)
    birth = _FIRST_BIRTH + dt.timedelta(days=rest % _BIRTH_DAYS)
    sequence = rest // _BIRTH_DAYS % 998 + 1
    return f"GD{n:010d}", make_id_number(county, birth, sequence), _NAMES[n % len(_NAMES)], birth, county


def write_guangdong_export(
    path: Path, persons: Iterable[int], *, amount_fen: Callable[[int], int] = lambda n: 88_000
) -> int:
    """Write persons ``persons`` as 广东's 低保 export (title lines, header, rows, totals); returns the rows."""
    rows = 0
    with path.open("w", encoding="gbk", newline="") as fh:
        fh.write("广东省社会救助信息系统 低保对象导出\n导出时间：2026年11月28日\n" + GUANGDONG_HEADER + "\n")
        for n in persons:
            rid, idn, name, birth, county = guangdong_person(n)
            sex = "男" if int(idn[16]) % 2 else "女"
            fen = amount_fen(n)
            rows += 1
            fh.write(
                f"{rows},{rid},H{rid},{name},{sex},{idn},{birth:%Y%m%d},{county},{county},户主,城市低保,在保,"
                f"2024年3月1日,,{fen // 100}.{fen % 100:02d},{county},\n"
            )
        fh.write(f"合计,,,,,,,,,,,,,,{rows}人,,\n")
    return rows
