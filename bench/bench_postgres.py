"""PostgreSQL benchmark: hub ingest beside a SQLite hub, and CheckEnrollment at 100 k and 10 M persons.

Run: ``.venv/bin/python bench/bench_postgres.py [--url postgresql://postgres@127.0.0.1:5432/test]
[--records 200000] [--small 100000] [--large 10000000] [--calls 20000]``

In one run, on this machine, against the PostgreSQL server at ``--url`` (a new schema, dropped
at the end):

1. **Ingest.** ``--records`` synthetic persons of one province are serialized into batches of
   1,000 before anything is timed; a hub process on SQLite (the baseline) and then one on
   PostgreSQL (``hutong hub serve --config`` with ``[store] url``) each take the same batches
   from one node over mTLS (at most 4 unacknowledged). Target: >= 50,000 records/s into
   PostgreSQL.
2. **PostgreSQL alone.** As many rows shaped like the hub's go into a fresh schema through the
   hub's own engine (COPY, a committed transaction per 1,000, ``bench/store_floor.py``), with no
   hub at all; the CPU the server's processes spent is read from ``/proc``. No hub writing
   through one connection, as the hub's single sequencer does, can ingest faster than that.
3. **Lookup at scale.** ``records`` is filled directly with COPY (ID numbers made for the
   hub's person-key secret, spread over 31 provinces, so over the partitions) to ``--small``
   persons, a PostgreSQL hub serves ``--calls`` CheckEnrollment calls from 64 concurrent
   callers for persons that exist; then the table grows to ``--large`` persons and the same
   calls are made again. Target: p99 within 20 % (ratio <= 1.20).

Load loops are bounded by count. Prints each figure and its ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_hub import (
    Ingest,
    Queries,
    children,
    cpu_seconds,
    ingest,
    prepare,
    query_load,
    stop,
    token_metadata,
)

from bench.store_floor import StoreFloor, store_floor
from gateway.demo.run import spawn_server
from gateway.domain.identity import make_id_number
from gateway.domain.linkage import bootstrap_model
from gateway.domain.model import Enrollment, EnrollmentStatus, PersonRecord, Program
from gateway.domain.protection import FieldSealer, PersonKeyer
from gateway.domain.records import RecordPreparer
from gateway.hub.keys import load_or_create_keys
from gateway.store.postgres import PostgresEngine
from gateway.store.sqlite_linkage import store_model
from pki import DemoPki, TlsMaterial, write_demo_pki

PROVINCE = "440000"
#: The 31 provinces of the mainland: the rows of the scale test are spread over their partitions.
PROVINCES = [
    "110000",
    "120000",
    "130000",
    "140000",
    "150000",
    "210000",
    "220000",
    "230000",
    "310000",
    "320000",
    "330000",
    "340000",
    "350000",
    "360000",
    "370000",
    "410000",
    "420000",
    "430000",
    "440000",
    "450000",
    "460000",
    "500000",
    "510000",
    "520000",
    "530000",
    "540000",
    "610000",
    "620000",
    "630000",
    "640000",
    "650000",
]
COLUMNS = (
    "province, record_id, version, content_hash, person_key, sealed_pii, gender, birth_date, hukou_division,"
    " residence_division, household_id, enrollments, active_programs, updated_at_us, received_at_us,"
    " retired_reason, retired_at_us"
)
FIRST_BIRTH = dt.date(1930, 1, 1)


def hub_command(root: Path, name: str, pki: DemoPki, store_url: str | None) -> list[str]:
    config = root / f"{name}.toml"
    text = f'[hub]\ndata_dir = "{root / "hub-data"}"\n'
    if store_url is not None:
        text += f'[store]\nurl = "{store_url}"\n'
    else:
        text += f'[store]\nurl = "sqlite:///{root / name / "hub.sqlite3"}"\n'
    config.write_text(text, encoding="utf-8")
    return [
        sys.executable, "-m", "gateway.cli", "--log-level", "warning", "hub", "serve", "--config", str(config),
        "--listen", "127.0.0.1:0", "--cert", str(pki.hub_cert_path), "--key", str(pki.hub_key_path),
        "--ca", str(pki.ca_cert_path), "--port-file", str(root / f"{name}.port"),
    ]  # fmt: skip


def run_ingest(root: Path, name: str, pki: DemoPki, tls: TlsMaterial, batches: list[bytes], url: str | None) -> Ingest:
    hub, port = spawn_server(hub_command(root, name, pki, url), root / f"{name}.port", root / f"{name}.log")
    try:
        metadata = asyncio.run(token_metadata(port, tls))
        pids = (hub.pid, *children(hub.pid))
        before = [cpu_seconds(p) for p in pids]
        result = asyncio.run(ingest(port, tls, batches, metadata))
        used = sum(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
        print(
            f"{name}: {result.records:,} records in {result.seconds:.1f}s, {result.rate:,.0f}/s;"
            f" hub CPU {1e6 * used / max(1, result.records):.1f} µs a record"
        )
        return result
    finally:
        stop(hub)


def person_id(n: int) -> str:
    """The n-th synthetic ID number (distinct for n below 36,500 × 999)."""
    days, sequence = divmod(n, 999)
    return make_id_number("440106", FIRST_BIRTH + dt.timedelta(days=days % 36_500), sequence + 1)


def fill(url: str, data_dir: Path, start: int, end: int) -> float:
    """COPY persons start..end-1 into records (one active dibao each); seconds taken."""
    keys = load_or_create_keys(data_dir)
    keyer = PersonKeyer(keys.person_key_secret)
    template = (
        RecordPreparer(keyer, FieldSealer(keys))
        .prepare_batch(
            PROVINCE,
            [
                PersonRecord(
                    record_id="template",
                    version=1,
                    id_number=person_id(0),
                    name="王秀英",
                    gender=0,
                    birth_date=None,
                    hukou_division="440106",
                    residence_division="440106",
                    household_id="",
                    enrollments=(
                        Enrollment(Program.DIBAO, EnrollmentStatus.ACTIVE, dt.date(2024, 1, 1), None, 80_000, "440106"),
                    ),
                    updated_at_us=0,
                    content_hash=b"\x01" * 16,
                )
            ],
        )
        .records[0]
    )
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as con:
        with con.cursor() as cur, cur.copy(f"COPY records ({COLUMNS}) FROM STDIN") as copy:
            for n in range(start, end):
                province = PROVINCES[n % len(PROVINCES)]
                number = person_id(n)
                copy.write_row(
                    (
                        province, f"p{n:09d}", 1, template.content_hash, keyer.person_key(number),
                        template.sealed_pii, 2, int(number[6:14]), number[:6], province[:2] + "0100", "",
                        template.enrollments, template.active_programs, 0, 0, 0, 0,
                    )
                )  # fmt: skip
        con.execute("ANALYZE records")
    return time.perf_counter() - started


def postgres_cpu_seconds() -> float:
    """User + system CPU time of every PostgreSQL server process on this machine (readable as root or as postgres)."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            if comm.read_text().strip() == "postgres":
                total += cpu_seconds(int(comm.parent.name))
    return total


def run_floor(url: str, first_batch: bytes, rows: int) -> tuple[StoreFloor, float]:
    """PostgreSQL alone: the floor and the server's CPU per row, in µs."""
    before = postgres_cpu_seconds()
    floor = store_floor(PostgresEngine(url), PROVINCE, first_batch, rows)
    server_us = 1e6 * (postgres_cpu_seconds() - before) / rows
    print(
        f"postgresql-alone: {rows:,} rows in {floor.seconds:.1f}s, {floor.rate:,.0f}/s;"
        f" server CPU {server_us:.1f} µs a row"
    )
    return floor, server_us


def run_queries(root: Path, name: str, pki: DemoPki, tls: TlsMaterial, url: str, held: int, calls: int) -> Queries:
    hub, port = spawn_server(hub_command(root, name, pki, url), root / f"{name}.port", root / f"{name}.log")
    try:
        metadata = asyncio.run(token_metadata(port, tls))
        step = max(1, held // 5000)
        ids = [person_id(n) for n in range(0, held, step)]
        result = asyncio.run(query_load(port, tls, ids, calls, metadata))
        print(
            f"{name}: {held:,} persons held, {calls:,} CheckEnrollment in {result.seconds:.1f}s,"
            f" p50 {result.pct(50):.2f} ms, p99 {result.pct(99):.2f} ms, errors {dict(result.errors) or 0}"
        )
        return result
    finally:
        stop(hub)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test", help="the PostgreSQL database")
    parser.add_argument("--records", type=int, default=200_000, help="persons ingested through each hub")
    parser.add_argument("--small", type=int, default=100_000, help="persons held for the first lookups")
    parser.add_argument("--large", type=int, default=10_000_000, help="persons held for the second lookups")
    parser.add_argument("--calls", type=int, default=20_000, help="CheckEnrollment calls at each size")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hutong-bench-pg-"))
    admin = psycopg.connect(args.url, autocommit=True)
    schemas = [f"bench_{secrets.token_hex(4)}" for _ in range(3)]
    separator = "&" if "?" in args.url else "?"
    ingest_url, scale_url, floor_url = (f"{args.url}{separator}options=-csearch_path%3D{s}" for s in schemas)
    try:
        for schema in schemas:
            admin.execute(f"CREATE SCHEMA {schema}")
        pki = write_demo_pki(root / "pki", provinces=[(PROVINCE, "bench-01")])
        tls = next(iter(pki.nodes.values())).tls
        t = time.perf_counter()
        batches, _ = prepare(args.records, args.seed)
        print(f"prepared {args.records:,} records in {len(batches):,} batches in {time.perf_counter() - t:.1f}s")
        sqlite = run_ingest(root, "sqlite-hub", pki, tls, batches, None)
        postgres = run_ingest(root, "postgresql-hub", pki, tls, batches, ingest_url)
        floor, server_us = run_floor(floor_url, batches[0], args.records)

        engine = PostgresEngine(scale_url)
        con = engine.connect()
        engine.migrate(con)
        # The hub links with the shipped model: it would otherwise train one at start on the rows
        # COPY wrote, whose sealed names are the template's and open only under its record id.
        con.execute("BEGIN")
        store_model(con, bootstrap_model(), source="bootstrap", records=0, now=time.time_ns() // 1000)
        con.execute("COMMIT")
        con.close()
        load_or_create_keys(root / "hub-data")
        seconds = fill(scale_url, root / "hub-data", 0, args.small)
        print(f"COPY {args.small:,} persons in {seconds:.1f}s ({args.small / seconds:,.0f}/s)")
        small = run_queries(root, "lookups-small", pki, tls, scale_url, args.small, args.calls)
        seconds = fill(scale_url, root / "hub-data", args.small, args.large)
        grown = args.large - args.small
        print(f"COPY {grown:,} more persons in {seconds:.1f}s ({grown / seconds:,.0f}/s)")
        large = run_queries(root, "lookups-large", pki, tls, scale_url, args.large, args.calls)
    finally:
        for schema in schemas:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'figure':<44}{'value':>14}{'baseline':>14}  {'ratio':>7}  target")
    print(
        f"{'ingest into PostgreSQL (records/s)':<44}{postgres.rate:>14,.0f}{sqlite.rate:>14,.0f}"
        f"  {postgres.rate / sqlite.rate:>7.2f}  >= 50,000 records/s (baseline: the SQLite hub)"
    )
    print(
        f"{'PostgreSQL alone, no hub (records/s)':<44}{floor.rate:>14,.0f}{postgres.rate:>14,.0f}"
        f"  {floor.rate / postgres.rate:>7.2f}  (baseline: the PostgreSQL hub); tail {floor.tail_rate:,.0f}/s"
    )
    budget = 1e6 * (os.cpu_count() or 1) / 50_000
    print(
        f"{'PostgreSQL server CPU per row (µs)':<44}{server_us:>14.1f}{budget:>14.1f}  {server_us / budget:>7.2f}"
        f"  (baseline: all the CPU per record that 50,000 records/s leaves on {os.cpu_count()} CPUs)"
    )
    print(
        f"{f'CheckEnrollment p99 at {args.large:,} (ms)':<44}{large.pct(99):>14.2f}{small.pct(99):>14.2f}"
        f"  {large.pct(99) / small.pct(99):>7.2f}  ratio <= 1.20 (baseline: {args.small:,} persons)"
    )
    print(f"{'CheckEnrollment calls/s':<44}{large.rate:>14,.0f}{small.rate:>14,.0f}  {large.rate / small.rate:>7.2f}")


if __name__ == "__main__":
    main()
