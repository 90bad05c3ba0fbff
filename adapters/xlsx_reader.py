"""Read Excel workbooks (``.xlsx``) row by row, with openpyxl in read-only mode.

The first ``header_rows`` rows of the sheet are the header and are yielded as ``header`` rows. Each
column's field name is its header cells from top to bottom, stripped and joined with ``/``, empty
ones skipped; a merged header cell names every column it spans, once. A group "救助信息" merged
over the two columns "开始日期" and "月保障金" below it gives ``救助信息/开始日期`` and
``救助信息/月保障金``; "姓名" merged over both header rows gives ``姓名``. A column without any
header text is named by its letter in parentheses, ``(F)``; a name already taken gets its column
letter appended, ``备注 (H)``.

Merged cells in the data rows (a household number merged down over its members' rows, as county
clerks do) give their value to every cell they span within the header's columns, as Excel shows them.

Read-only mode does not report merged cells, so they are read from the sheet's XML here: the sheet
part is found through the package and workbook relationships, and its ``<mergeCell ref=...>``
elements are collected in one streaming pass before the rows are read (they follow the cells in
the file). This second pass costs a fraction of openpyxl's own.

After the header, every row is yielded:

* ``total`` when its first non-empty cell matches ``total_pattern`` (``re.search``, e.g.
  ``^(合计|总计)``);
* ``data`` with error ``COLUMN_COUNT`` when it has a value right of the header's last column;
* ``data`` with error ``ROW_EMPTY`` when it is empty but rows with values follow (empty rows at the
  end of the sheet, which spreadsheet programs leave behind, are not rows of the export and are
  not yielded);
* ``data`` otherwise: each header column's cell as text.

Cells become text: strings as they are; integral numbers without ``.0`` (``44256``, also for an
Excel serial date in a cell without a date format: a profile transform reads those); other
numbers in Python's shortest form (``1234.5``); cells with a date format ``YYYY-MM-DD``, or
``YYYY-MM-DD HH:MM:SS`` when they have a time of day; booleans ``TRUE``/``FALSE``; formulas their
value as last computed by Excel (``""`` if it never was). ``raw`` is the row's cells joined with
``,`` up to the last non-empty one.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import zipfile
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from xml.etree import ElementTree
from xml.parsers import expat

from openpyxl import load_workbook
from openpyxl.utils.cell import get_column_letter, range_boundaries

from adapters.source import DATA, HEADER, TOTAL, SourceError, SourceRow
from gateway.errors import ConfigError

__all__ = ["read_xlsx"]

_RELATIONSHIPS = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
# Transitional and Strict OOXML name the relationship attribute differently.
_RELATIONSHIP_IDS = (
    "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id",
    "{http://purl.oclc.org/ooxml/officeDocument/relationships}id",
)
_CHUNK = 256 * 1024
#: The document element's start tag (after the XML declaration, comments, a DOCTYPE), quote-aware.
_ROOT = re.compile(rb"""<(?![?!])(?:[^>"']|"[^"]*"|'[^']*')*>""")
#: The start tag of the merged cells, with or without a namespace prefix.
_MERGE_CELLS = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?mergeCells[\s/>]")


class _Range(NamedTuple):
    """A merged range, 1-based and inclusive."""

    min_row: int
    min_col: int
    max_row: int
    max_col: int


class _Refused(Exception):
    """Raised from an expat handler at a DOCTYPE; the sheet XML is then not trusted for merged cells."""


class _Done(Exception):
    """Raised from an expat handler once the merged cells have been read."""


def read_xlsx(
    path: Path,
    *,
    sheet: str | None = None,
    header_rows: int = 1,
    total_pattern: str | None = None,
    title_rows: int = 0,
) -> Iterator[SourceRow]:
    """Yield the title and header rows, then every row of ``sheet`` (the first worksheet when None).

    ``title_rows`` rows above the header (a roster's title, often merged across the sheet) are
    yielded as ``header`` rows and take no part in the field names.

    Bad options raise :class:`ConfigError` at once; a file that cannot be read raises
    :class:`SourceError` when iterated (after the rows before the fault, for a file broken midway).
    """
    if isinstance(header_rows, bool) or not isinstance(header_rows, int) or header_rows < 1:
        raise ConfigError(
            "header_rows must be a whole number of at least 1",
            reason="SOURCE_OPTION_INVALID",
            metadata={"option": "header_rows"},
        )
    if isinstance(title_rows, bool) or not isinstance(title_rows, int) or title_rows < 0:
        raise ConfigError(
            "title_rows must be a whole number, 0 or more",
            reason="SOURCE_OPTION_INVALID",
            metadata={"option": "title_rows"},
        )
    try:
        total = re.compile(total_pattern) if total_pattern is not None else None
    except re.error as exc:
        raise ConfigError(
            f"total_pattern is not a regular expression: {exc}",
            reason="SOURCE_OPTION_INVALID",
            metadata={"option": "total_pattern"},
        ) from None
    return _rows(path, sheet, header_rows, total, title_rows)


def _rows(
    path: Path, sheet: str | None, header_rows: int, total: re.Pattern[str] | None, title_rows: int = 0
) -> Iterator[SourceRow]:
    where = str(path)
    try:
        workbook = load_workbook(where, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises whatever its zip and XML parsers meet: the file is unreadable
        raise SourceError(f"not a readable Excel workbook: {type(exc).__name__}: {exc}", field=where) from exc
    try:
        worksheet = _worksheet(workbook, sheet, where)
        merged = _merged_ranges(path, worksheet.title)
        # The <dimension> a program wrote may be wrong; without it every cell is read.
        worksheet.reset_dimensions()
        rows = enumerate(worksheet.iter_rows(values_only=True), start=1)
        last_header = title_rows + header_rows
        top: list[list[str]] = []
        for number, values in _guarded(rows, where, 0):
            top.append([_text(value) for value in values])
            if number == last_header:
                break
        if len(top) < last_header:
            raise SourceError(
                f"the sheet ends before its {header_rows} header rows"
                + (f" (after {title_rows} title rows)" if title_rows else ""),
                field=where,
            )
        # Merges within the header, counted from the header's first row; a title's merges are its own.
        in_header = [
            m._replace(min_row=m.min_row - title_rows, max_row=m.max_row - title_rows)
            for m in merged
            if title_rows < m.min_row <= last_header
        ]
        names = _field_names(top[title_rows:], in_header, where)
        for number, texts in enumerate(top, start=1):
            yield SourceRow(f"row {number}", _joined(texts), None, None, HEADER)
        spans: dict[int, list[_Range]] = {}
        for m in merged:
            if m.min_row > last_header:
                spans.setdefault(m.min_row, []).append(m)
        yield from _body(_guarded(rows, where, last_header), names, spans, total)
    finally:
        workbook.close()


def _worksheet(workbook: Any, sheet: str | None, where: str) -> Any:
    if sheet is None:
        if not workbook.worksheets:
            raise SourceError("the workbook has no worksheet", field=where)
        return workbook.worksheets[0]
    for candidate in workbook.worksheets:
        if candidate.title == sheet:
            return candidate
    raise SourceError(f"the workbook has no worksheet {sheet!r}", field=where, metadata={"sheet": sheet})


def _guarded(
    rows: Iterator[tuple[int, tuple[Any, ...]]], where: str, number: int
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """The rows after row ``number``; a fault in the middle of the sheet (bad zip data, bad XML) as a SourceError."""
    while True:
        try:
            number, values = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # as at loading: any failure of openpyxl's parsers is an unreadable file
            raise SourceError(
                f"the sheet cannot be read after row {number}: {type(exc).__name__}: {exc}",
                field=where,
                metadata={"row": str(number)},
            ) from exc
        yield number, values


def _body(
    rows: Iterator[tuple[int, tuple[Any, ...]]],
    names: Sequence[str],
    spans: dict[int, list[_Range]],
    total: re.Pattern[str] | None,
) -> Iterator[SourceRow]:
    width = len(names)
    active: list[tuple[_Range, str]] = []
    empty_since = 0  # first of the empty rows not yet yielded, 0 if none
    for number, values in rows:
        texts = [_text(value) for value in values]
        if spans or active:
            active = _spread(number, texts, spans, active, width)
        last = len(texts) - 1
        while last >= 0 and texts[last] == "":
            last -= 1
        if last < 0:
            empty_since = empty_since or number
            continue
        if empty_since:
            # Empty rows with values after them belong to the export: each is accounted for.
            for empty in range(empty_since, number):
                yield SourceRow(f"row {empty}", "", None, ("ROW_EMPTY", f"row {empty} is empty"), DATA)
            empty_since = 0
        raw = ",".join(texts[: last + 1])
        first = next(text for text in texts if text)
        if total is not None and total.search(first):
            fields = {name: texts[i] if i < len(texts) else "" for i, name in enumerate(names)}
            yield SourceRow(f"row {number}", raw, fields, None, TOTAL)
        elif last >= width:
            message = (
                f"row {number} has a value in column {get_column_letter(last + 1)},"
                f" right of the header's {width} columns"
            )
            yield SourceRow(f"row {number}", raw, None, ("COLUMN_COUNT", message), DATA)
        else:
            fields = {name: texts[i] if i < len(texts) else "" for i, name in enumerate(names)}
            yield SourceRow(f"row {number}", raw, fields, None, DATA)


def _spread(
    number: int, texts: list[str], spans: dict[int, list[_Range]], active: list[tuple[_Range, str]], width: int
) -> list[tuple[_Range, str]]:
    """Give each merged range's value (its top-left cell's) to the empty cells it spans in this row.

    Only within the header's columns: a value merged across to the right of the table is shown
    there, but was typed in one cell of it.
    """
    for span in spans.pop(number, ()):
        active.append((span, texts[span.min_col - 1] if span.min_col <= len(texts) else ""))
    for span, text in active:
        stop = min(span.max_col, width)
        if stop > len(texts):
            texts.extend([""] * (stop - len(texts)))
        for column in range(span.min_col - 1, stop):
            if not texts[column]:
                texts[column] = text
    return [(span, text) for span, text in active if span.max_row > number]


def _field_names(header: list[list[str]], merged: list[_Range], where: str) -> list[str]:
    """Each column's name: its header cells top to bottom, a merged cell counted once, joined with "/"."""
    origin: dict[tuple[int, int], tuple[int, int]] = {}
    for m in merged:
        for row in range(m.min_row, min(m.max_row, len(header)) + 1):
            for column in range(m.min_col, m.max_col + 1):
                origin[row, column] = (m.min_row, m.min_col)
    width = max((len(texts) for texts in header), default=0)
    width = max([width, *(m.max_col for m in merged)])
    names: list[str] = []
    for column in range(1, width + 1):
        parts: list[str] = []
        seen: tuple[int, int] | None = None
        for row in range(1, len(header) + 1):
            cell = origin.get((row, column), (row, column))
            if cell == seen:
                continue  # the same merged cell, one row down
            seen = cell
            texts = header[cell[0] - 1]
            text = texts[cell[1] - 1].strip() if cell[1] <= len(texts) else ""
            if text:
                parts.append(text)
        names.append("/".join(parts))
    while names and not names[-1]:
        names.pop()
    if not names:
        raise SourceError("the header rows are empty", field=where)
    taken: set[str] = set()
    for i, name in enumerate(names):
        letter = get_column_letter(i + 1)
        if not name:
            name = f"({letter})"
        if name in taken:
            name = f"{name} ({letter})"
        taken.add(name)
        names[i] = name
    return names


def _joined(texts: list[str]) -> str:
    last = len(texts)
    while last and not texts[last - 1]:
        last -= 1
    return ",".join(texts[:last])


def _text(value: Any) -> str:
    """A cell's value as text (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        text = repr(value)
        return format(Decimal(text), "f") if "e" in text else text
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.hour == value.minute == value.second == value.microsecond == 0:
            return value.date().isoformat()
        return value.isoformat(" ", "seconds")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _merged_ranges(path: Path, title: str) -> list[_Range]:
    """The merged ranges of the sheet called ``title``, read from its XML part."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            part = _sheet_part(archive, title, where)
            refs: list[str] = []
            _scan_merges(archive, part, refs, where)
    except _Refused:
        raise SourceError("a part of the workbook has a DOCTYPE, which is refused", field=where) from None
    except (OSError, zipfile.BadZipFile, KeyError, expat.ExpatError) as exc:
        raise SourceError(f"the sheet's merged cells cannot be read: {exc}", field=where) from exc
    ranges = []
    for ref in refs:
        try:
            min_col, min_row, max_col, max_row = range_boundaries(ref)
        except (ValueError, TypeError):
            raise SourceError(f"the sheet has a malformed merged range {ref!r}", field=where) from None
        if None not in (min_col, min_row, max_col, max_row):
            ranges.append(_Range(min_row, min_col, max_row, max_col))
    return ranges


def _sheet_part(archive: zipfile.ZipFile, title: str, where: str) -> str:
    """The zip member of the sheet ``title``: package rels → workbook part → its rels → the sheet's target."""
    package = _part(archive, "_rels/.rels")
    workbook_part = _target(package, type_suffix="/officeDocument").lstrip("/")
    folder, name = posixpath.split(workbook_part)
    rels = _part(archive, posixpath.join(folder, "_rels", name + ".rels"))
    for element in _part(archive, workbook_part).iter():
        if element.tag.endswith("}sheet") and element.get("name") == title:
            rid = next((element.get(a) for a in _RELATIONSHIP_IDS if element.get(a)), None)
            if rid is None:
                raise KeyError("the sheet has no relationship id")
            target = _target(rels, rid=rid)
            # A target is relative to the workbook part's folder, or absolute within the package.
            return target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
    raise SourceError(f"the workbook part does not list the sheet {title!r}", field=where)


def _target(rels: ElementTree.Element, *, type_suffix: str = "", rid: str | None = None) -> str:
    """The target of the relationship with id ``rid``, or else of the first whose type ends with ``type_suffix``."""
    for rel in rels.iter(_RELATIONSHIPS):
        target = rel.get("Target")
        if target and (rel.get("Id") == rid if rid is not None else rel.get("Type", "").endswith(type_suffix)):
            return target
    raise KeyError("a relationship the workbook needs is missing")


def _part(archive: zipfile.ZipFile, name: str) -> ElementTree.Element:
    """A small package part, parsed; one with a DOCTYPE is refused (entities could expand without bound)."""
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate(None, "}")

    def clark(name: str) -> str:
        return "{" + name if "}" in name else name

    def start(name: str, attributes: dict[str, str]) -> None:
        builder.start(clark(name), {clark(key): value for key, value in attributes.items()})

    def refuse(*_: object) -> None:
        raise _Refused

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda name: builder.end(clark(name))
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.Parse(archive.read(name), True)
    return builder.close()


def _scan_merges(archive: zipfile.ZipFile, part: str, refs: list[str], where: str) -> None:
    """Collect the ``ref`` of every ``mergeCell`` of the sheet part, streaming (the part may be huge).

    The schema puts ``<mergeCells>`` after ``<sheetData>``, which is nearly all of the part: parsing
    the cells with expat only to skip them would cost a third of openpyxl's own reading. So the bytes
    are searched for the ``<mergeCells`` tag (text and attribute values cannot hold a ``<``), and only
    the document element's start tag (for its namespace declarations) followed by what comes from
    there on is parsed, as a document of its own.
    """
    parser = expat.ParserCreate(None, "}")

    def start(name: str, attributes: dict[str, str]) -> None:
        if name == "mergeCell" or name.endswith("}mergeCell"):
            refs.append(attributes.get("ref", ""))

    def end(name: str) -> None:
        if name == "mergeCells" or name.endswith("}mergeCells"):
            raise _Done  # nothing of interest follows

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    with archive.open(part) as stream:
        head = stream.read(_CHUNK)
        root = _ROOT.search(head)
        if root is None:
            raise SourceError("the sheet XML has no document element in its first bytes", field=where)
        if b"<!DOCTYPE" in head[: root.start()]:
            raise _Refused
        data = head
        while (found := _MERGE_CELLS.search(data)) is None:
            chunk = stream.read(_CHUNK)
            if not chunk:
                return  # no merged cells
            # Keep a tail: the tag may straddle two chunks.
            data = data[-64:] + chunk
        try:
            parser.Parse(root[0], False)
            parser.Parse(data[found.start() :], False)
            while chunk := stream.read(_CHUNK):
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
        except _Done:
            return
