"""Soak: mixed traffic from six province nodes against one hub process, for a bounded time.

Run: ``.venv/bin/python bench/bench_soak.py [--minutes 10] [--json report.json]``

In one run, on this machine:

1. a demo PKI (one CA, the hub, one certificate per province node) and a ``hub.toml`` are written;
   the hub (``hutong hub serve --config hub.toml``: loopback, SQLite, FULL durability, an access
   policy with purposes and rates, a CRL checked on every call) runs as its own process;
2. one client process, one event loop, drives six simulated provinces, each with its own
   certificate and channel, until ``--minutes`` have passed:

   * a ``SyncRecords`` stream (reopened every 30 s) of batches holding new records, updates of
     records it holds, and "movers": persons another province holds, enrolled here too (the
     duplicate enrollments and hukou notices that feed the notification streams);
   * two callers making ``CheckEnrollment``, ``BatchCheckEnrollment`` and ``LookupPerson`` calls
     with the purposes the policy allows, about persons held (and a tenth unknown);
   * a notification subscription (reopened every 60 s) that consumes its events, acknowledges
     them and reports an outcome for every tenth;
   * every sample, one node witnesses the exchange log's newest checkpoint (consistency proof);

3. every ``--sample-seconds`` the hub's RSS (VmRSS, with any preparation workers), open file
   descriptors, threads, CPU and database size are sampled;
4. when the time is up every loop stops by itself; the subscriptions drain the last events; the
   hub is stopped with SIGTERM, and the run is checked: nothing lost (each node's ``GetSyncState``
   and the store hold exactly the records acknowledged CREATED; every event raised was delivered
   and acknowledged) and the exchange log verifies offline (``verify_export``, the library behind
   ``hutong audit verify``) against the CA and the checkpoints the nodes witnessed.

Prints throughput per kind of work, p50/p99 latency per RPC, failures by status code, the memory
samples, and the baseline of this same run: the first window's throughput and latency (a minute,
or a third of a short run) against the last window's. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from array import array
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from bench_hub import children, cpu_seconds, stop

from gateway.audit import verify_binding
from gateway.audit.archive import export_log, verify_export
from gateway.audit_commands import witness_checkpoint
from gateway.client import HubClient
from gateway.demo.population import PopulationSpec, iter_province_records
from gateway.demo.run import spawn_server
from gateway.domain.divisions import counties_of
from gateway.domain.identity import check_character
from gateway.errors import HutongError
from gateway.hub.audit import open_audit_source
from gateway.hub.server import DATABASE_FILE
from gateway.logs import configure_logging
from gateway.store.sqlite import SqliteStore
from hutong.v1 import notification_pb2, person_pb2, query_pb2, records_pb2
from pki import DemoPki, write_demo_pki

T = TypeVar("T")

#: The simulated provinces: (province code, node name).
NODES: tuple[tuple[str, str], ...] = (
    ("440000", "gd-gz-01"),
    ("410000", "ha-zz-01"),
    ("510000", "sc-cd-01"),
    ("330000", "zj-hz-01"),
    ("320000", "js-nj-01"),
    ("420000", "hb-wh-01"),
)
BATCH = 200  # records per SyncRecords batch: new ones, plus
UPDATES_PER_BATCH = 40  # new versions of records the province holds, and
MOVERS_PER_BATCH = 4  # persons another province holds, enrolled in 低保 here too
WINDOW = 2  # batches unacknowledged per stream
STREAM_SECONDS = 30.0  # a sync stream is closed and reopened this often
SUBSCRIBE_SECONDS = 60.0  # and a subscription this often (empty cursor: resume after the acknowledged)
QUERY_CALLERS = 2  # per province
BATCH_CHECK_SIZE = 50
UNKNOWN_SHARE = 0.1  # queries about persons nobody holds
OUTCOME_EVERY = 10  # report an outcome for every tenth event
HELD_SAMPLE = 20_000  # records each province remembers for updates and movers
ID_SAMPLE = 50_000  # ID numbers remembered for queries
DRAIN_QUIET = 3.0  # after the load: subscriptions stop once no event came for this long
DRAIN_LIMIT = 30.0  # or after this long at most
CALL_TIMEOUT = 30.0
#: What a record held may cost the hub's memory: the linkage's birth-date directory takes 16 bytes per live record
#: (README, "The warm index"); the margin covers SQLite's page caches (bounded) filling as the database grows.
#: Growth beyond it, late in the run, is flagged.
RECORD_BYTES = 64
PURPOSES = (
    person_pb2.PURPOSE_ELIGIBILITY_REVIEW,
    person_pb2.PURPOSE_DUPLICATE_CHECK,
    person_pb2.PURPOSE_CROSS_REGION_APPLICATION,
    person_pb2.PURPOSE_MONITORING_FOLLOW_UP,
)
QUERY_MIX = (("CheckEnrollment", 6), ("LookupPerson", 3), ("BatchCheckEnrollment", 1))

POLICY = """\
[defaults]
scopes = ["records:write", "query:enrollment"]
rate_per_second = 5000
burst = 10000

[scopes."query:enrollment"]
purposes = ["eligibility-review", "duplicate-check", "cross-region-application", "monitoring-follow-up"]
"""

# -- measurements -------------------------------------------------------------------------------


class Rpc:
    """Calls of one RPC: when each good one ended (seconds into the run), its latency, failures by code."""

    def __init__(self) -> None:
        self.ended = array("d")
        self.ms = array("d")
        self.codes: Counter[str] = Counter()

    def ok(self, ended: float, latency_s: float) -> None:
        self.ended.append(ended)
        self.ms.append(latency_s * 1000)

    def latencies(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return sorted(ms for t, ms in zip(self.ended, self.ms, strict=True) if start <= t < end)


class Flow:
    """Units of work done (records acknowledged, queries answered, events received), with when."""

    def __init__(self) -> None:
        self.at = array("d")
        self.units = array("q")

    def add(self, at: float, units: int) -> None:
        self.at.append(at)
        self.units.append(units)

    @property
    def total(self) -> int:
        return sum(self.units)

    def rate(self, start: float, end: float) -> float:
        done = sum(u for t, u in zip(self.at, self.units, strict=True) if start <= t < end)
        return done / (end - start) if end > start else 0.0


def pct(sorted_ms: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, nearest rank; NaN without values."""
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


class Ring(Generic[T]):
    """The last ``capacity`` items added, for random picks."""

    def __init__(self, capacity: int) -> None:
        self.items: list[T] = []
        self.capacity = capacity
        self._next = 0

    def add(self, item: T) -> None:
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            self.items[self._next] = item
            self._next = (self._next + 1) % self.capacity

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Sample:
    """The hub process, sampled."""

    t: float
    rss_mib: float
    fds: int
    threads: int
    hub_cpu_pct: float
    client_cpu_pct: float
    db_mib: float
    records: int
    queries: int
    events: int


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def hub_memory(pid: int) -> tuple[float, int, int]:
    """VmRSS (MiB), open file descriptors and threads of the hub and its preparation workers."""
    rss, fds, threads = 0.0, 0, 0
    for proc in [pid, *children(pid)]:
        status = _status(proc)
        rss += int(status["VmRSS"].split()[0]) / 1024
        threads += int(status["Threads"])
        fds += len(os.listdir(f"/proc/{proc}/fd"))
    return rss, fds, threads


# -- the provinces --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one province sent and what the hub answered, record by record."""

    #: Records sent: new ones, updates, movers.
    new: int = 0
    updates: int = 0
    movers: int = 0
    batches: int = 0
    created: int = 0
    updated: int = 0
    rejected: int = 0
    #: (kind sent, outcome) pairs other than new→CREATED/REJECTED, update→UPDATED, mover→CREATED.
    unexpected: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    #: Batches sent whose acknowledgement never came (their stream broke).
    unacknowledged: int = 0


class Province:
    """One province node: its certificate's client, its records, its event inbox."""

    def __init__(self, code: str, name: str, client: HubClient, ca_pem: bytes, spec: PopulationSpec, seed: int) -> None:
        self.code, self.name, self.client, self.ca_pem = code, name, client, ca_pem
        self.records: Iterator[person_pb2.PersonRecord] = iter_province_records(spec, code)
        self.held: Ring[person_pb2.PersonRecord] = Ring(HELD_SAMPLE)
        self.counties = counties_of(code)
        self.rng = random.Random(f"{seed}:{code}")
        self.tally = Tally()
        self.batch_no = 0
        self.mover_no = 0
        self.events_seen: set[str] = set()
        self.redelivered = 0
        self.pending_acks: list[str] = []
        #: Acknowledgements and outcome reports under way (the consumer does not wait for them).
        self.calls: set[asyncio.Task[None]] = set()
        self.next_send = 0.0
        self.last_ack = 0.0
        self.outcomes_reported = 0

    def next_batch(self, others: list[Province]) -> tuple[records_pb2.SyncRecordsRequest, list[str]]:
        """A batch of new records, updates and movers, and what each record is."""
        self.batch_no += 1
        request = records_pb2.SyncRecordsRequest(batch_id=f"soak-{self.code}-{self.batch_no:07d}")
        kinds: list[str] = []
        sources = [p for p in others if len(p.held)]
        for _ in range(MOVERS_PER_BATCH if sources else 0):
            source = self.rng.choice(sources)
            request.records.append(self._mover(self.rng.choice(source.held.items)))
            kinds.append("mover")
        if len(self.held):
            picks = self.rng.sample(range(len(self.held)), min(UPDATES_PER_BATCH, len(self.held)))
            for i in picks:
                self.held.items[i] = self._updated(self.held.items[i])
                request.records.append(self.held.items[i])
                kinds.append("update")
        while len(kinds) < BATCH:
            record = next(self.records, None)
            if record is None:  # the population is used up: the rest of the run sends updates only
                break
            request.records.append(record)
            kinds.append("new")
        self.tally.new += kinds.count("new")
        self.tally.updates += kinds.count("update")
        self.tally.movers += kinds.count("mover")
        return request, kinds

    def _updated(self, held: person_pb2.PersonRecord) -> person_pb2.PersonRecord:
        record = person_pb2.PersonRecord()
        record.CopyFrom(held)
        record.version += 1
        paid = [e for e in record.enrollments if e.monthly_amount_fen > 0]
        if paid:
            paid[0].monthly_amount_fen += 100  # the yearly raise of the dibao line
        else:
            record.residence_division = self.rng.choice(self.counties)  # moved within the province
            for enrollment in record.enrollments:
                enrollment.granting_division = record.residence_division
        record.updated_at.GetCurrentTime()
        return record

    def _mover(self, source: person_pb2.PersonRecord) -> person_pb2.PersonRecord:
        self.mover_no += 1
        county = self.rng.choice(self.counties)
        record = person_pb2.PersonRecord()
        record.CopyFrom(source)
        record.record_id = f"{self.code[:2]}-mv-{self.mover_no:07d}"
        record.version = 1
        record.residence_division = county
        record.ClearField("household_id")
        del record.enrollments[:]
        start = dt.date.today() - dt.timedelta(days=30)
        record.enrollments.add(
            program=person_pb2.PROGRAM_DIBAO,
            status=person_pb2.ENROLLMENT_STATUS_ACTIVE,
            start_date=person_pb2.Date(year=start.year, month=start.month, day=start.day),
            monthly_amount_fen=self.rng.randrange(50_000, 90_000, 100),
            granting_division=county,
        )
        record.updated_at.GetCurrentTime()
        return record


# -- the soak ---------------------------------------------------------------------------------------


class Soak:
    """Every loop of the run, bounded by ``deadline`` (monotonic seconds)."""

    def __init__(
        self,
        provinces: list[Province],
        minutes: float,
        sample_seconds: float,
        records_per_second: float,
        hub_pid: int,
        root: Path,
    ) -> None:
        self.provinces = provinces
        #: Seconds between one province's batches; 0: as fast as the hub acknowledges.
        self.batch_interval = len(provinces) * BATCH / records_per_second if records_per_second else 0.0
        self.t0 = time.monotonic()
        self.deadline = self.t0 + minutes * 60
        self.sample_seconds = sample_seconds
        self.hub_pid = hub_pid
        self.root = root
        self.rpcs: dict[str, Rpc] = {}
        self.flows = {name: Flow() for name in ("records", "queries", "persons asked", "events")}
        self.ids: Ring[str] = Ring(ID_SAMPLE)
        self.samples: list[Sample] = []
        self.load_done = asyncio.Event()
        self.load_seconds = 0.0
        self.witnessed: list[str] = []
        self.witness_failures: list[str] = []
        self.sync_states: dict[str, records_pb2.GetSyncStateResponse] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def rpc(self, name: str) -> Rpc:
        if name not in self.rpcs:
            self.rpcs[name] = Rpc()
        return self.rpcs[name]

    async def timed(self, name: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run one unary call; its latency or its status code is recorded; None when it failed."""
        started = time.monotonic()
        try:
            result = await call()
        except grpc.aio.AioRpcError as exc:
            self.rpc(name).codes[exc.code().name] += 1
            return None
        except HutongError as exc:  # the token, fetched by the client
            self.rpc(name).codes[exc.code_name] += 1
            return None
        ended = time.monotonic()
        self.rpc(name).ok(ended - self.t0, ended - started)
        return result

    async def run(self) -> None:
        load = [asyncio.create_task(self.sync_loop(p)) for p in self.provinces]
        load += [asyncio.create_task(self.query_loop(p)) for p in self.provinces for _ in range(QUERY_CALLERS)]
        subscribers = [asyncio.create_task(self.subscribe_loop(p)) for p in self.provinces]
        sampler = asyncio.create_task(self.sample_loop())
        await asyncio.gather(*load)
        self.load_seconds = self.now()
        self.load_done.set()
        await asyncio.gather(*subscribers)
        await sampler
        for province in self.provinces:
            state = await self.timed("GetSyncState", province.client.get_sync_state)
            if state is not None:
                self.sync_states[province.code] = state

    # -- records

    async def sync_loop(self, province: Province) -> None:
        others = [p for p in self.provinces if p is not province]
        while time.monotonic() < self.deadline:
            await self.sync_stream(province, others, min(self.deadline, time.monotonic() + STREAM_SECONDS))

    async def sync_stream(self, province: Province, others: list[Province], until: float) -> None:
        """One SyncRecords stream: batches until ``until``, every acknowledgement checked record by record."""
        tally = province.tally
        credits = asyncio.Semaphore(WINDOW)
        in_flight: deque[tuple[records_pb2.SyncRecordsRequest, list[str], float]] = deque()

        async def requests() -> AsyncIterator[records_pb2.SyncRecordsRequest]:
            while time.monotonic() < until:
                await credits.acquire()
                if self.batch_interval:  # paced: batches on a fixed schedule; a hub behind it gets them back to back
                    province.next_send = max(province.next_send, time.monotonic() - self.batch_interval)
                    await asyncio.sleep(province.next_send - time.monotonic())
                    province.next_send += self.batch_interval
                if time.monotonic() >= until:
                    break
                request, kinds = province.next_batch(others)
                if not kinds:
                    break
                in_flight.append((request, kinds, time.monotonic()))
                yield request

        md = await province.client.call_metadata()
        call = province.client.records.SyncRecords(requests(), metadata=md)
        try:
            # A stream that hangs past its time (and a grace for the window in flight) is cut off.
            async with asyncio.timeout(until - time.monotonic() + CALL_TIMEOUT):
                async for ack in call:
                    credits.release()
                    request, kinds, sent = in_flight.popleft()
                    ended = time.monotonic()
                    self.rpc("SyncRecords (batch)").ok(ended - self.t0, ended - sent)
                    self._tally(province, request, kinds, ack)
                    self.flows["records"].add(ended - self.t0, len(kinds))
        except grpc.aio.AioRpcError as exc:
            self.rpc("SyncRecords (batch)").codes[exc.code().name] += 1
        except TimeoutError:
            self.rpc("SyncRecords (batch)").codes["DEADLINE_EXCEEDED"] += 1
        finally:
            call.cancel()
        tally.unacknowledged += len(in_flight)

    def _tally(
        self,
        province: Province,
        request: records_pb2.SyncRecordsRequest,
        kinds: list[str],
        ack: records_pb2.SyncRecordsResponse,
    ) -> None:
        tally = province.tally
        tally.batches += 1
        for rejection in ack.record_rejections:
            tally.reasons[rejection.reason] += 1
        if len(ack.record_outcomes) != len(kinds):
            tally.unexpected[f"batch of {len(kinds)} answered with {len(ack.record_outcomes)} outcomes"] += 1
            return
        for record, kind, outcome in zip(request.records, kinds, ack.record_outcomes, strict=True):
            if outcome == records_pb2.OUTCOME_CREATED and kind in ("new", "mover"):
                tally.created += 1
                province.held.add(record)
                self.ids.add(record.id_number)
            elif outcome == records_pb2.OUTCOME_REJECTED and kind == "new":
                tally.rejected += 1  # a planted export error (bad check character, unknown division, ...)
            elif outcome == records_pb2.OUTCOME_UPDATED and kind == "update":
                tally.updated += 1
            else:
                tally.unexpected[f"{kind}->{records_pb2.Outcome.Name(outcome)}"] += 1

    # -- queries

    def _id(self, rng: random.Random) -> str:
        known = self.ids.items[rng.randrange(len(self.ids))]
        if rng.random() >= UNKNOWN_SHARE:
            return known
        # A valid number of the same county and birth date with another sequence: most likely nobody held.
        first17 = known[:14] + f"{rng.randrange(1000):03d}"
        return first17 + check_character(first17)

    async def query_loop(self, province: Province) -> None:
        rng = random.Random(f"{province.rng.random()}")
        queries = province.client.queries
        names = [name for name, _ in QUERY_MIX]
        weights = [w for _, w in QUERY_MIX]
        while time.monotonic() < self.deadline:
            if not len(self.ids):
                await asyncio.sleep(0.1)
                continue
            name = rng.choices(names, weights)[0]
            purpose = rng.choice(PURPOSES)
            md = await province.client.call_metadata()
            persons = 1
            call: Callable[[], Awaitable[Any]]
            if name == "CheckEnrollment":
                programs = [] if rng.random() < 0.5 else [person_pb2.PROGRAM_DIBAO, person_pb2.PROGRAM_EXTREME_POVERTY]
                check = query_pb2.CheckEnrollmentRequest(id_number=self._id(rng), purpose=purpose, programs=programs)
                call = functools.partial(queries.CheckEnrollment, check, metadata=md, timeout=CALL_TIMEOUT)
            elif name == "LookupPerson":
                lookup = query_pb2.LookupPersonRequest(id_number=self._id(rng), purpose=purpose)
                call = functools.partial(queries.LookupPerson, lookup, metadata=md, timeout=CALL_TIMEOUT)
            else:
                persons = BATCH_CHECK_SIZE
                batch = query_pb2.BatchCheckEnrollmentRequest(
                    id_numbers=[self._id(rng) for _ in range(persons)], purpose=purpose
                )
                call = functools.partial(queries.BatchCheckEnrollment, batch, metadata=md, timeout=CALL_TIMEOUT)
            if await self.timed(name, call) is not None:
                self.flows["queries"].add(self.now(), 1)
                self.flows["persons asked"].add(self.now(), persons)

    # -- notifications

    async def subscribe_loop(self, province: Province) -> None:
        """Subscribe, consume, acknowledge; resubscribe every minute; after the load, drain and stop."""
        while not await self.subscription(province):
            pass

    async def subscription(self, province: Province) -> bool:
        """One subscription; True when the soak is over (the load is done and the stream went quiet)."""
        client = province.client
        queue: asyncio.Queue[notification_pb2.Event] = asyncio.Queue()
        md = await client.call_metadata()
        call = client.notifications.Subscribe(notification_pb2.SubscribeRequest(), metadata=md)

        async def pump() -> None:
            try:
                async for response in call:
                    queue.put_nowait(response.event)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    self.rpc("Subscribe").codes[exc.code().name] += 1

        reader = asyncio.create_task(pump())
        until = min(self.deadline, time.monotonic() + SUBSCRIBE_SECONDS)
        last_event = time.monotonic()
        over = False
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    event = None
                if event is not None:
                    last_event = time.monotonic()
                    await self._consume(province, event)
                if province.pending_acks and (
                    len(province.pending_acks) >= 100 or time.monotonic() - province.last_ack >= 1.0
                ):
                    self._background(province, self._acknowledge(province))
                if self.load_done.is_set():
                    quiet = time.monotonic() - last_event >= DRAIN_QUIET
                    if quiet or time.monotonic() > self.t0 + self.load_seconds + DRAIN_LIMIT:
                        over = True
                        break
                elif time.monotonic() >= until:
                    break
                if reader.done() and queue.empty():
                    break  # the stream ended or broke: subscribe again
        finally:
            call.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if province.pending_acks:
            self._background(province, self._acknowledge(province))
        # Acknowledged before subscribing again (or stopping), so that nothing is delivered twice needlessly.
        await asyncio.gather(*province.calls)
        return over

    @staticmethod
    def _background(province: Province, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(call)
        province.calls.add(task)
        task.add_done_callback(province.calls.discard)

    async def _consume(self, province: Province, event: notification_pb2.Event) -> None:
        if event.event_id in province.events_seen:
            province.redelivered += 1  # at least once: an event not yet acknowledged when we resubscribed
            return
        province.events_seen.add(event.event_id)
        lag = time.time() - event.created_at.ToMicroseconds() / 1e6
        self.rpc("event delivery (raised→received)").ok(self.now(), max(lag, 0.0))
        self.flows["events"].add(self.now(), 1)
        province.pending_acks.append(event.event_id)
        if len(province.events_seen) % OUTCOME_EVERY == 0:
            self._background(province, self._report(province, event.event_id))

    async def _report(self, province: Province, event_id: str) -> None:
        request = notification_pb2.ReportOutcomeRequest(
            request_id=f"soak-{event_id}", event_id=event_id, outcome=notification_pb2.EVENT_OUTCOME_ALREADY_HANDLED
        )
        md = await province.client.call_metadata()
        notifications = province.client.notifications
        answer = await self.timed(
            "ReportOutcome", lambda: notifications.ReportOutcome(request, metadata=md, timeout=CALL_TIMEOUT)
        )
        if answer is not None:
            province.outcomes_reported += 1

    async def _acknowledge(self, province: Province) -> None:
        ids, province.pending_acks = province.pending_acks, []
        province.last_ack = time.monotonic()
        request = notification_pb2.AcknowledgeEventsRequest(event_ids=ids)
        md = await province.client.call_metadata()
        notifications = province.client.notifications
        answer = await self.timed(
            "AcknowledgeEvents",
            lambda: notifications.AcknowledgeEvents(request, metadata=md, timeout=CALL_TIMEOUT),
        )
        if answer is not None and answer.unknown_event_ids:
            self.rpc("AcknowledgeEvents").codes["UNKNOWN_EVENT_IDS"] += len(answer.unknown_event_ids)

    # -- sampling and witnessing

    async def sample_loop(self) -> None:
        last_hub, last_client, last_at = cpu_seconds(self.hub_pid), time.process_time(), time.monotonic()
        db = self.root / "hub" / DATABASE_FILE
        turn = 0
        while not self.load_done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.load_done.wait(), self.sample_seconds)
            hub_cpu, client_cpu, at = cpu_seconds(self.hub_pid), time.process_time(), time.monotonic()
            rss, fds, threads = hub_memory(self.hub_pid)
            size = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
            span = max(at - last_at, 1e-9)
            sample = Sample(
                t=self.now(),
                rss_mib=rss,
                fds=fds,
                threads=threads,
                hub_cpu_pct=100 * (hub_cpu - last_hub) / span,
                client_cpu_pct=100 * (client_cpu - last_client) / span,
                db_mib=size / 2**20,
                records=self.flows["records"].total,
                queries=self.flows["queries"].total,
                events=self.flows["events"].total,
            )
            last_hub, last_client, last_at = hub_cpu, client_cpu, at
            self.samples.append(sample)
            print(
                f"  t={sample.t:6.0f}s  hub RSS {rss:7.1f} MiB  fds {fds:4d}  threads {threads:3d}"
                f"  hub CPU {sample.hub_cpu_pct:4.0f}%  client CPU {sample.client_cpu_pct:4.0f}%"
                f"  db {sample.db_mib:7.1f} MiB  records {sample.records:>9,}  queries {sample.queries:>8,}"
                f"  events {sample.events:>7,}",
                flush=True,
            )
            if not self.load_done.is_set():
                await self.witness(self.provinces[turn % len(self.provinces)])
                turn += 1

    async def witness(self, province: Province) -> None:
        """One node checks that the log's newest checkpoint extends the last one witnessed."""
        state = self.root / "witness.note"
        started = time.monotonic()
        try:
            await witness_checkpoint(province.client, province.ca_pem, state)
        except HutongError as exc:
            self.witness_failures.append(f"{type(exc).__name__}: {exc}")
            self.rpc("witness (GetCheckpoint + proof)").codes[exc.code_name] += 1
            return
        ended = time.monotonic()
        self.rpc("witness (GetCheckpoint + proof)").ok(ended - self.t0, ended - started)
        note = state.read_text(encoding="utf-8")
        if not self.witnessed or self.witnessed[-1] != note:
            self.witnessed.append(note)


# -- after the run ------------------------------------------------------------------------------------


def memory_trend(samples: list[Sample]) -> dict[str, Any]:
    """First third against last third of the samples: RSS growth, file descriptors, threads, and a verdict."""
    if len(samples) < 3:
        return {"verdict": "too few samples", "growth": float("nan")}
    k = len(samples) // 3
    first, last = samples[:k], samples[-k:]
    rss_first = sum(s.rss_mib for s in first) / k
    rss_last = sum(s.rss_mib for s in last) / k
    growth = rss_last / rss_first
    # Least-squares slope over the second half: still climbing at the end, or levelled off?
    half = samples[len(samples) // 2 :]
    mean_t = sum(s.t for s in half) / len(half)
    mean_rss = sum(s.rss_mib for s in half) / len(half)
    spread = sum((s.t - mean_t) ** 2 for s in half)
    slope = sum((s.t - mean_t) * (s.rss_mib - mean_rss) for s in half) / spread if spread else 0.0
    slope_per_min = slope * 60
    # Held records legitimately cost memory (the linkage's birth-date directory, caches): per record added.
    added = half[-1].records - half[0].records
    per_record = slope * (half[-1].t - half[0].t) * 2**20 / added if added > 0 else float("nan")
    if growth <= 1.10:
        verdict = "flat"
    elif slope_per_min <= 0.01 * mean_rss:
        verdict = "grew early, then levelled off"
    elif per_record <= RECORD_BYTES:
        verdict = f"grows with the records held only (at most {RECORD_BYTES} bytes per record), not with calls"
    else:
        verdict = "GROWING: still climbing at the end, faster than the records held explain"
    fds_first, fds_last = max(s.fds for s in first), max(s.fds for s in last)
    threads_first, threads_last = max(s.threads for s in first), max(s.threads for s in last)
    return {
        "rss_first_third_mib": rss_first,
        "rss_last_third_mib": rss_last,
        "growth": growth,
        "rss_slope_last_half_mib_per_min": slope_per_min,
        "rss_bytes_per_record_added_last_half": per_record,
        "verdict": verdict,
        "fds_first_third_max": fds_first,
        "fds_last_third_max": fds_last,
        "fd_verdict": "flat" if fds_last <= fds_first + 4 else "GROWING",
        "threads_first_third_max": threads_first,
        "threads_last_third_max": threads_last,
    }


def hub_events(db: Path) -> dict[str, tuple[int, int]]:
    """Per province: events the hub raised, and how many a node acknowledged (read-only, hub stopped)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT province, count(*), sum(acked_at_us > 0) FROM events GROUP BY province").fetchall()
    finally:
        con.close()
    return {province: (raised, acked) for province, raised, acked in rows}


async def read_stats(db: Path) -> dict[str, int]:
    store = SqliteStore(db)
    await store.open()
    try:
        return dict((await store.stats()).records_by_province)
    finally:
        await store.close()


def verify_log(hub_dir: Path, out: Path, ca_pem: bytes, witnessed: list[str]) -> dict[str, Any]:
    """Export the exchange log and verify it offline, against the CA and the checkpoints the nodes saw."""
    source = open_audit_source(hub_dir)
    try:
        export_log(source, out)
    finally:
        source.close()
    try:
        verifier = verify_binding((out / "key-binding.json").read_bytes(), ca_pem).verifier
        report = verify_export(out, verifier, known=witnessed, check_entries=True)
    except HutongError as exc:
        return {"verified": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "verified": True,
        "entries": report.size,
        "checkpoints": report.checkpoints,
        "witnessed_consistent": report.known,
        "uncovered": report.uncovered,
    }


def build_report(
    soak: Soak,
    args: argparse.Namespace,
    stored: dict[str, int],
    events: dict[str, tuple[int, int]],
    audit: dict[str, Any],
    hub_exit: int | None,
) -> dict[str, Any]:
    """Every figure and check of the run, as printed and as written with --json."""
    end = soak.load_seconds
    window = min(60.0, end / 3)
    last_start = end - window
    throughput = {}
    for name, flow in soak.flows.items():
        first, last = flow.rate(0, window), flow.rate(last_start, end)
        throughput[name] = {
            "total": flow.total,
            "per_s": flow.total / end if end else 0.0,
            "first_window_per_s": first,
            "last_window_per_s": last,
            "last_over_first": last / first if first else float("nan"),
        }
    latency = {}
    for name, rpc in sorted(soak.rpcs.items()):
        every, early, late = rpc.latencies(), rpc.latencies(0, window), rpc.latencies(last_start, end)
        latency[name] = {
            "calls": len(every),
            "p50": pct(every, 0.50),
            "p99": pct(every, 0.99),
            "first_p50": pct(early, 0.50),
            "first_p99": pct(early, 0.99),
            "last_p50": pct(late, 0.50),
            "last_p99": pct(late, 0.99),
            "p99_last_over_first": pct(late, 0.99) / pct(early, 0.99) if early and late else float("nan"),
        }
    failures = {name: dict(rpc.codes) for name, rpc in soak.rpcs.items() if rpc.codes}
    failed = sum(sum(codes.values()) for codes in failures.values())
    calls = sum(len(rpc.ended) for name, rpc in soak.rpcs.items() if not name.startswith("event")) + failed

    provinces: dict[str, Any] = {}
    for p in soak.provinces:
        state = soak.sync_states.get(p.code)
        raised, acked = events.get(p.code, (0, 0))
        provinces[p.code] = {
            "node": p.name,
            "sent_new": p.tally.new,
            "sent_updates": p.tally.updates,
            "sent_movers": p.tally.movers,
            "batches": p.tally.batches,
            "created": p.tally.created,
            "updated": p.tally.updated,
            "rejected": p.tally.rejected,
            "rejection_reasons": dict(p.tally.reasons),
            "unexpected": dict(p.tally.unexpected),
            "unacknowledged_batches": p.tally.unacknowledged,
            "held_sync_state": state.records_held if state else None,
            "hub_counted_created": state.record_counts.created if state else None,
            "hub_counted_updated": state.record_counts.updated if state else None,
            "held_store": stored.get(p.code, 0),
            "events_raised": raised,
            "events_received": len(p.events_seen),
            "events_redelivered": p.redelivered,
            "events_acknowledged": acked,
            "outcomes_reported": p.outcomes_reported,
        }
    # Every call answered and every batch acknowledged is an entry (failed calls too, and token requests).
    entries_at_least = calls - failed
    checks = {
        "no failed calls": failed == 0,
        "every record answered as sent (new: CREATED or REJECTED, update: UPDATED, mover: CREATED)": all(
            not v["unexpected"] and not v["unacknowledged_batches"] for v in provinces.values()
        ),
        "GetSyncState: records held = acknowledged CREATED, counts agree": all(
            v["held_sync_state"] == v["created"]
            and v["hub_counted_created"] == v["created"]
            and v["hub_counted_updated"] == v["updated"]
            for v in provinces.values()
        ),
        "store after shutdown: records held = acknowledged CREATED": all(
            v["held_store"] == v["created"] for v in provinces.values()
        ),
        "every event raised was received and acknowledged": all(
            v["events_received"] == v["events_raised"] == v["events_acknowledged"] for v in provinces.values()
        ),
        "exchange log verifies offline, fully signed, one entry per call at least": bool(
            audit.get("verified") and audit["uncovered"] == 0 and audit["entries"] >= entries_at_least
        ),
        "witnessed checkpoints consistent (live and offline)": not soak.witness_failures
        and audit.get("witnessed_consistent", 0) == len(soak.witnessed),
        "hub stopped gracefully (exit 0)": hub_exit == 0,
    }
    return {
        "run": {
            "minutes": args.minutes,
            "load_seconds": end,
            "window_seconds": window,
            "provinces": [f"{p.code}/{p.name}" for p in soak.provinces],
            "prepare_workers": args.prepare_workers,
            "records_offered_per_second": args.records_per_second,
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "throughput": throughput,
        "latency_ms": latency,
        "failures": failures,
        "error_rate": failed / calls if calls else 0.0,
        "calls": calls,
        "samples": [asdict(s) for s in soak.samples],
        "memory": memory_trend(soak.samples),
        "provinces": provinces,
        "audit": {**audit, "entries_at_least": entries_at_least, "witnessed": len(soak.witnessed)},
        "witness_failures": soak.witness_failures,
        "checks": checks,
        "passed": all(checks.values()),
    }


def print_report(r: dict[str, Any]) -> None:
    run = r["run"]
    w = run["window_seconds"]
    print(
        f"\nsoak: {len(run['provinces'])} provinces, {run['load_seconds']:.0f}s of load,"
        f" {run['records_offered_per_second'] or 'unpaced'} records/s offered; baseline: the first"
        f" {w:.0f}s against the last {w:.0f}s of this run; load average at the end"
        f" {' '.join(f'{x:.1f}' for x in run['load_average_at_end'])} on {run['cpus']} CPUs"
    )
    print(f"\n{'throughput':<28}{'total':>12}{'per s':>10}{'first':>10}{'last':>10}{'last/first':>12}")
    for name, t in r["throughput"].items():
        print(
            f"{name:<28}{t['total']:>12,}{t['per_s']:>10,.1f}{t['first_window_per_s']:>10,.1f}"
            f"{t['last_window_per_s']:>10,.1f}{t['last_over_first']:>12.2f}"
        )
    print(
        f"\n{'latency, ms':<34}{'calls':>9}{'p50':>8}{'p99':>8}{'first p50':>11}{'first p99':>11}"
        f"{'last p50':>10}{'last p99':>10}{'p99 last/first':>16}"
    )
    for name, lat in r["latency_ms"].items():
        print(
            f"{name:<34}{lat['calls']:>9,}{lat['p50']:>8.1f}{lat['p99']:>8.1f}{lat['first_p50']:>11.1f}"
            f"{lat['first_p99']:>11.1f}{lat['last_p50']:>10.1f}{lat['last_p99']:>10.1f}"
            f"{lat['p99_last_over_first']:>16.2f}"
        )
    failures = r["failures"]
    print(
        f"\nfailed calls by status code: {failures or 'none'}; error rate {r['error_rate']:.4%} of {r['calls']:,} calls"
    )

    m = r["memory"]
    print(f"\n{'t, s':>7}{'RSS MiB':>10}{'fds':>6}{'threads':>9}{'hub CPU':>9}{'client CPU':>12}{'db MiB':>9}")
    for s in r["samples"]:
        print(
            f"{s['t']:>7.0f}{s['rss_mib']:>10.1f}{s['fds']:>6}{s['threads']:>9}{s['hub_cpu_pct']:>8.0f}%"
            f"{s['client_cpu_pct']:>11.0f}%{s['db_mib']:>9.1f}"
        )
    if "rss_first_third_mib" in m:
        print(
            f"hub RSS: first third {m['rss_first_third_mib']:.1f} MiB, last third {m['rss_last_third_mib']:.1f} MiB,"
            f" growth x{m['growth']:.3f}, slope over the second half {m['rss_slope_last_half_mib_per_min']:+.2f}"
            f" MiB/min ({m['rss_bytes_per_record_added_last_half']:,.0f} bytes per record acknowledged): {m['verdict']}"
        )
        print(
            f"open fds: first third max {m['fds_first_third_max']}, last third max {m['fds_last_third_max']}:"
            f" {m['fd_verdict']}; threads {m['threads_first_third_max']} -> {m['threads_last_third_max']}"
        )
    else:
        print(f"hub RSS: {m['verdict']}")

    print(
        f"\n{'province':<17}{'new':>9}{'updates':>9}{'movers':>8}{'created':>9}{'updated':>9}{'rejected':>9}"
        f"{'held (sync)':>12}{'held (store)':>13}{'events':>8}{'received':>9}{'redeliv.':>9}{'acked':>7}{'outcomes':>9}"
    )
    for code, p in r["provinces"].items():
        print(
            f"{code + '/' + p['node']:<17}{p['sent_new']:>9,}{p['sent_updates']:>9,}{p['sent_movers']:>8,}"
            f"{p['created']:>9,}{p['updated']:>9,}{p['rejected']:>9,}{p['held_sync_state'] or 0:>12,}"
            f"{p['held_store']:>13,}{p['events_raised']:>8,}{p['events_received']:>9,}{p['events_redelivered']:>9,}"
            f"{p['events_acknowledged']:>7,}{p['outcomes_reported']:>9,}"
        )
        if p["unexpected"]:
            print(f"  unexpected outcomes: {p['unexpected']}")
    reasons: Counter[str] = Counter()
    for p in r["provinces"].values():
        reasons.update(p["rejection_reasons"])
    if reasons:
        print("rejected (planted export errors), by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))

    a = r["audit"]
    if a.get("verified"):
        print(
            f"\nexchange log: {a['entries']:,} entries (at least {a['entries_at_least']:,} expected: one per call and"
            f" per batch), {a['checkpoints']} signed checkpoints, {a['uncovered']} unsigned; verified offline against"
            f" the CA and {a['witnessed_consistent']} of {a['witnessed']} checkpoints the nodes witnessed live"
        )
    else:
        print(f"\nexchange log: NOT verified: {a.get('error')}")
    for failure in r["witness_failures"]:
        print(f"  witness: {failure}")
    print("\nchecks:")
    for name, ok in r["checks"].items():
        print(f"  {'ok    ' if ok else 'FAILED'} {name}")
    print(f"\n{'all checks passed' if r['passed'] else 'SOME CHECKS FAILED'}")


# -- main ------------------------------------------------------------------------------------------------


def write_config(root: Path, pki: DemoPki, prepare_workers: int) -> Path:
    """``hub.toml`` for a loopback hub: the policy, the CA's (empty) CRL, checkpoints every 5 s."""
    from cryptography.hazmat.primitives import serialization

    (root / "policy.toml").write_text(POLICY, encoding="utf-8")
    crl = pki.ca.sign_crl([], crl_number=1, next_update=dt.timedelta(days=1))
    (root / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    config = root / "hub.toml"
    config.write_text(
        "[hub]\n"
        'data_dir = "hub"\n'
        'listen = "127.0.0.1:0"\n'
        'port_file = "hub.port"\n'
        f"prepare_workers = {prepare_workers}\n"
        "[tls]\n"
        f'cert = "{pki.hub_cert_path}"\n'
        f'key = "{pki.hub_key_path}"\n'
        f'ca = "{pki.ca_cert_path}"\n'
        'crl = "crl.pem"\n'
        "[audit]\n"
        "checkpoint_seconds = 5\n"
        "[policy]\n"
        'file = "policy.toml"\n',
        encoding="utf-8",
    )
    return config


async def drive(pki: DemoPki, port: int, args: argparse.Namespace, root: Path, hub_pid: int) -> Soak:
    nodes = NODES[: args.provinces]
    spec = PopulationSpec(
        provinces=tuple(code for code, _ in nodes),
        persons_per_province=2_000_000,  # more than any run sends; generated as needed
        mover_share=0.0,  # the soak makes its own movers, as it goes
        seed=args.seed,
        as_of=dt.date.today(),
    )
    ca_pem = pki.ca_cert_path.read_bytes()
    provinces = [
        Province(
            code,
            name,
            HubClient(f"localhost:{port}", tls=pki.nodes[f"hutong://province/{code}/node/{name}"].tls),
            ca_pem,
            spec,
            args.seed,
        )
        for code, name in nodes
    ]
    try:
        for province in provinces:
            await province.client.call_metadata()  # each node's token, before the clock starts
        soak = Soak(provinces, args.minutes, args.sample_seconds, args.records_per_second, hub_pid, root)
        await soak.run()
    finally:
        for province in provinces:
            await province.client.close()
    return soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    parser.add_argument(
        "--records-per-second",
        type=float,
        default=2400.0,
        help="records offered per second, all provinces together (default 2,400; 0: as fast as the hub takes them)",
    )
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="hub sampling interval (default 10)")
    parser.add_argument("--provinces", type=int, default=len(NODES), choices=range(2, len(NODES) + 1))
    parser.add_argument(
        "--prepare-workers", type=int, default=0, help="the hub's preparation processes (default 0: two cores in all)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    configure_logging("error", json=False)  # the witness's own log lines would interleave with the samples

    root = Path(tempfile.mkdtemp(prefix="hutong-soak-"))
    try:
        pki = write_demo_pki(root / "pki", provinces=NODES[: args.provinces])
        config = write_config(root, pki, args.prepare_workers)
        hub, port = spawn_server(
            [sys.executable, "-m", "gateway.cli", "--log-level", "warning", "hub", "serve", "--config", str(config)],
            root / "hub.port",
            root / "hub.log",
        )
        print(f"hub pid {hub.pid} on 127.0.0.1:{port} ({config}); {args.minutes:g} min of load", flush=True)
        try:
            soak = asyncio.run(drive(pki, port, args, root, hub.pid))
        finally:
            stop(hub)
        db = root / "hub" / DATABASE_FILE
        stored = asyncio.run(read_stats(db))
        events = hub_events(db)
        audit = verify_log(root / "hub", root / "audit-export", pki.ca_cert_path.read_bytes(), soak.witnessed)
        report = build_report(soak, args, stored, events, audit, hub.returncode)
        if hub.returncode != 0:
            print((root / "hub.log").read_text(errors="replace")[-3000:])
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, allow_nan=True), encoding="utf-8")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
