"""CSV and TSV exports: GBK, GB18030, UTF-8 (with or without BOM), Chinese headers, quoting quirks.

Streaming, line by line: each physical line is decoded on its own, so a line that is not in the
encoding spoils only its own row (``ENCODING_INVALID``). Quotes are tracked per logical row: a
field may span lines inside quotes, but a quote left open for more than ``MAX_ROW_LINES`` lines
is a broken row (``QUOTE_UNTERMINATED``), not the rest of the file swallowed into one field.
A row whose columns do not match the header's is refused (``COLUMN_COUNT``); empty trailing
columns (a trailing delimiter) are tolerated. Blank lines are not rows.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from adapters.source import DATA, HEADER, TOTAL, SourceError, SourceRow, open_source, strip_bom

__all__ = ["MAX_ROW_LINES", "read_delimited"]

#: A quoted field may hold line breaks, up to this many lines for one row.
MAX_ROW_LINES = 20


def _decoded_lines(path: Path, encoding: str) -> Iterator[tuple[int, str, bool]]:
    """(1-based line number, text without the line break, decoded cleanly) for each line."""
    with open_source(path) as fh:
        bom = encoding == "utf-8-sig"
        codec = "utf-8" if bom else encoding
        for number, line in enumerate(fh, start=1):
            if number == 1 and bom:
                line = strip_bom(line)
            line = line.rstrip(b"\r\n")
            try:
                yield number, line.decode(codec), True
            except UnicodeDecodeError:
                yield number, line.decode(codec, errors="backslashreplace"), False


def read_delimited(
    path: Path,
    *,
    encoding: str,
    delimiter: str = ",",
    quote: str = '"',
    header_row: int = 1,
    total_pattern: str | None = None,
) -> Iterator[SourceRow]:
    """Every row of a CSV/TSV file: title lines and the header as HEADER, then DATA (or TOTAL) rows."""
    totals = re.compile(total_pattern) if total_pattern else None
    header: list[str] | None = None
    width = 0
    pending: list[tuple[int, str, bool]] = []
    for number, text, clean in _decoded_lines(path, encoding):
        if header is None:
            if number < header_row:
                yield SourceRow(f"line {number}", text, None, kind=HEADER)
                continue
            header = _header(path, number, text, delimiter, quote)
            width = len(header)
            yield SourceRow(f"line {number}", text, None, kind=HEADER)
            continue
        if not pending:
            if not text or text.isspace():
                continue
            if quote not in text:  # the common row: one line, nothing quoted
                yield _row(number, text, clean, delimiter, quote, header, width, totals)
                continue
        pending.append((number, text, clean))
        joined = "\n".join(t for _, t, _ in pending)
        if joined.count(quote) % 2:  # a quote is still open: the row goes on on the next line
            if len(pending) < MAX_ROW_LINES:
                continue
            first = pending[0][0]
            yield _broken(first, pending[0][1], "QUOTE_UNTERMINATED", f"a quote opened on line {first} is never closed")
            # Start again after the broken line: what followed it may be good rows.
            rest, pending = pending[1:], []
            for item in rest:
                yield from _retry(item, delimiter, quote, header, width, totals)
            continue
        first = pending[0][0]
        rows_clean = all(c for _, _, c in pending)
        pending = []
        yield _row(first, joined, rows_clean, delimiter, quote, header, width, totals)
    if header is None:
        raise SourceError(f"{path} has no header line {header_row}", field=str(path))
    if pending:
        first = pending[0][0]
        yield _broken(first, pending[0][1], "QUOTE_UNTERMINATED", f"a quote opened on line {first} is never closed")
        for item in pending[1:]:
            yield from _retry(item, delimiter, quote, header, width, totals)


def _header(path: Path, number: int, text: str, delimiter: str, quote: str) -> list[str]:
    """The column names of the header line; a line csv cannot split (a bare CR, a huge field) spoils the file."""
    try:
        return [name.strip() for name in next(csv.reader([text], delimiter=delimiter, quotechar=quote))]
    except csv.Error as exc:
        raise SourceError(
            f"{path}: header line {number} cannot be split into columns: {exc}",
            reason="HEADER_INVALID",
            field=str(path),
            metadata={"line": str(number)},
        ) from None


def _retry(
    item: tuple[int, str, bool],
    delimiter: str,
    quote: str,
    header: list[str],
    width: int,
    totals: re.Pattern[str] | None,
) -> Iterator[SourceRow]:
    number, text, clean = item
    if not text.strip():
        return
    if text.count(quote) % 2:
        yield _broken(number, text, "QUOTE_UNTERMINATED", f"a quote opened on line {number} is never closed")
    else:
        yield _row(number, text, clean, delimiter, quote, header, width, totals)


def _broken(number: int, raw: str, reason: str, message: str) -> SourceRow:
    return SourceRow(f"line {number}", raw, None, (reason, message))


def _row(
    number: int,
    text: str,
    clean: bool,
    delimiter: str,
    quote: str,
    header: list[str],
    width: int,
    totals: re.Pattern[str] | None,
) -> SourceRow:
    location = f"line {number}"
    if totals is not None and totals.search(text):
        return SourceRow(location, text, None, kind=TOTAL)
    if not clean:
        return _broken(number, text, "ENCODING_INVALID", f"line {number} holds bytes that are not valid text")
    if quote not in text:
        values = text.split(delimiter)
    else:
        try:
            values = next(csv.reader([text], delimiter=delimiter, quotechar=quote))
        except csv.Error as exc:  # stray quotes around a line break, a field over the size limit
            return _broken(number, text, "QUOTE_INVALID", f"line {number} cannot be split into fields: {exc}")
    if len(values) != width:
        extra = values[width:]
        if len(values) < width or any(v.strip() for v in extra):
            return _broken(
                number, text, "COLUMN_COUNT", f"line {number} has {len(values)} columns; the header has {width}"
            )
        values = values[:width]
    return SourceRow(location, text, dict(zip(header, values, strict=True)), kind=DATA)
