"""Tests of the exchange log in the hub's SQLite store: gateway.store.sqlite_audit and the audit side of SqliteStore.

Every test runs on a real SQLite file. Roots and proofs are checked three ways: against the
store, against the pure core (``gateway.audit``), and against a naive RFC 9162 reference below.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import (
    AuditEntry,
    HashFn,
    ProofInvalid,
    TreeRangeInvalid,
    consistency_proof,
    inclusion_proof,
    root_hash,
    sha256,
    sign_checkpoint,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from gateway.domain.identity import make_id_number
from gateway.domain.model import Enrollment, EnrollmentStatus, PersonRecord, Program
from gateway.domain.protection import FieldSealer, KeyMaterial, PersonKeyer, suite_hash
from gateway.domain.records import PreparedBatch, RecordPreparer
from gateway.errors import StoreError
from gateway.store import sqlite_audit
from gateway.store.base import AuditFilter, BatchAck, NodeRef
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_audit import BLOOM_THRESHOLD, STORED_LEVEL, bloom_has, bloom_of, read_checkpoints

CHECK = "/hutong.v1.AssistanceQueryService/CheckEnrollment"
BATCH_CHECK = "/hutong.v1.AssistanceQueryService/BatchCheckEnrollment"
LOOKUP = "/hutong.v1.AssistanceQueryService/LookupPerson"
SYNC = "/hutong.v1.RecordExchangeService/SyncRecords"
#: 2025-06-01T00:00:00Z in microseconds since the epoch.
T0 = 1_748_736_000_000_000
MINUTE_US = 60_000_000
ORIGIN = "hub.mca.example.gov.cn/audit"
#: Tree sizes on both sides of the stored-subtree boundaries (2**STORED_LEVEL = 256 leaves and its multiples).
TREE_SIZES = (1, 2, 255, 256, 257, 511, 512, 513, 600, 768, 1023, 1024, 1025)
INDICES = (0, 1, 127, 128, 254, 255, 256, 257, 383, 511, 512, 513, 767, 768, 1023, 1024)
NO_LIMIT = 1_000_000
#: The filter that matches every entry.
EVERYTHING = AuditFilter()
ANY_SIZE = 2**62


def person_key(n: int) -> str:
    """A 16-byte person key as hex, standing in for the hub's keyed hash of an ID number."""
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16, person=b"hutong-test").hexdigest()


def audit_entry(
    n: int,
    *,
    time_us: int | None = None,
    province: str = "440000",
    method: str = CHECK,
    purpose: str = "duplicate-check",
    outcome: str = "OK",
    keys: Sequence[str] | None = None,
    batch_id: str = "",
) -> AuditEntry:
    """The entry of call ``n``: by default a CheckEnrollment about one person, a millisecond after the previous."""
    node = f"hutong://province/{province}/node/n-01"
    person_keys = (person_key(n),) if keys is None else tuple(keys)
    return AuditEntry(
        time_us=T0 + n * 1_000 if time_us is None else time_us,
        request_id=f"req-{n:06d}",
        caller=node,
        province=province,
        subject=node,
        method=method,
        purpose=purpose,
        outcome=outcome,
        counts={"persons": len(person_keys), "matched": n % 2},
        person_keys=person_keys,
        payload_digest=hashlib.sha256(f"payload-{n}".encode()).hexdigest(),
        batch_id=batch_id,
    )


def numbered(start: int, end: int) -> list[AuditEntry]:
    return [audit_entry(n) for n in range(start, end)]


def leaves_of(entries: Sequence[AuditEntry], hash_fn: HashFn = sha256) -> list[bytes]:
    return [e.leaf_hash(hash_fn) for e in entries]


class Rfc9162:
    """A naive reference written straight from RFC 9162 section 2.1 on leaf hashes (memoised, no shortcuts)."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = list(leaves)
        self._memo: dict[tuple[int, int], bytes] = {}

    @staticmethod
    def _k(n: int) -> int:
        k = 1
        while k * 2 < n:
            k *= 2
        return k

    def mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end])."""
        n = end - start
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return self.leaves[start]
        if (start, end) not in self._memo:
            k = self._k(n)
            left, right = self.mth(start, start + k), self.mth(start + k, end)
            self._memo[(start, end)] = hashlib.sha256(b"\x01" + left + right).digest()
        return self._memo[(start, end)]

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        """PATH(m, D[start:end])."""
        n = end - start
        if n == 1:
            return []
        k = self._k(n)
        if m < k:
            return [*self.path(m, start, start + k), self.mth(start + k, end)]
        return [*self.path(m - k, start + k, end), self.mth(start, start + k)]

    def subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        """SUBPROOF(m, D[start:end], b)."""
        n = end - start
        if m == n:
            return [] if whole else [self.mth(start, end)]
        k = self._k(n)
        if m <= k:
            return [*self.subproof(m, start, start + k, whole), self.mth(start + k, end)]
        return [*self.subproof(m - k, start + k, end, False), self.mth(start, start + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[0:n]); empty from the empty tree and from a tree to itself."""
        return [] if m in (0, n) else self.subproof(m, 0, n, True)


@contextlib.contextmanager
def raw_database(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the store's file, behind the store's back."""
    con = sqlite3.connect(db_path, isolation_level=None)
    try:
        yield con
    finally:
        con.close()


async def listed(store: SqliteStore, filt: AuditFilter = EVERYTHING, *, size: int = ANY_SIZE) -> list[int]:
    """Indices of every entry matching ``filt`` below ``size``."""
    return [i for i, _ in await store.audit_entries(filt, after=0, limit=NO_LIMIT, size=size)]


async def assert_log_holds(store: SqliteStore, entries: Sequence[AuditEntry]) -> None:
    """The committed log is exactly ``entries`` at indices 0, 1, 2, ...; its tree covers them all."""
    rows = await store.audit_entries(EVERYTHING, after=0, limit=NO_LIMIT, size=ANY_SIZE)
    assert [i for i, _ in rows] == list(range(len(entries)))
    assert [data for _, data in rows] == [e.encode() for e in entries]
    assert await store.audit_tree() == (len(entries), root_hash(leaves_of(entries)))


@contextlib.asynccontextmanager
async def writer_held(store: SqliteStore) -> AsyncIterator[None]:
    """Keep the writer thread busy: writes queued inside the block are committed as one group."""
    started, release = threading.Event(), threading.Event()

    def block(con: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    blocker = asyncio.ensure_future(store._write(block))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    try:
        yield
        await asyncio.sleep(0)  # let the tasks created in the block queue their writes, in order
    finally:
        release.set()
        await blocker


class JobFailed(Exception):
    """A write that fails after it appended audit entries."""


class WriterAborted(BaseException):
    """Something no job catches (like KeyboardInterrupt in the writer): the whole group is rolled back."""


# -- appends and the tree ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 600, 1025])
async def test_one_append_gets_gapless_indices_and_an_rfc9162_root(store: SqliteStore, size: int) -> None:
    entries = numbered(0, size)
    assert await store.append_audit(entries) == 0
    await assert_log_holds(store, entries)
    assert (await store.audit_tree())[1] == Rfc9162(leaves_of(entries)).mth(0, size)


async def test_successive_appends_continue_the_indices_and_the_root_follows_every_size(store: SqliteStore) -> None:
    assert await store.audit_tree() == (0, hashlib.sha256(b"").digest())
    entries: list[AuditEntry] = []
    for size in TREE_SIZES:
        new = numbered(len(entries), size)
        assert await store.append_audit(new) == len(entries)
        entries += new
        assert await store.audit_tree() == (size, Rfc9162(leaves_of(entries)).mth(0, size))
    await assert_log_holds(store, entries)


async def test_each_entry_is_stored_with_its_leaf_hash(store: SqliteStore) -> None:
    entries = numbered(0, 300)
    await store.append_audit(entries)
    for index in (0, 255, 256, 299):
        assert await store.audit_entry(index) == (entries[index].encode(), entries[index].leaf_hash())
    assert await store.audit_entry(300) is None


async def test_every_completed_subtree_of_stored_level_is_stored_with_its_root(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    entries = numbered(0, 1025)
    # Several appends, so that subtrees complete both inside one append and across two.
    for start, end in ((0, 200), (200, 300), (300, 700), (700, 1025)):
        await sqlite_store.append_audit(entries[start:end])
    ref = Rfc9162(leaves_of(entries))
    with raw_database(db_path) as con:
        stored = {(level, start): bytes(h) for level, start, h in con.execute("SELECT * FROM audit_subtrees")}
    expected = {
        (level, start): ref.mth(start, start + (1 << level))
        for level in range(STORED_LEVEL, 11)
        for start in range(0, 1025 - (1 << level) + 1, 1 << level)
    }
    assert stored == expected
    assert set(stored) == {(8, 0), (8, 256), (8, 512), (8, 768), (9, 0), (9, 512), (10, 0)}


async def test_the_tree_follows_the_configured_hash(db_path: Path) -> None:
    sm3 = suite_hash("sm")
    store = SqliteStore(db_path, audit_hash=sm3)
    await store.open()
    try:
        entries = numbered(0, 300)
        await store.append_audit(entries)
        leaves = leaves_of(entries, sm3)
        size, root = await store.audit_tree()
        assert (size, root) == (300, root_hash(leaves, sm3))
        assert root != root_hash(leaves_of(entries))
        assert await store.audit_entry(7) == (entries[7].encode(), leaves[7])
        verify_inclusion(leaves[7], 7, 300, await store.inclusion_proof(7, 300), root, sm3)
        verify_consistency(256, 300, root_hash(leaves[:256], sm3), root, await store.consistency_proof(256, 300), sm3)
    finally:
        await store.close()


# -- proofs -----------------------------------------------------------------------------------


#: Every person row, folded into the index or still recent.
PERSON_ROWS = "(SELECT person_key, seq FROM audit_persons UNION ALL SELECT person_key, seq FROM audit_persons_recent)"


@pytest.fixture
async def log_1025(store: SqliteStore) -> tuple[SqliteStore, list[bytes]]:
    """A store holding 1025 entries, and their leaf hashes."""
    entries = numbered(0, 1025)
    await store.append_audit(entries)
    return store, leaves_of(entries)


async def test_inclusion_proofs_equal_the_reference_and_verify(log_1025: tuple[SqliteStore, list[bytes]]) -> None:
    store, leaves = log_1025
    ref = Rfc9162(leaves)
    checked = 0
    for size in TREE_SIZES:
        root = ref.mth(0, size)
        for index in sorted({i for i in INDICES if i < size} | {size - 1}):
            proof = await store.inclusion_proof(index, size)
            assert proof == ref.path(index, 0, size), (index, size)
            assert proof == inclusion_proof(leaves, index, size)
            verify_inclusion(leaves[index], index, size, proof, root)
            checked += 1
    assert checked > 100
    # The proof is of that leaf: its neighbour does not verify with it.
    with pytest.raises(ProofInvalid):
        verify_inclusion(leaves[257], 256, 1025, await store.inclusion_proof(256, 1025), ref.mth(0, 1025))


async def test_consistency_proofs_equal_the_reference_and_verify(log_1025: tuple[SqliteStore, list[bytes]]) -> None:
    store, leaves = log_1025
    ref = Rfc9162(leaves)
    for new_size in TREE_SIZES:
        for old_size in (0, *TREE_SIZES):
            if old_size > new_size:
                continue
            proof = await store.consistency_proof(old_size, new_size)
            assert proof == ref.proof(old_size, new_size), (old_size, new_size)
            assert proof == consistency_proof(leaves, old_size, new_size)
            verify_consistency(old_size, new_size, ref.mth(0, old_size), ref.mth(0, new_size), proof)


async def test_proofs_outside_the_tree_are_tree_range_invalid(log_1025: tuple[SqliteStore, list[bytes]]) -> None:
    store, _ = log_1025
    for index, size in [(-1, 10), (10, 10), (11, 10), (0, 0), (1025, 1025), (0, 1026), (1024, 1030)]:
        with pytest.raises(TreeRangeInvalid):
            await store.inclusion_proof(index, size)
    for old_size, new_size in [(10, 5), (-1, 5), (1025, 1026), (1000, 1030), (257, 1100)]:
        with pytest.raises(TreeRangeInvalid):
            await store.consistency_proof(old_size, new_size)


async def test_inclusion_proof_of_an_entry_past_the_log_is_tree_range_invalid(
    log_1025: tuple[SqliteStore, list[bytes]],
) -> None:
    store, _ = log_1025
    with pytest.raises(TreeRangeInvalid):
        await store.inclusion_proof(1025, 1026)


async def test_inclusion_proof_in_a_tree_past_the_log_is_tree_range_invalid_not_corruption(
    log_1025: tuple[SqliteStore, list[bytes]],
) -> None:
    store, _ = log_1025
    with pytest.raises(TreeRangeInvalid):
        await store.inclusion_proof(0, 2048)


async def test_consistency_proof_to_a_tree_past_the_log_is_tree_range_invalid_not_corruption(
    log_1025: tuple[SqliteStore, list[bytes]],
) -> None:
    store, _ = log_1025
    with pytest.raises(TreeRangeInvalid):
        await store.consistency_proof(1024, 2048)


# -- restart ----------------------------------------------------------------------------------


async def test_reopened_store_resumes_the_same_tree_and_extends_it(db_path: Path) -> None:
    entries = numbered(0, 300)
    first = SqliteStore(db_path)
    await first.open()
    await first.append_audit(entries)
    old_size, old_root = await first.audit_tree()
    await first.close()

    second = SqliteStore(db_path)
    await second.open()
    try:
        assert await second.audit_tree() == (old_size, old_root)
        more = numbered(300, 600)
        assert await second.append_audit(more) == 300
        entries += more
        leaves = leaves_of(entries)
        new_size, new_root = await second.audit_tree()
        assert (new_size, new_root) == (600, root_hash(leaves))
        verify_consistency(300, 600, old_root, new_root, await second.consistency_proof(300, 600))
        # Subtrees 256..511 and 0..511 were completed after the restart: proofs across it read them.
        for index in (0, 255, 256, 299, 300, 511, 512, 599):
            proof = await second.inclusion_proof(index, 600)
            assert proof == inclusion_proof(leaves, index, 600)
            verify_inclusion(leaves[index], index, 600, proof, new_root)
        await assert_log_holds(second, entries)
        # The same object closes and opens again.
        await second.close()
        await second.open()
        assert await second.audit_tree() == (new_size, new_root)
        assert await second.append_audit(numbered(600, 601)) == 600
    finally:
        await second.close()


CORRUPTIONS = {
    "size past the peaks": "UPDATE audit_tree SET size = 7",
    "size with as many peaks": "UPDATE audit_tree SET size = 5",
    "size zero": "UPDATE audit_tree SET size = 0, peaks = x''",
    "a peak cut off": "UPDATE audit_tree SET peaks = substr(peaks, 1, 32)",
    "last entry deleted": "DELETE FROM audit_entries WHERE seq = 5",
    "middle entry deleted": "DELETE FROM audit_entries WHERE seq = 2",
    "entry added behind the tree's back": (
        "INSERT INTO audit_entries SELECT 6, time_us, province, method, purpose, outcome, entry, leaf_hash,"
        " persons_bloom FROM audit_entries WHERE seq = 5"
    ),
}


@pytest.mark.parametrize(
    "sql",
    [
        *(pytest.param(sql, id=name) for name, sql in CORRUPTIONS.items()),
        pytest.param(
            "UPDATE audit_tree SET peaks = zeroblob(64)",
            id="peaks overwritten",
        ),
        pytest.param(
            "UPDATE audit_tree SET peaks = substr(peaks, 1, 63)",
            id="peaks one byte short",
        ),
        pytest.param(
            "DELETE FROM audit_tree",
            id="tree row deleted",
        ),
    ],
)
async def test_corrupt_tree_state_stops_open(db_path: Path, sql: str) -> None:
    store = SqliteStore(db_path)
    await store.open()
    await store.append_audit(numbered(0, 6))
    await store.close()
    with raw_database(db_path) as con:
        con.execute(sql)
    reopened = SqliteStore(db_path)
    try:
        with pytest.raises(StoreError) as caught:
            await reopened.open()
    finally:
        await reopened.close()  # open() leaves the writer running when it fails
    assert caught.value.reason == "AUDIT_STATE_CORRUPT"


# -- transactions -----------------------------------------------------------------------------


async def test_a_job_failing_after_its_appends_leaves_no_gap_in_the_group(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    committed = numbered(0, 250)
    await sqlite_store.append_audit(committed)
    before = numbered(250, 253)
    doomed = [audit_entry(n, outcome="INTERNAL") for n in range(9000, 9010)]  # would complete subtree 0..255
    after = numbered(253, 263)  # completes subtree 0..255 again, with other leaves

    def fail(con: sqlite3.Connection) -> None:
        sqlite_store._ledger.append(con, doomed)
        raise JobFailed("the job's own write failed after its audit entries")

    def probe(con: sqlite3.Connection) -> tuple[int, int]:
        # Inside the group's transaction the tree row is saved only at its end.
        return con.execute("SELECT size FROM audit_tree").fetchone()[0], sqlite_store._ledger.size

    async with writer_held(sqlite_store):
        jobs = [
            asyncio.ensure_future(sqlite_store.append_audit(before)),
            asyncio.ensure_future(sqlite_store._write(fail)),
            asyncio.ensure_future(sqlite_store.append_audit(after)),
            asyncio.ensure_future(sqlite_store._write(probe)),
        ]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert results[0] == 250
    assert isinstance(results[1], JobFailed)
    assert results[2] == 253
    assert results[3] == (250, 263), "the four writes were not committed as one group"
    entries = committed + before + after
    await assert_log_holds(sqlite_store, entries)
    leaves = leaves_of(entries)
    with raw_database(db_path) as con:
        assert con.execute("SELECT hash FROM audit_subtrees WHERE level=8 AND start=0").fetchone()[0] == root_hash(
            leaves[:256]
        )
        assert con.execute(f"SELECT count(*) FROM {PERSON_ROWS}").fetchone()[0] == len(entries)
    verify_inclusion(leaves[255], 255, 263, await sqlite_store.inclusion_proof(255, 263), root_hash(leaves))
    # The stored tree state agrees with the entries table (open() checks it).
    await sqlite_store.close()
    await sqlite_store.open()
    await assert_log_holds(sqlite_store, entries)


async def test_a_group_rolled_back_as_a_whole_takes_its_appends_with_it(store: SqliteStore) -> None:
    committed = numbered(0, 254)
    await store.append_audit(committed)

    def abort(con: sqlite3.Connection) -> None:
        store._ledger.append(con, numbered(9000, 9003))
        raise WriterAborted

    async with writer_held(store):
        jobs = [
            asyncio.ensure_future(store.append_audit(numbered(254, 258))),
            asyncio.ensure_future(store._write(abort)),
        ]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(isinstance(r, WriterAborted) for r in results)
    await assert_log_holds(store, committed)
    # The next append takes the next index, and the subtree the rolled-back group had completed is stored anew.
    retried = numbered(254, 258)
    assert await store.append_audit(retried) == 254
    entries = committed + retried
    await assert_log_holds(store, entries)
    leaves = leaves_of(entries)
    verify_consistency(256, 258, root_hash(leaves[:256]), root_hash(leaves), await store.consistency_proof(256, 258))


# -- SyncRecords batches ----------------------------------------------------------------------

GZ = NodeRef("440000", "gz-01")
KEYS = KeyMaterial(person_key_secret=b"s" * 32, sealing_keys={"k1": b"k" * 32}, active_key_id="k1")
PREPARER = RecordPreparer(PersonKeyer(KEYS.person_key_secret), FieldSealer(KEYS), today=dt.date(2025, 6, 1))


def prepared_batch(record_id: str = "r-1", version: int = 1) -> PreparedBatch:
    """A batch of one valid DIBAO record of Guangdong (content hash over every field)."""
    rec = PersonRecord(
        record_id=record_id,
        version=version,
        id_number=make_id_number("440106", dt.date(1960, 5, 6), 123),
        name="张三丰",
        gender=0,
        birth_date=None,
        hukou_division="440106",
        residence_division="440106",
        household_id="",
        enrollments=(Enrollment(Program.DIBAO, EnrollmentStatus.ACTIVE, dt.date(2020, 1, 1), None, 80_000, "440106"),),
        updated_at_us=0,
    )
    rec = dataclasses.replace(rec, content_hash=hashlib.blake2b(repr(rec).encode(), digest_size=16).digest())
    return PREPARER.prepare_batch(GZ.province_code, [rec], [])


def digest_of(batch: PreparedBatch) -> bytes:
    return hashlib.sha256(b"".join(r.content_hash for r in batch.records)).digest()


def batch_entry(n: int, batch_id: str, batch: PreparedBatch, seen: list[BatchAck]) -> Callable[[BatchAck], AuditEntry]:
    """Builds the batch's entry from its acknowledgement, as the hub's recorder does; remembers the acks."""

    def build(ack: BatchAck) -> AuditEntry:
        seen.append(ack)
        counts = {o.name.lower(): c for o, c in ack.counts().items() if c}
        counts["records"] = len(ack.record_outcomes)
        if ack.replayed:
            counts["replayed"] = 1
        refused = ack.batch_rejection
        return dataclasses.replace(
            audit_entry(
                n, method=SYNC, purpose="", batch_id=batch_id, keys=[r.person_key.hex() for r in batch.records]
            ),
            outcome="OK" if refused is None else refused.code_name,
            counts=counts,
        )

    return build


async def test_batch_entries_are_built_from_the_ack_also_for_a_replay_and_a_refused_reuse(store: SqliteStore) -> None:
    batch = prepared_batch()
    seen: list[BatchAck] = []
    first = await store.apply_batch(GZ, "b-1", digest_of(batch), batch, batch_entry(0, "b-1", batch, seen))
    replay = await store.apply_batch(GZ, "b-1", digest_of(batch), batch, batch_entry(1, "b-1", batch, seen))
    other = prepared_batch(version=2)
    refused = await store.apply_batch(GZ, "b-1", digest_of(other), other, batch_entry(2, "b-1", other, seen))
    assert not first.replayed
    assert replay.replayed
    assert refused.batch_rejection is not None
    assert seen == [first, replay, refused]
    decoded = [AuditEntry.decode(data) for _, data in await store.audit_entries(EVERYTHING, after=0, limit=10, size=10)]
    assert [dict(e.counts) for e in decoded] == [
        {"created": 1, "records": 1},
        {"created": 1, "records": 1, "replayed": 1},
        {"records": 0},
    ]
    assert [e.outcome for e in decoded] == ["OK", "OK", "FAILED_PRECONDITION"]
    assert {e.batch_id for e in decoded} == {"b-1"}
    assert decoded[0].person_keys == (batch.records[0].person_key.hex(),)
    assert await store.audit_tree() == (3, root_hash([e.leaf_hash() for e in decoded]))
    assert (await store.sync_state(GZ)).batches_applied == 1
    # Each batch entry has few keys, so the person index finds them.
    assert await listed(store, AuditFilter(person_key=batch.records[0].person_key, method="SyncRecords")) == [0, 1, 2]


async def test_a_failing_audit_callback_rolls_back_the_batch_with_it(store: SqliteStore) -> None:
    committed = numbered(0, 3)
    await store.append_audit(committed)
    batch = prepared_batch()
    built: list[BatchAck] = []

    def broken(ack: BatchAck) -> AuditEntry:
        built.append(ack)
        raise JobFailed("cannot build the entry")

    with pytest.raises(JobFailed):
        await store.apply_batch(GZ, "b-1", digest_of(batch), batch, broken)
    assert len(built) == 1  # the batch had been written when the callback failed
    state = await store.sync_state(GZ)
    assert (state.batches_applied, state.records_held) == (0, 0)
    assert await store.enrollments_of([batch.records[0].person_key]) == {}
    await assert_log_holds(store, committed)
    # Nothing of it remains: the same batch id applies afresh, and its entry takes the next index.
    seen: list[BatchAck] = []
    ack = await store.apply_batch(GZ, "b-1", digest_of(batch), batch, batch_entry(3, "b-1", batch, seen))
    assert not ack.replayed
    assert await listed(store, AuditFilter(method=SYNC)) == [3]
    assert (await store.audit_tree())[0] == 4


# -- checkpoints ------------------------------------------------------------------------------


async def test_checkpoints_sign_the_committed_tree_once_per_size(sqlite_store: SqliteStore, db_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    signed: list[tuple[int, bytes]] = []

    def signer(time_us: int) -> Callable[[int, bytes], tuple[int, str]]:
        def sign(size: int, root: bytes) -> tuple[int, str]:
            signed.append((size, root))
            return time_us, sign_checkpoint(ORIGIN, size, root, ORIGIN, key, time_us=time_us)

        return sign

    assert await sqlite_store.latest_checkpoint() is None
    with raw_database(db_path) as con:
        assert read_checkpoints(con) == []
    await sqlite_store.append_audit(numbered(0, 300))
    first = await sqlite_store.add_checkpoint(signer(T0 + 1))
    assert first is not None
    tree_300 = await sqlite_store.audit_tree()
    assert signed == [tree_300]
    assert first[0] == 300
    checkpoint = verify_checkpoint(first[1], ORIGIN, key.public_key(), origin=ORIGIN)
    assert (checkpoint.size, checkpoint.root_hash, checkpoint.time_us) == (300, tree_300[1], T0 + 1)

    assert await sqlite_store.add_checkpoint(signer(T0 + 2)) is None  # same size: not signed again
    assert len(signed) == 1

    await sqlite_store.append_audit(numbered(300, 305))
    second = await sqlite_store.add_checkpoint(signer(T0 + 3))
    assert second is not None
    assert second[0] == 305
    assert signed[-1] == await sqlite_store.audit_tree()

    assert await sqlite_store.latest_checkpoint() == second
    assert await sqlite_store.checkpoint_at(300) == first[1]
    assert await sqlite_store.checkpoint_at(305) == second[1]
    assert await sqlite_store.checkpoint_at(301) is None
    assert await sqlite_store.recent_checkpoints(1) == [(305, T0 + 3, second[1])]
    assert await sqlite_store.recent_checkpoints(10) == [(305, T0 + 3, second[1]), (300, T0 + 1, first[1])]
    with raw_database(db_path) as con:  # as an export reads them
        assert read_checkpoints(con) == [(300, T0 + 1, first[1]), (305, T0 + 3, second[1])]
        assert read_checkpoints(con, max_size=304) == [(300, T0 + 1, first[1])]
    # The two signed roots are of one log.
    verify_consistency(300, 305, signed[0][1], signed[1][1], await sqlite_store.consistency_proof(300, 305))


async def test_a_checkpoint_in_a_group_covers_the_writes_committed_before_it_and_nothing_else(
    store: SqliteStore,
) -> None:
    key = Ed25519PrivateKey.generate()
    await store.append_audit(numbered(0, 10))
    signed: list[tuple[int, bytes]] = []

    def sign(size: int, root: bytes) -> tuple[int, str]:
        signed.append((size, root))
        return T0, sign_checkpoint(ORIGIN, size, root, ORIGIN, key, time_us=T0)

    def fail(con: sqlite3.Connection) -> None:
        store._ledger.append(con, numbered(9000, 9005))
        raise JobFailed("rolled back")

    async with writer_held(store):
        jobs = [
            asyncio.ensure_future(store.append_audit(numbered(10, 13))),
            asyncio.ensure_future(store._write(fail)),
            asyncio.ensure_future(store.add_checkpoint(sign)),
            asyncio.ensure_future(store.append_audit(numbered(13, 15))),
        ]
    results: list[Any] = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(results[1], JobFailed)
    entries = numbered(0, 15)
    assert signed == [(13, root_hash(leaves_of(entries[:13])))]
    assert results[2] == (13, await store.checkpoint_at(13))
    await assert_log_holds(store, entries)
    verify_consistency(13, 15, signed[0][1], root_hash(leaves_of(entries)), await store.consistency_proof(13, 15))


# -- searching the log ------------------------------------------------------------------------

_rng = random.Random(2025)
#: Persons the small entries are about.
POOL = [person_key(100_000 + i) for i in range(8)]
#: The persons of a sync batch: more than BLOOM_THRESHOLD, so its entries carry a Bloom filter; includes POOL[0].
BIG = [POOL[0], *(_rng.randbytes(16).hex() for _ in range(120))]
#: Exactly BLOOM_THRESHOLD persons: still indexed row by row; includes POOL[1].
AT_THRESHOLD = [POOL[1], *(_rng.randbytes(16).hex() for _ in range(BLOOM_THRESHOLD - 1))]


def _false_positive() -> str:
    big = bloom_of([bytes.fromhex(k) for k in BIG])
    while True:
        candidate = _rng.randbytes(16)
        if bloom_has(big, candidate) and candidate.hex() not in BIG:
            return candidate.hex()


#: Not a person of BIG, but BIG's Bloom filter says it may be.
FALSE_POSITIVE = _false_positive()


def _corpus() -> list[AuditEntry]:
    rng = random.Random(7)
    out: list[AuditEntry] = []
    for n in range(60):
        time_us = T0 + rng.randrange(40) * MINUTE_US  # answered out of index order, as concurrent calls are
        province = rng.choice(["440000", "410000", "510000"])
        if n % 9 == 4:
            out.append(audit_entry(n, time_us=time_us, province=province, method=SYNC, purpose="", keys=BIG))
        elif n == 30:
            out.append(audit_entry(n, time_us=time_us, province=province, method=SYNC, purpose="", keys=AT_THRESHOLD))
        else:
            keys = rng.sample(POOL, rng.randint(1, 3)) + ([FALSE_POSITIVE] if n % 11 == 7 else [])
            method = rng.choice([CHECK, CHECK, BATCH_CHECK, LOOKUP])
            purpose = rng.choice(["duplicate-check", "eligibility-review", "cross-region-application"])
            out.append(audit_entry(n, time_us=time_us, province=province, method=method, purpose=purpose, keys=keys))
    return out


CORPUS = _corpus()


def matches(entry: AuditEntry, filt: AuditFilter) -> bool:
    """What an auditor means by the filter, written independently of the store's SQL."""
    if filt.method.startswith("/"):
        method_ok = entry.method == filt.method
    else:
        method_ok = not filt.method or entry.method.endswith("/" + filt.method)
    return (
        method_ok
        and (not filt.since_us or entry.time_us >= filt.since_us)
        and (not filt.until_us or entry.time_us < filt.until_us)
        and (not filt.province or entry.province == filt.province)
        and (not filt.purpose or entry.purpose == filt.purpose)
        and (not filt.person_key or filt.person_key.hex() in entry.person_keys)
    )


FILTERS = {
    "everything": EVERYTHING,
    "since": AuditFilter(since_us=T0 + 20 * MINUTE_US),
    "until": AuditFilter(until_us=T0 + 20 * MINUTE_US),
    "window": AuditFilter(since_us=T0 + 10 * MINUTE_US, until_us=T0 + 25 * MINUTE_US),
    "province": AuditFilter(province="410000"),
    "short method": AuditFilter(method="CheckEnrollment"),
    "full method": AuditFilter(method=CHECK),
    "other short method": AuditFilter(method="BatchCheckEnrollment"),
    "purpose": AuditFilter(purpose="eligibility-review"),
    "person in small and Bloom entries": AuditFilter(person_key=bytes.fromhex(POOL[0])),
    "person in small and threshold entries": AuditFilter(person_key=bytes.fromhex(POOL[1])),
    "person only in a threshold entry": AuditFilter(person_key=bytes.fromhex(AT_THRESHOLD[-1])),
    "person only in Bloom entries": AuditFilter(person_key=bytes.fromhex(BIG[-1])),
    "Bloom false positive": AuditFilter(person_key=bytes.fromhex(FALSE_POSITIVE)),
    "person nowhere": AuditFilter(person_key=bytes(16)),
    "all at once": AuditFilter(
        since_us=T0 + 5 * MINUTE_US, until_us=T0 + 35 * MINUTE_US, province="440000", person_key=bytes.fromhex(POOL[0])
    ),
}


@pytest.fixture
async def corpus(store: SqliteStore) -> SqliteStore:
    await store.append_audit(CORPUS)
    return store


@pytest.mark.parametrize("filt", FILTERS.values(), ids=FILTERS.keys())
async def test_filters_page_through_exactly_the_matching_entries(corpus: SqliteStore, filt: AuditFilter) -> None:
    expected = [i for i, e in enumerate(CORPUS) if matches(e, filt)]
    assert await listed(corpus, filt) == expected
    for limit in (1, 2, 5):
        pages: list[list[int]] = []
        after = 0
        while True:
            page = await corpus.audit_entries(filt, after=after, limit=limit, size=ANY_SIZE)
            pages.append([i for i, _ in page])
            assert [data for _, data in page] == [CORPUS[i].encode() for i, _ in page]
            if len(page) < limit:
                break
            after = page[-1][0] + 1
        assert [i for page_ in pages for i in page_] == expected
        assert all(len(p) == limit for p in pages[:-1])
    for size in (0, 1, 23, 31, 59):
        assert await listed(corpus, filt, size=size) == [i for i in expected if i < size]


async def test_the_corpus_exercises_both_person_indexes(sqlite_store: SqliteStore, db_path: Path) -> None:
    corpus = sqlite_store
    await corpus.append_audit(CORPUS)
    bloom_entries = [i for i, e in enumerate(CORPUS) if len(e.person_keys) > BLOOM_THRESHOLD]
    with raw_database(db_path) as con:
        with_bloom = [seq for (seq,) in con.execute("SELECT seq FROM audit_entries WHERE persons_bloom IS NOT NULL")]
        indexed = {seq for (seq,) in con.execute(f"SELECT DISTINCT seq FROM {PERSON_ROWS}")}
        threshold_rows = con.execute(f"SELECT count(*) FROM {PERSON_ROWS} WHERE seq = 30").fetchone()[0]
    assert with_bloom == bloom_entries
    assert len(bloom_entries) >= 5
    assert indexed == set(range(len(CORPUS))) - set(bloom_entries)
    assert threshold_rows == BLOOM_THRESHOLD
    # The false-positive key passes every Bloom entry's filter, yet only the small entries holding it are found.
    with raw_database(db_path) as con:
        filters = [bytes(f) for (f,) in con.execute("SELECT persons_bloom FROM audit_entries WHERE seq IN (4, 13)")]
    assert all(bloom_has(f, bytes.fromhex(FALSE_POSITIVE)) for f in filters)
    assert await listed(corpus, FILTERS["Bloom false positive"]) == [
        i for i, e in enumerate(CORPUS) if FALSE_POSITIVE in e.person_keys
    ]


async def test_false_positives_do_not_shorten_a_page(store: SqliteStore) -> None:
    # Ten Bloom entries in a row that the key is a false positive for, then entries that do hold it.
    entries = [audit_entry(n, method=SYNC, keys=BIG) for n in range(10)]
    entries += [audit_entry(10, keys=[FALSE_POSITIVE])]
    entries += [audit_entry(n, method=SYNC, keys=BIG) for n in range(11, 21)]
    entries += [audit_entry(21, keys=[FALSE_POSITIVE, POOL[2]]), audit_entry(22, keys=[FALSE_POSITIVE])]
    await store.append_audit(entries)
    filt = AuditFilter(person_key=bytes.fromhex(FALSE_POSITIVE))
    assert [i for i, _ in await store.audit_entries(filt, after=0, limit=2, size=ANY_SIZE)] == [10, 21]
    assert [i for i, _ in await store.audit_entries(filt, after=11, limit=2, size=ANY_SIZE)] == [21, 22]
    assert [i for i, _ in await store.audit_entries(filt, after=22, limit=2, size=ANY_SIZE)] == [22]
    assert await store.audit_entries(filt, after=23, limit=2, size=ANY_SIZE) == []
    assert [i for i, _ in await store.audit_entries(filt, after=0, limit=5, size=22)] == [10, 21]


def test_bloom_filter_has_no_false_negatives_and_few_false_positives() -> None:
    rng = random.Random(9162)
    keys = [rng.randbytes(16) for _ in range(5000)]
    filt = bloom_of(keys)
    assert all(bloom_has(filt, k) for k in keys)
    present = set(keys)
    absent = [k for k in (rng.randbytes(16) for _ in range(20_000)) if k not in present]
    false_positives = sum(bloom_has(filt, k) for k in absent)
    assert false_positives / len(absent) < 0.03


@pytest.mark.parametrize("count", [0, 1, BLOOM_THRESHOLD + 1, 300])
def test_bloom_filter_of_few_keys_holds_them(count: int) -> None:
    rng = random.Random(count)
    keys = [rng.randbytes(16) for _ in range(count)]
    filt = bloom_of(keys)
    assert len(filt) >= 8
    assert all(bloom_has(filt, k) for k in keys)
    assert not bloom_has(None, keys[0] if keys else bytes(16))
    assert not bloom_has(b"", bytes(16))


# -- concurrency ------------------------------------------------------------------------------


async def test_concurrent_appends_make_one_gapless_log(store: SqliteStore) -> None:
    rng = random.Random(200)
    calls = [[audit_entry(1000 * c + j) for j in range(rng.randint(1, 5))] for c in range(200)]
    firsts = await asyncio.gather(*(store.append_audit(entries) for entries in calls))
    at: dict[int, AuditEntry] = {}
    for first, entries in zip(firsts, calls, strict=True):
        for offset, entry in enumerate(entries):
            assert first + offset not in at
            at[first + offset] = entry
    total = sum(len(entries) for entries in calls)
    assert sorted(at) == list(range(total))
    await assert_log_holds(store, [at[i] for i in range(total)])


async def test_recent_person_rows_are_folded_into_the_index_in_key_order(
    sqlite_store: SqliteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_audit, "FOLD_ROWS", 10)
    first = numbered(0, 6)
    await sqlite_store.append_audit(first)
    with raw_database(db_path) as con:
        assert con.execute("SELECT count(*) FROM audit_persons_recent").fetchone()[0] == 6
        assert con.execute("SELECT count(*) FROM audit_persons").fetchone()[0] == 0

    # A write that fails after crossing the mark folds nothing: its savepoint takes the fold back.
    def fail_after_fold(con: sqlite3.Connection) -> None:
        sqlite_store._ledger.append(con, numbered(6, 12))
        raise RuntimeError("the job fails after appending")

    with pytest.raises(RuntimeError):
        await sqlite_store._write(fail_after_fold)
    second = numbered(6, 12)
    await sqlite_store.append_audit(second)
    with raw_database(db_path) as con:
        assert con.execute("SELECT count(*) FROM audit_persons_recent").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM audit_persons").fetchone()[0] == 12
    # Every person is found, whichever table holds its row.
    await sqlite_store.append_audit(numbered(12, 14))
    size, _ = await sqlite_store.audit_tree()
    for index, entry in enumerate([*first, *second, *numbered(12, 14)]):
        key = bytes.fromhex(entry.person_keys[0])
        found = await sqlite_store.audit_entries(AuditFilter(person_key=key), after=0, limit=10, size=size)
        assert [seq for seq, _ in found] == [index]


@pytest.mark.parametrize(
    ("changes", "everything"),
    [
        ({"until_us": 2**63 * 1_000_000}, True),
        ({"until_us": 2**63}, True),
        ({"since_us": 2**63}, False),
        ({"since_us": -(2**70)}, True),
        ({"until_us": -(2**70)}, False),
    ],
    ids=["until-far-past-bigint", "until-just-past-bigint", "since-past-bigint", "since-below", "until-below"],
)
async def test_time_bounds_beyond_sql_integers_are_clamped_not_an_overflow(
    corpus: SqliteStore, changes: dict[str, int], everything: bool
) -> None:
    # ListAuditEntries' end_time.seconds = 2**63-1 once overflowed SQLite's INTEGER (INTERNAL): every stored
    # time is within 0..2**63-1, so a bound past it keeps every entry (or none) in either engine.
    expected = list(range(len(CORPUS))) if everything else []
    assert await listed(corpus, dataclasses.replace(EVERYTHING, **changes)) == expected


async def test_index_bounds_beyond_sql_integers_are_clamped(corpus: SqliteStore) -> None:
    assert await corpus.audit_entries(EVERYTHING, after=2**64, limit=5, size=2**65) == []
    assert [i for i, _ in await corpus.audit_entries(EVERYTHING, after=-(2**64), limit=2, size=2**65)] == [0, 1]
    assert await corpus.audit_entry(2**64) is None
