"""Names as provinces write them: normalised, split into surname and given name, read in pinyin.

The same person's name differs between two provinces' records in a few typical ways, and each
has its remedy here:

* full-width letters and spaces typed by Chinese input methods (``王　伟``): NFKC, then spaces go;
* traditional characters from Hong Kong, Macau or Taiwan documents or old systems (``張偉``):
  OpenCC's traditional-to-simplified table;
* minority and transliterated names written with one of several middle dots
  (``阿依古丽·买买提``, ``阿依古丽•买买提``, ``阿依古丽・买买提``) or none: one dot, and a
  comparison that re-splits an undotted name the way its dotted partner is split;
* homophones typed from pinyin (同音字: 张伟 / 章伟, and heteronyms such as 曾 zeng/ceng):
  every reading of every character (pypinyin, tone-less), compared as sets;
* similar-looking characters and other slips: one character off, or pinyin close under
  Jaro-Winkler (rapidfuzz).

Names without Chinese characters (FEBRL's English names, a passport's Latin letters) fall back to
plain Jaro-Winkler similarity at Splink's usual thresholds. A Chinese name against a romanised one
is compared through the Chinese name's pinyin.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from types import ModuleType

from opencc import OpenCC
from rapidfuzz.distance import Hamming, JaroWinkler

__all__ = [
    "COMPOUND_SURNAMES",
    "NameFeatures",
    "NamePart",
    "name_features",
    "name_level",
    "normalize_name",
    "resplit",
]

#: The middle dots seen between the parts of minority and foreign names (and the full stop some
#: systems substitute); all become U+00B7.
_DOTS = "·•・‧∙⋅･．"
_DOT = "·"
_DOT_TABLE = {ord(c): _DOT for c in _DOTS}
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# What survives in a Latin name: letters, digits, apostrophes, hyphens and single spaces.
_LATIN_JUNK = re.compile(r"[^\w'\- ]+")
_SPACES = re.compile(r"\s+")

#: Two-character surnames (复姓); any other Chinese name's surname is its first character.
COMPOUND_SURNAMES = frozenset(
    (
        "欧阳", "上官", "司马", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒", "夏侯", "轩辕",
        "令狐", "端木", "独孤", "南宫", "西门", "百里", "呼延", "万俟", "申屠", "澹台", "公羊", "钟离", "闻人", "赫连",
        "濮阳", "太史", "仲孙", "宗政", "单于", "淳于", "公冶", "拓跋", "司空", "左丘", "东郭", "第五",
    )
)  # fmt: skip

# Levels of one name part (surname or given name); see name_level.
EXACT, HOMOPHONE, CLOSE, WEAK, DIFFERENT = 0, 1, 2, 3, 4
NULL = -1


@functools.cache
def _converter() -> OpenCC:
    return OpenCC("t2s")


@functools.cache
def _pypinyin() -> ModuleType:
    # Imported on first use: its dictionaries take about 55 MiB, which a hub that never links a
    # name (every record carries a valid ID number) should not pay.
    import pypinyin

    return pypinyin


@functools.lru_cache(maxsize=65536)
def _readings(char: str) -> frozenset[str]:
    """Every tone-less pinyin reading of one character (itself for a non-Chinese one)."""
    py = _pypinyin()
    return frozenset(py.pinyin(char, style=py.Style.NORMAL, heteronym=True)[0])


@functools.lru_cache(maxsize=65536)
def _primary(char: str) -> str:
    """The usual reading of one character, for keys and string similarity."""
    py = _pypinyin()
    return str(py.pinyin(char, style=py.Style.NORMAL)[0][0])


def normalize_name(raw: str) -> str:
    """Canonical text of a name: NFKC, one kind of middle dot, no spaces in Chinese, simplified, lower-case Latin."""
    text = unicodedata.normalize("NFKC", raw).translate(_DOT_TABLE).strip()
    if _CJK.search(text):
        # In a Chinese name a full stop can only be a middle dot typed on a Latin keyboard.
        text = _SPACES.sub("", text).replace(".", _DOT)
        text = _converter().convert(text)
        # A dot at either end, or doubled, is a slip of the input method.
        return _DOT.join(part for part in text.split(_DOT) if part)
    text = _LATIN_JUNK.sub(" ", text.lower())
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True, slots=True)
class NamePart:
    """A surname or a given name, ready to compare."""

    #: Normalised text (no dots, no spaces in Chinese).
    text: str
    #: All readings of each character (Chinese only; empty otherwise).
    readings: tuple[frozenset[str], ...]
    #: Blocking key and fuzzy-comparison string: the usual pinyin run together, or the Latin text without spaces.
    key: str
    #: Whether the text holds Chinese characters.
    cjk: bool


_EMPTY_PART = NamePart("", (), "", False)


def _part(text: str) -> NamePart:
    if not text:
        return _EMPTY_PART
    if _CJK.search(text):
        return NamePart(text, tuple(_readings(c) for c in text), "".join(_primary(c) for c in text), True)
    return NamePart(text, (), text.replace(" ", ""), False)


@dataclass(frozen=True, slots=True)
class NameFeatures:
    """A whole name: its parts as split by default, and what a re-split needs."""

    surname: NamePart
    given: NamePart
    #: The name without dots or spaces (Chinese) or with single spaces (Latin).
    compact: str
    #: Whether the name was written with a middle dot (minority or transliterated).
    dotted: bool
    #: The whole name's blocking key, independent of where it was split: usual pinyin, or Latin text without spaces.
    key: str


_EMPTY_NAME = NameFeatures(_EMPTY_PART, _EMPTY_PART, "", False, "")


def _key(compact: str) -> str:
    if _CJK.search(compact):
        return "".join(_primary(c) for c in compact)
    return compact.replace(" ", "")


def _split_chinese(text: str) -> tuple[str, str]:
    if _DOT in text:
        # 阿依古丽·买买提: own name, then the father's name, which serves as the family name;
        # 约翰·史密斯 (John Smith): given name, then family name. Either way the last part.
        parts = text.split(_DOT)
        return parts[-1], "".join(parts[:-1])
    if text[:2] in COMPOUND_SURNAMES and len(text) > 2:
        return text[:2], text[2:]
    return text[:1], text[1:]


def name_features(name: str, surname: str = "", given_name: str = "") -> NameFeatures:
    """Features of a name; ``surname``/``given_name`` override the split when the source keeps them apart."""
    if surname or given_name:
        sur, giv = normalize_name(surname).replace(_DOT, ""), normalize_name(given_name).replace(_DOT, "")
        cjk = bool(_CJK.search(sur + giv))
        compact = sur + giv if cjk else f"{giv} {sur}".strip()
        return NameFeatures(_part(sur), _part(giv), compact, False, _key(compact))
    text = normalize_name(name)
    if not text:
        return _EMPTY_NAME
    if _CJK.search(text):
        sur, giv = _split_chinese(text)
        compact = text.replace(_DOT, "")
        return NameFeatures(_part(sur), _part(giv), compact, _DOT in text, _key(compact))
    tokens = text.split(" ")
    # A Latin name is written given name(s) first; a single token is taken as the surname.
    return NameFeatures(_part(tokens[-1]), _part(" ".join(tokens[:-1])), text, False, _key(text))


def resplit(undotted: NameFeatures, dotted: NameFeatures) -> NameFeatures:
    """Split a name written without its middle dot the way its dotted partner is split."""
    cut = len(undotted.compact) - len(dotted.surname.text)
    if cut <= 0:
        return undotted
    text = undotted.compact
    return NameFeatures(_part(text[cut:]), _part(text[:cut]), text, True, undotted.key)


def name_level(a: NamePart, b: NamePart) -> int:
    """How alike two surnames or two given names are: EXACT … DIFFERENT, or NULL if one is missing."""
    if not a.text or not b.text:
        return NULL
    if a.text == b.text:
        return EXACT
    if a.cjk and b.cjk:
        ra, rb = a.readings, b.readings
        if len(ra) == len(rb) and all(x & y for x, y in zip(ra, rb, strict=True)):
            return HOMOPHONE
        if len(a.text) == len(b.text) >= 2 and Hamming.distance(a.text, b.text) == 1:
            return CLOSE  # one character off: a similar-looking character or a slip
        similarity = JaroWinkler.similarity(a.key, b.key)
        if similarity >= 0.9:
            return CLOSE
        return WEAK if similarity >= 0.8 else DIFFERENT
    # Latin on at least one side: a Chinese name is compared through its pinyin.
    x, y = (a.key, b.key) if a.cjk != b.cjk else (a.text, b.text)
    if x == y:
        return HOMOPHONE
    similarity = JaroWinkler.similarity(x, y)
    if similarity >= 0.92:
        return HOMOPHONE
    if similarity >= 0.88:
        return CLOSE
    return WEAK if similarity >= 0.7 else DIFFERENT
