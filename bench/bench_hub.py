"""Hub benchmark: ingest, CheckEnrollment under load, and memory, beside a bare baseline.

Run: ``.venv/bin/python bench/bench_hub.py [--records 1000000] [--calls 20000]``

In one run, on this machine:

1. a synthetic population of ``--records`` persons (one province) is generated and serialized
   into batches of 1,000 before anything is timed;
2. the bare server (``bench/bare_server.py``: same services, same mTLS, no work) and then the
   hub (``hutong hub serve``, SQLite, FULL durability) each run in their own process;
3. the same batches are streamed to each (at most 4 unacknowledged), then ``--calls``
   CheckEnrollment calls are made by 64 concurrent callers, for persons that exist;
4. the hub's peak RSS (VmHWM) is read after it holds every record;
5. the store's floor: as many rows shaped like the hub's are inserted into a fresh SQLite
   database with the hub's schema and settings, a committed transaction per batch, with no hub
   at all (``bench/store_floor.py``). No hub on this store can ingest faster than that.

It prints each figure, the hub/bare ratio and the target. Load loops are bounded by count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.client import HubClient
from gateway.demo.population import PopulationSpec, iter_province_records
from gateway.demo.run import spawn_server
from gateway.domain.identity import is_valid_id_number
from hutong.v1 import person_pb2, query_pb2, records_pb2
from pki import DemoPki, TlsMaterial, write_demo_pki

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.store_floor import sqlite_floor

Metadata = tuple[tuple[str, str], ...]

PROVINCE = "440000"
BATCH = 1000
WINDOW = 4
CALLERS = 64


@dataclass
class Ingest:
    records: int
    seconds: float
    rejected: int

    @property
    def rate(self) -> float:
        return self.records / self.seconds


@dataclass
class Queries:
    calls: int
    seconds: float
    latencies_ms: list[float]
    errors: Counter[str]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def pct(self, p: float) -> float:
        return statistics.quantiles(self.latencies_ms, n=1000)[int(p * 10) - 1]


def prepare(records: int, seed: int) -> tuple[list[bytes], list[str]]:
    """Serialized batches and a sample of ID numbers held in them."""
    spec = PopulationSpec(provinces=(PROVINCE,), persons_per_province=records, seed=seed, mover_share=0.0)
    batches: list[bytes] = []
    ids: list[str] = []
    pending: list[person_pb2.PersonRecord] = []
    rnd = random.Random(seed)
    for record in iter_province_records(spec, PROVINCE):
        pending.append(record)
        if rnd.random() < 0.02 and is_valid_id_number(record.id_number):
            ids.append(record.id_number)
        if len(pending) == BATCH:
            batches.append(_batch(len(batches), pending))
            pending = []
    if pending:
        batches.append(_batch(len(batches), pending))
    return batches, ids


def _batch(n: int, records: list[person_pb2.PersonRecord]) -> bytes:
    return records_pb2.SyncRecordsRequest(batch_id=f"bench-{n:07d}", records=records).SerializeToString()


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and its children (the preparation workers)."""
    total = 0.0
    for proc in [pid, *children(pid)]:
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and b"resource_tracker" not in (stat.parent / "cmdline").read_bytes():
            out.append(int(stat.parent.name))
    return out


def channel(port: int, tls: TlsMaterial) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    return grpc.aio.secure_channel(
        f"localhost:{port}", creds, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )


async def token_metadata(port: int, tls: TlsMaterial) -> tuple[tuple[str, str], ...]:
    """An access token for the hub (the bare server needs none)."""
    async with HubClient(f"localhost:{port}", tls=tls) as client:
        return await client.call_metadata()


async def ingest(port: int, tls: TlsMaterial, batches: list[bytes], metadata: Metadata = ()) -> Ingest:
    async with channel(port, tls) as ch:
        identity: Callable[[bytes], bytes] = lambda b: b  # noqa: E731 - batches are pre-serialized
        sync = ch.stream_stream(
            "/hutong.v1.RecordExchangeService/SyncRecords",
            request_serializer=identity,
            response_deserializer=records_pb2.SyncRecordsResponse.FromString,
        )
        credits = asyncio.Semaphore(WINDOW)

        async def requests() -> AsyncIterator[bytes]:
            for batch in batches:
                await credits.acquire()
                yield batch

        records = rejected = 0
        started = time.perf_counter()
        async for ack in sync(requests(), metadata=metadata):
            credits.release()
            records += len(ack.record_outcomes)
            rejected += ack.record_counts.rejected
        return Ingest(records, time.perf_counter() - started, rejected)


async def query_load(port: int, tls: TlsMaterial, ids: list[str], calls: int, metadata: Metadata = ()) -> Queries:
    async with channel(port, tls) as ch:
        check = ch.unary_unary(
            "/hutong.v1.AssistanceQueryService/CheckEnrollment",
            request_serializer=query_pb2.CheckEnrollmentRequest.SerializeToString,
            response_deserializer=query_pb2.CheckEnrollmentResponse.FromString,
        )
        requests = [
            query_pb2.CheckEnrollmentRequest(id_number=ids[i % len(ids)], purpose=2, programs=[1]) for i in range(calls)
        ]
        for r in requests[:200]:  # warm up the connection and caches
            await check(r, metadata=metadata)
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        cursor = iter(requests)

        async def caller() -> None:
            for request in cursor:
                t = time.perf_counter()
                try:
                    await check(request, timeout=30, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                latencies.append((time.perf_counter() - t) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        return Queries(calls, time.perf_counter() - started, latencies, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="persons to ingest (default 1,000,000)")
    parser.add_argument("--calls", type=int, default=20_000, help="CheckEnrollment calls (default 20,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hutong-bench-"))
    try:
        pki: DemoPki = write_demo_pki(root / "pki", provinces=[(PROVINCE, "bench-01")])
        tls = next(iter(pki.nodes.values())).tls
        t = time.perf_counter()
        batches, ids = prepare(args.records, args.seed)
        print(f"prepared {args.records:,} records in {len(batches):,} batches in {time.perf_counter() - t:.1f}s")
        floor = sqlite_floor(PROVINCE, batches[0], args.records, batch=BATCH)
        print(f"SQLite alone took {floor.rows:,} hub-shaped rows in {floor.seconds:.1f}s")
        here = Path(__file__).resolve().parent
        certs = [str(pki.hub_cert_path), str(pki.hub_key_path), str(pki.ca_cert_path)]

        bare, bare_port = spawn_server(
            [sys.executable, str(here / "bare_server.py"), *certs, str(root / "bare.port")],
            root / "bare.port",
            root / "bare.log",
        )
        try:
            bare_ingest = asyncio.run(ingest(bare_port, tls, batches))
            bare_queries = asyncio.run(query_load(bare_port, tls, ids, args.calls))
        finally:
            stop(bare)

        hub, hub_port = spawn_server(
            [
                sys.executable, "-m", "gateway.cli", "--log-level", "warning", "hub", "serve",
                "--data-dir", str(root / "hub"), "--listen", "127.0.0.1:0",
                "--cert", certs[0], "--key", certs[1], "--ca", certs[2], "--port-file", str(root / "hub.port"),
            ],
            root / "hub.port",
            root / "hub.log",
        )  # fmt: skip
        try:
            workers = children(hub.pid)
            cpu_before = [cpu_seconds(p) for p in (hub.pid, *workers)]
            metadata = asyncio.run(token_metadata(hub_port, tls))
            hub_ingest = asyncio.run(ingest(hub_port, tls, batches, metadata))
            cpu_ingest = [cpu_seconds(p) - b for p, b in zip((hub.pid, *workers), cpu_before, strict=True)]
            rss_after_ingest = peak_rss_mib(hub.pid)
            hub_queries = asyncio.run(query_load(hub_port, tls, ids, args.calls, metadata))
            rss = peak_rss_mib(hub.pid)
        finally:
            stop(hub)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    def row(name: str, hub_value: float, bare_value: float, unit: str, target: str) -> None:
        ratio = hub_value / bare_value if bare_value else float("nan")
        print(f"{name:<34}{hub_value:>14,.1f}{bare_value:>14,.1f}  {unit:<10}{ratio:>7.2f}  {target}")

    print()
    print(f"{'figure':<34}{'hub':>14}{'bare':>14}  {'unit':<10}{'ratio':>7}  target")
    row("ingest over mTLS", hub_ingest.rate, bare_ingest.rate, "records/s", ">= 50,000 records/s")
    row("SQLite alone, no hub (floor)", floor.rate, bare_ingest.rate, "records/s", "")
    row("  the same, last tenth of rows", floor.tail_rate, bare_ingest.rate, "records/s", "")
    row("CheckEnrollment, 64 callers", hub_queries.rate, bare_queries.rate, "calls/s", "ratio >= 0.50")
    row("CheckEnrollment p50", hub_queries.pct(50), bare_queries.pct(50), "ms", "")
    row("CheckEnrollment p99", hub_queries.pct(99), bare_queries.pct(99), "ms", "ratio <= 2.00")
    print(f"{'hub peak RSS (with workers)':<34}{rss:>14,.1f}{'':>14}  {'MiB':<10}{'':>7}  <= 500 MB")
    print(
        f"\nrecords {hub_ingest.records:,} ({hub_ingest.rejected:,} rejected by the hub's rules) in"
        f" {hub_ingest.seconds:.1f}s; bare {bare_ingest.seconds:.1f}s;"
        f" peak RSS after ingest {rss_after_ingest:,.1f} MiB;"
        f" query errors hub {dict(hub_queries.errors) or 0}, bare {dict(bare_queries.errors) or 0}"
    )
    print(
        f"hub ingest / SQLite alone: {hub_ingest.rate / floor.rate:.2f};"
        f" SQLite alone / ingest target: {floor.rate / 50_000:.2f}"
        + (" (the store alone is below the target on this machine)" if floor.rate < 50_000 else "")
    )
    per_record = [1e6 * c / hub_ingest.records for c in cpu_ingest]
    print(
        f"CPU per ingested record: hub process {per_record[0]:.1f} µs (gRPC, SQLite), "
        + ", ".join(f"worker {n} {us:.1f} µs" for n, us in enumerate(per_record[1:], 1))
        + " (preparation)"
    )


if __name__ == "__main__":
    main()
