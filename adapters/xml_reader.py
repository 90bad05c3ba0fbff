"""Read XML exports (older web-service systems) one record element at a time.

A record is every element at ``record_path`` below the document element, for instance the
members of ``<户> <成员/> <成员/> </户>`` households; each becomes one ``data`` row whose fields
are paths relative to it::

    read_xml(path, record_path="js:家庭/js:成员", namespaces={"js": "urn:jiangsu-mz:shjz:1.0"},
             fields=["js:姓名", "js:身份证号", "@序号", "js:联系方式/@电话", "../@户编号", "../js:救助类别"])

Field paths:

* ``a:Name`` or ``a:Card/a:No``: the text of the first such child (or grandchild) element;
* ``@type``, ``a:Card/@no``: an attribute of the record or of one of its descendants;
* ``.``: the record's own text;
* ``../a:HouseholdNo``, ``../@id``, ``../../a:Batch``: the same, starting from an enclosing element.
  An enclosing element's attributes are always visible, but its child elements only if they come
  *before* the record in the document (the reader streams: a household's fields written after its
  members have not been read when the members are);
* a value is ``""`` when the element or attribute is absent, and is never stripped.

Names take the prefixes of ``namespaces`` (``xml`` is predefined); an unprefixed element name is in
no namespace, or in ``namespaces[""]`` when that is given. Unprefixed attributes are in no namespace,
as XML says. Where a path names several elements, the first one counts.

Safety and streaming: the file is parsed incrementally with expat feeding ElementTree's C tree
builder (not ``iterparse``, so that each record's line number is known), and each record, each
finished enclosing element and everything no field can reach is dropped as soon as it is closed, so
memory stays flat however large the file. A document with a ``<!DOCTYPE>`` is refused before any of
it is read: the only use of a DTD in an export would be entity definitions, and those are how an XML
bomb expands (expat expands internal entities by itself); defusedxml is not a dependency.

Encodings: ``encoding=None`` lets the byte-order mark or the XML declaration decide (UTF-8 without
either); an explicit ``encoding`` overrides the declaration. Expat cannot read multi-byte encodings
other than UTF-8 and UTF-16, so everything but UTF-8 (GBK, GB18030, UTF-16...) is decoded here and
handed to expat re-encoded as UTF-8. As in the WHATWG Encoding standard, ``GB2312`` is read as GBK,
its superset: county systems label GBK files GB2312, and names with characters outside GB2312
(堃, 镕, 喆) are common. Bytes that are not in the encoding end the file there, after its rows so far.

Each row's ``location`` is ``element N (line L)``: the N-th record, whose start tag is on line L.
Its ``raw`` is the record's text exactly as in the file, cut after :data:`RAW_LIMIT` characters.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, NamedTuple
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

from adapters.source import DATA, SourceError, SourceRow
from gateway.errors import ConfigError

__all__ = ["read_xml"]

_NO_NAMESPACES: Mapping[str, str] = MappingProxyType({})
_XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"
_CHUNK = 256 * 1024
#: Characters of a record kept in ``raw`` (for the reject file).
RAW_LIMIT = 2000

#: WHATWG labels of GBK that Python's codec registry does not know.
_LABELS = {"x-gbk": "gbk", "csgb2312": "gbk", "chinese": "gbk"}
_DECLARATION = re.compile(rb"""^(?:\xef\xbb\xbf)?<\?xml\s[^>]*?\bencoding\s*=\s*["']([A-Za-z][A-Za-z0-9._\-]*)["']""")
# UTF-32 first: its little-endian mark starts with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
#: A start or end tag, up to its ">" (which may appear inside a quoted attribute value).
_TAG = re.compile(rb"""<(?:[^>"']|"[^"]*"|'[^']*')*>""")
_NAME = re.compile(r"[^\s:/@\[\]{}()'\"=,]+")

# Modes of an open element, besides 0..len(record_path)-1 (an element on the record path, the
# document element being 0) and len(record_path) (a record).
_KEEP = -1  # inside a record, or a child of an enclosing element that a field reads
_DROP = -2  # nothing can reach it
_DOCUMENT = -3  # the parent of the document element


class _Field(NamedTuple):
    name: str
    up: int
    tags: tuple[str, ...]
    attribute: str | None


class _Fault(NamedTuple):
    message: str
    metadata: dict[str, str]


class _Refused(Exception):
    """Raised from an expat handler to stop at a DOCTYPE declaration."""


def read_xml(
    path: Path,
    *,
    record_path: str,
    fields: Sequence[str],
    namespaces: Mapping[str, str] = _NO_NAMESPACES,
    encoding: str | None = None,
) -> Iterator[SourceRow]:
    """Yield one ``data`` row per element at ``record_path``, with ``fields`` read relative to it.

    Bad options raise :class:`ConfigError` at once; a file that cannot be read raises
    :class:`SourceError` when iterated (after the rows before the fault, for a file broken midway).
    """
    steps = tuple(_qualify(step, namespaces, attribute=False, option="record_path") for step in record_path.split("/"))
    compiled = _compile_fields(fields, namespaces, depth=len(steps))
    needed: list[set[str]] = [set() for _ in steps]
    for field in compiled:
        if field.up and field.tags:
            needed[len(steps) - field.up].add(field.tags[0])
    codec = None if encoding is None else _codec_name(encoding, explicit=True, path=path)
    return _rows(path, steps, compiled, [frozenset(n) for n in needed], codec)


def _qualify(step: str, namespaces: Mapping[str, str], *, attribute: bool, option: str) -> str:
    """``prefix:local`` → ``{uri}local`` (ElementTree's notation)."""
    prefix, colon, local = step.rpartition(":")
    if not _NAME.fullmatch(local) or (colon and not _NAME.fullmatch(prefix)):
        raise ConfigError(
            f"{option}: {step!r} is not an XML name", reason="SOURCE_OPTION_INVALID", metadata={"option": option}
        )
    if colon:
        uri = _XML_NAMESPACE if prefix == "xml" else namespaces.get(prefix)
        if uri is None:
            raise ConfigError(
                f"{option}: namespace prefix {prefix!r} is not in namespaces",
                reason="SOURCE_OPTION_INVALID",
                metadata={"option": option, "prefix": prefix},
            )
        return f"{{{uri}}}{local}"
    default = None if attribute else namespaces.get("")
    return f"{{{default}}}{local}" if default else local


def _compile_fields(fields: Sequence[str], namespaces: Mapping[str, str], *, depth: int) -> tuple[_Field, ...]:
    if isinstance(fields, str) or not fields:
        raise ConfigError("fields must be a non-empty list of paths", reason="SOURCE_OPTION_INVALID")
    compiled: list[_Field] = []
    for name in fields:
        parts = name.split("/")
        up = 0
        while up < len(parts) and parts[up] == "..":
            up += 1
        rest = [part for part in parts[up:] if part != "."]
        attribute = None
        if rest and rest[-1].startswith("@"):
            attribute = _qualify(rest.pop()[1:], namespaces, attribute=True, option="fields")
        tags = tuple(_qualify(step, namespaces, attribute=False, option="fields") for step in rest)
        if up > depth or (name != "." and not (up or tags or attribute)):
            raise ConfigError(
                f"fields: {name!r} does not name an element or attribute of the record or of an enclosing element",
                reason="SOURCE_OPTION_INVALID",
                metadata={"option": "fields"},
            )
        compiled.append(_Field(name, up, tags, attribute))
    if len({f.name for f in compiled}) != len(compiled):
        raise ConfigError("fields: a path is listed twice", reason="SOURCE_OPTION_INVALID")
    return tuple(compiled)


def _codec_name(label: str, *, explicit: bool, path: Path) -> str:
    """The Python codec for an encoding label, GB2312 widened to GBK; only codecs that decode bytes to text."""
    try:
        info = codecs.lookup(_LABELS.get(label.lower(), label))
        # Python also has codecs from bytes to bytes (base64, zlib, hex, uu...) and text to text (rot13):
        # none of them is a character encoding an XML file can be in.
        if not info._is_text_encoding:
            raise LookupError(label)
        codec = info.name
    except LookupError:
        message = f"unknown encoding {label!r}"
        if explicit:
            raise ConfigError(message, reason="SOURCE_OPTION_INVALID", metadata={"option": "encoding"}) from None
        raise SourceError(f"the XML declaration names an {message}", field=str(path)) from None
    return "gbk" if codec == "gb2312" else codec


def _rows(
    path: Path,
    steps: tuple[str, ...],
    fields: tuple[_Field, ...],
    needed: list[frozenset[str]],
    codec: str | None,
) -> Iterator[SourceRow]:
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot open the file: {exc.strerror or exc}", field=str(path)) from exc
    with stream:
        head = _read(stream, path)
        explicit = codec is not None
        if codec is None:
            codec = _sniff(head, path)
        # UTF-8 goes to expat as it is; anything else is decoded here and re-encoded as UTF-8, which
        # expat is then told (overriding the declaration), so that the byte offsets it reports index
        # the UTF-8 text ``window`` holds.
        decoder = None if codec == "utf-8" else codecs.getincrementaldecoder(codec)("strict")
        parser = expat.ParserCreate("UTF-8" if explicit or decoder is not None else None, "}")
        state = _State()
        _install_handlers(parser, state, steps, fields, needed)
        offset = 0
        chunk = head
        while True:
            final = not chunk
            fault = None
            if decoder is None:
                fault = _feed(parser, state, chunk, final)
            else:
                pending = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(chunk, final)
                except UnicodeDecodeError as exc:
                    # exc.object is the undecoded bytes carried over plus this chunk: read the text
                    # before the bad bytes, then stop there.
                    start = offset - pending + exc.start
                    valid = exc.object[: exc.start].decode(codec).encode("utf-8")
                    fault = _feed(parser, state, valid, False)
                    if fault is None:
                        line = parser.CurrentLineNumber
                        fault = _Fault(
                            f"bytes at offset {start} (line {line}) are not valid {codec}",
                            {"offset": str(start), "line": str(line)},
                        )
                except UnicodeError:
                    # A codec refusing its input as a whole (UTF-16 without a byte-order mark, punycode,
                    # 'undefined') does not say where: name the chunk.
                    start = offset - pending
                    fault = _Fault(f"bytes after offset {start} are not valid {codec}", {"offset": str(start)})
                else:
                    fault = _feed(parser, state, text.encode("utf-8"), final)
            yield from state.rows
            state.rows.clear()
            if fault is not None:
                raise SourceError(fault.message, field=str(path), metadata=fault.metadata)
            if final:
                return
            offset += len(chunk)
            chunk = _read(stream, path)


def _sniff(head: bytes, path: Path) -> str:
    """The codec that the byte-order mark or the XML declaration names (UTF-8 without either)."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    declared = _DECLARATION.match(head)
    return "utf-8" if declared is None else _codec_name(declared[1].decode("ascii"), explicit=False, path=path)


def _read(stream: BinaryIO, path: Path) -> bytes:
    try:
        return stream.read(_CHUNK)
    except OSError as exc:
        raise SourceError(f"cannot read the file: {exc.strerror or exc}", field=str(path)) from exc


class _State:
    """What the expat handlers share with the feeding loop."""

    __slots__ = ("base", "record_start", "rows", "window")

    def __init__(self) -> None:
        #: Rows completed by the last feed, to yield.
        self.rows: list[SourceRow] = []
        #: The UTF-8 input from byte ``base`` on: the open record's text, or an unparsed token.
        self.window = bytearray()
        self.base = 0
        #: Byte index of the open record's start tag, or -1.
        self.record_start = -1


def _feed(parser: expat.XMLParserType, state: _State, data: bytes, final: bool) -> _Fault | None:
    """Feed expat; a parse fault is returned, to be raised after the rows read so far."""
    state.window += data
    try:
        parser.Parse(data, final)
    except _Refused:
        line = parser.CurrentLineNumber
        return _Fault(
            f"the document has a DOCTYPE declaration (line {line}), which is refused:"
            " its entities could expand without bound",
            {"line": str(line)},
        )
    except expat.ExpatError as exc:
        column = exc.offset + 1
        return _Fault(
            f"the XML is malformed at line {exc.lineno}, column {column}: {expat.ErrorString(exc.code)}",
            {"line": str(exc.lineno), "column": str(column)},
        )
    # Keep only what a later event can still point into.
    keep = state.record_start if state.record_start >= 0 else parser.CurrentByteIndex
    if keep > state.base:
        del state.window[: keep - state.base]
        state.base = keep
    return None


def _install_handlers(
    parser: expat.XMLParserType,
    state: _State,
    steps: tuple[str, ...],
    fields: tuple[_Field, ...],
    needed: list[frozenset[str]],
) -> None:
    """Wire expat to a tree builder that keeps only what the fields can reach, appending rows to ``state``."""
    builder = TreeBuilder()
    record_depth = len(steps)
    modes: list[int] = [_DOCUMENT]
    elements: list[Element] = []
    names: dict[str, str] = {}
    count = 0
    line = 0
    own_fields = any(f.up == 0 and f.tags for f in fields)
    rows = state.rows

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal count, line
        tag = names.get(name)
        if tag is None:
            # Expat reports namespaced names as "uri}local".
            tag = "{" + name if "}" in name else name
            if len(names) < 4096:
                names[name] = tag
        parent = modes[-1]
        if parent in (_KEEP, record_depth):
            mode = _KEEP
        elif parent == _DROP:
            mode = _DROP
        elif parent == _DOCUMENT:
            mode = 0
        elif tag == steps[parent]:
            mode = parent + 1
            if mode == record_depth:
                count += 1
                line = parser.CurrentLineNumber
                state.record_start = parser.CurrentByteIndex
        else:
            mode = _KEEP if tag in needed[parent] else _DROP
        if attributes and any("}" in key for key in attributes):
            attributes = {"{" + key if "}" in key else key: value for key, value in attributes.items()}
        elements.append(builder.start(tag, attributes))
        modes.append(mode)

    def end(name: str) -> None:
        element = builder.end(name)
        mode = modes.pop()
        elements.pop()
        if mode == _KEEP:
            return
        if mode == record_depth:
            index = _children(element) if own_fields else {}
            values = {}
            for field in fields:
                if field.up:
                    node: Element | None = elements[-field.up]
                    tags: tuple[str, ...] = field.tags
                elif field.tags:
                    node = index.get(field.tags[0])
                    tags = field.tags[1:]
                else:
                    node, tags = element, ()
                values[field.name] = _value(node, tags, field.attribute)
            raw = _raw(state, parser.CurrentByteIndex)
            state.record_start = -1
            rows.append(SourceRow(f"element {count} (line {line})", raw, values, None, DATA))
        if mode != 0:
            # A record, a finished enclosing element, or something no field reads: let it go.
            elements[-1].remove(element)

    def refuse(*_: object) -> None:
        raise _Refused

    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data


def _raw(state: _State, end_index: int) -> str:
    """The record's text as in the file, cut after :data:`RAW_LIMIT` characters.

    At the end event expat points at the end tag, or just past an empty element's tag.
    """
    window = state.window
    start = state.record_start - state.base
    start_tag = _TAG.match(window, start)
    if start_tag is None:  # unreachable for a parsed element; kept total
        return ""
    if start_tag[0].endswith(b"/>"):
        stop = start_tag.end()
    else:
        end_tag = _TAG.match(window, end_index - state.base)
        stop = end_tag.end() if end_tag is not None else end_index - state.base
    if stop - start > RAW_LIMIT:
        # A UTF-8 character is at most 4 bytes; "ignore" drops the one the cut may split.
        text = window[start : min(stop, start + 4 * RAW_LIMIT)].decode("utf-8", "ignore")
        if len(text) > RAW_LIMIT:
            return text[:RAW_LIMIT] + "…"
        return text
    return window[start:stop].decode("utf-8", "replace")


def _children(element: Element) -> dict[str, Element]:
    """The first child of each tag."""
    index: dict[str, Element] = {}
    for child in element:
        if child.tag not in index:
            index[child.tag] = child
    return index


def _value(node: Element | None, tags: tuple[str, ...], attribute: str | None) -> str:
    for tag in tags:
        if node is None:
            return ""
        for child in node:
            if child.tag == tag:
                node = child
                break
        else:
            return ""
    if node is None:
        return ""
    if attribute is not None:
        return node.get(attribute, "")
    return node.text or ""
