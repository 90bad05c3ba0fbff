"""A Chinese low-income population with realistic duplicates and errors, for the linkage benchmark.

The persons are the demo's (``gateway.demo.population``: common surnames and generational given
names, Uyghur ``名·父名`` names in Xinjiang, households, the demo's own omissions of gender and birth
date). Then, with a fixed seed:

* whole households *move* to another province and are registered there again (15 % of
  households), and a few single persons are registered twice in their own province, in
  another county (3 %): the duplicates linkage must find;
* each second record carries the errors seen between provinces' systems: the ID number missing
  (30 %), written in its 15-digit form (10 %) or mistyped by one digit or one swap (15 %); a given
  name character replaced by a homophone (同音字, 15 %) or a similar-looking one (形近字, 5 %);
  the name in traditional characters (10 %) or with a full-width space (5 %); a dotted name with
  another dot or none (40 %); day and month swapped (8 %), one of year, month or day off by one
  (5 %), or no birth date (5 %); no gender (3 %); the hukou moved along (40 %);
* a few originals are legacy too: no ID number (5 %) or a 15-digit one (3 %).

Truth: two records match when they were made from the same person (the original ID number).
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from dataclasses import dataclass, replace

from opencc import OpenCC
from pypinyin import Style, lazy_pinyin

from gateway.demo.population import PopulationSpec, generate_population
from gateway.domain.divisions import counties_of
from gateway.domain.linkage import LinkageRecord, normalize_name

__all__ = ["ChinesePopulation", "generate"]

#: Characters common in names, grouped by sound below to draw homophones from.
_POOL = (
    "芳娜敏静丽艳娟霞燕玲桂英秀兰梅琴云莲珍凤洁红萍雪琳婷慧佳颖倩欣怡悦涵萱琪玉淑芬华荣菊翠春月美晶丹蓉娇妍璐露"
    "瑶彤诗雨思梦媛莉蕾薇晓素香巧爱婉琼环嫦亚宁馨伟强磊军勇杰涛斌超明刚平辉鹏飞鑫波宇浩凯健俊帆帅旭龙林峰建国"
    "志文亮成东海兵德福生贵祥山庆永树发利卫新民江胜金宝忠全力坤博轩然泽睿晨阳毅锋彬宏良振兴炜玮薇维威为卫"
    "娥鹅莹盈迎英樱婕洁捷杰颖影瑛彬斌滨冰兵玲灵凌铃岭琳林霖麟磊蕾雷蓓贝倍涵寒韩翰晗欣新馨心鑫昕芯"
    "丽莉力立利俐励栗黎梨丹单担郸娜那纳钠敏民闵珉静晶菁敬婧境靖竞君军均钧俊峻骏浚珺云芸昀匀允耘"
    "章张彰璋樟漳李里理礼鲤王汪旺刘柳留流陈晨臣辰沉杨阳洋扬央黄皇煌凰簧赵照兆昭召吴武伍五午周州洲舟粥"
)
#: Similar-looking characters (形近字) seen in hand-copied registers.
_LOOKALIKE = dict(
    pair
    for a, b in (
        ("玉", "王"), ("末", "未"), ("己", "已"), ("士", "土"), ("太", "大"), ("天", "夫"), ("候", "侯"),
        ("淋", "琳"), ("绢", "娟"), ("亭", "婷"), ("梅", "海"), ("风", "凤"), ("瑛", "英"), ("季", "秀"),
        ("俪", "丽"), ("健", "建"), ("朋", "明"), ("车", "军"), ("男", "勇"), ("红", "江"), ("晴", "睛"),
        ("辉", "挥"), ("鹏", "朋"), ("峰", "锋"), ("萍", "苹"), ("荣", "蓉"),
    )
    for pair in ((a, b), (b, a))
)  # fmt: skip


@dataclass
class ChinesePopulation:
    """Records in arrival order (province by province, duplicates last) and the true person of each."""

    records: list[LinkageRecord]
    person_of: dict[str, str]

    def true_pairs(self) -> set[frozenset[str]]:
        """Every pair of records made from one person."""
        by_person: dict[str, list[str]] = defaultdict(list)
        for key, person in self.person_of.items():
            by_person[person].append(key)
        pairs = set()
        for keys in by_person.values():
            for i in range(len(keys)):
                for j in range(i + 1, len(keys)):
                    pairs.add(frozenset((keys[i], keys[j])))
        return pairs


def _homophones() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for c in dict.fromkeys(_POOL):
        groups[lazy_pinyin(c, style=Style.NORMAL)[0]].append(c)
    return {c: [o for o in group if o != c] for group in groups.values() for c in group if len(group) > 1}


def _short_id(id_number: str) -> str | None:
    """The 15-digit first-generation form of an 18-digit number born in the 1900s."""
    if len(id_number) == 18 and id_number[6:8] == "19" and id_number[14:17] < "996":
        return id_number[:6] + id_number[8:17]
    return None


def _mistype(id_number: str, rng: random.Random) -> str:
    digits = list(id_number)
    if rng.random() < 0.5:
        i = rng.randrange(17)
        digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
    else:
        i = rng.randrange(16)
        if digits[i] == digits[i + 1]:
            digits[i] = str((int(digits[i]) + 1) % 10)
        else:
            digits[i], digits[i + 1] = digits[i + 1], digits[i]
    return "".join(digits)


def _garble_name(name: str, rng: random.Random, homophones: dict[str, list[str]], s2t: OpenCC) -> str:
    if "·" in name:
        roll = rng.random()
        if roll < 0.3:
            name = name.replace("·", rng.choice("•・."))
        elif roll < 0.4:
            name = name.replace("·", "")
        return name
    chars = list(name)
    given = range(2 if len(chars) > 3 else 1, len(chars))
    roll = rng.random()
    if roll < 0.15:
        options = [i for i in given if chars[i] in homophones]
        if options:
            i = rng.choice(options)
            chars[i] = rng.choice(homophones[chars[i]])
    elif roll < 0.20:
        options = [i for i in given if chars[i] in _LOOKALIKE]
        if options:
            i = rng.choice(options)
            chars[i] = _LOOKALIKE[chars[i]]
    name = "".join(chars)
    roll = rng.random()
    if roll < 0.10:
        name = s2t.convert(name)
    elif roll < 0.15:
        name = name[:1] + "\u3000" + name[1:]
    return name


def _garble_birth(birth: dt.date | None, rng: random.Random) -> dt.date | str | None:
    if birth is None:
        return None
    roll = rng.random()
    if roll < 0.08 and birth.day <= 12 and birth.day != birth.month:
        return dt.date(birth.year, birth.day, birth.month)
    if roll < 0.13:
        y, m, d = birth.year, birth.month, birth.day
        part = rng.randrange(3)
        if part == 0:
            y += rng.choice((-1, 1))
        elif part == 1:
            m = m % 12 + 1
        else:
            d = d % 28 + 1
        return f"{y:04d}{m:02d}{d:02d}"
    if roll < 0.18:
        return None
    return birth


def generate(persons_per_province: int, *, provinces: tuple[str, ...] = ("440000", "410000", "510000", "650000"),
             seed: int = 7) -> ChinesePopulation:  # fmt: skip
    """The originals of every province, then the second records of movers and re-registered persons."""
    rng = random.Random(seed)
    s2t = OpenCC("s2t")
    homophones = _homophones()
    spec = PopulationSpec(provinces=provinces, persons_per_province=persons_per_province, mover_share=0.0,
                          bad_share=0.0, seed=seed)  # fmt: skip
    population = generate_population(spec)
    originals: list[LinkageRecord] = []
    person_of: dict[str, str] = {}
    households: dict[str, list[LinkageRecord]] = defaultdict(list)
    for province, pbs in population.by_province.items():
        for pb in pbs:
            birth = (
                dt.date(pb.birth_date.year, pb.birth_date.month, pb.birth_date.day)
                if pb.HasField("birth_date")
                else None
            )
            id_number = pb.id_number
            roll = rng.random()
            if roll < 0.05:
                id_number = ""
            elif roll < 0.08:
                id_number = _short_id(id_number) or id_number
            record = LinkageRecord(
                key=f"{province}/{pb.record_id}",
                province=province,
                name=pb.name,
                id_number=id_number,
                birth_date=birth,
                gender=int(pb.gender),
                hukou_division=pb.hukou_division,
                residence_division=pb.residence_division,
                household_id=f"{province}/{pb.household_id}",
            )
            person_of[record.key] = pb.id_number
            households[record.household_id].append(record)
            originals.append(record)

    duplicates: list[LinkageRecord] = []
    moved_households: dict[str, list[LinkageRecord]] = {}
    number = 0

    def second(original: LinkageRecord, province: str, county: str, household: str) -> LinkageRecord:
        nonlocal number
        number += 1
        true_id = person_of[original.key]
        roll = rng.random()
        if roll < 0.30:
            id_number = ""
        elif roll < 0.40:
            id_number = _short_id(true_id) or true_id
        elif roll < 0.55:
            id_number = _mistype(true_id, rng)
        else:
            id_number = true_id
        birth = original.birth_date if isinstance(original.birth_date, dt.date) else None
        record = LinkageRecord(
            key=f"{province}/D{number:07d}",
            province=province,
            name=_garble_name(original.name, rng, homophones, s2t),
            id_number=id_number,
            birth_date=_garble_birth(birth, rng),
            gender=0 if rng.random() < 0.03 else original.gender,
            hukou_division=county if rng.random() < 0.4 else original.hukou_division,
            residence_division=county,
            household_id=household,
        )
        person_of[record.key] = true_id
        return record

    for household_id, members in households.items():
        home = members[0].province
        if rng.random() < 0.15:
            destination = rng.choice([p for p in provinces if p != home])
            county = rng.choice(counties_of(destination))
            new_id = f"{destination}/M{household_id}"
            moved_households[new_id] = [second(m, destination, county, new_id) for m in members]
        for member in members:
            if rng.random() < 0.03:
                county = rng.choice([c for c in counties_of(home) if c != member.residence_division])
                new_id = f"{home}/R{member.key}"
                moved_households[new_id] = [second(member, home, county, new_id)]

    # Each record names its household's other members (by name, as the province wrote them).
    def with_members(group: list[LinkageRecord]) -> list[LinkageRecord]:
        return [
            replace(r, household_members=frozenset(normalize_name(o.name) for o in group if o is not r)) for r in group
        ]

    records: list[LinkageRecord] = []
    for group in households.values():
        records.extend(with_members(group))
    for group in moved_households.values():
        duplicates.extend(with_members(group))
    order = {r.key: i for i, r in enumerate(originals)}
    records.sort(key=lambda r: order[r.key])
    rng.shuffle(duplicates)
    return ChinesePopulation(records + duplicates, person_of)
