"""The hub's own watch over its exchange log: "verified up to entry N", like a CT monitor run by the operator.

The hub signs checkpoints of a Merkle tree it keeps as a compact range (:mod:`gateway.hub.audit`);
it never reads an entry back. Someone with write access to the database could therefore rewrite
a stored entry, and the next checkpoint would still be signed over the untouched compact range:
the province nodes' witnesses (:mod:`gateway.audit.witness`) would see a perfectly consistent
log. :class:`AuditMonitor` closes that gap from inside the hub. Each pass:

* reads the newest stored checkpoint and checks its signature (the hub's note key) and origin;
* reads the entries from the verified size up to the checkpoint's size, in batches, decodes each
  (:meth:`~gateway.audit.AuditEntry.decode`: canonical JSON of an audit entry, nothing else),
  hashes it as a leaf and folds it into a :class:`~gateway.audit.MerkleAccumulator`;
* compares the resulting root with the checkpoint's; on a match, advances the verified size.

Anything that does not hold — a bad signature, another origin, an entry that is not an audit
entry, a missing index, a root mismatch, a log that shrank, two roots for one size — becomes the
status's ``problem``: a sentence naming the checkpoint size or entry index, logged once as
``audit_log_inconsistent`` at error level. A problem is sticky: the monitor stops advancing and
keeps reporting it until the hub restarts (after someone has looked). A store that cannot be
read (:class:`~gateway.errors.StoreUnavailable`, a locked database) is not a problem: the pass
raises, the background task logs it and tries again at the next interval.

Entries below the verified size are not read again: the monitor proves each entry matched a
signed root once, as a CT monitor does, not that it never changed afterwards. Signed checkpoints
are re-checked, though: the one at the verified size must keep its root.

With a ``state_file`` the verified size, its root and the accumulator's peaks are kept on disk
(JSON, replaced atomically, mode 0600), so a restart resumes instead of re-reading millions of
entries. On the first pass the saved root is checked against the hub's signed checkpoint of
that size; a disagreement is a problem. A file that cannot be read or parsed is set aside with
a warning and verification starts again from entry 0: it costs time, never trust.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from gateway.audit import (
    AuditEntry,
    Checkpoint,
    CheckpointInvalid,
    EntryInvalid,
    HashFn,
    MerkleAccumulator,
    NoteVerifier,
    SignatureInvalid,
    TreeRangeInvalid,
    empty_root,
    leaf_hash,
    verify_checkpoint,
)
from gateway.errors import ConfigError, HutongError
from gateway.store.base import AuditFilter, Store
from pki.operator import write_secret_file

__all__ = ["AUDIT_MONITOR_FILE", "STATE_FORMAT", "AuditMonitor", "MonitorStatus"]

log = structlog.get_logger("hutong.audit")

#: The ``format`` member of the state file.
STATE_FORMAT = "hutong-audit-monitor/1"
#: The state file's name in the hub's data directory.
AUDIT_MONITOR_FILE = "audit-monitor.json"
# The state names no person, but it is the hub's private bookkeeping: owner only, like the keys.
_EVERY_ENTRY = AuditFilter()
#: Bytes of entries read and checked in one go (a few milliseconds of work).
_CHUNK_BYTES = 128 * 1024
#: After each chunk the monitor waits this many times as long as the chunk took.
_REST = 3.0
#: Entries in the first chunk of a pass, before their size is known.
_FIRST_CHUNK = 64


@dataclass(frozen=True, slots=True)
class MonitorStatus:
    """What the monitor has proven about the exchange log, as of its last pass."""

    #: Entries ``0 .. verified_size - 1`` were read back, decoded, hashed as leaves, and their root
    #: equals the one in the hub's validly signed checkpoint of exactly this size.
    verified_size: int
    #: The root hash of the first ``verified_size`` entries (the empty tree's root for 0).
    verified_root: bytes
    #: The size of the newest stored checkpoint seen (0 before there is one); it may be the one at fault.
    checkpoint_size: int = 0
    #: When the hub signed that checkpoint (its ``time`` line, microseconds since the epoch), if known.
    checkpoint_time_us: int | None = None
    #: When the last pass ended (microseconds since the epoch); 0 before the first.
    checked_at_us: int = 0
    #: None while all is well; else a sentence naming the checkpoint size or entry index and what did not match.
    problem: str | None = None
    #: The kind of problem in UPPER_SNAKE (``ROOT_MISMATCH``, ``SIGNATURE_INVALID``, ...), for metrics and alerts.
    problem_reason: str | None = None
    #: Why the last pass could not run (the store failed); says nothing about the log itself.
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether no problem was found (a pass that could not run is no problem)."""
        return self.problem is None

    @property
    def unverified(self) -> int:
        """Entries covered by the newest checkpoint but not verified yet."""
        return max(self.checkpoint_size - self.verified_size, 0)


class _Problem(Exception):
    """What a pass found wrong with the log: a reason, a sentence, and the sizes involved."""

    def __init__(self, reason: str, message: str, **context: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.context = context


def _now_us() -> int:
    return time.time_ns() // 1000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret_file(path, data, field="audit_monitor_state", overwrite=True)


class AuditMonitor:
    """Re-reads the exchange log behind the hub's signed checkpoints and reports the first thing that does not match.

    ``verifier`` is the hub's checkpoint key (``AuditKey.verifier``), ``origin`` the log's name,
    ``hash_fn`` its tree hash (``hash_function(log_hash_name(suite))``: SM3 on the ``sm`` suite).
    ``batch`` entries are read and hashed between two yields to the event loop. One monitor per
    ``state_file``: instances do not coordinate.
    """

    def __init__(
        self,
        store: Store,
        verifier: NoteVerifier,
        origin: str,
        hash_fn: HashFn,
        *,
        batch: int = 5000,
        state_file: Path | None = None,
    ) -> None:
        if batch < 1:
            raise ConfigError(
                f"audit monitor batch must be at least 1, not {batch}",
                reason="AUDIT_MONITOR_BATCH_INVALID",
                field="batch",
                metadata={"batch": str(batch)},
            )
        self._store = store
        self._verifier = verifier
        self._origin = origin
        self._hash_fn = hash_fn
        self._hash_size = len(hash_fn(b""))
        self._batch = batch
        self._state_file = None if state_file is None else Path(state_file)
        self._tree = MerkleAccumulator(hash_fn)
        self._status = MonitorStatus(verified_size=0, verified_root=empty_root(hash_fn))
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: The tree read from the state file, trusted only once the first pass has matched it to a checkpoint.
        self._saved: MerkleAccumulator | None = self._load_state()

    @property
    def status(self) -> MonitorStatus:
        """The result of the last pass (verified size 0 and no problem before the first)."""
        return self._status

    @property
    def state_file(self) -> Path | None:
        """Where the verified state is kept, if anywhere."""
        return self._state_file

    # ----------------------------------------------------------------- one pass

    async def check(self) -> MonitorStatus:
        """Verify whatever the newest signed checkpoint covers beyond the verified size; return the new status.

        Findings about the log are returned in ``problem``, never raised. An error of the store
        (or any other failure to read) is raised after being noted in the status's ``error``.
        Concurrent calls run one after the other.
        """
        async with self._lock:
            if self._status.problem is not None:
                # Sticky: after a finding nothing is trusted any more, so nothing is read either.
                self._status = replace(self._status, checked_at_us=_now_us())
                return self._status
            try:
                await self._pass()
            except _Problem as problem:
                self._alarm(problem)
            except Exception as exc:
                self._status = replace(self._status, checked_at_us=_now_us(), error=str(exc) or type(exc).__name__)
                raise
            return self._status

    async def _pass(self) -> None:
        resumed = self._saved is not None
        if self._saved is not None:
            saved = self._saved
            await self._confirm_verified(saved.size, saved.root(), from_state_file=True)
            self._tree, self._saved = saved, None
            self._status = replace(self._status, verified_size=saved.size, verified_root=saved.root())
            log.info("audit_monitor_resumed", origin=self._origin, verified_size=saved.size)

        verified = self._tree.size
        latest = await self._store.latest_checkpoint()
        if latest is None:
            if verified:
                raise _Problem(
                    "CHECKPOINT_MISSING",
                    f"the hub holds no signed checkpoint at all, but {verified} entries were verified against one",
                    verified_size=verified,
                )
            self._status = replace(self._status, checked_at_us=_now_us(), error=None)
            return

        stored_size, note = latest
        self._status = replace(self._status, checkpoint_size=stored_size, checkpoint_time_us=None)
        checkpoint = self._verify(stored_size, note)
        self._status = replace(self._status, checkpoint_time_us=checkpoint.time_us)
        root = self._tree.root()
        if checkpoint.size < verified:
            raise _Problem(
                "LOG_SHRANK",
                f"the newest signed checkpoint covers {checkpoint.size} entries, but {verified} were verified"
                " before: the log shrank or its checkpoints were removed",
                checkpoint_size=checkpoint.size,
                verified_size=verified,
            )
        if checkpoint.size == verified:
            if checkpoint.root_hash != root:
                raise self._fork(checkpoint.size, checkpoint.root_hash, root, "the monitor verified")
            self._status = replace(self._status, checked_at_us=_now_us(), error=None)
            return

        if verified and not resumed:
            # The checkpoint the verified size rests on must still say what it said.
            await self._confirm_verified(verified, root)
        tree = self._tree.copy()
        await self._read_range(tree, verified, checkpoint.size)
        new_root = tree.root()
        if new_root != checkpoint.root_hash:
            raise _Problem(
                "ROOT_MISMATCH",
                f"entries {verified}..{checkpoint.size - 1}, hashed again, give a root other than the one the hub"
                f" signed in its checkpoint of size {checkpoint.size}: an entry in that range was altered,"
                " replaced or reordered",
                checkpoint_size=checkpoint.size,
                first_index=verified,
                last_index=checkpoint.size - 1,
            )
        self._tree = tree
        self._status = replace(
            self._status,
            verified_size=tree.size,
            verified_root=new_root,
            checked_at_us=_now_us(),
            error=None,
        )
        log.info("audit_log_verified", origin=self._origin, from_size=verified, verified_size=tree.size)
        await self._save_state(tree, new_root)

    async def _read_range(self, tree: MerkleAccumulator, start: int, end: int) -> None:
        """Fold entries ``start .. end - 1`` into ``tree``, checking each index and encoding."""
        index = start
        # Entries run from a few hundred bytes (a query) to tens of kilobytes (a batch of 1,000
        # records names 1,000 person keys), and checking one costs about 15 ns a byte. A chunk is
        # therefore sized by bytes as well as by count, and after each the monitor rests three
        # times as long as the chunk took: a pass over a large ingest takes at most a quarter of
        # the event loop, in slices of a few milliseconds, instead of holding it for seconds.
        limit = min(self._batch, _FIRST_CHUNK)
        while index < end:
            started = time.perf_counter()
            rows = await self._store.audit_entries(_EVERY_ENTRY, after=index, limit=min(limit, end - index), size=end)
            if not rows:
                raise _Problem(
                    "LOG_SHRANK",
                    f"the log holds no entry {index}, but the hub's signed checkpoint of size {end} covers it:"
                    f" the log ends after {index} entries",
                    checkpoint_size=end,
                    index=index,
                )
            for seq, data in rows:
                if seq != index:
                    raise _Problem(
                        "INDEX_GAP",
                        f"entry {index} is missing: the log goes on with entry {seq}, below the hub's signed"
                        f" checkpoint of size {end}",
                        checkpoint_size=end,
                        index=index,
                        next_index=seq,
                    )
                try:
                    AuditEntry.decode(data)
                except (EntryInvalid, RecursionError) as exc:
                    detail = exc.message if isinstance(exc, EntryInvalid) else "it is nested too deeply"
                    raise _Problem(
                        "ENTRY_INVALID",
                        f"entry {index}, covered by the hub's signed checkpoint of size {end}, is not the"
                        f" canonical JSON of an audit entry: {detail}",
                        checkpoint_size=end,
                        index=index,
                    ) from exc
                tree.append(leaf_hash(data, self._hash_fn))
                index += 1
            size = sum(len(data) for _, data in rows)
            # The next chunk: about _CHUNK_BYTES, from what this one's entries weighed on average.
            limit = max(1, min(self._batch, len(rows) * _CHUNK_BYTES // max(size, 1)))
            await asyncio.sleep(_REST * (time.perf_counter() - started))  # the hub's calls run meanwhile

    def _verify(self, stored_size: int, note: str) -> Checkpoint:
        """The checkpoint in ``note``, stored under ``stored_size``, once its signature and origin check out."""
        name = self._verifier.name
        try:
            checkpoint = verify_checkpoint(
                note, name, self._verifier.public_key, origin=self._origin, hash_size=self._hash_size
            )
        except SignatureInvalid as exc:
            raise _Problem(
                "SIGNATURE_INVALID",
                f"the checkpoint of size {stored_size} carries no valid signature by the hub's key {name}:"
                f" {exc.message}",
                checkpoint_size=stored_size,
            ) from exc
        except CheckpointInvalid as exc:
            if exc.field == "origin":
                raise _Problem(
                    "ORIGIN_MISMATCH",
                    f"the checkpoint of size {stored_size} is for the log {exc.metadata.get('origin', '?')},"
                    f" not {self._origin}",
                    checkpoint_size=stored_size,
                ) from exc
            raise _Problem(
                "CHECKPOINT_INVALID",
                f"the checkpoint stored for size {stored_size} is malformed: {exc.message}",
                checkpoint_size=stored_size,
            ) from exc
        if checkpoint.size != stored_size:
            raise _Problem(
                "CHECKPOINT_INVALID",
                f"the checkpoint stored for size {stored_size} states a size of {checkpoint.size}",
                checkpoint_size=stored_size,
                stated_size=checkpoint.size,
            )
        return checkpoint

    async def _confirm_verified(self, size: int, root: bytes, *, from_state_file: bool = False) -> None:
        """Check that the hub's signed checkpoint of ``size`` still states ``root``, the root verified for it."""
        if size == 0:
            return
        where = "the monitor's state file records" if from_state_file else "the monitor verified"
        note = await self._store.checkpoint_at(size)
        if note is None:
            raise _Problem(
                "CHECKPOINT_MISSING",
                f"the hub holds no signed checkpoint of size {size}, though {where} the first {size} entries against"
                " one: the log's checkpoints were removed",
                checkpoint_size=size,
            )
        checkpoint = self._verify(size, note)
        if checkpoint.root_hash != root:
            raise self._fork(size, checkpoint.root_hash, root, where)

    @staticmethod
    def _fork(size: int, signed: bytes, known: bytes, where: str) -> _Problem:
        return _Problem(
            "FORK",
            f"two different roots for size {size}: the hub's signed checkpoint states {_b64(signed)}, but {where}"
            f" {_b64(known)} for the first {size} entries",
            checkpoint_size=size,
        )

    def _alarm(self, problem: _Problem) -> None:
        """Make ``problem`` the sticky finding and raise the alarm (once: no pass runs after it)."""
        self._status = replace(
            self._status,
            problem=problem.message,
            problem_reason=problem.reason,
            checked_at_us=_now_us(),
            error=None,
        )
        log.error(
            "audit_log_inconsistent",
            detail=problem.message,
            reason=problem.reason,
            origin=self._origin,
            verified_size=self._status.verified_size,
            **{k: v for k, v in problem.context.items() if k != "verified_size"},
        )

    # ----------------------------------------------------------------- state file

    def _load_state(self) -> MerkleAccumulator | None:
        """The tree saved in the state file; None (with a warning) when there is none or it is unusable."""
        path = self._state_file
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("audit_monitor_state_unreadable", path=str(path), error=exc.strerror or str(exc))
            return None
        try:
            tree = self._parse_state(data)
        except (ValueError, TypeError, KeyError, binascii.Error, TreeRangeInvalid) as exc:
            # Starting over costs a full re-read, never trust: every entry is checked again.
            log.warning("audit_monitor_state_corrupt", path=str(path), error=str(exc), action="verifying from entry 0")
            return None
        return None if tree.size == 0 else tree

    def _parse_state(self, data: bytes) -> MerkleAccumulator:
        doc: Any = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} document")
        if doc.get("origin") != self._origin:
            raise ValueError(f"state of the log {doc.get('origin')!r}, not {self._origin!r}")
        size = doc["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size is not a non-negative integer")
        peaks = [base64.b64decode(p, validate=True) for p in doc["peaks"]]
        if any(len(p) != self._hash_size for p in peaks):
            raise ValueError(f"peaks are not {self._hash_size}-byte hashes")
        tree = MerkleAccumulator(self._hash_fn, size=size, peaks=peaks)
        if tree.root() != base64.b64decode(doc["root"], validate=True):
            raise ValueError("peaks do not give the saved root")
        return tree

    async def _save_state(self, tree: MerkleAccumulator, root: bytes) -> None:
        path = self._state_file
        if path is None:
            return
        doc = {
            "format": STATE_FORMAT,
            "origin": self._origin,
            "size": tree.size,
            "root": _b64(root),
            "peaks": [_b64(p) for p in tree.peaks],
            "saved_at_us": _now_us(),
        }
        data = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
        try:
            # Replaced in one rename, 0600 from the first byte: a reader sees the old state or the new.
            await asyncio.to_thread(_save, path, data)
        except (HutongError, OSError) as exc:
            # The verification stands in memory; only a restart would have to redo it.
            log.warning("audit_monitor_state_unwritable", path=str(path), error=str(exc))

    # ----------------------------------------------------------------- background task

    def start(self, interval_seconds: float) -> None:
        """Check now and then every ``interval_seconds`` in a background task, until :meth:`stop`; no-op if running."""
        if not interval_seconds > 0:
            raise ConfigError(
                f"audit monitor interval must be positive, not {interval_seconds}",
                reason="AUDIT_MONITOR_INTERVAL_INVALID",
                field="interval_seconds",
                metadata={"interval_seconds": str(interval_seconds)},
            )
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._run(interval_seconds), name="audit-monitor")

    async def stop(self) -> None:
        """Cancel the background task and wait for it to end (a pass in progress is abandoned)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self, interval_seconds: float) -> None:
        while True:
            try:
                await self.check()
            except HutongError as exc:
                # The store is down or busy: nothing is known about the log, so nothing is alarmed.
                log.warning("audit_monitor_check_failed", origin=self._origin, error=str(exc), reason=exc.reason)
            except Exception:
                log.exception("audit_monitor_check_crashed", origin=self._origin)
            await asyncio.sleep(interval_seconds)
