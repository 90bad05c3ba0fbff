"""The exchange log's tables in the hub's SQLite database (schema version 2).

:class:`AuditLedger` is used by the store's writer thread only: it appends entries inside the
transaction that holds the call's own writes, so an entry exists if and only if what it records
was committed, and entries get gapless indices in commit order. Its Merkle state is an
O(log n) compact range that follows the transaction: :meth:`AuditLedger.mark` before a
savepoint, :meth:`AuditLedger.reset` after a rollback.

The read functions take the store's audit reader connection.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.audit import AuditEntry, HashFn, MerkleAccumulator, TreeRangeInvalid, node_hash
from gateway.audit.archive import hash_function
from gateway.errors import StoreError
from gateway.store.base import AuditFilter
from gateway.store.engine import Connection, Engine

__all__ = [
    "BLOOM_THRESHOLD",
    "FOLD_ROWS",
    "STORED_LEVEL",
    "AuditLedger",
    "SqliteAuditSource",
    "StoreAuditSource",
    "bloom_has",
    "bloom_of",
    "list_entries",
    "read_checkpoints",
    "read_entries",
    "short_method",
    "stored_tree",
    "subtree_hash",
]

#: Entries with more person keys than this get a Bloom filter rather than index rows.
BLOOM_THRESHOLD = 64
#: Perfect subtrees of at least 2**STORED_LEVEL leaves are stored; smaller ones are recomputed.
STORED_LEVEL = 8
#: Person rows gathered in audit_persons_recent before they are folded into the index, in key order.
FOLD_ROWS = 65536
#: The largest integer a SQL ``INTEGER``/``BIGINT`` parameter holds (SQLite raises OverflowError past it,
#: PostgreSQL NumericValueOutOfRange). Indices and times stored are within it, which makes clamping exact.
_SQL_MAX = 2**63 - 1
_BLOOM_BITS_PER_KEY = 10
_BLOOM_PROBES = 4


def _bloom_positions(key: bytes, bits: int) -> Iterator[int]:
    digest = hashlib.blake2b(key, digest_size=4 * _BLOOM_PROBES).digest()
    for i in range(_BLOOM_PROBES):
        yield int.from_bytes(digest[4 * i : 4 * i + 4], "little") % bits


def bloom_of(keys: Sequence[bytes]) -> bytes:
    """A Bloom filter of ``keys`` (about 1 % false positives)."""
    bits = max(64, len(keys) * _BLOOM_BITS_PER_KEY + 7) // 8 * 8
    filt = bytearray(bits // 8)
    for key in keys:
        for pos in _bloom_positions(key, bits):
            filt[pos >> 3] |= 1 << (pos & 7)
    return bytes(filt)


def bloom_has(filt: bytes | None, key: bytes) -> bool:
    """Whether ``key`` may be in the filter (never False for a key that is)."""
    if not filt:
        return False
    bits = len(filt) * 8
    return all(filt[pos >> 3] & (1 << (pos & 7)) for pos in _bloom_positions(key, bits))


def short_method(method: str) -> str:
    """``CheckEnrollment`` of ``/hutong.v1.AssistanceQueryService/CheckEnrollment`` (or of itself)."""
    return method.rsplit("/", 1)[-1]


class AuditLedger:
    """Appends entries to the log inside the writer's transaction."""

    def __init__(self, hash_fn: HashFn) -> None:
        self.hash_fn = hash_fn
        self._tree = MerkleAccumulator(hash_fn)
        self._subtrees: list[tuple[int, int, bytes]] = []
        #: Rows of the open transaction's entries and their person keys, written by :meth:`save`.
        self._entries: list[tuple[Any, ...]] = []
        self._persons: list[tuple[bytes, int]] = []
        self._dirty = False
        self._recent = 0

    @property
    def size(self) -> int:
        """Entries appended (committed, or pending in the open transaction)."""
        return self._tree.size

    def root(self) -> bytes:
        """The root over every appended entry."""
        return self._tree.root()

    def load(self, con: Connection) -> None:
        """Resume from the stored compact range, after checking it against the stored entries.

        The size must match the entries table and every peak the hashes the entries give for its
        subtree (O(log n) reads): a tampered or torn tree state is refused, never signed.
        """
        size, hashes = stored_tree(con, self.hash_fn)
        count, last = con.execute("SELECT count(*), coalesce(max(seq), -1) FROM audit_entries").fetchone()
        if count != size or last != size - 1:
            raise StoreError(
                f"audit log holds {count} entries up to index {last}, but its tree state says {size}",
                reason="AUDIT_STATE_CORRUPT",
            )
        start = 0
        peaks_left = iter(hashes)  # leftmost, i.e. largest, first: one per set bit of size
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                expected = subtree_hash(con, start, start + (1 << level), self.hash_fn)
                if expected != next(peaks_left):
                    raise StoreError(
                        f"audit tree state disagrees with entries {start}..{start + (1 << level) - 1}",
                        reason="AUDIT_STATE_CORRUPT",
                    )
                start += 1 << level
        self._tree = self._accumulator(size, hashes)
        self._recent = con.execute("SELECT count(*) FROM audit_persons_recent").fetchone()[0]

    def follow(self, con: Connection) -> None:
        """Catch up with appends another writer committed (a hub replica on the same database).

        Called at the start of a write transaction, once the writer lock is held: the stored
        compact range is then the committed log's, and nobody else can move it until commit.
        """
        size, peaks = stored_tree(con, self.hash_fn)
        if size != self._tree.size:
            self._tree = self._accumulator(size, peaks)
            self._recent = con.execute("SELECT count(*) FROM audit_persons_recent").fetchone()[0]

    def _accumulator(self, size: int, peaks: Sequence[bytes]) -> MerkleAccumulator:
        return MerkleAccumulator(self.hash_fn, size=size, peaks=peaks, on_subtree=self._completed)

    def _completed(self, level: int, start: int, digest: bytes) -> None:
        if level >= STORED_LEVEL:
            self._subtrees.append((level, start, digest))

    def mark(self) -> tuple[int, tuple[bytes, ...], int, int, int]:
        """The state to return to if what follows is rolled back."""
        return self._tree.size, self._tree.peaks, len(self._entries), len(self._persons), len(self._subtrees)

    def reset(self, mark: tuple[int, tuple[bytes, ...], int, int, int]) -> None:
        """Forget appends after ``mark`` (their transaction or savepoint was rolled back)."""
        size, peaks, entries, persons, subtrees = mark
        self._tree = self._accumulator(size, peaks)
        del self._entries[entries:]
        del self._persons[persons:]
        del self._subtrees[subtrees:]

    def append(self, con: Connection, entries: Sequence[AuditEntry]) -> int:
        """Add ``entries`` in order to the open transaction; returns the index of the first.

        Their rows are written by :meth:`save`, with every other entry of the transaction: on a
        server that is one round trip per table for a group of calls, not two per call.
        """
        first = self._tree.size
        rows = []
        persons: list[tuple[bytes, int]] = []
        for offset, entry in enumerate(entries):
            seq = first + offset
            data = entry.encode()
            leaf = self.hash_fn(b"\x00" + data)
            self._tree.append(leaf)
            keys = [bytes.fromhex(k) for k in entry.person_keys]
            bloom = None
            if len(keys) > BLOOM_THRESHOLD:
                bloom = bloom_of(keys)
            else:
                persons.extend((key, seq) for key in keys)
            rows.append(
                (
                    seq, entry.time_us, entry.province, entry.method, entry.purpose,
                    entry.outcome, data, leaf, bloom,
                )
            )  # fmt: skip
        self._entries.extend(rows)
        self._persons.extend(persons)
        self._dirty = True
        return first

    def save(self, con: Connection) -> None:
        """Write the transaction's entries and the compact range, once per transaction, before it commits."""
        if self._entries:
            con.executemany("INSERT INTO audit_entries VALUES (?,?,?,?,?,?,?,?,?)", self._entries)
            self._entries.clear()
        if self._persons:
            con.executemany("INSERT INTO audit_persons_recent VALUES (?,?)", self._persons)
            self._recent += len(self._persons)
            self._persons.clear()
            if self._recent >= FOLD_ROWS:
                con.execute(
                    "INSERT INTO audit_persons SELECT person_key, seq FROM audit_persons_recent"
                    " ORDER BY person_key, seq"
                )
                con.execute("DELETE FROM audit_persons_recent")
                self._recent = 0
        if self._subtrees:
            con.executemany("INSERT INTO audit_subtrees VALUES (?,?,?)", self._subtrees)
            self._subtrees.clear()
        if self._dirty:
            con.execute(
                "UPDATE audit_tree SET size=?, peaks=? WHERE id=1", (self._tree.size, b"".join(self._tree.peaks))
            )
            self._dirty = False

    def add_checkpoint(self, con: Connection, size: int, time_us: int, note: str) -> None:
        """Store a signed checkpoint of ``size`` (one per size: a second one is ignored)."""
        con.execute("INSERT INTO audit_checkpoints VALUES (?,?,?) ON CONFLICT DO NOTHING", (size, time_us, note))


# -- reads ---------------------------------------------------------------------------------


def stored_tree(con: Connection, hash_fn: HashFn) -> tuple[int, list[bytes]]:
    """The committed tree's size and compact range (peaks, leftmost first), as stored."""
    row = con.execute("SELECT size, peaks FROM audit_tree WHERE id=1").fetchone()
    if row is None:
        raise StoreError("audit tree state is missing", reason="AUDIT_STATE_CORRUPT")
    size, peaks = row
    width = len(hash_fn(b""))
    if len(peaks) != width * size.bit_count():
        raise StoreError(
            f"audit tree state holds {len(peaks)} bytes of peaks; a tree of {size} entries has"
            f" {size.bit_count()} peaks of {width} bytes",
            reason="AUDIT_STATE_CORRUPT",
        )
    return size, [bytes(peaks[i : i + width]) for i in range(0, len(peaks), width)]


def read_entries(con: Connection, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
    """(entry bytes, leaf hash) of entries ``start .. end-1``, in order."""
    start, end = max(start, 0), min(end, _SQL_MAX)
    if start >= end:
        return
    for data, leaf in con.execute(
        "SELECT entry, leaf_hash FROM audit_entries WHERE seq >= ? AND seq < ? ORDER BY seq", (start, end)
    ):
        yield bytes(data), bytes(leaf)


def read_checkpoints(con: Connection, *, max_size: int | None = None) -> list[tuple[int, int, str]]:
    """(size, time_us, note) of stored checkpoints, ascending size."""
    limit = 2**63 - 1 if max_size is None else max_size
    return [
        (size, time_us, note)
        for size, time_us, note in con.execute(
            "SELECT size, time_us, note FROM audit_checkpoints WHERE size <= ? ORDER BY size", (limit,)
        )
    ]


def subtree_hash(con: Connection, start: int, end: int, hash_fn: HashFn) -> bytes:
    """``MTH(D[start:end])`` from stored subtree roots and leaf hashes.

    Proof paths only ask for ranges that split, RFC 9162 style, into perfect subtrees aligned
    on their size; those of 2**STORED_LEVEL leaves or more are read, smaller ones hashed.
    """
    n = end - start
    if n <= 0:
        raise TreeRangeInvalid(f"empty subtree {start}..{end}")
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        if level >= STORED_LEVEL:
            row = con.execute("SELECT hash FROM audit_subtrees WHERE level=? AND start=?", (level, start)).fetchone()
            if row is None:
                raise StoreError(f"audit subtree {start}..{end} is missing", reason="AUDIT_STATE_CORRUPT")
            return bytes(row[0])
        leaves = [bytes(h) for (h,) in con.execute(
            "SELECT leaf_hash FROM audit_entries WHERE seq >= ? AND seq < ? ORDER BY seq", (start, end)
        )]  # fmt: skip
        if len(leaves) != n:
            raise TreeRangeInvalid(f"the log holds no entries {start}..{end - 1}")
        while len(leaves) > 1:
            leaves = [node_hash(leaves[i], leaves[i + 1], hash_fn) for i in range(0, len(leaves), 2)]
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(subtree_hash(con, start, start + k, hash_fn), subtree_hash(con, start + k, end, hash_fn), hash_fn)


def _entries_at(con: Connection, seqs: Sequence[int]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out.update((seq, bytes(data)) for seq, data in con.execute(
            f"SELECT seq, entry FROM audit_entries WHERE seq IN ({marks})", chunk
        ))  # fmt: skip
    return out


def list_entries(con: Connection, filt: AuditFilter, *, after: int, limit: int, size: int) -> list[tuple[int, bytes]]:
    """Up to ``limit`` (index, entry bytes) matching ``filt`` with ``after <= index < size``, in order.

    Bounds beyond what SQL integers hold are clamped: every stored index and time lies in
    ``0 .. 2**63-1`` (as :class:`~gateway.audit.AuditEntry` requires), so the answer is the same.
    """
    after, size = max(after, 0), min(size, _SQL_MAX)
    # A time bound of 0 is none (AuditFilter); a negative since bounds nothing, a negative until excludes all.
    since, until = filt.since_us, filt.until_us
    if after >= size or limit <= 0 or since > _SQL_MAX or (until and until <= 0):
        return []
    where = ["seq >= ?", "seq < ?"]
    args: list[object] = [after, size]
    if since > 0:
        where.append("time_us >= ?")
        args.append(since)
    if 0 < until <= _SQL_MAX:  # past it, every stored time is below the bound
        where.append("time_us < ?")
        args.append(until)
    for column, value in (("province", filt.province), ("purpose", filt.purpose)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    suffix = ""
    if filt.method:
        # A full name matches itself; a short one the method of that name in any service
        # (``LIKE`` narrows the rows in both engines; the exact suffix is checked below).
        if "/" in filt.method:
            where.append("method = ?")
            args.append(filt.method)
        else:
            suffix = "/" + filt.method
            where.append("method LIKE ? ESCAPE '\\'")
            args.append("%/" + filt.method.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"))
    key = filt.person_key
    if key:
        # Batches carry a Bloom filter instead of index rows: they are tested here, in Python.
        where.append(
            "(seq IN (SELECT seq FROM audit_persons WHERE person_key = ? AND seq >= ?)"
            " OR seq IN (SELECT seq FROM audit_persons_recent WHERE person_key = ?)"
            " OR persons_bloom IS NOT NULL)"
        )
        args.extend((key, after, key))
    sql = f"SELECT seq, persons_bloom, method FROM audit_entries WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
    out: list[tuple[int, bytes]] = []
    wanted = key.hex()
    # A Bloom hit may be false: confirm against the entry itself, and read on until the page is full.
    while len(out) < limit:
        want = limit - len(out)
        rows = con.execute(sql, (*args, want)).fetchall()
        kept = [
            (seq, bloom is not None)
            for seq, bloom, method in rows
            if not (suffix and not method.endswith(suffix))
            and not (key and bloom is not None and not bloom_has(bytes(bloom), key))
        ]
        entries = _entries_at(con, [seq for seq, _ in kept])
        for seq, bloomed in kept:
            data = entries[seq]
            if bloomed and key and wanted not in json.loads(data)["person_keys"]:
                continue
            out.append((seq, data))
        if len(rows) < want:
            break
        args[0] = rows[-1][0] + 1
        if key:
            args[-2] = args[0]
    return out


class StoreAuditSource:
    """The exchange log of a hub database on any engine, read-only, for exports (an ``AuditSource``).

    Safe while the hub runs: it reads on a read-only connection, which never blocks the hub's
    writers, and entries below the committed size never change. Opened with :meth:`open`, on
    PostgreSQL every read of one export runs in one REPEATABLE READ READ ONLY transaction, so the
    size, the entries and the checkpoints are of one committed state however many replicas append
    meanwhile. On SQLite each read is its own WAL snapshot, which agrees just as well (the size is
    read first, the entries below it are fixed, and ``export_log`` skips checkpoints above it)
    without pinning the WAL, which could not restart from its beginning while a long export held
    one snapshot.
    """

    def __init__(
        self, con: Connection, *, origin: str, hash_name: str, verifier_key: str, key_binding: bytes | None
    ) -> None:
        self.origin = origin
        self.hash_name = hash_name
        self.verifier_key = verifier_key
        self._binding = key_binding
        #: A read-only connection, owned (closed by :meth:`close`).
        self._con = con

    @classmethod
    def open(
        cls, engine: Engine, *, origin: str, hash_name: str, verifier_key: str, key_binding: bytes | None
    ) -> StoreAuditSource:
        """The log in ``engine``'s database, on a new read-only connection; SCHEMA_TOO_OLD when it has none."""
        con = engine.connect(readonly=True)
        try:
            try:
                stored_tree(con, hash_function(hash_name))
            except engine.errors as exc:  # no audit_tree table: no schema yet, or one older than the log
                raise StoreError(
                    f"{engine.describe()} holds no exchange log: run `hutong hub migrate`, or start the hub once",
                    reason="SCHEMA_TOO_OLD",
                ) from exc
            if engine.shared:  # a server's snapshot costs little; a SQLite one would hold the WAL back
                con.execute(engine.snapshot)
        except BaseException:
            con.close()
            raise
        return cls(con, origin=origin, hash_name=hash_name, verifier_key=verifier_key, key_binding=key_binding)

    def tree_size(self) -> int:
        """Committed entries."""
        return stored_tree(self._con, hash_function(self.hash_name))[0]

    def read_entries(self, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        """(entry bytes, leaf hash) of entries ``start .. end-1``."""
        return read_entries(self._con, start, end)

    def checkpoints(self) -> Iterator[str]:
        """Signed checkpoint notes, ascending size."""
        return iter([note for _, _, note in read_checkpoints(self._con)])

    def key_binding(self) -> bytes | None:
        """The hub's key binding document, if it runs with TLS."""
        return self._binding

    def close(self) -> None:
        """Close the connection (and end the export's read transaction)."""
        self._con.close()


class SqliteAuditSource(StoreAuditSource):
    """The exchange log of a SQLite hub database file, opened read-only (``mode=ro``), for exports."""

    def __init__(
        self, database: Path, *, origin: str, hash_name: str, verifier_key: str, key_binding: bytes | None
    ) -> None:
        if not database.exists():
            raise StoreError(f"no hub database at {database}", reason="STORE_UNAVAILABLE")
        con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        con.execute("PRAGMA busy_timeout=10000")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version < 2:
            con.close()
            raise StoreError(
                f"{database} predates the exchange log (schema {version}); start the hub once to migrate it",
                reason="SCHEMA_TOO_OLD",
            )
        super().__init__(con, origin=origin, hash_name=hash_name, verifier_key=verifier_key, key_binding=key_binding)
