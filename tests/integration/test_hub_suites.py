"""The hub's at-rest protection under each crypto suite, on a real key file and a real SQLite file.

Runs the path a hub takes for an incoming batch: the key file from ``load_or_create_keys``,
``prepare_request`` on the serialized request, ``SqliteStore.apply_batch``; then reads the
database back as an attacker with the file (and no keys) would, and as a hub of the other
suite would.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.client import HubClient
from gateway.domain.model import Program, Purpose
from gateway.domain.protection import CryptoSuite, FieldSealer, PersonKeyer
from gateway.domain.records import RecordPreparer, unseal_pii
from gateway.errors import ConfigError, StoreError
from gateway.hub.keys import load_or_create_keys
from gateway.hub.preparation import prepare_request
from gateway.hub.server import DATABASE_FILE
from gateway.store.base import NodeRef
from gateway.store.sqlite import SqliteStore
from hutong.v1 import records_pb2

GZ = NodeRef("440000", "gz-01")
NAMES = ("张三", "李四", "王五")
OTHER = {CryptoSuite.INTL: CryptoSuite.SM, CryptoSuite.SM: CryptoSuite.INTL}
SUITES = pytest.mark.parametrize("suite", list(CryptoSuite), ids=[s.value for s in CryptoSuite])


async def sync_into_new_hub(
    data_dir: Path, suite: CryptoSuite, records: list[Any]
) -> tuple[PersonKeyer, FieldSealer, SqliteStore]:
    """Make a hub's keys in ``suite``, prepare one batch as the hub does and apply it; the store stays open."""
    keys = load_or_create_keys(data_dir, suite=suite)
    keyer, sealer = PersonKeyer(keys.person_key_secret, suite=keys.suite), FieldSealer(keys)
    request = records_pb2.SyncRecordsRequest(batch_id="b1", records=records)
    prepared = prepare_request(RecordPreparer(keyer, sealer), GZ.province_code, request.SerializeToString(), 100)
    assert prepared.batch is not None
    assert prepared.batch.record_rejections == []
    store = SqliteStore(data_dir / DATABASE_FILE)
    await store.open()
    ack = await store.apply_batch(GZ, prepared.batch_id, prepared.digest, prepared.batch)
    assert ack.batch_rejection is None
    assert len(ack.record_outcomes) == len(records)
    return keyer, sealer, store


def every_value(db: Path) -> list[object]:
    """Every value of every row of every table."""
    values: list[object] = []
    con = sqlite3.connect(db)
    try:
        tables = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                values.extend(row)
    finally:
        con.close()
    return values


@SUITES
async def test_a_synced_hub_holds_no_raw_id_number_or_name_in_either_suite(
    tmp_path: Path, suite: CryptoSuite, make_record: Callable[..., Any], id_number_of: Callable[..., str]
) -> None:
    records = [make_record(f"r-{n}", sequence=100 + n, name=name) for n, name in enumerate(NAMES)]
    numbers = [id_number_of("440000", sequence=100 + n) for n in range(len(NAMES))]
    _, _, store = await sync_into_new_hub(tmp_path / "hub", suite, records)
    await store.close()

    secrets = [s.encode() for s in (*numbers, *NAMES)]
    for value in every_value(tmp_path / "hub" / DATABASE_FILE):
        raw = value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else b""
        assert not any(secret in raw for secret in secrets)
    for path in (tmp_path / "hub").glob(f"{DATABASE_FILE}*"):
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), path.name


@SUITES
async def test_persons_are_indexed_under_the_suites_person_key_only(
    tmp_path: Path, suite: CryptoSuite, make_record: Callable[..., Any], id_number_of: Callable[..., str]
) -> None:
    keyer, _, store = await sync_into_new_hub(tmp_path / "hub", suite, [make_record("r-1", sequence=7)])
    try:
        number = id_number_of("440000", sequence=7)
        own = keyer.person_key(number)
        # The same secret under the other suite's HMAC names nobody here.
        other = PersonKeyer(load_or_create_keys(tmp_path / "hub").person_key_secret, suite=OTHER[suite])
        held = await store.enrollments_of([own, other.person_key(number)])
        assert list(held) == [own]
        assert [h.record_id for h in held[own]] == ["r-1"]
    finally:
        await store.close()


@SUITES
async def test_sealed_pii_opens_under_its_own_suite_only(
    tmp_path: Path, suite: CryptoSuite, make_record: Callable[..., Any], id_number_of: Callable[..., str]
) -> None:
    _, sealer, store = await sync_into_new_hub(tmp_path / "hub", suite, [make_record("r-1", sequence=7, name="赵六")])
    try:
        blob = await store.sealed_pii_of("440000", "r-1")
    finally:
        await store.close()
    assert blob is not None
    assert blob.startswith(b"\x02k1" if suite is CryptoSuite.INTL else b"\x05sm:k1")
    assert unseal_pii(sealer, blob, "440000", "r-1") == (id_number_of("440000", sequence=7), "赵六")

    stranger = FieldSealer(load_or_create_keys(tmp_path / "other-hub", suite=OTHER[suite]))
    with pytest.raises(StoreError) as caught:
        unseal_pii(stranger, blob, "440000", "r-1")
    assert caught.value.reason == "CRYPTO_SUITE_MISMATCH"
    assert caught.value.metadata["blob_suite"] == suite.value

    # Bound to its row: the same blob read as another record's does not open.
    with pytest.raises(StoreError) as caught:
        unseal_pii(sealer, blob, "440000", "r-2")
    assert caught.value.reason == "SEALED_FIELD_DAMAGED"


@SUITES
async def test_a_restarted_hub_reads_its_data_in_its_suite_and_refuses_the_other(
    tmp_path: Path, suite: CryptoSuite, make_record: Callable[..., Any], id_number_of: Callable[..., str]
) -> None:
    data_dir = tmp_path / "hub"
    _, _, store = await sync_into_new_hub(data_dir, suite, [make_record("r-1", sequence=7)])
    await store.close()

    keys = load_or_create_keys(data_dir, suite=suite)
    reopened = SqliteStore(data_dir / DATABASE_FILE)
    await reopened.open()
    try:
        number = id_number_of("440000", sequence=7)
        key = PersonKeyer(keys.person_key_secret, suite=keys.suite).person_key(number)
        assert [h.record_id for h in (await reopened.enrollments_of([key]))[key]] == ["r-1"]
        blob = await reopened.sealed_pii_of("440000", "r-1")
        assert blob is not None
        assert unseal_pii(FieldSealer(keys), blob, "440000", "r-1")[0] == number
    finally:
        await reopened.close()

    with pytest.raises(ConfigError) as caught:
        load_or_create_keys(data_dir, suite=OTHER[suite])
    assert caught.value.reason == "CRYPTO_SUITE_MISMATCH"


@pytest.mark.parametrize("suite", ["intl", "sm"])
async def test_a_hub_serves_sync_and_queries_under_each_suite_with_worker_processes(
    suite: str, hub_factory: Any, client_for: Callable[..., Any], make_record: Callable[..., Any], tmp_path: Path
) -> None:
    data_dir = tmp_path / f"hub-{suite}"
    hub = await hub_factory(data_dir=data_dir, crypto_suite=suite, prepare_workers=1)
    node: HubClient = client_for("hutong://province/440000/node/gz-01", port=hub.port)
    record = make_record("s-1")
    acks = [ack async for ack in node.sync([records_pb2.SyncRecordsRequest(batch_id="s1", records=[record])])]
    assert list(acks[0].record_outcomes) == [records_pb2.OUTCOME_CREATED]
    answer = await node.check_enrollment(record.id_number, Purpose.DUPLICATE_CHECK, [Program.DIBAO])
    assert answer.results[0].enrolled
    assert json.loads((data_dir / "keys.json").read_text())["suite"] == suite
    await hub.stop(0)
    other = "sm" if suite == "intl" else "intl"
    with pytest.raises(ConfigError) as refused:
        await hub_factory(data_dir=data_dir, crypto_suite=other)
    assert refused.value.reason == "CRYPTO_SUITE_MISMATCH"
