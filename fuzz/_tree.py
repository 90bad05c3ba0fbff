"""Structure-aware inputs: a real document (TOML or JSON, parsed), changed by a few edits the input's bytes choose.

Random bytes seldom get past a TOML or JSON parser into the checks behind it; an edit of a
valid document does: a value of another type (a list where a string was, ``nan`` where a
number was), a key removed or added, a string with an odd character. :func:`mutate` reads the
edits from a :class:`~fuzz._harness.ByteReader`, so an input replays to the same document;
:func:`to_toml` and :func:`to_json` write the result back for parsers that take text.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from collections.abc import Sequence
from typing import Any

from fuzz._harness import ByteReader

__all__ = ["INTERESTING_STRINGS", "mutate", "strings_of", "to_json", "to_toml"]

#: Strings that have broken parsers before: odd digits, spaces, separators, paths, template braces.
INTERESTING_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "0",
    "-1",
    "²",  # str.isdigit() says yes, int() says no
    "١٢",  # Arabic-Indic digits: \d and int() accept them
    "\u3000",
    "\x00",
    "\r",
    "\n",
    "\t",
    "😀",
    "nan",
    "inf",
    "1e999",
    "{",
    "}",
    "{x}",
    "[",
    "..",
    "../",
    "/",
    "@",
    "~",
    "~nosuchuser/x",  # Path.expanduser() raises RuntimeError
    ":",
    "host:²",
    "a" * 300,
    "9" * 5000,  # over int()'s 4,300-digit limit
    "hutong://province/440000/node/gz-01",
    "440000",
    "YYYY",
    "excel",
    "utf-16",
    "gb2312",
    "rot13",
)
_CHARACTERS = ("²", "١", "０", "\u3000", "\x00", "\r", "\n", '"', "\\", "{", "}", "/", "@", ":", ".", "-", "~", "😀")
_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    2,
    255,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    10**30,
    0.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
)
_OTHERS: tuple[Any, ...] = (
    True,
    False,
    [],
    {},
    [[]],
    [{}],
    [1, "a"],
    {"": ""},
    dt.date(2024, 2, 29),
    dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC),
    dt.time(12, 30),
)
#: Edits applied to one input at most.
_MAX_EDITS = 12


def strings_of(value: Any) -> list[str]:
    """Every key and string in a document, sorted: the words an edit may reuse elsewhere."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                found.add(key)
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            found.add(node)

    walk(value)
    return sorted(found)


def _slots(root: list[Any]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) that holds a value, the root's holder first."""
    out: list[tuple[Any, Any]] = []

    def walk(container: Any, key: Any) -> None:
        out.append((container, key))
        node = container[key]
        if isinstance(node, dict):
            for child in list(node):
                walk(node, child)
        elif isinstance(node, list):
            for index in range(len(node)):
                walk(node, index)

    walk(root, 0)
    return out


def _new_value(reader: ByteReader, words: Sequence[str], siblings: Sequence[Any]) -> Any:
    kind = reader.below(6)
    if kind == 0:
        return reader.pick(INTERESTING_STRINGS)
    if kind == 1:
        return reader.pick(_NUMBERS)
    if kind == 2:
        return copy.deepcopy(reader.pick(_OTHERS))
    if kind == 3 and words:
        return reader.pick(words)
    if kind == 4 and siblings:
        return copy.deepcopy(reader.pick(siblings))
    return reader.take(reader.below(24)).decode("utf-8", "replace")


def _edit_string(text: str, reader: ByteReader, words: Sequence[str]) -> str:
    how = reader.below(6)
    position = reader.below(len(text) + 1)
    if how == 0:
        return text[:position] + reader.pick(_CHARACTERS) + text[position:]
    if how == 1:
        return text[:position]
    if how == 2:
        return text[:position] + text[position + 1 :]
    if how == 3 and len(text) < 1000:
        return text * (1 + reader.below(4))
    if how == 4 and words:
        return text[:position] + reader.pick(words) + text[position:]
    return text.upper() if reader.byte() % 2 else f" {text} "


def _edit_number(value: int | float, reader: ByteReader) -> Any:
    how = reader.below(5)
    if how == 0:
        return value + reader.pick((1, -1))
    if how == 1:
        return -value
    if how == 2:
        return float(value) if isinstance(value, int) else int(value) if math.isfinite(value) else 0
    if how == 3:
        return str(value)
    return reader.pick(_NUMBERS)


def mutate(document: Any, reader: ByteReader, *, words: Sequence[str] = ()) -> Any:
    """A deep copy of ``document`` with the edits ``reader`` spells out (none for an empty input)."""
    root: list[Any] = [copy.deepcopy(document)]
    for _ in range(_MAX_EDITS):
        if reader.exhausted:
            break
        slots = _slots(root)
        container, key = slots[reader.below(len(slots))]
        value = container[key]
        siblings = list(container.values()) if isinstance(container, dict) else container
        op = reader.below(8)
        if container is root:
            op = 2  # the document's own type stays (a TOML document is a table, whatever the edits)
        if op == 0:
            container[key] = _new_value(reader, words, siblings)
        elif op == 1 and container is not root:
            del container[key]
        elif op == 2 and isinstance(value, dict):
            name = reader.pick(words) if words and reader.byte() % 2 else reader.pick(INTERESTING_STRINGS)
            value[name] = _new_value(reader, words, list(value.values()))
        elif op == 2 and isinstance(value, list):
            value.insert(reader.below(len(value) + 1), _new_value(reader, words, value))
        elif op == 3 and isinstance(value, str):
            container[key] = _edit_string(value, reader, words)
        elif op == 3 and isinstance(value, int | float) and not isinstance(value, bool):
            container[key] = _edit_number(value, reader)
        elif op == 4:
            container[key] = [value] if reader.byte() % 2 else {reader.pick(words or ("x",)): value}
        elif op == 5 and isinstance(container, dict):  # never the root's holder, a list
            new_key = _edit_string(key, reader, words)
            container[new_key] = container.pop(key)
        elif op == 6 and isinstance(value, list) and value:
            value.append(copy.deepcopy(value[reader.below(len(value))]))
        elif op == 7 and isinstance(value, dict | list) and value:
            # Replace the value by one of its own children: a level of nesting gone.
            container[key] = copy.deepcopy(
                reader.pick(list(value.values())) if isinstance(value, dict) else reader.pick(value)
            )
        elif container is not root:
            container[key] = _new_value(reader, words, siblings)
    return root[0]


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")  # TOML has no lone surrogates
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + items + " }" if items else "{}"
    return _toml_string(str(value))


def to_toml(document: Any) -> str:
    """The document as TOML (inline tables and arrays); a root that is not a table comes out as invalid TOML."""
    if not isinstance(document, dict):
        return f"= {_toml_value(document)}\n"
    return "".join(f"{_toml_string(str(k))} = {_toml_value(v)}\n" for k, v in document.items() if v is not None)


def to_json(document: Any, *, indent: int | None = None) -> bytes:
    """The document as UTF-8 JSON (non-finite floats as JSON's NaN and Infinity, dates as text)."""
    text = json.dumps(document, ensure_ascii=False, indent=indent, default=str)
    return text.encode("utf-8", "surrogatepass")
