"""Export the exchange log to a directory, and verify such a directory offline.

An export is plain files that anyone can copy, archive and check years later with nothing but
the hub's checkpoint key::

    DIR/log.json                          {"format": "hutong-audit-export/1", "origin", "hash",
                                           "verifier_key", "size", "segment_size"}  (written last)
    DIR/checkpoints/<size>.note           every signed checkpoint of size <= "size"
    DIR/entries/<first index>.jsonl.gz    canonical entries, one per "\\n"-terminated line (gzip)
    DIR/leaves/<first index>.bin          the same entries' leaf hashes, raw, back to back
    DIR/key-binding.json                  the document binding the checkpoint key to the hub's
                                          certificate, copied as-is (when the hub has one)

Numbers in file names are 20 decimal digits, zero-padded, so names sort in index order. A
*segment* (one entries file and one leaves file) holds ``segment_size`` entries (a power of two)
starting at a multiple of it; only the last may hold fewer. Canonical entries never contain a
raw newline (JSON escapes it), so a line is an entry.

**Export** (:func:`export_log`) is incremental: running it again over the same directory keeps
every full segment already there and writes only the new tail (and rewrites the partial last
segment), so a periodic export doubles as archival. Every file is written to a hidden temporary
name, synced and renamed, and ``log.json`` last, so a reader never sees half a file. An
interrupted export leaves files beyond what ``log.json`` describes, which verification reports,
until the export is run again. Nothing is ever deleted, and a source that contradicts what is
already archived (fewer entries, another root for an archived checkpoint, a rewritten entry in
the partial segment) is refused before it overwrites anything.

**Verification** (:func:`verify_export`) trusts only the :class:`NoteVerifier` it is given;
``log.json`` and every other file are untrusted input. It checks every checkpoint's signature,
streams the segments in order (memory bounded by a read chunk, whatever the log's size),
recomputes each entry's leaf hash ``H(0x00 || entry)`` and folds the leaf hashes into a Merkle
tree whose root it compares with every signed checkpoint. Each checkpoint matching proves the
entries up to its size are exactly those the hub signed, and so that every checkpoint is
consistent with its predecessors (they are roots of prefixes of one entry sequence).

How a failure is localised — the entries are authenticated by the listed leaf hashes, and the
listed leaf hashes by the signed roots:

1. A missing, extra or misnamed file, a leaves file of the wrong length, an entries file with
   too few or too many lines, is named with the first entry index it affects.
2. While entries hash to their listed leaves, one tree is folded. At the first entry ``d`` whose
   recomputed leaf hash differs from the listed one, the verifier folds two trees from there on
   — the listed leaf hashes and the recomputed ones — up to the next signed checkpoint, then:

   * the listed leaves reproduce the signed root and the entries do not: **entry d** was edited,
     reordered, deleted, inserted or replaced (the leaf list is authentic, so d is exact);
   * the entries reproduce the signed root and the listed leaves do not: the **leaf hash listed
     for entry d** was edited, the entries are authentic (d is exact);
   * neither: both files were altered; d is the first place they disagree, and the first
     altered entry lies after the last checkpoint that matched;
   * no signed checkpoint covers d: entry d is named, without saying which file is wrong.

3. If entries and listed leaves agree everywhere but a checkpoint's root differs at size ``s``,
   both were altered together (or rewritten wholesale); a Merkle root cannot tell which leaf
   changed, so the error names the checkpoint and the range from the last matching checkpoint
   ``p`` to ``s - 1`` — exact when ``s == p + 1``, so denser checkpoints localise better.

Checkpoints the auditor obtained elsewhere (``known``) catch what an export alone cannot: a
directory rolled back to an older but consistent state (a known checkpoint beyond its end), and
a hub that signed two histories (a known root that differs from a signed export's at its size).
Those two raise :class:`LogInconsistent` — two signed statements by the hub contradict each
other; everything else raises :class:`ExportInvalid` (or :class:`SignatureInvalid` /
:class:`CheckpointInvalid` for a checkpoint file, annotated with its name), naming the first
entry or file that fails and why, with ``entry`` and ``file`` in ``metadata``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from gateway.audit.checkpoint import Checkpoint, NoteVerifier, parse_checkpoint, parse_verifier_key, verify_checkpoint
from gateway.audit.entry import AuditEntry
from gateway.audit.errors import CheckpointInvalid, EntryInvalid, ExportInvalid, KeyInvalid, LogInconsistent
from gateway.audit.merkle import HashFn, leaf_hash, sha256
from gateway.domain.protection import suite_hash

__all__ = [
    "EXPORT_FORMAT",
    "AuditSource",
    "ExportSummary",
    "VerifyReport",
    "export_log",
    "hash_function",
    "read_export_entries",
    "verify_export",
]

#: The ``format`` member of ``log.json``.
EXPORT_FORMAT = "hutong-audit-export/1"

_MANIFEST = "log.json"
_KEY_BINDING = "key-binding.json"
_ENTRIES = "entries"
_LEAVES = "leaves"
_CHECKPOINTS = "checkpoints"
_ENTRIES_SUFFIX = ".jsonl.gz"
_LEAVES_SUFFIX = ".bin"
_NOTE_SUFFIX = ".note"
_NAME_DIGITS = 20
_INDEX_NAME = re.compile(r"[0-9]{20}")
_HASH_NAMES = ("sha256", "sm3")
_MAX_SEGMENT_SIZE = 1 << 32
#: Decompressed bytes read from an entries file at a time: bounds memory, amortises per-call cost.
_READ_CHUNK = 1 << 20
#: No audit entry comes near this; a longer "line" is a corrupt or hostile file, not an entry.
_MAX_ENTRY_BYTES = 1 << 24
#: Bounds what is read of the small files (log.json, checkpoint notes).
_MAX_SMALL_FILE = 1 << 20


class AuditSource(Protocol):
    """What :func:`export_log` reads: a committed audit log, its checkpoints and its key binding."""

    #: The log's origin (the first line of its checkpoints).
    origin: str
    #: The tree hash: ``"sha256"`` or ``"sm3"``.
    hash_name: str
    #: The C2SP verifier key string of the checkpoint key (see ``encode_verifier_key``).
    verifier_key: str

    def tree_size(self) -> int:
        """The number of committed entries."""
        ...

    def read_entries(self, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        """``(canonical entry bytes, leaf hash)`` for indices ``start .. end - 1``, in order."""
        ...

    def checkpoints(self) -> Iterator[str]:
        """The signed checkpoint notes, by ascending tree size, one per size."""
        ...

    def key_binding(self) -> bytes | None:
        """The JSON document binding the checkpoint key to the hub's certificate, or None."""
        ...


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What one :func:`export_log` run did."""

    #: The number of entries the export now holds (the source's tree size when the run began).
    size: int
    #: Segments written by this run (new ones, and the partial last one rewritten).
    segments_written: int
    #: Full segments already in the directory and left untouched.
    segments_kept: int
    #: Signed checkpoints in the export (written now or already there).
    checkpoints: int
    #: The export directory.
    directory: Path


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify_export` established about an export directory."""

    #: The log's origin (every checkpoint names it).
    origin: str
    #: The tree hash named by ``log.json`` (``"sha256"`` or ``"sm3"``).
    hash_name: str
    #: The number of entries in the export.
    size: int
    #: The number of checkpoint files whose signature verified and whose root the entries reproduce.
    checkpoints: int
    #: The number of ``known`` checkpoints found consistent with the export.
    known: int
    #: The export's checkpoint of the largest size, or None if it has none.
    latest: Checkpoint | None
    #: Entries beyond the largest signed checkpoint (the export's or a known one): not yet signed.
    uncovered: int
    #: The recomputed root hash of all ``size`` entries.
    root_hash: bytes


def hash_function(hash_name: str) -> HashFn:
    """The tree hash named ``hash_name``: ``"sha256"`` (RFC 9162's) or ``"sm3"`` (the ``sm`` suite's)."""
    if hash_name == "sha256":
        return sha256
    if hash_name == "sm3":
        return suite_hash("sm")
    raise ExportInvalid(
        f"unknown tree hash {hash_name!r}: expected one of {', '.join(_HASH_NAMES)}",
        field="hash",
        metadata={"hash": hash_name},
    )


# --------------------------------------------------------------------------------------------
# Hashing in bulk


@dataclass(frozen=True, slots=True)
class _BulkHash:
    """A tree hash applied to whole lists, so the per-entry cost is one C call, not a Python frame."""

    #: ``H(0x00 || e)`` of each entry.
    leaves: Callable[[list[bytes]], list[bytes]]
    #: ``H(0x01 || l || r)`` of each consecutive pair of an even-length list.
    pairs: Callable[[list[bytes]], list[bytes]]
    #: ``H("")``, the empty tree's root.
    empty: bytes
    #: Bytes per hash.
    size: int


def _bulk_from_hashlib(base: Any) -> _BulkHash:
    """Bulk hashing with an OpenSSL hash object: copying a state that already holds the prefix is
    cheaper than constructing a hash and concatenating the prefix for every entry."""
    leaf_state = base.copy()
    leaf_state.update(b"\x00")
    node_state = base.copy()
    node_state.update(b"\x01")

    def leaves(entries: list[bytes]) -> list[bytes]:
        hashes: list[bytes] = []
        add = hashes.append
        for entry in entries:
            state = leaf_state.copy()
            state.update(entry)
            add(state.digest())
        return hashes

    def pairs(nodes: list[bytes]) -> list[bytes]:
        hashes: list[bytes] = []
        add = hashes.append
        it = iter(nodes)
        for left, right in zip(it, it, strict=True):
            state = node_state.copy()
            state.update(left)
            state.update(right)
            add(state.digest())
        return hashes

    empty: bytes = base.copy().digest()
    return _BulkHash(leaves, pairs, empty, len(empty))


def _bulk_from_function(hash_fn: HashFn) -> _BulkHash:
    def leaves(entries: list[bytes]) -> list[bytes]:
        return [hash_fn(b"\x00" + entry) for entry in entries]

    def pairs(nodes: list[bytes]) -> list[bytes]:
        it = iter(nodes)
        return [hash_fn(b"\x01" + left + right) for left, right in zip(it, it, strict=True)]

    empty = hash_fn(b"")
    return _BulkHash(leaves, pairs, empty, len(empty))


def _sm3_openssl() -> Any | None:
    """A fresh hashlib SM3 object (OpenSSL's, when built in), if it agrees with the suite's SM3 on a probe."""
    try:
        sm3 = hashlib.new("sm3")
    except ValueError:
        return None
    probe = sm3.copy()
    probe.update(b"abc")
    if probe.digest() != suite_hash("sm")(b"abc"):
        return None
    return sm3


def _bulk_hash(hash_name: str) -> _BulkHash:
    hash_fn = hash_function(hash_name)
    if hash_name == "sha256":
        return _bulk_from_hashlib(hashlib.sha256())
    if hash_name == "sm3" and (sm3 := _sm3_openssl()) is not None:
        return _bulk_from_hashlib(sm3)
    return _bulk_from_function(hash_fn)


class _CompactRange:
    """The roots of the perfect subtrees covering ``[0, size)``, extended a batch at a time.

    The same state as :class:`gateway.audit.merkle.MerkleAccumulator`, but a batch of leaves is
    folded level by level with list operations instead of one Python call per leaf and node.
    """

    __slots__ = ("_hash", "peaks", "size")

    def __init__(self, bulk: _BulkHash, size: int = 0, peaks: Sequence[bytes] = ()) -> None:
        self._hash = bulk
        self.size = size
        #: Largest (leftmost) first, one per set bit of ``size``.
        self.peaks = list(peaks)

    def copy(self) -> _CompactRange:
        return _CompactRange(self._hash, self.size, self.peaks)

    def extend(self, leaves: list[bytes]) -> None:
        if not leaves:
            return
        pending = self.peaks
        nodes = leaves
        position = self.size  # of nodes[0] among the nodes of the current level
        new_peaks: list[bytes] = []  # smallest first
        while nodes:
            if position & 1:
                # An existing peak is the left sibling of the first new node.
                nodes = [pending.pop(), *nodes]
                position -= 1
            if len(nodes) & 1:
                new_peaks.append(nodes[-1])
                nodes = nodes[:-1]
            nodes = self._hash.pairs(nodes) if nodes else nodes
            position >>= 1
        pending.extend(reversed(new_peaks))
        self.size += len(leaves)

    def root(self) -> bytes:
        if not self.peaks:
            return self._hash.empty
        root = self.peaks[-1]
        for peak in reversed(self.peaks[:-1]):
            root = self._hash.pairs([peak, root])[0]
        return root


# --------------------------------------------------------------------------------------------
# Files


def _index_name(index: int) -> str:
    return f"{index:0{_NAME_DIGITS}d}"


def _entries_file(start: int) -> str:
    return f"{_ENTRIES}/{_index_name(start)}{_ENTRIES_SUFFIX}"


def _leaves_file(start: int) -> str:
    return f"{_LEAVES}/{_index_name(start)}{_LEAVES_SUFFIX}"


def _checkpoint_file(size: int) -> str:
    return f"{_CHECKPOINTS}/{_index_name(size)}{_NOTE_SUFFIX}"


def _check_segment_size(segment_size: object, *, where: str) -> int:
    if (
        not isinstance(segment_size, int)
        or isinstance(segment_size, bool)
        or not 1 <= segment_size <= _MAX_SEGMENT_SIZE
        or segment_size & (segment_size - 1)
    ):
        raise ExportInvalid(
            f"{where}segment size {segment_size!r} is not a power of two in 1..2**32",
            field="segment_size",
            metadata={"segment_size": str(segment_size)},
        )
    return segment_size


@dataclass(frozen=True, slots=True)
class _Manifest:
    origin: str
    hash_name: str
    verifier_key: str
    size: int
    segment_size: int

    def to_json(self) -> bytes:
        obj = {
            "format": EXPORT_FORMAT,
            "origin": self.origin,
            "hash": self.hash_name,
            "verifier_key": self.verifier_key,
            "size": self.size,
            "segment_size": self.segment_size,
        }
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _manifest_error(message: str, member: str | None = None) -> ExportInvalid:
    metadata = {"file": _MANIFEST}
    if member is not None:
        metadata["member"] = member
    return ExportInvalid(f"{_MANIFEST}: {message}", field=member, metadata=metadata)


def _read_small(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(_MAX_SMALL_FILE + 1)
    if len(data) > _MAX_SMALL_FILE:
        raise ExportInvalid(f"{path.name} is larger than {_MAX_SMALL_FILE} bytes", metadata={"file": path.name})
    return data


def _read_manifest(directory: Path) -> _Manifest:
    path = directory / _MANIFEST
    try:
        data = _read_small(path)
    except FileNotFoundError as exc:
        raise ExportInvalid(
            f"{directory} holds no {_MANIFEST}: it is not an audit export (or its first export did not finish)",
            metadata={"file": _MANIFEST},
        ) from exc
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _manifest_error(f"not UTF-8 JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise _manifest_error("not a JSON object")

    def member(name: str, kind: type) -> Any:
        if name not in obj:
            raise _manifest_error(f"member {name!r} is missing", name)
        value = obj[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _manifest_error(f"member {name!r} must be a JSON {'string' if kind is str else 'integer'}", name)
        return value

    if member("format", str) != EXPORT_FORMAT:
        raise _manifest_error(f"member 'format' is {obj['format']!r}, not {EXPORT_FORMAT!r}", "format")
    origin = member("origin", str)
    if not origin:
        raise _manifest_error("member 'origin' is empty", "origin")
    hash_name = member("hash", str)
    if hash_name not in _HASH_NAMES:
        raise _manifest_error(f"member 'hash' is {hash_name!r}, not one of {', '.join(_HASH_NAMES)}", "hash")
    verifier_key = member("verifier_key", str)
    try:
        parse_verifier_key(verifier_key)
    except KeyInvalid as exc:
        raise _manifest_error(f"member 'verifier_key' is not a verifier key ({exc.message})", "verifier_key") from exc
    size = member("size", int)
    if size < 0:
        raise _manifest_error("member 'size' is negative", "size")
    segment_size = member("segment_size", int)
    try:
        _check_segment_size(segment_size, where="")
    except ExportInvalid as exc:
        raise _manifest_error(f"member 'segment_size': {exc.message}", "segment_size") from exc
    return _Manifest(origin, hash_name, verifier_key, size, segment_size)


#: The mode of the directories of an export (files are 0600: ``tempfile.mkstemp`` creates them so).
_EXPORT_DIR_MODE = 0o700


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) through a synced hidden temporary file and a rename."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _sync_directory(path: Path) -> None:
    # Renames are durable only once the directory itself is synced (POSIX; not possible on Windows).
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Export


def export_log(source: AuditSource, directory: Path, *, segment_size: int = 65536) -> ExportSummary:
    """Export ``source`` into ``directory``, keeping the full segments an earlier export left there.

    The export holds the first ``source.tree_size()`` entries (read once, at the start) and every
    checkpoint of at most that size. Refuses a directory that holds another log's export, or one
    with another hash, verifier key or segment size (:class:`ExportInvalid`); refuses, before
    overwriting anything, a source that contradicts the archive (:class:`LogInconsistent`): fewer
    entries than already archived (rolled back), another root for an archived checkpoint's size,
    or entries that do not extend the archived partial segment (rewritten).
    """
    _check_segment_size(segment_size, where="")
    bulk = _bulk_hash(source.hash_name)
    size = source.tree_size()
    # The log names who asked about whom (as person keys): the export is the owner's only, like the
    # database it comes from. Files are written 0600 (mkstemp); new directories are made 0700.
    directory.mkdir(mode=_EXPORT_DIR_MODE, parents=True, exist_ok=True)
    previous_size = _previous_export_size(directory, source, segment_size, size)
    for sub in (_ENTRIES, _LEAVES, _CHECKPOINTS):
        (directory / sub).mkdir(mode=_EXPORT_DIR_MODE, exist_ok=True)

    # The checkpoints are read, and checked against those already archived, before any segment
    # is (re)written: a source that contradicts the archive must not overwrite any of it.
    checkpoints = 0
    notes: list[tuple[Checkpoint, str]] = []
    for note in source.checkpoints():
        # Copied, not judged (signatures unchecked): verifying is the auditor's job, with a key they trust.
        checkpoint = parse_checkpoint(note, hash_size=bulk.size)
        if checkpoint.size > size:
            continue
        checkpoints += 1
        if _checkpoint_to_write(directory, note, checkpoint, bulk.size):
            notes.append((checkpoint, note))

    written = kept = 0
    for start in range(0, size, segment_size):
        end = min(start + segment_size, size)
        entries_path = directory / _entries_file(start)
        leaves_path = directory / _leaves_file(start)
        if end - start == segment_size and end <= previous_size and entries_path.exists() and leaves_path.exists():
            kept += 1
            continue
        entries_blob, leaves_blob = _read_segment(source, start, end, bulk.size)
        if start < previous_size:
            _check_extends(leaves_path, leaves_blob, start, bulk.size)
        _write_atomic(entries_path, gzip.compress(entries_blob, compresslevel=1, mtime=0))
        _write_atomic(leaves_path, leaves_blob)
        written += 1

    for checkpoint, note in notes:
        _write_atomic(directory / _checkpoint_file(checkpoint.size), note.encode("utf-8"))

    binding = source.key_binding()
    if binding is not None:
        binding_path = directory / _KEY_BINDING
        if not binding_path.exists() or binding_path.read_bytes() != binding:
            _write_atomic(binding_path, binding)

    for sub in (_ENTRIES, _LEAVES, _CHECKPOINTS):
        _sync_directory(directory / sub)
    manifest = _Manifest(source.origin, source.hash_name, source.verifier_key, size, segment_size)
    _write_atomic(directory / _MANIFEST, manifest.to_json())
    _sync_directory(directory)
    return ExportSummary(size, written, kept, checkpoints, directory)


def _previous_export_size(directory: Path, source: AuditSource, segment_size: int, size: int) -> int:
    """The size of the export already in ``directory`` (0 if none), once it is known to be this log's."""
    if not (directory / _MANIFEST).exists():
        return 0
    previous = _read_manifest(directory)
    for what, theirs, ours in (
        ("log", previous.origin, source.origin),
        ("hash", previous.hash_name, source.hash_name),
        ("verifier key", previous.verifier_key, source.verifier_key),
        ("segment size", str(previous.segment_size), str(segment_size)),
    ):
        if theirs != ours:
            raise ExportInvalid(
                f"{directory} holds an export with {what} {theirs}, not {ours}: export to another directory",
                field="directory",
                metadata={"directory": str(directory), "exported": theirs, "requested": ours},
            )
    if previous.size > size:
        raise LogInconsistent(
            f"the log was rolled back: it holds {size} entries but {directory} already archives {previous.size}",
            metadata={"size": str(size), "exported_size": str(previous.size), "directory": str(directory)},
        )
    return previous.size


def _read_segment(source: AuditSource, start: int, end: int, hash_size: int) -> tuple[bytes, bytes]:
    entries: list[bytes] = []
    leaves: list[bytes] = []
    for entry, leaf in source.read_entries(start, end):
        if len(entries) == end - start:
            raise ExportInvalid(
                f"the source returned more than {end - start} entries for {start}..{end - 1}",
                metadata={"entry": str(end), "start": str(start), "end": str(end)},
            )
        entries.append(entry)
        leaves.append(leaf)
    if len(entries) != end - start:
        raise ExportInvalid(
            f"the source returned {len(entries)} entries for {start}..{end - 1}",
            metadata={"entry": str(start + len(entries)), "start": str(start), "end": str(end)},
        )
    entries_blob = b"\n".join(entries) + b"\n"
    if entries_blob.count(b"\n") != len(entries):
        position = next(i for i, entry in enumerate(entries) if b"\n" in entry)
        raise ExportInvalid(
            f"entry {start + position} contains a newline: it is not a canonical entry",
            metadata={"entry": str(start + position)},
        )
    if set(map(len, leaves)) != {hash_size}:
        position = next(i for i, leaf in enumerate(leaves) if len(leaf) != hash_size)
        raise ExportInvalid(
            f"the leaf hash of entry {start + position} is not {hash_size} bytes long",
            metadata={"entry": str(start + position)},
        )
    return entries_blob, b"".join(leaves)


def _checkpoint_to_write(directory: Path, note: str, checkpoint: Checkpoint, hash_size: int) -> bool:
    """Whether ``note`` is still to be written; raises if the archive holds another root for its size."""
    file = _checkpoint_file(checkpoint.size)
    try:
        archived = (directory / file).read_bytes()
    except FileNotFoundError:
        return True
    if archived == note.encode("utf-8"):
        return False
    try:
        previous: Checkpoint | None = parse_checkpoint(archived.decode("utf-8"), hash_size=hash_size)
    except (UnicodeDecodeError, CheckpointInvalid):
        previous = None
    if previous is None or (previous.size, previous.root_hash) != (checkpoint.size, checkpoint.root_hash):
        raise LogInconsistent(
            f"the log was rewritten: its checkpoint of size {checkpoint.size} states another root than the one"
            f" archived in {file}",
            metadata={"size": str(checkpoint.size), "file": file},
        )
    # Same size and root, other extensions or signatures: the archived note stays as it is.
    return False


def _check_extends(leaves_path: Path, leaves_blob: bytes, start: int, hash_size: int) -> None:
    """Refuse to overwrite a partial segment with entries that do not extend it."""
    try:
        archived = leaves_path.read_bytes()
    except FileNotFoundError:
        return
    if leaves_blob.startswith(archived):
        return
    differ = next(
        (
            i
            for i in range(0, min(len(archived), len(leaves_blob)), hash_size)
            if archived[i : i + hash_size] != leaves_blob[i : i + hash_size]
        ),
        min(len(archived), len(leaves_blob)),
    )
    entry = start + differ // hash_size
    file = _leaves_file(start)
    raise LogInconsistent(
        f"the log was rewritten: entry {entry} differs from the one archived in {file}",
        metadata={"entry": str(entry), "file": file},
    )


# --------------------------------------------------------------------------------------------
# Verification


def verify_export(
    directory: Path,
    verifier: NoteVerifier,
    *,
    known: Sequence[str] = (),
    check_entries: bool = False,
) -> VerifyReport:
    """Verify the export in ``directory`` offline against the checkpoint key ``verifier``.

    ``known`` are signed checkpoints of the same log obtained elsewhere (from a province node,
    an earlier audit); each must verify with ``verifier`` and agree with the export.
    ``check_entries`` also decodes every entry as a canonical :class:`AuditEntry`.
    See the module docstring for what is checked and how a failure is named.
    """
    manifest = _read_manifest(directory)
    bulk = _bulk_hash(manifest.hash_name)
    segments = _list_segments(directory, manifest)
    checkpoints = _read_checkpoints(directory, manifest, verifier, bulk.size)
    known_checkpoints = _read_known(known, manifest, verifier, bulk.size, checkpoints)
    run = _Verification(manifest, bulk, checkpoints, known_checkpoints, check_entries)
    run.check_size_zero()
    for start in segments:
        run.segment(directory, start, min(start + manifest.segment_size, manifest.size))
    run.finish()

    latest = checkpoints[-1][0] if checkpoints else None
    covered = max([c.size for c, _ in checkpoints] + [c.size for c in known_checkpoints] + [0])
    for number, checkpoint in enumerate(known_checkpoints, start=1):
        _check_known(number, checkpoint, run.roots[checkpoint.size], latest, manifest.size)
    return VerifyReport(
        origin=manifest.origin,
        hash_name=manifest.hash_name,
        size=manifest.size,
        checkpoints=len(checkpoints),
        known=len(known_checkpoints),
        latest=latest,
        uncovered=manifest.size - covered,
        root_hash=run.final_root,
    )


def _list_segments(directory: Path, manifest: _Manifest) -> list[int]:
    """The first indices of the segments, once both file sets are exactly the expected ones."""
    size, segment_size = manifest.size, manifest.segment_size
    count = -(-size // segment_size)
    for sub, suffix, file_of in ((_ENTRIES, _ENTRIES_SUFFIX, _entries_file), (_LEAVES, _LEAVES_SUFFIX, _leaves_file)):
        present: set[int] = set()
        for name in _names(directory / sub):
            stem = name.removesuffix(suffix)
            if stem == name or not _INDEX_NAME.fullmatch(stem):
                raise ExportInvalid(f"unexpected file {sub}/{name} in the export", metadata={"file": f"{sub}/{name}"})
            start = int(stem)
            if start % segment_size or start >= size:
                where = "beyond the log's size" if start >= size else "not at a segment boundary"
                raise ExportInvalid(
                    f"extra file {sub}/{name}: entry {start} is {where} (size {size}, segments of {segment_size})",
                    metadata={"file": f"{sub}/{name}", "entry": str(start), "size": str(size)},
                )
            present.add(start)
        if len(present) != count:
            missing = next(i * segment_size for i in range(count) if i * segment_size not in present)
            end = min(missing + segment_size, size) - 1
            raise ExportInvalid(
                f"{file_of(missing)} is missing: entries {missing}..{end} are not in the export",
                metadata={"file": file_of(missing), "entry": str(missing)},
            )
    return [i * segment_size for i in range(count)]


def read_export_entries(directory: Path) -> Iterator[tuple[int, bytes]]:
    """(index, entry bytes) of every entry of an export, in order, **unverified**: for display.

    Checks the layout (``log.json``, segment files) but not a hash or a signature; run
    :func:`verify_export` before relying on what it reads.
    """
    manifest = _read_manifest(directory)
    index = 0
    for start in _list_segments(directory, manifest):
        file = _entries_file(start)
        with gzip.open(directory / file, "rb") as entries:
            rest = b""
            while chunk := _read_gzip_chunk(entries, file, index):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield index, line
                    index += 1


def _read_gzip_chunk(handle: gzip.GzipFile, file: str, entry: int) -> bytes:
    """The next chunk of an entries file; a file that is not gzip (or is cut short) is an :class:`ExportInvalid`."""
    try:
        return handle.read(_READ_CHUNK)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ExportInvalid(
            f"entries file {file} is not a valid gzip file ({exc}): entries from {entry} on cannot be read",
            metadata={"file": file, "entry": str(entry)},
        ) from exc


def _names(path: Path) -> list[str]:
    """The visible file names in ``path`` (hidden ones are an interrupted export's temporaries)."""
    try:
        return sorted(entry.name for entry in os.scandir(path) if not entry.name.startswith("."))
    except FileNotFoundError:
        return []


def _read_note(path: Path, file: str) -> str:
    try:
        return _read_small(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointInvalid(f"checkpoint file {file} is not UTF-8 text", metadata={"file": file}) from exc


def _annotated(exc: CheckpointInvalid, where: str, metadata: dict[str, str]) -> CheckpointInvalid:
    """``exc`` (same class and reason) with a message that says which checkpoint it is about."""
    return type(exc)(
        f"{where}: {exc.message}",
        reason=exc.reason,
        field=exc.field,
        metadata={**exc.metadata, **metadata},
    )


def _read_checkpoints(
    directory: Path, manifest: _Manifest, verifier: NoteVerifier, hash_size: int
) -> list[tuple[Checkpoint, str]]:
    """Every checkpoint file, signature verified, by ascending size, with its file name."""
    checkpoints: list[tuple[Checkpoint, str]] = []
    for name in _names(directory / _CHECKPOINTS):
        file = f"{_CHECKPOINTS}/{name}"
        stem = name.removesuffix(_NOTE_SUFFIX)
        if stem == name or not _INDEX_NAME.fullmatch(stem):
            raise ExportInvalid(f"unexpected file {file} in the export", metadata={"file": file})
        note = _read_note(directory / _CHECKPOINTS / name, file)
        try:
            checkpoint = verify_checkpoint(
                note, verifier.name, verifier.public_key, origin=manifest.origin, hash_size=hash_size
            )
        except CheckpointInvalid as exc:
            raise _annotated(exc, f"checkpoint file {file}", {"file": file}) from exc
        if checkpoint.size != int(stem):
            raise ExportInvalid(
                f"checkpoint file {file} holds the checkpoint of size {checkpoint.size}: it was renamed",
                metadata={"file": file, "size": str(checkpoint.size)},
            )
        if checkpoint.size > manifest.size:
            raise ExportInvalid(
                f"checkpoint file {file} is signed for {checkpoint.size} entries but the export holds"
                f" {manifest.size}: its tail from entry {manifest.size} was cut off",
                metadata={"file": file, "entry": str(manifest.size), "size": str(manifest.size)},
            )
        checkpoints.append((checkpoint, file))
    return checkpoints


def _read_known(
    known: Sequence[str],
    manifest: _Manifest,
    verifier: NoteVerifier,
    hash_size: int,
    checkpoints: list[tuple[Checkpoint, str]],
) -> list[Checkpoint]:
    latest = checkpoints[-1][0].size if checkpoints else 0
    result: list[Checkpoint] = []
    for number, note in enumerate(known, start=1):
        try:
            checkpoint = verify_checkpoint(
                note, verifier.name, verifier.public_key, origin=manifest.origin, hash_size=hash_size
            )
        except CheckpointInvalid as exc:
            raise _annotated(exc, f"known checkpoint {number}", {"known": str(number)}) from exc
        if checkpoint.size > manifest.size:
            raise LogInconsistent(
                f"the log was rolled back: known checkpoint {number} is signed for {checkpoint.size} entries,"
                f" but the export holds {manifest.size} and its latest checkpoint is of size {latest}",
                metadata={
                    "known": str(number),
                    "known_size": str(checkpoint.size),
                    "size": str(manifest.size),
                    "latest_size": str(latest),
                },
            )
        result.append(checkpoint)
    return result


def _check_known(number: int, checkpoint: Checkpoint, root: bytes, latest: Checkpoint | None, size: int) -> None:
    if checkpoint.root_hash == root:
        return
    metadata = {"known": str(number), "known_size": str(checkpoint.size), "size": str(size)}
    if latest is not None and checkpoint.size <= latest.size:
        # The export's entries up to here are proved by its own signed checkpoint: two signed
        # roots for one prefix of the log.
        raise LogInconsistent(
            f"the log forked: known checkpoint {number} signs another root for size {checkpoint.size} than"
            " the entries the export's checkpoints prove",
            metadata=metadata,
        )
    covered = latest.size if latest is not None else 0
    raise ExportInvalid(
        f"entries {covered}..{checkpoint.size - 1}, which no checkpoint in the export signs, do not"
        f" reproduce the root of known checkpoint {number}, of size {checkpoint.size}",
        metadata={**metadata, "entry": str(covered)},
    )


class _Verification:
    """The streaming state of one :func:`verify_export`: trees, the next checkpoint, the first disagreement."""

    def __init__(
        self,
        manifest: _Manifest,
        bulk: _BulkHash,
        checkpoints: list[tuple[Checkpoint, str]],
        known: list[Checkpoint],
        check_entries: bool,
    ) -> None:
        self.manifest = manifest
        self.bulk = bulk
        self.check_entries = check_entries
        self.signed = {checkpoint.size: (checkpoint, file) for checkpoint, file in checkpoints}
        self.known_sizes = {checkpoint.size for checkpoint in known}
        #: Sizes at which a root is needed, ascending; ``next_stop`` indexes the next one.
        self.stops = sorted(self.signed.keys() | self.known_sizes)
        self.next_stop = 0
        #: The tree of the listed leaf hashes (what the checkpoints sign).
        self.listed = _CompactRange(bulk)
        #: The tree of the recomputed leaf hashes, only from the first disagreement on.
        self.recomputed: _CompactRange | None = None
        #: The first entry whose recomputed leaf hash differs from its listed one, where, and a hint.
        self.disagreement: tuple[int, str, str] | None = None
        #: The size of the last signed checkpoint the entries reproduced.
        self.last_match = 0
        #: Roots at the known checkpoints' sizes.
        self.roots: dict[int, bytes] = {}
        self.final_root = bulk.empty

    # Streaming --------------------------------------------------------------------------------

    def check_size_zero(self) -> None:
        """Checkpoints of the empty tree are checked before any entry is read."""
        if self.stops and self.stops[0] == 0:
            self._stop(0)

    def segment(self, directory: Path, start: int, end: int) -> None:
        """Read the segment of entries ``start .. end - 1`` and fold it in."""
        entries_file, leaves_file = _entries_file(start), _leaves_file(start)
        count = end - start
        hash_size = self.bulk.size
        leaves_path = directory / leaves_file
        leaves_bytes = leaves_path.stat().st_size
        if leaves_bytes != count * hash_size:
            listed_count = leaves_bytes // hash_size
            whole = "" if leaves_bytes % hash_size == 0 else f" and {leaves_bytes % hash_size} stray bytes"
            first = start + min(listed_count, count)
            self._segment_error(
                f"leaves file {leaves_file} lists {listed_count} leaf hashes{whole} but its segment holds {count}"
                f" entries ({start}..{end - 1}): the leaf list is wrong from entry {first}",
                leaves_file,
                first,
            )
        got = 0
        with gzip.open(directory / entries_file, "rb") as entries, leaves_path.open("rb") as leaves:
            rest = b""
            while True:
                chunk = self._read(entries, entries_file, start + got)
                if not chunk:
                    break
                lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
                rest = lines.pop()
                if len(rest) > _MAX_ENTRY_BYTES:
                    raise ExportInvalid(
                        f"entry {start + got + len(lines)} in {entries_file} is longer than {_MAX_ENTRY_BYTES}"
                        " bytes: not an audit entry",
                        metadata={"file": entries_file, "entry": str(start + got + len(lines))},
                    )
                extra = got + len(lines) > count
                if extra:
                    del lines[count - got :]
                if lines:
                    data = leaves.read(len(lines) * hash_size)
                    listed = [data[i : i + hash_size] for i in range(0, len(data), hash_size)]
                    self._fold(start + got, lines, listed, entries_file)
                    got += len(lines)
                if extra:
                    self._segment_error(
                        f"entries file {entries_file} holds more than the {count} entries of its segment"
                        f" ({start}..{end - 1}): entry {end} is one too many",
                        entries_file,
                        end,
                    )
        if rest:
            self._segment_error(
                f"entries file {entries_file} ends inside entry {start + got}: its line has no final newline",
                entries_file,
                start + got,
            )
        if got < count:
            holds = (
                f"the log holds {self.manifest.size}" if end == self.manifest.size else f"its segment runs to {end - 1}"
            )
            last = f"ends at entry {start + got - 1}" if got else "holds no entry"
            self._segment_error(
                f"entries file {entries_file} {last} but {holds} (missing from entry {start + got} on)",
                entries_file,
                start + got,
            )

    def _read(self, handle: gzip.GzipFile, file: str, entry: int) -> bytes:
        try:
            return _read_gzip_chunk(handle, file, entry)
        except ExportInvalid as exc:
            self._segment_error(exc.message, file, entry)

    def _fold(self, first: int, entries: list[bytes], listed: list[bytes], file: str) -> None:
        """Fold entries ``first ..`` into the trees, stopping at every checkpoint size among them."""
        recomputed = self.bulk.leaves(entries)
        position, total = 0, len(entries)
        while position < total:
            stop = self.stops[self.next_stop] if self.next_stop < len(self.stops) else None
            cut = total if stop is None else min(total, stop - first)
            whole = position == 0 and cut == total
            listed_part = listed if whole else listed[position:cut]
            recomputed_part = recomputed if whole else recomputed[position:cut]
            if self.recomputed is not None:
                self.listed.extend(listed_part)
                self.recomputed.extend(recomputed_part)
            elif recomputed_part == listed_part:
                self.listed.extend(listed_part)
                if self.check_entries:
                    self._decode(first + position, entries[position:cut], file)
            else:
                pairs = zip(recomputed_part, listed_part, strict=True)
                offset = next(i for i, (mine, theirs) in enumerate(pairs) if mine != theirs)
                index = first + position + offset
                self.listed.extend(listed_part[:offset])
                self.recomputed = self.listed.copy()
                self.listed.extend(listed_part[offset:])
                self.recomputed.extend(recomputed_part[offset:])
                self.disagreement = (
                    index,
                    file,
                    self._hint(entries[position + offset], position + offset, recomputed, listed, first),
                )
                if self._next_signed(index) is None:
                    self._disagreement_error(None)
            position = cut
            if stop is not None and first + position == stop:
                self._stop(stop)

    def _next_signed(self, index: int) -> int | None:
        return next((size for size in self.stops[self.next_stop :] if size > index and size in self.signed), None)

    def _hint(self, entry: bytes, position: int, recomputed: list[bytes], listed: list[bytes], first: int) -> str:
        """What else can be said of the entry at ``position`` in a batch, which does not hash to its listed leaf."""
        leaf = recomputed[position]
        if leaf in listed:
            other = first + listed.index(leaf)
            return f"; its bytes are those listed for entry {other}, so entries were deleted, inserted or reordered"
        for hash_name in _HASH_NAMES:
            if hash_name != self.manifest.hash_name and leaf_hash(entry, hash_function(hash_name)) == listed[position]:
                return f"; with {hash_name} it does hash to its listed leaf hash: {_MANIFEST} names the wrong hash"
        return ""

    def _decode(self, first: int, entries: list[bytes], file: str) -> None:
        for offset, data in enumerate(entries):
            try:
                AuditEntry.decode(data)
            except EntryInvalid as exc:
                index = first + offset
                raise ExportInvalid(
                    f"entry {index} in {file} is not a canonical audit entry: {exc.message}",
                    field=exc.field,
                    metadata={**exc.metadata, "entry": str(index), "file": file},
                ) from exc

    def _stop(self, size: int) -> None:
        """Compare the roots at ``size`` with the checkpoints of that size."""
        self.next_stop += 1
        root = self.listed.root()
        if size in self.known_sizes:
            self.roots[size] = root
        if size not in self.signed:
            return
        checkpoint, file = self.signed[size]
        if self.recomputed is not None:
            self._disagreement_error((checkpoint, file, root))
        if root != checkpoint.root_hash:
            first, last = self.last_match, size - 1
            exact = (
                f"entry {first} was altered" if first == last else f"the first altered entry lies in {first}..{last}"
            )
            raise ExportInvalid(
                f"checkpoint {file} does not match the entries: root differs at size {size}; every entry"
                f" hashes to its listed leaf hash (with {self.manifest.hash_name}, as {_MANIFEST} says), so entries and"
                f" leaf hashes were altered together: {exact}",
                metadata={
                    "file": file,
                    "size": str(size),
                    "entry": str(first),
                    "first_entry": str(first),
                    "last_entry": str(last),
                },
            )
        self.last_match = size

    def _disagreement_error(self, at: tuple[Checkpoint, str, bytes] | None) -> NoReturn:
        assert self.disagreement is not None
        assert self.recomputed is not None
        index, file, hint = self.disagreement
        metadata = {"entry": str(index), "file": file}
        if at is None:
            raise ExportInvalid(
                f"entry {index} in {file} does not hash to its listed leaf hash{hint}; no signed checkpoint"
                " covers it, so whether the entry or its leaf hash was altered cannot be told",
                metadata=metadata,
            )
        checkpoint, checkpoint_file, listed_root = at
        metadata["checkpoint"] = checkpoint_file
        if listed_root == checkpoint.root_hash:
            raise ExportInvalid(
                f"entry {index} in {file} does not hash to its listed leaf hash: it was edited, reordered or"
                f" replaced{hint} (the listed leaf hashes reproduce {checkpoint_file})",
                metadata=metadata,
            )
        leaves = _leaves_file(index - index % self.manifest.segment_size)
        if self.recomputed.root() == checkpoint.root_hash:
            raise ExportInvalid(
                f"the leaf hash listed for entry {index} in {leaves} was altered: the entries reproduce"
                f" {checkpoint_file}, the listed leaf hashes do not",
                metadata={**metadata, "file": leaves},
            )
        raise ExportInvalid(
            f"checkpoint {checkpoint_file} does not match the entries: root differs at size {checkpoint.size};"
            f" the first entry whose bytes differ from the listed leaves is entry {index} in {file}{hint}; neither the"
            f" entries nor the listed leaf hashes reproduce the signed root, so both were altered, from entry"
            f" {self.last_match} on at the earliest",
            metadata={**metadata, "size": str(checkpoint.size), "first_entry": str(self.last_match)},
        )

    def _segment_error(self, message: str, file: str, entry: int) -> NoReturn:
        if self.disagreement is not None:
            index, where, hint = self.disagreement
            message += f"; the first entry that does not hash to its listed leaf hash is entry {index} in {where}{hint}"
            entry = index
        raise ExportInvalid(message, metadata={"file": file, "entry": str(entry)})

    def finish(self) -> None:
        """After the last segment: a disagreement no checkpoint judged is still an error."""
        if self.recomputed is not None:
            self._disagreement_error(None)
        self.final_root = self.listed.root()
