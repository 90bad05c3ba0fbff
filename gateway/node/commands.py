"""``hutong node sync`` and ``hutong node status``: the node operator's commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway import errors
from gateway.client import RetryConfig
from gateway.node.config import NodeConfig, load_node_config
from gateway.node.outbox import Outbox
from gateway.node.sync import SyncProgress, SyncReport, retryable, sync_files
from gateway.serving import set_on_signals
from hutong.v1 import notification_pb2
from pki import load_certificate

__all__ = ["node_status", "run_node", "watch_drop_dir"]

EXIT_OK, EXIT_REJECTS, EXIT_UNAVAILABLE = 0, 4, 5


def run_node(args: argparse.Namespace) -> int:
    """Dispatch ``hutong node sync|status|inbox|report``."""
    config = load_node_config(args.config)
    if args.node_command == "status":
        return asyncio.run(node_status(config, ask_hub=args.hub, as_json=args.json))
    if args.node_command == "inbox":
        return asyncio.run(_inbox(config, once=args.once))
    if args.node_command == "report":
        return asyncio.run(_report(config, args.event_id, args.outcome, args.reason))
    if args.watch:
        if args.files:
            raise errors.ConfigError("--watch takes its files from sync.drop_dir, not the command line", field="files")
        return asyncio.run(watch_drop_dir(config, allow_mass_retire=args.allow_mass_retire))
    return asyncio.run(_sync_once(config, [Path(f) for f in args.files], allow_mass_retire=args.allow_mass_retire))


async def _inbox(config: NodeConfig, *, once: bool) -> int:
    from gateway.node.inbox import run_inbox

    stop = asyncio.Event()
    set_on_signals(stop)
    delivered = await run_inbox(config, stop=stop, idle_exit=2.0 if once else 0.0)
    Console(stderr=True).print(f"delivered {delivered:,} events")
    return EXIT_OK


_OUTCOMES = {
    "assisted": notification_pb2.EVENT_OUTCOME_ASSISTED,
    "not-eligible": notification_pb2.EVENT_OUTCOME_NOT_ELIGIBLE,
    "already-handled": notification_pb2.EVENT_OUTCOME_ALREADY_HANDLED,
}


async def _report(config: NodeConfig, event_id: str, outcome: str, reason: str) -> int:
    # The same report (event, outcome, reason) always has the same request id: repeating it is safe.
    request_id = "report-" + hashlib.sha256(f"{event_id}\n{outcome}\n{reason}".encode()).hexdigest()[:32]
    async with config.hub_client(RetryConfig()) as client:
        result = await client.report_outcome(request_id, event_id, _OUTCOMES[outcome], reason)
    state = "closed" if result.closed else "recorded; other provinces have yet to report"
    print(f"{event_id}: {outcome} {state}{' (already reported)' if result.replayed else ''}")
    return EXIT_OK


async def _sync_once(config: NodeConfig, files: list[Path], *, allow_mass_retire: bool) -> int:
    console = Console(stderr=True)
    progress = SyncProgress()
    try:
        with _progress_bar(console, progress):
            report = await sync_files(config, files, allow_mass_retire=allow_mass_retire, progress=progress)
    except errors.HutongError as exc:
        if retryable(exc):
            console.print(
                f"hutong: the hub stayed unreachable ({exc.reason}: {exc}); everything read is safe in the outbox,"
                " run `hutong node sync` again to resume"
            )
            return EXIT_UNAVAILABLE
        raise
    print_report(console, report)
    return exit_code(report)


def exit_code(report: SyncReport) -> int:
    """0: all acknowledged, nothing refused; 4: rows or records refused, or retirements held back."""
    adapt = report.adapt or {}
    refused = adapt.get("rejected", 0) or report.hub_rejects or report.retire_refused
    failed = any(f.get("failure") for f in adapt.get("files", [])) or report.counts.get("failed_batches", 0)
    return EXIT_REJECTS if refused or failed else EXIT_OK


@contextlib.contextmanager
def _progress_bar(console: Console, progress: SyncProgress) -> Iterator[None]:
    with Progress(
        TextColumn("{task.description}"),
        TextColumn("rows read {task.fields[rows]:,}"),
        TextColumn("records acknowledged {task.fields[acked]:,}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("node sync", rows=0, acked=0)

        async def refresh() -> None:
            while True:
                bar.update(task, rows=progress.rows_read, acked=progress.records_acked)
                await asyncio.sleep(0.25)

        ticker = asyncio.ensure_future(refresh()) if console.is_terminal else None
        try:
            yield
        finally:
            if ticker is not None:
                ticker.cancel()


def print_report(console: Console, report: SyncReport) -> None:
    """The run's summary: rows, outcomes, rejects and where they were written."""
    run = report.run
    adapt = report.adapt or {}
    head = f"run {run.run_id} ({run.mode}{', resumed' if report.resumed else ''}): {run.state}"
    console.print(f"{head} in {report.seconds:.1f} s")
    if adapt:
        console.print(
            f"rows read {adapt['rows_read']:,} = records {adapt['produced']:,} + rejected {adapt['rejected']:,}"
        )
        for f in adapt.get("files", []):
            if f.get("failure"):
                console.print(f"  {f['path']}: {f['failure']}")
    c = report.counts
    table = Table(title="hub acknowledgements")
    for name in ("queued", "created", "updated", "unchanged", "stale", "rejected", "retired"):
        table.add_column(name, justify="right")
    table.add_row(*(f"{c.get(n, 0):,}" for n in ("queued", "created", "updated", "unchanged", "stale", "rejected")),
                  f"{c.get('retired', 0):,}")  # fmt: skip
    console.print(table)
    if report.retire_refused:
        console.print(f"[bold]not retired:[/bold] {report.retire_refused}")
    if report.rejects_file:
        console.print(f"rows the adapter rejected: {report.rejects_file}")
    if report.hub_rejects_file:
        console.print(f"records the hub rejected: {report.hub_rejects_file}")
        for item in report.hub_rejects[:10]:
            console.print(f"  {item['kind']} {item['id']}: {item['reason']} ({item['field']}) {item['message']}")


async def watch_drop_dir(config: NodeConfig, *, allow_mass_retire: bool = False, max_runs: int | None = None) -> int:
    """Sync each export file that lands in ``sync.drop_dir``; a file is taken once its size stops changing.

    A synced file moves to ``done/``; a file the profile cannot read to its end moves to ``failed/``. An
    unreachable hub leaves the file in place to be tried again. Stops on SIGINT/SIGTERM, or after
    ``max_runs`` files.
    """
    drop = config.sync.drop_dir
    if drop is None:
        raise errors.ConfigError("--watch needs sync.drop_dir in the node config", field="sync.drop_dir")
    (drop / "done").mkdir(parents=True, exist_ok=True)
    (drop / "failed").mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    stop = asyncio.Event()
    set_on_signals(stop)
    sizes: dict[Path, tuple[int, int]] = {}
    runs = 0
    worst = EXIT_OK
    while not stop.is_set() and (max_runs is None or runs < max_runs):
        for path in sorted(p for p in drop.iterdir() if p.is_file() and not p.name.startswith(".")):
            st = path.stat()
            seen = (st.st_size, st.st_mtime_ns)
            if sizes.get(path) != seen:  # still being written, or new: look again next time
                sizes[path] = seen
                continue
            del sizes[path]
            try:
                report = await sync_files(config, [path], allow_mass_retire=allow_mass_retire)
            except errors.HutongError as exc:
                if retryable(exc):
                    console.print(f"hub unreachable; {path.name} stays for the next attempt: {exc}")
                    break
                console.print(f"{path.name}: {exc}")
                shutil.move(path, drop / "failed" / path.name)
                worst = max(worst, EXIT_REJECTS)
            else:
                print_report(console, report)
                unread = any(f.get("failure") for f in (report.adapt or {}).get("files", []))
                shutil.move(path, drop / ("failed" if unread else "done") / path.name)
                worst = max(worst, exit_code(report))
            runs += 1
            if max_runs is not None and runs >= max_runs:
                break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(config.sync.poll_seconds):
                await stop.wait()
    return worst


def _iso(us: int | None) -> str | None:
    return None if us is None else dt.datetime.fromtimestamp(us / 1e6, tz=dt.UTC).isoformat(timespec="seconds")


async def node_status(config: NodeConfig, *, ask_hub: bool = False, as_json: bool = False) -> int:
    """Outbox depth, last acknowledgement, last error, certificate expiry (and the hub's view with ``ask_hub``)."""
    outbox = Outbox.open(config.outbox_path)
    try:
        s = outbox.status()
    finally:
        outbox.close()
    cert = load_certificate(config.hub.cert)
    expires = cert.not_valid_after_utc
    days_left = (expires - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    run = s.last_run
    out: dict[str, Any] = {
        "outbox": str(config.outbox_path),
        "records": s.records,
        "held_at_hub": s.held_at_hub,
        "retired_at_hub": s.retired_at_hub,
        "unacknowledged_batches": s.unacked_batches,
        "unacknowledged_items": s.unacked_items,
        "failed_batches": s.failed_batches,
        "last_ack": _iso(s.last_ack_us),
        "last_error": s.last_error,
        "last_error_at": _iso(s.last_error_us),
        "last_run": None
        if run is None
        else {"run": run.run_id, "mode": run.mode, "state": run.state, "started": _iso(run.started_us)},
        "certificate_expires": expires.isoformat(timespec="seconds"),
        "certificate_days_left": round(days_left, 1),
    }
    if config.inbox_path.exists():
        from gateway.node.inbox import Inbox

        inbox = Inbox(config.inbox_path)
        try:
            i = inbox.status()
        finally:
            inbox.close()
        out["inbox"] = {
            "events": i.received,
            "undelivered": i.undelivered,
            "unacknowledged": i.unacknowledged,
            "last_sequence": i.last_sequence,
            "last_error": i.last_error,
        }
    if ask_hub:
        async with config.hub_client(RetryConfig()) as client:
            state = await client.get_sync_state()
        out["hub"] = {
            "province": state.province_code,
            "node": state.node_name,
            "last_batch_id": state.last_batch_id,
            "batches_applied": state.batches_applied,
            "records_held": state.records_held,
            "records_retired": state.records_retired,
        }
    if as_json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        console = Console()
        table = Table(show_header=False, title="hutong node status")
        for key, value in out.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            table.add_row(
                key.replace("_", " "), "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
            )
        console.print(table)
    return EXIT_OK
