"""``hutong node sync``: export files → adapter → outbox → hub, resumable from any crash.

A run has three steps, each safe to interrupt and repeat:

1. **Ingest** (a worker thread): the profile's adapter reads the files; each record whose content
   differs from what was last queued goes into the outbox and into a batch, written with it in
   one transaction. Unchanged records are only marked as seen.
2. **Send** (the event loop, at the same time): unacknowledged batches stream to the hub in order,
   at most ``sync.window`` unacknowledged at once. Each acknowledgement is applied to the outbox
   in one transaction. A broken connection or an unavailable hub is retried with exponential
   backoff and jitter (tenacity) until ``sync.retry_deadline_seconds`` pass without an
   acknowledgement; INVALID_ARGUMENT, PERMISSION_DENIED and the like are never retried.
3. **Retire** (``snapshot`` mode, once everything is acknowledged): records the hub holds that the
   run's files no longer contain are retired with ``RetireRecords``, unless that would retire
   more than ``sync.max_retire_fraction`` of them (a truncated export must not empty the
   province) or a file could not be read to its end.

Resending is always safe: a batch keeps its ``batch_id`` and bytes, and the hub answers a batch it
has applied with its original acknowledgement, which the outbox does not count twice.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import multiprocessing
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
import tenacity

from adapters.profile import Profile, load_profile
from adapters.run import Summary, adapt
from gateway import errors
from gateway.client import HubClient
from gateway.domain.model import PersonRecord
from gateway.node.config import NodeConfig
from gateway.node.outbox import (
    COMPLETE,
    INGESTED,
    INGESTING,
    RETIRING,
    Batch,
    Outbox,
    RunInfo,
    RunWriter,
)
from hutong.v1 import records_pb2
from pki import identity_from_certificate, load_certificate

__all__ = ["SyncProgress", "SyncReport", "retryable", "sync_files"]

log = structlog.get_logger("hutong.node.sync")
T = TypeVar("T")

#: Status codes a sync retries: the hub or the path to it is down, busy or shutting down.
_RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED"})
_RETIRE_REASONS = {
    "withdrawn": records_pb2.RETIREMENT_REASON_WITHDRAWN,
    "exited": records_pb2.RETIREMENT_REASON_EXITED,
}


def retryable(exc: BaseException) -> bool:
    """Whether a failed call may be tried again: never for a refusal (invalid, denied, unauthenticated)."""
    return isinstance(exc, errors.HutongError) and (exc.code_name in _RETRYABLE or isinstance(exc, errors.Unavailable))


@dataclass
class SyncProgress:
    """Live counters, read by the progress bar."""

    rows_read: int = 0
    records_acked: int = 0
    batches_acked: int = 0
    reconnects: int = 0


@dataclass
class SyncReport:
    """What a run did."""

    run: RunInfo
    resumed: bool
    adapt: dict[str, Any] | None
    counts: dict[str, int]
    retire_candidates: int = 0
    retire_refused: str | None = None
    rejects_file: Path | None = None
    hub_rejects_file: Path | None = None
    hub_rejects: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def summary_to_json(summary: Summary) -> dict[str, Any]:
    """The adapter's summary, kept with the run."""
    return {
        "rows_read": summary.rows_read,
        "produced": summary.produced,
        "rejected": summary.rejected,
        "households": summary.households,
        "reasons": dict(summary.reasons),
        "files": [
            {
                "path": f.path,
                "rows_read": f.rows_read,
                "produced": f.produced,
                "rejected": f.rejected,
                "structure": dict(f.structure),
                "failure": f.failure,
            }
            for f in summary.files
        ],
    }


def check_profile_province(config: NodeConfig, profile: Profile) -> None:
    """The profile must describe this node's own province (the hub would refuse every record otherwise)."""
    identity = identity_from_certificate(load_certificate(config.hub.cert))
    if identity.province_code != profile.province:
        raise errors.ConfigError(
            f"the profile {config.profile} is for province {profile.province}, but this node's certificate is for"
            f" {identity.province_code}",
            reason="PROFILE_PROVINCE_MISMATCH",
            field="node.profile",
        )


async def sync_files(
    config: NodeConfig,
    files: list[Path],
    *,
    allow_mass_retire: bool = False,
    progress: SyncProgress | None = None,
    client: HubClient | None = None,
) -> SyncReport:
    """One ``hutong node sync`` run over ``files`` (none: resume or drain what the outbox holds)."""
    started = time.monotonic()
    profile = load_profile(config.profile)
    check_profile_province(config, profile)
    progress = progress or SyncProgress()
    outbox = Outbox.open(config.outbox_path)
    own_client = client is None
    if client is None:
        client = config.hub_client()
    db = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
    try:
        run, resumed = outbox.open_run(config.sync.mode, files)
        paths = _run_paths(run, files)
        log.info("sync run", run=run.run_id, resumed=resumed, state=run.state, files=len(paths))
        sender = _Sender(outbox, client, db, config, progress)
        adapt_summary = run.summary
        if run.state == INGESTING:
            adapt_summary = await _ingest_and_send(config, profile, run, paths, sender, progress)
            outbox.set_run_state(run.run_id, INGESTED, summary=adapt_summary)
        else:
            await sender.drain(lambda: True)
        report = SyncReport(run=run, resumed=resumed, adapt=adapt_summary, counts={})
        run = outbox.run(run.run_id)
        if run.state == INGESTED:
            _plan_retirements(outbox, config, run, report, allow_mass_retire)
            outbox.set_run_state(run.run_id, RETIRING)
        if outbox.run(run.run_id).state == RETIRING:
            await sender.drain(lambda: True)
            outbox.set_run_state(run.run_id, COMPLETE)
        report.run = outbox.run(run.run_id)
        report.counts = outbox.run_counts(run.run_id)
        report.hub_rejects = outbox.hub_rejects(run.run_id)
        report.rejects_file, report.hub_rejects_file = _write_rejects(config, outbox, run.run_id, report.hub_rejects)
        report.seconds = time.monotonic() - started
        log.info("sync done", run=run.run_id, seconds=round(report.seconds, 1), **report.counts)
        return report
    except errors.HutongError as exc:
        outbox.note_error(f"{exc.reason}: {exc}")
        raise
    finally:
        db.shutdown(wait=True)
        outbox.close()
        if own_client:
            await client.close()


def _run_paths(run: RunInfo, files: list[Path]) -> list[Path]:
    """The run's files, checked to be the ones it began with when it is resumed without naming them."""
    if files:
        return files
    paths = []
    for f in run.files:
        path = Path(f["path"])
        try:
            st = path.stat()
        except OSError:
            raise errors.ConfigError(
                f"run {run.run_id} was reading {path}, which is gone; name this run's files again to start over",
                reason="FILE_CHANGED",
                field=str(path),
            ) from None
        if (st.st_size, st.st_mtime_ns) != (f["size"], f["mtime_ns"]):
            raise errors.ConfigError(
                f"{path} changed since run {run.run_id} began reading it; name the files again to start a new run",
                reason="FILE_CHANGED",
                field=str(path),
            )
        paths.append(path)
    return paths


def ingest_files(
    outbox_path: Path,
    profile: Profile,
    run_id: int,
    paths: list[Path],
    *,
    batch_size: int,
    on_batch: Callable[[], None],
    on_rows: Callable[[int], None],
) -> dict[str, Any]:
    """Read ``paths`` with the profile into the outbox as run ``run_id``; returns the adapter's summary.

    Runs in a worker thread or in a process of its own (:func:`_ingest_child`); it talks to the
    sender only through the outbox and the two callbacks.
    """
    outbox = Outbox.open(outbox_path)
    writer = RunWriter(outbox, run_id, batch_size=batch_size, versions_from_source="version" in profile.record,
                       on_batch=on_batch)  # fmt: skip
    rows = 0

    def on_record(record: PersonRecord, file: str, location: str) -> None:
        writer.add_record(record, Path(file).name, location)

    def on_row() -> None:
        nonlocal rows
        rows += 1
        if rows == 1000:  # a shared counter costs more than a row: tell it in thousands
            on_rows(rows)
            rows = 0

    try:
        summary = adapt(
            profile,
            paths,
            on_record=on_record,
            on_reject=lambda reject: writer.add_reject(reject.file, reject.location, reject.to_json()),
            on_household=writer.add_household,
            on_row=on_row,
            with_location=True,
        )
        writer.finish()
        on_rows(rows)
        return summary_to_json(summary)
    except BaseException:
        writer.abort()
        raise
    finally:
        outbox.close()


#: The child's shared counters (rows read, batches written), handed over when the process starts.
_COUNTERS: tuple[Any, Any] | None = None


def _init_child(rows: Any, batches: Any) -> None:
    global _COUNTERS
    _COUNTERS = (rows, batches)


def _ingest_child(
    outbox_path: str, profile_path: str, run_id: int, paths: list[str], batch_size: int
) -> dict[str, Any]:
    """:func:`ingest_files` in a process of its own, counting into the shared values."""
    assert _COUNTERS is not None
    rows, batches = _COUNTERS

    def count_rows(n: int) -> None:
        rows.value += n

    def count_batch() -> None:
        batches.value += 1

    return ingest_files(
        Path(outbox_path),
        load_profile(Path(profile_path)),
        run_id,
        [Path(p) for p in paths],
        batch_size=batch_size,
        on_batch=count_batch,
        on_rows=count_rows,
    )


#: Exports at least this large are read in a process of their own: the adapter is CPU-bound
#: Python, and in the sender's process it would starve the stream of the interpreter lock
#: (measured at 1M records: end to end slower than reading and sending one after the other).
#: Smaller ones are read in a thread, saving the process start-up.
PROCESS_THRESHOLD_BYTES = 8 * 1024 * 1024


async def _ingest_and_send(
    config: NodeConfig, profile: Profile, run: RunInfo, paths: list[Path], sender: _Sender, progress: SyncProgress
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    size = sum(p.stat().st_size for p in paths if p.exists())
    if size < PROCESS_THRESHOLD_BYTES:

        def count_rows(n: int) -> None:
            progress.rows_read += n

        def wake() -> None:
            loop.call_soon_threadsafe(sender.wake.set)

        ingest = loop.run_in_executor(
            None,
            functools.partial(
                ingest_files,
                config.outbox_path,
                profile,
                run.run_id,
                paths,
                batch_size=config.sync.batch_size,
                on_batch=wake,
                on_rows=count_rows,
            ),
        )
        ingest.add_done_callback(lambda _: sender.wake.set())
        return await _send_while(ingest, sender)
    context = multiprocessing.get_context("spawn")
    rows, batches = context.Value("q", 0, lock=False), context.Value("q", 0, lock=False)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=_init_child, initargs=(rows, batches)
    ) as pool:
        ingest = loop.run_in_executor(
            pool,
            _ingest_child,
            str(config.outbox_path),
            str(config.profile),
            run.run_id,
            [str(p) for p in paths],
            config.sync.batch_size,
        )

        async def watch() -> None:  # new batches wake the sender; rows move the progress bar
            seen = 0
            while not ingest.done():
                if batches.value != seen:
                    seen = batches.value
                    sender.wake.set()
                progress.rows_read = rows.value
                await asyncio.sleep(0.02)
            progress.rows_read = rows.value
            sender.wake.set()

        watcher = asyncio.ensure_future(watch())
        try:
            return await _send_while(ingest, sender)
        finally:
            watcher.cancel()


async def _send_while(ingest: asyncio.Future[dict[str, Any]], sender: _Sender) -> dict[str, Any]:
    """Send batches as the ingest writes them, until it is done and all is sent."""
    send_task = asyncio.ensure_future(sender.drain(ingest.done))
    try:
        summary = await ingest
        await send_task
    except BaseException:
        send_task.cancel()
        await asyncio.gather(send_task, return_exceptions=True)
        raise
    return summary


def _plan_retirements(
    outbox: Outbox, config: NodeConfig, run: RunInfo, report: SyncReport, allow_mass_retire: bool
) -> None:
    if run.mode != "snapshot" or not run.files:
        return
    failed = [f for f in (run.summary or {}).get("files", []) if f.get("failure")]
    if failed:
        report.retire_refused = (
            f"{failed[0]['path']} was not read to its end ({failed[0]['failure']}); nothing is retired until a"
            " whole export is read"
        )
        return
    gone, held = outbox.retirement_candidates(run.run_id)
    report.retire_candidates = gone
    if gone and not allow_mass_retire and gone > config.sync.max_retire_fraction * held:
        report.retire_refused = (
            f"this export would retire {gone:,} of the {held:,} records the hub holds, more than"
            f" sync.max_retire_fraction ({config.sync.max_retire_fraction:g}); check the export, then run again"
            " with --allow-mass-retire"
        )
        return
    if gone:
        queued = outbox.queue_retirements(
            run.run_id, _RETIRE_REASONS[config.sync.retire_reason], min(config.sync.batch_size, 5000)
        )
        log.info("retirements queued", run=run.run_id, records=queued)


def _write_rejects(
    config: NodeConfig, outbox: Outbox, run_id: int, hub_rejects: list[dict[str, str]]
) -> tuple[Path | None, Path | None]:
    config.rejects_dir.mkdir(parents=True, exist_ok=True)
    rejects: Path | None = config.rejects_dir / f"run-{run_id:06d}.rejects.jsonl"
    assert rejects is not None
    n = 0
    with rejects.open("w", encoding="utf-8") as out:
        for line in outbox.rejects(run_id):
            out.write(line + "\n")
            n += 1
    if not n:
        rejects.unlink()
        rejects = None
    hub_file: Path | None = None
    if hub_rejects:
        hub_file = config.rejects_dir / f"run-{run_id:06d}.hub-rejects.jsonl"
        with hub_file.open("w", encoding="utf-8") as out:
            for item in hub_rejects:
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
    return rejects, hub_file


class _Sender:
    """Streams the outbox's unacknowledged batches to the hub, in order, and applies the acknowledgements."""

    def __init__(
        self,
        outbox: Outbox,
        client: HubClient,
        db: concurrent.futures.ThreadPoolExecutor,
        config: NodeConfig,
        progress: SyncProgress,
    ) -> None:
        self._outbox = outbox
        self._client = client
        self._db = db
        self._window = config.sync.window
        self._retry = config.sync.retry
        self._progress = progress
        self.wake = asyncio.Event()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def drain(self, ingest_done: Callable[[], bool]) -> None:
        """Send until the outbox holds nothing unacknowledged and ``ingest_done()`` says no more will come."""
        r = self._retry
        while True:
            retrying = tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception(retryable),
                wait=tenacity.wait_random_exponential(multiplier=r.initial_backoff, max=r.max_backoff),
                stop=tenacity.stop_after_delay(r.total_deadline),
                before_sleep=self._before_sleep,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    finished = await self._attempt(ingest_done)
            if finished:
                return

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._progress.reconnects += 1
        log.warning(
            "hub unreachable, retrying",
            attempt=state.attempt_number,
            wait_s=round(state.next_action.sleep if state.next_action else 0.0, 2),
            error=str(exc),
        )

    async def _attempt(self, ingest_done: Callable[[], bool]) -> bool:
        """One connection. True when all is sent; False to reconnect at once (progress was made);
        raises a retryable error when nothing was acknowledged."""
        acked_before = self._progress.batches_acked
        try:
            while True:
                self.wake.clear()
                head = await self._call(self._outbox.next_batch, 0)
                if head is None:
                    if ingest_done():
                        return True
                    await _wait(self.wake, 1.0)
                    continue
                if head.kind == "retire":
                    await self._retire(head)
                else:
                    await self._stream(head, ingest_done)
        except errors.HutongError as exc:
            if exc.reason == "ACK_TIMEOUT":
                await self._client.reconnect()  # the old connection may be dead without knowing it
            # Progress is any acknowledgement during this connection: the time allowed without one
            # (retry_deadline_seconds) starts again from the failure, not from when the stream opened.
            if retryable(exc) and self._progress.batches_acked > acked_before:
                log.warning("hub connection lost; resuming from the first unacknowledged batch", error=str(exc))
                self._progress.reconnects += 1
                return False
            raise

    async def _retire(self, batch: Batch) -> None:
        request = records_pb2.RetireRecordsRequest.FromString(batch.request)
        ack = await self._client.retire_records(request.request_id, request.retirements)
        await self._call(self._outbox.apply_retire_ack, batch, ack)
        self._progress.batches_acked += 1

    async def _next_ack(
        self, acks: AsyncIterator[records_pb2.SyncRecordsResponse], sent_at: collections.deque[float]
    ) -> records_pb2.SyncRecordsResponse | None:
        """The next acknowledgement, or None at the stream's end.

        A batch in flight must be acknowledged within ``attempt_timeout_seconds`` of being sent,
        or the stream is given up as UNAVAILABLE ``ACK_TIMEOUT`` and resent on a new connection:
        a connection the network forgot without a reset (NAT or firewall state lost) would
        otherwise hold the sync until the kernel's retransmissions give up, a quarter of an hour.
        While nothing is in flight (the export is still being read) the wait has no limit.
        """
        pending = asyncio.ensure_future(anext(acks, None))
        limit = self._retry.attempt_timeout
        try:
            while True:
                wait = limit - (time.monotonic() - sent_at[0]) if sent_at else limit
                done, _ = await asyncio.wait({pending}, timeout=max(wait, 0.0))
                if done:
                    return pending.result()
                if sent_at and time.monotonic() - sent_at[0] >= limit:
                    raise errors.Unavailable(
                        f"the hub acknowledged nothing for {limit:g} seconds with {len(sent_at)} batches in flight;"
                        " reconnecting",
                        reason="ACK_TIMEOUT",
                    )
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, errors.HutongError):
                    await pending

    async def _stream(self, head: Batch, ingest_done: Callable[[], bool]) -> None:
        """Stream sync batches from ``head`` until a retire batch or the end; every sent batch acknowledged."""
        credits = asyncio.Semaphore(self._window)
        in_flight: collections.deque[Batch] = collections.deque()
        sent_at: collections.deque[float] = collections.deque()  # monotonic send time of each in flight
        after = head.seq - 1

        ended = False  # the stream is over: gRPC's task feeding it from requests() must stop too

        async def requests() -> Any:
            nonlocal after
            while True:
                await credits.acquire()
                while not ended:
                    self.wake.clear()
                    batch = await self._call(self._outbox.next_batch, after)
                    if batch is not None or ingest_done():
                        break
                    await _wait(self.wake, 1.0)
                if ended or batch is None or batch.kind != "sync":
                    return
                in_flight.append(batch)
                sent_at.append(time.monotonic())
                after = batch.seq
                yield batch.request

        acks = self._client.sync_serialized(requests())
        try:
            while (ack := await self._next_ack(acks, sent_at)) is not None:
                if not in_flight:
                    raise errors.StoreError("the hub acknowledged a batch never sent", reason="ACK_UNEXPECTED")
                batch = in_flight.popleft()
                sent_at.popleft()
                if ack.batch_id != batch.batch_id:
                    raise errors.StoreError(
                        f"expected the acknowledgement of {batch.batch_id}, got {ack.batch_id}",
                        reason="ACK_OUT_OF_ORDER",
                        field="batch_id",
                    )
                if await self._call(self._outbox.apply_sync_ack, batch, ack):
                    self._progress.records_acked += len(ack.record_outcomes)
                self._progress.batches_acked += 1
                credits.release()
        finally:
            # A call that failed by itself leaves gRPC's task that writes the requests waiting in
            # requests() (grpc.aio cancels it only on cancel()): wake it so that it returns, rather
            # than being destroyed pending when the loop closes.
            ended = True
            credits.release()
            self.wake.set()
            await acks.aclose()
        if in_flight:
            raise errors.Unavailable(
                f"the hub closed the stream with {len(in_flight)} batches unacknowledged", reason="STREAM_ENDED"
            )


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set, or ``seconds`` pass (a look at the outbox then costs little)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
