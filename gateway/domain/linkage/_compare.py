"""Comparison features: what is precomputed per record, and the level of agreement of each field in a pair.

Every comparison maps a pair of records to a *level*, from strongest agreement (0) to plain
disagreement, or to :data:`NULL` when either side lacks the field (no evidence either way, weight 0).
The levels are fixed here; how much each level weighs is learnt from the data (see ``_training``).

=============  ===========================================================================
comparison     levels
=============  ===========================================================================
id_number      equal (normalised, 15 → 18 digits) · one typo apart (one substitution or
               adjacent swap: a mistyped number next to the right one) · both valid and
               different (two real numbers: two persons) · different
surname        exact · homophone (同音, any reading of each character; Latin: Jaro-Winkler ≥ 0.92)
given_name     · close (one character off, or pinyin JW ≥ 0.9; Latin JW ≥ 0.88) · weak
               (pinyin JW ≥ 0.8; Latin ≥ 0.7) · different
birth_date     exact · day and month swapped · one of year, month, day off · same year only · different
gender         same · different
division       a shared county (any of hukou and residence) · shared prefecture (first 4 digits)
               · shared province (first 2) · different
household      two or more co-members shared · one · none
address        exact · similar (indel ratio ≥ 90) · somewhat (≥ 75) · different
=============  ===========================================================================

A record's missing birth date or divisions are taken from its ID number when the number, even a
mistyped one, still carries a plausible date and a division code there: partial evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

from rapidfuzz.distance import OSA, Indel

from gateway.domain.identity import check_character, normalize_id_number, parse_id_number, propose_corrections
from gateway.domain.linkage._names import NameFeatures, name_features, name_level, resplit
from gateway.domain.linkage._record import LinkageRecord
from gateway.errors import InvalidIdNumber

__all__ = [
    "COMPARISONS",
    "NULL",
    "ComparisonSpec",
    "RecordFeatures",
    "compare",
    "exact_values",
    "features_of",
    "name_levels",
    "names_of",
]

#: The level of a comparison when either record lacks the field.
NULL = -1


@dataclass(frozen=True, slots=True)
class ComparisonSpec:
    """One comparison: its name and the labels of its levels, strongest agreement first."""

    name: str
    levels: tuple[str, ...]
    #: Whether the first level's weight is adjusted for how common the agreeing value is.
    term_frequency: bool = False


#: The comparisons, in the order of a comparison vector.
COMPARISONS: tuple[ComparisonSpec, ...] = (
    ComparisonSpec("id_number", ("equal", "one_typo", "both_valid_different", "different")),
    ComparisonSpec("surname", ("exact", "homophone", "close", "weak", "different"), term_frequency=True),
    ComparisonSpec("given_name", ("exact", "homophone", "close", "weak", "different"), term_frequency=True),
    ComparisonSpec("birth_date", ("exact", "day_month_swapped", "one_component_off", "same_year", "different")),
    ComparisonSpec("gender", ("same", "different")),
    ComparisonSpec("division", ("same_county", "same_prefecture", "same_province", "different")),
    ComparisonSpec("household", ("two_or_more_shared", "one_shared", "none_shared")),
    ComparisonSpec("address", ("exact", "similar", "somewhat_similar", "different")),
)

_WEAK = 3  # the name level below which a crossed comparison is tried


@dataclass(frozen=True, slots=True)
class RecordFeatures:
    """What the comparisons and the blocking rules need of one record, computed once."""

    key: str
    province: str
    #: Normalised ID number (a 15-digit one lengthened to 18); empty if none.
    id_number: str
    #: Whether ``id_number`` is a valid GB 11643 number.
    id_valid: bool
    #: Blocking keys of the number: itself and, if invalid, what a number one typo away would share
    #: (for an 18-character one the valid numbers one typo away; else its typo neighbourhood).
    id_keys: tuple[str, ...]
    name: NameFeatures
    #: (year, month, day), not necessarily a calendar date; None if unknown.
    birth: tuple[int, int, int] | None
    gender: int
    #: Distinct non-empty division codes (hukou, residence).
    divisions: tuple[str, ...]
    household: frozenset[str]
    address: str


def _birth_of(value: object) -> tuple[int, int, int] | None:
    if value is None:
        return None
    year = getattr(value, "year", None)
    if isinstance(year, int):
        return (year, int(getattr(value, "month", 0)), int(getattr(value, "day", 0)))
    digits = "".join(c for c in str(value) if c.isdigit())
    if len(digits) != 8:
        return None
    return int(digits[:4]), int(digits[4:6]), int(digits[6:8])


def _embedded_birth(id_number: str) -> tuple[int, int, int] | None:
    if len(id_number) != 18 or not id_number[:14].isdigit():
        return None
    year, month, day = int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14])
    if 1890 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31:
        return year, month, day
    return None


def _id_features(raw: str) -> tuple[str, bool, tuple[str, ...]]:
    value = normalize_id_number(raw)
    if not value:
        return "", False, ()
    if len(value) in (15, 18):
        try:
            number = parse_id_number(value)
        except InvalidIdNumber:
            pass
        else:
            return number.value, True, (number.value,)
    if len(value) == 15 and value.isascii() and value.isdigit():
        # A first-generation number refused for its date: lengthen it anyway, so that it meets its 18-digit self.
        first17 = value[:6] + ("18" if value[12:15] >= "996" else "19") + value[6:]
        value = first17 + check_character(first17)
    if len(value) == 18:
        return value, False, (value, *propose_corrections(value))
    return value, False, (value, *_typo_neighbourhood(value))


def _typo_neighbourhood(value: str) -> tuple[str, ...]:
    """Keys shared by numbers one substitution (``*``) or one adjacent swap (``~``) apart.

    For identifiers other than GB 11643 numbers (a benchmark's social security number, a
    passport number), which have no check character to propose corrections from.
    """
    if len(value) > 24:
        return ()
    masks = [f"{value[:i]}*{value[i + 1 :]}" for i in range(len(value))]
    swaps = [
        f"{value[:i]}~{min(value[i], value[i + 1])}{max(value[i], value[i + 1])}{value[i + 2 :]}"
        for i in range(len(value) - 1)
        if value[i] != value[i + 1]
    ]
    return (*masks, *swaps)


def features_of(record: LinkageRecord) -> RecordFeatures:
    """Precompute everything a comparison or a blocking rule reads of ``record``."""
    id_number, id_valid, id_keys = _id_features(record.id_number)
    birth = _birth_of(record.birth_date) or _embedded_birth(id_number)
    divisions = tuple(dict.fromkeys(d.strip() for d in (record.hukou_division, record.residence_division) if d.strip()))
    if not divisions and len(id_number) == 18 and id_number[:6].isdigit():
        divisions = (id_number[:6],)
    return RecordFeatures(
        key=record.key,
        province=record.province,
        id_number=id_number,
        id_valid=id_valid,
        id_keys=id_keys,
        name=name_features(record.name, record.surname, record.given_name),
        birth=birth,
        gender=record.gender if record.gender in (1, 2) else 0,
        divisions=divisions,
        household=record.household_members,
        address=" ".join(record.address.lower().split()),
    )


def _id_level(a: RecordFeatures, b: RecordFeatures) -> int:
    x, y = a.id_number, b.id_number
    if not x or not y:
        return NULL
    if x == y:
        return 0
    if a.id_valid and b.id_valid:
        return 2
    if len(x) == len(y) and OSA.distance(x, y, score_cutoff=1) <= 1:
        return 1
    return 3


def _birth_level(a: tuple[int, int, int] | None, b: tuple[int, int, int] | None) -> int:
    if a is None or b is None:
        return NULL
    if a == b:
        return 0
    ya, ma, da = a
    yb, mb, db = b
    if ya == yb and ma == db and da == mb:
        return 1
    if (ya != yb) + (ma != mb) + (da != db) == 1:
        return 2
    return 3 if ya == yb else 4


def _division_level(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    if not a or not b:
        return NULL
    best = 3
    for x in a:
        for y in b:
            if x == y:
                return 0
            if x[:2] == y[:2]:
                best = min(best, 1 if x[:4] == y[:4] else 2)
    return best


def _household_level(a: frozenset[str], b: frozenset[str]) -> int:
    if not a or not b:
        return NULL
    shared = len(a & b)
    return 0 if shared >= 2 else 1 if shared == 1 else 2


def _address_level(a: str, b: str) -> int:
    if not a or not b:
        return NULL
    if a == b:
        return 0
    ratio = Indel.normalized_similarity(a, b)
    return 1 if ratio >= 0.9 else 2 if ratio >= 0.75 else 3


def names_of(a: RecordFeatures, b: RecordFeatures) -> tuple[NameFeatures, NameFeatures]:
    """The two names as they should be compared: an undotted name re-split like its dotted partner."""
    na, nb = a.name, b.name
    if na.dotted != nb.dotted and na.compact and nb.compact:
        if na.dotted:
            nb = resplit(nb, na)
        else:
            na = resplit(na, nb)
    return na, nb


def name_levels(na: NameFeatures, nb: NameFeatures) -> tuple[int, int]:
    """Surname and given-name levels; surname and given name written the other way round count as such."""
    surname, given = name_level(na.surname, nb.surname), name_level(na.given, nb.given)
    if (
        surname >= _WEAK
        and given >= _WEAK
        # Crossed parts that share no first letter would not reach a better level: skip the work.
        and (na.surname.text[:1] == nb.given.text[:1] or na.given.text[:1] == nb.surname.text[:1])
    ):
        crossed = name_level(na.surname, nb.given), name_level(na.given, nb.surname)
        if NULL not in crossed and sum(crossed) < surname + given:
            return crossed
    return surname, given


def compare(a: RecordFeatures, b: RecordFeatures) -> tuple[int, ...]:
    """The comparison vector of a pair: one level per entry of :data:`COMPARISONS`."""
    na, nb = a.name, b.name
    if na.dotted != nb.dotted:
        na, nb = names_of(a, b)
    if na.compact == nb.compact and na.surname.text == nb.surname.text:
        # The common case among candidates: the same name, split alike.
        surname = given = NULL if not na.compact else 0
        if not na.surname.text or not na.given.text:
            surname, given = name_level(na.surname, nb.surname), name_level(na.given, nb.given)
    else:
        surname, given = name_levels(na, nb)
    ga, gb = a.gender, b.gender
    return (
        _id_level(a, b),
        surname,
        given,
        _birth_level(a.birth, b.birth),
        NULL if not ga or not gb else 0 if ga == gb else 1,
        _division_level(a.divisions, b.divisions),
        _household_level(a.household, b.household),
        _address_level(a.address, b.address),
    )


def exact_values(features: RecordFeatures) -> tuple[object | None, ...]:
    """Per comparison, the value whose equality is its first level (None where it is not a single value).

    Training computes the chance that two random records agree on such a value exactly from the
    value counts of the whole population, which is precise where a sample of pairs is not.
    """
    name = features.name
    return (
        features.id_number or None,
        name.surname.text or None,
        name.given.text or None,
        features.birth,
        features.gender or None,
        None,
        None,
        None,
    )
