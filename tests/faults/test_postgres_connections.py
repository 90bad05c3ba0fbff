"""A PostgreSQL hub whose database connections are all killed, again and again, while ``hutong node sync`` runs.

Why this stands in for restarting PostgreSQL: the test server (127.0.0.1:5432) is shared by every
test worker and by other suites running at the same time, so restarting it would fail their tests.
What a hub sees of a server restart is every one of its connections dropped at once — the writer's
mid-transaction, the pooled readers' idle — and new connections accepted again a moment later.
``pg_terminate_backend`` on every backend of the hub's own database does exactly that to the hub
and to nobody else: the server ends each backend (the client gets "terminating connection due to
administrator command", as on a fast shutdown) and the next connection is a fresh backend. The
database is one this test creates for itself (``CREATE DATABASE``) and drops afterwards.

The sync completes by itself with exact counts, the hub (one process, never restarted) answers
afterwards, and the exchange log in PostgreSQL verifies offline.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from adapters.samples.synthetic import guangdong_person, write_guangdong_export
from gateway.audit import AuditEntry

HUTONG = [sys.executable, "-m", "gateway.cli"]
RECORDS = int(os.environ.get("HUTONG_FAULT_RECORDS", "3000"))
#: How many times every connection of the hub is terminated during the sync.
TERMINATIONS = 3
WAIT_SECONDS = 120.0
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]


@pytest.fixture
def dedicated_database(postgres_server_url: str) -> Iterator[tuple[Any, str, str]]:
    """(admin connection to the server's ``test`` database, the new database's name, its URL); dropped after."""
    import psycopg

    admin = psycopg.connect(postgres_server_url, autocommit=True, connect_timeout=3)
    name = f"hutong_fault_{secrets.token_hex(6)}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield admin, name, urlunsplit(urlsplit(postgres_server_url)._replace(path=f"/{name}"))
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def terminate_backends(admin: Any, database: str) -> int:
    """End every backend connected to ``database`` (the hub's writer and pooled readers); how many."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return sum(1 for (ended,) in rows if ended)


async def test_every_database_connection_killed_mid_sync_is_reopened_and_the_hub_holds_each_record_once(
    dedicated_database: tuple[Any, str, str],
    tmp_path: Path,
    fault_certs: Path,
    postgres_hub: Callable[[str], Any],
    node_config: Callable[..., Path],
    outbox_view: Callable[[Path], Any],
    exchange_log_verified: Callable[..., list[bytes]],
) -> None:
    admin, database, url = dedicated_database
    hub = await postgres_hub(url)
    config = node_config(tmp_path / "node.toml", fault_certs, f"localhost:{hub.port}")
    export = tmp_path / "export.csv"
    write_guangdong_export(export, range(RECORDS))
    outbox = outbox_view(tmp_path / "node" / "outbox.sqlite")
    log = tmp_path / "node.log"
    with log.open("ab") as out:
        node = await asyncio.create_subprocess_exec(
            *HUTONG, "node", "sync", "--config", str(config), str(export), cwd=tmp_path, stdout=out, stderr=out
        )

    batches = 2 * -(-RECORDS // max(20, RECORDS // 50))  # a batch of records and one of households per batch_size
    terminated: list[int] = []
    async with asyncio.timeout(WAIT_SECONDS):
        for k in range(1, TERMINATIONS + 1):
            while outbox.progress()[1] < k * batches // (TERMINATIONS + 1):
                assert node.returncode is None, log.read_text()[-3000:]
                await asyncio.sleep(0.01)
            terminated.append(terminate_backends(admin, database))
        assert await node.wait() == 0, log.read_text()[-3000:]
    assert all(terminated), terminated  # each time, the hub had connections to lose

    import psycopg

    with psycopg.connect(url) as con:
        held: dict[str, int] = dict(
            con.execute("SELECT record_id, version FROM records WHERE province = '440000'").fetchall()
        )
    assert set(held) == {guangdong_person(n)[0] for n in range(RECORDS)}
    created, outcomes, items, unacked, versions = outbox.tally()
    assert (created, outcomes, items, unacked) == (RECORDS, RECORDS, RECORDS, 0)
    assert versions == held
    assert hub.process.poll() is None  # the same hub process throughout

    assert hub.stop() == 0, hub.log_path.read_text()[-3000:]
    entries = exchange_log_verified(["--config", str(tmp_path / "etc" / "hub.toml")], fault_certs, tmp_path / "audit")
    applied = collections.Counter(
        e.batch_id for e in map(AuditEntry.decode, entries) if e.batch_id and not e.counts.get("replayed")
    )
    assert len(applied) == outbox.progress()[0]
    assert set(applied.values()) == {1}
    reconnects = hub.log_path.read_text().count("store_reconnecting")
    print(f"postgres: terminations={terminated} store_reconnecting={reconnects} records={RECORDS}")
