"""Audit log export and offline verification: layout, incremental archival, and every way to tamper."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import archive
from gateway.audit.archive import EXPORT_FORMAT, export_log, hash_function, read_export_entries, verify_export
from gateway.audit.checkpoint import NoteVerifier, encode_verifier_key, parse_checkpoint, sign_checkpoint
from gateway.audit.entry import AuditEntry
from gateway.audit.errors import CheckpointInvalid, ExportInvalid, LogInconsistent, SignatureInvalid
from gateway.audit.merkle import leaf_hash, root_hash, sha256
from gateway.domain.protection import suite_hash

ORIGIN = "hub.mca.example/audit"
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
VERIFIER = NoteVerifier.of(ORIGIN, KEY.public_key())
BINDING = b'{"key": "binding", "certificate": "..."}'
T0 = 1_718_000_000_000_000


def _entry(index: int, *, purpose: str = "低保 eligibility review") -> bytes:
    return AuditEntry(
        time_us=T0 + index,
        request_id=f"req-{index}",
        caller="spiffe://hutong/node/440000",
        province="440000",
        subject="auditor-7",
        method="/hutong.v1.QueryService/LookupPersons",
        purpose=purpose,
        outcome="OK",
        counts={"returned": index % 5},
        person_keys=[f"{index:032x}"],
        payload_digest="ab" * 32,
    ).encode()


@dataclass
class MemoryLog:
    """An in-memory :class:`archive.AuditSource`: real entries, real leaf hashes, real signed checkpoints."""

    hash_name: str = "sha256"
    key: Ed25519PrivateKey = KEY
    origin: str = ORIGIN
    binding: bytes | None = BINDING
    entries: list[bytes] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    verifier_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.verifier_key = encode_verifier_key(ORIGIN, self.key.public_key())

    @property
    def leaves(self) -> list[bytes]:
        return [leaf_hash(entry, hash_function(self.hash_name)) for entry in self.entries]

    def append(self, count: int, *, sign_at: tuple[int, ...] = ()) -> MemoryLog:
        """Append ``count`` entries, signing a checkpoint whenever the size is in ``sign_at``."""
        for _ in range(count):
            self.entries.append(_entry(len(self.entries)))
            if len(self.entries) in sign_at:
                self.sign()
        return self

    def sign(self, size: int | None = None, *, key: Ed25519PrivateKey | None = None) -> str:
        size = len(self.entries) if size is None else size
        root = root_hash(self.leaves[:size], hash_function(self.hash_name))
        note = sign_checkpoint(ORIGIN, size, root, ORIGIN, key or self.key, time_us=T0 + size)
        self.notes[size] = note
        return note

    def tree_size(self) -> int:
        return len(self.entries)

    def read_entries(self, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        hash_fn = hash_function(self.hash_name)
        for entry in self.entries[start:end]:
            yield entry, leaf_hash(entry, hash_fn)

    def checkpoints(self) -> Iterator[str]:
        for size in sorted(self.notes):
            yield self.notes[size]

    def key_binding(self) -> bytes | None:
        return self.binding


def _name(index: int) -> str:
    return f"{index:020d}"


def _entries_path(directory: Path, start: int) -> Path:
    return directory / "entries" / f"{_name(start)}.jsonl.gz"


def _leaves_path(directory: Path, start: int) -> Path:
    return directory / "leaves" / f"{_name(start)}.bin"


def _note_path(directory: Path, size: int) -> Path:
    return directory / "checkpoints" / f"{_name(size)}.note"


def _lines(path: Path) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).split(b"\n")[:-1]


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))


def _standard_log(hash_name: str) -> MemoryLog:
    """32 entries, checkpoints at 5, 12, 20 and 32 (exported in segments of 8)."""
    return MemoryLog(hash_name).append(32, sign_at=(5, 12, 20, 32))


#: ``exported(hash_name="sha256")`` gives the standard log and a fresh copy of its export.
Exported = Callable[..., tuple[MemoryLog, Path]]


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("templates")


@pytest.fixture
def exported(tmp_path: Path, templates: Path) -> Exported:
    # Exported once per module and copied: each tamper test gets its own directory without
    # paying for another export's fsyncs.
    def make(hash_name: str = "sha256") -> tuple[MemoryLog, Path]:
        template = templates / hash_name
        if not template.exists():
            export_log(_standard_log(hash_name), template, segment_size=8)
        directory = tmp_path / "export"
        shutil.copytree(template, directory)
        return _standard_log(hash_name), directory

    return make


def _rejects(directory: Path, *, entry: int | None = None, file: str | None = None) -> ExportInvalid:
    with pytest.raises(ExportInvalid) as caught:
        verify_export(directory, VERIFIER)
    error = caught.value
    if entry is not None:
        assert error.metadata["entry"] == str(entry)
        assert f"entry {entry}" in error.message or f"entries {entry}.." in error.message
    if file is not None:
        assert error.metadata["file"] == file
        assert file in error.message
    return error


# Export and round trip ------------------------------------------------------------------------


def test_archive_public_names() -> None:
    assert set(archive.__all__) == {
        "EXPORT_FORMAT",
        "AuditSource",
        "ExportSummary",
        "VerifyReport",
        "export_log",
        "hash_function",
        "read_export_entries",
        "verify_export",
    }
    for name in archive.__all__:
        assert getattr(archive, name) is not None


@pytest.mark.parametrize("hash_name", ["sha256", "sm3"])
def test_export_writes_the_documented_layout_and_verifies(tmp_path: Path, hash_name: str) -> None:
    log = MemoryLog(hash_name).append(37, sign_at=(5, 16, 30, 37))
    directory = tmp_path / "export"
    summary = export_log(log, directory, segment_size=8)
    assert (summary.size, summary.segments_written, summary.segments_kept, summary.checkpoints) == (37, 5, 0, 4)
    assert summary.directory == directory

    manifest = json.loads((directory / "log.json").read_text("utf-8"))
    assert manifest == {
        "format": EXPORT_FORMAT,
        "origin": ORIGIN,
        "hash": hash_name,
        "verifier_key": log.verifier_key,
        "size": 37,
        "segment_size": 8,
    }
    starts = [0, 8, 16, 24, 32]
    assert sorted(p.name for p in (directory / "entries").iterdir()) == [f"{_name(s)}.jsonl.gz" for s in starts]
    assert sorted(p.name for p in (directory / "leaves").iterdir()) == [f"{_name(s)}.bin" for s in starts]
    assert sorted(p.name for p in (directory / "checkpoints").iterdir()) == [
        f"{_name(s)}.note" for s in (5, 16, 30, 37)
    ]
    assert _lines(_entries_path(directory, 8)) == log.entries[8:16]
    assert _leaves_path(directory, 32).read_bytes() == b"".join(log.leaves[32:])
    assert _note_path(directory, 16).read_text("utf-8") == log.notes[16]
    assert (directory / "key-binding.json").read_bytes() == BINDING
    assert not [p for p in directory.rglob(".*")], "no temporary file is left behind"

    report = verify_export(directory, VERIFIER, check_entries=True)
    assert (report.origin, report.hash_name, report.size, report.checkpoints) == (ORIGIN, hash_name, 37, 4)
    assert report.latest is not None
    assert report.latest.size == 37
    assert report.latest.time_us == T0 + 37
    assert report.uncovered == 0
    assert report.root_hash == root_hash(log.leaves, hash_function(hash_name))


def test_an_export_is_the_owners_only_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        export_log(MemoryLog("sha256").append(9, sign_at=(9,)), tmp_path / "export", segment_size=8)
    finally:
        os.umask(previous)
    directory = tmp_path / "export"
    files = [p for p in directory.rglob("*") if p.is_file()]
    directories = [directory, *(p for p in directory.rglob("*") if p.is_dir())]
    assert len(files) == 7  # log.json, the binding, 2 entries, 2 leaves and 1 checkpoint file
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
    assert {stat.S_IMODE(p.stat().st_mode) for p in directories} == {0o700}


def test_report_counts_entries_no_checkpoint_signs_yet(tmp_path: Path) -> None:
    log = MemoryLog().append(37, sign_at=(10,))
    known_20 = log.sign(20)
    del log.notes[20]
    export_log(log, tmp_path, segment_size=8)

    report = verify_export(tmp_path, VERIFIER)
    assert report.uncovered == 27
    assert report.latest is not None
    assert report.latest.size == 10

    report = verify_export(tmp_path, VERIFIER, known=[known_20])
    assert (report.known, report.uncovered) == (1, 17)


def test_export_without_checkpoints_or_binding_verifies_as_wholly_uncovered(tmp_path: Path) -> None:
    log = MemoryLog(binding=None).append(5)
    export_log(log, tmp_path, segment_size=4)
    assert not (tmp_path / "key-binding.json").exists()
    report = verify_export(tmp_path, VERIFIER)
    assert (report.checkpoints, report.latest, report.uncovered) == (0, None, 5)


def test_empty_log_exports_and_verifies(tmp_path: Path) -> None:
    log = MemoryLog()
    log.sign(0)
    summary = export_log(log, tmp_path)
    assert (summary.size, summary.segments_written, summary.checkpoints) == (0, 0, 1)
    report = verify_export(tmp_path, VERIFIER)
    assert (report.size, report.checkpoints, report.root_hash) == (0, 1, sha256(b""))


@pytest.mark.parametrize("segment_size", [1, 4, 64])
def test_checkpoints_at_every_size_verify_whatever_the_segment_and_read_chunk(
    tmp_path: Path, segment_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny read chunks split entries across reads and every checkpoint cuts a batch.
    monkeypatch.setattr(archive, "_READ_CHUNK", 97)
    log = MemoryLog()
    log.sign(0)
    log.append(27, sign_at=tuple(range(1, 28)))
    export_log(log, tmp_path, segment_size=segment_size)
    report = verify_export(tmp_path, VERIFIER)
    assert report.checkpoints == 28
    assert report.root_hash == root_hash(log.leaves)


def test_checkpoints_beyond_the_export_size_are_not_exported(tmp_path: Path) -> None:
    class Racing(MemoryLog):
        """A log whose checkpoints run ahead of the size the export read (an append in between)."""

        def tree_size(self) -> int:
            return 12

    log = Racing().append(20, sign_at=(8, 12, 16, 20))
    summary = export_log(log, tmp_path, segment_size=8)
    assert (summary.size, summary.checkpoints) == (12, 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"{_name(8)}.note", f"{_name(12)}.note"]
    assert verify_export(tmp_path, VERIFIER).size == 12


def test_hash_function_maps_names_to_the_suites() -> None:
    assert hash_function("sha256") is sha256
    assert hash_function("sm3")(b"abc") == suite_hash("sm")(b"abc")
    with pytest.raises(ExportInvalid) as caught:
        hash_function("md5")
    assert caught.value.field == "hash"


# Incremental export ---------------------------------------------------------------------------


def _stamp(path: Path) -> tuple[int, int, bytes]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


def test_reexport_keeps_full_segments_and_writes_only_the_new_tail(tmp_path: Path) -> None:
    log = MemoryLog().append(20, sign_at=(10, 20))
    export_log(log, tmp_path, segment_size=8)
    kept = [p(tmp_path, s) for s in (0, 8) for p in (_entries_path, _leaves_path)]
    before = [_stamp(path) for path in kept]
    partial_before = _lines(_entries_path(tmp_path, 16))
    note_before = _stamp(_note_path(tmp_path, 10))

    log.append(17, sign_at=(30, 37))
    summary = export_log(log, tmp_path, segment_size=8)

    assert (summary.size, summary.segments_kept, summary.segments_written, summary.checkpoints) == (37, 2, 3, 4)
    assert [_stamp(path) for path in kept] == before
    assert _stamp(_note_path(tmp_path, 10)) == note_before
    assert len(partial_before) == 4
    assert _lines(_entries_path(tmp_path, 16)) == log.entries[16:24], "the once-partial segment is completed"
    assert _lines(_entries_path(tmp_path, 32)) == log.entries[32:37]
    report = verify_export(tmp_path, VERIFIER)
    assert (report.size, report.checkpoints, report.uncovered) == (37, 4, 0)


def test_reexport_of_an_unchanged_log_rewrites_only_the_partial_segment(tmp_path: Path) -> None:
    log = MemoryLog().append(20, sign_at=(20,))
    export_log(log, tmp_path, segment_size=8)
    summary = export_log(log, tmp_path, segment_size=8)
    assert (summary.segments_kept, summary.segments_written) == (2, 1)
    verify_export(tmp_path, VERIFIER)


@pytest.mark.parametrize("segment_size", [0, 3, 12, -8])
def test_export_refuses_a_segment_size_that_is_not_a_power_of_two(tmp_path: Path, segment_size: int) -> None:
    with pytest.raises(ExportInvalid) as caught:
        export_log(MemoryLog().append(3), tmp_path, segment_size=segment_size)
    assert caught.value.field == "segment_size"


def test_export_refuses_a_directory_holding_another_log_or_layout(tmp_path: Path) -> None:
    export_log(MemoryLog().append(3), tmp_path, segment_size=4)
    other = MemoryLog(origin="hub.other.example/audit").append(3)
    with pytest.raises(ExportInvalid, match=re.escape("hub.other.example/audit")):
        export_log(other, tmp_path, segment_size=4)
    with pytest.raises(ExportInvalid, match="segment size 4, not 8"):
        export_log(MemoryLog().append(3), tmp_path, segment_size=8)


def test_export_refuses_a_log_with_fewer_entries_than_archived(tmp_path: Path) -> None:
    export_log(MemoryLog().append(9), tmp_path, segment_size=4)
    with pytest.raises(LogInconsistent, match="rolled back"):
        export_log(MemoryLog().append(5), tmp_path, segment_size=4)


def test_export_refuses_a_checkpoint_that_contradicts_the_archived_one(tmp_path: Path) -> None:
    log = MemoryLog().append(8, sign_at=(8,))
    export_log(log, tmp_path, segment_size=4)
    forked = MemoryLog()
    forked.entries = [_entry(0, purpose="other"), *log.entries[1:]]
    forked.sign()
    with pytest.raises(LogInconsistent, match="rewritten"):
        export_log(forked, tmp_path, segment_size=4)


def test_export_refuses_to_overwrite_a_partial_segment_with_a_rewritten_history(tmp_path: Path) -> None:
    log = MemoryLog().append(20)
    export_log(log, tmp_path, segment_size=8)
    partial = _stamp(_entries_path(tmp_path, 16))
    log.entries[17] = _entry(17, purpose="rewritten")
    log.append(5)
    with pytest.raises(LogInconsistent, match="entry 17 differs") as caught:
        export_log(log, tmp_path, segment_size=8)
    assert caught.value.metadata == {"entry": "17", "file": f"leaves/{_name(16)}.bin"}
    assert _stamp(_entries_path(tmp_path, 16)) == partial


def test_export_refuses_a_directory_of_another_checkpoint_key(tmp_path: Path) -> None:
    export_log(MemoryLog().append(3), tmp_path, segment_size=4)
    with pytest.raises(ExportInvalid, match="verifier key"):
        export_log(MemoryLog(key=OTHER_KEY).append(3), tmp_path, segment_size=4)


def test_sm3_without_openssl_falls_back_to_the_suite_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "_sm3_openssl", lambda: None)
    log = MemoryLog("sm3").append(13, sign_at=(6, 13))
    export_log(log, tmp_path, segment_size=4)
    report = verify_export(tmp_path, VERIFIER)
    assert report.root_hash == root_hash(log.leaves, suite_hash("sm"))


# Tampering with entries and leaves ------------------------------------------------------------


@pytest.mark.parametrize("hash_name", ["sha256", "sm3"])
def test_an_edited_entry_is_named(exported: Exported, hash_name: str) -> None:
    _, directory = exported(hash_name)
    path = _entries_path(directory, 8)
    lines = _lines(path)
    lines[5] = lines[5].replace(b"req-13", b"req-99")
    _write_lines(path, lines)
    error = _rejects(directory, entry=13, file=f"entries/{_name(8)}.jsonl.gz")
    assert "does not hash to its listed leaf hash: it was edited, reordered or replaced" in error.message


@pytest.mark.parametrize(
    ("segment", "detail"),
    [
        (8, "the listed leaf hashes reproduce checkpoints/00000000000000000012.note"),
        (24, "entries/00000000000000000024.jsonl.gz ends at entry 30 but the log holds 32"),
    ],
)
def test_a_deleted_entry_is_named(exported: Exported, segment: int, detail: str) -> None:
    _, directory = exported()
    path = _entries_path(directory, segment)
    lines = _lines(path)
    del lines[2]
    _write_lines(path, lines)
    error = _rejects(directory, entry=segment + 2)
    assert f"its bytes are those listed for entry {segment + 3}, so entries were deleted" in error.message
    assert detail in error.message


def test_reordered_entries_are_named(exported: Exported) -> None:
    _, directory = exported()
    path = _entries_path(directory, 16)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(path, lines)
    error = _rejects(directory, entry=17, file=f"entries/{_name(16)}.jsonl.gz")
    assert "listed for entry 18" in error.message


def test_a_truncated_entries_file_is_named(exported: Exported) -> None:
    _, directory = exported()
    path = _entries_path(directory, 24)
    _write_lines(path, _lines(path)[:-3])
    error = _rejects(directory, entry=29, file=f"entries/{_name(24)}.jsonl.gz")
    assert "ends at entry 28 but the log holds 32 (missing from entry 29 on)" in error.message


def test_a_tail_cut_consistently_is_named_by_the_checkpoint_beyond_it(exported: Exported) -> None:
    log, directory = exported()
    _write_lines(_entries_path(directory, 24), log.entries[24:29])
    _leaves_path(directory, 24).write_bytes(b"".join(log.leaves[24:29]))
    manifest = json.loads((directory / "log.json").read_text("utf-8"))
    (directory / "log.json").write_text(json.dumps({**manifest, "size": 29}), "utf-8")
    error = _rejects(directory, entry=29, file=f"checkpoints/{_name(32)}.note")
    assert "cut off" in error.message


def test_an_entry_cut_mid_line_is_named(exported: Exported) -> None:
    _, directory = exported()
    path = _entries_path(directory, 24)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    _rejects(directory, entry=31, file=f"entries/{_name(24)}.jsonl.gz")


@pytest.mark.parametrize(
    ("segment", "position", "detail"),
    [
        (0, 3, "the listed leaf hashes reproduce checkpoints/00000000000000000005.note"),
        (24, 8, "holds more than the 8 entries of its segment (24..31): entry 32 is one too many"),
    ],
)
def test_an_inserted_entry_is_named(exported: Exported, segment: int, position: int, detail: str) -> None:
    _, directory = exported()
    path = _entries_path(directory, segment)
    lines = _lines(path)
    lines.insert(position, _entry(99))
    _write_lines(path, lines)
    error = _rejects(directory, entry=segment + position)
    assert detail in error.message


def test_an_edited_leaf_list_is_named_when_the_entries_still_reproduce_the_roots(exported: Exported) -> None:
    _, directory = exported()
    path = _leaves_path(directory, 16)
    data = bytearray(path.read_bytes())
    data[5 * 32] ^= 1
    path.write_bytes(bytes(data))
    error = _rejects(directory, entry=21, file=f"leaves/{_name(16)}.bin")
    assert "leaf hash listed for entry 21" in error.message


def test_an_entry_edited_with_its_leaf_names_the_checkpoint_and_the_range(exported: Exported) -> None:
    log, directory = exported()
    edited = _entry(21, purpose="forged")
    lines = _lines(_entries_path(directory, 16))
    lines[5] = edited
    _write_lines(_entries_path(directory, 16), lines)
    leaves = log.leaves
    leaves[21] = leaf_hash(edited)
    _leaves_path(directory, 16).write_bytes(b"".join(leaves[16:24]))

    error = _rejects(directory, file=f"checkpoints/{_name(32)}.note")
    assert "root differs at size 32" in error.message
    assert "the first altered entry lies in 20..31" in error.message
    assert (error.metadata["first_entry"], error.metadata["last_entry"]) == ("20", "31")


def test_entries_and_leaves_altered_differently_name_the_first_disagreement(exported: Exported) -> None:
    _, directory = exported()
    lines = _lines(_entries_path(directory, 16))
    lines[5] = _entry(21, purpose="forged")
    _write_lines(_entries_path(directory, 16), lines)
    data = bytearray(_leaves_path(directory, 16).read_bytes())
    data[7 * 32] ^= 1
    _leaves_path(directory, 16).write_bytes(bytes(data))

    error = _rejects(directory, entry=21)
    assert f"checkpoints/{_name(32)}.note does not match the entries: root differs at size 32" in error.message
    assert "the first entry whose bytes differ from the listed leaves is entry 21" in error.message


def test_an_edit_beyond_every_checkpoint_is_still_named(tmp_path: Path) -> None:
    log = MemoryLog().append(12, sign_at=(8,))
    export_log(log, tmp_path, segment_size=4)
    path = _entries_path(tmp_path, 8)
    lines = _lines(path)
    lines[2] = _entry(10, purpose="forged")
    _write_lines(path, lines)
    error = _rejects(tmp_path, entry=10)
    assert "no signed checkpoint covers it" in error.message


# Tampering with files -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["entries", "leaves"])
def test_a_missing_segment_file_is_named(exported: Exported, kind: str) -> None:
    _, directory = exported()
    path = _entries_path(directory, 16) if kind == "entries" else _leaves_path(directory, 16)
    path.unlink()
    error = _rejects(directory, entry=16, file=f"{kind}/{path.name}")
    assert "is missing: entries 16..23" in error.message


def test_an_extra_segment_file_is_named(exported: Exported) -> None:
    _, directory = exported()
    _write_lines(_entries_path(directory, 32), [_entry(32)])
    _rejects(directory, entry=32, file=f"entries/{_name(32)}.jsonl.gz")


def test_a_misaligned_segment_file_is_named(exported: Exported) -> None:
    _, directory = exported()
    _leaves_path(directory, 8).rename(_leaves_path(directory, 9))
    _rejects(directory, file=f"leaves/{_name(9)}.bin")


def test_a_leaves_file_of_the_wrong_length_is_named(exported: Exported) -> None:
    _, directory = exported()
    path = _leaves_path(directory, 8)
    path.write_bytes(path.read_bytes()[:-40])
    _rejects(directory, entry=14, file=f"leaves/{_name(8)}.bin")


def test_a_corrupt_gzip_file_is_named(exported: Exported) -> None:
    _, directory = exported()
    path = _entries_path(directory, 8)
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC-32 trailer
    path.write_bytes(bytes(data))
    error = _rejects(directory, file=f"entries/{_name(8)}.jsonl.gz")
    assert "not a valid gzip file" in error.message


def test_unexpected_files_are_refused_but_temporaries_ignored(exported: Exported) -> None:
    _, directory = exported()
    (directory / "entries" / ".00000000000000000040.jsonl.gz.x1.tmp").write_bytes(b"half")
    verify_export(directory, VERIFIER)
    (directory / "checkpoints" / "README").write_text("hello", "utf-8")
    _rejects(directory, file="checkpoints/README")


# Tampering with checkpoints -------------------------------------------------------------------


def test_a_forged_checkpoint_signature_is_named(exported: Exported) -> None:
    _, directory = exported()
    path = _note_path(directory, 12)
    text = path.read_text("utf-8")
    body, _, signature = text.rpartition(" ")
    flipped = "A" if signature[10] != "A" else "B"
    path.write_text(f"{body} {signature[:10]}{flipped}{signature[11:]}", "utf-8")
    with pytest.raises(SignatureInvalid) as caught:
        verify_export(directory, VERIFIER)
    assert f"checkpoints/{_name(12)}.note" in caught.value.message
    assert caught.value.metadata["file"] == f"checkpoints/{_name(12)}.note"


def test_a_checkpoint_with_an_edited_root_fails_its_signature(exported: Exported) -> None:
    log, directory = exported()
    path = _note_path(directory, 20)
    checkpoint = parse_checkpoint(log.notes[20])
    other_root = parse_checkpoint(log.notes[12]).root_hash
    text = path.read_text("utf-8")
    path.write_text(text.replace(checkpoint.body().split("\n")[2], checkpoint.body().split("\n")[2][:-4] + "AAA="))
    assert other_root != checkpoint.root_hash
    with pytest.raises(SignatureInvalid, match=f"checkpoints/{_name(20)}.note"):
        verify_export(directory, VERIFIER)


def test_a_checkpoint_signed_by_another_key_is_named(exported: Exported) -> None:
    log, directory = exported()
    _note_path(directory, 20).write_text(log.sign(20, key=OTHER_KEY), "utf-8")
    with pytest.raises(SignatureInvalid) as caught:
        verify_export(directory, VERIFIER)
    assert f"checkpoints/{_name(20)}.note" in caught.value.message
    assert "different key" in caught.value.message


def test_an_export_checked_against_another_key_fails(exported: Exported) -> None:
    _, directory = exported()
    with pytest.raises(SignatureInvalid, match=f"checkpoints/{_name(5)}.note"):
        verify_export(directory, NoteVerifier.of(ORIGIN, OTHER_KEY.public_key()))


def test_a_renamed_checkpoint_file_is_named(exported: Exported) -> None:
    _, directory = exported()
    _note_path(directory, 12).rename(_note_path(directory, 13))
    error = _rejects(directory, file=f"checkpoints/{_name(13)}.note")
    assert "size 12" in error.message


def test_a_changed_origin_in_log_json_fails_every_checkpoint(exported: Exported) -> None:
    _, directory = exported()
    manifest = json.loads((directory / "log.json").read_text("utf-8"))
    (directory / "log.json").write_text(json.dumps({**manifest, "origin": "evil.example/audit"}), "utf-8")
    with pytest.raises(CheckpointInvalid, match=f"checkpoints/{_name(5)}.note"):
        verify_export(directory, VERIFIER)


# Rollback and fork, seen through checkpoints known from elsewhere ------------------------------


def test_a_rolled_back_export_verifies_alone_but_not_against_a_newer_known_checkpoint(tmp_path: Path) -> None:
    log = MemoryLog().append(20, sign_at=(12, 20))
    export_log(log, tmp_path, segment_size=8)
    log.append(12)
    newer = log.sign(32)

    assert verify_export(tmp_path, VERIFIER).size == 20
    with pytest.raises(LogInconsistent) as caught:
        verify_export(tmp_path, VERIFIER, known=[log.notes[12], newer])
    assert caught.value.message.startswith("the log was rolled back: known checkpoint 2 is signed for 32 entries")
    assert caught.value.metadata["known_size"] == "32"


@pytest.mark.parametrize("size", [20, 15])
def test_a_known_checkpoint_with_another_root_is_a_fork(exported: Exported, size: int) -> None:
    _, directory = exported()
    fork = MemoryLog()
    fork.entries = [_entry(i, purpose="another history") for i in range(size)]
    with pytest.raises(LogInconsistent, match=f"forked: known checkpoint 1 signs another root for size {size}"):
        verify_export(directory, VERIFIER, known=[fork.sign()])


def test_a_known_checkpoint_disagreeing_with_unsigned_entries_names_them(tmp_path: Path) -> None:
    log = MemoryLog().append(20, sign_at=(8,))
    export_log(log, tmp_path, segment_size=8)
    fork = MemoryLog()
    fork.entries = [*log.entries[:15], _entry(15, purpose="another history")]
    error_known = fork.sign()
    with pytest.raises(ExportInvalid, match=re.escape("entries 8..15, which no checkpoint in the export signs")):
        verify_export(tmp_path, VERIFIER, known=[error_known])


def test_a_known_checkpoint_must_verify(exported: Exported) -> None:
    log, directory = exported()
    with pytest.raises(SignatureInvalid, match="known checkpoint 1"):
        verify_export(directory, VERIFIER, known=[log.sign(20, key=OTHER_KEY)])


# log.json --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"size": None}, "'size' is missing"),
        ({"size": "32"}, "'size' must be a JSON integer"),
        ({"size": -1}, "'size' is negative"),
        ({"format": "hutong-audit-export/9"}, "'format'"),
        ({"hash": "md5"}, "'hash'"),
        ({"segment_size": 6}, "segment size 6 is not a power of two"),
        ({"origin": None}, "'origin' is missing"),
        ({"verifier_key": "nope"}, "'verifier_key' is not a verifier key"),
    ],
)
def test_log_json_errors_name_the_member(exported: Exported, change: dict[str, object], named: str) -> None:
    _, directory = exported()
    manifest = json.loads((directory / "log.json").read_text("utf-8"))
    manifest.update(change)
    manifest = {key: value for key, value in manifest.items() if value is not None}
    (directory / "log.json").write_text(json.dumps(manifest), "utf-8")
    with pytest.raises(ExportInvalid, match=named) as caught:
        verify_export(directory, VERIFIER)
    assert caught.value.metadata["file"] == "log.json"


def test_a_wrong_hash_in_log_json_is_pointed_out(exported: Exported) -> None:
    _, directory = exported()
    manifest = json.loads((directory / "log.json").read_text("utf-8"))
    (directory / "log.json").write_text(json.dumps({**manifest, "hash": "sm3"}), "utf-8")
    error = _rejects(directory, entry=0)
    assert "with sha256 it does hash to its listed leaf hash: log.json names the wrong hash" in error.message


def test_a_directory_without_log_json_is_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(ExportInvalid, match=re.escape("holds no log.json")):
        verify_export(tmp_path, VERIFIER)
    (tmp_path / "log.json").write_text("{not json", "utf-8")
    with pytest.raises(ExportInvalid, match=re.escape("log.json: not UTF-8 JSON")):
        verify_export(tmp_path, VERIFIER)


# Canonical entries -----------------------------------------------------------------------------


def test_check_entries_names_a_non_canonical_entry_the_hub_signed(tmp_path: Path) -> None:
    log = MemoryLog().append(12)
    obj = json.loads(log.entries[6])
    # \u-escaped Chinese: valid JSON of the same entry, but not its canonical bytes.
    log.entries[6] = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert AuditEntry.decode(_entry(6)).encode() != log.entries[6]
    log.sign()
    export_log(log, tmp_path, segment_size=4)

    assert verify_export(tmp_path, VERIFIER).checkpoints == 1
    with pytest.raises(ExportInvalid) as caught:
        verify_export(tmp_path, VERIFIER, check_entries=True)
    assert caught.value.metadata["entry"] == "6"
    assert "entry 6" in caught.value.message
    assert "not in canonical form" in caught.value.message


def test_read_export_entries_yields_every_entry_in_order(exported: Exported) -> None:
    log, directory = exported()
    read = list(read_export_entries(directory))
    assert [index for index, _ in read] == list(range(len(log.entries)))
    assert [data for _, data in read] == log.entries


@pytest.mark.parametrize(
    "damage",
    [lambda data: b"not gzip at all", lambda data: data[: len(data) // 2]],
    ids=["not-gzip", "cut-short"],
)
def test_read_export_entries_refuses_an_entries_file_that_is_not_gzip_naming_the_file(
    exported: Exported, damage: Callable[[bytes], bytes]
) -> None:
    _, directory = exported()
    path = _entries_path(directory, 8)
    path.write_bytes(damage(path.read_bytes()))

    with pytest.raises(ExportInvalid) as caught:
        list(read_export_entries(directory))

    assert caught.value.metadata["file"] == f"entries/{path.name}"
    assert caught.value.metadata["entry"] == "8"
    assert "not a valid gzip file" in caught.value.message
