"""A PostgreSQL hub whose database server is restarted twice while ``hutong node sync`` runs.

tests/faults/test_postgres_connections.py stands in for a restart by terminating the hub's
backends on the shared test server, which cannot be restarted: every test worker and other suites
use it at the same time. This test runs the real thing on a PostgreSQL server of its own (initdb
into a throwaway directory, a free loopback port, stopped and removed afterwards) and, mid-sync,

- restarts it with ``pg_ctl restart -m fast`` (sessions ended, a shutdown checkpoint, then a new
  postmaster: what an operator's restart or a minor-version upgrade does), and
- crash-restarts it later with ``pg_ctl stop -m immediate`` then ``start`` (no checkpoint; the
  server replays its WAL on start: what a postmaster killed by the OOM killer or an operator does;
  the machine itself stays up, so ``fsync=off`` loses nothing committed).

During each, the hub's writer loses its connection mid-transaction, its pooled readers theirs, and
new connections are refused until the server accepts them again. It proves that the hub recovers
by itself: the sync exits 0 with exact counts (every record held once, no outcome counted twice),
the same hub process (never restarted) answers afterwards and signs new checkpoints, and the
exchange log in PostgreSQL verifies offline and is consistent with the checkpoint a client saw
before each restart (neither restart rolled the log back).

It needs root (to run the server as the ``postgres`` user) and the PostgreSQL server binaries; it
skips without them, unless HUTONG_REQUIRE_POSTGRES=1 (CI), where it fails.
"""

from __future__ import annotations

import asyncio
import collections
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from adapters.samples.synthetic import guangdong_person, write_guangdong_export
from gateway.audit import AuditEntry
from gateway.client import HubClient, RetryConfig
from pki import TlsMaterial

HUTONG = [sys.executable, "-m", "gateway.cli"]
RECORDS = int(os.environ.get("HUTONG_FAULT_RECORDS", "3000"))
#: The restarts, in order: (what pg_ctl is told, the PostgresServer method, the share of batches acknowledged before).
RESTARTS = (("restart -m fast", "restart_fast", 1 / 3), ("stop -m immediate; start", "crash_restart", 2 / 3))
WAIT_SECONDS = 120.0
RETRY = RetryConfig(initial_backoff=0.05, max_backoff=0.5, total_deadline=30.0, max_attempts=60, attempt_timeout=10.0)
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]


@dataclass
class PostgresServer:
    """A PostgreSQL server of this test's own, run as the ``postgres`` user by ``pg_ctl``."""

    bin_dir: Path
    base: Path
    port: int
    runuser: str = "/usr/sbin/runuser"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.base / "data"

    @property
    def url(self) -> str:
        """The ``postgres`` database, as the superuser (trust authentication on loopback)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``pg_ctl -D DATA ARGS`` as the ``postgres`` user; the server's own output goes to ``server.log``.

        ``-l`` matters: without it the server would inherit pg_ctl's output pipes and this call
        would wait for the server to exit.
        """
        done = self._as_postgres(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.base / "server.log"), *args
        )
        if check and done.returncode != 0:
            pytest.fail(f"pg_ctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{self.server_log()}")
        return done

    def initdb(self) -> None:
        """A new cluster; UTF8 whatever the machine's locale (the hub stores Chinese names)."""
        made = self._as_postgres(
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr

    def start(self, *, check: bool = True) -> bool:
        """Start on 127.0.0.1:``port`` (its Unix socket in ``base``) and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        return self.pg_ctl("-o", options, "-w", "-t", "60", "start", check=check).returncode == 0

    def restart_fast(self) -> None:
        """End every session, checkpoint, stop, start again (the same options)."""
        self.pg_ctl("-m", "fast", "-w", "-t", "60", "restart")

    def crash_restart(self) -> None:
        """Stop without a checkpoint, as on a crash, then start (the server replays its WAL)."""
        self.pg_ctl("-m", "immediate", "-w", "-t", "60", "stop")
        self.start()

    def server_log(self) -> str:
        """The end of the server's log."""
        path = self.base / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _as_postgres(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.runuser, "-u", "postgres", "--", *command],
            cwd=self.base,  # the postgres user may not enter the caller's directory
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def server_binaries() -> Path | str:
    """The newest PostgreSQL version's bin directory, or why this machine cannot run a server of the test's own."""
    if os.geteuid() != 0:
        return "not root: a PostgreSQL server of the test's own runs as the postgres user (runuser)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres system user to run a PostgreSQL server as"
    if shutil.which("runuser") is None:
        return "no runuser command"
    found = [
        Path(pg_ctl).parent
        for pg_ctl in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
        if (Path(pg_ctl).parent / "initdb").exists() and (Path(pg_ctl).parent / "postgres").exists()
    ]
    if not found:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/<version>/bin"
    return max(found, key=lambda path: tuple(int(part) for part in path.parent.name.split(".") if part.isdigit()))


@pytest.fixture
def own_postgres(free_port: Callable[[], int], prerequisite: Callable[..., NoReturn]) -> Iterator[PostgresServer]:
    """A started PostgreSQL server of this test alone; stopped (immediately) and its directory removed after."""
    found = server_binaries()
    if isinstance(found, str):
        prerequisite(found, required_by="HUTONG_REQUIRE_POSTGRES")
    postgres = pwd.getpwnam("postgres")
    # Not under tmp_path: pytest's base directory is 0700 root, which the postgres user cannot traverse.
    base = Path(tempfile.mkdtemp(prefix="hutong-pg-", dir="/tmp"))
    try:
        os.chown(base, postgres.pw_uid, postgres.pw_gid)
        server = PostgresServer(found, base, free_port(), shutil.which("runuser") or "/usr/sbin/runuser")
        server.initdb()
        try:
            # The port was free when probed; should something take it before the server binds it, another.
            for _ in range(2):
                if server.start(check=False):
                    break
                server.port = free_port()
            else:
                server.start()
            yield server
        finally:
            server.pg_ctl("-m", "immediate", "-w", "-t", "60", "stop", check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def client_as(certs: Path, port: int, node: str = "440000-gd-gz-01") -> HubClient:
    """A client of the hub as a quickstart node (广东 by default)."""
    nodes = certs / "nodes"
    tls = TlsMaterial.from_files(nodes / f"{node}.pem", nodes / f"{node}.key", certs / "ca.pem")
    return HubClient(f"localhost:{port}", tls=tls, retry=RETRY)


async def test_database_server_restarted_and_crash_restarted_mid_sync_the_hub_recovers_and_holds_each_record_once(
    own_postgres: PostgresServer,
    tmp_path: Path,
    fault_certs: Path,
    postgres_hub: Callable[[str], Any],
    node_config: Callable[..., Path],
    outbox_view: Callable[[Path], Any],
    exchange_log_verified: Callable[..., list[bytes]],
    signed_checkpoint: Callable[..., Coroutine[Any, Any, tuple[str, int]]],
) -> None:
    server = own_postgres
    hub = await postgres_hub(server.url)
    config = node_config(tmp_path / "node.toml", fault_certs, f"localhost:{hub.port}")
    export = tmp_path / "export.csv"
    write_guangdong_export(export, range(RECORDS))
    outbox = outbox_view(tmp_path / "node" / "outbox.sqlite")
    log = tmp_path / "node.log"
    gd = client_as(fault_certs, hub.port)
    try:
        started = time.monotonic()
        with log.open("ab") as out:
            node = await asyncio.create_subprocess_exec(
                *HUTONG, "node", "sync", "--config", str(config), str(export), cwd=tmp_path, stdout=out, stderr=out
            )

        batches = 2 * -(-RECORDS // max(20, RECORDS // 50))  # a batch of records and one of households per batch_size
        seen_before_restart: list[str] = []
        figures: list[str] = []
        async with asyncio.timeout(WAIT_SECONDS):
            for kind, method, share in RESTARTS:
                while outbox.progress()[1] < int(batches * share):
                    assert node.returncode is None, log.read_text()[-3000:]
                    await asyncio.sleep(0.01)
                note, _size = await signed_checkpoint(gd, fault_certs, at_least=1, wait=WAIT_SECONDS)
                seen_before_restart.append(note)
                acked_at_restart = outbox.progress()[1]
                assert acked_at_restart < batches, "the sync ended before the restart: raise HUTONG_FAULT_RECORDS"
                down = time.monotonic()
                await asyncio.to_thread(getattr(server, method))
                back = time.monotonic()
                acked_when_back = outbox.progress()[1]
                # Bounded by the timeout above; the sync cannot end without another acknowledgement.
                while outbox.progress()[1] <= acked_when_back:
                    if node.returncode is not None:
                        break  # it ended; the checks below say how
                    await asyncio.sleep(0.01)
                figures.append(
                    f"{kind} at {acked_at_restart}/{batches} batches acked: server down+up {back - down:.2f}s,"
                    f" next ack {time.monotonic() - back:.2f}s after it was back"
                )
            assert await node.wait() == 0, log.read_text()[-3000:]
        synced_seconds = time.monotonic() - started

        import psycopg

        with psycopg.connect(server.url) as con:
            held: dict[str, int] = dict(
                con.execute("SELECT record_id, version FROM records WHERE province = '440000'").fetchall()
            )
        assert set(held) == {guangdong_person(n)[0] for n in range(RECORDS)}
        created, outcomes, items, unacked, versions = outbox.tally()
        assert (created, outcomes, items, unacked) == (RECORDS, RECORDS, RECORDS, 0)
        assert versions == held

        # The same hub process answers, reads through its pool, and its checkpointer signs what was written since.
        assert hub.process.poll() is None
        await gd.get_sync_state()
        written = outbox.progress()[0]
        note_after, size_after = await signed_checkpoint(gd, fault_certs, at_least=written, wait=WAIT_SECONDS)
    finally:
        await gd.close()

    assert hub.stop() == 0, hub.log_path.read_text()[-3000:]
    entries = exchange_log_verified(
        ["--config", str(tmp_path / "etc" / "hub.toml")],
        fault_certs,
        tmp_path / "audit",
        known=[*seen_before_restart, note_after],
    )
    assert len(entries) >= size_after
    applied = collections.Counter(
        e.batch_id for e in map(AuditEntry.decode, entries) if e.batch_id and not e.counts.get("replayed")
    )
    assert len(applied) == written
    assert set(applied.values()) == {1}
    reconnects = hub.log_path.read_text().count("store_reconnecting")
    # Each restart ended the writer's connection with batches still to apply: at least one reopening each.
    assert reconnects >= len(RESTARTS), hub.log_path.read_text()[-3000:]
    print(
        f"postgres restart: records={RECORDS} batches={written} restarts={len(RESTARTS)}"
        f" store_reconnecting={reconnects} sync={synced_seconds:.2f}s; " + "; ".join(figures)
    )
