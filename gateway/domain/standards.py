"""Local assistance standards (低保标准、特困人员救助供养标准): a registry by division and date.

Provinces publish their standards as a CSV file, one row per (division, standard, effective date)::

    division,standard,monthly_yuan,effective_from,document
    440000,dibao_rural,950,2025-07-01,粤民规字〔2025〕7号
    440100,dibao_urban,1230,2025-07-01,穗民规字〔2025〕2号
    440106,dibao_urban,1265,2026-01-01,

* ``division``: a current 6-digit GB/T 2260 code at province (``440000``), prefecture (``440100``)
  or county level (``440106``). A wider code applies to every county under it unless a narrower
  one has a version in force on the day asked about.
* ``standard``: one of :class:`Standard` (``dibao_urban``, ``dibao_rural``, ``extreme_poverty``).
* ``monthly_yuan``: yuan per person per month, at most two decimals (``1230``, ``1230.50``),
  read exactly (Decimal) into integer fen. Yuan, not fen: it is what the documents print.
* ``effective_from``: ``YYYY-MM-DD``, the first day the amount applies.
* ``document`` (optional): the publishing document's number, e.g. ``粤民规字〔2026〕3号``.
* ``note`` (optional): free text for people; ignored.

The file is UTF-8 (with or without a byte-order mark) or GBK/GB18030; without an explicit
encoding a BOM means UTF-8, a file that decodes as UTF-8 is UTF-8, anything else is read as
GB18030 (a superset of GBK). One physical line is one row; blank lines and lines starting with
``#`` are not rows. Every row is either loaded or rejected with its line number and a reason
(:class:`RejectedRow`); a bad row never sinks the file, a bad header does (:class:`ConfigError`).

A registry keeps every version: ``effective_from`` orders them, and :meth:`StandardsRegistry.at`
answers with the version in force on a day at the longest division prefix that has one.
Publishing a value for a (division, standard, effective_from) the registry already holds
replaces it (a correction); :meth:`StandardsRegistry.publish` reports what it replaced.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.domain.divisions import is_known_division
from gateway.errors import ConfigError, InvalidArgument, InvalidDivision

__all__ = [
    "MAX_MONTHLY_FEN",
    "Publication",
    "RejectedRow",
    "Standard",
    "StandardValue",
    "StandardsFile",
    "StandardsRegistry",
    "changed_on",
    "division_prefix",
    "load_standards",
    "parse_standards",
]

#: A standard above this (100,000 yuan per person per month) is a typing mistake, not a standard.
MAX_MONTHLY_FEN = 10_000_000
_MAX_DOCUMENT = 200
_COLUMNS = ("division", "standard", "monthly_yuan", "effective_from")
_OPTIONAL = ("document", "note")
_YUAN = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SCHEMA = 1


class Standard(StrEnum):
    """A kind of local standard, in fen per person per month."""

    DIBAO_URBAN = "dibao_urban"  # 城市低保标准
    DIBAO_RURAL = "dibao_rural"  # 农村低保标准
    EXTREME_POVERTY = "extreme_poverty"  # 特困人员基本生活标准


def _is_six_digits(code: str) -> bool:
    # str.isdigit alone would accept non-ASCII digits such as "١".
    return len(code) == 6 and code.isascii() and code.isdigit()


def division_prefix(division: str) -> str:
    """The prefix a 6-digit code stands for: ``440000`` → ``44``, ``440100`` → ``4401``, a county itself."""
    if division.endswith("0000"):
        return division[:2]
    if division.endswith("00"):
        return division[:4]
    return division


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_division(division: str, field: str) -> None:
    if not _is_six_digits(division):
        raise InvalidDivision("division code must be 6 ASCII digits", reason="DIVISION_MALFORMED", field=field)


@dataclass(frozen=True, slots=True)
class StandardValue:
    """One published version of a standard: the amount in force at a division from a day on."""

    #: The 6-digit code it was published for (``440000`` applies to all of Guangdong).
    division: str
    standard: Standard
    effective_from: dt.date
    #: Fen per person per month, positive.
    monthly_fen: int
    #: The publishing document's number; empty when the row gave none.
    document: str = ""

    def __post_init__(self) -> None:
        _check_division(self.division, "division")
        if not isinstance(self.standard, Standard):
            raise InvalidArgument("standard must be a Standard", reason="STANDARD_UNKNOWN", field="standard")
        if (
            isinstance(self.monthly_fen, bool)
            or not isinstance(self.monthly_fen, int)
            or not 0 < self.monthly_fen <= MAX_MONTHLY_FEN
        ):
            raise InvalidArgument(
                "monthly_fen must be a positive whole number of fen", reason="AMOUNT_INVALID", field="monthly_fen"
            )
        if not isinstance(self.document, str) or not _is_unicode(self.document):
            # A lone surrogate (JSON "\ud800") would make the registry's digest unwritable.
            raise InvalidArgument("document must be Unicode text", reason="STANDARD_VALUE_INVALID", field="document")

    @property
    def prefix(self) -> str:
        """The division prefix this value covers (``44``, ``4401`` or a county's code)."""
        return division_prefix(self.division)

    @property
    def key(self) -> tuple[str, Standard, dt.date]:
        """What identifies a version: a later publication with the same key replaces it."""
        return (self.division, self.standard, self.effective_from)

    def to_json(self) -> dict[str, Any]:
        """The value as JSON-native data (the canonical form's element, and tier evidence's)."""
        return {
            "division": self.division,
            "standard": self.standard.value,
            "effective_from": self.effective_from.isoformat(),
            "monthly_fen": self.monthly_fen,
            "document": self.document,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, field: str = "value") -> StandardValue:
        """Rebuild a value from :meth:`to_json`'s output; InvalidArgument names the key that is wrong."""
        if not isinstance(data, Mapping) or set(data) != {
            "division",
            "standard",
            "effective_from",
            "monthly_fen",
            "document",
        }:
            raise InvalidArgument(
                f"{field} must hold exactly division, standard, effective_from, monthly_fen, document",
                reason="STANDARD_VALUE_INVALID",
                field=field,
            )
        for key in ("division", "standard", "effective_from", "document"):
            if not isinstance(data[key], str):
                raise InvalidArgument(
                    f"{field}.{key} must be a string", reason="STANDARD_VALUE_INVALID", field=f"{field}.{key}"
                )
        try:
            standard = Standard(data["standard"])
        except ValueError:
            raise InvalidArgument(
                f"{field}.standard is not a known standard", reason="STANDARD_UNKNOWN", field=f"{field}.standard"
            ) from None
        day = _parse_date(data["effective_from"])
        if day is None:
            raise InvalidArgument(
                f"{field}.effective_from must be YYYY-MM-DD",
                reason="STANDARD_VALUE_INVALID",
                field=f"{field}.effective_from",
            )
        try:
            return cls(data["division"], standard, day, data["monthly_fen"], data["document"])
        except InvalidArgument as exc:
            exc.field = f"{field}.{exc.field}"
            raise


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row of a standards file that was not loaded."""

    #: 1-based physical line number in the file.
    line: int
    #: UPPER_SNAKE: DIVISION_MALFORMED, DIVISION_UNKNOWN, DIVISION_OUTSIDE_PROVINCE, STANDARD_UNKNOWN,
    #: AMOUNT_INVALID, DATE_INVALID, DOCUMENT_TOO_LONG, DUPLICATE_CONFLICT, COLUMN_COUNT, CSV_MALFORMED,
    #: ENCODING_INVALID.
    reason: str
    message: str


@dataclass(frozen=True)
class StandardsFile:
    """One standards file, read: the values loaded and the rows rejected."""

    source: str
    #: The encoding the file was read with (given or detected).
    encoding: str
    #: The distinct values loaded, in file order (a row repeating an earlier one exactly is loaded once).
    values: tuple[StandardValue, ...]
    rejected: tuple[RejectedRow, ...]
    #: Rows read: every line after the header that is not blank or a comment.
    rows_read: int
    #: Rows loaded, counting exact repeats of an earlier row: ``rows_read == loaded + len(rejected)``.
    loaded: int

    def summary(self) -> str:
        """One line for people: ``rows read 12: loaded 11, rejected 1``."""
        return f"{self.source}: rows read {self.rows_read}: loaded {self.loaded}, rejected {len(self.rejected)}"


@dataclass(frozen=True)
class Publication:
    """What publishing values into a registry did."""

    registry: StandardsRegistry
    #: Values for keys the registry did not hold.
    added: tuple[StandardValue, ...]
    #: (was, now) for keys whose amount or document changed: corrections.
    replaced: tuple[tuple[StandardValue, StandardValue], ...]
    #: Values the registry already held exactly.
    unchanged: int


class StandardsRegistry:
    """Every version of every standard, queryable by division and day. Immutable."""

    __slots__ = ("_dates", "_digest", "_versions")

    def __init__(self, values: Iterable[StandardValue] = ()) -> None:
        """Build from values; of two with the same key (division, standard, effective_from), the later wins."""
        by_key: dict[tuple[str, Standard, dt.date], StandardValue] = {}
        for value in values:
            by_key[value.key] = value
        versions: dict[tuple[str, Standard], list[StandardValue]] = {}
        for value in by_key.values():
            versions.setdefault((value.prefix, value.standard), []).append(value)
        self._versions: dict[tuple[str, Standard], tuple[StandardValue, ...]] = {
            key: tuple(sorted(vs, key=lambda v: v.effective_from)) for key, vs in versions.items()
        }
        self._dates: dict[tuple[str, Standard], tuple[dt.date, ...]] = {
            key: tuple(v.effective_from for v in vs) for key, vs in self._versions.items()
        }
        self._digest: bytes | None = None

    @classmethod
    def from_files(cls, *files: StandardsFile) -> StandardsRegistry:
        """A registry of the files' values, later files correcting earlier ones."""
        return cls(value for f in files for value in f.values)

    @classmethod
    def from_canonical(cls, text: str) -> StandardsRegistry:
        """Rebuild a registry from :meth:`canonical` (as the hub stores it)."""
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: arrays or objects nested thousands deep
            raise InvalidArgument(
                "standards registry is not JSON", reason="STANDARDS_INVALID", field="standards"
            ) from None
        if not isinstance(doc, dict) or doc.get("schema") != _SCHEMA or not isinstance(doc.get("values"), list):
            raise InvalidArgument(
                f"standards registry must be schema {_SCHEMA} with a list of values",
                reason="STANDARDS_INVALID",
                field="standards",
            )
        return cls(StandardValue.from_json(v, field=f"values[{i}]") for i, v in enumerate(doc["values"]))

    def __iter__(self) -> Iterator[StandardValue]:
        """Every version, in canonical order (division, standard, effective_from)."""
        return iter(sorted((v for vs in self._versions.values() for v in vs), key=lambda v: v.key))

    def __len__(self) -> int:
        return sum(len(vs) for vs in self._versions.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StandardsRegistry) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"StandardsRegistry({len(self)} versions, digest={self.digest.hex()[:16]})"

    def publish(self, values: Iterable[StandardValue]) -> Publication:
        """A new registry with ``values`` added; a value for a key already held replaces it (a correction)."""
        held = {v.key: v for vs in self._versions.values() for v in vs}
        added: list[StandardValue] = []
        replaced: list[tuple[StandardValue, StandardValue]] = []
        unchanged = 0
        for value in values:
            was = held.get(value.key)
            if was is None:
                added.append(value)
            elif was == value:
                unchanged += 1
            else:
                replaced.append((was, value))
            held[value.key] = value
        return Publication(StandardsRegistry(held.values()), tuple(added), tuple(replaced), unchanged)

    def in_force_at_prefix(self, prefix: str, standard: Standard, day: dt.date) -> StandardValue | None:
        """The version published exactly for ``prefix`` (``44``, ``4401``, a county) in force on ``day``."""
        key = (prefix, standard)
        dates = self._dates.get(key)
        if not dates:
            return None
        i = bisect.bisect_right(dates, day)
        return self._versions[key][i - 1] if i else None

    def at(self, division: str, standard: Standard, day: dt.date) -> StandardValue | None:
        """The value in force at a 6-digit ``division`` on ``day``: the longest prefix with a version then.

        None when no prefix of the division has a version effective on or before ``day``.
        """
        _check_division(division, "division")
        for prefix in (division, division[:4], division[:2]):
            value = self.in_force_at_prefix(prefix, standard, day)
            if value is not None:
                return value
        return None

    def history(self, division: str, standard: Standard) -> tuple[StandardValue, ...]:
        """Every version published for exactly this 6-digit division, oldest first (wider ones not included)."""
        _check_division(division, "division")
        return self._versions.get((division_prefix(division), standard), ())

    def keys(self) -> frozenset[tuple[str, Standard]]:
        """The (division prefix, standard) pairs with at least one version."""
        return frozenset(self._versions)

    def effective_dates(self) -> tuple[dt.date, ...]:
        """Every distinct effective_from, sorted: the days on which some value starts to apply."""
        return tuple(sorted({d for ds in self._dates.values() for d in ds}))

    def next_change(self, after: dt.date) -> dt.date | None:
        """The first day after ``after`` on which some version takes effect (when to re-tier next)."""
        dates = self.effective_dates()
        i = bisect.bisect_right(dates, after)
        return dates[i] if i < len(dates) else None

    def canonical(self) -> str:
        """The registry as canonical JSON: equal versions, equal text, whatever the files' order."""
        return json.dumps(
            {"schema": _SCHEMA, "values": [v.to_json() for v in self]},
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        )

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical form: names this version of the registry in the store and the audit log."""
        if self._digest is None:
            self._digest = hashlib.sha256(self.canonical().encode()).digest()
        return self._digest


def changed_on(
    old: StandardsRegistry, new: StandardsRegistry, day: dt.date, *, old_day: dt.date | None = None
) -> frozenset[tuple[str, Standard]]:
    """The (division prefix, standard) pairs whose version in force differs between ``old`` and ``new``.

    ``old`` is read on ``old_day`` (default ``day``) and ``new`` on ``day``: with the same registry
    on both sides and two days, it names what changed between the days (a version taking effect).

    A division's value (:meth:`StandardsRegistry.at`) is decided by the versions in force at its three
    prefixes only, so a division none of whose prefixes is named here has the same value in both.
    The converse does not hold: a change at ``44`` is named even where every county overrides it.
    """
    since = day if old_day is None else old_day
    out = set()
    for prefix, standard in old.keys() | new.keys():
        if old.in_force_at_prefix(prefix, standard, since) != new.in_force_at_prefix(prefix, standard, day):
            out.add((prefix, standard))
    return frozenset(out)


def _parse_date(text: str) -> dt.date | None:
    if not _DATE.fullmatch(text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _parse_fen(text: str) -> int | None:
    if not _YUAN.fullmatch(text):
        return None
    fen = int(Decimal(text) * 100)  # exact: at most two decimals
    return fen if 0 < fen <= MAX_MONTHLY_FEN else None


def _detect(data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8"


def _lines(data: bytes, encoding: str) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per physical line; text None when the line is not in the encoding."""
    codec = "utf-8" if encoding in ("utf-8", "utf-8-sig") else encoding
    if data.startswith(codecs.BOM_UTF8) and codec == "utf-8":
        data = data[len(codecs.BOM_UTF8) :]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            yield number, raw.rstrip(b"\r").decode(codec)
        except UnicodeDecodeError:
            yield number, None


def parse_standards(
    data: bytes | str, *, source: str = "standards", encoding: str | None = None, province: str | None = None
) -> StandardsFile:
    """Read a standards file: every row loaded or rejected; ConfigError only for a file with no usable header.

    ``encoding`` is ``utf-8``, ``utf-8-sig``, ``gbk`` or ``gb18030`` (detected when None). With
    ``province`` (``440000``), a row for a division of another province is rejected.
    """
    if isinstance(data, str):
        data, encoding = data.encode("utf-8"), "utf-8"
    if encoding is None:
        encoding = _detect(data)
    try:
        encoding = codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(f"{source}: unknown encoding {encoding!r}", field="encoding") from None
    if province is not None and (not _is_six_digits(province) or not province.endswith("0000")):
        raise ConfigError(f"province must be a province code such as 440000, not {province!r}", field="province")

    header: dict[str, int] | None = None
    values: dict[tuple[str, Standard, dt.date], tuple[StandardValue, int]] = {}
    rejected: list[RejectedRow] = []
    rows_read = loaded = 0
    for number, text in _lines(data, encoding):
        if text is not None and (not text.strip() or text.lstrip().startswith("#")):
            continue
        if header is None:
            if text is None:
                raise ConfigError(f"{source}: the header (line {number}) is not {encoding}", field="header")
            header = _header(text, source)
            continue
        rows_read += 1
        outcome = _row(number, text, header, encoding, province, values)
        if isinstance(outcome, RejectedRow):
            rejected.append(outcome)
        else:
            loaded += 1
            if outcome is not None:
                values[outcome.key] = (outcome, number)
    if header is None:
        raise ConfigError(f"{source} has no header line", field="header")
    return StandardsFile(
        source=source,
        encoding=encoding,
        values=tuple(v for v, _ in values.values()),
        rejected=tuple(rejected),
        rows_read=rows_read,
        loaded=loaded,
    )


def load_standards(path: Path, *, encoding: str | None = None, province: str | None = None) -> StandardsFile:
    """Read a standards file from disk (see :func:`parse_standards`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", reason="FILE_MISSING", field="standards") from None
    return parse_standards(data, source=str(path), encoding=encoding, province=province)


def _header(text: str, source: str) -> dict[str, int]:
    try:
        names = [n.strip().lower() for n in next(csv.reader([text], strict=True))]
    except csv.Error as exc:
        raise ConfigError(f"{source}: the header is not CSV: {exc}", field="header") from None
    while names and not names[-1]:
        names.pop()
    columns: dict[str, int] = {}
    for name in names:
        if name not in _COLUMNS and name not in _OPTIONAL:
            raise ConfigError(
                f"{source}: unknown column {name!r}; columns are {', '.join(_COLUMNS + _OPTIONAL)}", field=name
            )
        if name in columns:
            raise ConfigError(f"{source}: column {name!r} appears twice", field=name)
        columns[name] = len(columns)
    for name in _COLUMNS:
        if name not in columns:
            raise ConfigError(f"{source}: the header lacks the column {name!r}", field=name)
    return columns


def _row(
    number: int,
    text: str | None,
    header: Mapping[str, int],
    encoding: str,
    province: str | None,
    seen: Mapping[tuple[str, Standard, dt.date], tuple[StandardValue, int]],
) -> StandardValue | RejectedRow | None:
    """A row's value, its rejection, or None for an exact repeat of an earlier row."""

    def reject(reason: str, message: str) -> RejectedRow:
        return RejectedRow(number, reason, message)

    if text is None:
        return reject("ENCODING_INVALID", f"line {number} is not {encoding}")
    try:
        cells = [c.strip() for c in next(csv.reader([text], strict=True))]
    except csv.Error as exc:
        return reject("CSV_MALFORMED", f"line {number} is not a CSV row: {exc}")
    while len(cells) > len(header) and not cells[-1]:
        cells.pop()  # a trailing delimiter, as spreadsheets write
    if len(cells) != len(header):
        return reject("COLUMN_COUNT", f"line {number} has {len(cells)} columns, the header {len(header)}")
    row = {name: cells[i] for name, i in header.items()}

    division = row["division"]
    if not _is_six_digits(division):
        return reject("DIVISION_MALFORMED", f"division {division!r} is not a 6-digit GB/T 2260 code")
    if not is_known_division(division):
        return reject("DIVISION_UNKNOWN", f"division {division} is not a current GB/T 2260 code")
    if province is not None and division[:2] != province[:2]:
        return reject("DIVISION_OUTSIDE_PROVINCE", f"division {division} is not in province {province}")
    try:
        standard = Standard(row["standard"])
    except ValueError:
        return reject(
            "STANDARD_UNKNOWN",
            f"standard {row['standard']!r} is not one of {', '.join(s.value for s in Standard)}",
        )
    fen = _parse_fen(row["monthly_yuan"])
    if fen is None:
        return reject(
            "AMOUNT_INVALID",
            f"monthly_yuan {row['monthly_yuan']!r} is not a positive amount in yuan with at most two decimals"
            f" (up to {MAX_MONTHLY_FEN // 100})",
        )
    day = _parse_date(row["effective_from"])
    if day is None:
        return reject("DATE_INVALID", f"effective_from {row['effective_from']!r} is not a YYYY-MM-DD date")
    document = row.get("document", "")
    if len(document) > _MAX_DOCUMENT:
        return reject("DOCUMENT_TOO_LONG", f"document has more than {_MAX_DOCUMENT} characters")
    value = StandardValue(division, standard, day, fen, document)
    earlier = seen.get(value.key)
    if earlier is not None:
        first, line = earlier
        if first.monthly_fen != value.monthly_fen:
            return reject(
                "DUPLICATE_CONFLICT",
                f"{division} {standard.value} from {day.isoformat()} is {first.monthly_fen} fen on line {line}"
                f" and {fen} fen here",
            )
        return None  # the same amount again: agrees with line `line`, which is kept
    return value
