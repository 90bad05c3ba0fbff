"""JSON Lines exports: one JSON object per line; nested objects are reached with dotted key paths.

Fields are the object's leaves by dotted path (``person.name``, ``enrollment.start``); arrays
by index (``enrollments.0.program``). Values become text: strings as is, numbers as written
(integers without ``.0``), booleans ``true``/``false``, null as ``""``. A line that is not a
JSON object is refused (``JSON_INVALID``); blank lines are not rows. A string holding a lone
surrogate (JSON can write ``"\\ud800"``; UTF-8, protobuf and SQLite cannot hold it) spoils its row
(``ENCODING_INVALID``, naming the field).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapters.source import SourceRow, open_source, strip_bom

__all__ = ["read_jsonl"]


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}.", out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}{index}.", out)
    elif value is None:
        out[prefix[:-1]] = ""
    elif isinstance(value, bool):
        out[prefix[:-1]] = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        out[prefix[:-1]] = str(int(value))
    else:
        out[prefix[:-1]] = str(value)


def read_jsonl(path: Path, *, encoding: str = "utf-8") -> Iterator[SourceRow]:
    """Every object of a JSON Lines file as a DATA row."""
    codec = "utf-8" if encoding == "utf-8-sig" else encoding
    with open_source(path) as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1:
                line = strip_bom(line)
            if not line.strip():
                continue
            location = f"line {number}"
            try:
                text = line.decode(codec).rstrip("\r\n")
            except UnicodeDecodeError:
                raw = line.decode(codec, errors="backslashreplace").rstrip("\r\n")
                yield SourceRow(location, raw, None, ("ENCODING_INVALID", f"{location} is not valid {encoding}"))
                continue
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError) as exc:
                yield SourceRow(location, text, None, ("JSON_INVALID", f"{location} is not JSON: {exc}"))
                continue
            if not isinstance(obj, dict):
                yield SourceRow(location, text, None, ("JSON_INVALID", f"{location} is not a JSON object"))
                continue
            fields: dict[str, str] = {}
            _flatten(obj, "", fields)
            broken = _not_unicode(fields)
            if broken is not None:
                message = f"{location}: {broken} holds a lone surrogate, which is not text"
                yield SourceRow(location, text, None, ("ENCODING_INVALID", message))
                continue
            yield SourceRow(location, text, fields)


def _not_unicode(fields: dict[str, str]) -> str | None:
    """The first field whose name or value does not encode as UTF-8 (a lone surrogate), or None."""
    for name, value in fields.items():
        if name.isascii() and value.isascii():  # nearly always: no surrogate possible
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return "a field name"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"field {name}"
    return None
