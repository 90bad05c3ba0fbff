"""Node benchmark: a GBK CSV export to hub acknowledgements, end to end, beside the hub-only ingest.

Run: ``.venv/bin/python bench/bench_node.py [--records 1000000]``

In one run, on this machine:

1. ``--records`` persons are written as a GBK CSV in the Guangdong sample's layout (not timed);
2. **adapter + outbox**: the file goes through the Guangdong profile into a scratch outbox
   (``RunWriter``: adapt, validate, digest, batch, commit) with no hub — the node's own cost;
3. **hub only**: the batches that outbox holds are streamed, as stored, to a fresh hub
   (``hutong hub serve``, SQLite, FULL durability) with at most 4 unacknowledged — what the hub
   can take when the node costs nothing;
4. **end to end**: ``hutong node sync`` runs as its own process over the same file against a
   second fresh hub: adapter, outbox, mTLS stream, acknowledgements applied — wall time from start
   to exit.

Prints each rate, the end-to-end/hub-only ratio, the node's peak RSS and the target (issue 6:
≥ 30,000 records/s end to end).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from adapters.profile import load_profile
from adapters.run import adapt
from adapters.samples.synthetic import write_guangdong_export
from gateway.client import HubClient
from gateway.demo.run import spawn_server
from gateway.node.outbox import Outbox, RunWriter
from pki import DemoPki, write_demo_pki

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "adapters" / "profiles" / "guangdong-440000.toml"
BATCH = 2000
WINDOW = 4


def build_outbox(path: Path, export: Path) -> tuple[float, int]:
    """Adapter + outbox, no hub: (seconds, records)."""
    profile = load_profile(PROFILE)
    outbox = Outbox.open(path)
    run, _ = outbox.open_run("snapshot", [export])
    writer = RunWriter(outbox, run.run_id, batch_size=BATCH, versions_from_source=False)
    started = time.perf_counter()
    summary = adapt(
        profile,
        [export],
        on_record=lambda record, file, location: writer.add_record(record, Path(file).name, location),
        on_reject=lambda reject: writer.add_reject(reject.file, reject.location, reject.to_json()),
        on_household=writer.add_household,
        with_location=True,
    )
    writer.finish()
    seconds = time.perf_counter() - started
    outbox.close()
    return seconds, summary.produced


async def hub_only(port: int, outbox_path: Path, pki: DemoPki) -> tuple[float, int]:
    """Stream the outbox's stored batches to a hub: (seconds, records acknowledged)."""
    tls = next(iter(pki.nodes.values())).tls
    outbox = Outbox.open(outbox_path)
    batches = []
    after = 0
    while (batch := outbox.next_batch(after)) is not None:
        batches.append(batch.request)
        after = batch.seq
    outbox.close()
    async with HubClient(f"localhost:{port}", tls=tls) as client:
        await client.call_metadata()  # the token, before the clock starts
        credits = asyncio.Semaphore(WINDOW)

        async def requests() -> AsyncIterator[bytes]:
            for request in batches:
                await credits.acquire()
                yield request

        records = 0
        started = time.perf_counter()
        async for ack in client.sync_serialized(requests()):
            credits.release()
            records += len(ack.record_outcomes)
        return time.perf_counter() - started, records


def start_hub(root: Path, name: str, pki: DemoPki) -> tuple[subprocess.Popen[bytes], int]:
    return spawn_server(
        [
            sys.executable, "-m", "gateway.cli", "--log-level", "warning", "hub", "serve",
            "--data-dir", str(root / name), "--listen", "127.0.0.1:0",
            "--cert", str(pki.hub_cert_path), "--key", str(pki.hub_key_path), "--ca", str(pki.ca_cert_path),
            "--port-file", str(root / f"{name}.port"),
        ],
        root / f"{name}.port",
        root / f"{name}.log",
    )  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="persons in the export (default 1,000,000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hutong-bench-node-"))
    try:
        pki = write_demo_pki(root / "pki", provinces=[("440000", "bench-01")])
        node = next(iter(pki.nodes.values()))
        export = root / "export.csv"
        t = time.perf_counter()
        write_guangdong_export(export, range(args.records))
        size = export.stat().st_size
        print(f"wrote {args.records:,} persons, {size / 2**20:,.1f} MiB of GBK CSV in {time.perf_counter() - t:.1f}s")

        outbox_seconds, produced = build_outbox(root / "scratch.sqlite", export)

        hub, port = start_hub(root, "hub-a", pki)
        try:
            hub_seconds, hub_records = asyncio.run(hub_only(port, root / "scratch.sqlite", pki))
        finally:
            stop(hub)

        hub, port = start_hub(root, "hub-b", pki)
        try:
            config = root / "node.toml"
            config.write_text(
                f'[node]\ndata_dir = "{root / "node"}"\nprofile = "{PROFILE}"\n'
                f'[hub]\naddress = "localhost:{port}"\nca = "{pki.ca_cert_path}"\n'
                f'cert = "{node.cert_path}"\nkey = "{node.key_path}"\n'
                f"[sync]\nbatch_size = {BATCH}\nwindow = {WINDOW}\n",
                encoding="utf-8",
            )
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "--log-level", "warning", "node", "sync", "--config",
                 str(config), str(export)],
                capture_output=True, text=True,
            )  # fmt: skip
            e2e_seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"node sync failed ({done.returncode}):\n{done.stderr[-3000:]}")
            node_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        finally:
            stop(hub)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    e2e = args.records / e2e_seconds
    hub_rate = hub_records / hub_seconds
    outbox_rate = produced / outbox_seconds
    print()
    print(f"{'figure':<44}{'records/s':>12}  {'seconds':>8}  {'ratio':>6}")
    print(f"{'adapter + outbox (no hub)':<44}{outbox_rate:>12,.0f}  {outbox_seconds:>8.1f}")
    print(f"{'hub only (stored batches, mTLS)':<44}{hub_rate:>12,.0f}  {hub_seconds:>8.1f}  {1.0:>6.2f}")
    print(
        f"{'end to end: hutong node sync (CSV -> acks)':<44}{e2e:>12,.0f}  {e2e_seconds:>8.1f}  {e2e / hub_rate:>6.2f}"
    )
    print(f"\ntarget: end to end >= 30,000 records/s: {'met' if e2e >= 30_000 else 'NOT met'}")
    print(f"peak RSS of the largest child process (a hub or the node): {node_rss:,.0f} MiB")


if __name__ == "__main__":
    main()
