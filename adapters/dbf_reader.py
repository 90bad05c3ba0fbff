"""Read dBase III / FoxPro tables (``.dbf``), as county offices export them, record by record.

dbfread reads the header and the column definitions (its ``DBF`` class decodes the column names
with the table's encoding, so GBK names such as ``身份证号`` work) and parses the field types this
module does not handle itself. The records are then read here, straight from the file, because
dbfread iterates live and deleted records in two separate passes and reads a short last record
without a word: here each record is yielded once, in file order, live ones as ``data`` and those
flagged deleted as ``deleted``, and a file that ends early is reported.

Values become text:

* character fields (``C``): the decoded bytes, with the padding (spaces, NULs) removed on the right
  only; bytes that are not in the encoding make the row an ``ENCODING_INVALID`` reject naming the
  field (a GBK character cut in two by the field's width included);
* numbers (``N``, ``F``): as written, without the padding, ``12.00`` as ``12`` but ``1234.50`` kept
  as written (read as decimals, never as binary floats); ``,`` as decimal separator is accepted;
* dates (``D``): ``YYYY-MM-DD``; logicals (``L``): ``T`` or ``F``; empty values of any type: ``""``;
* other types (``I``, ``Y``, ``T``, ``B``, ``M``...) as dbfread parses them, in the same spirit.

A value that its type cannot hold (a date ``20210230``, a number of ``***``, which dBase writes
when the value did not fit) makes the row a ``VALUE_INVALID`` reject naming the field. The hidden
FoxPro column ``_NullFlags`` (type ``0``) is not a field. Messages name fields, never values.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import struct
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

from dbfread import DBF, FieldParser
from dbfread.memo import open_memofile

from adapters.source import DATA, DELETED, SourceError, SourceRow
from gateway.errors import ConfigError

__all__ = ["read_dbf"]

_LIVE = 0x20  # " "
_DELETED = 0x2A  # "*"
_END = 0x1A
_HEADER_SIZE = 32
_FIELD_SIZE = 32
_LOGICAL = {b"T": "T", b"t": "T", b"Y": "T", b"y": "T", b"F": "F", b"f": "F", b"N": "F", b"n": "F"}
_LOGICAL |= {b"?": "", b" ": "", b"\x00": ""}
#: What a field of each type holds, for messages.
_TYPES = {"C": "text", "V": "text", "N": "number", "F": "number", "D": "date", "L": "logical", "M": "memo"}


class _Column(NamedTuple):
    name: str
    type: str
    start: int
    end: int
    convert: Callable[[bytes], str]


def read_dbf(path: Path, *, encoding: str) -> Iterator[SourceRow]:
    """Yield every record of the table at ``path``, decoding text with ``encoding`` (``gbk`` for most counties).

    An unknown encoding raises :class:`ConfigError` at once; a file that cannot be read raises
    :class:`SourceError` when iterated (after the records before the fault, for a truncated file).
    """
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(
            f"unknown encoding {encoding!r}", reason="SOURCE_OPTION_INVALID", metadata={"option": "encoding"}
        ) from None
    return _rows(path, codec)


def _rows(path: Path, encoding: str) -> Iterator[SourceRow]:
    where = str(path)
    try:
        table = DBF(
            where,
            encoding=encoding,
            ignorecase=False,
            load=False,
            ignore_missing_memofile=True,
            char_decode_errors="strict",
        )
    except UnicodeDecodeError:
        raise SourceError(f"a column name is not valid {encoding}", field=where) from None
    except OSError as exc:
        raise SourceError(f"cannot open the file: {exc.strerror or exc}", field=where) from exc
    except (ValueError, struct.error) as exc:
        # A header shorter than 32 bytes, an unknown field type, a malformed field definition.
        raise SourceError(f"not a readable DBF table: {exc}", field=where) from exc
    memo = open_memofile(table.memofilename, table.header.dbversion) if table.memofilename else None
    columns = _columns(table, encoding, FieldParser(table, memo), where)
    header_size: int = table.header.headerlen
    record_size: int = table.header.recordlen
    declared: int = table.header.numrecords
    with contextlib.ExitStack() as stack:
        try:
            stream = stack.enter_context(path.open("rb", buffering=1 << 16))
            if memo is not None:
                stack.enter_context(memo)
        except OSError as exc:
            raise SourceError(f"cannot open the file or its memo file: {exc.strerror or exc}", field=where) from exc
        stream.seek(header_size)
        count = 0
        while True:
            try:
                data = stream.read(record_size)
            except OSError as exc:
                raise SourceError(f"cannot read record {count + 1}: {exc.strerror or exc}", field=where) from exc
            if not data or data[0] == _END:
                break
            count += 1
            if len(data) < record_size:
                raise SourceError(
                    f"record {count} is cut short: the file ends {len(data)} bytes into its {record_size}",
                    field=where,
                    metadata={"record": str(count)},
                )
            yield _row(count, data, columns, encoding)
        if count < declared:
            raise SourceError(
                f"the file ends after record {count} but its header declares {declared}",
                field=where,
                metadata={"record": str(count)},
            )


def _columns(table: Any, encoding: str, parser: Any, where: str) -> tuple[_Column, ...]:
    """Each field's byte range within a record and its converter; check the header adds up."""
    fields = [f for f in table.fields if f.type != "0"]
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise SourceError("a column name appears twice", field=where)
    columns: list[_Column] = []
    position = 1  # after the deletion flag
    for field in table.fields:
        length: int = field.length
        if field.type != "0":
            columns.append(
                _Column(field.name, field.type, position, position + length, _converter(field, encoding, parser))
            )
        position += length
    if position != table.header.recordlen or table.header.headerlen < _HEADER_SIZE + _FIELD_SIZE * len(table.fields):
        raise SourceError(
            f"the header is inconsistent: records of {table.header.recordlen} bytes, fields adding up to {position}",
            field=where,
        )
    return tuple(columns)


def _converter(field: Any, encoding: str, parser: Any) -> Callable[[bytes], str]:
    kind: str = field.type
    if kind in "CV":

        def text(data: bytes) -> str:
            return data.rstrip(b"\0 ").decode(encoding)

        return text
    if kind in "NF":
        return _number
    if kind == "D":
        return _date
    if kind == "L":
        return _logical

    def other(data: bytes) -> str:
        return _text(parser.parse(field, data))

    return other


def _row(index: int, data: bytes, columns: tuple[_Column, ...], encoding: str) -> SourceRow:
    location = f"record {index}"
    flag = data[0]
    kind = DELETED if flag == _DELETED else DATA
    values: dict[str, str] = {}
    for column in columns:
        try:
            values[column.name] = column.convert(data[column.start : column.end])
        except UnicodeDecodeError:
            problem = ("ENCODING_INVALID", f"field {column.name} is not valid {encoding}")
            break
        except (ValueError, ArithmeticError, struct.error):
            problem = ("VALUE_INVALID", f"field {column.name} does not hold a valid {_TYPES.get(column.type, 'value')}")
            break
    else:
        if flag in (_LIVE, _DELETED):
            return SourceRow(location, "|".join(values.values()), values, None, kind)
        problem = ("RECORD_FLAG_INVALID", f"the record starts with byte 0x{flag:02X}, not a deletion flag")
    return SourceRow(location, _raw(data, columns, encoding), None, problem, kind)


def _raw(data: bytes, columns: tuple[_Column, ...], encoding: str) -> str:
    """The record's values for the reject file, undecodable bytes as ``\\xNN``."""
    parts = []
    for column in columns:
        chunk = data[column.start : column.end]
        try:
            parts.append(column.convert(chunk))
        except (ValueError, ArithmeticError, struct.error):
            parts.append(chunk.decode(encoding, "backslashreplace").strip("\0 "))
    return "|".join(parts)


def _number(data: bytes) -> str:
    digits = data.strip(b" \0")
    if not digits:
        return ""
    value = Decimal(digits.replace(b",", b".").decode("ascii"))  # "***" raises InvalidOperation
    if not value.is_finite():
        raise InvalidOperation
    if value == value.to_integral_value():
        return str(int(value))
    return format(value, "f")


def _date(data: bytes) -> str:
    digits = data.strip(b" \0")
    if not digits.strip(b"0"):
        return ""  # blank or 00000000: no date
    if len(digits) != 8 or not digits.isdigit():
        raise ValueError("not YYYYMMDD")
    return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:])).isoformat()


def _logical(data: bytes) -> str:
    value = _LOGICAL.get(data)
    if value is None:
        raise ValueError("not a logical value")
    return value


def _text(value: object) -> str:
    """A value dbfread parsed, as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return _number(repr(value).encode("ascii"))
    if isinstance(value, Decimal):
        return _number(str(value).encode("ascii"))
    if isinstance(value, dt.datetime):
        return value.isoformat(" ", "seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()  # binary memo (picture, OLE object): not text
    return str(value)
