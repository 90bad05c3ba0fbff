"""The network between a node and the hub cut, slowed and reset while ``hutong node sync`` runs.

A :class:`FaultProxy` (this package's conftest) sits on loopback between the node process and the
hub process and passes TCP through untouched: the node's node.toml names the proxy's address
(``127.0.0.1:<proxy port>``) and ``hub.server_name = "localhost"``, so the hub's certificate is
still verified against a name it carries — TLS is end to end, the proxy sees only ciphertext.
Mid-sync the link is cut (nothing forwarded, as when a route goes down and TCP keeps
retransmitting) and restored, every connection is reset (RST both ways), and the link is slowed;
the sync completes by itself with exact counts: the hub holds each record once, the node counted
each outcome once, and the exchange log verifies.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.samples.synthetic import guangdong_person, write_guangdong_export

HUTONG = [sys.executable, "-m", "gateway.cli"]
RECORDS = int(os.environ.get("HUTONG_FAULT_RECORDS", "3000"))
#: Every wait on progress is bounded by this many seconds.
WAIT_SECONDS = 120.0
pytestmark = pytest.mark.timeout(240)


def held_records(hub_dir: Path) -> dict[str, int]:
    """{record id: version} of 广东's records in the hub's SQLite database."""
    con = sqlite3.connect(hub_dir / "hub.sqlite3")
    try:
        return dict(con.execute("SELECT record_id, version FROM records WHERE province='440000'").fetchall())
    finally:
        con.close()


class Sync:
    """One ``hutong node sync`` process, and a look at its outbox."""

    def __init__(self, process: asyncio.subprocess.Process, outbox: Any, log: Path) -> None:
        self.process = process
        self.outbox = outbox
        self.log = log

    async def acked(self, batches: int) -> None:
        """Until the outbox has ``batches`` acknowledged (the sync must still be running)."""
        async with asyncio.timeout(WAIT_SECONDS):
            while self.outbox.progress()[1] < batches:
                assert self.process.returncode is None, self.log.read_text()[-3000:]
                await asyncio.sleep(0.01)

    async def finished(self) -> int:
        """The exit code, once the sync ends (bounded)."""
        async with asyncio.timeout(WAIT_SECONDS):
            return await self.process.wait()


@pytest.fixture
async def world(
    tmp_path: Path,
    fault_certs: Path,
    hub_process: Callable[..., Any],
    hub_tls: Callable[[Path], list[str]],
    fault_proxy: Callable[[int], Awaitable[Any]],
    node_config: Callable[..., Path],
    outbox_view: Callable[[Path], Any],
) -> tuple[Any, Any, Callable[[], Awaitable[Sync]]]:
    """(the hub process, a proxy in front of it, ``await start()``: a sync of the export through the proxy)."""
    hub = hub_process("--data-dir", str(tmp_path / "hub"), "--checkpoint-seconds", "0.2", *hub_tls(fault_certs))
    await asyncio.to_thread(hub.start)
    proxy = await fault_proxy(hub.port)
    config = node_config(tmp_path / "node.toml", fault_certs, f"127.0.0.1:{proxy.port}", server_name="localhost")
    export = tmp_path / "export.csv"
    write_guangdong_export(export, range(RECORDS))
    outbox = outbox_view(tmp_path / "node" / "outbox.sqlite")
    log = tmp_path / "node.log"

    async def start() -> Sync:
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *HUTONG, "node", "sync", "--config", str(config), str(export), cwd=tmp_path, stdout=out, stderr=out
            )
        return Sync(process, outbox, log)

    return hub, proxy, start


def check_exactly_once(tmp: Path, outbox: Any) -> None:
    """The hub holds each exported record once, at the version queued; the node counted each outcome once."""
    held = held_records(tmp / "hub")
    assert set(held) == {guangdong_person(n)[0] for n in range(RECORDS)}
    created, outcomes, items, unacked, versions = outbox.tally()
    assert (created, outcomes, items, unacked) == (RECORDS, RECORDS, RECORDS, 0)
    assert versions == held


def check_log(tmp: Path, certs: Path, verify: Callable[..., list[bytes]], batches: int) -> None:
    """The exchange log verifies offline, and holds one entry of each batch applied (resends are replays)."""
    from gateway.audit import AuditEntry

    entries = [AuditEntry.decode(e) for e in verify(["--data-dir", str(tmp / "hub")], certs, tmp / "audit")]
    applied = collections.Counter(e.batch_id for e in entries if e.batch_id and not e.counts.get("replayed"))
    assert len(applied) == batches
    assert set(applied.values()) == {1}


async def test_a_sync_through_a_cut_a_reset_and_a_slow_link_completes_with_each_record_once(
    world: tuple[Any, Any, Callable[[], Awaitable[Sync]]],
    tmp_path: Path,
    fault_certs: Path,
    exchange_log_verified: Callable[..., list[bytes]],
) -> None:
    _, proxy, start = world
    sync = await start()
    batches = -(-RECORDS // max(20, RECORDS // 50))

    await sync.acked(batches // 5)
    proxy.blackhole()
    during_cut = sync.outbox.progress()[1]
    await asyncio.sleep(1.0)  # longer than many round trips: nothing gets through a cut link
    assert sync.outbox.progress()[1] <= during_cut + 4  # at most the window's acks already in flight
    proxy.restore()

    await sync.acked(2 * batches // 5)
    connections = proxy.connections
    acked_at_reset = sync.outbox.progress()[1]
    proxy.reset()  # RST both ways, mid-stream
    reset_at = time.monotonic()
    await sync.acked(acked_at_reset + 1)
    seconds_to_resume = round(time.monotonic() - reset_at, 2)  # a figure to print, never to assert
    await sync.acked(3 * batches // 5)
    assert proxy.connections > connections  # the node reconnected by itself

    proxy.slow(0.02)
    await sync.acked(4 * batches // 5)
    proxy.restore()

    assert await sync.finished() == 0, sync.log.read_text()[-3000:]
    check_exactly_once(tmp_path, sync.outbox)
    assert proxy.resets >= 1
    check_log(tmp_path, fault_certs, exchange_log_verified, sync.outbox.progress()[0])
    print(
        f"network: records={RECORDS} connections={proxy.connections} resets={proxy.resets}"
        f" seconds_from_reset_to_next_ack={seconds_to_resume}"
    )


#: Seconds a node may take to give up a silent connection: three of its ``sync.attempt_timeout_seconds``
#: (the node gives up a stream whose batches in flight go unacknowledged that long: ACK_TIMEOUT).
SILENT_SECONDS = 15.0


async def test_a_connection_silently_forgotten_by_the_network_is_abandoned_and_the_sync_completes(
    world: tuple[Any, Any, Callable[[], Awaitable[Sync]]], tmp_path: Path
) -> None:
    _, proxy, start = world
    sync = await start()
    batches = -(-RECORDS // max(20, RECORDS // 50))
    await sync.acked(batches // 3)
    # A NAT or firewall drops the flow's state: the open connection goes silent (no RST, no FIN),
    # while a new connection would pass at once.
    proxy.drop_existing()
    try:
        async with asyncio.timeout(SILENT_SECONDS):
            code = await sync.process.wait()
    except TimeoutError:
        sync.process.kill()
        await sync.process.wait()
        raise AssertionError(f"the sync hung on a silent connection: {sync.outbox.progress()} batches acked") from None
    assert code == 0, sync.log.read_text()[-3000:]
    check_exactly_once(tmp_path, sync.outbox)
