"""gateway.hub.audit_monitor: the hub re-reads its exchange log behind its own signed checkpoints.

Every test runs on a real SQLite store with checkpoints signed by a real note key; tampering is
done the way an intruder would, by writing to the database file behind the hub's back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from gateway.audit import AuditEntry, HashFn, MerkleAccumulator, empty_root, sign_checkpoint
from gateway.audit.archive import hash_function
from gateway.errors import StoreUnavailable
from gateway.hub.audit import AuditKey
from gateway.hub.audit_monitor import STATE_FORMAT, AuditMonitor, MonitorStatus
from gateway.store.base import AuditFilter
from gateway.store.sqlite import SqliteStore

ORIGIN = "hub.test/hutong-audit"
#: 2025-06-01T00:00:00Z in microseconds since the epoch.
T0 = 1_748_736_000_000_000
CHECK = "/hutong.v1.AssistanceQueryService/CheckEnrollment"


def audit_entry(n: int) -> AuditEntry:
    """The entry of call ``n``: a CheckEnrollment about one person."""
    node = "hutong://province/440000/node/gz-01"
    return AuditEntry(
        time_us=T0 + n * 1_000,
        request_id=f"req-{n:06d}",
        caller=node,
        province="440000",
        subject=node,
        method=CHECK,
        purpose="duplicate-check",
        outcome="OK",
        counts={"persons": 1},
        person_keys=[hashlib.sha256(f"person-{n}".encode()).hexdigest()[:32]],
        payload_digest=hashlib.sha256(f"payload-{n}".encode()).hexdigest(),
    )


class ReadCountingStore:
    """The real store, with every entry index the monitor reads recorded, and reads that can be made to fail."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        #: Indices of the entries handed out by audit_entries, in order.
        self.read: list[int] = []
        #: (after, limit, size) of each audit_entries call.
        self.calls: list[tuple[int, int, int]] = []
        #: Raised by latest_checkpoint while set (a database that is down).
        self.failure: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def latest_checkpoint(self) -> tuple[int, str] | None:
        if self.failure is not None:
            raise self.failure
        return await self.inner.latest_checkpoint()

    async def audit_entries(self, filt: AuditFilter, *, after: int, limit: int, size: int) -> list[tuple[int, bytes]]:
        self.calls.append((after, limit, size))
        rows = await self.inner.audit_entries(filt, after=after, limit=limit, size=size)
        self.read.extend(index for index, _ in rows)
        return rows


@pytest.fixture(params=["sha256", "sm3"])
def hash_fn(request: pytest.FixtureRequest) -> HashFn:
    """The log's tree hash: SHA-256 (intl suite) or SM3 (sm suite)."""
    return hash_function(str(request.param))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "hub.sqlite3"


@pytest.fixture
async def store(db_path: Path, hash_fn: HashFn) -> AsyncIterator[ReadCountingStore]:
    s = SqliteStore(db_path, audit_hash=hash_fn)
    await s.open()
    yield ReadCountingStore(s)
    await s.close()


@pytest.fixture
def key() -> AuditKey:
    return AuditKey(ORIGIN, Ed25519PrivateKey.generate())


@pytest.fixture
def monitor_of(store: ReadCountingStore, key: AuditKey, hash_fn: HashFn) -> Callable[..., AuditMonitor]:
    """``monitor_of(**options)``: a monitor of the store's log, trusting the hub's key."""

    def make(**options: Any) -> AuditMonitor:
        return AuditMonitor(store, key.verifier, ORIGIN, hash_fn, **options)

    return make


async def append(store: ReadCountingStore, count: int) -> None:
    """Append ``count`` more entries, numbered on from the log's size."""
    size, _ = await store.inner.audit_tree()
    await store.inner.append_audit([audit_entry(n) for n in range(size, size + count)])


async def sign(store: ReadCountingStore, key: AuditKey, sign_note: Callable[[int, bytes], str] | None = None) -> int:
    """Have the hub sign a checkpoint of its committed log (with ``key``, or with ``sign_note``); returns its size."""

    def signer(size: int, root: bytes) -> tuple[int, str]:
        return T0, key.sign(size, root, T0) if sign_note is None else sign_note(size, root)

    signed = await store.inner.add_checkpoint(signer)
    assert signed is not None
    return signed[0]


async def grow(store: ReadCountingStore, key: AuditKey, count: int) -> int:
    """Append ``count`` entries and sign a checkpoint of them; returns its size."""
    await append(store, count)
    return await sign(store, key)


def tamper(db_path: Path, sql: str, *args: Any) -> None:
    """Write to the hub's database behind its back."""
    with contextlib.closing(sqlite3.connect(db_path)) as con:
        con.execute(sql, args)
        con.commit()


def rewritten(n: int) -> bytes:
    """Entry ``n`` with another purpose: still the canonical encoding of a valid audit entry."""
    return dataclasses.replace(audit_entry(n), purpose="fraud-investigation").encode()


def alarms(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "audit_log_inconsistent"]


async def eventually(condition: Callable[[], bool], *, attempts: int = 1000) -> None:
    """Let the background task run until ``condition`` holds; fail if it never does."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.005)
    assert condition(), "the monitor's background task never got there"


# -------------------------------------------------------------------------------- verifying


async def test_an_empty_log_is_verified_at_zero_without_a_problem(
    store: ReadCountingStore, key: AuditKey, hash_fn: HashFn, monitor_of: Callable[..., AuditMonitor]
) -> None:
    monitor = monitor_of()
    assert monitor.status == MonitorStatus(verified_size=0, verified_root=empty_root(hash_fn))

    status = await monitor.check()
    assert (status.verified_size, status.verified_root, status.checkpoint_size) == (0, empty_root(hash_fn), 0)
    assert status.problem is None
    assert status.ok
    assert status.checked_at_us > 0

    assert await sign(store, key) == 0  # the hub's checkpoint of the empty log
    status = await monitor.check()
    assert (status.verified_size, status.checkpoint_size, status.checkpoint_time_us) == (0, 0, T0)
    assert status.problem is None
    assert store.read == []


async def test_a_pass_over_large_entries_reads_them_a_few_at_a_time(
    store: ReadCountingStore, key: AuditKey, monitor_of: Callable[..., AuditMonitor]
) -> None:
    # A SyncRecords batch of 1,000 records names 1,000 person keys: an entry of about 67 kB.
    # Decoding 100 of them in one go would hold the hub's event loop for about a fifth of a second.
    big = [
        dataclasses.replace(
            audit_entry(n), person_keys=[hashlib.sha256(f"{n}/{k}".encode()).hexdigest() for k in range(1000)]
        )
        for n in range(100)
    ]
    await store.inner.append_audit(big)
    await append(store, 2000)  # then small query entries, about 400 bytes each
    size = await sign(store, key)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    try:
        status = await monitor_of().check()
    finally:
        counter.cancel()
    assert (status.verified_size, status.problem) == (size, None)
    assert store.read == list(range(size))
    limits = [limit for _, limit, _ in store.calls]
    assert limits[0] == 64  # nothing known of the entries yet
    assert max(limits[1:10]) <= 4  # about 128 kB of 67 kB entries
    assert max(limits[-3:]) >= 200  # small entries: hundreds at a time again
    assert turns >= len(store.calls) - 1  # the hub's calls ran between every two chunks


async def test_a_signed_checkpoint_is_verified_and_later_ones_read_only_the_new_entries(
    store: ReadCountingStore, key: AuditKey, monitor_of: Callable[..., AuditMonitor]
) -> None:
    monitor = monitor_of(batch=3)
    assert await grow(store, key, 7) == 7
    with capture_logs() as logs:
        status = await monitor.check()
    assert status.verified_size == 7
    assert status.verified_root == (await store.inner.audit_tree())[1]
    assert (status.checkpoint_size, status.problem, status.unverified) == (7, None, 0)
    assert store.read == list(range(7))
    assert store.calls == [(0, 3, 7), (3, 3, 7), (6, 1, 7)]  # in batches, never past the checkpoint
    assert [e["event"] for e in logs] == ["audit_log_verified"]

    store.read.clear()
    assert await grow(store, key, 5) == 12
    status = await monitor.check()
    assert status.verified_size == 12
    assert status.verified_root == (await store.inner.audit_tree())[1]
    assert store.read == list(range(7, 12))

    # Entries not yet under a checkpoint are not read; nor is anything when the log did not grow.
    store.read.clear()
    await append(store, 4)
    status = await monitor.check()
    assert (status.verified_size, status.checkpoint_size, status.problem) == (12, 12, None)
    assert store.read == []


# -------------------------------------------------------------------------------- tampering


async def test_a_rewritten_entry_is_a_root_mismatch_naming_the_range_and_the_checkpoint(
    store: ReadCountingStore, key: AuditKey, db_path: Path, monitor_of: Callable[..., AuditMonitor]
) -> None:
    monitor = monitor_of()
    await grow(store, key, 5)
    good = await monitor.check()
    await grow(store, key, 5)
    tamper(db_path, "UPDATE audit_entries SET entry = ? WHERE seq = 7", rewritten(7))

    with capture_logs() as logs:
        status = await monitor.check()
    assert status.problem_reason == "ROOT_MISMATCH"
    assert status.problem is not None
    assert "entries 5..9" in status.problem
    assert "checkpoint of size 10" in status.problem
    assert not status.ok
    # What was verified before the rewritten range still stands.
    assert (status.verified_size, status.verified_root) == (5, good.verified_root)
    assert status.checkpoint_size == 10
    [alarm] = alarms(logs)
    assert alarm["log_level"] == "error"
    assert (alarm["reason"], alarm["checkpoint_size"], alarm["verified_size"]) == ("ROOT_MISMATCH", 10, 5)

    # Sticky: reported again, logged once, and nothing more is read or trusted.
    store.read.clear()
    await grow(store, key, 3)
    with capture_logs() as logs:
        again = await monitor.check()
    assert (again.problem, again.verified_size) == (status.problem, 5)
    assert again.checked_at_us >= status.checked_at_us
    assert alarms(logs) == []
    assert store.read == []


async def test_an_entry_that_is_not_an_audit_entry_is_named_by_its_index(
    store: ReadCountingStore, key: AuditKey, db_path: Path, monitor_of: Callable[..., AuditMonitor]
) -> None:
    await grow(store, key, 6)
    tamper(db_path, "UPDATE audit_entries SET entry = ? WHERE seq = 3", b'{"v":1,"note":"not an entry"}')
    status = await monitor_of().check()
    assert status.problem_reason == "ENTRY_INVALID"
    assert status.problem is not None
    assert status.problem.startswith("entry 3,")
    assert "checkpoint of size 6" in status.problem
    assert status.verified_size == 0


async def test_a_checkpoint_signed_by_another_key_is_a_signature_problem(
    store: ReadCountingStore, key: AuditKey, monitor_of: Callable[..., AuditMonitor]
) -> None:
    monitor = monitor_of()
    await grow(store, key, 4)
    await monitor.check()
    impostor = AuditKey(ORIGIN, Ed25519PrivateKey.generate())
    await append(store, 2)
    await sign(store, impostor)

    status = await monitor.check()
    assert status.problem_reason == "SIGNATURE_INVALID"
    assert status.problem is not None
    assert "checkpoint of size 6" in status.problem
    assert (status.verified_size, status.checkpoint_size) == (4, 6)
    assert store.read == list(range(4))  # the entries behind a forged checkpoint are not even read


async def test_a_checkpoint_of_another_log_is_an_origin_problem(
    store: ReadCountingStore, key: AuditKey, monitor_of: Callable[..., AuditMonitor]
) -> None:
    await append(store, 3)
    await sign(
        store, key, lambda size, root: sign_checkpoint("elsewhere.test/log", size, root, ORIGIN, key.private_key)
    )
    status = await monitor_of().check()
    assert status.problem_reason == "ORIGIN_MISMATCH"
    assert status.problem is not None
    assert "checkpoint of size 3" in status.problem
    assert "elsewhere.test/log" in status.problem


async def test_a_validly_signed_checkpoint_with_another_root_is_a_root_mismatch(
    store: ReadCountingStore, key: AuditKey, hash_fn: HashFn, monitor_of: Callable[..., AuditMonitor]
) -> None:
    await append(store, 5)
    await sign(store, key, lambda size, root: key.sign(size, hash_fn(b"another history"), T0))
    status = await monitor_of().check()
    assert status.problem_reason == "ROOT_MISMATCH"
    assert status.problem is not None
    assert "checkpoint of size 5" in status.problem
    assert status.verified_size == 0


@pytest.mark.parametrize("grows_after", [False, True], ids=["as the newest", "under a newer one"])
async def test_a_second_root_for_a_verified_size_is_a_fork(
    store: ReadCountingStore,
    key: AuditKey,
    hash_fn: HashFn,
    db_path: Path,
    monitor_of: Callable[..., AuditMonitor],
    grows_after: bool,
) -> None:
    monitor = monitor_of()
    await grow(store, key, 5)
    await monitor.check()
    tamper(db_path, "UPDATE audit_checkpoints SET note = ? WHERE size = 5", key.sign(5, hash_fn(b"forked"), T0))
    if grows_after:
        await grow(store, key, 2)

    status = await monitor.check()
    assert status.problem_reason == "FORK"
    assert status.problem is not None
    assert status.problem.startswith("two different roots for size 5")
    assert status.verified_size == 5


async def test_fewer_signed_entries_than_were_verified_is_a_log_that_shrank(
    store: ReadCountingStore, key: AuditKey, db_path: Path, monitor_of: Callable[..., AuditMonitor]
) -> None:
    monitor = monitor_of()
    await grow(store, key, 3)
    await grow(store, key, 2)
    await monitor.check()
    tamper(db_path, "DELETE FROM audit_checkpoints WHERE size = 5")

    status = await monitor.check()
    assert status.problem_reason == "LOG_SHRANK"
    assert status.problem is not None
    assert "covers 3 entries, but 5 were verified" in status.problem


@pytest.mark.parametrize(
    ("deleted", "reason", "named"),
    [
        ("seq = 2", "INDEX_GAP", "entry 2 is missing: the log goes on with entry 3"),
        ("seq >= 4", "LOG_SHRANK", "the log holds no entry 4"),
    ],
    ids=["a gap", "a cut tail"],
)
async def test_missing_entries_under_a_checkpoint_are_named_by_index(
    store: ReadCountingStore,
    key: AuditKey,
    db_path: Path,
    monitor_of: Callable[..., AuditMonitor],
    deleted: str,
    reason: str,
    named: str,
) -> None:
    await grow(store, key, 6)
    tamper(db_path, f"DELETE FROM audit_entries WHERE {deleted}")
    status = await monitor_of().check()
    assert status.problem_reason == reason
    assert status.problem is not None
    assert named in status.problem
    assert "checkpoint of size 6" in status.problem


# -------------------------------------------------------------------------------- the state file


async def test_a_restart_resumes_from_the_state_file_and_reads_only_newer_entries(
    store: ReadCountingStore, key: AuditKey, tmp_path: Path, monitor_of: Callable[..., AuditMonitor]
) -> None:
    state_file = tmp_path / "state" / "audit-monitor.json"
    first = monitor_of(state_file=state_file)
    await grow(store, key, 6)
    verified = await first.check()
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    saved = json.loads(state_file.read_text(encoding="utf-8"))
    assert (saved["format"], saved["origin"], saved["size"]) == (STATE_FORMAT, ORIGIN, 6)
    assert base64.b64decode(saved["root"]) == verified.verified_root
    assert list(state_file.parent.iterdir()) == [state_file]  # no temporary file left behind

    store.read.clear()
    await grow(store, key, 3)
    restarted = monitor_of(state_file=state_file)
    assert restarted.status.verified_size == 0  # nothing is trusted before the state is checked against the log
    status = await restarted.check()
    assert (status.verified_size, status.problem) == (9, None)
    assert status.verified_root == (await store.inner.audit_tree())[1]
    assert store.read == [6, 7, 8]
    assert json.loads(state_file.read_text(encoding="utf-8"))["size"] == 9


async def test_a_state_file_whose_root_the_hub_never_signed_is_a_problem(
    store: ReadCountingStore, key: AuditKey, hash_fn: HashFn, tmp_path: Path, monitor_of: Callable[..., AuditMonitor]
) -> None:
    await grow(store, key, 6)
    other = MerkleAccumulator(hash_fn)
    other.extend(hash_fn(f"other {i}".encode()) for i in range(6))
    state_file = tmp_path / "audit-monitor.json"
    state = {
        "format": STATE_FORMAT,
        "origin": ORIGIN,
        "size": 6,
        "root": base64.b64encode(other.root()).decode(),
        "peaks": [base64.b64encode(p).decode() for p in other.peaks],
    }
    state_file.write_text(json.dumps(state), encoding="utf-8")

    status = await monitor_of(state_file=state_file).check()
    assert status.problem_reason == "FORK"
    assert status.problem is not None
    assert "two different roots for size 6" in status.problem
    assert "state file" in status.problem
    assert status.verified_size == 0
    assert store.read == []


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"format": "hutong-audit-monitor/1", "origin": "hub.test/hutong-audit", "size": 6}', b"\xff"],
    ids=["not JSON", "no peaks", "not UTF-8"],
)
async def test_a_corrupt_state_file_starts_over_from_entry_zero(
    store: ReadCountingStore,
    key: AuditKey,
    tmp_path: Path,
    monitor_of: Callable[..., AuditMonitor],
    content: bytes,
) -> None:
    await grow(store, key, 4)
    state_file = tmp_path / "audit-monitor.json"
    state_file.write_bytes(content)
    with capture_logs() as logs:
        monitor = monitor_of(state_file=state_file)
    assert [(e["event"], e["log_level"]) for e in logs] == [("audit_monitor_state_corrupt", "warning")]

    status = await monitor.check()
    assert (status.verified_size, status.problem) == (4, None)
    assert store.read == [0, 1, 2, 3]
    assert json.loads(state_file.read_text(encoding="utf-8"))["size"] == 4


# -------------------------------------------------------------------------------- the background task


async def test_the_background_task_checks_periodically_and_stops_cleanly(
    store: ReadCountingStore, key: AuditKey, monitor_of: Callable[..., AuditMonitor]
) -> None:
    monitor = monitor_of()
    monitor.start(0.01)
    try:
        await grow(store, key, 3)
        await eventually(lambda: monitor.status.verified_size == 3)
        await grow(store, key, 2)
        await eventually(lambda: monitor.status.verified_size == 5)
    finally:
        await monitor.stop()
    assert monitor.status.problem is None

    await grow(store, key, 2)
    await asyncio.sleep(0.05)
    assert monitor.status.verified_size == 5  # stopped: nothing checks any more
    await monitor.stop()  # a second stop is harmless


async def test_a_store_error_is_retried_and_never_reported_as_tampering(
    store: ReadCountingStore, key: AuditKey, monitor_of: Callable[..., AuditMonitor]
) -> None:
    monitor = monitor_of()
    await grow(store, key, 3)
    store.failure = StoreUnavailable("database read failed: the server closed the connection")
    with pytest.raises(StoreUnavailable):
        await monitor.check()
    assert monitor.status.problem is None
    assert monitor.status.error is not None
    assert "database read failed" in monitor.status.error

    with capture_logs() as logs:
        monitor.start(0.01)
        try:
            await eventually(lambda: any(e["event"] == "audit_monitor_check_failed" for e in logs))
            store.failure = RuntimeError("a bug in a driver")
            await eventually(lambda: any(e["event"] == "audit_monitor_check_crashed" for e in logs))
            store.failure = None
            await eventually(lambda: monitor.status.verified_size == 3)
        finally:
            await monitor.stop()
    assert alarms(logs) == []
    failed = next(e for e in logs if e["event"] == "audit_monitor_check_failed")
    assert (failed["log_level"], failed["reason"]) == ("warning", "STORE_UNAVAILABLE")
    crashed = next(e for e in logs if e["event"] == "audit_monitor_check_crashed")
    assert crashed["log_level"] == "error"
    recovered = monitor.status
    assert (recovered.problem, recovered.error) == (None, None)
