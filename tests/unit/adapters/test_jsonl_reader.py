"""Tests of adapters.jsonl_reader: nested objects as dotted paths, values as text, broken lines kept as rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.jsonl_reader import read_jsonl
from adapters.source import DATA, SourceError, SourceRow


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "export.jsonl"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def read(path: Path, encoding: str = "utf-8") -> list[SourceRow]:
    return list(read_jsonl(path, encoding=encoding))


def test_nested_objects_and_arrays_become_dotted_paths(tmp_path: Path) -> None:
    obj = {
        "serial": "BJ-000001",
        "person": {"name": "刘强", "idCard": "110101196712120268"},
        "household": {"address": {"division": "110101"}},
        "assistance": [{"type": "BY", "office": "110101"}, {"type": "TK", "tags": ["a", ["b", "c"]]}],
    }
    (row,) = read(write(tmp_path, json.dumps(obj, ensure_ascii=False) + "\n"))
    assert row.kind == DATA
    assert row.location == "line 1"
    assert row.fields == {
        "serial": "BJ-000001",
        "person.name": "刘强",
        "person.idCard": "110101196712120268",
        "household.address.division": "110101",
        "assistance.0.type": "BY",
        "assistance.0.office": "110101",
        "assistance.1.type": "TK",
        "assistance.1.tags.0": "a",
        "assistance.1.tags.1.0": "b",
        "assistance.1.tags.1.1": "c",
    }
    assert row.raw == json.dumps(obj, ensure_ascii=False)


def test_numbers_booleans_and_null_become_text(tmp_path: Path) -> None:
    line = '{"i": 1816, "f": 1674.5, "whole": 1816.0, "exp": 1e2, "neg": -3, "t": true, "f2": false, "n": null}\n'
    (row,) = read(write(tmp_path, line))
    assert row.fields == {
        "i": "1816",
        "f": "1674.5",
        "whole": "1816",
        "exp": "100",
        "neg": "-3",
        "t": "true",
        "f2": "false",
        "n": "",
    }


def test_empty_objects_and_arrays_give_no_fields(tmp_path: Path) -> None:
    (row,) = read(write(tmp_path, '{"a": {}, "b": [], "c": "x"}\n'))
    assert row.fields == {"c": "x"}


def test_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    (row,) = read(write(tmp_path, b'\xef\xbb\xbf{"a": "1"}\n'))
    assert row.fields == {"a": "1"}
    (row,) = read(write(tmp_path, b'\xef\xbb\xbf{"a": "1"}\n'), encoding="utf-8-sig")
    assert row.fields == {"a": "1"}


def test_a_gbk_file_is_read_in_gbk(tmp_path: Path) -> None:
    (row,) = read(write(tmp_path, '{"name": "张三"}\n'.encode("gbk")), encoding="gbk")
    assert row.fields == {"name": "张三"}


def test_a_line_that_is_not_json_is_refused_and_the_next_lines_still_read(tmp_path: Path) -> None:
    path = write(tmp_path, '{"a": "1"}\n{"serial": "BJ-broken", "person": {"name": "截断\n{"a": "2"}\n')
    first, bad, last = read(path)
    assert first.fields == {"a": "1"}
    assert bad.location == "line 2"
    assert bad.fields is None
    assert bad.error is not None
    assert bad.error[0] == "JSON_INVALID"
    assert bad.error[1].startswith("line 2 is not JSON: ")
    assert bad.raw == '{"serial": "BJ-broken", "person": {"name": "截断'
    assert last.fields == {"a": "2"}


@pytest.mark.parametrize("line", ['["not", "an", "object"]', '"text"', "42", "null"])
def test_a_line_that_is_not_an_object_is_refused(tmp_path: Path, line: str) -> None:
    (row,) = read(write(tmp_path, line + "\n"))
    assert row.fields is None
    assert row.error == ("JSON_INVALID", "line 1 is not a JSON object")
    assert row.raw == line


def test_undecodable_bytes_spoil_only_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"a": "1"}\n{"a": "\xff\xfe"}\n{"a": "3"}\n')
    first, bad, last = read(path)
    assert bad.error == ("ENCODING_INVALID", "line 2 is not valid utf-8")
    assert bad.raw == '{"a": "\\xff\\xfe"}'
    assert (first.fields, last.fields) == ({"a": "1"}, {"a": "3"})


def test_a_lone_surrogate_spoils_its_line_naming_the_field(tmp_path: Path) -> None:
    # JSON can escape half a surrogate pair; UTF-8, protobuf and SQLite cannot hold it.
    path = write(tmp_path, '{"a": "1"}\n{"person": {"name": "王\\ud800"}}\n{"a": "3"}\n')
    first, bad, last = read(path)
    assert bad.fields is None
    assert bad.error == ("ENCODING_INVALID", "line 2: field person.name holds a lone surrogate, which is not text")
    assert (first.fields, last.fields) == ({"a": "1"}, {"a": "3"})


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    found = read(write(tmp_path, '\n{"a": "1"}\n   \n\r\n{"a": "2"}\r\n'))
    assert [(r.location, r.fields) for r in found] == [("line 2", {"a": "1"}), ("line 5", {"a": "2"})]


def test_a_missing_file_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "missing.jsonl"
    with pytest.raises(SourceError) as caught:
        read(path)
    assert caught.value.field == str(path)
    assert "cannot open" in caught.value.message


def test_a_deeply_nested_line_is_refused_not_an_exception(tmp_path: Path) -> None:
    first, bad = read(write(tmp_path, '{"a": "1"}\n' + "[" * 100_000 + "\n"))
    assert first.fields == {"a": "1"}
    assert bad.error is not None
    assert bad.error[0] == "JSON_INVALID"
