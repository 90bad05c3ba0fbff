"""A synthetic low-income population (低收入人口) for the demo, the benchmarks and the tests.

Every province of a :class:`PopulationSpec` exports ``persons_per_province`` persons grouped in
households of one to five: elderly people living alone (many of them 特困人员), elderly
couples, grandparents raising grandchildren, single parents, couples with children and a
grandparent. Ages are skewed old and young as on the real rolls; names are drawn from the most
common surnames and given names of each generation (建国 and 秀英 among the elderly, 子轩 and
梓涵 among the children), with Uyghur-style names (``阿依古丽·买买提``) and Tibetan names where
they belong and a small share of dotted names everywhere. Programmes follow the national
shares: about 60 % 低保, 7 % 特困, 10 % 低保边缘, 5 % 刚性支出, plus the special programmes
(medical alongside 低保, education for school-age children, housing, employment) and
temporary assistance; dibao amounts follow the province's dibao line, higher on the coast.

Two kinds of trouble are planted on purpose, and listed in the :class:`Population`:

* *movers*: a share of each province's persons moved to another province of the spec and are
  enrolled in 低保 in both (same ID number and name, two record ids): the duplicate enrollment
  the hub must find. Their second record comes after the province's own records.
* *bad records*: a share of records carries exactly one realistic error (wrong check character,
  impossible birth date, unknown division, negative amount, missing name) that the hub must
  reject. Movers' records are never bad, so every mover stays findable.

Generation is deterministic for a seed (each province draws from its own ``random.Random``
streams, so one province can be generated alone) and streams in constant memory
(:func:`iter_province_records`) at over 100,000 records a second. The speed comes from three
choices: records are assembled as protobuf wire bytes from precomputed pieces (dates, ID
birth-date keys, update times, household enrollments) and parsed once by the C runtime —
building messages field by field costs three times as much; random draws are words of at most
30 bits cut into fields, which CPython keeps in one machine digit; and the hot loop is one flat
function on local names.

ID numbers are unique by construction, so a shared ID number always means a mover: persons
are laid out in blocks of 499 (a prime), one county per block; a person's place in the block
fixes its 3-digit sequence (odd for men, even for women) through an affine permutation, and
the block's round through the province's counties fixes the birth date modulo the number of
rounds. Two persons of one county and one sequence therefore differ in their birth date.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.domain.divisions import MAINLAND_PROVINCES, counties_of
from gateway.domain.identity import check_character
from hutong.v1 import person_pb2, records_pb2

__all__ = [
    "BAD_RECORD_KINDS",
    "Population",
    "PopulationSpec",
    "batches",
    "generate_population",
    "iter_province_records",
]

#: The errors planted in bad records, one per record.
BAD_RECORD_KINDS: tuple[str, ...] = (
    "bad_check_character",
    "impossible_birth_date",
    "unknown_division",
    "negative_amount",
    "missing_name",
)

#: The most records a SyncRecordsRequest may carry (see records.proto).
_MAX_BATCH = 5000


@dataclass(frozen=True)
class PopulationSpec:
    """What to generate; equal specs give equal populations."""

    #: 6-digit codes of mainland provinces, e.g. ``("440000", "410000", "510000")``; no repeats.
    provinces: tuple[str, ...]
    #: Persons whose home is each province (movers' second records come on top).
    persons_per_province: int
    #: Share of each province's persons who moved to another province of the spec and are
    #: enrolled in 低保 in both. Needs at least two provinces; ignored with one.
    mover_share: float = 0.03
    #: Share of records carrying exactly one realistic error (see :data:`BAD_RECORD_KINDS`).
    bad_share: float = 0.001
    #: Seed of every random choice.
    seed: int = 20261130
    #: The day of the export: no date lies on or after it, updates fall in the two years before.
    as_of: dt.date = dt.date(2026, 11, 30)

    def __post_init__(self) -> None:
        if not self.provinces:
            raise ValueError("provinces must name at least one province")
        if len(set(self.provinces)) != len(self.provinces):
            raise ValueError("provinces must not repeat")
        for code in self.provinces:
            if code not in MAINLAND_PROVINCES:
                raise ValueError(f"{code!r} is not a mainland province code")
        if not 0 <= self.persons_per_province <= 10_000_000:
            # The largest province holds about 8 million; record ids have nine digits.
            raise ValueError("persons_per_province must be within 0..10,000,000")
        if not 0.0 <= self.mover_share <= 0.5:
            raise ValueError("mover_share must be within 0..0.5")
        if not 0.0 <= self.bad_share <= 1.0:
            raise ValueError("bad_share must be within 0..1")
        if not 2000 <= self.as_of.year <= 2100:
            raise ValueError("as_of must lie within the years 2000..2100")

    @property
    def total_persons(self) -> int:
        """Distinct persons in the population: provinces × persons_per_province."""
        return len(self.provinces) * self.persons_per_province


@dataclass
class Population:
    """The records each province node would export, and what was planted in them."""

    #: Province code → its records in export order (own persons first, then movers' second records).
    by_province: dict[str, list[person_pb2.PersonRecord]]
    #: ID numbers of the persons enrolled in two provinces, home province order.
    movers: list[str] = field(default_factory=list)
    #: record_id → the kind of error planted in it (one of :data:`BAD_RECORD_KINDS`).
    bad_record_ids: dict[str, str] = field(default_factory=dict)

    @property
    def record_count(self) -> int:
        """All records of all provinces."""
        return sum(len(records) for records in self.by_province.values())


def generate_population(spec: PopulationSpec) -> Population:
    """Generate every province's records, in memory (for the demo and tests; stream big ones)."""
    by_province: dict[str, list[person_pb2.PersonRecord]] = {}
    bad: dict[str, str] = {}
    for province in spec.provinces:
        by_province[province] = list(_province_records(spec, province, bad))
    cal = _calendar(spec.as_of)
    movers = [
        mover.id_number.decode() for province in spec.provinces for mover in _movers(spec, _layout(spec, province), cal)
    ]
    return Population(by_province=by_province, movers=movers, bad_record_ids=bad)


def iter_province_records(spec: PopulationSpec, province: str) -> Iterator[person_pb2.PersonRecord]:
    """One province's records, streamed in constant memory; the same as ``generate_population`` gives."""
    if province not in spec.provinces:
        raise ValueError(f"{province!r} is not a province of the spec")
    return _province_records(spec, province, None)


def batches(
    records: Iterable[person_pb2.PersonRecord], *, size: int, prefix: str
) -> Iterator[records_pb2.SyncRecordsRequest]:
    """Cut records into sync batches of ``size`` (the last may be smaller), ids ``{prefix}-000001`` on."""
    if not 1 <= size <= _MAX_BATCH:
        raise ValueError(f"size must be within 1..{_MAX_BATCH}")
    number = 0
    chunk: list[person_pb2.PersonRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            number += 1
            yield _batch(f"{prefix}-{number:06d}", chunk)
            chunk = []
    if chunk:
        number += 1
        yield _batch(f"{prefix}-{number:06d}", chunk)


def _batch(batch_id: str, records: list[person_pb2.PersonRecord]) -> records_pb2.SyncRecordsRequest:
    request = records_pb2.SyncRecordsRequest(batch_id=batch_id)
    request.records.extend(records)  # copies each record, a little faster than records=... does
    return request


# --- Tables ------------------------------------------------------------------------------------

_T = TypeVar("_T")

#: Size of the weighted lookup tables: a choice is ``table[twelve random bits]``.
_TABLE = 4096


def _weighted(items: Sequence[tuple[_T, float]]) -> tuple[_T, ...]:
    """A table of ``_TABLE`` entries in which each item fills a share proportional to its weight."""
    total = sum(w for _, w in items)
    out: list[_T] = []
    acc = 0.0
    for item, w in items:
        acc += w
        out.extend([item] * (round(acc / total * _TABLE) - len(out)))
    return tuple(out)


def _chars(text: str) -> tuple[bytes, ...]:
    return tuple(c.encode() for c in text)


def _words(text: str) -> tuple[bytes, ...]:
    return tuple(w.encode() for w in text.split())


# Surnames by share of the population in percent (2020 census order), then rare two-character ones.
_SURNAMES = _weighted(
    [
        (s.encode(), w)
        for s, w in [
            ("王", 7.12), ("李", 7.0), ("张", 6.68), ("刘", 5.38), ("陈", 4.53), ("杨", 3.08),
            ("黄", 2.5), ("赵", 2.29), ("吴", 2.05), ("周", 1.93), ("徐", 1.45), ("孙", 1.38),
            ("马", 1.29), ("朱", 1.28), ("胡", 1.16), ("郭", 1.15), ("何", 1.05), ("林", 1.03),
            ("高", 1.0), ("罗", 0.95), ("郑", 0.86), ("梁", 0.85), ("谢", 0.76), ("宋", 0.72),
            ("唐", 0.71), ("许", 0.66), ("韩", 0.65), ("邓", 0.64), ("冯", 0.64), ("曹", 0.62),
            ("彭", 0.59), ("曾", 0.58), ("肖", 0.57), ("田", 0.55), ("董", 0.53), ("潘", 0.52),
            ("袁", 0.52), ("蔡", 0.5), ("蒋", 0.5), ("余", 0.49), ("于", 0.48), ("杜", 0.47),
            ("叶", 0.46), ("程", 0.45), ("魏", 0.44), ("苏", 0.43), ("吕", 0.42), ("丁", 0.41),
            ("任", 0.4), ("卢", 0.39), ("姚", 0.38), ("沈", 0.38), ("钟", 0.37), ("姜", 0.37),
            ("崔", 0.36), ("谭", 0.35), ("陆", 0.34), ("范", 0.33), ("汪", 0.33), ("廖", 0.32),
            ("石", 0.32), ("金", 0.31), ("韦", 0.3), ("贾", 0.3), ("夏", 0.29), ("付", 0.28),
            ("方", 0.28), ("邹", 0.27), ("熊", 0.27), ("白", 0.26), ("孟", 0.26), ("秦", 0.25),
            ("邱", 0.25), ("侯", 0.24), ("江", 0.24), ("尹", 0.23), ("薛", 0.23), ("闫", 0.22),
            ("段", 0.22), ("雷", 0.21), ("龙", 0.21), ("黎", 0.2), ("史", 0.2), ("陶", 0.2),
            ("贺", 0.19), ("毛", 0.19), ("郝", 0.18), ("顾", 0.18), ("龚", 0.18), ("邵", 0.17),
            ("万", 0.17), ("覃", 0.16), ("武", 0.16), ("钱", 0.16), ("戴", 0.15), ("严", 0.15),
            ("莫", 0.15), ("孔", 0.14), ("向", 0.14), ("常", 0.14), ("汤", 0.13), ("康", 0.13),
            ("易", 0.13), ("乔", 0.12), ("赖", 0.12), ("文", 0.12), ("欧阳", 0.06), ("上官", 0.02),
            ("司马", 0.02), ("诸葛", 0.01),
        ]
    ]
)  # fmt: skip

# Given-name characters by gender, and whole given names by generation (born before 1960,
# 1960-84, 1985-2004, 2005 on) and gender: 0 = female, 1 = male.
_GIVEN_CHARS: tuple[tuple[bytes, ...], tuple[bytes, ...]] = (
    _chars(
        "芳娜敏静丽艳娟霞燕玲桂英秀兰梅琴云莲珍凤洁红萍雪琳婷慧佳颖倩欣怡悦涵萱琪玉淑芬华荣"
        "菊翠春月美晶丹蓉娇妍璐露瑶彤诗雨思梦媛莉蕾薇晓素香巧爱婉琼环嫦亚宁馨"
    ),
    _chars(
        "伟强磊军勇杰涛斌超明刚平辉鹏华飞鑫波宇浩凯健俊帆帅旭宁龙林峰建国志文亮成东海兵德"
        "福生荣贵祥山庆永树春发利卫新民江胜金宝忠全力坤博轩然泽睿晨阳毅锋彬宏良振兴"
    ),
)
_GIVEN_NAMES: tuple[tuple[tuple[bytes, ...], tuple[bytes, ...]], ...] = (
    (
        _words("秀英 桂英 秀兰 玉兰 淑珍 玉珍 凤英 桂兰 秀珍 素珍 桂芳 秀芳 玉梅 翠兰 淑英 玉英 桂珍 秀云"),
        _words("建国 建华 国强 国庆 志强 德明 德胜 长江 永生 振华 卫国 建军 福生 金山 树林 保国 解放 德华"),
    ),
    (
        _words("丽娟 晓燕 丽华 海燕 红梅 春燕 艳华 晓丽 丽萍 红霞 美玲 桂香 丽君 秀梅 艳玲 春梅 玉霞 小红"),
        _words("海涛 建伟 志刚 晓东 小军 俊杰 文斌 建平 红军 卫东 海军 国华 志勇 建新 立新 永强 东升 小平"),
    ),
    (
        _words("婷婷 晓雪 佳慧 雪梅 丹丹 欣然 佳琪 思思 静怡 晓婷 雨婷 倩倩 梦琪 文静 佳佳 欣欣 莹莹 亚楠"),
        _words("浩然 宇航 子豪 俊熙 浩宇 一鸣 家豪 博文 晨阳 鹏飞 志鹏 俊杰 子健 天宇 嘉伟 明轩 宇飞 泽宇"),
    ),
    (
        _words("一诺 梓萱 欣怡 语桐 可欣 若汐 依诺 梓涵 思彤 雨桐 诗涵 紫涵 梦瑶 可馨 思雨 佳怡 语嫣 梓琪"),
        _words("子轩 浩宇 宇轩 沐宸 奕辰 梓睿 皓轩 宇泽 俊宇 一诺 浩然 子墨 铭轩 睿泽 锦程 宇辰 梓豪 承泽"),
    ),
)
_ERA_BOUNDS = (1960, 1985, 2005)

# Uyghur-style names: own given name · father's given name (in Chinese transliteration).
_UYGHUR_GIVEN: tuple[tuple[bytes, ...], tuple[bytes, ...]] = (
    _words("阿依古丽 古丽娜尔 热依拉 帕提古丽 米热古丽 阿依努尔 祖丽菲亚 阿米娜 努尔尼沙 再努尔 古丽巴哈尔 阿孜古丽"),
    _words("艾力 买买提 吐尔逊 阿不都热依木 艾尔肯 伊力哈木 努尔艾力 库尔班 艾买提 玉素甫 热合曼 艾山 阿卜杜拉 吾买尔"),
)
# Tibetan names: two two-character parts, no surname.
_TIBETAN_FIRST = _words("扎西 次仁 格桑 达瓦 尼玛 普布 边巴 索朗 白玛 洛桑 强巴 仁增 旦增 嘎玛")
_TIBETAN_SECOND: tuple[tuple[bytes, ...], tuple[bytes, ...]] = (
    _words("卓玛 拉姆 央金 曲珍 德吉 措姆 玉珍 旺姆 普赤 琼达"),
    _words("多吉 顿珠 平措 旺堆 罗布 群培 次旦 欧珠 加措 朗杰"),
)
_DOT = "·".encode()
_HAN, _UYGHUR, _TIBETAN = 0, 1, 2

# Households: size, then a template per member. The head comes first:
#   E elderly head, A adult head (mostly a man), a single parent (mostly a woman),
#   S working-age adult living alone (often disabled); then
#   s spouse, C child of the head, G grandchild, P parent of the head.
_SIZES = _weighted([(1, 35), (2, 25), (3, 18), (4, 14), (5, 8)])
_TEMPLATES: tuple[tuple[str, ...], ...] = (
    (),
    _weighted([("E", 70), ("S", 30)]),
    _weighted([("Es", 52), ("aC", 18), ("EG", 18), ("EC", 12)]),
    _weighted([("AsC", 35), ("aCC", 20), ("EGG", 25), ("EsG", 20)]),
    _weighted([("AsCC", 45), ("AsCP", 30), ("EsGG", 25)]),
    _weighted([("AsCCP", 45), ("AsCCC", 25), ("AsCPP", 30)]),
)
# Heads' ages at as_of: the elderly thin out after 75.
_ELDER_AGES = _weighted([(a, 1.0 if a <= 75 else 1.0 - (a - 75) / 22) for a in range(60, 97)])
_ADULT_AGES = _weighted([(a, 1.0) for a in range(26, 59)])
_PARENT_AGES = _weighted([(a, 1.0) for a in range(23, 51)])
_SINGLE_AGES = _weighted([(a, 1.0) for a in range(18, 60)])
# Share (of 1024) of heads who are men, by template letter.
_HEAD_MALE = {"E": 420, "A": 780, "a": 330, "S": 620}
_OLDEST, _YOUNGEST = 96, 2

# Programme codes (person_pb2.Program) and statuses (person_pb2.EnrollmentStatus).
_DIBAO, _EXTREME, _MARGINAL, _RIGID, _TEMPORARY = 1, 2, 3, 4, 5
_MEDICAL, _EDUCATION, _HOUSING, _EMPLOYMENT = 6, 7, 8, 9
_ACTIVE, _SUSPENDED, _EXITED, _DECEASED = 1, 2, 3, 4
_NONE = 0  # a household on no main programme: temporary or special assistance only
# The household's main programme; living alone, or with others.
_MAIN_SINGLE = _weighted([(_EXTREME, 44), (_DIBAO, 39), (_MARGINAL, 9), (_RIGID, 3), (_NONE, 5)])
_MAIN_FAMILY = _weighted([(_DIBAO, 63), (_MARGINAL, 10), (_RIGID, 5.5), (_NONE, 21.5)])
_MAIN_STATUS = _weighted([(_ACTIVE, 86), (_SUSPENDED, 3), (_EXITED, 11)])

# Monthly dibao line in yuan by province: coastal and municipal provinces higher.
_DIBAO_LINE = {
    "11": 1200, "12": 1100, "13": 760, "14": 700, "15": 820, "21": 800, "22": 700, "23": 700,
    "31": 1200, "32": 1000, "33": 1100, "34": 800, "35": 900, "36": 800, "37": 850, "41": 650,
    "42": 760, "43": 680, "44": 1000, "45": 700, "46": 800, "50": 760, "51": 700, "52": 680,
    "53": 680, "54": 720, "61": 720, "62": 680, "63": 720, "64": 720, "65": 640,
}  # fmt: skip
_MIN_DIBAO_YUAN = 500

# Names with a middle dot in every province, and the local shares where they are common (of 1024).
_DOTTED_ELSEWHERE = 10
_UYGHUR_SHARE = {"65": 460}
_TIBETAN_SHARE = {"54": 870}

# Protobuf wire pieces. Tags are (field number << 3) | wire type.
_LEN = tuple(bytes([n]) for n in range(128))
_GENDER_FIELD = (b"", b"\x28\x01", b"\x28\x02")
_PROGRAM_STATUS = tuple(bytes([0x08, p, 0x10, s]) for p in range(10) for s in range(5))
_SEQUENCE = tuple(f"{n:03d}".encode() for n in range(1000))
#: The name field's tag and length, by the name's length in bytes.
_NAME_FIELD = tuple(b"\x22" + bytes([n]) for n in range(128))
_BLOCK = 499  # persons per block: a prime, so that k -> (a*k + b) mod 499 permutes the block
_ADULT_DAYS = 6575  # eighteen years: the earliest an adult mover can have been enrolled alone
# Life stages by age, for education (6-17) and employment (18-59) assistance.
_SCHOOL_AGE, _WORKING_AGE = 1, 2
_LIFE_STAGE = tuple(
    _SCHOOL_AGE if 6 <= age < 18 else _WORKING_AGE if 18 <= age < 60 else 0 for age in range(_OLDEST + 1)
)


def _given_table(era: int, male: int) -> tuple[bytes, ...]:
    """``_TABLE`` given names of a generation: a third classic names, the rest one or two characters."""
    # A fixed seed: the tables are data shared by every population, like the surname table.
    rng = random.Random(f"hutong-demo:given:{era}:{male}")
    names, chars = _GIVEN_NAMES[era][male], _GIVEN_CHARS[male]
    out = []
    for _ in range(_TABLE):
        kind = rng.random()
        if kind < 0.32:
            out.append(rng.choice(names))
        elif kind < 0.55:
            out.append(rng.choice(chars))
        else:
            out.append(rng.choice(chars) + rng.choice(chars))
    return tuple(out)


_GIVEN_BY_ERA = tuple((_given_table(era, 0), _given_table(era, 1)) for era in range(len(_GIVEN_NAMES)))
#: Given-name tables by year of birth from ``_FIRST_NAME_YEAR``: (women's, men's).
_FIRST_NAME_YEAR = 1800
_GIVEN_BY_YEAR = tuple(
    _GIVEN_BY_ERA[sum(1 for bound in _ERA_BOUNDS if year >= bound)] for year in range(_FIRST_NAME_YEAR, 2200)
)


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values take ten bytes (two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def _amount_field(fen: int) -> bytes:
    """The ``monthly_amount_fen`` field of an Enrollment; empty for zero (the proto3 default)."""
    return b"\x28" + _varint(fen) if fen else b""


def _check_table() -> tuple[bytes, ...]:
    """Check character by ``int(first17, 13) mod 11``, taken from :func:`check_character` itself.

    ``int(first17, 13)`` is Σ aᵢ·13^(16−i) and 13 ≡ 2 (mod 11), so the remainder fixes the
    weighted sum of GB 11643 and with it the check character: one C-level conversion per number.
    """
    table: dict[int, str] = {}
    n = 0
    while len(table) < 11:
        digits = f"{n:017d}"
        table.setdefault(int(digits, 13) % 11, check_character(digits))
        n += 1
    return tuple(table[r].encode() for r in range(11))


_CHECK_BY_REMAINDER = _check_table()


@dataclass(frozen=True, slots=True)
class _Calendar:
    """Every day from the earliest birth to the day before as_of, by index, with encoded pieces."""

    #: Day indexes below this may be birth dates (the latest birth is two years before as_of).
    births: int
    #: Index of the day before as_of: the latest date anything happens.
    last: int
    #: Index of 1 January of the year a person of a given age (0..96 at as_of) was born.
    age_start: tuple[int, ...]
    #: Given-name tables (women's, men's) of a person of a given age.
    given_by_age: tuple[tuple[tuple[bytes, ...], tuple[bytes, ...]], ...]
    #: ``YYYYMMDD`` as it appears in an ID number.
    keys: tuple[bytes, ...]
    #: The encoded Date message (7 bytes: a two-byte year, month, day).
    dates: tuple[bytes, ...]
    #: The encoded ``birth_date`` field of a PersonRecord.
    birth_fields: tuple[bytes, ...]
    #: The encoded ``gender`` and ``birth_date`` fields: (of a woman, of a man) by birth day.
    gender_birth_fields: tuple[tuple[bytes, ...], tuple[bytes, ...]]
    #: Encoded ``updated_at`` fields, ``_UPDATE_TIMES`` times of day per day, backwards from
    #: the day before as_of: entry ``k * _UPDATE_TIMES + t`` lies k days before it.
    updated: tuple[bytes, ...]


#: Records were last updated within this many days before as_of, at one of _UPDATE_TIMES times a day.
_UPDATE_DAYS = 730
_UPDATE_TIMES = 64


@functools.lru_cache(maxsize=4)
def _calendar(as_of: dt.date) -> _Calendar:
    first = dt.date(as_of.year - _OLDEST, 1, 1)
    latest_birth = min(dt.date(as_of.year - _YOUNGEST, 12, 31), as_of - dt.timedelta(days=1))
    last = (as_of - first).days - 1
    keys = []
    dates = []
    for index in range(last + 1):
        day = first + dt.timedelta(days=index)
        keys.append(f"{day.year:04d}{day.month:02d}{day.day:02d}".encode())
        dates.append(b"\x08" + _varint(day.year) + bytes([0x10, day.month, 0x18, day.day]))
    # Provinces update records in office hours, Beijing time; as_of itself is not yet exported.
    beijing = dt.timezone(dt.timedelta(hours=8))
    last_midnight = int(dt.datetime.combine(as_of - dt.timedelta(days=1), dt.time(), beijing).timestamp())
    rng = random.Random(f"hutong-demo:updated:{as_of.isoformat()}")
    updated = []
    for days_before in range(_UPDATE_DAYS):
        for _ in range(_UPDATE_TIMES):
            seconds = last_midnight - days_before * 86400 + rng.randrange(8 * 3600, 20 * 3600)
            timestamp = b"\x08" + _varint(seconds)
            updated.append(b"\x5a" + _LEN[len(timestamp)] + timestamp)
    years = [as_of.year - age for age in range(_OLDEST + 1)]
    births = (latest_birth - first).days + 1
    return _Calendar(
        births=births,
        last=last,
        age_start=tuple((dt.date(year, 1, 1) - first).days for year in years),
        given_by_age=tuple(_GIVEN_BY_YEAR[year - _FIRST_NAME_YEAR] for year in years),
        keys=tuple(keys),
        dates=tuple(dates),
        birth_fields=tuple(b"\x32\x07" + d for d in dates),
        gender_birth_fields=(
            tuple(_GENDER_FIELD[2] + b"\x32\x07" + d for d in dates[:births]),
            tuple(_GENDER_FIELD[1] + b"\x32\x07" + d for d in dates[:births]),
        ),
        updated=tuple(updated),
    )


@dataclass(frozen=True, slots=True)
class _Layout:
    """Per-province constants: county order, ID layout, dibao line, naming and omission habits."""

    province: str
    #: County codes in the order blocks visit them.
    counties: tuple[bytes, ...]
    #: Monthly dibao line in yuan, per county (aligned with ``counties``).
    lines: tuple[int, ...]
    #: Blocks per county, rounded up: a person's birth date ≡ its block's round (mod rounds).
    rounds: int
    #: Salts of the per-block slot permutation.
    salt_a: int
    salt_b: int
    #: Share (of 128) of records without gender, birth date or both.
    omissions: int
    #: Shares (of 1024) of households with Uyghur, with Tibetan names.
    uyghur: int
    tibetan: int


@functools.lru_cache(maxsize=256)
def _layout_cached(seed: int, province: str, persons: int, as_of: dt.date) -> _Layout:
    rng = random.Random(f"hutong-demo:{seed}:{province}:layout")
    counties = list(counties_of(province))
    rng.shuffle(counties)
    blocks = -(-persons // _BLOCK)
    rounds = max(1, -(-blocks // len(counties)))
    if rounds * 4 > _calendar(as_of).births:
        raise ValueError(f"too many persons for the {len(counties)} counties of {province}")
    base = _DIBAO_LINE[province[:2]]
    # Districts of the capital and richer counties pay the provincial line, others somewhat less.
    lines = tuple(base - rng.randrange(0, base // 10 + 1, 10) for _ in counties)
    # Some provinces' legacy systems leave gender and birth date out more often than others.
    omission = rng.choice((0, 3, 3, 13))
    return _Layout(
        province=province,
        counties=tuple(c.encode() for c in counties),
        lines=lines,
        rounds=rounds,
        salt_a=rng.randrange(1 << 30),
        salt_b=rng.randrange(1 << 30),
        omissions=omission,
        uyghur=_UYGHUR_SHARE.get(province[:2], 0),
        tibetan=_TIBETAN_SHARE.get(province[:2], 0),
    )


def _layout(spec: PopulationSpec, province: str) -> _Layout:
    return _layout_cached(spec.seed, province, spec.persons_per_province, spec.as_of)


def _block_permutation(layout: _Layout, block: int) -> tuple[int, int]:
    """Multiplier (1..498) and offset of the block's slot permutation ``k = (a*q + b) mod 499``."""
    return 1 + (block * 7919 + layout.salt_a) % (_BLOCK - 1), (block * 7727 + layout.salt_b) % _BLOCK


def _id_number(county: bytes, keys: tuple[bytes, ...], day: int, slot: int, male: int) -> bytes:
    """The 18-character ID number of the person in ``slot`` of a block of ``county``, born on ``day``."""
    first17 = county + keys[day] + _SEQUENCE[2 * slot + (1 if male else 2)]
    return first17 + _CHECK_BY_REMAINDER[int(first17, 13) % 11]


def _snap(day: int, round_: int, rounds: int, births: int) -> int:
    """The day at or before ``day`` that is ≡ ``round_`` (mod rounds) and a possible birth date."""
    snapped = day - day % rounds + round_
    while snapped >= births:
        snapped -= rounds
    return snapped


def _uyghur_name(x: int, male: int, father: bytes) -> bytes:
    """``given·father``: the person's own given name, then the father's, from 10 random bits."""
    own = _UYGHUR_GIVEN[male]
    return own[(x & 1023) % len(own)] + _DOT + father


def _father_name(x: int) -> bytes:
    """A man's Uyghur given name, as the second part of his child's name, from 10 random bits."""
    fathers = _UYGHUR_GIVEN[1]
    return fathers[(x & 1023) % len(fathers)]


def _tibetan_name(x: int, male: int) -> bytes:
    """A Tibetan name of two two-character parts and no surname, from 16 random bits."""
    second = _TIBETAN_SECOND[male]
    return _TIBETAN_FIRST[(x & 255) % len(_TIBETAN_FIRST)] + second[((x >> 8) & 255) % len(second)]


def _han_name(x: int, year: int, male: int, surname: bytes) -> bytes:
    """Surname and a given name of the person's generation, from 12 random bits."""
    return surname + _GIVEN_BY_YEAR[year - _FIRST_NAME_YEAR][male][x & 4095]


def _enrollment(
    program: int, status: int, start: bytes, end: bytes | None, amount_field: bytes, granting: bytes
) -> bytes:
    """One encoded ``enrollments`` entry of a PersonRecord; dates as encoded Date messages."""
    body = _PROGRAM_STATUS[program * 5 + status] + b"\x1a\x07" + start
    if end is not None:
        body += b"\x22\x07" + end
    body += amount_field + b"\x32\x06" + granting
    return b"\x52" + _LEN[len(body)] + body


def _household_field(prefix: bytes, number: int) -> bytes:
    """The encoded ``household_id`` field: ``44-H`` and (at least) eight digits."""
    household_id = b"%s-H%08d" % (prefix, number)
    return b"\x4a" + _LEN[len(household_id)] + household_id


def _dibao_amount(line: int, x: int) -> int:
    """A person's monthly 低保 in fen: 80-100 % of the local line (the household's income gap)."""
    return max(_MIN_DIBAO_YUAN, line * (800 + (x & 4095) % 201) // 1000) * 100


# --- Movers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mover:
    """A person of one province who also lives, and draws 低保, in another."""

    position: int
    id_number: bytes
    name: bytes
    gender: int
    birth: int
    hukou: bytes
    destination: str


def _movers(spec: PopulationSpec, layout: _Layout, cal: _Calendar) -> Iterator[_Mover]:
    """The movers of ``layout.province`` in position order; every province can replay them."""
    others = [p for p in spec.provinces if p != layout.province]
    persons = spec.persons_per_province
    count = min(persons, round(persons * spec.mover_share)) if others else 0
    rng = random.Random(f"hutong-demo:{spec.seed}:{layout.province}:movers")
    bits = rng.getrandbits
    n_counties = len(layout.counties)
    for m in range(count):
        low, high = m * persons // count, (m + 1) * persons // count
        position = low + rng.randrange(high - low)
        block, place = divmod(position, _BLOCK)
        a, b = _block_permutation(layout, block)
        county = layout.counties[block % n_counties]
        x = bits(64)
        male = x & 1
        age = _SINGLE_AGES[(x >> 1) & 4095]  # migrant workers: working age
        year = spec.as_of.year - age
        day = _snap(cal.age_start[age] + (x >> 13) % 365, block // n_counties, layout.rounds, cal.births)
        y = bits(64)
        ethnicity = y & 1023
        if ethnicity < layout.uyghur or (ethnicity < _DOTTED_ELSEWHERE and not layout.tibetan):
            name = _uyghur_name(y >> 10, male, _father_name(y >> 20))
        elif ethnicity < layout.uyghur + layout.tibetan:
            name = _tibetan_name(y >> 10, male)
        else:
            name = _han_name(y >> 10, year, male, _SURNAMES[(y >> 40) & 4095])
        yield _Mover(
            position=position,
            id_number=_id_number(county, cal.keys, day, (a * place + b) % _BLOCK, male),
            name=name,
            gender=2 - male,
            birth=day,
            hukou=county,
            destination=others[rng.randrange(len(others))],
        )


# --- Records -----------------------------------------------------------------------------------


def _province_records(
    spec: PopulationSpec, province: str, bad: dict[str, str] | None
) -> Iterator[person_pb2.PersonRecord]:
    """Each record of one province; planted errors are noted in ``bad`` (record_id -> kind).

    The hot loop is written flat, on local names, because it runs once per record of
    multi-million-record benchmarks; the rare paths (movers, bad records) call helpers.
    """
    cal = _calendar(spec.as_of)
    layout = _layout(spec, province)
    rng = random.Random(f"hutong-demo:{spec.seed}:{province}:records")
    bits = rng.getrandbits
    parse = person_pb2.PersonRecord.FromString
    keys, dates, birth_fields, births, last = cal.keys, cal.dates, cal.birth_fields, cal.births, cal.last
    age_start, given_by_age, updated = cal.age_start, cal.given_by_age, cal.updated
    updated_first = last - _UPDATE_DAYS + 1
    counties, lines, rounds = layout.counties, layout.lines, layout.rounds
    n_counties = len(counties)
    prefix = province[:2].encode()
    bad_threshold = round(spec.bad_share * (1 << 20))
    omissions = layout.omissions
    gender_birth_fields = cal.gender_birth_fields
    uyghur, minority = layout.uyghur, layout.uyghur + layout.tibetan
    # Outside Xinjiang and Tibet a few names still carry the middle dot (Uyghur, Kazakh, foreign-born).
    dotted = _DOTTED_ELSEWHERE if not minority else 0
    gender_fields, name_fields = _GENDER_FIELD, _NAME_FIELD
    sequence, check_by_remainder, surnames = _SEQUENCE, _CHECK_BY_REMAINDER, _SURNAMES
    # The 3-digit sequence of a slot: even for women, odd for men.
    sequence_by_sex = (
        tuple(sequence[2 * k + 2] for k in range(_BLOCK)),
        tuple(sequence[2 * k + 1] for k in range(_BLOCK)),
    )
    all_update_times = _UPDATE_DAYS * _UPDATE_TIMES
    life_stage = _LIFE_STAGE
    sizes, templates, main_single, main_family, main_status = (
        _SIZES, _TEMPLATES, _MAIN_SINGLE, _MAIN_FAMILY, _MAIN_STATUS
    )  # fmt: skip
    head_ages = {"E": _ELDER_AGES, "A": _ADULT_AGES, "a": _PARENT_AGES, "S": _SINGLE_AGES}
    head_male_share = _HEAD_MALE
    enrollment, amount_field_of = _enrollment, _amount_field
    version_and_id_tag = b"\x10\x01\x1a\x12"  # version 1, then the 18-character id_number

    movers = _movers(spec, layout, cal)
    mover = next(movers, None)
    persons = spec.persons_per_province
    record_no = household_no = 0
    # record_id is "44-" and nine digits; the first six change once in a thousand records.
    rid_head = b"\x0a\x0c" + prefix + b"-000000"

    def rare_record(
        idn: bytes, name: bytes, gender: int, birth: int, hukou: bytes, residence: bytes, enrolled: bytes, latest: int
    ) -> person_pb2.PersonRecord:
        """A mover's record, one household of its own, updated after its latest date."""
        nonlocal record_no, household_no, rid_head
        record_no += 1
        household_no += 1
        if not record_no % 1000:
            rid_head = b"\x0a\x0c%s-%06d" % (prefix, record_no // 1000)
        stamps = all_update_times if latest < updated_first else (last - latest + 1) * _UPDATE_TIMES
        return parse(
            b"".join(
                (
                    rid_head,
                    sequence[record_no % 1000],
                    version_and_id_tag,
                    idn,
                    name_fields[len(name)] + name,
                    gender_fields[gender],
                    birth_fields[birth],
                    b"\x3a\x06" + hukou,
                    b"\x42\x06" + residence,
                    _household_field(prefix, household_no),
                    enrolled,
                    updated[bits(16) % stamps],
                )
            )
        )

    for block in range(-(-persons // _BLOCK)):
        begin = block * _BLOCK
        end = min(persons, begin + _BLOCK)
        county_index = block % n_counties
        county = counties[county_index]
        residence_field = b"\x42\x06" + county
        same_hukou = b"\x3a\x06" + county
        line = lines[county_index]
        round_ = block // n_counties
        mult, offset = _block_permutation(layout, block)
        slot = offset - mult  # the slot of the person before the block's first: k = (a*q + b) mod 499
        position = begin
        while position < end:
            if mover is not None and mover.position == position:
                # A person who has moved away: alone on the rolls here, and still on 低保.
                x = bits(30)
                start = max(last - 30 - (x >> 12) % 3000, min(last, mover.birth + _ADULT_DAYS))
                enrolled = enrollment(
                    _DIBAO, _ACTIVE, dates[start], None, amount_field_of(_dibao_amount(line, x)), county
                )
                yield rare_record(
                    mover.id_number, mover.name, mover.gender, mover.birth, county, county, enrolled, start
                )
                mover = next(movers, None)
                position += 1
                slot += mult
                continue

            # A household. Random words of at most 30 bits, which Python keeps in one machine
            # digit: bit operations on them cost half as much as on 64-bit words.
            limit = end if mover is None or mover.position >= end else mover.position
            x = bits(24)  # bits 0-11 size, 12-23 composition
            size = sizes[x & 4095]
            if size > limit - position:
                size = limit - position
            template = templates[size][x >> 12]
            household_no += 1
            household_field = _household_field(prefix, household_no)
            x = bits(30)  # bits 0-9 ethnicity, 10-19 hukou elsewhere, 20-29 which county
            ethnic_draw = x & 1023
            ethnicity = (
                _HAN if ethnic_draw >= minority and ethnic_draw >= dotted
                else _TIBETAN if ethnic_draw >= uyghur and ethnic_draw >= dotted
                else _UYGHUR
            )  # fmt: skip
            hukou_draw = (x >> 10) & 1023
            if hukou_draw >= 82:
                hukou_field = same_hukou
            elif hukou_draw >= 61:  # not recorded
                hukou_field = b""
            else:  # 人户分离: registered in another county of the province
                other = (county_index + 1 + (x >> 20) % (n_counties - 1 if n_counties > 1 else 1)) % n_counties
                hukou_field = b"\x3a\x06" + counties[other]
            x = bits(24)  # bits 0-11 surname, 12-23 main programme
            head_surname = family_surname = surnames[x & 4095]
            father = b""
            if size == 1:
                program = main_single[x >> 12]
            else:
                program = main_family[x >> 12]
                if program == _DIBAO and template == "Es" and x & 0x3000 == 0:
                    program = _EXTREME  # an elderly couple with no children to support them

            # The household's status, start, amount and end, shared by its members.
            h = bits(24)  # bits 0-11 status, 12-23 start
            status = main_status[h & 4095]
            household_start = last - 30 - (h >> 12) % 4000
            household_started = dates[household_start]
            household_latest = household_start
            main_ended: bytes | None = None
            if program:
                h = bits(24)  # bits 0-11 amount, 12-23 end
                if program == _DIBAO:
                    amount = amount_field_of(_dibao_amount(line, h))
                elif program == _EXTREME:
                    # 特困 basic living: at least 1.3 times the dibao line, plus care.
                    amount = amount_field_of(line * (1300 + (h & 4095) % 301) // 1000 * 100)
                else:
                    amount = b""
                if status == _EXITED:
                    household_latest = household_start + 30 + ((h >> 12) * 16) % (last - household_start - 29)
                    main_ended = dates[household_latest]
                main_enrollment = enrollment(program, status, household_started, main_ended, amount, county)
                with_medical = main_enrollment + enrollment(
                    _MEDICAL, status, household_started, main_ended, b"", county
                )
                medical_share = 360 if program <= _EXTREME else 150
                # Shares (of 1024) of housing and of temporary assistance.
                housing_share, temporary_from = 20, 980
            else:
                # On no main programme: housing, medical or temporary assistance.
                housing_share, temporary_from = 150, 700
            head_age = head_male = 0

            for role in template:
                # A member. y: bits 0-9 a head's gender (0 for others), 10-21 age or age gap.
                y = bits(22)
                if role in head_ages:
                    male = 1 if (y & 1023) < head_male_share[role] else 0
                    age = head_age = head_ages[role][y >> 10]
                    head_male = male
                    surname = head_surname
                elif role == "s":
                    male = 1 - head_male
                    age = head_age + (y >> 10) % 9 - (6 if head_male else 2)
                    age = 18 if age < 18 else _OLDEST if age > _OLDEST else age
                    surname = surnames[bits(12)]
                    if male:
                        family_surname = surname  # the children take their father's surname
                elif role == "P":
                    male = y & 1
                    age = head_age + 20 + (y >> 10) % 16
                    age = _OLDEST if age > _OLDEST else age
                    surname = head_surname if male else surnames[bits(12)]
                else:  # C, G: a child or grandchild of the head
                    male = y & 1
                    low_gap = 20 if role == "C" else 42
                    span = head_age - _YOUNGEST - low_gap + 1
                    age = head_age - low_gap - ((y >> 10) % (19 if span > 19 else span) if span > 0 else 0)
                    age = _YOUNGEST if age < _YOUNGEST else age
                    surname = family_surname
                z = bits(30)  # bits 0-11 given name, 12-29 day of the year
                birth = age_start[age] + (z >> 12) % 365
                birth += round_ - birth % rounds  # ≡ the block's round: unique ID numbers
                while birth >= births:
                    birth -= rounds
                slot += mult
                first17 = county + keys[birth] + sequence_by_sex[male][slot % _BLOCK]
                idn = first17 + check_by_remainder[int(first17, 13) % 11]
                position += 1
                if ethnicity == _HAN:
                    name = surname + given_by_age[age][male][z & 4095]
                elif ethnicity == _UYGHUR:
                    # A child's second name is the father's given name.
                    z = bits(20)
                    name = _uyghur_name(z, male, father if role == "C" and father else _father_name(z >> 10))
                    if male and role in "EAas":
                        father = name[: name.index(_DOT)]
                else:
                    name = _tibetan_name(z, male)

                # Enrollments. e: bits 0-9 medical, 10-19 housing or temporary, 20-25 death,
                # 26 education (school age) or 26-29 employment (working age).
                e = bits(30)
                if program:
                    if household_start > birth + 30 and (age < 75 or (e >> 20) & 63):
                        # The common case: enrolled with the household.
                        enrolled = with_medical if (e & 1023) < medical_share else main_enrollment
                        started = household_started
                        person_status = status
                        latest = household_latest
                    else:
                        # Born after the household was enrolled, or died since: a record of one's own.
                        if household_start > birth + 30:
                            start = household_start
                            person_status = _DECEASED
                        else:
                            start = birth + 30 + bits(7) % 90
                            start = last if start > last else start
                            person_status = status
                        started = dates[start]
                        ended = None
                        latest = start
                        if person_status >= _EXITED:
                            stop = start + 30 + bits(12) % (last - start - 29 if last - start > 29 else 1)
                            latest = stop if stop <= last else last
                            ended = dates[latest]
                        enrolled = enrollment(program, person_status, started, ended, amount, county)
                        if (e & 1023) < medical_share:
                            enrolled += enrollment(_MEDICAL, person_status, started, ended, b"", county)
                    stage = life_stage[age]
                    if stage == _SCHOOL_AGE:
                        if (e >> 26) & 1 and person_status <= _SUSPENDED:
                            school = birth + 2192 if birth + 2192 > latest else latest  # from age six
                            latest = school = last if school > last else school
                            allowance = amount_field_of(10_000 + bits(5) % 31 * 1000)
                            enrolled += enrollment(_EDUCATION, person_status, dates[school], None, allowance, county)
                    elif stage == _WORKING_AGE and program == _DIBAO and not e >> 26 and person_status <= _SUSPENDED:
                        enrolled += enrollment(_EMPLOYMENT, person_status, started, None, b"", county)
                else:
                    if household_start > birth:
                        latest = household_start
                        started = household_started
                    else:
                        latest = birth + 1
                        started = dates[latest]
                    # 医疗救助 alone: neither housing nor temporary assistance below.
                    enrolled = (
                        enrollment(_MEDICAL, _ACTIVE, started, None, b"", county)
                        if housing_share <= (e >> 10) & 1023 < temporary_from
                        else b""
                    )
                special = (e >> 10) & 1023
                if special < housing_share:
                    # 住房救助: a rent subsidy, or the renovation of a dilapidated house (no cash).
                    rent = amount_field_of(20_000 + bits(6) % 41 * 1000 if special & 1 else 0)
                    enrolled += enrollment(_HOUSING, _ACTIVE, started, None, rent, county)
                elif special >= temporary_from:
                    # 临时救助: a one-off payment within the last two years, closed soon after.
                    t = bits(21)
                    given = last - (t & 1023) % 700
                    given = birth + 1 if given <= birth else given
                    closed = given + ((t >> 10) & 63) % 60
                    closed = last if closed > last else closed
                    latest = closed if closed > latest else latest
                    payment = amount_field_of(50_000 + (t >> 16) % 26 * 10_000)
                    enrolled += enrollment(_TEMPORARY, _EXITED, dates[given], dates[closed], payment, county)

                # The record. r: bits 0-15 when it was last updated, 16-22 whether and 23-29
                # which of gender and birth date are left out.
                record_no += 1
                low = record_no % 1000
                if not low:
                    rid_head = b"\x0a\x0c%s-%06d" % (prefix, record_no // 1000)
                r = bits(30)
                record = parse(
                    b"".join(
                        (
                            rid_head,
                            sequence[low],
                            version_and_id_tag,
                            idn,
                            name_fields[len(name)] + name,
                            gender_birth_fields[male][birth]
                            if (r >> 16) & 127 >= omissions
                            else (b"", gender_fields[2 - male], birth_fields[birth])[(r >> 23) % 3],
                            hukou_field,
                            residence_field,
                            household_field,
                            enrolled,
                            updated[
                                (r & 0xFFFF)
                                % (all_update_times if latest < updated_first else (last - latest + 1) * _UPDATE_TIMES)
                            ],
                        )
                    )
                )
                if bad_threshold and bits(20) < bad_threshold:
                    kind = _plant_error(record, bits(20), line)
                    if bad is not None:
                        bad[record.record_id] = kind
                yield record

    # Persons of other provinces who moved here: a second record, on 低保 here too (异地).
    for home in spec.provinces:
        if home == province:
            continue
        for incoming in _movers(spec, _layout(spec, home), cal):
            if incoming.destination != province:
                continue
            x = bits(64)
            residence_index = x % n_counties
            residence = counties[residence_index]
            start = last - 30 - (x >> 20) % 1000  # since arriving, within the last three years
            start = max(start, min(last, incoming.birth + _ADULT_DAYS))
            amount = amount_field_of(_dibao_amount(lines[residence_index], x >> 32))
            enrolled = enrollment(_DIBAO, _ACTIVE, dates[start], None, amount, residence)
            yield rare_record(
                incoming.id_number, incoming.name, incoming.gender, incoming.birth,
                incoming.hukou, residence, enrolled, start,
            )  # fmt: skip


def _plant_error(record: person_pb2.PersonRecord, x: int, line_yuan: int) -> str:
    """Plant one realistic error in ``record``, chosen by ``x``; return its kind."""
    kind = BAD_RECORD_KINDS[x % len(BAD_RECORD_KINDS)]
    if kind == "bad_check_character":
        # A typo in the last character, as when the number was keyed in by hand.
        number = record.id_number
        wrong = [c for c in "0123456789X" if c != number[17]]
        record.id_number = number[:17] + wrong[x // len(BAD_RECORD_KINDS) % len(wrong)]
    elif kind == "impossible_birth_date":
        # The legacy system stored the day as typed, 30 February included.
        year = int(record.id_number[6:10])
        record.birth_date.CopyFrom(person_pb2.Date(year=year, month=2, day=30))
    elif kind == "unknown_division":
        # A code that never existed: keyed as the province plus 9999.
        record.residence_division = record.residence_division[:2] + "9999"
    elif kind == "negative_amount":
        # A sign error in the export: an amount paid back recorded as negative.
        first = record.enrollments[0]
        first.monthly_amount_fen = -(first.monthly_amount_fen or line_yuan * 100)
    else:
        record.ClearField("name")
    return kind
