"""Household verification (核对), the source side: the province's own data files, declared in ``node.toml``.

A province (or a department source) exports what it holds — property registrations, vehicles,
business registrations, deposits, pensions — as CSV or JSON Lines files. Each file is declared once,
adapter-style, in a ``[[verification.sources]]`` table (every key: ``deploy/CONFIG.md``): the column
holding the member's ID number, the class of its items (a constant, or a column read through a code
table), and the columns giving the reference, the description (a template), the amount (yuan or
fen, kept as integer fen, never a float) and the day it refers to. No code per source. The readers
are the adapters' (:mod:`adapters.csv_reader`, :mod:`adapters.jsonl_reader`), and so are the date
patterns (:func:`adapters.mapping.parse_date`).

**The index.** ``hutong node serve`` brings ``<data_dir>/verification.sqlite`` up to date before it
listens (:meth:`ItemIndex.update`). A source whose file and mapping are unchanged since it was
indexed (same size and modification time, or else the same SHA-256) is kept as it is; a changed one
is read again, streaming, and replaces its items in one transaction, so that a rebuild cut short
leaves the previous index in place. A source no longer configured loses its items. Items are keyed
by the normalised 18-character ID number (15-digit numbers lengthened), with an index on it. The
index is derived data: deleting it makes the next start read every file again.

**Every row is accounted for**: an item, or a reject — its line and every problem found (the mapping
key, a reason, a message), kept in the index's ``rejects`` table — and each source's counts are
logged (``verification_source_indexed``). Neither the log nor an error ever holds an ID number.

**Mistakes in the mapping** are :class:`~gateway.errors.ConfigError` naming the key
(``verification.sources[1].amount``, sources counted from 0): types and values when ``node.toml`` is
read (:func:`verification_settings`), and, when the file is indexed, a missing file, a column the
CSV header lacks, or a JSON key that no row of the file holds.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
import sqlite3
import stat as stat_mode
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from adapters.csv_reader import read_delimited
from adapters.jsonl_reader import read_jsonl
from adapters.mapping import FieldProblem, parse_date
from adapters.profile import ENCODINGS, TEMPLATE_FIELD, date_pattern_problem
from adapters.source import DATA, HEADER, SourceError, SourceRow
from gateway.domain import identity
from gateway.domain.access import purpose_name
from gateway.domain.model import Purpose
from gateway.domain.verification import (
    CONSENT_VALID_DAYS,
    ItemClass,
    Sensitivity,
    default_sensitivity,
    item_class_named,
)
from gateway.errors import ConfigError, HutongError, InvalidIdNumber
from gateway.store.sqlite import check_database_file
from gateway.toml_config import Section

__all__ = [
    "DEFAULT_PURPOSES",
    "INDEX_DATABASE",
    "SOURCE_KEYS",
    "HeldItem",
    "ItemIndex",
    "Reject",
    "SourceMapping",
    "SourceSummary",
    "VerificationSettings",
    "parse_amount_fen",
    "verification_settings",
]

log = structlog.get_logger("hutong.node")

#: The index of the node's verification sources, in its data directory.
INDEX_DATABASE = "verification.sqlite"
#: What a node answers verifications for unless ``verification.purposes`` says otherwise.
DEFAULT_PURPOSES = frozenset({Purpose.ELIGIBILITY_REVIEW, Purpose.MONITORING_FOLLOW_UP})
#: Every key of a ``[[verification.sources]]`` table (each documented in ``deploy/CONFIG.md``).
SOURCE_KEYS = frozenset(
    {
        "name",
        "file",
        "format",
        "encoding",
        "delimiter",
        "item_class",
        "class_column",
        "classes",
        "id_number",
        "reference",
        "description",
        "amount",
        "amount_unit",
        "as_of",
        "date_format",
        "sensitivity",
    }
)
_FORMATS = ("csv", "jsonl")
_AMOUNT_UNITS = ("yuan", "fen")
_SENSITIVITIES = {"general": Sensitivity.GENERAL, "sensitive": Sensitivity.SENSITIVE}
#: Longest description kept (the hub keeps no more).
_MAX_DESCRIPTION = 500
#: Rejects of one source logged one by one (all are in the index's rejects table).
_LOGGED_REJECTS = 5
_BATCH_ROWS = 5000
_INT64_MAX = 2**63 - 1
_YUAN = re.compile(r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]{1,2})?")
_FEN = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+")
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE sources (
    source_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    file TEXT NOT NULL,
    mapping_sha256 TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    file_mtime_ns INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    loaded INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    indexed_at_us INTEGER NOT NULL
);
CREATE TABLE items (
    source_id INTEGER NOT NULL,
    id_number TEXT NOT NULL,
    item_class INTEGER NOT NULL,
    sensitivity INTEGER NOT NULL,
    reference TEXT NOT NULL,
    description TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    as_of TEXT,
    location TEXT NOT NULL
);
CREATE INDEX items_by_id_number ON items (id_number, item_class);
CREATE INDEX items_by_source ON items (source_id);
CREATE TABLE rejects (
    source_id INTEGER NOT NULL,
    location TEXT NOT NULL,
    problems TEXT NOT NULL
);
CREATE INDEX rejects_by_source ON rejects (source_id);
"""


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceMapping:
    """One ``[[verification.sources]]`` table, checked: how a file's rows become verification items."""

    #: Where it is in ``node.toml`` (``verification.sources[0]``), for errors.
    where: str
    #: The source's name (``不动产登记``); unique within the node, it keys the source in the index.
    name: str
    #: The data file (absolute, or relative to ``node.toml`` when read from it).
    file: Path
    #: ``csv`` or ``jsonl``.
    format: str
    #: ``utf-8``, ``utf-8-sig``, ``gbk`` or ``gb18030``.
    encoding: str = "utf-8"
    #: The CSV field separator.
    delimiter: str = ","
    #: The class of every item, or None when ``class_column`` gives it row by row.
    item_class: ItemClass | None = None
    #: The column holding the source's own class code, read through ``classes``.
    class_column: str | None = None
    #: The source's class codes → item classes.
    classes: Mapping[str, ItemClass] = field(default_factory=dict)
    #: The column holding the member's ID number.
    id_number: str = ""
    #: The column holding the source's reference of the item.
    reference: str | None = None
    #: The description: text with ``{column}`` placeholders; None: the source's name.
    description: str | None = None
    #: The column holding the amount, and its unit (``yuan``, at most 2 decimals, or ``fen``).
    amount: str | None = None
    amount_unit: str | None = None
    #: The column holding the day the value refers to, and its pattern (``YYYYMMDD``, ``YYYY年M月D日``).
    as_of: str | None = None
    date_format: str | None = None
    #: Every item's sensitivity; None: the class's default (:func:`default_sensitivity`).
    sensitivity: Sensitivity | None = None

    def key(self, name: str) -> str:
        """The full config key of one of this source's keys, for errors."""
        return f"{self.where}.{name}"

    def columns(self) -> dict[str, list[str]]:
        """The columns each mapping key reads (the description's placeholders under ``description``)."""
        named = {
            "class_column": self.class_column,
            "id_number": self.id_number,
            "reference": self.reference,
            "amount": self.amount,
            "as_of": self.as_of,
        }
        out = {key: [column] for key, column in named.items() if column}
        if self.description is not None:
            placeholders = TEMPLATE_FIELD.findall(self.description)
            if placeholders:
                out["description"] = placeholders
        return out

    def digest(self) -> str:
        """SHA-256 of the mapping (file name included): a changed mapping re-indexes the file."""
        canonical = {
            "file": str(self.file),
            "format": self.format,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "item_class": self.item_class.config_name if self.item_class else None,
            "class_column": self.class_column,
            "classes": {code: c.config_name for code, c in sorted(self.classes.items())},
            "id_number": self.id_number,
            "reference": self.reference,
            "description": self.description,
            "amount": self.amount,
            "amount_unit": self.amount_unit,
            "as_of": self.as_of,
            "date_format": self.date_format,
            "sensitivity": self.sensitivity.name if self.sensitivity else None,
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class VerificationSettings:
    """The ``[verification]`` section: the purposes a node answers for and the files it answers from."""

    #: Purposes the node answers verifications for; any other is refused (``PURPOSE_NOT_SERVED``).
    purposes: frozenset[Purpose] = DEFAULT_PURPOSES
    #: The node's sources; none: the node takes no part in verifications (``VERIFICATION_NOT_SERVED``).
    sources: tuple[SourceMapping, ...] = ()
    #: Days a household's consent stays valid, checked again here (the hub checked it with its own setting).
    consent_valid_days: int = CONSENT_VALID_DAYS

    @property
    def served(self) -> bool:
        """Whether the node answers verifications at all."""
        return bool(self.sources)


def _purpose_named(name: str, key: str) -> Purpose:
    found = Purpose.__members__.get(name.upper().replace("-", "_"))
    if found is None or found is Purpose.UNSPECIFIED or purpose_name(found) != name:
        known = ", ".join(purpose_name(p) for p in Purpose if p is not Purpose.UNSPECIFIED)
        raise ConfigError(f"{key}: {name!r} is not a purpose (one of {known})", field=key)
    return found


def verification_settings(section: Section, *, base: Path) -> VerificationSettings:
    """The ``[verification]`` section checked; relative source files are read from ``base``."""
    purposes = frozenset(
        _purpose_named(name, "verification.purposes")
        for name in section.texts("purposes", tuple(purpose_name(p) for p in sorted(DEFAULT_PURPOSES)))
    )
    if not purposes:
        raise section.fail("purposes", "a list of at least one purpose")
    valid_days = section.integer("consent_valid_days", CONSENT_VALID_DAYS, 1, 3660)
    raw = section.table.get("sources", [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise section.fail("sources", "an array of tables ([[verification.sources]])")
    sources: list[SourceMapping] = []
    names: set[str] = set()
    for index, table in enumerate(raw):
        mapping = _source(Section(table, f"verification.sources[{index}]", base), table)
        if mapping.name in names:
            raise ConfigError(
                f"{mapping.key('name')}: another source is already named {mapping.name!r}",
                field=mapping.key("name"),
            )
        names.add(mapping.name)
        sources.append(mapping)
    return VerificationSettings(purposes=purposes, sources=tuple(sources), consent_valid_days=valid_days)


def _optional(section: Section, key: str) -> str | None:
    return section.text(key) if key in section else None


def _source(section: Section, table: Mapping[str, Any]) -> SourceMapping:
    where = section.name
    for key in table:
        if key not in SOURCE_KEYS:
            raise ConfigError(f"unknown key {where}.{key}", field=f"{where}.{key}")
    fmt = section.text("format")
    if fmt not in _FORMATS:
        raise section.fail("format", f"one of {', '.join(_FORMATS)}, not {fmt!r}")
    encoding = section.text("encoding", "utf-8").lower()
    if encoding not in ENCODINGS:
        raise section.fail("encoding", f"one of {', '.join(ENCODINGS)}, not {encoding!r}")
    if "delimiter" in section and fmt != "csv":
        raise section.fail("delimiter", "left out: only a csv source has a delimiter")
    delimiter = section.text("delimiter", ",")
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise section.fail("delimiter", "one character (not a quote or a line break)")

    constant = _optional(section, "item_class")
    class_column = _optional(section, "class_column")
    if (constant is None) == (class_column is None):
        raise section.fail("item_class", "set, or else class_column with a [classes] code table (one of the two)")
    item_class = _class(constant, f"{where}.item_class") if constant is not None else None
    classes: dict[str, ItemClass] = {}
    codes = table.get("classes")
    if class_column is not None:
        if not isinstance(codes, dict) or not codes:
            raise section.fail("classes", "a table of the source's class codes to item classes (with class_column)")
        for code, name in codes.items():
            if not isinstance(name, str):
                raise ConfigError(f"{where}.classes.{code} must be an item class name", field=f"{where}.classes.{code}")
            classes[code.strip()] = _class(name, f"{where}.classes.{code}")
    elif codes is not None:
        raise section.fail("classes", "left out: a code table goes with class_column")

    amount = _optional(section, "amount")
    unit = _optional(section, "amount_unit")
    if amount is not None and unit is None:
        raise section.fail("amount_unit", f"set with amount: one of {', '.join(_AMOUNT_UNITS)}")
    if unit is not None and unit not in _AMOUNT_UNITS:
        raise section.fail("amount_unit", f"one of {', '.join(_AMOUNT_UNITS)}, not {unit!r}")
    if unit is not None and amount is None:
        raise section.fail("amount", "the column of the amount (amount_unit is set)")
    as_of = _optional(section, "as_of")
    date_format = _optional(section, "date_format")
    if as_of is not None and date_format is None:
        raise section.fail("date_format", 'set with as_of: the date pattern, e.g. "YYYYMMDD" or "YYYY年M月D日"')
    if date_format is not None:
        if as_of is None:
            raise section.fail("as_of", "the column of the date (date_format is set)")
        problem = date_pattern_problem(date_format)
        if problem is not None:
            field = f"{section.name}.date_format"
            raise ConfigError(f"{field}: {problem}", field=field)
    sensitivity = _optional(section, "sensitivity")
    if sensitivity is not None and sensitivity not in _SENSITIVITIES:
        raise section.fail("sensitivity", f"one of {', '.join(_SENSITIVITIES)}, not {sensitivity!r}")
    description = section.text("description", "") or None
    name = section.text("name").strip()
    if not name:
        raise section.fail("name", "a non-empty string")
    return SourceMapping(
        where=where,
        name=name,
        file=section.path("file"),
        format=fmt,
        encoding=encoding,
        delimiter=delimiter,
        item_class=item_class,
        class_column=class_column,
        classes=classes,
        id_number=section.text("id_number"),
        reference=_optional(section, "reference"),
        description=description,
        amount=amount,
        amount_unit=unit,
        as_of=as_of,
        date_format=date_format,
        sensitivity=_SENSITIVITIES[sensitivity] if sensitivity is not None else None,
    )


def _class(name: str, key: str) -> ItemClass:
    try:
        return item_class_named(name, field=key)
    except HutongError as exc:
        raise ConfigError(f"{key}: {exc.message}", reason=exc.reason, field=key) from None


# -- from a row to an item -----------------------------------------------------------------------


def parse_amount_fen(text: str, unit: str) -> int:
    """An amount as written (``1,250,000.50`` yuan, ``125000050`` fen) in integer fen, exactly; ValueError if not one.

    Yuan take at most two decimals; thousands separators are allowed; a sign is not (amounts held or
    received are never negative here), nor an exponent.
    """
    value = text.strip()
    if value.startswith("-"):
        raise ValueError(f"{value!r} is negative")
    if unit == "yuan":
        if not _YUAN.fullmatch(value):
            raise ValueError(f"{value!r} is not an amount in yuan (at most two decimals)")
        whole, _, cents = value.replace(",", "").partition(".")
        fen = int(whole) * 100 + int((cents + "00")[:2])
    else:
        if not _FEN.fullmatch(value):
            raise ValueError(f"{value!r} is not a whole number of fen")
        fen = int(value.replace(",", ""))
    if fen > _INT64_MAX:
        raise ValueError(f"{value!r} is too large")
    return fen


@dataclass(frozen=True, slots=True)
class HeldItem:
    """One item a source holds about one person, as indexed."""

    #: The source's name.
    source: str
    item_class: ItemClass
    sensitivity: Sensitivity
    reference: str
    description: str
    #: Integer fen; 0 when the source states none.
    amount_fen: int
    as_of: dt.date | None
    #: Where it was read (``line 12``), to trace an appeal to the file.
    location: str


@dataclass(frozen=True, slots=True)
class Reject:
    """A data row that became no item: where it is, and every problem found."""

    location: str
    problems: tuple[FieldProblem, ...]


def _item_of(m: SourceMapping, fields: Mapping[str, str], location: str) -> tuple[str, HeldItem] | list[FieldProblem]:
    """A row's (normalised ID number, item) under the source's mapping, or every problem with the row."""
    problems: list[FieldProblem] = []
    number = ""
    raw_number = fields.get(m.id_number, "").strip()
    if not raw_number:
        problems.append(FieldProblem("id_number", "ID_NUMBER_MISSING", f"column {m.id_number!r} is empty"))
    else:
        try:
            number = identity.parse_id_number(raw_number).value
        except InvalidIdNumber as exc:  # its message names positions, never digits
            problems.append(FieldProblem("id_number", exc.reason, f"column {m.id_number!r}: {exc.message}"))
    item_class = m.item_class
    if m.class_column is not None:
        code = fields.get(m.class_column, "").strip()
        item_class = m.classes.get(code)
        if not code:
            problems.append(FieldProblem("class_column", "CLASS_MISSING", f"column {m.class_column!r} is empty"))
        elif item_class is None:
            problems.append(
                FieldProblem(
                    "class_column",
                    "CLASS_CODE_UNKNOWN",
                    f"{code!r} in column {m.class_column!r} is not in the source's classes table",
                )
            )
    amount_fen = 0
    if m.amount is not None and m.amount_unit is not None:
        text = fields.get(m.amount, "").strip()
        if text:
            try:
                amount_fen = parse_amount_fen(text, m.amount_unit)
            except ValueError as exc:
                reason = "AMOUNT_NEGATIVE" if text.startswith("-") else "AMOUNT_INVALID"
                problems.append(FieldProblem("amount", reason, f"column {m.amount!r}: {exc}"))
    as_of: dt.date | None = None
    if m.as_of is not None and m.date_format is not None:
        text = fields.get(m.as_of, "").strip()
        if text:
            try:
                as_of, _ = parse_date(text, m.date_format)
            except ValueError as exc:
                problems.append(FieldProblem("as_of", "DATE_INVALID", f"column {m.as_of!r}: {exc}"))
    if problems or item_class is None:
        return problems
    if m.description is None:
        description = m.name
    else:
        description = TEMPLATE_FIELD.sub(lambda g: fields.get(g[1], "").strip(), m.description).strip()
    item = HeldItem(
        source=m.name,
        item_class=item_class,
        sensitivity=default_sensitivity(item_class) if m.sensitivity is None else m.sensitivity,
        reference=fields.get(m.reference, "").strip() if m.reference else "",
        description=description[:_MAX_DESCRIPTION],
        amount_fen=amount_fen,
        as_of=as_of,
        location=location,
    )
    return number, item


# -- the index -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSummary:
    """What one source's update did, and what the index holds of it."""

    name: str
    file: Path
    #: True when the file (or the mapping) had changed and was read again.
    reindexed: bool
    #: Data rows read (every one an item or a reject).
    rows: int
    loaded: int
    rejected: int
    #: Rejects by reason (a row with several problems counts under each); only for a re-indexed source.
    reasons: dict[str, int] = field(default_factory=dict)


def _file_sha256(m: SourceMapping) -> str:
    digest = hashlib.sha256()
    try:
        with m.file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:  # stat() answered, open() or read() did not (permissions, a file going away)
        raise ConfigError(
            f"{m.key('file')}: cannot read {m.file}: {exc.strerror or exc}", reason="FILE_MISSING", field=m.key("file")
        ) from None
    return digest.hexdigest()


class ItemIndex:
    """The node's index of verification items (SQLite), by normalised ID number.

    Open it with :meth:`open`, bring it up to date with :meth:`update` (blocking: run it in a thread),
    read it with :meth:`lookup`. One thread at a time.
    """

    def __init__(self, con: sqlite3.Connection, path: Path) -> None:
        self._con = con
        self.path = path

    @classmethod
    def open(cls, path: Path) -> ItemIndex:
        """Open (or create) the index at ``path``; an index of another layout is emptied (it is derived data)."""
        check_database_file(path)  # 0600: the index holds the sources' items of named persons
        try:
            # check_same_thread=False: built in a worker thread at start, then read on the event loop.
            con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(
                f"the verification index {path} cannot be opened: {exc}", reason="INDEX_UNUSABLE", field="node.data_dir"
            ) from exc
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=10000")
            (version,) = con.execute("PRAGMA user_version").fetchone()
            if version != _SCHEMA_VERSION:
                con.execute("BEGIN IMMEDIATE")
                for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                    con.execute(f'DROP TABLE "{table}"')
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                con.execute("COMMIT")
        except sqlite3.Error as exc:
            con.close()
            raise ConfigError(
                f"the verification index {path} cannot be opened ({exc}); it is derived data: delete it, start again",
                reason="INDEX_UNUSABLE",
                field="node.data_dir",
            ) from exc
        return cls(con, path)

    def close(self) -> None:
        """Close the database."""
        self._con.close()

    # -- keeping it up to date -------------------------------------------------------------------

    def update(self, sources: Sequence[SourceMapping]) -> list[SourceSummary]:
        """Re-index every source whose file or mapping changed, drop sources no longer configured.

        A missing file or a mapping the file does not fit raises ConfigError naming the key, after the
        sources before it are brought up to date (each in its own transaction).
        """
        configured = {m.name for m in sources}
        for source_id, name in self._con.execute("SELECT source_id, name FROM sources").fetchall():
            if name not in configured:
                self._drop(source_id)
                log.info("verification_source_removed", source=name)
        return [self._update_one(mapping) for mapping in sources]

    def _update_one(self, m: SourceMapping) -> SourceSummary:
        try:
            stat = m.file.stat()
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
            raise ConfigError(
                f"{m.key('file')}: cannot read {m.file}: {getattr(exc, 'strerror', None) or exc}",
                reason="FILE_MISSING",
                field=m.key("file"),
            ) from None
        if not stat_mode.S_ISREG(stat.st_mode):
            # A directory cannot be read; a FIFO or a device could be read forever.
            raise ConfigError(
                f"{m.key('file')}: {m.file} is not a regular file", reason="FILE_MISSING", field=m.key("file")
            )
        mapping_sha = m.digest()
        held = self._con.execute(
            "SELECT source_id, mapping_sha256, file_sha256, file_size, file_mtime_ns, rows, loaded, rejected"
            " FROM sources WHERE name = ?",
            (m.name,),
        ).fetchone()
        if held is not None and held[1] == mapping_sha:
            source_id, _, file_sha, size, mtime_ns, rows, loaded, rejected = held
            unchanged = (size, mtime_ns) == (stat.st_size, stat.st_mtime_ns)
            if not unchanged and size == stat.st_size and _file_sha256(m) == file_sha:
                # Touched (copied again, restored from a backup) but the same bytes: remember the new time.
                self._con.execute(
                    "UPDATE sources SET file_mtime_ns = ? WHERE source_id = ?", (stat.st_mtime_ns, source_id)
                )
                unchanged = True
            if unchanged:
                log.info(
                    "verification_source_unchanged", source=m.name, file=m.file.name, loaded=loaded, rejected=rejected
                )
                return SourceSummary(m.name, m.file, False, rows, loaded, rejected)
        return self._index(m, mapping_sha, stat.st_size, stat.st_mtime_ns)

    def _index(self, m: SourceMapping, mapping_sha: str, size: int, mtime_ns: int) -> SourceSummary:
        started = time.monotonic()
        file_sha = _file_sha256(m)
        reasons: Counter[str] = Counter()
        rows = loaded = rejected = 0
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            held = con.execute("SELECT source_id FROM sources WHERE name = ?", (m.name,)).fetchone()
            if held is not None:
                source_id = held[0]
                self._delete(source_id)
                con.execute(
                    "UPDATE sources SET file = ?, mapping_sha256 = ?, file_sha256 = ?, file_size = ?, file_mtime_ns = ?"
                    " WHERE source_id = ?",
                    (str(m.file), mapping_sha, file_sha, size, mtime_ns, source_id),
                )
            else:
                source_id = con.execute(
                    "INSERT INTO sources (name, file, mapping_sha256, file_sha256, file_size, file_mtime_ns, rows,"
                    " loaded, rejected, indexed_at_us) VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0)",
                    (m.name, str(m.file), mapping_sha, file_sha, size, mtime_ns),
                ).lastrowid
            items: list[tuple[Any, ...]] = []
            bad: list[tuple[Any, ...]] = []
            # A JSON key is looked for in every row (JSON Lines has no header): one no row holds is a typo.
            unseen = {key: set(cols) for key, cols in m.columns().items()} if m.format == "jsonl" else {}
            with_fields = 0
            for row in self._rows(m):
                rows += 1
                if row.fields is None:
                    reason, message = row.error or ("ROW_INVALID", "the row cannot be read")
                    result: tuple[str, HeldItem] | list[FieldProblem] = [FieldProblem("row", reason, message)]
                else:
                    with_fields += 1
                    if unseen:
                        for key in list(unseen):
                            unseen[key] -= row.fields.keys()
                            if not unseen[key]:
                                del unseen[key]
                    result = _item_of(m, row.fields, row.location)
                if isinstance(result, list):
                    rejected += 1
                    reasons.update(p.reason for p in result)
                    if rejected <= _LOGGED_REJECTS:
                        log.warning(
                            "verification_row_rejected",
                            source=m.name,
                            location=row.location,
                            reasons=[f"{p.field}: {p.reason}" for p in result],
                        )
                    problems = json.dumps([p.to_json() for p in result], ensure_ascii=False)
                    bad.append((source_id, row.location, problems))
                else:
                    loaded += 1
                    number, item = result
                    items.append(
                        (
                            source_id,
                            number,
                            int(item.item_class),
                            int(item.sensitivity),
                            item.reference,
                            item.description,
                            item.amount_fen,
                            item.as_of.isoformat() if item.as_of else None,
                            item.location,
                        )
                    )
                if len(items) >= _BATCH_ROWS:
                    self._insert_items(items)
                if len(bad) >= _BATCH_ROWS:
                    con.executemany("INSERT INTO rejects VALUES (?, ?, ?)", bad)
                    bad.clear()
            if unseen and with_fields:
                key, columns = next(iter(unseen.items()))
                raise ConfigError(
                    f"{m.key(key)}: no row of {m.file.name} holds {', '.join(sorted(columns))}",
                    reason="COLUMN_MISSING",
                    field=m.key(key),
                )
            self._insert_items(items)
            con.executemany("INSERT INTO rejects VALUES (?, ?, ?)", bad)
            con.execute(
                "UPDATE sources SET rows = ?, loaded = ?, rejected = ?, indexed_at_us = ? WHERE source_id = ?",
                (rows, loaded, rejected, time.time_ns() // 1000, source_id),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        log.info(
            "verification_source_indexed",
            source=m.name,
            file=m.file.name,
            rows=rows,
            loaded=loaded,
            rejected=rejected,
            reasons=dict(reasons),
            seconds=round(time.monotonic() - started, 3),
        )
        return SourceSummary(m.name, m.file, True, rows, loaded, rejected, dict(reasons))

    def _insert_items(self, items: list[tuple[Any, ...]]) -> None:
        self._con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", items)
        items.clear()

    def _rows(self, m: SourceMapping) -> Iterator[SourceRow]:
        """The file's data rows; a CSV header lacking a mapped column is a ConfigError naming the key."""
        try:
            if m.format == "jsonl":
                yield from read_jsonl(m.file, encoding=m.encoding)
                return
            for row in read_delimited(m.file, encoding=m.encoding, delimiter=m.delimiter):
                if row.kind == HEADER:
                    self._check_header(m, row.raw)
                elif row.kind == DATA:
                    yield row
        except SourceError as exc:
            raise ConfigError(
                f"{m.key('file')}: {exc.message}", reason="SOURCE_UNREADABLE", field=m.key("file")
            ) from None

    @staticmethod
    def _check_header(m: SourceMapping, header: str) -> None:
        names = {name.strip() for name in next(csv.reader([header], delimiter=m.delimiter))}
        for key, columns in m.columns().items():
            missing = [c for c in columns if c not in names]
            if missing:
                bom = '; it starts with a byte-order mark: say encoding = "utf-8-sig"' if header[:1] == "\ufeff" else ""
                raise ConfigError(
                    f"{m.key(key)}: the header of {m.file.name} has no column {', '.join(map(repr, missing))}"
                    f" (it has {', '.join(sorted(names))}){bom}",
                    reason="COLUMN_MISSING",
                    field=m.key(key),
                )

    def _delete(self, source_id: int) -> None:
        for table in ("items", "rejects"):
            self._con.execute(f"DELETE FROM {table} WHERE source_id = ?", (source_id,))

    def _drop(self, source_id: int) -> None:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            self._delete(source_id)
            con.execute("DELETE FROM sources WHERE source_id = ?", (source_id,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # -- reading ---------------------------------------------------------------------------------

    def lookup(self, id_numbers: Sequence[str], classes: Collection[ItemClass]) -> list[tuple[int, HeldItem]]:
        """Every item held about each of ``id_numbers`` (normalised) of the ``classes`` asked, as (position, item)."""
        if not id_numbers or not classes:
            return []
        positions: dict[str, list[int]] = {}
        for index, number in enumerate(id_numbers):
            positions.setdefault(number, []).append(index)
        numbers = list(positions)
        wanted = sorted({int(c) for c in classes})
        rows = self._con.execute(
            "SELECT i.id_number, s.name, i.item_class, i.sensitivity, i.reference, i.description, i.amount_fen,"
            " i.as_of, i.location FROM items i JOIN sources s ON s.source_id = i.source_id"
            f" WHERE i.id_number IN ({', '.join('?' * len(numbers))})"
            f" AND i.item_class IN ({', '.join('?' * len(wanted))})"
            " ORDER BY s.name, i.rowid",
            [*numbers, *wanted],
        ).fetchall()
        found: list[tuple[int, HeldItem]] = []
        for number, source, item_class, sensitivity, reference, description, amount_fen, as_of, location in rows:
            item = HeldItem(
                source=source,
                item_class=ItemClass(item_class),
                sensitivity=Sensitivity(sensitivity),
                reference=reference,
                description=description,
                amount_fen=amount_fen,
                as_of=dt.date.fromisoformat(as_of) if as_of else None,
                location=location,
            )
            found.extend((index, item) for index in positions[number])
        found.sort(key=lambda pair: pair[0])  # stable: each member's items stay in source order
        return found

    def rejects(self, source: str) -> list[Reject]:
        """The rows of ``source`` that became no item, in file order."""
        rows = self._con.execute(
            "SELECT r.location, r.problems FROM rejects r JOIN sources s ON s.source_id = r.source_id"
            " WHERE s.name = ? ORDER BY r.rowid",
            (source,),
        ).fetchall()
        return [
            Reject(location, tuple(FieldProblem(p["field"], p["reason"], p["message"]) for p in json.loads(problems)))
            for location, problems in rows
        ]
