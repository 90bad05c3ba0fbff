"""``hutong hub serve`` killed with SIGKILL while it appends to the exchange log and while it streams events.

The hub is a real process (SQLite in its data directory) killed with its whole process group, as
on a power cut, then started again on the same port. Clients are this test's own (the Python
client, as a province system would use it) and, for events, a real ``hutong node inbox`` process.

- Audit appends: concurrent queries (each one entry, with the caller's request id) and batches
  (each one entry, with its batch id) run while the hub is killed, more than once. Afterwards
  ``hutong audit verify`` accepts the exported log *and* its consistency with the last signed
  checkpoint a client saw before each kill (the log was neither rolled back nor forked by the
  crash); every call a client got an answer to is in the log; every batch not acknowledged is
  resent and applied once, never twice.
- Events: 河南's inbox process follows its province's events while 广东's syncs raise them
  (a resident of 河南 enrolled in 广东), and a raw subscriber follows them too. The hub dies
  mid-stream and comes back; the inbox resumes from its cursor by itself, the raw subscriber
  from its last event: both end with every event the hub raised — no gap — the raw subscriber
  possibly seeing some twice (at least once), the inbox delivering each exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import errors
from gateway.audit import AuditEntry
from gateway.client import HubClient, RetryConfig
from gateway.domain.model import Outcome
from gateway.rpc_status import REQUEST_ID_KEY
from hutong.v1 import notification_pb2, person_pb2, query_pb2, records_pb2
from pki import TlsMaterial

HUTONG = [sys.executable, "-m", "gateway.cli"]
GD = "hutong://province/440000/node/gd-gz-01"
HA = "hutong://province/410000/node/ha-zz-01"
RESIDENT = notification_pb2.EVENT_KIND_RESIDENT_ENROLLED_ELSEWHERE
CREATED = int(Outcome.CREATED)
#: Kills per test (``HUTONG_FAULT_KILLS``) and records per test (``HUTONG_FAULT_RECORDS``).
KILLS = int(os.environ.get("HUTONG_FAULT_KILLS", "2"))
RECORDS = int(os.environ.get("HUTONG_FAULT_RECORDS", "3000"))
#: Calls answered between kills in the audit test.
CALLS_PER_ROUND = max(40, RECORDS // 30)
#: Records per batch in these tests (small batches: many log entries, many events in flight).
BATCH = 10
#: Every wait is bounded by this many seconds.
WAIT_SECONDS = 60.0
RETRY = RetryConfig(initial_backoff=0.01, max_backoff=0.05, total_deadline=2.0, max_attempts=2, attempt_timeout=10.0)
pytestmark = pytest.mark.timeout(240)


@dataclass
class World:
    """A hub process and the clients of the test (made again after each restart)."""

    tmp: Path
    certs: Path
    hub: Any
    clients: list[HubClient] = field(default_factory=list)

    @property
    def hub_args(self) -> list[str]:
        """How an operator's command names this hub's store."""
        return ["--data-dir", str(self.tmp / "hub")]

    def client(self, uri: str) -> HubClient:
        """A new client of the hub's current run as the node ``uri`` (closed after the test)."""
        stem = uri.removeprefix("hutong://province/").replace("/node/", "-")
        nodes = self.certs / "nodes"
        tls = TlsMaterial.from_files(nodes / f"{stem}.pem", nodes / f"{stem}.key", self.certs / "ca.pem")
        client = HubClient(f"localhost:{self.hub.port}", tls=tls, retry=RETRY)
        self.clients.append(client)
        return client

    async def kill_and_restart(self) -> None:
        """SIGKILL the hub's process group, then start it again on the same port."""
        self.hub.kill()
        await asyncio.to_thread(self.hub.start)

    def hub_db(self, sql: str, *args: Any) -> list[Any]:
        """Rows of a read of the hub's SQLite database (WAL: safe while the hub runs)."""
        con = sqlite3.connect(self.tmp / "hub" / "hub.sqlite3", timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()


@pytest.fixture
async def world(
    tmp_path: Path, fault_certs: Path, hub_process: Callable[..., Any], hub_tls: Callable[[Path], list[str]]
) -> AsyncIterator[World]:
    """A running hub (checkpoints every 0.2 s; 广东 may read the log) and a place for clients."""
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[nodes."{GD}"]\nscopes = ["records:write", "query:enrollment", "audit:read"]\n')
    hub = hub_process(
        "--data-dir", str(tmp_path / "hub"), "--checkpoint-seconds", "0.2", "--policy", str(policy),
        *hub_tls(fault_certs),
    )  # fmt: skip
    await asyncio.to_thread(hub.start)
    made = World(tmp_path, fault_certs, hub)
    try:
        yield made
    finally:
        for client in made.clients:
            await client.close()


def person(make_record: Callable[..., person_pb2.PersonRecord], n: int, **fields: Any) -> person_pb2.PersonRecord:
    """Record ``R<n>`` of 广东, of a person of its own (birth day and sequence from ``n``)."""
    born = dt.date(1930, 1, 1) + dt.timedelta(days=n % 20000)
    return make_record(f"R{n}", birth=born, sequence=101 + 2 * (n // 20000), **fields)


def batch_of(
    make_record: Callable[..., person_pb2.PersonRecord], b: int, **fields: Any
) -> records_pb2.SyncRecordsRequest:
    """Batch ``B<b>``: records ``R<b*BATCH>`` … of 广东."""
    records = [person(make_record, b * BATCH + i, **fields) for i in range(BATCH)]
    return records_pb2.SyncRecordsRequest(batch_id=f"B{b}", records=records)


async def sync_one(client: HubClient, request: records_pb2.SyncRecordsRequest) -> records_pb2.SyncRecordsResponse:
    """The acknowledgement of one batch on its own stream."""
    (ack,) = [a async for a in client.sync([request])]
    return ack


# -- audit appends ----------------------------------------------------------------------------------


@dataclass
class Traffic:
    """What the clients of the audit test were answered, across every kill."""

    asked: str
    answered_queries: set[str] = field(default_factory=set)
    sent: dict[str, records_pb2.SyncRecordsRequest] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    #: The newest signed checkpoint a client saw before each kill.
    seen_before_kill: list[str] = field(default_factory=list)
    batches: int = 0

    @property
    def answered(self) -> int:
        return len(self.answered_queries) + len(self.acknowledged)


async def traffic_until_killed(
    world: World,
    traffic: Traffic,
    round_: int,
    make_record: Callable[..., person_pb2.PersonRecord],
    signed_checkpoint: Callable[..., Coroutine[Any, Any, tuple[str, int]]],
) -> None:
    """Six query workers and two batch workers until the hub, killed after CALLS_PER_ROUND answers, fails them."""
    gd, ha = world.client(GD), world.client(HA)
    metadata = {GD: await gd.call_metadata(), HA: await ha.call_metadata()}
    note, _size = await signed_checkpoint(gd, world.certs, wait=WAIT_SECONDS)
    traffic.seen_before_kill.append(note)
    target = traffic.answered + CALLS_PER_ROUND
    killed = asyncio.Event()
    question = query_pb2.CheckEnrollmentRequest(
        id_number=traffic.asked, purpose=person_pb2.PURPOSE_DUPLICATE_CHECK, programs=[person_pb2.PROGRAM_DIBAO]
    )

    async def queries(client: HubClient, uri: str, worker: int) -> None:
        for i in range(10**6):
            request_id = f"q{round_}-{worker}-{i}"
            try:
                await client.queries.CheckEnrollment(question, metadata=(*metadata[uri], (REQUEST_ID_KEY, request_id)))
            except grpc.aio.AioRpcError as exc:
                if not killed.is_set():  # only the kill fails a call
                    raise AssertionError(f"a query failed before the kill: {exc}") from exc
                return
            traffic.answered_queries.add(request_id)

    async def batches(client: HubClient) -> None:
        while True:
            request = batch_of(make_record, traffic.batches)
            traffic.batches += 1
            traffic.sent[request.batch_id] = request
            try:
                ack = await sync_one(client, request)
            except errors.HutongError as exc:
                if not killed.is_set():
                    raise AssertionError(f"a batch failed before the kill: {exc}") from exc
                return
            assert ack.record_counts.created == BATCH, ack
            traffic.acknowledged.add(ack.batch_id)

    async def watch_and_kill(client: HubClient) -> None:
        async with asyncio.timeout(WAIT_SECONDS):
            while traffic.answered < target:
                with contextlib.suppress(errors.HutongError):
                    traffic.seen_before_kill[-1] = (await client.get_checkpoint()).checkpoint
                await asyncio.sleep(0.02)
        world.hub.kill()  # entries of calls in flight, committed or not, acknowledged or not
        killed.set()

    await asyncio.gather(
        *(queries(c, uri, w) for w, (c, uri) in enumerate([(gd, GD), (ha, HA)] * 3)),
        batches(gd),
        batches(gd),
        watch_and_kill(world.client(GD)),
    )


async def test_the_hub_killed_during_audit_appends_keeps_every_answered_call_and_a_consistent_log(
    world: World,
    make_record: Callable[..., person_pb2.PersonRecord],
    id_number_of: Callable[..., str],
    exchange_log_verified: Callable[..., list[bytes]],
    signed_checkpoint: Callable[..., Coroutine[Any, Any, tuple[str, int]]],
) -> None:
    traffic = Traffic(asked=id_number_of("440000"))
    recovery: list[float] = []
    for round_ in range(KILLS):
        await traffic_until_killed(world, traffic, round_, make_record, signed_checkpoint)
        killed_at = time.monotonic()
        await asyncio.to_thread(world.hub.start)
        await world.client(GD).get_sync_state()  # answering again
        recovery.append(round(time.monotonic() - killed_at, 2))  # a figure to print, never to assert
    sent, acknowledged, answered_queries = traffic.sent, traffic.acknowledged, traffic.answered_queries

    gd = world.client(GD)
    # What was sent and not acknowledged is resent: applied once, whether or not the hub had committed it.
    resent = sorted(set(sent) - acknowledged)
    for batch_id in resent:
        ack = await sync_one(gd, sent[batch_id])
        assert list(ack.record_outcomes) == [CREATED] * BATCH
    assert (await gd.get_sync_state()).records_held == BATCH * len(sent)
    assert world.hub.stop() == 0  # a graceful stop signs a checkpoint of the whole log

    verified = exchange_log_verified(world.hub_args, world.certs, world.tmp / "audit", known=traffic.seen_before_kill)
    entries = [AuditEntry.decode(e) for e in verified]
    logged_queries = collections.Counter(e.request_id for e in entries if e.method.endswith("/CheckEnrollment"))
    assert answered_queries <= set(logged_queries)  # every answered call is in the log
    assert max(logged_queries.values()) == 1
    # A batch's entry is written in the batch's transaction; a resend of an applied batch is
    # answered from its first acknowledgement and logged as a replay, never applied again.
    applied = collections.Counter(e.batch_id for e in entries if e.batch_id and not e.counts.get("replayed"))
    assert applied == dict.fromkeys(sent, 1)
    assert world.hub.starts == KILLS + 1
    print(  # figures for the README (pytest -s)
        f"audit kills={KILLS} answered_queries={len(answered_queries)} batches={len(sent)} resent={len(resent)}"
        f" entries={len(entries)} seconds_from_kill_to_first_answer={recovery}"
    )


# -- the notification stream ------------------------------------------------------------------------

#: Batches of 广东 records of 河南 residents in the events test: one RESIDENT_ENROLLED_ELSEWHERE event each record.
EVENT_BATCHES = max(8, RECORDS // 150)


@dataclass
class Subscriber:
    """A raw subscriber of 河南's events that resubscribes from the last event it saw whenever its stream breaks."""

    world: World
    received: list[int] = field(default_factory=list)
    subscriptions: int = 0

    @property
    def cursor(self) -> str:
        return str(self.received[-1]) if self.received else "0"

    async def follow(self, until: asyncio.Event) -> None:
        """Until ``until`` is set: subscribe, take events in order, and on a broken stream start again."""
        async with asyncio.timeout(WAIT_SECONDS * 3):
            while not until.is_set():
                self.subscriptions += 1
                client = self.world.client(HA)  # a new channel: the hub may have come back at the same address
                last = -1
                try:
                    async for event in client.subscribe(self.cursor):
                        assert event.sequence > last  # in order within one subscription
                        last = event.sequence
                        self.received.append(event.sequence)
                        if until.is_set():
                            break
                except errors.HutongError:
                    await asyncio.sleep(0.1)  # the hub is down: try again


def inbox_files(directory: Path) -> list[tuple[int, str]]:
    """(sequence, event id) of each event ``hutong node inbox`` delivered as a file."""
    found = []
    for path in directory.glob("*.json"):
        seq, _, event_id = path.stem.partition("-")
        found.append((int(seq), event_id))
    return sorted(found)


async def test_the_hub_killed_mid_stream_is_followed_again_from_the_cursor_with_no_event_missed(
    world: World,
    node_config: Callable[..., Path],
    make_record: Callable[..., person_pb2.PersonRecord],
    exchange_log_verified: Callable[..., list[bytes]],
) -> None:
    delivered = world.tmp / "ha" / "delivered"
    config = node_config(
        world.tmp / "ha" / "node.toml",
        world.certs,
        f"localhost:{world.hub.port}",
        node="410000/ha-zz-01",
        extra=f'[inbox]\ndirectory = "{delivered}"\nretry_max_seconds = 0.5\n',
    )
    log = world.tmp / "inbox.log"
    with log.open("ab") as out:
        inbox = await asyncio.create_subprocess_exec(
            *HUTONG, "node", "inbox", "--config", str(config), cwd=config.parent, stdout=out, stderr=out
        )
    raw = Subscriber(world)
    produced = asyncio.Event()
    follower = asyncio.ensure_future(raw.follow(produced))
    acknowledged: list[str] = []
    kills = 0
    try:
        # 广东 enrolls residents of 河南, batch by batch; each batch is resent until acknowledged.
        kill_after = {EVENT_BATCHES * (k + 1) // (KILLS + 1) for k in range(KILLS)}
        gd = world.client(GD)
        for b in range(EVENT_BATCHES):
            request = batch_of(make_record, b, hukou_province="410000")
            async with asyncio.timeout(WAIT_SECONDS):
                while True:
                    try:
                        ack = await sync_one(gd, request)
                        break
                    except errors.HutongError:
                        gd = world.client(GD)
                        await asyncio.sleep(0.1)
            assert ack.record_counts.created == BATCH or ack.replayed, ack
            acknowledged.append(ack.batch_id)
            if b in kill_after:
                # Mid-stream: the inbox has taken some events and is waiting for more.
                async with asyncio.timeout(WAIT_SECONDS):
                    while len(inbox_files(delivered)) < (b + 1) * BATCH // 2:
                        assert inbox.returncode is None, log.read_text()
                        await asyncio.sleep(0.02)
                world.hub.kill()
                kills += 1
                await asyncio.sleep(0.3)  # subscribers find the hub gone
                await asyncio.to_thread(world.hub.start)
                gd = world.client(GD)

        raised = world.hub_db(
            "SELECT seq, event_id FROM events WHERE province = '410000' AND kind = ? ORDER BY seq", RESIDENT
        )
        assert len(raised) == EVENT_BATCHES * BATCH  # one event per record, none raised twice
        expected = [tuple(row) for row in raised]
        for _ in range(int(WAIT_SECONDS / 0.05)):
            if inbox_files(delivered) == expected and len(set(raw.received)) == len(raised):
                break
            assert inbox.returncode is None, log.read_text()
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(
                f"after the kills: {len(inbox_files(delivered))} events delivered by the inbox and"
                f" {len(set(raw.received))} taken by the raw subscriber ({raw.subscriptions} subscriptions)"
                f" of {len(raised)} raised"
            )
        produced.set()
    finally:
        produced.set()
        follower.cancel()  # it waits for the next event
        await asyncio.gather(follower, return_exceptions=True)
        if inbox.returncode is None:
            inbox.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_SECONDS):
            inbox_code = await inbox.wait()
    assert inbox_code == 0, log.read_text()[-3000:]

    # The raw subscriber: every event, no gap; some perhaps twice across a resubscription (at least once).
    sequences = [seq for seq, _ in raised]
    assert sorted(set(raw.received)) == sequences
    assert raw.subscriptions > KILLS
    # The inbox: each event delivered exactly once and acknowledged; the hub's cursor of the node is at the end.
    con = sqlite3.connect(config.parent / "node" / "inbox.sqlite")
    try:
        kept = con.execute(
            "SELECT seq, event_id, delivered_us IS NOT NULL, acked_us IS NOT NULL FROM events"
        ).fetchall()
    finally:
        con.close()
    assert sorted((seq, event_id) for seq, event_id, _, _ in kept) == [tuple(row) for row in raised]
    assert all(d and a for _, _, d, a in kept)
    assert world.hub_db("SELECT count(*) FROM events WHERE province = '410000' AND acked_at_us = 0") == [(0,)]
    assert (await world.client(GD).get_sync_state()).records_held == EVENT_BATCHES * BATCH
    assert world.hub.stop() == 0
    exchange_log_verified(world.hub_args, world.certs, world.tmp / "audit")
    assert kills == KILLS
    print(
        f"events kills={kills} events={len(raised)} raw_received={len(raw.received)}"
        f" redelivered_to_raw={len(raw.received) - len(set(raw.received))} subscriptions={raw.subscriptions}"
    )
