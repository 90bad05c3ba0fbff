"""A province node's memory of the exchange log: the latest checkpoint, and a check of every new one.

The hub could show one node one history and another node a different one, or quietly drop
entries. Each node therefore remembers the last checkpoint it accepted and takes a new one only
when the log provably grew from it (RFC 9162 consistency proof). The flow::

    witness = CheckpointWitness(state_file, verifier, origin)
    checkpoint, needed = witness.pending(note)          # signature and origin checked
    proof = fetch_consistency_proof(*needed) if needed else ()
    witness.accept(note, proof)                         # consistency checked, state persisted

The first checkpoint ever seen is trusted on first use. After that, a checkpoint of fewer
entries (a rollback), a different root for the same size (a fork), a time earlier than the
remembered one, or growth without a valid consistency proof raises :class:`LogInconsistent`:
the offending note is kept next to the state file as evidence
(``<state_file>.conflict-<size>-<hash>.note``), an ``audit_log_inconsistent`` alarm is logged,
and the remembered checkpoint is left untouched.

The state file holds the remembered signed note as plain text, exactly as the hub signed it, so
it can be handed to an auditor (``hutong audit verify --known FILE``). It is replaced atomically
(temporary file, fsync, rename). One witness per state file: instances do not coordinate.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from gateway.audit.checkpoint import Checkpoint, NoteVerifier, verify_checkpoint
from gateway.audit.errors import CheckpointInvalid, LogInconsistent, ProofInvalid
from gateway.audit.merkle import HashFn, sha256, verify_consistency
from gateway.errors import ConfigError

__all__ = ["CheckpointWitness"]

log = structlog.get_logger("hutong.audit")

# World-readable: the state is a public signed note, meant to be handed to auditors.
_STATE_FILE_MODE = 0o644


def _fsync_directory(directory: Path) -> None:
    """Flush a rename to disk (POSIX); elsewhere the rename itself has to do."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, so a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), _STATE_FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class CheckpointWitness:
    """Remembers the latest checkpoint of one log and accepts only checkpoints consistent with it.

    ``verifier`` is the hub's checkpoint key (see :func:`gateway.audit.binding.verify_binding`),
    ``origin`` the log's name; ``hash_fn`` must be the log's tree hash (SM3 on the ``sm`` suite).
    A state file that exists but does not hold a checkpoint of ``origin`` signed by ``verifier``
    is refused at construction (:class:`CheckpointInvalid` or :class:`SignatureInvalid`), never reset.
    """

    def __init__(self, state_file: Path, verifier: NoteVerifier, origin: str, *, hash_fn: HashFn = sha256) -> None:
        self._state_file = Path(state_file)
        self._verifier = verifier
        self._origin = origin
        self._hash_fn = hash_fn
        self._hash_size = len(hash_fn(b""))
        self._latest: Checkpoint | None = None
        self._latest_note: str | None = None
        self._load()

    @property
    def state_file(self) -> Path:
        """Where the remembered signed note is kept."""
        return self._state_file

    @property
    def latest(self) -> Checkpoint | None:
        """The last accepted checkpoint, or None before the first one."""
        return self._latest

    @property
    def latest_note(self) -> str | None:
        """The last accepted checkpoint as the signed note the hub sent (the state file's text)."""
        return self._latest_note

    # ----------------------------------------------------------------- checking

    def pending(self, note: str) -> tuple[Checkpoint, tuple[int, int] | None]:
        """The checkpoint in ``note`` and the consistency proof ``(old_size, new_size)`` to fetch for it.

        Checks the signature and origin only; changes nothing. The range is None when no proof
        is needed: no checkpoint remembered yet, the remembered tree is empty, or the size did
        not grow (:meth:`accept` then decides whether the note is a rollback or a fork).
        """
        checkpoint = self._verify(note)
        latest = self._latest
        if latest is None or latest.size == 0 or checkpoint.size <= latest.size:
            return checkpoint, None
        return checkpoint, (latest.size, checkpoint.size)

    def accept(self, note: str, proof: Sequence[bytes] = ()) -> Checkpoint:
        """Check ``note`` against the remembered checkpoint and remember it; return its checkpoint.

        ``proof`` is the consistency proof :meth:`pending` asked for (ignored when none is
        needed). The same checkpoint again is a no-op. A badly signed note or one for another
        log raises :class:`CheckpointInvalid`; a rollback, a fork, a time going backwards or a
        failing proof raises :class:`LogInconsistent` after keeping the note as evidence.
        """
        checkpoint = self._verify(note)
        latest = self._latest
        if latest is None:
            self._remember(note, checkpoint)
            log.warning(
                "audit_checkpoint_trusted_on_first_use",
                origin=self._origin,
                size=checkpoint.size,
                root_hash=_b64(checkpoint.root_hash),
                state_file=str(self._state_file),
            )
            return checkpoint
        if checkpoint == latest:
            return latest
        if checkpoint.size < latest.size:
            raise self._alarm(
                latest, note, checkpoint, "rollback", f"log rolled back from {latest.size} to {checkpoint.size} entries"
            )
        if checkpoint.size == latest.size and checkpoint.root_hash != latest.root_hash:
            raise self._alarm(
                latest, note, checkpoint, "fork", f"log forked: two different roots for the same {latest.size} entries"
            )
        if latest.time_us is not None and checkpoint.time_us is not None and checkpoint.time_us < latest.time_us:
            raise self._alarm(
                latest,
                note,
                checkpoint,
                "time_backwards",
                f"checkpoint time went backwards from {latest.time_us} to {checkpoint.time_us} µs since the epoch",
            )
        if checkpoint.size > latest.size:
            # From the empty tree no proof is needed (pending() asks for none): only the old root is checked.
            needed = proof if latest.size else ()
            try:
                verify_consistency(
                    latest.size, checkpoint.size, latest.root_hash, checkpoint.root_hash, needed, self._hash_fn
                )
            except ProofInvalid as exc:
                raise self._alarm(
                    latest,
                    note,
                    checkpoint,
                    "proof_invalid",
                    f"log growth from {latest.size} to {checkpoint.size} entries is not consistent: {exc.message}",
                ) from exc
        self._remember(note, checkpoint)
        log.info("audit_checkpoint_accepted", origin=self._origin, old_size=latest.size, size=checkpoint.size)
        return checkpoint

    # ----------------------------------------------------------------- internals

    def _verify(self, note: str) -> Checkpoint:
        return verify_checkpoint(
            note, self._verifier.name, self._verifier.public_key, origin=self._origin, hash_size=self._hash_size
        )

    def _load(self) -> None:
        path = self._state_file
        meta = {"path": str(path)}
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(
                f"cannot read witness state file {path}: {exc.strerror or exc}",
                reason="WITNESS_STATE_UNREADABLE",
                field="state_file",
                metadata=meta,
            ) from exc
        # Never start afresh over a damaged file: that would silently re-trust whatever the hub says next.
        advice = "restore it from a backup, or investigate before removing it (the next checkpoint is then trusted)"
        try:
            note = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointInvalid(
                f"witness state file {path} is not UTF-8 text; {advice}", field="state_file", metadata=meta
            ) from exc
        try:
            checkpoint = self._verify(note)
        except CheckpointInvalid as exc:
            raise type(exc)(
                f"witness state file {path} does not hold a checkpoint of {self._origin} signed by key "
                f"{self._verifier.name}: {exc.message}; {advice}",
                field="state_file",
                metadata={**exc.metadata, **meta},
            ) from exc
        self._latest, self._latest_note = checkpoint, note

    def _remember(self, note: str, checkpoint: Checkpoint) -> None:
        try:
            _write_atomically(self._state_file, note.encode("utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"cannot write witness state file {self._state_file}: {exc.strerror or exc}",
                reason="WITNESS_STATE_UNWRITABLE",
                field="state_file",
                metadata={"path": str(self._state_file)},
            ) from exc
        self._latest, self._latest_note = checkpoint, note

    def _evidence_path(self, note: str, checkpoint: Checkpoint) -> Path:
        # The note's hash in the name: two conflicting notes of one size never overwrite each other.
        digest = hashlib.sha256(note.encode("utf-8")).hexdigest()[:16]
        return self._state_file.with_name(f"{self._state_file.name}.conflict-{checkpoint.size}-{digest}.note")

    def _alarm(self, latest: Checkpoint, note: str, checkpoint: Checkpoint, kind: str, message: str) -> LogInconsistent:
        """Keep ``note`` as evidence, log the alarm, and return the error to raise."""
        path = self._evidence_path(note, checkpoint)
        evidence = str(path)
        try:
            if not path.exists():
                _write_atomically(path, note.encode("utf-8"))
        except OSError as exc:
            # The alarm matters more than the file: raise it even when the evidence cannot be kept.
            log.error("audit_evidence_unwritable", path=evidence, error=str(exc))
            evidence = ""
        context = {
            "origin": self._origin,
            "kind": kind,
            "remembered_size": str(latest.size),
            "offered_size": str(checkpoint.size),
            "evidence": evidence,
        }
        log.critical(
            "audit_log_inconsistent",
            detail=message,
            state_file=str(self._state_file),
            remembered_root_hash=_b64(latest.root_hash),
            offered_root_hash=_b64(checkpoint.root_hash),
            **context,
        )
        return LogInconsistent(message, metadata=context)
