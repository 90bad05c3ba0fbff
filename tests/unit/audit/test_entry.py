"""The canonical audit entry encoding: stable, documented, round-tripping, and strict on decode."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.entry import AuditEntry
from gateway.audit.errors import EntryInvalid
from gateway.audit.merkle import leaf_hash

KEY_A = "0f" * 16
KEY_B = "a1" * 16


def _entry(**changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "time_us": 1_718_000_000_123_456,
        "request_id": "req-1",
        "caller": "spiffe://hutong/node/440000",
        "province": "440000",
        "subject": "审核员-7",
        "method": "/hutong.v1.QueryService/LookupPersons",
        "purpose": "低保 eligibility review",
        "outcome": "OK",
        "counts": {"returned": 2, "asked": 3},
        "person_keys": [KEY_B, KEY_A],
        "payload_digest": "ab" * 32,
    }
    fields.update(changes)
    return AuditEntry(**fields)


def test_encoding_is_sorted_compact_utf8_json() -> None:
    data = _entry().encode()
    text = data.decode("utf-8")
    assert " " not in text.replace("低保 eligibility review", "")
    assert "审核员" in text
    obj = json.loads(text)
    assert list(obj) == sorted(obj)
    assert obj["v"] == 1
    assert obj["person_keys"] == [KEY_A, KEY_B]
    assert list(obj["counts"]) == ["asked", "returned"]


def test_encoding_is_pinned_for_a_small_entry() -> None:
    entry = AuditEntry(
        time_us=1, request_id="r", caller="c", province="p", subject="s", method="/m", purpose="x", outcome="OK"
    )
    assert entry.encode() == (
        b'{"batch_id":"","caller":"c","counts":{},"method":"/m","outcome":"OK","payload_digest":"","person_keys":[],'
        b'"province":"p","purpose":"x","request_id":"r","subject":"s","time_us":1,"v":1}'
    )


def test_same_entry_gives_same_bytes_whatever_the_order_of_counts_and_person_keys() -> None:
    one = _entry(counts={"asked": 3, "returned": 2}, person_keys=[KEY_A, KEY_B])
    two = _entry(counts={"returned": 2, "asked": 3}, person_keys=(KEY_B, KEY_A, KEY_B))
    assert one == two
    assert one.encode() == two.encode()
    assert one.leaf_hash() == leaf_hash(two.encode())


def test_decode_round_trips() -> None:
    entry = _entry()
    assert AuditEntry.decode(entry.encode()) == entry
    assert AuditEntry.decode(entry.encode()).encode() == entry.encode()


def test_entry_is_read_only_after_construction() -> None:
    entry = _entry()
    with pytest.raises(TypeError):
        entry.counts["asked"] = 9  # type: ignore[index]


_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)


@given(
    time_us=st.integers(0, 2**63 - 1),
    text=_text,
    counts=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), st.integers(0, 2**40)),
    keys=st.lists(st.binary(min_size=16, max_size=16).map(bytes.hex), max_size=5),
)
def test_any_valid_entry_round_trips_through_its_canonical_bytes(
    time_us: int, text: str, counts: dict[str, int], keys: list[str]
) -> None:
    entry = _entry(time_us=time_us, request_id=text, subject=text, purpose=text, counts=counts, person_keys=keys)
    data = entry.encode()
    assert AuditEntry.decode(data) == entry
    assert AuditEntry.decode(data).encode() == data
    # The hand-written encoder gives exactly what the json module gives for the canonical rules.
    reference = json.dumps(entry.to_json_object(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert data == reference.encode("utf-8")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"time_us": -1}, "time_us"),
        ({"time_us": True}, "time_us"),
        ({"time_us": 2**63}, "time_us"),
        ({"method": ""}, "method"),
        ({"outcome": "ok"}, "outcome"),
        ({"payload_digest": "XYZ"}, "payload_digest"),
        ({"counts": {"Bad Name": 1}}, "counts"),
        ({"counts": {"asked": -1}}, "counts"),
        ({"counts": {"asked": 1.5}}, "counts"),
        ({"person_keys": ["abc"]}, "person_keys"),
        ({"person_keys": ["ABCD"]}, "person_keys"),
        ({"person_keys": "abcd"}, "person_keys"),
        ({"subject": "\ud800"}, "subject"),
    ],
)
def test_invalid_entries_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(EntryInvalid) as info:
        _entry(**changes)
    assert info.value.field == field


@given(st.lists(st.one_of(st.text(alphabet="0a9fF ,\n", max_size=6), st.integers(0, 9)), max_size=6))
def test_person_keys_are_accepted_exactly_when_each_is_lower_case_hex_of_whole_bytes(keys: list[Any]) -> None:
    valid = [isinstance(k, str) and re.fullmatch("(?:[0-9a-f]{2})+", k) is not None for k in keys]
    if all(valid):
        assert _entry(person_keys=keys).person_keys == tuple(sorted(set(keys)))
    else:
        with pytest.raises(EntryInvalid) as info:
            _entry(person_keys=keys)
        assert info.value.field == "person_keys"
        assert info.value.metadata["position"] == str(valid.index(False))  # the first bad key, by position


def test_decode_refuses_non_canonical_bytes() -> None:
    data = _entry().encode()
    obj = json.loads(data)
    spaced = json.dumps(obj, sort_keys=True).encode()
    unsorted = json.dumps(dict(reversed(list(obj.items()))), separators=(",", ":"), ensure_ascii=False).encode()
    escaped = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    for bad in (spaced, unsorted, escaped):
        with pytest.raises(EntryInvalid, match="canonical"):
            AuditEntry.decode(bad)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(v=2),
        lambda o: o.pop("purpose"),
        lambda o: o.update(extra="x"),
        lambda o: o.update(time_us=1.0),
        lambda o: o.update(counts=[]),
        lambda o: o.update(person_keys=["0f" * 16, "0f" * 16]),
    ],
)
def test_decode_refuses_wrong_members_versions_and_types(mutate: Any) -> None:
    obj = json.loads(_entry().encode())
    mutate(obj)
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    with pytest.raises(EntryInvalid):
        AuditEntry.decode(data)


@pytest.mark.parametrize("data", [b"\xff", b"[]", b"{", b'{"v":1,"v":1}', b'{"v":NaN}', b'{"v":true}'], ids=repr)
def test_decode_refuses_garbage(data: bytes) -> None:
    with pytest.raises(EntryInvalid):
        AuditEntry.decode(data)


def test_decode_refuses_json_nested_deeper_than_the_interpreter_recurses() -> None:
    with pytest.raises(EntryInvalid, match="nested too deeply"):
        AuditEntry.decode(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    "person_keys",
    [[{"a": 1}, KEY_A], [None, KEY_A], [KEY_A, 7], [[KEY_A]]],
    ids=["object", "null-beside-text", "number-beside-text", "nested-list"],
)
def test_person_keys_of_other_types_are_refused_naming_the_field_before_sorting(person_keys: list[Any]) -> None:
    with pytest.raises(EntryInvalid) as caught:
        _entry(person_keys=person_keys)
    assert caught.value.field == "person_keys"
    assert "position" in caught.value.metadata


def test_person_keys_of_other_types_in_the_bytes_are_refused_too() -> None:
    data = _entry().encode().replace(f'"person_keys":["{KEY_A}",'.encode(), b'"person_keys":[null,')
    with pytest.raises(EntryInvalid) as caught:
        AuditEntry.decode(data)
    assert caught.value.field == "person_keys"


def test_person_keys_may_be_given_as_a_set() -> None:
    assert _entry(person_keys={KEY_B, KEY_A}).person_keys == (KEY_A, KEY_B)


def test_count_names_of_other_types_are_refused_naming_the_field() -> None:
    with pytest.raises(EntryInvalid) as caught:
        _entry(counts={"returned": 1, 2: 3})
    assert caught.value.field == "counts"
