"""Citizen ID numbers (公民身份号码, GB 11643-1999): normalise, parse, check, propose fixes.

An 18-character number is a 6-digit division code, the birth date ``YYYYMMDD``, a 3-digit
sequence (odd for men, even for women) and a check character. The check is ISO 7064
MOD 11-2: ``S = Σ aᵢ·Wᵢ`` over the first 17 digits with ``W = 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2``,
and ``S mod 11 = 0…10`` gives ``1 0 X 9 8 7 6 5 4 3 2``.

Also accepted:

* first-generation 15-digit numbers (1989): ``19`` is inserted before the ``YYMMDD`` birth date
  (``18`` for the sequences 996–999, which were given to centenarians) and the check
  character appended;
* residence permits for Hong Kong, Macau and Taiwan residents (prefix 810000 / 820000 / 830000);
* the 2023 foreign permanent-residence ID: ``9`` + the issuing province's two digits + …,
  the same birth date, sequence and check positions.

Only the *province* of a number is checked, not its full division code: a number keeps the
code in force when it was issued, which may no longer exist (see :mod:`gateway.domain.divisions`).

A wrong check character is an error, never silently fixed. :func:`propose_corrections` lists
the valid numbers one typo away, for a person to confirm against the document.

Error messages never contain the number or any of its digits; they name positions (1-based).
This module sits on the hot ingest path (tens of thousands of numbers a second), hence the
precomputed tables and the caches below.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from enum import IntEnum

from gateway.domain.divisions import PROVINCE_CODES
from gateway.domain.model import Gender  # the sequence's parity gives MALE or FEMALE
from gateway.errors import InvalidIdNumber

__all__ = [
    "EARLIEST_BIRTH",
    "WEIGHTS",
    "Gender",
    "IdKind",
    "IdNumber",
    "check_character",
    "is_valid_id_number",
    "make_id_number",
    "mask_id_number",
    "normalize_id_number",
    "parse_id_number",
    "propose_corrections",
]

_FIELD = "id_number"

#: Weights of the first 17 digits; Wᵢ = 2^(17-i) mod 11 for the 0-based position i.
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
#: Check character for each value of S mod 11.
_CHECK = "10X98765432"
_CHECK_ALPHABET = "0123456789X"
# int(first17, 13) is Σ aᵢ·13^(16-i), and 13 ≡ 2 (mod 11), so S ≡ 2·int(first17, 13): one C-level
# conversion instead of 17 multiplications in Python. Indexed by int(first17, 13) mod 11.
_CHECK_BY_REMAINDER = "".join(_CHECK[2 * r % 11] for r in range(11))
_DIGITS = "0123456789"

#: The earliest birth date accepted; an earlier one is taken for a typo.
EARLIEST_BIRTH = dt.date(1890, 1, 1)
_EARLIEST_KEY = "18900101"

_PROVINCE_PREFIXES = frozenset(code[:2] for code in PROVINCE_CODES)
#: Residence-permit prefixes and the province their holders belong to.
_PERMIT_PROVINCE = {"810000": "810000", "820000": "820000", "830000": "710000"}

# Every character for which str.isspace() is true (pinned by a test), so that normalising is
# one str.translate: ASCII whitespace, NEL, NBSP, the U+2000 spaces, line and paragraph
# separators, and the ideographic space U+3000 that Chinese input methods type.
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_NORMALISE: dict[int, str | None] = {ord(c): None for c in _WHITESPACE}
_NORMALISE.update({0xFF10 + d: str(d) for d in range(10)})  # full-width ０…９
_NORMALISE.update({ord("x"): "X", ord("Ｘ"): "X", ord("ｘ"): "X"})


class IdKind(IntEnum):
    """Which kind of document issued the number."""

    #: A mainland citizen's resident identity card (居民身份证).
    RESIDENT = 1
    #: A residence permit for Hong Kong, Macau or Taiwan residents (港澳台居民居住证).
    HK_MACAU_TAIWAN_RESIDENCE = 2
    #: The 2023 foreign permanent-resident ID card (外国人永久居留身份证), starting with 9.
    FOREIGN_PERMANENT_RESIDENT = 3


# Birth dates seen so far, keyed by YYYYMMDD. Only dates between EARLIEST_BIRTH and today enter,
# so the cache is bounded (about 50,000 entries) and a lookup replaces building a date.
_DATES: dict[str, dt.date] = {}

# Today's date as YYYYMMDD and the epoch second at which it expires; date.today() costs
# as much as the rest of a parse, so it is re-read only once the local day has changed.
_today_key = ""
_today_expires = 0.0


def _current_today_key() -> str:
    global _today_key, _today_expires
    now = time.time()
    if now >= _today_expires:
        today = dt.date.today()
        midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time.min)
        _today_key = _date_key(today)
        _today_expires = midnight.timestamp()
    return _today_key


def _date_key(day: dt.date) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _date_of(key: str) -> dt.date:
    cached = _DATES.get(key)
    if cached is not None:
        return cached
    return dt.date(int(key[:4]), int(key[4:6]), int(key[6:8]))


def _check_of(first17: str) -> str:
    return _CHECK_BY_REMAINDER[int(first17, 13) % 11]


@dataclass(frozen=True, slots=True)
class IdNumber:
    """A valid ID number, normalised to 18 characters.

    Get one from :func:`parse_id_number`; the constructor does not validate. The repr hides
    the number so that it does not end up in logs or tracebacks; read :attr:`value` on purpose.
    """

    #: The normalised 18-character number.
    value: str

    def __repr__(self) -> str:
        return f"IdNumber(<redacted>, kind={self.kind.name})"

    @property
    def division_code(self) -> str:
        """The division code at the time of issue (first six digits); it may no longer exist."""
        return self.value[:6]

    @property
    def province_code(self) -> str:
        """The holder's province as a key of ``PROVINCE_CODES``.

        Residents: the first two digits + ``0000``. Residence permits: 810000 (Hong Kong),
        820000 (Macau), 710000 (Taiwan, prefix 830000). Foreign permanent residents: the
        issuing province, digits 2–3 + ``0000``.
        """
        value = self.value
        if value[0] == "9":
            return value[1:3] + "0000"
        permit = _PERMIT_PROVINCE.get(value[:6])
        return permit if permit is not None else value[:2] + "0000"

    @property
    def birth_date(self) -> dt.date:
        """The date of birth (digits 7–14)."""
        return _date_of(self.value[6:14])

    @property
    def sequence(self) -> int:
        """The 3-digit sequence number (digits 15–17)."""
        return int(self.value[14:17])

    @property
    def gender(self) -> Gender:
        """Male for an odd sequence, female for an even one."""
        return Gender.MALE if self.value[16] in "13579" else Gender.FEMALE

    @property
    def kind(self) -> IdKind:
        """Which document the number belongs to, from its prefix."""
        value = self.value
        if value[0] == "9":
            return IdKind.FOREIGN_PERMANENT_RESIDENT
        if value[:6] in _PERMIT_PROVINCE:
            return IdKind.HK_MACAU_TAIWAN_RESIDENCE
        return IdKind.RESIDENT


def normalize_id_number(raw: str) -> str:
    """Remove whitespace, turn full-width digits and X into ASCII, upper-case x. No validation."""
    if raw.isascii() and raw.isalnum():
        # The common case: nothing to remove or widen.
        return raw.replace("x", "X")
    return raw.translate(_NORMALISE)


def check_character(first17: str) -> str:
    """The check character (``0``–``9`` or ``X``) for the first 17 digits of a number."""
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise InvalidIdNumber(
            "check character needs exactly 17 digits",
            reason="ID_NUMBER_MALFORMED",
            field=_FIELD,
        )
    return _check_of(first17)


def parse_id_number(raw: str, *, today: dt.date | None = None) -> IdNumber:
    """Normalise and validate a 15- or 18-character number; raise :class:`InvalidIdNumber` if bad.

    ``today`` bounds the birth date (default: the local date).
    """
    if len(raw) == 18 and raw.isascii() and raw[:17].isdigit():
        # The common case, already normal but perhaps for a lower-case x: skip normalising.
        value = raw if raw[17] != "x" else raw[:17] + "X"
        short = False
    else:
        value = normalize_id_number(raw)
        short = len(value) != 18
        if short:
            value = _lengthen(value)  # its appended check character matches by construction
        elif not (value.isascii() and value[:17].isdigit()):
            raise _malformed(value)
    if _CHECK_BY_REMAINDER[int(value[:17], 13) % 11] != value[17]:
        if value[17] not in _CHECK_ALPHABET:
            raise _malformed(value)
        raise InvalidIdNumber(
            "check character does not match (position 18)",
            reason="ID_NUMBER_BAD_CHECK_CHARACTER",
            field=_FIELD,
            metadata={"position": "18"},
        )

    if value[0] == "9":
        if value[1:3] not in _PROVINCE_PREFIXES:
            raise _bad_division("2-3")
    elif value[:2] not in _PROVINCE_PREFIXES and value[:6] not in _PERMIT_PROVINCE:
        raise _bad_division("1-2")

    key = value[6:14]
    if key not in _DATES:
        _admit_birth_date(key, short)
    if (key > _current_today_key()) if today is None else (_date_of(key) > today):
        raise _bad_birth("is in the future", short)
    return IdNumber(value)


def is_valid_id_number(raw: str, *, today: dt.date | None = None) -> bool:
    """Whether :func:`parse_id_number` accepts ``raw``."""
    try:
        parse_id_number(raw, today=today)
    except InvalidIdNumber:
        return False
    return True


def propose_corrections(raw: str, *, today: dt.date | None = None) -> list[str]:
    """Valid numbers one typo away from an invalid 18-character ``raw``, sorted.

    A typo is one substituted character (a digit, or ``X`` in the last place) or one swap of
    adjacent characters. These are proposals for a person to confirm against the document;
    Hutong never applies one by itself. Empty if ``raw`` is already valid, is not 18
    characters of digits and ``X``, or has no valid neighbour.
    """
    value = normalize_id_number(raw)
    if len(value) != 18 or not all(c in _CHECK_ALPHABET for c in value):
        return []
    if is_valid_id_number(value, today=today):
        return []
    candidates: set[str] = set()
    for i, current in enumerate(value):
        for c in _CHECK_ALPHABET if i == 17 else _DIGITS:
            if c != current:
                candidates.add(value[:i] + c + value[i + 1 :])
    for i in range(17):
        if value[i] != value[i + 1]:
            candidates.add(value[:i] + value[i + 1] + value[i] + value[i + 2 :])
    return sorted(
        c for c in candidates if "X" not in c[:17] and _check_of(c[:17]) == c[17] and is_valid_id_number(c, today=today)
    )


def mask_id_number(value: str) -> str:
    """A normalised number for display: the first four and last four characters, the rest ``*``.

    What pages show by default; the full number only to those allowed to see it.
    """
    keep = 4 if len(value) > 8 else len(value) // 4
    return value[:keep] + "*" * (len(value) - 2 * keep) + value[len(value) - keep :] if keep else "*" * len(value)


def make_id_number(division_code: str, birth: dt.date, sequence: int) -> str:
    """Build a valid 18-character number (for test data and demos); raise ValueError on bad parts."""
    if len(division_code) != 6 or not (division_code.isascii() and division_code.isdigit()):
        raise ValueError("division_code must be 6 ASCII digits")
    if not 0 <= sequence <= 999:
        raise ValueError("sequence must be within 0..999")
    first17 = f"{division_code}{_date_key(birth)}{sequence:03d}"
    return first17 + _check_of(first17)


def _lengthen(value: str) -> str:
    """Turn a 15-digit first-generation number into 18 characters; reject other lengths."""
    if len(value) == 15:
        if not (value.isascii() and value.isdigit()):
            raise _malformed(value)
        century = "18" if value[12:15] >= "996" else "19"
        first17 = value[:6] + century + value[6:]
        return first17 + _check_of(first17)
    if not value:
        raise InvalidIdNumber("ID number is missing", reason="ID_NUMBER_MISSING", field=_FIELD)
    raise InvalidIdNumber(
        f"expected 18 characters (or 15 for a first-generation number), got {len(value)}",
        reason="ID_NUMBER_MALFORMED",
        field=_FIELD,
        metadata={"length": str(len(value))},
    )


def _admit_birth_date(key: str, short: bool) -> None:
    """Check that ``key`` (YYYYMMDD) is a real date not before 1890, and cache it."""
    try:
        day = dt.date(int(key[:4]), int(key[4:6]), int(key[6:8]))
    except ValueError:
        raise _bad_birth("is not a calendar date", short) from None
    if key < _EARLIEST_KEY:
        raise _bad_birth("is before 1890", short)
    if key <= _current_today_key():
        # Bounded: only real dates from 1890 to today are ever cached.
        _DATES[key] = day


def _bad_birth(problem: str, short: bool) -> InvalidIdNumber:
    # Positions as the sender wrote the number: YYMMDD of a 15-digit one, YYYYMMDD otherwise.
    positions = "7-12" if short else "7-14"
    return InvalidIdNumber(
        f"birth date (positions {positions}) {problem}",
        reason="ID_NUMBER_BAD_BIRTH_DATE",
        field=_FIELD,
        metadata={"positions": positions},
    )


def _bad_division(positions: str) -> InvalidIdNumber:
    return InvalidIdNumber(
        f"digits at positions {positions} are not a province code",
        reason="ID_NUMBER_BAD_DIVISION",
        field=_FIELD,
        metadata={"positions": positions},
    )


def _malformed(value: str) -> InvalidIdNumber:
    """Name the first position holding a character that may not stand there."""
    last = len(value) - 1
    for i, c in enumerate(value):
        if "0" <= c <= "9" or (c == "X" and i == last == 17):
            continue
        allowed = "a digit or X" if i == last == 17 else "a digit"
        return InvalidIdNumber(
            f"character at position {i + 1} must be {allowed}",
            reason="ID_NUMBER_MALFORMED",
            field=_FIELD,
            metadata={"position": str(i + 1)},
        )
    # Unreachable for callers, who only come here with a bad character; kept total.
    return InvalidIdNumber("ID number is malformed", reason="ID_NUMBER_MALFORMED", field=_FIELD)
