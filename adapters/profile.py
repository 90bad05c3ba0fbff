"""Profiles: one TOML file per province source, declaring how its export becomes standard records.

``load_profile(path)`` reads and validates a profile completely before any row is read; every
mistake is a :class:`ProfileError` naming the key (``record.gender.codes``, ``format.delimiter``,
``enrollments[1].start_date.date``). The format is documented, key by key, in ``adapters/README.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.domain.divisions import PROVINCE_CODES
from gateway.domain.model import EnrollmentStatus, Gender, HouseholdRelation, Program
from gateway.errors import ConfigError
from gateway.toml_config import read_toml

__all__ = [
    "ENCODINGS",
    "FORMATS",
    "HOUSEHOLD_FIELDS",
    "TRANSFORMS",
    "FieldRule",
    "Profile",
    "ProfileError",
    "date_pattern_problem",
    "load_profile",
    "parse_profile",
]

#: Source formats and the encodings a profile may name.
FORMATS = ("csv", "tsv", "fixed-width", "xml", "dbf", "xlsx", "jsonl")
ENCODINGS = ("gbk", "gb18030", "utf-8", "utf-8-sig")
#: Text transforms, applied in the order listed.
TRANSFORMS = ("trim", "halfwidth", "upper", "lower", "nospace", "digits")
#: National values a code table may map to, per kind of field.
CODE_TARGETS: dict[str, dict[str, int]] = {
    "gender": {"male": int(Gender.MALE), "female": int(Gender.FEMALE), "unknown": int(Gender.UNSPECIFIED)},
    "program": {p.name.lower().replace("_", "-"): int(p) for p in Program if p is not Program.UNSPECIFIED},
    "status": {s.name.lower(): int(s) for s in EnrollmentStatus if s is not EnrollmentStatus.UNSPECIFIED},
    "relation": {r.name.lower(): int(r) for r in HouseholdRelation if r is not HouseholdRelation.UNSPECIFIED},
}
#: Standard record fields, and the kind of value each takes.
RECORD_FIELDS = {
    "record_id": "text",
    "version": "integer",
    "id_number": "text",
    "name": "text",
    "gender": "gender",
    "birth_date": "date",
    "hukou_division": "division",
    "residence_division": "division",
    "household_id": "text",
    "updated_at": "datetime",
}
ENROLLMENT_FIELDS = {
    "program": "program",
    "status": "status",
    "start_date": "date",
    "end_date": "date",
    "monthly_amount_fen": "amount",
    "granting_division": "division",
}
#: Per-member facts of a household, read from each member's row.
HOUSEHOLD_FIELDS = {"relation": "relation", "income_per_member": "amount", "version": "integer"}
_REQUIRED_RECORD = ("record_id", "id_number", "name", "residence_division")
_REQUIRED_ENROLLMENT = ("program", "status", "start_date", "granting_division")
#: The tokens of a date pattern (as adapters.mapping reads them) and the part of a date or time each reads.
_DATE_TOKENS = re.compile(r"YYYY|MM|M|DD|D|HH|mm|ss")
_DATE_PARTS = {
    "YYYY": "year",
    "MM": "month",
    "M": "month",
    "DD": "day",
    "D": "day",
    "HH": "hour",
    "mm": "minute",
    "ss": "second",
}
_RULE_KEYS = frozenset({"from", "template", "value", "default", "transforms", "codes", "date", "amount"})
#: ``{field}`` placeholders of a template.
TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


class ProfileError(ConfigError):
    """A profile is not valid; ``field`` names the key."""

    default_reason = "PROFILE_INVALID"


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How one standard field is read from a row."""

    #: The standard field (``gender``, ``enrollments[0].start_date``), for messages.
    target: str
    #: The kind of value: text, integer, date, datetime, division, amount, or a code kind.
    kind: str
    #: The source field, or None for a constant or a template.
    source: str | None = None
    #: Text with ``{field}`` placeholders, composing several source fields (``{户编号}-{@序号}``).
    template: str | None = None
    #: The constant (``value``), or what an empty source gives (``default``); text as in TOML.
    constant: str | None = None
    transforms: tuple[str, ...] = ()
    #: Local value → national number (for gender, program, status, relation).
    codes: Mapping[str, int] | None = None
    #: Date pattern (``YYYYMMDD``, ``YYYY年M月D日``, ``excel``, ``YYYY-MM-DD HH:mm:ss``).
    date: str | None = None
    #: ``yuan`` or ``fen``.
    amount: str = "fen"


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated profile."""

    path: Path
    name: str
    province: str
    format: str
    encoding: str
    #: Format options (delimiter, record_path, sheet, ...), validated for the format.
    options: Mapping[str, Any]
    #: Fixed-width fields: name → (start, length) in bytes.
    byte_fields: Mapping[str, tuple[int, int]]
    record: Mapping[str, FieldRule]
    enrollments: tuple[Mapping[str, FieldRule], ...]
    #: ``[household]``: relation to the head and income, per member row; empty without households.
    household: Mapping[str, FieldRule] = field(default_factory=dict)
    #: UTC offset of times without one, minutes (China Standard Time: +480).
    utc_offset_minutes: int = 480
    #: Source fields the rules read (readers of XML and fixed-width extract only these).
    source_fields: tuple[str, ...] = field(default=())
    #: A row whose ID number is missing or invalid is sent flagged ``id_number_unverified`` (for the hub's
    #: identity linkage) instead of rejected; its other fields must still be right.
    send_unverified: bool = False


def load_profile(path: Path | str) -> Profile:
    """Read and validate a profile file."""
    path = Path(path)
    data = read_toml(path, what="profile", field="profile", error=ProfileError)
    return parse_profile(data, path=path)


def _fail(key: str, message: str) -> ProfileError:
    return ProfileError(message, field=key)


def _table(data: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise _fail(where, "is required")
        return {}
    if not isinstance(value, dict):
        raise _fail(where, "must be a table")
    return value


def _text(data: Mapping[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = data.get(key, default)
    if value is None:
        raise _fail(where, "is required")
    if not isinstance(value, str) or not value:
        raise _fail(where, "must be non-empty text")
    return value


def _unknown(data: Mapping[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise _fail(f"{prefix}{key}", f"is not a known key (known: {', '.join(sorted(allowed))})")


def _byte_range(value: object, where: str) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or value[0] < 0
        or value[1] < 1
    ):
        raise _fail(where, "must be [start, length]: a 0-based byte offset and a length of at least 1")
    return value[0], value[1]


def date_pattern_problem(pattern: str, *, with_time: bool = True) -> str | None:
    """What makes ``pattern`` unable to read dates, or None: it needs YYYY, M or MM, D or DD, each part once.

    A part named twice (YYYY...YYYY, M...MM) is refused because the pattern could not say which to believe
    (and its regular expression would name one group twice).
    """
    if pattern == "excel":
        return None
    tokens = _DATE_TOKENS.findall(pattern)
    if "YYYY" not in tokens or not ({"MM", "M"} & set(tokens)) or not ({"DD", "D"} & set(tokens)):
        return f"date pattern {pattern!r} needs YYYY, M or MM, and D or DD (or is 'excel')"
    if not with_time and {"HH", "mm", "ss"} & set(tokens):
        return f"date pattern {pattern!r} has a time part; only updated_at takes one"
    parts = [_DATE_PARTS[token] for token in tokens]
    repeated = next((part for part in parts if parts.count(part) > 1), None)
    if repeated is not None:
        return f"date pattern {pattern!r} names the {repeated} more than once"
    return None


def _check_date_pattern(pattern: str, where: str, *, with_time: bool) -> None:
    problem = date_pattern_problem(pattern, with_time=with_time)
    if problem is not None:
        raise _fail(where, problem)


def _rule(target: str, kind: str, raw: object, where: str, codes: Mapping[str, Mapping[str, str]]) -> FieldRule:
    if isinstance(raw, str):
        raw = {"from": raw}
    if not isinstance(raw, dict):
        raise _fail(where, 'must be a source field name or a table such as { from = "列名" }')
    _unknown(raw, _RULE_KEYS, where)
    source = raw.get("from")
    if source is not None and (not isinstance(source, str) or not source):
        raise _fail(f"{where}.from", "must be non-empty text: the source field")
    template = raw.get("template")
    if template is not None:
        if not isinstance(template, str) or not TEMPLATE_FIELD.search(template):
            raise _fail(f"{where}.template", 'must be text naming source fields in braces, e.g. "{户编号}-{序号}"')
        if source is not None or "value" in raw:
            raise _fail(f"{where}.template", "give one of from, template or value")
    constant = raw.get("value", raw.get("default"))
    if "value" in raw and "default" in raw:
        raise _fail(f"{where}.value", "give value (a constant) or default (for an empty source), not both")
    if "value" in raw and source is not None:
        raise _fail(f"{where}.value", "a constant takes no from")
    if source is None and template is None and "value" not in raw:
        raise _fail(f"{where}.from", "is required (or compose fields with template, or give a constant with value)")
    if constant is not None:
        if isinstance(constant, bool) or not isinstance(constant, str | int):
            raise _fail(f"{where}.{'value' if 'value' in raw else 'default'}", "must be text or an integer")
        constant = str(constant)
    transforms = raw.get("transforms", [])
    if not isinstance(transforms, list) or not all(isinstance(t, str) for t in transforms):
        raise _fail(f"{where}.transforms", "must be a list of transform names")
    for t in transforms:
        if t not in TRANSFORMS:
            raise _fail(f"{where}.transforms", f"unknown transform {t!r} (known: {', '.join(TRANSFORMS)})")
    table: Mapping[str, int] | None = None
    if kind in CODE_TARGETS:
        name = raw.get("codes")
        if name is None:
            raise _fail(f"{where}.codes", f"is required: name the [codes.*] table mapping local values to {kind}")
        if not isinstance(name, str) or name not in codes:
            raise _fail(f"{where}.codes", f"names no [codes.{name}] table")
        national = CODE_TARGETS[kind]
        for local, value in codes[name].items():
            if value not in national:
                raise _fail(
                    f"codes.{name}.{local}",
                    f"{value!r} is not a {kind} (known: {', '.join(national)}); {where} reads this table",
                )
        table = {local: national[value] for local, value in codes[name].items()}
    elif "codes" in raw:
        raise _fail(f"{where}.codes", f"{target} takes no code table")
    date = raw.get("date")
    if kind in ("date", "datetime"):
        if not isinstance(date, str):
            raise _fail(f"{where}.date", 'is required: the date pattern, e.g. "YYYYMMDD" or "YYYY年M月D日"')
        _check_date_pattern(date, f"{where}.date", with_time=kind == "datetime")
    elif date is not None:
        raise _fail(f"{where}.date", f"{target} is not a date")
    amount = raw.get("amount", "fen")
    if kind == "amount":
        if amount not in ("yuan", "fen"):
            raise _fail(f"{where}.amount", 'must be "yuan" (decimal, 2 places at most) or "fen" (integer)')
    elif "amount" in raw:
        raise _fail(f"{where}.amount", f"{target} is not an amount")
    return FieldRule(
        target=target,
        kind=kind,
        source=source,
        template=template,
        constant=constant,
        transforms=tuple(transforms),
        codes=table,
        date=date,
        amount=amount,
    )


def _codes(data: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Each table as local value → national value name; names are checked against the kind of field using it."""
    out: dict[str, dict[str, str]] = {}
    for name, table in _table(data, "codes", "codes", required=False).items():
        where = f"codes.{name}"
        if not isinstance(table, dict) or not table:
            raise _fail(where, "must be a non-empty table of local value = national value")
        mapped: dict[str, str] = {}
        for local, national in table.items():
            if not isinstance(national, str):
                raise _fail(f"{where}.{local}", 'must be the name of a national value, e.g. "dibao" or "male"')
            if not any(national in kind for kind in CODE_TARGETS.values()):
                known = sorted({n for kind in CODE_TARGETS.values() for n in kind})
                raise _fail(f"{where}.{local}", f"{national!r} is not a national value (known: {', '.join(known)})")
            mapped[local] = national
        out[name] = mapped
    return out


def _format_options(fmt: str, options: Mapping[str, Any], encoding: str) -> dict[str, Any]:
    where = "format"
    allowed: dict[str, set[str]] = {
        "csv": {"delimiter", "quote", "header_row", "total_pattern"},
        "tsv": {"delimiter", "quote", "header_row", "total_pattern"},
        "fixed-width": {"record_type", "data", "header", "trailer", "trailer_count"},
        "xml": {"record_path", "namespaces"},
        "dbf": set(),
        "xlsx": {"sheet", "title_rows", "header_rows", "total_pattern"},
        "jsonl": set(),
    }
    _unknown(options, allowed[fmt], where)
    out: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        out["delimiter"] = options.get("delimiter", "," if fmt == "csv" else "\t")
        out["quote"] = options.get("quote", '"')
        for key in ("delimiter", "quote"):
            if not isinstance(out[key], str) or len(out[key]) != 1:
                raise _fail(f"format.{key}", "must be one character")
        out["header_row"] = options.get("header_row", 1)
        if not isinstance(out["header_row"], int) or isinstance(out["header_row"], bool) or out["header_row"] < 1:
            raise _fail("format.header_row", "must be the 1-based line of the header, at least 1")
    if fmt == "xlsx":
        out["sheet"] = options.get("sheet")
        if out["sheet"] is not None and not isinstance(out["sheet"], str):
            raise _fail("format.sheet", "must be the sheet's name")
        out["header_rows"] = options.get("header_rows", 1)
        if not isinstance(out["header_rows"], int) or isinstance(out["header_rows"], bool) or out["header_rows"] < 1:
            raise _fail("format.header_rows", "must be an integer of at least 1")
        out["title_rows"] = options.get("title_rows", 0)
        if not isinstance(out["title_rows"], int) or isinstance(out["title_rows"], bool) or out["title_rows"] < 0:
            raise _fail("format.title_rows", "must be an integer, 0 or more")
    if fmt in ("csv", "tsv", "xlsx"):
        pattern = options.get("total_pattern")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise _fail("format.total_pattern", "must be a regular expression")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _fail("format.total_pattern", f"is not a valid regular expression: {exc}") from exc
        out["total_pattern"] = pattern
    if fmt == "fixed-width":
        if "record_type" in options:
            out["record_type"] = _byte_range(options["record_type"], "format.record_type")
            for key, default in (("data", "D"), ("header", "H"), ("trailer", "T")):
                value = options.get(key, default)
                if not isinstance(value, str) or not value:
                    raise _fail(f"format.{key}", "must be non-empty text: the record type's code")
                # The reader compares the code's bytes in the file's encoding with each line's.
                try:
                    value.encode("utf-8" if encoding == "utf-8-sig" else encoding)
                except UnicodeEncodeError:
                    message = f"{value!r} cannot be written in {encoding}, the file's encoding"
                    raise _fail(f"format.{key}", message) from None
                out[key] = value
        else:
            out["record_type"] = None
        out["trailer_count"] = (
            _byte_range(options["trailer_count"], "format.trailer_count") if "trailer_count" in options else None
        )
    if fmt == "xml":
        out["record_path"] = _text(options, "record_path", "format.record_path")
        namespaces = options.get("namespaces", {})
        if not isinstance(namespaces, dict) or not all(isinstance(v, str) for v in namespaces.values()):
            raise _fail("format.namespaces", "must be a table of prefix = namespace URI")
        out["namespaces"] = dict(namespaces)
    return out


def parse_profile(data: Mapping[str, Any], *, path: Path = Path("<profile>")) -> Profile:
    """Validate a profile given as parsed TOML."""
    _unknown(data, {"source", "format", "fields", "record", "enrollments", "household", "codes"}, "")
    source = _table(data, "source", "source")
    _unknown(source, {"name", "province", "format", "encoding", "utc_offset", "invalid_id_numbers"}, "source")
    name = _text(source, "name", "source.name")
    province = _text(source, "province", "source.province")
    if province not in PROVINCE_CODES:
        raise _fail("source.province", f"{province!r} is not a province code (GB/T 2260, e.g. 440000)")
    fmt = _text(source, "format", "source.format")
    if fmt not in FORMATS:
        raise _fail("source.format", f"{fmt!r} is not a format (known: {', '.join(FORMATS)})")
    encoding = _text(source, "encoding", "source.encoding", default="utf-8").lower()
    if encoding not in ENCODINGS:
        raise _fail("source.encoding", f"{encoding!r} is not supported (known: {', '.join(ENCODINGS)})")
    offset_text = source.get("utc_offset", "+08:00")
    match = re.fullmatch(r"([+-])(\d\d):(\d\d)", offset_text) if isinstance(offset_text, str) else None
    if match is None:
        raise _fail("source.utc_offset", "must be like +08:00")
    offset = (int(match[2]) * 60 + int(match[3])) * (1 if match[1] == "+" else -1)
    invalid_ids = source.get("invalid_id_numbers", "reject")
    if invalid_ids not in ("reject", "send-unverified"):
        raise _fail("source.invalid_id_numbers", "must be reject or send-unverified")

    options = _format_options(fmt, _table(data, "format", "format", required=False), encoding)
    byte_fields: dict[str, tuple[int, int]] = {}
    fields = _table(data, "fields", "fields", required=fmt == "fixed-width")
    if fields and fmt != "fixed-width":
        raise _fail("fields", "byte ranges are for fixed-width sources only")
    for fname, rng in fields.items():
        byte_fields[fname] = _byte_range(rng, f"fields.{fname}")

    codes = _codes(data)
    record_table = _table(data, "record", "record")
    _unknown(record_table, set(RECORD_FIELDS), "record")
    record = {
        target: _rule(target, RECORD_FIELDS[target], raw, f"record.{target}", codes)
        for target, raw in record_table.items()
    }
    for target in _REQUIRED_RECORD:
        if target not in record:
            raise _fail(f"record.{target}", "is required")
    enrollments_raw = data.get("enrollments", [])
    if not isinstance(enrollments_raw, list):
        raise _fail("enrollments", "must be an array of tables: [[enrollments]]")
    enrollments = []
    for i, group in enumerate(enrollments_raw):
        where = f"enrollments[{i}]"
        if not isinstance(group, dict):
            raise _fail(where, "must be a table")
        _unknown(group, set(ENROLLMENT_FIELDS) | {"when"}, where)
        rules = {
            target: _rule(f"{where}.{target}", ENROLLMENT_FIELDS[target], raw, f"{where}.{target}", codes)
            for target, raw in group.items()
            if target != "when"
        }
        for target in _REQUIRED_ENROLLMENT:
            if target not in rules:
                raise _fail(f"{where}.{target}", "is required")
        when = group.get("when")
        if when is not None:
            when_rule = _rule(f"{where}.when", "text", when, f"{where}.when", codes)
            rules["when"] = when_rule
        enrollments.append(rules)
    household_table = _table(data, "household", "household", required=False)
    _unknown(household_table, set(HOUSEHOLD_FIELDS), "household")
    household = {
        target: _rule(f"household.{target}", HOUSEHOLD_FIELDS[target], raw, f"household.{target}", codes)
        for target, raw in household_table.items()
    }
    if "household" in data:
        if "relation" not in household:
            raise _fail("household.relation", "is required: each member's relation to the head of the household")
        if "household_id" not in record:
            raise _fail("record.household_id", "is required to group members into households")
    all_rules = [
        *record.values(),
        *(r for group in enrollments for r in group.values()),
        *household.values(),
    ]
    named: list[tuple[FieldRule, str]] = []
    for rule in all_rules:
        if rule.source is not None:
            named.append((rule, rule.source))
        if rule.template is not None:
            named.extend((rule, name) for name in TEMPLATE_FIELD.findall(rule.template))
    sources = tuple(dict.fromkeys(field_name for _, field_name in named))
    if fmt == "fixed-width":
        for rule, field_name in named:
            if field_name not in byte_fields:
                key = "from" if rule.source is not None else "template"
                where = (
                    rule.target if rule.target.startswith(("enrollments[", "household.")) else f"record.{rule.target}"
                )
                raise _fail(f"{where}.{key}", f"{field_name!r} is not one of the [fields] byte ranges")
    return Profile(
        path=path,
        name=name,
        province=province,
        format=fmt,
        encoding=encoding,
        options=options,
        byte_fields=byte_fields,
        record=record,
        enrollments=tuple(enrollments),
        household=household,
        utc_offset_minutes=offset,
        source_fields=sources,
        send_unverified=invalid_ids == "send-unverified",
    )
