"""The disk under the hub's data directory full while nodes sync and ask.

The data directory (the SQLite database with its WAL, the key files) lives on its own 8 MiB tmpfs,
mounted for the test (we run as root in CI; elsewhere the test skips, saying why). Once the hub
holds some records, a ballast file takes every free byte; batches and queries then arrive. The hub
must refuse them with a status a client knows to retry later (RESOURCE_EXHAUSTED or UNAVAILABLE),
stay up, and corrupt nothing: once the ballast is deleted, the refused batches are resent and
applied once, new ones are accepted, ``PRAGMA integrity_check`` finds the database sound and
``hutong audit verify`` accepts the exchange log, consistent with the checkpoint seen before the
disk filled.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from gateway import errors
from gateway.audit import AuditEntry
from gateway.client import HubClient, RetryConfig
from gateway.domain.model import Outcome, Program, Purpose
from hutong.v1 import person_pb2, records_pb2
from pki import TlsMaterial

GD = "hutong://province/440000/node/gd-gz-01"
CREATED = int(Outcome.CREATED)
BATCH = 50
#: Batches synced before the disk fills, tried while it is full, and after it has room again.
BEFORE, WHILE_FULL, AFTER = 6, 4, 4
#: One attempt only: what the hub answers a full disk with is what this test looks at.
RETRY = RetryConfig(initial_backoff=0.01, max_backoff=0.05, total_deadline=2.0, max_attempts=1, attempt_timeout=15.0)
#: The statuses a client retries later (gateway.node.sync retries both).
RETRY_LATER = {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def small_disk(tmp_path: Path, prerequisite: Callable[..., NoReturn]) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted at ``tmp_path/disk``; unmounted after the test.

    Mounting needs root: elsewhere the test skips saying so; CI runs as root and sets
    HUTONG_REQUIRE_ROOT_TESTS=1, so that there it fails instead of skipping.
    """
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or mount is None or umount is None:
        prerequisite(
            "mounting a small tmpfs for the hub's data directory needs root and mount(8)",
            required_by="HUTONG_REQUIRE_ROOT_TESTS",
        )
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        prerequisite(f"cannot mount a tmpfs here: {mounted.stderr.strip()}", required_by="HUTONG_REQUIRE_ROOT_TESTS")
    try:
        yield mount_point
    finally:
        subprocess.run([umount, "-l", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """A ballast file taking every free byte of ``directory``'s file system."""
    ballast = directory / "ballast"
    chunk = b"\0" * 65536
    with ballast.open("wb", buffering=0) as fh:
        for _ in range(1 << 20):  # bounded: far more than 8 MiB
            try:
                fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        for size in (4096, 512, 1):  # the last scraps
            with contextlib.suppress(OSError):
                for _ in range(1 << 10):
                    fh.write(b"\0" * size)
    return ballast


@pytest.fixture
async def gd_client(fault_certs: Path) -> AsyncIterator[Callable[[int], HubClient]]:
    """``gd_client(port)``: a new client of the hub as 广东's node (one attempt per call); closed after the test."""
    made: list[HubClient] = []
    nodes = fault_certs / "nodes"
    tls = TlsMaterial.from_files(nodes / "440000-gd-gz-01.pem", nodes / "440000-gd-gz-01.key", fault_certs / "ca.pem")

    def make(port: int) -> HubClient:
        client = HubClient(f"localhost:{port}", tls=tls, retry=RETRY)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def batch_of(make_record: Callable[..., person_pb2.PersonRecord], b: int) -> records_pb2.SyncRecordsRequest:
    records = [
        make_record(f"R{b}-{i}", birth=dt.date(1930, 1, 1) + dt.timedelta(days=b * BATCH + i)) for i in range(BATCH)
    ]
    return records_pb2.SyncRecordsRequest(batch_id=f"B{b}", records=records)


async def sync_one(client: HubClient, request: records_pb2.SyncRecordsRequest) -> records_pb2.SyncRecordsResponse:
    (ack,) = [a async for a in client.sync([request])]
    return ack


async def test_a_full_disk_refuses_writes_retryably_corrupts_nothing_and_accepting_resumes_when_space_returns(
    small_disk: Path,
    tmp_path: Path,
    fault_certs: Path,
    hub_process: Callable[..., Any],
    hub_tls: Callable[[Path], list[str]],
    gd_client: Callable[[int], HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    id_number_of: Callable[..., str],
    exchange_log_verified: Callable[..., list[bytes]],
) -> None:
    data_dir = small_disk / "hub"
    hub = hub_process("--data-dir", str(data_dir), "--checkpoint-seconds", "0.2", *hub_tls(fault_certs))
    await asyncio.to_thread(hub.start)
    client = gd_client(hub.port)
    for b in range(BEFORE):
        assert (await sync_one(client, batch_of(make_record, b))).record_counts.created == BATCH
    async with asyncio.timeout(30):
        while True:  # a checkpoint covering the batches: the log as it stood before the disk filled
            with contextlib.suppress(errors.FailedPrecondition):
                head = await client.get_checkpoint()
                if head.tree_size >= BEFORE:
                    break
            await asyncio.sleep(0.05)
    before_full = head.checkpoint

    ballast = fill(small_disk)
    answers: collections.Counter[str] = collections.Counter()
    refused: list[int] = []
    for b in range(BEFORE, BEFORE + WHILE_FULL):
        try:
            ack = await sync_one(client, batch_of(make_record, b))
        except errors.HutongError as exc:
            answers[f"SyncRecords {exc.code_name} {exc.reason}"] += 1
            refused.append(b)
        else:  # a batch that fits in what SQLite had already allocated
            assert ack.record_counts.created == BATCH
            answers["SyncRecords OK"] += 1
        try:
            await client.check_enrollment(id_number_of("440000"), Purpose.DUPLICATE_CHECK, [Program.DIBAO])
        except errors.HutongError as exc:
            answers[f"CheckEnrollment {exc.code_name} {exc.reason}"] += 1
        else:
            answers["CheckEnrollment OK"] += 1
    assert hub.process.poll() is None, hub.log_path.read_text()[-3000:]  # the hub stays up on a full disk

    ballast.unlink()
    # The refused batches are resent and new ones accepted, on the same hub process.
    after_space = gd_client(hub.port)
    for b in range(BEFORE, BEFORE + WHILE_FULL + AFTER):
        ack = await sync_one(after_space, batch_of(make_record, b))
        assert list(ack.record_outcomes) == [CREATED] * BATCH, (b, ack)
    total = BEFORE + WHILE_FULL + AFTER
    assert (await after_space.get_sync_state()).records_held == total * BATCH
    assert hub.stop() == 0, hub.log_path.read_text()[-3000:]

    con = sqlite3.connect(data_dir / "hub.sqlite3")
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        held = con.execute("SELECT count(*), count(DISTINCT record_id) FROM records").fetchone()
    finally:
        con.close()
    assert held == (total * BATCH, total * BATCH)
    entries = exchange_log_verified(["--data-dir", str(data_dir)], fault_certs, tmp_path / "audit", known=[before_full])
    applied = collections.Counter(
        e.batch_id for e in map(AuditEntry.decode, entries) if e.batch_id and not e.counts.get("replayed")
    )
    assert applied == {f"B{b}": 1 for b in range(total)}
    print(f"disk full: answers={dict(answers)} refused={len(refused)}")
    # Checked last, so that a wrong status never hides a lost or corrupted write.
    assert {answer.split()[1] for answer in answers} <= RETRY_LATER | {"OK"}, answers
    assert refused  # the ballast left no room for a whole batch
