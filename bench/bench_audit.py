"""Exchange-log benchmark: appends, export, offline verification and proofs, beside bare baselines.

Run: ``.venv/bin/python bench/bench_audit.py [--entries 1000000]``

In one run, on this machine, in a temporary directory:

1. **append, batched**: ``--entries`` realistic entries (a CheckEnrollment each: caller, purpose,
   one person key, payload digest) appended to the hub's store in batches of 1,000 — canonical
   encoding, leaf hash, Merkle compact range, subtree rows, the person index and the durable
   commit (``synchronous=FULL``). Baseline: the same rows inserted into a bare SQLite table with
   the same durability, no hashing, no index.
2. **append, one call each**: 64 concurrent callers each awaiting their own entry through the
   hub's recorder (group commit), for 20,000 entries.
3. **export** of the whole log and **offline verification** of the export (every leaf hash, the
   root at every checkpoint, the signatures). Baseline: reading and decompressing the export.
4. **inclusion proofs** at the full size: hashes per proof and proofs per second.

Targets (issue 4): append ≥ 20,000 entries/s; verify 1,000,000 entries in ≤ 10 s; an inclusion
proof in a 1,000,000-entry log has ≤ 20 hashes. Load loops are bounded by count.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import AuditEntry, NoteVerifier, verify_inclusion
from gateway.audit.archive import export_log, verify_export
from gateway.hub.audit import AuditKey, AuditRecorder
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_audit import SqliteAuditSource

BATCH = 1000
CALLERS = 64
SINGLE_ENTRIES = 20_000
PROOFS = 2000
ORIGIN = "hub.bench.invalid/hutong-audit"


def _entries(n: int, seed: int) -> list[AuditEntry]:
    rng = random.Random(seed)
    start = time.time_ns() // 1000
    provinces = ("440000", "410000", "510000", "320000")
    out = []
    for i in range(n):
        province = provinces[i % len(provinces)]
        out.append(
            AuditEntry(
                time_us=start + i,
                request_id=rng.randbytes(16).hex(),
                caller=f"hutong://province/{province}/node/node-{i % 7:02d}",
                province=province,
                subject=f"hutong://province/{province}/node/node-{i % 7:02d}",
                method="/hutong.v1.AssistanceQueryService/CheckEnrollment",
                purpose="duplicate-check",
                outcome="OK",
                counts={},
                person_keys=[rng.randbytes(16).hex()],
                payload_digest=rng.randbytes(32).hex(),
            )
        )
    return out


def _bare_insert(path: Path, entries: list[AuditEntry]) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
    encoded = [e.encode() for e in entries]  # the bare path is given its bytes for free
    started = time.perf_counter()
    for first in range(0, len(encoded), BATCH):
        con.execute("BEGIN")
        con.executemany("INSERT INTO t VALUES (?,?)", enumerate(encoded[first : first + BATCH], start=first))
        con.execute("COMMIT")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


async def _append_batched(store: SqliteStore, entries: list[AuditEntry]) -> float:
    started = time.perf_counter()
    for first in range(0, len(entries), BATCH):
        await store.append_audit(entries[first : first + BATCH])
    return time.perf_counter() - started


async def _append_single(recorder: AuditRecorder, entries: list[AuditEntry]) -> float:
    queue = list(reversed(entries))

    async def caller() -> None:
        while queue:
            await recorder.append(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return time.perf_counter() - started


def _read_export(directory: Path) -> tuple[float, int]:
    started = time.perf_counter()
    total = 0
    for path in sorted((directory / "entries").iterdir()):
        total += gzip.decompress(path.read_bytes()).count(b"\n")
    for path in sorted((directory / "leaves").iterdir()):
        path.read_bytes()
    return time.perf_counter() - started, total


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


async def run(entries_total: int, seed: int, keep: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="hutong-bench-audit-"))
    print(f"working in {work} ({os.cpu_count()} CPUs)")
    try:
        entries = _entries(entries_total, seed)
        bare = _bare_insert(work / "bare.sqlite3", entries)
        store = SqliteStore(work / "hub.sqlite3")
        await store.open()
        key = AuditKey(ORIGIN, Ed25519PrivateKey.generate())
        recorder = AuditRecorder(store, key, "sha256", checkpoint_seconds=3600)
        # Checkpoints along the way, as the hub's cadence would sign them.
        batched = 0.0
        step = max(BATCH, entries_total // 8)
        for first in range(0, entries_total, step):
            batched += await _append_batched(store, entries[first : first + step])
            await recorder.checkpoint()
        single = await _append_single(recorder, _entries(SINGLE_ENTRIES, seed + 1))
        await recorder.checkpoint()
        size, root = await store.audit_tree()

        started = time.perf_counter()
        indices = [random.Random(seed).randrange(size) for _ in range(PROOFS)]
        lengths = []
        for index in indices[:PROOFS]:
            proof = await store.inclusion_proof(index, size)
            lengths.append(len(proof))
        proof_seconds = time.perf_counter() - started
        found = await store.audit_entry(indices[0])
        assert found is not None
        verify_inclusion(found[1], indices[0], size, await store.inclusion_proof(indices[0], size), root)
        await store.close()

        source = SqliteAuditSource(
            work / "hub.sqlite3", origin=ORIGIN, hash_name="sha256", verifier_key=key.verifier_key, key_binding=None
        )
        started = time.perf_counter()
        summary = export_log(source, work / "export")
        export_seconds = time.perf_counter() - started
        source.close()
        read_seconds, lines = _read_export(work / "export")
        assert lines == size
        verifier = NoteVerifier.of(ORIGIN, key.private_key.public_key())
        started = time.perf_counter()
        report = verify_export(work / "export", verifier)
        verify_seconds = time.perf_counter() - started
        assert report.size == size
        assert report.root_hash == root

        export_bytes = sum(p.stat().st_size for p in (work / "export").rglob("*") if p.is_file())
        print()
        print(f"append, batches of {BATCH:,}      {_rate(entries_total, batched):>12}  (bare SQLite insert:"
              f" {_rate(entries_total, bare)}; hub/bare {bare / batched:.2f})   target ≥ 20,000/s")  # fmt: skip
        print(f"append, 1 per call x {CALLERS} callers {_rate(SINGLE_ENTRIES, single):>10}  (group commit)")
        print(f"export {size:,} entries          {export_seconds:8.2f} s   ({summary.segments_written} segments,"
              f" {export_bytes / 2**20:,.0f} MiB)")  # fmt: skip
        print(f"verify {size:,} entries          {verify_seconds:8.2f} s   (bare read + gunzip:"
              f" {read_seconds:.2f} s; verify/read {verify_seconds / read_seconds:.2f})"
              "   target ≤ 10 s for 1,000,000")  # fmt: skip
        print(f"inclusion proof at {size:,}       {max(lengths):>4} hashes max, {_rate(len(lengths), proof_seconds)}"
              f"   target ≤ 20 hashes")  # fmt: skip
        print(f"root {root.hex()[:16]}…, {report.checkpoints} checkpoints verified")
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries to append (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    asyncio.run(run(args.entries, args.seed, args.keep))


if __name__ == "__main__":
    main()
