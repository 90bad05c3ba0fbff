"""Blocking: which pairs are compared at all.

Comparing every new record with 66 million held ones is out of the question; each rule below
names a key two records must share to be compared, and a pair is a candidate if any rule puts
both records under one key. The rules are chosen so that each typical error of one field still
leaves another rule that holds (a typo in the surname: birth date + given name; a swapped day and
month: the birth keys ignore the order of the two; a mistyped ID number: its valid neighbours).

=================  ================================================================  ===================
rule               key                                                               held out in EM
=================  ================================================================  ===================
id_number          the normalised number, and for an invalid 18-character one the   id_number
                   valid numbers one typo away (GB 11643 check proposals); for
                   other identifiers, keys shared by numbers one typo apart
id_prefix          the number's first 14 digits: division code and birth date       id_number,
                                                                                     birth_date, division
birth_surname      birth date (day and month in either order) + surname pinyin      birth_date, surname
birth_given        birth date (either order) + given-name pinyin                    birth_date, given_name
name_year          the whole name's pinyin (wherever it splits) + year of birth     surname, given_name,
                                                                                     birth_date
division_given     each county (hukou, residence) + given-name pinyin               division, given_name
birth_division     birth date (either order) + each county                          birth_date, division
name_household     the whole name's pinyin + each household co-member               surname, given_name,
                   (a household that moved together, without birth dates or IDs)    household
=================  ================================================================  ===================

Latin names (no Chinese characters) key on their first three letters instead of pinyin, and the
whole name on its tokens in sorted order (surname and given name are sometimes swapped).

"Held out" are the comparisons a rule's key decides: in an EM session over that rule's pairs their
agreement is forced, so their m-probabilities are estimated in the other sessions only.
"""

from __future__ import annotations

from enum import IntEnum

from gateway.domain.linkage._compare import RecordFeatures
from gateway.domain.linkage._names import NameFeatures, NamePart

__all__ = ["HELD_OUT", "BlockingRule", "blocking_keys"]


class BlockingRule(IntEnum):
    """The blocking rules; the value is the rule's index in a pair's rule mask."""

    ID_NUMBER = 0
    ID_PREFIX = 1
    BIRTH_SURNAME = 2
    BIRTH_GIVEN = 3
    NAME_YEAR = 4
    DIVISION_GIVEN = 5
    BIRTH_DIVISION = 6
    NAME_HOUSEHOLD = 7


#: Indexes (into COMPARISONS) of the comparisons each rule's key decides.
HELD_OUT: dict[BlockingRule, frozenset[int]] = {
    BlockingRule.ID_NUMBER: frozenset({0}),
    BlockingRule.ID_PREFIX: frozenset({0, 3, 5}),
    BlockingRule.BIRTH_SURNAME: frozenset({3, 1}),
    BlockingRule.BIRTH_GIVEN: frozenset({3, 2}),
    BlockingRule.NAME_YEAR: frozenset({1, 2, 3}),
    BlockingRule.DIVISION_GIVEN: frozenset({5, 2}),
    BlockingRule.BIRTH_DIVISION: frozenset({3, 5}),
    BlockingRule.NAME_HOUSEHOLD: frozenset({1, 2, 6}),
}


# Enum members looked up once: attribute access on an Enum class costs more than the key itself.
(
    _ID_NUMBER,
    _ID_PREFIX,
    _BIRTH_SURNAME,
    _BIRTH_GIVEN,
    _NAME_YEAR,
    _DIVISION_GIVEN,
    _BIRTH_DIVISION,
    _NAME_HOUSEHOLD,
) = BlockingRule


def _part_key(part: NamePart) -> str:
    # Chinese: the pinyin of the part (homophones share it). Latin: the first three letters, so
    # that a typo further on still meets its original; the other rules cover the first three.
    return part.key if part.cjk else part.key[:3]


def _name_key(name: NameFeatures) -> str:
    if name.surname.cjk or name.given.cjk:
        return name.key
    # Latin names are sometimes written surname first: the tokens in order.
    return "".join(sorted(name.compact.split(" ")))


def blocking_keys(features: RecordFeatures) -> list[tuple[BlockingRule, str]]:
    """Every (rule, key) under which ``features`` is filed; keys of different rules never collide."""
    keys: list[tuple[BlockingRule, str]] = [(_ID_NUMBER, f"i|{k}") for k in features.id_keys]
    number = features.id_number
    if len(number) == 18 and number[:14].isdigit():
        keys.append((_ID_PREFIX, f"p|{number[:14]}"))
    name = features.name
    surname, given = _part_key(name.surname), _part_key(name.given)
    divisions = features.divisions
    if given:
        keys.extend((_DIVISION_GIVEN, f"dg|{division}|{given}") for division in divisions)
    if name.compact and features.household:
        whole = _name_key(name)
        keys.extend((_NAME_HOUSEHOLD, f"nh|{whole}|{member}") for member in features.household)
    birth = features.birth
    if birth is None:
        return keys
    year, month, day = birth
    date = f"{year:04d}{min(month, day):02d}{max(month, day):02d}"
    if surname:
        keys.append((_BIRTH_SURNAME, f"bs|{date}|{surname}"))
    if given:
        keys.append((_BIRTH_GIVEN, f"bg|{date}|{given}"))
    if name.compact:
        keys.append((_NAME_YEAR, f"ny|{year:04d}|{_name_key(name)}"))
    keys.extend((_BIRTH_DIVISION, f"bd|{date}|{division}") for division in divisions)
    return keys
