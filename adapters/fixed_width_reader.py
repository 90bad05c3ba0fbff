"""Fixed-width exports whose field widths count **bytes** of the encoding (a GBK character is two).

Each line is sliced as bytes, then each field decoded on its own, so a range that cuts a
character in half, or bytes not in the encoding, spoil only that row (``ENCODING_INVALID``,
naming the field). With a record-type column, header and trailer records are told apart from
data; a trailer may state how many data records the file holds (checked by the run). A line too
short for a field's range is refused (``LINE_TOO_SHORT``); a record type not in the profile is
refused (``RECORD_TYPE_UNKNOWN``). Blank lines are not rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from adapters.source import DATA, HEADER, TRAILER, SourceRow, open_source, strip_bom

__all__ = ["read_fixed_width"]


def read_fixed_width(
    path: Path,
    *,
    encoding: str,
    fields: Mapping[str, tuple[int, int]],
    record_type: tuple[int, int] | None = None,
    data: str = "D",
    header: str = "H",
    trailer: str = "T",
    trailer_count: tuple[int, int] | None = None,
) -> Iterator[SourceRow]:
    """Every line of a fixed-width file as a SourceRow (DATA, HEADER or TRAILER)."""
    codec = "utf-8" if encoding == "utf-8-sig" else encoding
    slices = [(name, start, start + length) for name, (start, length) in fields.items()]
    need = max((end for _, _, end in slices), default=0)
    kinds: dict[bytes, str] = {}
    if record_type is not None:
        kinds = {data.encode(codec): DATA, header.encode(codec): HEADER, trailer.encode(codec): TRAILER}
        type_start, type_end = record_type[0], record_type[0] + record_type[1]
    with open_source(path) as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1 and encoding == "utf-8-sig":
                line = strip_bom(line)
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            location = f"line {number}"
            kind = DATA
            if record_type is not None:
                found = kinds.get(line[type_start:type_end])
                if found is None:
                    yield SourceRow(
                        location,
                        _show(line, codec),
                        None,
                        ("RECORD_TYPE_UNKNOWN", _type_message(line, type_start, type_end, codec)),
                    )
                    continue
                kind = found
            if kind == HEADER:
                yield SourceRow(location, _show(line, codec), None, kind=HEADER)
                continue
            if kind == TRAILER:
                yield SourceRow(
                    location, _show(line, codec), None, kind=TRAILER, claimed_rows=_count(line, trailer_count)
                )
                continue
            if len(line) < need:
                short = [name for name, _, end in slices if end > len(line)]
                yield SourceRow(
                    location,
                    _show(line, codec),
                    None,
                    ("LINE_TOO_SHORT", f"{location} has {len(line)} bytes; field {short[0]} needs {need}"),
                )
                continue
            values: dict[str, str] = {}
            bad = None
            for name, start, end in slices:
                try:
                    values[name] = line[start:end].decode(codec)
                except UnicodeDecodeError:
                    bad = name
                    break
            if bad is not None:
                message = (
                    f"field {bad} of {location} is not valid {encoding}: a character cut in half by its byte range?"
                )
                yield SourceRow(location, _show(line, codec), None, ("ENCODING_INVALID", message))
                continue
            yield SourceRow(location, _show(line, codec), values)


def _show(line: bytes, codec: str) -> str:
    return line.decode(codec, errors="backslashreplace")


def _type_message(line: bytes, start: int, end: int, codec: str) -> str:
    return f"record type {_show(line[start:end], codec)!r} is not a data, header or trailer type"


def _count(line: bytes, where: tuple[int, int] | None) -> int | None:
    if where is None:
        return None
    text = line[where[0] : where[0] + where[1]].strip()
    return int(text) if text.isdigit() else None
