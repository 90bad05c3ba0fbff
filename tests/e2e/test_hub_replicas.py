"""Two ``hutong hub serve`` processes on one PostgreSQL database are one hub, to nodes and to auditors.

Each replica is its own process with its own hub.toml (its own port file, port 0) naming the same
``[store] url`` and the same data directory, whose key files ``hutong hub migrate --create-keys``
made once before either started. Nodes reach each replica with the quickstart certificates, as a
load balancer would send them to either. What the replicas must keep true together (issue 8):

- a batch resent to the other replica is replayed with its first acknowledgement, never applied twice;
- an event raised through one replica reaches the province's subscription on the other, and an
  acknowledgement made on one holds on the other;
- the exchange log is one gapless log under one signed tree, also when a replica dies by SIGKILL
  in the middle of traffic and comes back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway import errors
from gateway.audit import (
    AuditEntry,
    NoteVerifier,
    leaf_hash,
    root_hash,
    sha256,
    verify_binding,
    verify_checkpoint,
    verify_consistency,
)
from gateway.client import HubClient, RetryConfig
from gateway.domain.model import Outcome, Program, Purpose
from gateway.store.postgres import PostgresStore
from hutong.v1 import audit_pb2, notification_pb2, person_pb2, records_pb2
from pki import TlsMaterial

HUTONG = [sys.executable, "-m", "gateway.cli"]
GD = "hutong://province/440000/node/gd-gz-01"
HA = "hutong://province/410000/node/ha-zz-01"
ORIGIN = "hub.test/hutong-audit"
DUPLICATE = notification_pb2.EVENT_KIND_DUPLICATE_ENROLLMENT
RESIDENT = notification_pb2.EVENT_KIND_RESIDENT_ENROLLED_ELSEWHERE
CREATED = int(Outcome.CREATED)
#: Every wait on a replica is bounded by this many seconds (starting, an event, a checkpoint, stopping).
WAIT_SECONDS = 30.0
#: Fast retries: a call to a dead replica fails within seconds instead of backing off for 30.
RETRY = RetryConfig(initial_backoff=0.01, max_backoff=0.05, total_deadline=3.0, max_attempts=2, attempt_timeout=10.0)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Quickstart certificates: the hub's, and one node each for 广东 (440000) and 河南 (410000)."""
    directory = tmp_path_factory.mktemp("replica-pki") / "certs"
    made = run_hutong("pki", "quickstart", str(directory), "--node", "440000/gd-gz-01", "--node", "410000/ha-zz-01")
    assert made.returncode == 0, made.stderr
    return directory


def run_hutong(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``hutong ARGS`` to completion, output captured."""
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([*HUTONG, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@dataclass
class Replica:
    """One ``hutong hub serve --config`` process; ``port`` is the port of its current run."""

    name: str
    config: Path
    port_file: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0


@dataclass
class Replicas:
    """Hub replicas sharing one database and one data directory, and the clients of the test."""

    root: Path
    certs: Path
    store_url: str
    replicas: dict[str, Replica] = field(default_factory=dict)
    clients: list[HubClient] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The default policy grants no audit:read; 广东's node gets it here to read the log's entries.
        self.policy.write_text(
            f'[nodes."{GD}"]\nscopes = ["records:write", "query:enrollment", "audit:read"]\n', encoding="utf-8"
        )

    @property
    def policy(self) -> Path:
        """The access policy every replica serves with."""
        return self.root / "policy.toml"

    @property
    def data_dir(self) -> Path:
        """The directory every replica reads its key files from (and writes the key binding to)."""
        return self.root / "hub"

    @property
    def ca_pem(self) -> bytes:
        """The quickstart CA: what auditors trust."""
        return (self.certs / "ca.pem").read_bytes()

    def configure(self, name: str) -> Replica:
        """Write ``<name>/hub.toml``: its own port file, the shared store, keys, certificates and policy."""
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "hub.toml"
        config.write_text(
            f'[hub]\ndata_dir = "{self.data_dir}"\nlisten = "127.0.0.1:0"\nport_file = "hub.port"\n'
            # No batch-preparation processes: each would cost a second at start on a 2-core machine.
            "grace_seconds = 5\nprepare_workers = 0\n"
            f'[tls]\ncert = "{self.certs / "hub.pem"}"\nkey = "{self.certs / "hub.key"}"\n'
            f'ca = "{self.certs / "ca.pem"}"\n'
            f'[store]\nurl = "{self.store_url}"\n'
            f'[audit]\norigin = "{ORIGIN}"\ncheckpoint_seconds = 0.3\n'
            f'[policy]\nfile = "{self.policy}"\n',
            encoding="utf-8",
        )
        replica = Replica(name, config, directory / "hub.port", directory / "hub.log")
        self.replicas[name] = replica
        return replica

    async def start(self, name: str) -> Replica:
        """Start (or restart) a replica and wait for its port file."""
        replica = self.replicas[name]
        assert replica.process is None or replica.process.poll() is not None, f"replica {name} is running"
        replica.port_file.unlink(missing_ok=True)
        replica.process = spawn(replica)
        async with asyncio.timeout(WAIT_SECONDS):
            while not replica.port_file.exists():
                assert replica.process.poll() is None, replica.log.read_text()
                await asyncio.sleep(0.05)
        replica.port = int(replica.port_file.read_text())
        return replica

    async def stop(self, name: str) -> None:
        """SIGTERM, as an orchestrator stops a replica: it drains, signs a last checkpoint and exits 0."""
        replica = self.replicas[name]
        assert replica.process is not None
        replica.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(replica.process.wait, WAIT_SECONDS)
        assert code == 0, replica.log.read_text()

    def kill(self, name: str) -> None:
        """SIGKILL: the replica dies with whatever it had in flight, as on a power cut."""
        process = self.replicas[name].process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(WAIT_SECONDS)

    def client(self, uri: str, replica: Replica) -> HubClient:
        """A client of ``replica``'s current run on behalf of the node ``uri`` (closed after the test)."""
        stem = uri.removeprefix("hutong://province/").replace("/node/", "-")
        tls = TlsMaterial.from_files(
            self.certs / "nodes" / f"{stem}.pem", self.certs / "nodes" / f"{stem}.key", self.certs / "ca.pem"
        )
        client = HubClient(f"localhost:{replica.port}", tls=tls, retry=RETRY)
        self.clients.append(client)
        return client


def spawn(replica: Replica) -> subprocess.Popen[bytes]:
    """``hutong hub serve --config`` in the background, its output appended to the replica's log."""
    with replica.log.open("ab") as log:
        return subprocess.Popen([*HUTONG, "hub", "serve", "--config", str(replica.config)], stdout=log, stderr=log)


@pytest.fixture
async def replicas(postgres_url: str, certs: Path, tmp_path: Path) -> AsyncIterator[Replicas]:
    """Replicas ``a`` and ``b`` configured on one migrated database with one set of keys; not started yet.

    Every replica still running after the test is stopped with SIGTERM and must exit 0.
    """
    made = Replicas(tmp_path, certs, postgres_url)
    a = made.configure("a")
    made.configure("b")
    migrated = run_hutong("hub", "migrate", "--config", str(a.config), "--create-keys")
    assert migrated.returncode == 0, migrated.stderr
    assert "created keys.json, token-keys.json, audit-note.key" in migrated.stdout
    try:
        yield made
    finally:
        for client in made.clients:
            await client.close()
        running = [r for r in made.replicas.values() if r.process is not None and r.process.poll() is None]
        for replica in running:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGTERM)
        for replica in running:
            assert replica.process is not None
            assert await asyncio.to_thread(replica.process.wait, WAIT_SECONDS) == 0, replica.log.read_text()


async def start_both(replicas: Replicas) -> tuple[Replica, Replica]:
    """Start ``a`` and ``b`` together, as an orchestrator rolls out two replicas."""
    a, b = await asyncio.gather(replicas.start("a"), replicas.start("b"))
    return a, b


# -- helpers ------------------------------------------------------------------------------------------


def batch(batch_id: str, *records: person_pb2.PersonRecord) -> records_pb2.SyncRecordsRequest:
    return records_pb2.SyncRecordsRequest(batch_id=batch_id, records=records)


async def sync(client: HubClient, request: records_pb2.SyncRecordsRequest) -> records_pb2.SyncRecordsResponse:
    """The acknowledgement of one batch on its own stream."""
    (ack,) = [a async for a in client.sync([request])]
    return ack


async def dibao_provinces(client: HubClient, id_number: str) -> list[str]:
    answer = await client.check_enrollment(id_number, Purpose.DUPLICATE_CHECK, [Program.DIBAO])
    return list(answer.results[0].province_codes)


def log_verifier(replicas: Replicas, response: audit_pb2.GetCheckpointResponse) -> NoteVerifier:
    """The checkpoint key the CA vouches for, through the binding the replica serves; it must be the data dir's."""
    served = verify_binding(response.key_binding, replicas.ca_pem, origin=ORIGIN).verifier
    on_disk = verify_binding((replicas.data_dir / "audit-key-binding.json").read_bytes(), replicas.ca_pem).verifier
    assert served.key_hash == on_disk.key_hash
    assert response.verifier_key.startswith(f"{ORIGIN}+")
    return served


async def any_size(head: audit_pb2.GetCheckpointResponse) -> bool:
    return True


async def checkpoint(
    replicas: Replicas,
    client: HubClient,
    covers: Callable[[audit_pb2.GetCheckpointResponse], Awaitable[bool]] = any_size,
) -> audit_pb2.GetCheckpointResponse:
    """The newest checkpoint, once one that ``covers`` what the test needs is signed; its signature verified."""
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            with contextlib.suppress(errors.FailedPrecondition):  # NO_CHECKPOINT: no replica has signed yet
                head = await client.get_checkpoint()
                if await covers(head):
                    break
            await asyncio.sleep(0.1)
    verifier = log_verifier(replicas, head)
    signed = verify_checkpoint(head.checkpoint, verifier.name, verifier.public_key, origin=ORIGIN)
    assert (signed.size, signed.root_hash) == (head.tree_size, head.root_hash)
    return head


async def entries(client: HubClient, tree_size: int, **filters: Any) -> list[audit_pb2.AuditLogEntry]:
    """Every entry of the tree of ``tree_size`` matching ``filters``, page by page (scope audit:read)."""
    request = audit_pb2.ListAuditEntriesRequest(tree_size=tree_size, page_size=100, **filters)
    found: list[audit_pb2.AuditLogEntry] = []
    while True:
        page = await client.list_audit_entries(request)
        assert page.tree_size == tree_size
        found.extend(page.entries)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


async def verify_log(client: HubClient, head: audit_pb2.GetCheckpointResponse) -> list[bytes]:
    """The whole log the checkpoint covers, read through ``client``: gapless, canonical, and of the signed root."""
    listed = await entries(client, head.tree_size)
    assert [e.index for e in listed] == list(range(head.tree_size))
    assert root_hash([leaf_hash(e.entry) for e in listed]) == head.root_hash
    for e in listed:
        AuditEntry.decode(e.entry)  # raises EntryInvalid for anything but a canonical entry
    return [e.entry for e in listed]


async def verify_extends(
    client: HubClient, old: audit_pb2.GetCheckpointResponse, new: audit_pb2.GetCheckpointResponse
) -> None:
    """The replica proves that the newer checkpoint's tree extends the older one's (RFC 9162 consistency)."""
    proof = await client.consistency_proof(old.tree_size, new.tree_size)
    assert (proof.first_tree_size, proof.second_tree_size) == (old.tree_size, new.tree_size)
    verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, list(proof.hashes))


async def next_event(events: AsyncIterator[notification_pb2.Event]) -> notification_pb2.Event:
    """The subscription's next event, within the bound (replicas poll the events table)."""
    async with asyncio.timeout(WAIT_SECONDS):
        return await anext(events)


def records_of(
    prefix: str, first_day: int, count: int, make_record: Callable[..., person_pb2.PersonRecord]
) -> Iterator[person_pb2.PersonRecord]:
    """``count`` records of distinct 广东 persons, born on consecutive days from ``first_day`` after 1950-01-01."""
    for i in range(count):
        yield make_record(f"{prefix}-{i}", birth=dt.date(1950, 1, 1) + dt.timedelta(days=first_day + i))


# -- idempotency --------------------------------------------------------------------------------------


async def test_a_batch_resent_to_the_other_replica_is_replayed_and_its_records_are_held_once(
    replicas: Replicas, make_record: Callable[..., person_pb2.PersonRecord]
) -> None:
    a, b = await start_both(replicas)
    gd_a, gd_b = replicas.client(GD, a), replicas.client(GD, b)

    first_batch = batch("b-1", *records_of("first", 0, 3, make_record))
    first = await sync(gd_a, first_batch)
    assert not first.replayed
    assert list(first.record_outcomes) == [CREATED] * 3
    # The node's resend (its stream to A broke before the acknowledgement) lands on B, with the
    # access token A issued, as it would behind a load balancer: the replicas share the token keys.
    issued_by_a = await gd_a.call_metadata()
    (again,) = [ack async for ack in gd_b.records.SyncRecords(iter([first_batch]), metadata=issued_by_a)]
    assert again.replayed
    assert list(again.record_outcomes) == list(first.record_outcomes)
    assert again.record_counts == first.record_counts

    # The same batch on both replicas at once: applied by one, replayed by the other.
    second_batch = batch("b-2", *records_of("second", 100, 4, make_record))
    acks = await asyncio.gather(sync(gd_a, second_batch), sync(gd_b, second_batch))
    assert sorted(ack.replayed for ack in acks) == [False, True]
    assert [list(ack.record_outcomes) for ack in acks] == [[CREATED] * 4] * 2

    # Other records under a used batch id are refused by the replica that did not apply it, not applied.
    reused = await sync(gd_b, batch("b-1", *records_of("other", 200, 1, make_record)))
    assert reused.batch_rejection.reason == "BATCH_ID_REUSED"

    for client in (gd_a, gd_b):
        state = await client.get_sync_state()
        assert state.records_held == 7


# -- notifications ------------------------------------------------------------------------------------


async def test_an_event_raised_through_one_replica_reaches_a_subscriber_on_the_other_and_acks_hold_on_both(
    replicas: Replicas, make_record: Callable[..., person_pb2.PersonRecord]
) -> None:
    a, b = await start_both(replicas)
    gd_a, ha_a, ha_b = replicas.client(GD, a), replicas.client(HA, a), replicas.client(HA, b)

    # 广东 enrolls a person whose hukou is in 河南: 河南's first event, which also shows that its
    # subscription on B is open and polling before the duplicate is made.
    await sync(gd_a, batch("g-1", make_record("gd-resident", hukou_province="410000", sequence=201)))
    on_b = ha_b.subscribe()
    try:
        resident = await next_event(on_b)
        assert resident.kind == RESIDENT
        assert list(resident.other_province_codes) == ["440000"]

        # Both provinces give the same 广东 person active dibao, each through replica A.
        await sync(gd_a, batch("g-2", make_record("gd-1")))
        await sync(ha_a, batch("h-1", make_record("ha-1", province="410000", hukou_province="440000")))
        duplicate = await next_event(on_b)
    finally:
        await on_b.aclose()
    assert duplicate.kind == DUPLICATE
    assert duplicate.program == person_pb2.PROGRAM_DIBAO
    assert list(duplicate.record_ids) == ["ha-1"]
    assert list(duplicate.other_province_codes) == ["440000"]
    assert duplicate.sequence > resident.sequence

    ack = await ha_b.acknowledge_events([resident.event_id, duplicate.event_id])
    assert ack.cursor == str(duplicate.sequence)
    assert not ack.unknown_event_ids

    # A later event shows where a subscription on A starts: after the acknowledged duplicate,
    # from the cursor B returned and from the node's cursor kept in the database alike.
    await sync(gd_a, batch("g-3", make_record("gd-resident-2", hukou_province="410000", sequence=203)))
    for cursor in (ack.cursor, ""):
        on_a = ha_a.subscribe(cursor)
        try:
            following = await next_event(on_a)
        finally:
            await on_a.aclose()
        assert following.kind == RESIDENT
        assert following.sequence > duplicate.sequence
        assert following.event_id not in (resident.event_id, duplicate.event_id)


# -- the exchange log ---------------------------------------------------------------------------------


def calls_logged(
    client: HubClient, method: str, expected: int
) -> Callable[[audit_pb2.GetCheckpointResponse], Awaitable[bool]]:
    """A checkpoint condition: the tree holds ``expected`` entries of ``method`` (listed through ``client``)."""

    async def covers(head: audit_pb2.GetCheckpointResponse) -> bool:
        return len(await entries(client, head.tree_size, method=method)) >= expected

    return covers


CALLS = 50


async def test_calls_through_both_replicas_make_one_gapless_log_under_one_signed_tree(
    replicas: Replicas,
    make_record: Callable[..., person_pb2.PersonRecord],
    id_number_of: Callable[..., str],
    postgres_url: str,
) -> None:
    a, b = await start_both(replicas)
    gd_a, ha_a, gd_b, ha_b = (replicas.client(uri, r) for r in (a, b) for uri in (GD, HA))
    await sync(gd_a, batch("g-1", make_record("gd-1")))
    before = await checkpoint(replicas, gd_b)

    callers = [gd_a, ha_b, ha_a, gd_b]  # 25 calls per replica, 25 per province
    answers = await asyncio.gather(*(dibao_provinces(callers[i % 4], id_number_of("440000")) for i in range(CALLS)))
    assert answers == [["440000"]] * CALLS

    after = await checkpoint(replicas, gd_b, calls_logged(gd_a, "CheckEnrollment", CALLS))
    assert after.tree_size >= before.tree_size + CALLS
    # Each replica proves the later tree extends the earlier one, and serves the same entries.
    await verify_extends(gd_a, before, after)
    await verify_extends(gd_b, before, after)
    through_a = await verify_log(gd_a, after)
    assert await verify_log(gd_b, after) == through_a
    queries = [e for e in map(AuditEntry.decode, through_a) if e.method.endswith("/CheckEnrollment")]
    assert len(queries) == CALLS
    assert collections.Counter(e.province for e in queries) == {"440000": CALLS // 2, "410000": CALLS // 2}
    assert len({e.request_id for e in queries}) == CALLS

    # Stopped, both have signed at shutdown: the newest checkpoint covers the whole log in the
    # database, whose leaves give its root and extend the tree checked above.
    await asyncio.gather(replicas.stop("a"), replicas.stop("b"))
    store = PostgresStore(postgres_url, audit_hash=sha256)
    await store.open()
    try:
        size, root = await store.audit_tree()
        latest = await store.latest_checkpoint()
        leaves = []
        for index in range(size):
            held = await store.audit_entry(index)
            assert held is not None, f"entry {index} is missing"
            assert held[1] == leaf_hash(held[0])
            leaves.append(held[1])
    finally:
        await store.close()
    assert latest is not None
    verifier = verify_binding((replicas.data_dir / "audit-key-binding.json").read_bytes(), replicas.ca_pem).verifier
    signed = verify_checkpoint(latest[1], verifier.name, verifier.public_key, origin=ORIGIN)
    assert (signed.size, signed.root_hash) == (size, root) == (size, root_hash(leaves))
    assert root_hash(leaves[: after.tree_size]) == after.root_hash


async def test_a_replica_killed_mid_traffic_leaves_the_other_serving_and_after_restart_both_agree_on_the_log(
    replicas: Replicas,
    make_record: Callable[..., person_pb2.PersonRecord],
    id_number_of: Callable[..., str],
) -> None:
    a, b = await start_both(replicas)
    gd_a, gd_b = replicas.client(GD, a), replicas.client(GD, b)
    person = id_number_of("440000")
    await sync(gd_a, batch("seed", make_record("gd-seed")))
    before = await checkpoint(replicas, gd_b)

    killed = asyncio.Event()
    sent: dict[str, records_pb2.SyncRecordsRequest] = {}
    acknowledged: set[str] = set()
    answered = collections.Counter[str]()

    async def queries_until_killed() -> None:
        for _ in range(1000):
            assert await dibao_provinces(gd_a, person) == ["440000"]
            answered["a"] += 1
            if answered["a"] == 30:
                replicas.kill("a")
                killed.set()

    async def queries_on_a() -> None:
        with pytest.raises(errors.Unavailable):
            await queries_until_killed()

    async def batches_on(client: HubClient, prefix: str, first_day: int, count: int) -> None:
        for n in range(count):
            born = dt.date(1930, 1, 1) + dt.timedelta(days=first_day + n)
            request = batch(f"{prefix}-{n}", make_record(f"{prefix}-{n}", birth=born))
            sent[request.batch_id] = request
            ack = await sync(client, request)
            assert ack.record_counts.rejected == 0
            acknowledged.add(ack.batch_id)

    async def batches_on_a() -> None:
        # A stream whose connection dies ends UNAVAILABLE, or INTERNAL when gRPC was sending on it
        # ("Internal error from Core"); either way the node resends what was not acknowledged.
        with pytest.raises(errors.HutongError) as broken:
            await batches_on(gd_a, "a", 0, 1000)
        assert broken.value.code_name in ("UNAVAILABLE", "INTERNAL"), broken.value

    async def traffic_on_b() -> None:
        # B answers through the kill and goes on answering and writing after it.
        async with asyncio.timeout(WAIT_SECONDS):
            while answered["b after the kill"] < 30:
                assert await dibao_provinces(gd_b, person) == ["440000"]
                answered["b"] += 1
                if killed.is_set():
                    answered["b after the kill"] += 1
        await batches_on(gd_b, "b", 2000, 5)

    await asyncio.gather(queries_on_a(), queries_on_a(), batches_on_a(), traffic_on_b())
    process = replicas.replicas["a"].process
    assert process is not None
    assert process.returncode == -signal.SIGKILL

    # What A had in flight is resent to B: applied once whether or not A committed it.
    for batch_id in sorted(set(sent) - acknowledged):
        assert (await sync(gd_b, sent[batch_id])).record_counts.rejected == 0
    assert (await gd_b.get_sync_state()).records_held == 1 + len(sent)

    restarted = replicas.client(GD, await replicas.start("a"))
    assert await dibao_provinces(restarted, person) == ["440000"]
    assert (await restarted.get_sync_state()).records_held == 1 + len(sent)

    # A checkpoint that holds the call made through the restarted A, read through each replica.
    head_b = await checkpoint(replicas, gd_b, calls_logged(gd_b, "GetSyncState", 2))
    head_a = await checkpoint(replicas, restarted, calls_logged(restarted, "GetSyncState", 2))
    through_a = await verify_log(restarted, head_b)
    assert await verify_log(gd_b, head_b) == through_a
    for client in (restarted, gd_b):
        await verify_extends(client, before, head_b)
        low, high = sorted((head_a, head_b), key=lambda head: head.tree_size)
        await verify_extends(client, low, high)
    # Every answered query is in the log; a query in flight on A when it died may be too.
    queries = sum(AuditEntry.decode(e).method.endswith("/CheckEnrollment") for e in through_a)
    answered_queries = answered["a"] + answered["b"] + 1
    assert answered_queries <= queries <= answered_queries + 2
