"""Running a profile over files: every row accounted for, every reject kept with its reasons.

:func:`adapt` streams each file through its reader and the :class:`~adapters.mapping.RowMapper`
and hands each outcome to the caller: a record to ``on_record``, a reject to ``on_reject``.
:class:`Summary` counts them; ``rows_read == produced + rejected`` holds for every file and for
the run (structure rows — headers, trailers, totals, deleted DBF records — are counted apart).
A file that cannot be read at all, or breaks midway, is reported in the summary and the run
goes on with the next; what was read of it before it broke is accounted like any other rows.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.csv_reader import read_delimited
from adapters.fixed_width_reader import read_fixed_width
from adapters.jsonl_reader import read_jsonl
from adapters.mapping import FieldProblem, Membership, RowMapper
from adapters.profile import Profile
from adapters.source import DATA, TRAILER, SourceError, SourceRow
from gateway.domain.model import (
    EnrollmentStatus,
    Gender,
    Household,
    HouseholdMember,
    HouseholdRelation,
    PersonRecord,
    Program,
)

__all__ = [
    "FileSummary",
    "HouseholdGrouper",
    "Reject",
    "Summary",
    "adapt",
    "household_to_json",
    "read_rows",
    "record_to_json",
]


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that did not become a record, with every reason."""

    file: str
    location: str
    raw: str
    problems: tuple[FieldProblem, ...]
    record_id: str = ""

    def to_json(self) -> str:
        """One line of the reject file."""
        obj: dict[str, Any] = {"file": self.file, "location": self.location}
        if self.record_id:
            obj["record_id"] = self.record_id
        obj["errors"] = [p.to_json() for p in self.problems]
        obj["raw"] = self.raw
        return json.dumps(obj, ensure_ascii=False)


@dataclass
class FileSummary:
    """What happened to one file."""

    path: str
    rows_read: int = 0
    produced: int = 0
    rejected: int = 0
    structure: Counter[str] = field(default_factory=Counter)
    #: Set when the file could not be read, or broke midway (rows before the break are counted).
    failure: str = ""


@dataclass
class Summary:
    """What happened to every file of a run."""

    files: list[FileSummary] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    #: Households made from the members' rows (profiles with ``[household]``).
    households: int = 0

    @property
    def rows_read(self) -> int:
        """Data rows met in every file."""
        return sum(f.rows_read for f in self.files)

    @property
    def produced(self) -> int:
        """Records made."""
        return sum(f.produced for f in self.files)

    @property
    def rejected(self) -> int:
        """Rows rejected (each in the reject file)."""
        return sum(f.rejected for f in self.files)

    @property
    def failed_files(self) -> list[FileSummary]:
        """Files that could not be read to the end."""
        return [f for f in self.files if f.failure]


def read_rows(profile: Profile, path: Path) -> Iterator[SourceRow]:
    """The rows of one file, read with the profile's format."""
    o = profile.options
    fmt = profile.format
    if fmt in ("csv", "tsv"):
        return read_delimited(
            path,
            encoding=profile.encoding,
            delimiter=o["delimiter"],
            quote=o["quote"],
            header_row=o["header_row"],
            total_pattern=o["total_pattern"],
        )
    if fmt == "fixed-width":
        kinds = {k: o[k] for k in ("data", "header", "trailer") if k in o}
        return read_fixed_width(
            path,
            encoding=profile.encoding,
            fields=profile.byte_fields,
            record_type=o["record_type"],
            trailer_count=o["trailer_count"],
            **kinds,
        )
    if fmt == "jsonl":
        return read_jsonl(path, encoding=profile.encoding)
    if fmt == "xml":
        from adapters.xml_reader import read_xml

        encoding = None if profile.encoding == "utf-8" else profile.encoding
        return read_xml(
            path,
            record_path=o["record_path"],
            fields=profile.source_fields,
            namespaces=o["namespaces"],
            encoding=encoding,
        )
    if fmt == "dbf":
        from adapters.dbf_reader import read_dbf

        return read_dbf(path, encoding=profile.encoding)
    from adapters.xlsx_reader import read_xlsx

    return read_xlsx(
        path,
        sheet=o["sheet"],
        header_rows=o["header_rows"],
        total_pattern=o["total_pattern"],
        title_rows=o["title_rows"],
    )


#: Formats whose every row has the same fields: a mapped field missing from the first row is
#: missing from the file, and the file is refused rather than every row rejected.
_FIXED_COLUMNS = ("csv", "tsv", "dbf", "xlsx")


class HouseholdGrouper:
    """Members gathered from anywhere in the run, grouped into households at the end.

    Exports list members contiguously as a rule, but not always, and a province's households do
    not fit in memory; so members go to a temporary SQLite file and come back grouped.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="hutong-households-")
        self._con = sqlite3.connect(Path(self._dir.name) / "members.sqlite3", isolation_level=None)
        self._con.execute("PRAGMA journal_mode=OFF")
        self._con.execute("PRAGMA synchronous=OFF")
        self._con.execute(
            "CREATE TABLE members (seq INTEGER PRIMARY KEY, household_id TEXT, record_id TEXT, relation INTEGER,"
            " income INTEGER, version INTEGER, residence TEXT)"
        )
        self._pending: list[tuple[object, ...]] = []

    def add(self, member: Membership) -> None:
        """Remember one member."""
        self._pending.append(
            (
                member.household_id, member.record_id, member.relation, member.income_per_member_fen,
                member.version, member.residence_division,
            )
        )  # fmt: skip
        if len(self._pending) >= 10_000:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._con.execute("BEGIN")
            self._con.executemany(
                "INSERT INTO members (household_id, record_id, relation, income, version, residence)"
                " VALUES (?,?,?,?,?,?)",
                self._pending,
            )
            self._con.execute("COMMIT")
            self._pending = []

    def households(self) -> Iterator[Household]:
        """Every household, its members in the order they were met."""
        self._flush()
        self._con.execute("CREATE INDEX members_by_household ON members (household_id, seq)")
        rows = self._con.execute(
            "SELECT household_id, record_id, relation, income, version, residence FROM members"
            " ORDER BY household_id, seq"
        )
        current: list[tuple[Any, ...]] = []
        for row in rows:
            if current and row[0] != current[0][0]:
                yield _household(current)
                current = []
            current.append(row)
        if current:
            yield _household(current)

    def close(self) -> None:
        """Drop the temporary file."""
        self._con.close()
        self._dir.cleanup()


def _household(rows: list[tuple[Any, ...]]) -> Household:
    head = next((r for r in rows if r[2] == int(HouseholdRelation.HEAD)), rows[0])
    incomes = [r[3] for r in rows if r[3] is not None]
    versions = [r[4] for r in rows if r[4] is not None]
    return Household(
        household_id=rows[0][0],
        version=max(versions, default=1),
        residence_division=head[5],
        members=tuple(HouseholdMember(r[1], r[2]) for r in rows),
        monthly_income_per_member_fen=incomes[0] if incomes else 0,
        income_unknown=not incomes,
    )


def adapt(
    profile: Profile,
    paths: Iterable[Path],
    *,
    on_record: Callable[..., None],
    on_reject: Callable[[Reject], None],
    on_household: Callable[[Household], None] | None = None,
    on_row: Callable[[], None] | None = None,
    today: dt.date | None = None,
    with_location: bool = False,
) -> Summary:
    """Run ``profile`` over ``paths``; every data row goes to ``on_record`` or ``on_reject``.

    With ``with_location``, ``on_record`` is called as ``on_record(record, file, location)``: the
    caller keeps where each record was read from.

    With a ``[household]`` profile and ``on_household``, the members of the records produced are
    grouped, across all the files, into households given to ``on_household`` at the end.
    """
    mapper = RowMapper(profile, today=today)
    summary = Summary()
    grouper = HouseholdGrouper() if profile.household and on_household is not None else None
    try:
        _adapt_files(profile, paths, mapper, summary, grouper, on_record, on_reject, on_row, with_location)
        if grouper is not None and on_household is not None:
            for household in grouper.households():
                summary.households += 1
                on_household(household)
    finally:
        if grouper is not None:
            grouper.close()
    return summary


def _adapt_files(
    profile: Profile,
    paths: Iterable[Path],
    mapper: RowMapper,
    summary: Summary,
    grouper: HouseholdGrouper | None,
    on_record: Callable[..., None],
    on_reject: Callable[[Reject], None],
    on_row: Callable[[], None] | None,
    with_location: bool,
) -> None:
    for path in map(Path, paths):
        file = FileSummary(str(path))
        summary.files.append(file)
        claimed: int | None = None
        checked_columns = profile.format not in _FIXED_COLUMNS
        try:
            for row in read_rows(profile, path):
                if row.kind != DATA:
                    file.structure[row.kind] += 1
                    if row.kind == TRAILER and row.claimed_rows is not None:
                        claimed = row.claimed_rows
                    continue
                if not checked_columns and row.fields is not None:
                    checked_columns = True
                    missing = [f for f in profile.source_fields if f not in row.fields]
                    if missing:  # refused before its first row is counted: nothing of it was read as data
                        raise SourceError(
                            f"{path} has no field {missing[0]!r}, which the profile maps"
                            f" (it has: {', '.join(row.fields)})",
                            field=str(path),
                        )
                file.rows_read += 1
                if on_row is not None:
                    on_row()
                if row.fields is None:
                    reason, message = row.error or ("ROW_UNREADABLE", "the row could not be read")
                    _reject(
                        summary,
                        file,
                        on_reject,
                        Reject(str(path), row.location, row.raw, (FieldProblem("row", reason, message),)),
                    )
                    continue
                record, problems = mapper.map(row.fields)
                member = None
                if record is not None and profile.household:
                    member = mapper.membership(row.fields, record, problems)
                    if problems:
                        record = None
                if record is None:
                    rid = row.fields.get(profile.record["record_id"].source or "", "")
                    _reject(summary, file, on_reject, Reject(str(path), row.location, row.raw, tuple(problems), rid))
                    continue
                file.produced += 1
                if with_location:
                    on_record(record, file.path, row.location)
                else:
                    on_record(record)
                if grouper is not None and member is not None:
                    grouper.add(member)
        except SourceError as exc:
            file.failure = str(exc)
            continue
        if claimed is not None and claimed != file.rows_read:
            file.failure = f"the trailer says {claimed} data records; the file holds {file.rows_read}"


def _reject(summary: Summary, file: FileSummary, on_reject: Callable[[Reject], None], reject: Reject) -> None:
    file.rejected += 1
    for reason in {p.reason for p in reject.problems}:
        summary.reasons[reason] += 1
    on_reject(reject)


_GENDER = {int(g): f"GENDER_{g.name}" for g in Gender}
_PROGRAM = {int(p): f"PROGRAM_{p.name}" for p in Program}
_STATUS = {int(s): f"ENROLLMENT_STATUS_{s.name}" for s in EnrollmentStatus}


def _date_json(day: dt.date | None) -> dict[str, int] | None:
    return None if day is None else {"year": day.year, "month": day.month, "day": day.day}


def record_to_json(record: PersonRecord) -> str:
    """A record as one line of ``hutong.v1.PersonRecord`` in the protobuf JSON mapping (json_format can parse it)."""
    obj: dict[str, Any] = {"recordId": record.record_id, "version": str(record.version), "idNumber": record.id_number}
    if record.id_number_unverified:
        obj["idNumberUnverified"] = True
    obj["name"] = record.name
    if record.gender:
        obj["gender"] = _GENDER[record.gender]
    if record.birth_date is not None:
        obj["birthDate"] = _date_json(record.birth_date)
    if record.hukou_division:
        obj["hukouDivision"] = record.hukou_division
    obj["residenceDivision"] = record.residence_division
    if record.household_id:
        obj["householdId"] = record.household_id
    if record.enrollments:
        enrollments = []
        for e in record.enrollments:
            item: dict[str, Any] = {"program": _PROGRAM[e.program], "status": _STATUS[e.status]}
            if e.start_date is not None:
                item["startDate"] = _date_json(e.start_date)
            if e.end_date is not None:
                item["endDate"] = _date_json(e.end_date)
            if e.monthly_amount_fen:
                item["monthlyAmountFen"] = str(e.monthly_amount_fen)
            item["grantingDivision"] = e.granting_division
            enrollments.append(item)
        obj["enrollments"] = enrollments
    if record.updated_at_us:
        moment = dt.datetime.fromtimestamp(record.updated_at_us / 1_000_000, tz=dt.UTC)
        obj["updatedAt"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(obj, ensure_ascii=False)


_RELATION = {int(r): f"HOUSEHOLD_RELATION_{r.name}" for r in HouseholdRelation}


def household_to_json(household: Household) -> str:
    """A household as one line of ``hutong.v1.Household`` in the protobuf JSON mapping."""
    obj: dict[str, Any] = {
        "householdId": household.household_id,
        "version": str(household.version),
        "residenceDivision": household.residence_division,
        "members": [{"recordId": m.record_id, "relation": _RELATION[m.relation]} for m in household.members],
    }
    if household.monthly_income_per_member_fen:
        obj["monthlyIncomePerMemberFen"] = str(household.monthly_income_per_member_fen)
    if household.income_unknown:
        obj["incomeUnknown"] = True
    return json.dumps(obj, ensure_ascii=False)
