"""From a source row to a standard record: transforms, code tables, dates, amounts, then the rules.

:class:`RowMapper` applies a profile's rules to one row and returns either a
:class:`~gateway.domain.model.PersonRecord` or every problem found, each naming the standard
field (``enrollments[0].start_date``), a reason and a message. The record rules are the hub's
own (:func:`gateway.domain.records.check_record`), so what an adapter accepts the hub accepts.
Nothing is guessed: a wrong ID check character is refused with the single-typo corrections that
would make it valid *proposed* in the message, never applied.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from adapters.profile import RECORD_FIELDS, TEMPLATE_FIELD, FieldRule, Profile
from gateway.domain import identity
from gateway.domain.model import Enrollment, PersonRecord
from gateway.domain.records import check_record
from gateway.errors import HutongError

__all__ = ["FieldProblem", "Membership", "RowMapper", "halfwidth", "parse_date"]

#: Excel's day 0. Excel (after Lotus 1-2-3) counts a 29 February 1900 that never was: serial 60.
_EXCEL_EPOCH = dt.date(1899, 12, 31)
_EXCEL_FAKE_LEAP_DAY = 60
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_YUAN = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]{1,2})?")
_INTEGER = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)")


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One thing wrong with a row: the standard field, a reason (UPPER_SNAKE) and a message."""

    field: str
    reason: str
    message: str

    def to_json(self) -> dict[str, str]:
        """The problem as the reject file writes it."""
        return {"field": self.field, "reason": self.reason, "message": self.message}


def halfwidth(text: str) -> str:
    """Full-width ASCII forms (Ａ, １, ＠) and the ideographic space as their half-width selves."""
    return text.translate(_FULLWIDTH)


_TRANSFORMS: dict[str, Callable[[str], str]] = {
    "trim": str.strip,
    "halfwidth": halfwidth,
    "upper": str.upper,
    "lower": str.lower,
    "nospace": lambda s: "".join(s.split()),
    "digits": lambda s: "".join(ch for ch in s if ch.isdigit()),
}

_PATTERN_PARTS = {
    "YYYY": r"(?P<Y>\d{4})",
    "MM": r"(?P<M>\d{2})",
    "M": r"(?P<M>\d{1,2})",
    "DD": r"(?P<D>\d{2})",
    "D": r"(?P<D>\d{1,2})",
    "HH": r"(?P<h>\d{1,2})",
    "mm": r"(?P<m>\d{2})",
    "ss": r"(?P<s>\d{2})",
}
_TOKENS = re.compile("|".join(sorted(_PATTERN_PARTS, key=len, reverse=True)))
_COMPILED: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    regex = _COMPILED.get(pattern)
    if regex is None:
        parts, last = [], 0
        for m in _TOKENS.finditer(pattern):
            parts.append(re.escape(pattern[last : m.start()]))
            parts.append(_PATTERN_PARTS[m.group()])
            last = m.end()
        parts.append(re.escape(pattern[last:]))
        regex = _COMPILED[pattern] = re.compile("".join(parts))
    return regex


def parse_date(text: str, pattern: str) -> tuple[dt.date, tuple[int, int, int]]:
    """The date (and time of day) ``text`` states in ``pattern``; ValueError says why not.

    ``excel`` reads an Excel serial day number (1 = 1900-01-01).
    """
    if pattern == "excel":
        try:
            serial = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an Excel date serial number") from None
        if not 1 <= serial < 2958466:
            raise ValueError(f"Excel date serial {text} is out of range")
        whole = int(serial)
        seconds = round((serial - whole) * 86400)
        if seconds >= 86400:  # a hair before midnight rounds to the next day
            whole, seconds = whole + 1, 0
        if whole == _EXCEL_FAKE_LEAP_DAY:
            raise ValueError("Excel serial 60 is 29 February 1900, a day that does not exist")
        days = whole - 1 if whole > _EXCEL_FAKE_LEAP_DAY else whole
        return _EXCEL_EPOCH + dt.timedelta(days=days), (seconds // 3600, seconds // 60 % 60, seconds % 60)
    match = _compiled(pattern).fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} does not match the pattern {pattern}")
    parts = match.groupdict()
    try:
        day = dt.date(int(parts["Y"]), int(parts["M"]), int(parts["D"]))
    except ValueError:
        raise ValueError(f"{text!r} is not a calendar date") from None
    clock = (int(parts.get("h") or 0), int(parts.get("m") or 0), int(parts.get("s") or 0))
    if not (clock[0] < 24 and clock[1] < 60 and clock[2] < 60):
        raise ValueError(f"{text!r} is not a time of day")
    return day, clock


#: Reads one value of a row: (fields, problems) → the value, or None (problems say why, if wrong).
Getter = Callable[[Mapping[str, str], list[FieldProblem]], object]


def _text_getter(rule: FieldRule) -> Callable[[Mapping[str, str]], str | None]:
    """The rule's text after transforms; its default (or constant) when empty; None when empty without one."""
    constant, source = rule.constant, rule.source
    steps = [_TRANSFORMS[name] for name in rule.transforms]
    if rule.template is not None:
        template = rule.template

        def composed(fields: Mapping[str, str]) -> str | None:
            parts = [fields.get(name, "").strip() for name in TEMPLATE_FIELD.findall(template)]
            if not all(parts):
                return constant  # a part missing: the composed value would not identify anything
            text = TEMPLATE_FIELD.sub(lambda m: fields.get(m[1], "").strip(), template)
            for step in steps:
                text = step(text)
            return text

        return composed
    if source is None:
        return lambda fields: constant
    if not steps:

        def plain(fields: Mapping[str, str]) -> str | None:
            text = fields.get(source, "")
            return text if text and not text.isspace() else constant

        return plain

    def transformed(fields: Mapping[str, str]) -> str | None:
        text = fields.get(source, "")
        for step in steps:
            text = step(text)
        return text if text and not text.isspace() else constant

    return transformed


def _date_reader(pattern: str) -> Callable[[str], tuple[dt.date, tuple[int, int, int]]]:
    """``parse_date`` for one pattern, with fast paths for the all-digit layouts."""
    midnight = (0, 0, 0)
    if pattern == "YYYYMMDD":

        def compact(text: str) -> tuple[dt.date, tuple[int, int, int]]:
            if len(text) == 8 and text.isdigit():
                try:
                    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:])), midnight
                except ValueError:
                    raise ValueError(f"{text!r} is not a calendar date") from None
            return parse_date(text, pattern)

        return compact
    if pattern == "YYYY-MM-DD":

        def dashed(text: str) -> tuple[dt.date, tuple[int, int, int]]:
            if len(text) == 10 and text[4] == "-" and text[7] == "-":
                try:
                    return dt.date(int(text[:4]), int(text[5:7]), int(text[8:])), midnight
                except ValueError:
                    raise ValueError(f"{text!r} is not a calendar date") from None
            return parse_date(text, pattern)

        return dashed
    return lambda text: parse_date(text, pattern)


def _getter(rule: FieldRule, offset: dt.timezone) -> Getter:
    """The rule compiled: text, then codes, dates, amounts or numbers, each problem named."""
    text_of = _text_getter(rule)
    target, kind = rule.target, rule.kind
    if rule.codes is not None:
        table = rule.codes

        def coded(fields: Mapping[str, str], problems: list[FieldProblem]) -> object:
            text = text_of(fields)
            if text is None:
                return None
            code = table.get(text.strip())
            if code is None:
                message = f"{text.strip()!r} is not in the {kind} code table of the profile"
                problems.append(FieldProblem(target, "CODE_UNKNOWN", message))
            return code

        return coded
    if kind in ("date", "datetime"):
        assert rule.date is not None
        read = _date_reader(rule.date)
        with_time = kind == "datetime"

        def dated(fields: Mapping[str, str], problems: list[FieldProblem]) -> object:
            text = text_of(fields)
            if text is None:
                return None
            try:
                day, clock = read(text.strip())
            except ValueError as exc:
                problems.append(FieldProblem(target, "DATE_INVALID", str(exc)))
                return None
            if not with_time:
                return day
            return int(dt.datetime.combine(day, dt.time(*clock), tzinfo=offset).timestamp()) * 1_000_000

        return dated
    if kind == "amount":
        yuan = rule.amount == "yuan"

        def amount(fields: Mapping[str, str], problems: list[FieldProblem]) -> object:
            text = text_of(fields)
            if text is None:
                return None
            value = text.strip()
            if yuan:
                if not _YUAN.fullmatch(value):
                    problems.append(FieldProblem(target, "AMOUNT_INVALID", f"{value!r} is not an amount in yuan"))
                    return None
                whole, _, cents = value.replace(",", "").partition(".")
                fen = abs(int(whole)) * 100 + int((cents + "00")[:2])
                return -fen if value.startswith("-") else fen
            if not _INTEGER.fullmatch(value):
                problems.append(FieldProblem(target, "AMOUNT_INVALID", f"{value!r} is not an integer of fen"))
                return None
            return int(value.replace(",", ""))

        return amount
    if kind == "integer":

        def integer(fields: Mapping[str, str], problems: list[FieldProblem]) -> object:
            text = text_of(fields)
            if text is None:
                return None
            value = text.strip()
            if not (value.isascii() and value.isdigit()):
                problems.append(FieldProblem(target, "NUMBER_INVALID", f"{value!r} is not a whole number"))
                return None
            return int(value)

        return integer
    if kind == "division":
        return lambda fields, problems: _strip(text_of(fields))
    return lambda fields, problems: text_of(fields)


def _strip(text: str | None) -> str | None:
    return None if text is None else text.strip()


@dataclass(frozen=True, slots=True)
class Membership:
    """What a member's row says of its household."""

    household_id: str
    record_id: str
    relation: int
    #: Monthly income per member, fen, when the row states it.
    income_per_member_fen: int | None
    #: The household's version, when the row states it.
    version: int | None
    residence_division: str


#: The record fields a profile can map, in the order :meth:`RowMapper.map` unpacks them.
_RECORD_ORDER = tuple(RECORD_FIELDS)
assert _RECORD_ORDER == (
    "record_id", "version", "id_number", "name", "gender", "birth_date",
    "hukou_division", "residence_division", "household_id", "updated_at",
), "RowMapper.map unpacks the record fields in this order"  # fmt: skip


def _nothing(fields: Mapping[str, str], problems: list[FieldProblem]) -> object:
    return None


class RowMapper:
    """Turns rows of one profile's source into records; the profile's rules are compiled once."""

    def __init__(self, profile: Profile, *, today: dt.date | None = None) -> None:
        self.profile = profile
        self._today = today or dt.date.today()
        offset = dt.timezone(dt.timedelta(minutes=profile.utc_offset_minutes))
        record = {target: _getter(rule, offset) for target, rule in profile.record.items()}
        # One getter per PersonRecord field, in its order; fields the profile leaves out read nothing.
        self._record_getters = tuple(record.get(name, _nothing) for name in _RECORD_ORDER)
        self._household = {target: _getter(rule, offset) for target, rule in profile.household.items()}
        self._groups = [
            (
                None if "when" not in group else _text_getter(group["when"]),
                {target: _getter(rule, offset) for target, rule in group.items() if target != "when"},
            )
            for group in profile.enrollments
        ]

    def map(self, fields: Mapping[str, str]) -> tuple[PersonRecord | None, list[FieldProblem]]:
        """The record a row states, or every problem with it."""
        problems: list[FieldProblem] = []
        rid, version, idn, name, gender, birth, hukou, residence, household, updated = [
            get(fields, problems) for get in self._record_getters
        ]
        enrollments: list[Enrollment] = []
        groups: list[int] = []  # the profile's [[enrollments]] table of each enrollment made
        for index, (when, getters) in enumerate(self._groups):
            if when is not None and when(fields) is None:
                continue
            e = {target: get(fields, problems) for target, get in getters.items()}
            enrollments.append(
                Enrollment(
                    program=_int(e.get("program")),
                    status=_int(e.get("status")),
                    start_date=_date(e.get("start_date")),
                    end_date=_date(e.get("end_date")),
                    monthly_amount_fen=_int(e.get("monthly_amount_fen")),
                    granting_division=_str(e.get("granting_division")),
                )
            )
            groups.append(index)
        record = PersonRecord(
            record_id=_str(rid),
            version=_int(version, 1),
            id_number=_str(idn),
            name=_str(name),
            gender=_int(gender),
            birth_date=_date(birth),
            hukou_division=_str(hukou),
            residence_division=_str(residence),
            household_id=_str(household),
            enrollments=tuple(enrollments),
            updated_at_us=_int(updated),
        )
        now_us = time.time_ns() // 1000
        checked = check_record(record, self.profile.province, today=self._today, now_us=now_us)
        if (
            checked.errors
            and self.profile.send_unverified
            and all(e.field == "id_number" or e.reason in _ID_DERIVED for e in checked.errors)
        ):
            # Only the number is wrong: send the row flagged, for the hub's linkage to identify.
            flagged = check_record(
                record, self.profile.province, today=self._today, now_us=now_us, id_number_unverified=True
            )
            if not flagged.errors and not problems:
                record.id_number_unverified = True
                return record, problems
            checked = flagged
        if checked.errors:
            known = {p.field for p in problems}
            for error in checked.errors:
                where = _standard_field(error, groups)
                if where in known or any(where.startswith(k + ".") for k in known):
                    continue  # already said, at the source
                problems.append(FieldProblem(where, error.reason, _message(error, record)))
        if problems:
            return None, problems
        assert checked.id_number is not None
        record.id_number = checked.id_number.value  # normalised; 15 digits become 18
        return record, problems

    def membership(
        self, fields: Mapping[str, str], record: PersonRecord, problems: list[FieldProblem]
    ) -> Membership | None:
        """The row's place in its household (``[household]``), or None without one; problems appended."""
        if not self._household or not record.household_id:
            return None
        values = {target: get(fields, problems) for target, get in self._household.items()}
        relation = values.get("relation")
        if relation is None:
            if not any(p.field == "household.relation" for p in problems):
                problems.append(
                    FieldProblem("household.relation", "RELATION_MISSING", "a household member needs a relation")
                )
            return None
        income = values.get("income_per_member")
        if isinstance(income, int) and income < 0:
            problems.append(
                FieldProblem("household.income_per_member", "AMOUNT_NEGATIVE", "income must not be negative")
            )
        version = values.get("version")
        return Membership(
            household_id=record.household_id,
            record_id=record.record_id,
            relation=_int(relation),
            income_per_member_fen=income if isinstance(income, int) else None,
            version=version if isinstance(version, int) else None,
            residence_division=record.residence_division,
        )


#: Disagreements with the ID number that flagging the number as unverified makes moot.
_ID_DERIVED = frozenset({"GENDER_MISMATCH", "BIRTH_DATE_MISMATCH"})

_ENROLLMENT_FIELD = re.compile(r"enrollments\[(\d+)\]")


def _standard_field(error: HutongError, groups: list[int]) -> str:
    """The error's field, with an enrollment's position given as its [[enrollments]] table in the profile."""
    field = error.field or "record"
    return _ENROLLMENT_FIELD.sub(lambda m: f"enrollments[{groups[int(m[1])]}]", field, count=1)


def _message(error: HutongError, record: PersonRecord) -> str:
    message = error.message
    if error.reason == "ID_NUMBER_BAD_CHECK_CHARACTER":
        proposals = identity.propose_corrections(identity.normalize_id_number(record.id_number))
        if proposals:
            message += "; single-typo corrections that would be valid (not applied): " + ", ".join(proposals)
    return message


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _date(value: object) -> dt.date | None:
    return value if isinstance(value, dt.date) else None
