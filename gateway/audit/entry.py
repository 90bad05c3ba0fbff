"""The audit entry: one RPC on the hub or a node, and its canonical encoding (the Merkle leaf).

An entry records who asked what, about whom, for which purpose, and how it ended — never raw
personal data: persons appear only as their keyed person keys (HMAC, hex) and the payload only
as a digest.

Canonical encoding (version 1) — the bytes hashed into the tree, ``H(0x00 || encode())``:

* one JSON object, UTF-8, keys sorted by code point, no whitespace (``","`` and ``":"``
  separators), non-ASCII characters written as themselves (``ensure_ascii=False``); only the
  escapes JSON requires (``\\"``, ``\\\\``, control characters);
* members: ``v`` (always ``1``), ``time_us`` (integer microseconds since the Unix epoch, UTC),
  ``request_id``, ``caller`` (node URI), ``province`` (division code), ``subject`` (token
  subject), ``method`` (full gRPC method name), ``purpose``, ``outcome`` (gRPC status code name,
  ``OK``, ``NOT_FOUND``, ...), ``counts`` (object of ``snake_case`` name → integer ≥ 0, keys
  sorted), ``person_keys`` (array of lower-case hex strings, sorted, no duplicates),
  ``payload_digest`` (lower-case hex), ``batch_id`` (the node's id of the SyncRecords batch
  an entry records, empty for an entry of a whole call);
* integers only, within ``0 .. 2**63 - 1`` (they fit SQL ``BIGINT``); no floats, no nulls.

With only ASCII member names, strings and small integers this is also the RFC 8785 (JCS) form.
:meth:`AuditEntry.decode` accepts exactly the bytes :meth:`AuditEntry.encode` produces, so
``decode(b).encode() == b`` for every accepted ``b``: two encodings of one entry cannot exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.audit.errors import EntryInvalid
from gateway.audit.merkle import HashFn, leaf_hash, sha256

__all__ = ["ENTRY_VERSION", "AuditEntry"]

#: Version of the canonical encoding written in member ``v``.
ENTRY_VERSION = 1

_MAX_INT = 2**63 - 1
#: JSON string encoding without ASCII-escaping: what ``json.dumps(..., ensure_ascii=False)`` uses.
_string = json.encoder.encode_basestring
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_HEX_LIST = re.compile(r"[0-9a-f,]*")
_COUNT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_STATUS_NAME = re.compile(r"[A-Z][A-Z_]*")
_STRING_FIELDS = (
    "request_id",
    "caller",
    "province",
    "subject",
    "method",
    "purpose",
    "outcome",
    "payload_digest",
    "batch_id",
)
_MEMBERS = frozenset({"v", "time_us", "counts", "person_keys", *_STRING_FIELDS})


def _all_hex(keys: tuple[object, ...]) -> bool:
    """Whether every key is lower-case hex of whole bytes: one pass in C for the lot.

    A batch's entry names a thousand keys; checking them one regex match at a time cost 2 ms an
    entry, four times the rest of its decoding. False sends the caller to the exact check.
    """
    try:
        joined = ",".join(keys)  # type: ignore[arg-type]  # a key that is not a string raises
    except TypeError:
        return False
    return (
        joined.count(",") == len(keys) - 1  # no key holds a comma of its own
        and _HEX_LIST.fullmatch(joined) is not None
        and not any(n == 0 or n & 1 for n in set(map(len, keys)))  # type: ignore[arg-type]
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT


def _empty_counts() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited RPC. Normalised on construction: counts sorted and read-only, person keys sorted and unique."""

    #: When the call was answered, integer microseconds since the Unix epoch (UTC).
    time_us: int
    #: The caller's request id (AIP-155), or the one the server assigned.
    request_id: str
    #: The calling node's URI (from its certificate).
    caller: str
    #: The caller's province (GB/T 2260 division code).
    province: str
    #: The subject of the caller's access token.
    subject: str
    #: Full gRPC method name, ``/hutong.v1.Service/Method``.
    method: str
    #: The declared purpose of the call.
    purpose: str
    #: gRPC status code name of the answer (``OK``, ``PERMISSION_DENIED``, ...).
    outcome: str
    #: Named non-negative counts (records returned, matched, ...).
    counts: Mapping[str, int] = field(default_factory=_empty_counts)
    #: Keyed hashes (person keys, lower-case hex) of every person the call touched.
    person_keys: Sequence[str] = ()
    #: Lower-case hex digest of the request and response payloads.
    payload_digest: str = ""
    #: The node's batch id, for the entry of one SyncRecords batch; empty for a whole call.
    batch_id: str = ""

    def __post_init__(self) -> None:
        if not _is_int(self.time_us):
            raise EntryInvalid("time_us must be an integer in 0..2**63-1", field="time_us")
        for name in _STRING_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise EntryInvalid(f"{name} must be a string", field=name)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise EntryInvalid(f"{name} is not valid Unicode text", field=name) from exc
        if not self.method:
            raise EntryInvalid("method must not be empty", field="method")
        if not _STATUS_NAME.fullmatch(self.outcome):
            raise EntryInvalid("outcome must be a status code name in UPPER_SNAKE", field="outcome")
        if self.payload_digest and not _HEX.fullmatch(self.payload_digest):
            raise EntryInvalid("payload_digest must be lower-case hex", field="payload_digest")
        if not isinstance(self.counts, Mapping):
            raise EntryInvalid("counts must be a mapping", field="counts")
        # Types are checked before sorting: sorted() and set() raise TypeError on mixed or unhashable items.
        for name, value in self.counts.items():
            if not isinstance(name, str) or not _COUNT_NAME.fullmatch(name):
                raise EntryInvalid("count names must be snake_case", field="counts", metadata={"count": str(name)})
            if not _is_int(value):
                raise EntryInvalid(
                    f"count {name} must be an integer in 0..2**63-1", field="counts", metadata={"count": name}
                )
        counts = dict(sorted(self.counts.items()))
        # Callers pass lists, tuples and sets alike; a string would iterate as characters.
        if isinstance(self.person_keys, (str, bytes)) or not isinstance(self.person_keys, Iterable):
            raise EntryInvalid("person_keys must be a sequence of hex strings", field="person_keys")
        given = tuple(self.person_keys)
        if not _all_hex(given):
            for position, key in enumerate(given):
                if not isinstance(key, str) or not _HEX.fullmatch(key):
                    raise EntryInvalid(
                        "person keys must be lower-case hex", field="person_keys", metadata={"position": str(position)}
                    )
        keys = tuple(sorted(set(given)))
        object.__setattr__(self, "counts", MappingProxyType(counts))
        object.__setattr__(self, "person_keys", keys)

    def to_json_object(self) -> dict[str, Any]:
        """The entry as the JSON object that :meth:`encode` serialises."""
        obj: dict[str, Any] = {name: getattr(self, name) for name in _STRING_FIELDS}
        obj.update(v=ENTRY_VERSION, time_us=self.time_us, counts=dict(self.counts), person_keys=list(self.person_keys))
        return obj

    def encode(self) -> bytes:
        """The canonical bytes of the entry (see the module docstring).

        Written member by member in their sorted order rather than through ``json.dumps`` with
        ``sort_keys`` (a third of the cost of an append); strings go through the json module's
        own escaping, so the bytes are the same (``decode`` checks it, and so do the tests).
        """
        s = _string
        counts = ",".join(f"{s(k)}:{v}" for k, v in self.counts.items())
        keys = ",".join(f'"{k}"' for k in self.person_keys)  # validated lower-case hex: nothing to escape
        text = (
            f'{{"batch_id":{s(self.batch_id)},"caller":{s(self.caller)},"counts":{{{counts}}},'
            f'"method":{s(self.method)},"outcome":{s(self.outcome)},"payload_digest":{s(self.payload_digest)},'
            f'"person_keys":[{keys}],"province":{s(self.province)},"purpose":{s(self.purpose)},'
            f'"request_id":{s(self.request_id)},"subject":{s(self.subject)},"time_us":{self.time_us},'
            f'"v":{ENTRY_VERSION}}}'
        )
        return text.encode("utf-8")

    def leaf_hash(self, hash_fn: HashFn = sha256) -> bytes:
        """The entry's Merkle leaf hash: ``H(0x00 || encode())``."""
        return leaf_hash(self.encode(), hash_fn)

    @classmethod
    def decode(cls, data: bytes) -> AuditEntry:
        """The entry whose canonical encoding is ``data``; raises :class:`EntryInvalid` for any other bytes."""
        try:
            obj = json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_float=_refuse_float,
                parse_constant=_refuse_float,
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise EntryInvalid(f"entry is not canonical JSON: {exc}") from exc
        except RecursionError as exc:  # nesting deeper than the interpreter's limit: no entry nests at all
            raise EntryInvalid("entry is not canonical JSON: nested too deeply") from exc
        if not isinstance(obj, dict):
            raise EntryInvalid("entry is not a JSON object")
        if obj.get("v") != ENTRY_VERSION or isinstance(obj.get("v"), bool):
            raise EntryInvalid(f"entry version is not {ENTRY_VERSION}", field="v")
        if set(obj) != _MEMBERS:
            missing = sorted(_MEMBERS - set(obj))
            extra = sorted(set(obj) - _MEMBERS)
            raise EntryInvalid(
                "entry members are wrong",
                metadata={"missing": ",".join(missing), "unexpected": ",".join(extra)},
            )
        if not isinstance(obj["counts"], dict):
            raise EntryInvalid("counts must be an object", field="counts")
        if not isinstance(obj["person_keys"], list):
            raise EntryInvalid("person_keys must be an array", field="person_keys")
        entry = cls(
            time_us=obj["time_us"],
            request_id=obj["request_id"],
            caller=obj["caller"],
            province=obj["province"],
            subject=obj["subject"],
            method=obj["method"],
            purpose=obj["purpose"],
            outcome=obj["outcome"],
            counts=obj["counts"],
            person_keys=obj["person_keys"],
            payload_digest=obj["payload_digest"],
            batch_id=obj["batch_id"],
        )
        if entry.encode() != data:
            raise EntryInvalid("entry bytes are not in canonical form")
        return entry


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _refuse_float(text: str) -> Any:
    raise ValueError(f"non-integer number {text}")
