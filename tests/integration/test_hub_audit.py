"""The hub's exchange log over real mTLS: one durable entry per call, proofs that verify, no personal data.

Entries are read two ways: through ``AuditService`` (raw stubs, as an auditor node would) and
straight from the hub's SQLite file with a connection of the test's own, which is what shows
that an entry is durable, and not merely in the hub's memory, when the call's answer arrives.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from gateway.audit import (
    AuditEntry,
    Checkpoint,
    HashFn,
    NoteVerifier,
    leaf_hash,
    parse_verifier_key,
    root_hash,
    verify_binding,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from gateway.domain.access import AccessPolicy
from gateway.domain.identity import parse_id_number
from gateway.domain.protection import PersonKeyer, suite_hash
from gateway.errors import ConfigError, StoreError
from gateway.hub.audit import payload_digest
from gateway.hub.keys import load_or_create_keys
from gateway.hub.server import DATABASE_FILE, SCOPES_BY_METHOD, HubServer
from hutong.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    person_pb2,
    query_pb2,
    query_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
)
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
CD = "hutong://province/510000/node/cd-01"

#: CD is the auditor: besides what every node may do, it reads the exchange log.
AUDITOR = CD
POLICY = AccessPolicy.from_mapping(
    {"nodes": {AUDITOR: {"scopes": ["records:write", "query:enrollment", "audit:read"]}}}
)

AUTH = "/hutong.v1.AuthService/"
RECORDS = "/hutong.v1.RecordExchangeService/"
QUERY = "/hutong.v1.AssistanceQueryService/"
AUDIT = "/hutong.v1.AuditService/"

DUPLICATE_CHECK = person_pb2.PURPOSE_DUPLICATE_CHECK
ELIGIBILITY_REVIEW = person_pb2.PURPOSE_ELIGIBILITY_REVIEW
CROSS_REGION = person_pb2.PURPOSE_CROSS_REGION_APPLICATION

#: Distinctive names, so that finding one in the audit tables cannot be a coincidence.
NAMES = ("李秀英", "王建国", "赵小红", "欧阳震华", "司马光明")

#: Starts a hub in a separate process (``serve_forever``, as ``hutong hub serve`` does) that can be killed.
SERVE = """
import asyncio, sys
from pathlib import Path
from gateway.hub.server import HubSettings, serve_forever
from pki import TlsMaterial
data_dir, cert, key, ca, suite, port_file = sys.argv[1:]
settings = HubSettings(
    data_dir=Path(data_dir), host="127.0.0.1", port=0, tls=TlsMaterial.from_files(cert, key, ca),
    crypto_suite=suite, prepare_workers=0, checkpoint_seconds=3600.0,
)
asyncio.run(serve_forever(settings, port_file=Path(port_file)))
"""

Metadata = tuple[tuple[str, str], ...]
Row = tuple[int, bytes, bytes]


# -- helpers -------------------------------------------------------------------------------------


@dataclass
class Node:
    """One demo node's connection to a hub: raw stubs and the metadata carrying its access token."""

    uri: str
    metadata: Metadata
    auth: Any
    records: Any
    queries: Any
    audit: Any

    def md(self, request_id: str | None = None) -> Metadata:
        """The token metadata, with an ``x-request-id`` if given."""
        return self.metadata if request_id is None else (*self.metadata, ("x-request-id", request_id))

    async def sync(self, *batches: records_pb2.SyncRecordsRequest) -> list[records_pb2.SyncRecordsResponse]:
        """Every acknowledgement of one SyncRecords stream."""
        return [ack async for ack in self.records.SyncRecords(iter(batches), metadata=self.metadata)]

    async def check(
        self, id_number: str, purpose: person_pb2.Purpose.ValueType = DUPLICATE_CHECK, *, request_id: str | None = None
    ) -> query_pb2.CheckEnrollmentResponse:
        """CheckEnrollment."""
        request = query_pb2.CheckEnrollmentRequest(id_number=id_number, purpose=purpose)
        response: query_pb2.CheckEnrollmentResponse = await self.queries.CheckEnrollment(
            request, metadata=self.md(request_id)
        )
        return response

    async def checkpoint(self) -> audit_pb2.GetCheckpointResponse:
        """GetCheckpoint."""
        response: audit_pb2.GetCheckpointResponse = await self.audit.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(), metadata=self.metadata
        )
        return response

    async def checkpoint_covering(self, size: int) -> audit_pb2.GetCheckpointResponse:
        """The newest checkpoint once the hub's cadence has signed one of at least ``size`` entries."""
        for _ in range(200):  # the cadence in these tests is 0.2 s: 10 s is plenty
            latest = await self.checkpoint()
            if latest.tree_size >= size:
                return latest
            await asyncio.sleep(0.05)
        raise AssertionError(f"no checkpoint of {size} entries within 10 s; the newest has {latest.tree_size}")

    async def list_all(self, *, page_size: int = 3, **fields: Any) -> list[tuple[int, bytes]]:
        """Every (index, entry) a ListAuditEntries walk returns, page by page."""
        found: list[tuple[int, bytes]] = []
        token = ""
        while True:
            request = audit_pb2.ListAuditEntriesRequest(page_size=page_size, page_token=token, **fields)
            page = await self.audit.ListAuditEntries(request, metadata=self.metadata)
            assert len(page.entries) <= page_size
            found.extend((e.index, e.entry) for e in page.entries)
            token = page.next_page_token
            if not token:
                return found


@asynccontextmanager
async def connect(demo_pki: DemoPki, uri: str, port: int) -> AsyncIterator[Node]:
    """A secure channel to the hub as ``uri``, with a fresh access token (IssueToken is the first entry)."""
    tls = demo_pki.nodes[uri].tls
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        issued = await auth.IssueToken(auth_pb2.IssueTokenRequest())
        yield Node(
            uri=uri,
            metadata=(("authorization", f"Bearer {issued.access_token}"),),
            auth=auth,
            records=records_pb2_grpc.RecordExchangeServiceStub(channel),
            queries=query_pb2_grpc.AssistanceQueryServiceStub(channel),
            audit=audit_pb2_grpc.AuditServiceStub(channel),
        )


@contextmanager
def readonly(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection of the test's own to the hub's database."""
    with closing(sqlite3.connect(f"file:{data_dir / DATABASE_FILE}?mode=ro", uri=True)) as con:
        yield con


def rows(data_dir: Path) -> list[Row]:
    """(index, entry bytes, stored leaf hash) of every entry, by index."""
    with readonly(data_dir) as con:
        return [
            (seq, bytes(entry), bytes(leaf))
            for seq, entry, leaf in con.execute("SELECT seq, entry, leaf_hash FROM audit_entries ORDER BY seq")
        ]


def entries(data_dir: Path) -> list[AuditEntry]:
    """Every entry, decoded (which also checks that each is in canonical form), by index."""
    return [AuditEntry.decode(data) for _, data, _ in rows(data_dir)]


def tree_size(data_dir: Path) -> int:
    """The committed tree size the hub keeps with its entries."""
    with readonly(data_dir) as con:
        size: int = con.execute("SELECT size FROM audit_tree WHERE id=1").fetchone()[0]
        return size


def checkpoints(data_dir: Path) -> list[tuple[int, str]]:
    """(size, note) of every signed checkpoint, ascending."""
    with readonly(data_dir) as con:
        return [(size, note) for size, note in con.execute("SELECT size, note FROM audit_checkpoints ORDER BY size")]


def assert_gapless(log: Sequence[Row], data_dir: Path, hash_fn: HashFn) -> bytes:
    """Indices 0..n-1, each leaf hash H(0x00 || entry), the tree state of size n; returns the root over them."""
    assert [seq for seq, _, _ in log] == list(range(len(log)))
    for _, data, leaf in log:
        assert leaf == leaf_hash(data, hash_fn)
    assert tree_size(data_dir) == len(log)
    return root_hash([leaf for _, _, leaf in log], hash_fn)


def verified(note: str, verifier: NoteVerifier) -> Checkpoint:
    """The checkpoint in ``note`` once its signature by the log's key holds."""
    return verify_checkpoint(note, verifier.name, verifier.public_key, origin=verifier.name)


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call's rich status."""
    details = dict(exc.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def refused(call: Any, code: grpc.StatusCode) -> error_details_pb2.ErrorInfo:
    """Await ``call``, which must fail with ``code``; its ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == code, failure.value.details()
    return error_info(failure.value)


async def drain(stream: Any, into: list[Any]) -> None:
    """Read a response stream to its end into ``into`` (a failed stream raises after what it delivered)."""
    async for message in stream:
        into.append(message)


def person_keyer(hub: HubServer) -> Callable[[str], bytes]:
    """The hub's person key of an ID number, from its key file."""
    keys = load_or_create_keys(hub.settings.data_dir)
    keyer = PersonKeyer(keys.person_key_secret, suite=keys.suite)
    return lambda id_number: keyer.person_key(parse_id_number(id_number).value)


def batch(batch_id: str, records: Iterable[person_pb2.PersonRecord]) -> records_pb2.SyncRecordsRequest:
    """A SyncRecords batch."""
    return records_pb2.SyncRecordsRequest(batch_id=batch_id, records=list(records))


def spawn_hub(command: list[str], port_file: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a hub process that writes its bound port to ``port_file``; wait for the port."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the hub did not start: {log_path.read_text()}")
        time.sleep(0.05)
    return process, int(port_file.read_text())


def timestamp(time_us: int) -> Timestamp:
    """A protobuf Timestamp of microseconds since the epoch."""
    return Timestamp(seconds=time_us // 1_000_000, nanos=time_us % 1_000_000 * 1000)


def mentions(person_key: bytes) -> Callable[[AuditEntry], bool]:
    """Whether an entry names the person."""
    wanted = person_key.hex()
    return lambda entry: wanted in entry.person_keys


def data_dir_of(hub: HubServer) -> Path:
    """The hub's data directory."""
    return hub.settings.data_dir


# -- every call is one entry ---------------------------------------------------------------------


async def test_every_call_is_one_entry_naming_method_caller_purpose_outcome_counts_and_persons(
    hub_factory: Any, demo_pki: DemoPki, make_record: Callable[..., person_pb2.PersonRecord], crypto_suite: str
) -> None:
    hub = await hub_factory()
    key_of = person_keyer(hub)
    first = [make_record(f"r{n}", sequence=n, name=NAMES[n]) for n in range(2)]
    second = [make_record(f"r{n}", sequence=n, name=NAMES[n]) for n in range(2, 5)]
    ids = [r.id_number for r in (*first, *second)]
    bad_id = ids[0][:-1] + ("0" if ids[0][-1] != "0" else "1")
    started_us = time.time_ns() // 1000

    async with connect(demo_pki, GZ, hub.port) as gz:
        acks = await gz.sync(batch("b1", first), batch("b2", second))
        assert [len(a.record_outcomes) for a in acks] == [2, 3]
        assert {o for a in acks for o in a.record_outcomes} == {records_pb2.OUTCOME_CREATED}
        check_request = query_pb2.CheckEnrollmentRequest(id_number=ids[0], purpose=DUPLICATE_CHECK)
        check_answer = await gz.queries.CheckEnrollment(check_request, metadata=gz.md("check-1"))
        await gz.queries.BatchCheckEnrollment(
            query_pb2.BatchCheckEnrollmentRequest(id_numbers=[ids[0], ids[1], bad_id], purpose=DUPLICATE_CHECK),
            metadata=gz.metadata,
        )
        await gz.queries.LookupPerson(
            query_pb2.LookupPersonRequest(id_number=ids[2], purpose=ELIGIBILITY_REVIEW), metadata=gz.metadata
        )
        await gz.records.GetSyncState(records_pb2.GetSyncStateRequest(), metadata=gz.metadata)
        retirement = records_pb2.RecordRetirement(
            record_id="r0", version=2, reason=records_pb2.RETIREMENT_REASON_EXITED
        )
        await gz.records.RetireRecords(
            records_pb2.RetireRecordsRequest(request_id="retire-1", retirements=[retirement]), metadata=gz.metadata
        )
        invalid = await refused(gz.check(bad_id), grpc.StatusCode.INVALID_ARGUMENT)
        assert invalid.reason.startswith("ID_NUMBER_")
        # GZ holds no audit:read: refused, and the refusal is itself an entry.
        denied = await refused(
            gz.audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(), metadata=gz.metadata),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert denied.reason == "SCOPE_MISSING"
    finished_us = time.time_ns() // 1000

    log = entries(data_dir_of(hub))
    assert [e.method for e in log] == [
        AUTH + "IssueToken",
        RECORDS + "SyncRecords",  # batch b1, committed with the batch
        RECORDS + "SyncRecords",  # batch b2
        RECORDS + "SyncRecords",  # the stream, at its end
        QUERY + "CheckEnrollment",
        QUERY + "BatchCheckEnrollment",
        QUERY + "LookupPerson",
        RECORDS + "GetSyncState",
        RECORDS + "RetireRecords",
        QUERY + "CheckEnrollment",
        AUDIT + "ListAuditEntries",
    ]
    assert [e.outcome for e in log] == ["OK"] * 9 + ["INVALID_ARGUMENT", "PERMISSION_DENIED"]
    assert all((e.caller, e.province) == (GZ, "440000") for e in log)
    # The token call is authenticated by the certificate alone; every later call by its token too.
    assert [e.subject for e in log] == [""] + [GZ] * 10
    assert [e.purpose for e in log] == [
        *[""] * 4,
        "duplicate-check",
        "duplicate-check",
        "eligibility-review",
        "",
        "",
        "duplicate-check",
        "",
    ]
    assert all(started_us <= e.time_us <= finished_us for e in log)
    assert [e.time_us for e in log] == sorted(e.time_us for e in log)
    # One request id per call: a stream's batch entries carry the stream's.
    assert len({e.request_id for e in log}) == len(log) - 2
    assert log[1].request_id == log[2].request_id == log[3].request_id
    assert log[4].request_id == "check-1"
    assert all(e.payload_digest for e in log)

    token, b1, b2, stream, check, batch_check, lookup, state, retire, bad, denied_entry = log
    hex_keys = [key_of(i).hex() for i in ids]
    assert (b1.batch_id, b2.batch_id, stream.batch_id) == ("b1", "b2", "")
    assert dict(b1.counts) == {"records": 2, "created": 2, "households": 0}
    assert dict(b2.counts) == {"records": 3, "created": 3, "households": 0}
    assert list(b1.person_keys) == sorted(hex_keys[:2])
    assert list(b2.person_keys) == sorted(hex_keys[2:])
    assert dict(stream.counts) == {"batches": 2, "created": 5}
    assert list(stream.person_keys) == []
    assert list(check.person_keys) == [hex_keys[0]]
    # The payload digest is H(H(request) || H(response)) over the deterministic wire bytes.
    assert check.payload_digest == payload_digest(suite_hash(crypto_suite), check_request, check_answer).hex()
    assert dict(batch_check.counts) == {"persons": 3, "rejected": 1}
    assert list(batch_check.person_keys) == sorted(hex_keys[:2])
    assert dict(lookup.counts) == {"enrollments": 1}
    assert list(lookup.person_keys) == [hex_keys[2]]
    assert list(state.person_keys) == []
    assert dict(retire.counts) == {"retirements": 1, "rejected": 0}
    assert list(retire.person_keys) == [hex_keys[0]]
    assert list(bad.person_keys) == []
    assert dict(bad.counts) == {}
    assert list(token.person_keys) == list(denied_entry.person_keys) == []


@pytest.mark.parametrize("crypto_suite", ["intl"])
async def test_an_entry_is_durable_before_the_answer_arrives(
    hub_factory: Any, demo_pki: DemoPki, make_record: Callable[..., person_pb2.PersonRecord]
) -> None:
    hub = await hub_factory()
    data_dir = data_dir_of(hub)
    records = [make_record(f"r{n}", sequence=n) for n in range(3)]
    async with connect(demo_pki, GZ, hub.port) as gz:
        for n in range(5):
            await gz.check(records[0].id_number, request_id=f"check-{n}")
            # Not the hub's connection, not its memory: the database file already holds it.
            with readonly(data_dir) as con:
                found = con.execute(
                    "SELECT count(*) FROM audit_entries"
                    " WHERE method='/hutong.v1.AssistanceQueryService/CheckEnrollment' AND outcome='OK'"
                ).fetchone()[0]
            assert found == n + 1
            assert entries(data_dir)[-1].request_id == f"check-{n}"
        # A sync batch's entry is committed with the batch, before its acknowledgement.
        stream = gz.records.SyncRecords(metadata=gz.metadata)
        for n, record in enumerate(records):
            await stream.write(batch(f"b{n}", [record]))
            ack = await stream.read()
            assert ack.batch_id == f"b{n}"
            assert [e.batch_id for e in entries(data_dir) if e.batch_id] == [f"b{i}" for i in range(n + 1)]
        await stream.done_writing()
        assert await stream.read() == grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
    assert entries(data_dir)[-1].counts["batches"] == 3


@pytest.mark.parametrize("crypto_suite", ["intl"])
async def test_no_id_number_or_name_reaches_the_audit_tables(
    hub_factory: Any, demo_pki: DemoPki, make_record: Callable[..., person_pb2.PersonRecord]
) -> None:
    hub = await hub_factory()
    records = [make_record(f"r{n}", sequence=40 + n, name=NAMES[n]) for n in range(len(NAMES))]
    ids = [r.id_number for r in records]
    bad_id = ids[0][:-1] + ("0" if ids[0][-1] != "0" else "1")
    async with connect(demo_pki, GZ, hub.port) as gz:
        await gz.sync(batch("pii-1", records[:2]), batch("pii-2", records[2:]))
        for id_number in ids:
            await gz.check(id_number)
        await refused(gz.check(bad_id), grpc.StatusCode.INVALID_ARGUMENT)
        await gz.queries.BatchCheckEnrollment(
            query_pb2.BatchCheckEnrollmentRequest(id_numbers=[*ids, bad_id], purpose=CROSS_REGION),
            metadata=gz.metadata,
        )
        for id_number in ids[:2]:
            await gz.queries.LookupPerson(
                query_pb2.LookupPersonRequest(id_number=id_number, purpose=ELIGIBILITY_REVIEW), metadata=gz.metadata
            )
    await hub.stop(0)  # signs a last checkpoint, so audit_checkpoints has content too

    needles = {s.encode() for s in (*ids, *(i[:17] for i in ids), bad_id, *NAMES)}
    scanned = Counter[str]()
    with readonly(data_dir_of(hub)) as con:
        tables = ("audit_entries", "audit_persons", "audit_persons_recent", "audit_subtrees", "audit_tree")
        for table in (*tables, "audit_checkpoints"):
            for row in con.execute(f"SELECT * FROM {table}"):
                for value in row:
                    data = value if isinstance(value, bytes) else str(value).encode()
                    scanned[table] += 1
                    for needle in needles:
                        assert needle not in data, f"{needle.decode()} found in {table}"
    assert scanned["audit_entries"] > 0
    assert scanned["audit_persons"] + scanned["audit_persons_recent"] > 0
    assert scanned["audit_checkpoints"] > 0


# -- AuditService ------------------------------------------------------------------------------


async def populate(gz: Node, make_record: Callable[..., person_pb2.PersonRecord]) -> list[str]:
    """A small batch, a batch of 70 records (its person keys go to a Bloom filter), queries; the ID numbers."""
    small = [make_record(f"s{n}", sequence=n) for n in range(2)]
    big = [make_record(f"g{n}", sequence=100 + n) for n in range(70)]
    await gz.sync(batch("small", small), batch("big", big))
    await gz.check(small[0].id_number)
    await gz.check(big[5].id_number, CROSS_REGION)
    await gz.queries.LookupPerson(
        query_pb2.LookupPersonRequest(id_number=small[1].id_number, purpose=ELIGIBILITY_REVIEW), metadata=gz.metadata
    )
    return [r.id_number for r in (*small, *big)]


async def test_checkpoints_inclusion_and_consistency_proofs_verify_against_the_ca_bound_key(
    hub_factory: Any, demo_pki: DemoPki, make_record: Callable[..., person_pb2.PersonRecord], crypto_suite: str
) -> None:
    hub = await hub_factory(policy=POLICY, checkpoint_seconds=0.2)
    data_dir = data_dir_of(hub)
    hash_fn = suite_hash(crypto_suite)
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    async with connect(demo_pki, GZ, hub.port) as gz, connect(demo_pki, AUDITOR, hub.port) as auditor:
        await populate(gz, make_record)
        first = await auditor.checkpoint_covering(tree_size(data_dir))

        # The checkpoint key is vouched for by the hub certificate, which chains to the ministry CA.
        binding = verify_binding(first.key_binding, demo_pki.hub_tls.ca_pem, hub_name="localhost")
        assert binding.origin == "localhost/hutong-audit"
        pinned = parse_verifier_key(first.verifier_key)
        assert str(pinned) == str(binding.verifier)
        for verifier in (binding.verifier, pinned):
            checkpoint = verified(first.checkpoint, verifier)
            assert (checkpoint.size, checkpoint.root_hash) == (first.tree_size, first.root_hash)
        assert first.hash_algorithm == {"intl": "sha256", "sm": "sm3"}[crypto_suite]
        assert before <= first.signed_at.ToDatetime(dt.UTC) <= dt.datetime.now(dt.UTC)
        size = first.tree_size
        assert root_hash([leaf for _, _, leaf in rows(data_dir)[:size]], hash_fn) == first.root_hash

        # Inclusion of several entries, each checked from its bytes alone: leaf = H(0x00 || entry).
        stored = rows(data_dir)
        for index in sorted({0, 1, 2, size // 2, size - 2, size - 1}):
            proof = await auditor.audit.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(index=index, tree_size=size), metadata=auditor.metadata
            )
            assert (proof.index, proof.tree_size, proof.entry) == (index, size, stored[index][1])
            leaf = leaf_hash(proof.entry, hash_fn)
            assert leaf == proof.leaf_hash
            verify_inclusion(leaf, index, size, list(proof.hashes), first.root_hash, hash_fn)
            assert proof.checkpoint == first.checkpoint

        # The log grows; the cadence signs a larger checkpoint; the two are consistent.
        await gz.check("11010519491231002X")
        second = await auditor.checkpoint_covering(size + 1)
        later = verified(second.checkpoint, pinned)
        assert later.size == second.tree_size > size
        for requested in (second.tree_size, 0):  # 0: the newest checkpoint's size
            consistency = await auditor.audit.GetConsistencyProof(
                audit_pb2.GetConsistencyProofRequest(first_tree_size=size, second_tree_size=requested),
                metadata=auditor.metadata,
            )
            assert consistency.first_tree_size == size
            newest = verified(consistency.checkpoint, pinned) if consistency.checkpoint else later
            assert newest.size == consistency.second_tree_size >= second.tree_size
            verify_consistency(size, newest.size, first.root_hash, newest.root_hash, list(consistency.hashes), hash_fn)
        # From the empty tree, the proof is empty and the old root is H("").
        empty = await auditor.audit.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(first_tree_size=0, second_tree_size=second.tree_size),
            metadata=auditor.metadata,
        )
        verify_consistency(0, second.tree_size, hash_fn(b""), second.root_hash, list(empty.hashes), hash_fn)


async def test_listing_walks_every_entry_once_and_filters_by_province_method_purpose_person_and_time(
    hub_factory: Any, demo_pki: DemoPki, make_record: Callable[..., person_pb2.PersonRecord], crypto_suite: str
) -> None:
    hub = await hub_factory(policy=POLICY)
    data_dir = data_dir_of(hub)
    key_of = person_keyer(hub)
    async with connect(demo_pki, GZ, hub.port) as gz, connect(demo_pki, AUDITOR, hub.port) as auditor:
        ids = await populate(gz, make_record)
        await auditor.check(ids[0], ELIGIBILITY_REVIEW)
        # Listings default to the newest checkpoint's size; naming the committed size lists past it.
        size = tree_size(data_dir)
        stored = rows(data_dir)[:size]
        decoded = [AuditEntry.decode(data) for _, data, _ in stored]

        walked = await auditor.list_all(page_size=2, tree_size=size)
        assert walked == [(seq, data) for seq, data, _ in stored]

        # A page token belongs to its listing: the same filters and size, whatever the page size.
        request = audit_pb2.ListAuditEntriesRequest(page_size=2, tree_size=size)
        page = await auditor.audit.ListAuditEntries(request, metadata=auditor.metadata)
        assert page.tree_size == size
        token = page.next_page_token
        assert token
        resumed = await auditor.audit.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(page_size=5, tree_size=size, page_token=token), metadata=auditor.metadata
        )
        assert [e.index for e in resumed.entries] == [2, 3, 4, 5, 6]
        for other in ({"province_code": "440000"}, {"purpose": "duplicate-check"}, {"tree_size": size - 1}):
            fields: dict[str, Any] = {"tree_size": size, **other}
            info = await refused(
                auditor.audit.ListAuditEntries(
                    audit_pb2.ListAuditEntriesRequest(page_size=2, page_token=token, **fields),
                    metadata=auditor.metadata,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert (info.reason, info.metadata["field"]) == ("PAGE_TOKEN_INVALID", "page_token")

        def expected(keep: Callable[[AuditEntry], bool]) -> list[tuple[int, bytes]]:
            return [(i, stored[i][1]) for i, e in enumerate(decoded) if keep(e)]

        by_province = await auditor.list_all(tree_size=size, province_code="440000")
        assert by_province == expected(lambda e: e.province == "440000")
        assert {AuditEntry.decode(d).caller for _, d in by_province} == {GZ}
        for method in ("CheckEnrollment", QUERY + "CheckEnrollment"):
            assert await auditor.list_all(tree_size=size, method=method) == expected(
                lambda e: e.method == QUERY + "CheckEnrollment"
            )
        duplicate_checks = await auditor.list_all(tree_size=size, purpose="duplicate-check")
        assert len(duplicate_checks) == 1
        assert duplicate_checks == expected(lambda e: e.purpose == "duplicate-check")
        both = await auditor.list_all(tree_size=size, province_code="510000", purpose="eligibility-review")
        assert both == expected(lambda e: e.province == "510000" and e.purpose == "eligibility-review")
        assert len(both) == 1

        # Person keys: a small batch (indexed rows), a big batch (Bloom filter), the queries about them.
        for id_number, batch_id in ((ids[0], "small"), (ids[2 + 5], "big"), (ids[2 + 60], "big")):
            key = key_of(id_number)
            about = await auditor.list_all(page_size=1, tree_size=size, person_key=key)
            assert about == expected(mentions(key))
            assert batch_id in {AuditEntry.decode(d).batch_id for _, d in about}
        assert len(await auditor.list_all(tree_size=size, person_key=key_of(ids[0]))) == 3  # batch, 2 checks
        assert await auditor.list_all(tree_size=size, person_key=key_of("11010519491231002X")) == []

        # A time window: from the first CheckEnrollment's answer, up to (excluding) the last entry's.
        since = next(e.time_us for e in decoded if e.method == QUERY + "CheckEnrollment")
        until = decoded[-1].time_us
        window = await auditor.list_all(tree_size=size, start_time=timestamp(since), end_time=timestamp(until))
        assert window == expected(lambda e: since <= e.time_us < until)
        assert window


@pytest.mark.parametrize("crypto_suite", ["intl"])
async def test_audit_requests_out_of_range_are_invalid_argument_naming_the_field(
    hub_factory: Any, demo_pki: DemoPki
) -> None:
    hub = await hub_factory(policy=POLICY)
    data_dir = data_dir_of(hub)
    async with connect(demo_pki, AUDITOR, hub.port) as auditor:
        await auditor.check("11010519491231002X")
        size = tree_size(data_dir)
        beyond = size + 1000
        invalid: list[tuple[Any, str, str]] = [
            (audit_pb2.ListAuditEntriesRequest(tree_size=beyond), "TREE_SIZE_INVALID", "tree_size"),
            (audit_pb2.ListAuditEntriesRequest(page_size=1001), "PAGE_SIZE_INVALID", "page_size"),
            (audit_pb2.ListAuditEntriesRequest(page_size=-1), "PAGE_SIZE_INVALID", "page_size"),
            (audit_pb2.ListAuditEntriesRequest(person_key=b"\x01" * 8), "PERSON_KEY_INVALID", "person_key"),
            (audit_pb2.ListAuditEntriesRequest(page_token="not-a-token"), "PAGE_TOKEN_INVALID", "page_token"),
            (audit_pb2.GetInclusionProofRequest(index=size, tree_size=size), "INDEX_INVALID", "index"),
            (audit_pb2.GetInclusionProofRequest(index=0, tree_size=beyond), "TREE_SIZE_INVALID", "tree_size"),
            (
                audit_pb2.GetConsistencyProofRequest(first_tree_size=size, second_tree_size=size - 1),
                "TREE_SIZE_INVALID",
                "first_tree_size",
            ),
            (
                audit_pb2.GetConsistencyProofRequest(first_tree_size=1, second_tree_size=beyond),
                "TREE_SIZE_INVALID",
                "second_tree_size",
            ),
        ]
        methods = {
            audit_pb2.ListAuditEntriesRequest: auditor.audit.ListAuditEntries,
            audit_pb2.GetInclusionProofRequest: auditor.audit.GetInclusionProof,
            audit_pb2.GetConsistencyProofRequest: auditor.audit.GetConsistencyProof,
        }
        for request, reason, field in invalid:
            # A listing of an explicit size that exists: the page token is the only thing wrong.
            if isinstance(request, audit_pb2.ListAuditEntriesRequest) and not request.tree_size:
                request.tree_size = size
            info = await refused(
                methods[type(request)](request, metadata=auditor.metadata), grpc.StatusCode.INVALID_ARGUMENT
            )
            assert (info.reason, info.metadata["field"]) == (reason, field), request
    log = entries(data_dir)
    refusals = [e for e in log if e.method.startswith(AUDIT)]
    assert [e.outcome for e in refusals] == ["INVALID_ARGUMENT"] * len(invalid)
    assert {e.purpose for e in refusals} == {"audit"}


async def test_proofs_over_more_than_256_entries_read_the_stored_subtrees_and_verify(
    hub_factory: Any, demo_pki: DemoPki, id_number_of: Callable[..., str], crypto_suite: str
) -> None:
    hub = await hub_factory(policy=POLICY)
    data_dir = data_dir_of(hub)
    hash_fn = suite_hash(crypto_suite)
    async with (
        connect(demo_pki, GZ, hub.port) as gz,
        connect(demo_pki, ZZ, hub.port) as zz,
        connect(demo_pki, AUDITOR, hub.port) as auditor,
    ):
        nodes = (gz, zz, auditor)
        await asyncio.gather(*(nodes[n % 3].check(id_number_of(sequence=n % 1000)) for n in range(300)))
        log = rows(data_dir)
        size = len(log)
        assert assert_gapless(log, data_dir, hash_fn) == root_hash([leaf for _, _, leaf in log], hash_fn)
        leaves = [leaf for _, _, leaf in log]
        # The first 256 leaves are one perfect subtree, kept in audit_subtrees for proofs to read.
        with readonly(data_dir) as con:
            stored = con.execute("SELECT level, start, hash FROM audit_subtrees").fetchall()
        assert [(level, start) for level, start, _ in stored] == [(8, 0)]
        assert bytes(stored[0][2]) == root_hash(leaves[:256], hash_fn)

        for tree in (size, 300, 257, 256):
            root = root_hash(leaves[:tree], hash_fn)
            for index in sorted({0, 1, 128, 255, tree - 1, min(256, tree - 1)}):
                proof = await auditor.audit.GetInclusionProof(
                    audit_pb2.GetInclusionProofRequest(index=index, tree_size=tree), metadata=auditor.metadata
                )
                verify_inclusion(leaf_hash(proof.entry, hash_fn), index, tree, list(proof.hashes), root, hash_fn)
        for old, new in ((1, size), (128, size), (255, size), (256, size), (257, size), (100, 256), (255, 257)):
            proof = await auditor.audit.GetConsistencyProof(
                audit_pb2.GetConsistencyProofRequest(first_tree_size=old, second_tree_size=new),
                metadata=auditor.metadata,
            )
            old_root, new_root = root_hash(leaves[:old], hash_fn), root_hash(leaves[:new], hash_fn)
            verify_consistency(old, new, old_root, new_root, list(proof.hashes), hash_fn)


@pytest.mark.parametrize("crypto_suite", ["intl"])
async def test_a_replayed_batch_and_a_reused_batch_id_are_entries_of_their_own(
    hub_factory: Any, demo_pki: DemoPki, make_record: Callable[..., person_pb2.PersonRecord]
) -> None:
    hub = await hub_factory()
    key_of = person_keyer(hub)
    records = [make_record(f"r{n}", sequence=n) for n in range(2)]
    async with connect(demo_pki, GZ, hub.port) as gz:
        await gz.sync(batch("b1", records))
        (replayed,) = await gz.sync(batch("b1", records))
        assert replayed.replayed
        (reused,) = await gz.sync(batch("b1", [make_record("r9", sequence=9)]))
        assert reused.batch_rejection.reason == "BATCH_ID_REUSED"
    batches = [e for e in entries(data_dir_of(hub)) if e.batch_id]
    assert [(e.batch_id, e.outcome) for e in batches] == [("b1", "OK"), ("b1", "OK"), ("b1", "FAILED_PRECONDITION")]
    first, again, refused_batch = batches
    assert dict(again.counts) == {**first.counts, "replayed": 1}
    assert list(first.person_keys) == list(again.person_keys) == sorted(key_of(r.id_number).hex() for r in records)
    # Nothing of the refused batch was applied, so it names nobody.
    assert dict(refused_batch.counts) == {"records": 0, "households": 0}
    assert list(refused_batch.person_keys) == []


@pytest.mark.parametrize("crypto_suite", ["intl"])
async def test_a_default_size_listing_survives_a_new_checkpoint(hub_factory: Any, demo_pki: DemoPki) -> None:
    hub = await hub_factory(policy=POLICY, checkpoint_seconds=0.2)
    async with connect(demo_pki, AUDITOR, hub.port) as auditor:
        for n in range(4):
            await auditor.check("11010519491231002X", request_id=f"c{n}")
        first_checkpoint = await auditor.checkpoint_covering(tree_size(data_dir_of(hub)))
        page = await auditor.audit.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(page_size=2), metadata=auditor.metadata
        )
        assert page.tree_size == first_checkpoint.tree_size
        await auditor.checkpoint_covering(first_checkpoint.tree_size + 1)
        rest = await auditor.audit.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(page_size=2, page_token=page.next_page_token), metadata=auditor.metadata
        )
        assert rest.tree_size == page.tree_size
        assert [e.index for e in rest.entries] == [2, 3]


@pytest.mark.parametrize("crypto_suite", ["intl"])
async def test_a_node_without_audit_read_is_refused_the_log_and_every_refusal_is_logged(
    hub_factory: Any, demo_pki: DemoPki
) -> None:
    # Entries and inclusion proofs (which carry an entry) are for auditors only, whatever is
    # decided for the bare sizes and hashes of checkpoints and consistency proofs.
    assert SCOPES_BY_METHOD["ListAuditEntries"] == SCOPES_BY_METHOD["GetInclusionProof"] == "audit:read"
    hub = await hub_factory(policy=POLICY)
    calls = {
        "GetCheckpoint": audit_pb2.GetCheckpointRequest(),
        "ListAuditEntries": audit_pb2.ListAuditEntriesRequest(),
        "GetInclusionProof": audit_pb2.GetInclusionProofRequest(index=0, tree_size=1),
        "GetConsistencyProof": audit_pb2.GetConsistencyProofRequest(first_tree_size=0, second_tree_size=1),
    }
    outcomes = {name: "PERMISSION_DENIED" if SCOPES_BY_METHOD[name] else "OK" for name in calls}
    async with connect(demo_pki, GZ, hub.port) as gz:
        for name, request in calls.items():
            call = getattr(gz.audit, name)(request, metadata=gz.metadata)
            if outcomes[name] == "OK":
                await call
                continue
            info = await refused(call, grpc.StatusCode.PERMISSION_DENIED)
            assert (info.reason, info.metadata["scope"]) == ("SCOPE_MISSING", "audit:read"), name
        # Nor can it get a token carrying the scope.
        info = await refused(
            gz.auth.IssueToken(auth_pb2.IssueTokenRequest(scopes=["audit:read"])), grpc.StatusCode.PERMISSION_DENIED
        )
        assert info.reason == "SCOPE_MISSING"
        # A call without a token is refused before any scope is looked at, and logged as well.
        info = await refused(
            gz.audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest()), grpc.StatusCode.UNAUTHENTICATED
        )
        assert info.reason == "TOKEN_MISSING"
    async with connect(demo_pki, AUDITOR, hub.port) as auditor:
        await auditor.audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(tree_size=1), metadata=auditor.metadata)

    log = entries(data_dir_of(hub))
    assert [(e.method, e.caller, e.outcome) for e in log] == [
        (AUTH + "IssueToken", GZ, "OK"),
        *((AUDIT + name, GZ, outcomes[name]) for name in calls),
        (AUTH + "IssueToken", GZ, "PERMISSION_DENIED"),
        (AUDIT + "ListAuditEntries", GZ, "UNAUTHENTICATED"),
        (AUTH + "IssueToken", AUDITOR, "OK"),
        (AUDIT + "ListAuditEntries", AUDITOR, "OK"),
    ]
    # A refusal for a missing scope comes after the token was verified: it names its subject.
    assert all(e.subject == GZ for e in log[1:5] if e.outcome == "PERMISSION_DENIED")
    assert log[6].subject == ""


# -- concurrency, restart, failure, crash ----------------------------------------------------------


async def test_concurrent_calls_make_a_gapless_log_whose_root_the_shutdown_checkpoint_signs(
    hub_factory: Any, demo_pki: DemoPki, id_number_of: Callable[..., str], crypto_suite: str
) -> None:
    hub = await hub_factory()
    data_dir = data_dir_of(hub)
    async with (
        connect(demo_pki, GZ, hub.port) as gz,
        connect(demo_pki, ZZ, hub.port) as zz,
        connect(demo_pki, CD, hub.port) as cd,
    ):
        nodes = (gz, zz, cd)
        await asyncio.gather(*(nodes[n % 3].check(id_number_of(sequence=n), request_id=f"c{n}") for n in range(50)))
    assert hub.audit is not None
    verifier = hub.audit.key.verifier
    await hub.stop(0)

    log = rows(data_dir)
    root = assert_gapless(log, data_dir, suite_hash(crypto_suite))
    decoded = [AuditEntry.decode(data) for _, data, _ in log]
    assert Counter(e.method for e in decoded) == {AUTH + "IssueToken": 3, QUERY + "CheckEnrollment": 50}
    assert sorted(e.request_id for e in decoded if e.method == QUERY + "CheckEnrollment") == sorted(
        f"c{n}" for n in range(50)
    )
    assert Counter(e.caller for e in decoded) == {GZ: 18, ZZ: 18, CD: 17}
    size, note = checkpoints(data_dir)[-1]
    signed = verified(note, verifier)
    assert (size, signed.size, signed.root_hash) == (len(log), len(log), root)


async def test_a_restarted_hub_continues_the_same_log_under_the_same_key(
    hub_factory: Any, demo_pki: DemoPki, tmp_path: Path, crypto_suite: str
) -> None:
    data_dir = tmp_path / "restarted"
    first_hub = await hub_factory(data_dir=data_dir, policy=POLICY)
    async with connect(demo_pki, AUDITOR, first_hub.port) as auditor:
        for n in range(3):
            await auditor.check("11010519491231002X", request_id=f"before-{n}")
        before = await auditor.checkpoint()
    await first_hub.stop(0)
    old_size, old_note = checkpoints(data_dir)[-1]
    assert old_size == len(rows(data_dir)) > before.tree_size

    with pytest.raises(ConfigError) as moved:
        await hub_factory(data_dir=data_dir, audit_origin="elsewhere.example/hutong-audit")
    assert moved.value.reason == "AUDIT_ORIGIN_MISMATCH"

    hub = await hub_factory(data_dir=data_dir, policy=POLICY, checkpoint_seconds=0.2)
    async with connect(demo_pki, AUDITOR, hub.port) as auditor:
        await auditor.check("11010519491231002X", request_id="after")
        after = await auditor.checkpoint_covering(old_size + 2)
        assert after.verifier_key == before.verifier_key
        assert verify_binding(after.key_binding, demo_pki.hub_tls.ca_pem).origin == "localhost/hutong-audit"
        pinned = parse_verifier_key(before.verifier_key)
        old, new = verified(old_note, pinned), verified(after.checkpoint, pinned)
        assert new.size > old.size == old_size
        proof = await auditor.audit.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(first_tree_size=old.size, second_tree_size=new.size),
            metadata=auditor.metadata,
        )
        verify_consistency(
            old.size, new.size, old.root_hash, new.root_hash, list(proof.hashes), suite_hash(crypto_suite)
        )
    log = entries(data_dir)
    assert [e.method for e in log[old_size : old_size + 2]] == [AUTH + "IssueToken", QUERY + "CheckEnrollment"]
    assert log[old_size + 1].request_id == "after"
    assert_gapless(rows(data_dir), data_dir, suite_hash(crypto_suite))


@pytest.mark.parametrize("crypto_suite", ["intl"])
async def test_a_call_the_log_cannot_record_fails_closed_with_audit_unavailable(
    hub_factory: Any,
    demo_pki: DemoPki,
    make_record: Callable[..., person_pb2.PersonRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = await hub_factory()
    assert hub.store is not None

    async def disk_full(entries: Sequence[AuditEntry]) -> int:
        raise StoreError("disk full", reason="STORE_WRITE_FAILED")

    async with connect(demo_pki, GZ, hub.port) as gz:
        monkeypatch.setattr(hub.store, "append_audit", disk_full)
        info = await refused(gz.check("11010519491231002X"), grpc.StatusCode.UNAVAILABLE)
        assert info.reason == "AUDIT_UNAVAILABLE"
        # No unaudited token either.
        info = await refused(gz.auth.IssueToken(auth_pb2.IssueTokenRequest()), grpc.StatusCode.UNAVAILABLE)
        assert info.reason == "AUDIT_UNAVAILABLE"
        # A stream's batches are audited in their own transactions, so they are applied and
        # acknowledged; the stream as a whole cannot be, and ends UNAVAILABLE.
        acks: list[records_pb2.SyncRecordsResponse] = []
        stream = gz.records.SyncRecords(iter([batch("b1", [make_record("r1")])]), metadata=gz.metadata)
        info = await refused(drain(stream, acks), grpc.StatusCode.UNAVAILABLE)
        assert info.reason == "AUDIT_UNAVAILABLE"
        assert [a.batch_id for a in acks] == ["b1"]
        monkeypatch.undo()
        await gz.check("11010519491231002X", request_id="recovered")
    log = rows(data_dir_of(hub))
    assert_gapless(log, data_dir_of(hub), suite_hash("intl"))
    decoded = [AuditEntry.decode(d) for _, d, _ in log]
    assert [(e.method, e.batch_id) for e in decoded] == [
        (AUTH + "IssueToken", ""),
        (RECORDS + "SyncRecords", "b1"),
        (QUERY + "CheckEnrollment", ""),
    ]
    assert decoded[-1].request_id == "recovered"


async def test_after_sigkill_every_answered_call_is_logged_and_the_restart_checkpoint_covers_them(
    hub_factory: Any, demo_pki: DemoPki, tmp_path: Path, id_number_of: Callable[..., str], crypto_suite: str
) -> None:
    data_dir = tmp_path / "killed"
    command = [
        sys.executable, "-c", SERVE, str(data_dir), str(demo_pki.hub_cert_path), str(demo_pki.hub_key_path),
        str(demo_pki.ca_cert_path), crypto_suite, str(tmp_path / "hub.port"),
    ]  # fmt: skip
    process, port = await asyncio.to_thread(spawn_hub, command, tmp_path / "hub.port", tmp_path / "hub.log")
    answered: list[str] = []
    try:
        async with connect(demo_pki, GZ, port) as gz, connect(demo_pki, ZZ, port) as zz:
            enough = asyncio.Event()

            async def ask(node: Node, n: int) -> None:
                await node.check(id_number_of(sequence=n), request_id=f"c{n}")
                answered.append(f"c{n}")
                if len(answered) >= 20:
                    enough.set()

            calls = [asyncio.ensure_future(ask((gz, zz)[n % 2], n)) for n in range(200)]
            await asyncio.wait_for(enough.wait(), timeout=30)
            process.send_signal(signal.SIGKILL)
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        process.kill()
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    # The kill came mid-flight: some calls were answered, the rest failed.
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert failures
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in failures), failures
    assert 20 <= len(answered) < 200

    # Before any restart: every answered call is in the file, indices gapless, the tree state agrees.
    hash_fn = suite_hash(crypto_suite)
    killed_log = rows(data_dir)
    root = assert_gapless(killed_log, data_dir, hash_fn)
    logged = {AuditEntry.decode(d).request_id for _, d, _ in killed_log}
    assert set(answered) <= logged
    assert [size for size, _ in checkpoints(data_dir)] == [0]  # only the empty tree was signed before the kill

    hub = await hub_factory(data_dir=data_dir)
    assert hub.audit is not None
    size, note = checkpoints(data_dir)[-1]
    signed = verified(note, hub.audit.key.verifier)
    assert (size, signed.size, signed.root_hash) == (len(killed_log), len(killed_log), root)
    # And the log goes on from there.
    async with connect(demo_pki, GZ, hub.port) as gz:
        await gz.check(id_number_of(sequence=999), request_id="after-restart")
    log = rows(data_dir)
    assert log[: len(killed_log)] == killed_log
    assert_gapless(log, data_dir, hash_fn)
    assert AuditEntry.decode(log[-1][1]).request_id == "after-restart"
