"""What every reader yields: one :class:`SourceRow` per row of the source, and nothing held back.

A reader streams one file (constant memory) and yields every row it meets, in order:

* ``kind == "data"``: a row that should become a record. ``fields`` maps the source's field
  names (a CSV header, a fixed-width field, an XML path, a DBF column, a JSON key path) to text;
  ``error`` is set instead when the row could not even be split into fields (broken quotes, bytes
  that are not in the encoding, a wrong number of columns, a line too short for its byte ranges),
  so it is rejected with that reason rather than lost.
* ``kind`` ``"header"``, ``"trailer"``, ``"total"`` or ``"deleted"`` (a DBF record flagged
  deleted): not data; counted apart and never rejected (a trailer's claimed count is checked by
  the run).

A file that cannot be read at all (missing, truncated archive, not the format) raises
:class:`SourceError` from the reader; the run reports it and goes on with the next file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gateway.errors import HutongError

__all__ = ["DATA", "DELETED", "HEADER", "TOTAL", "TRAILER", "SourceError", "SourceRow", "open_source", "strip_bom"]

DATA = "data"
DELETED = "deleted"
HEADER = "header"
TRAILER = "trailer"
TOTAL = "total"


class SourceError(HutongError):
    """A source file cannot be read at all; ``field`` names the file."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "SOURCE_UNREADABLE"


@dataclass(slots=True)
class SourceRow:
    """One row of a source file, as read."""

    #: Where it is, for people: ``line 12``, ``byte 4,096``, ``record 7``, ``row 9``, ``element 3``.
    location: str
    #: The row as found, as text (undecodable bytes shown as ``\\xNN``), for the reject file.
    raw: str
    #: Source field name → value (stripped of nothing: transforms decide); None when ``error`` is set.
    fields: dict[str, str] | None
    #: (reason, message) when the row could not be split into fields.
    error: tuple[str, str] | None = None
    #: ``data``, ``header``, ``trailer``, ``total`` or ``deleted``.
    kind: str = DATA
    #: For a trailer: the number of data rows it claims the file holds, if it says.
    claimed_rows: int | None = None


def open_source(path: Path) -> BinaryIO:
    """``path`` opened for reading bytes; SourceError naming the file if it cannot be."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror or exc}", field=str(path)) from exc


def strip_bom(line: bytes) -> bytes:
    """The first line of a file without a UTF-8 byte-order mark."""
    return line[3:] if line.startswith(b"\xef\xbb\xbf") else line
