"""Hubs on PostgreSQL over real mTLS: two replicas on one database share records, idempotency and one log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import MerkleAccumulator, sha256
from gateway.client import HubClient
from gateway.domain.model import Outcome, Program, Purpose
from gateway.store.postgres import PostgresStore
from hutong.v1 import person_pb2, records_pb2

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"


@pytest.fixture
def crypto_suite() -> str:
    return "intl"


async def sync(client: HubClient, batch_id: str, *records: person_pb2.PersonRecord) -> records_pb2.SyncRecordsResponse:
    acks = [a async for a in client.sync([records_pb2.SyncRecordsRequest(batch_id=batch_id, records=records)])]
    return acks[0]


async def provinces_enrolled(client: HubClient, id_number: str) -> list[str]:
    answer = await client.check_enrollment(id_number, Purpose.DUPLICATE_CHECK, [Program.DIBAO])
    return list(answer.results[0].province_codes)


async def test_two_replicas_on_one_database_serve_one_hub(
    hub_factory: Any,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., person_pb2.PersonRecord],
    id_number_of: Callable[..., str],
    postgres_url: str,
    tmp_path: Path,
) -> None:
    # Replicas share the database and the key files (person-key secret, token and audit keys).
    shared = tmp_path / "replicas"
    a = await hub_factory(data_dir=shared, store_url=postgres_url)
    b = await hub_factory(data_dir=shared, store_url=postgres_url)
    gd_a, gd_b, ha_b = client_for(GZ, port=a.port), client_for(GZ, port=b.port), client_for(ZZ, port=b.port)
    record = make_record("gd-1")

    first = await sync(gd_a, "b-1", record)
    assert list(first.record_outcomes) == [int(Outcome.CREATED)]
    # The node's resend lands on the other replica: the same acknowledgement, applied once.
    again = await sync(gd_b, "b-1", record)
    assert again.replayed
    assert list(again.record_outcomes) == list(first.record_outcomes)
    assert (await gd_b.get_sync_state()).records_held == 1

    # A record written through one replica is a duplicate enrollment seen through the other.
    await sync(ha_b, "h-1", make_record("ha-1", province="410000", hukou_province="440000"))
    assert await provinces_enrolled(gd_a, id_number_of("440000")) == ["410000", "440000"]

    # Calls through both replicas at once: one gapless log, whose root is the RFC 9162 root of its leaves.
    await asyncio.gather(
        *(provinces_enrolled(client, id_number_of("440000")) for client in (gd_a, gd_b, ha_b) for _ in range(10))
    )
    await a.stop(1)
    await b.stop(1)
    store = PostgresStore(postgres_url, audit_hash=sha256)
    await store.open()
    try:
        size, root = await store.audit_tree()
        assert size >= 36  # 2 syncs + a replay + 33 queries, plus token issues and the replicas' own entries
        tree = MerkleAccumulator(sha256)
        for index in range(size):
            held = await store.audit_entry(index)
            assert held is not None, f"entry {index} is missing"
            tree.append(held[1])
        assert tree.root() == root
        latest = await store.latest_checkpoint()
        assert latest is not None  # both replicas sign at shutdown; one note per size
        assert latest[0] <= size
    finally:
        await store.close()
