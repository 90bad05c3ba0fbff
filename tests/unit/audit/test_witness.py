"""A province node's checkpoint witness: trust on first use, then only provable growth of the log."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from gateway.audit.checkpoint import NoteVerifier, sign_checkpoint, verify_checkpoint
from gateway.audit.errors import CheckpointInvalid, LogInconsistent, SignatureInvalid
from gateway.audit.merkle import HashFn, MerkleAccumulator, consistency_proof, leaf_hash, sha256
from gateway.audit.witness import CheckpointWitness

ORIGIN = "hub.example.gov.cn/audit"
KEY_NAME = ORIGIN
HUB_KEY = Ed25519PrivateKey.generate()
VERIFIER = NoteVerifier.of(KEY_NAME, HUB_KEY.public_key())
#: The honest log's leaves, and a history that agrees with it for 3 entries and then diverges.
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(24)]
FORKED = LEAVES[:3] + [leaf_hash(f"rewritten {i}".encode()) for i in range(3, 24)]


def _root(leaves: list[bytes], size: int, hash_fn: HashFn = sha256) -> bytes:
    tree = MerkleAccumulator(hash_fn)
    tree.extend(leaves[:size])
    return tree.root()


def _note(
    size: int,
    *,
    time_us: int | None = None,
    leaves: list[bytes] = LEAVES,
    key: Ed25519PrivateKey = HUB_KEY,
    origin: str = ORIGIN,
    hash_fn: HashFn = sha256,
) -> str:
    """A checkpoint of the first ``size`` leaves; time defaults to the size so honest time moves forwards."""
    time_us = 1_700_000_000_000_000 + size if time_us is None else time_us
    return sign_checkpoint(origin, size, _root(leaves, size, hash_fn), KEY_NAME, key, time_us=time_us)


def _proof(old: int, new: int, leaves: list[bytes] = LEAVES) -> list[bytes]:
    return consistency_proof(leaves, old, new)


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    """Where the witness keeps its checkpoint (the directory does not exist yet)."""
    return tmp_path / "audit" / "checkpoint.note"


def _witness(state_file: Path) -> CheckpointWitness:
    return CheckpointWitness(state_file, VERIFIER, ORIGIN)


def _evidence(state_file: Path) -> list[Path]:
    return sorted(state_file.parent.glob(f"{state_file.name}.conflict-*.note"))


def test_the_first_checkpoint_is_trusted_on_first_use_and_kept_as_plain_note_text(state_file: Path) -> None:
    witness = _witness(state_file)
    assert witness.latest is None
    note = _note(5)
    checkpoint, needed = witness.pending(note)
    assert needed is None
    assert not state_file.exists()  # pending changes nothing
    with capture_logs() as logs:
        assert witness.accept(note) == checkpoint
    assert witness.latest == checkpoint
    assert witness.latest_note == note
    assert state_file.read_text(encoding="utf-8") == note
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o644
    assert verify_checkpoint(state_file.read_text(encoding="utf-8"), KEY_NAME, HUB_KEY.public_key()) == checkpoint
    assert [(e["event"], e["log_level"], e["size"]) for e in logs] == [
        ("audit_checkpoint_trusted_on_first_use", "warning", 5)
    ]


def test_growth_with_a_valid_consistency_proof_is_accepted(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(5))
    note = _note(13)
    checkpoint, needed = witness.pending(note)
    assert needed == (5, 13)
    assert witness.latest is not None
    assert witness.latest.size == 5
    assert witness.accept(note, _proof(*needed)) == checkpoint
    assert witness.latest == checkpoint
    assert state_file.read_text(encoding="utf-8") == note
    assert _evidence(state_file) == []


def test_growth_from_the_empty_tree_needs_no_proof(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(0))
    checkpoint, needed = witness.pending(_note(7))
    assert needed is None
    # A proof handed over anyway is ignored: only the remembered root must be the empty tree's.
    assert witness.accept(_note(7), [b"\x00" * 32]) == checkpoint


def test_the_same_checkpoint_again_changes_nothing(state_file: Path) -> None:
    witness = _witness(state_file)
    note = _note(8)
    witness.accept(note)
    before = state_file.stat().st_mtime_ns
    assert witness.pending(note)[1] is None
    with capture_logs() as logs:
        assert witness.accept(note) == witness.latest
    assert logs == []
    assert state_file.stat().st_mtime_ns == before
    assert _evidence(state_file) == []


def test_the_same_tree_signed_later_is_remembered_as_the_fresher_note(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(8, time_us=1_000))
    later = _note(8, time_us=2_000)
    witness.accept(later)
    assert witness.latest is not None
    assert witness.latest.time_us == 2_000
    assert state_file.read_text(encoding="utf-8") == later


def test_a_new_witness_resumes_from_the_state_file(state_file: Path) -> None:
    _witness(state_file).accept(_note(10))
    restarted = _witness(state_file)
    assert restarted.latest is not None
    assert restarted.latest.size == 10
    assert restarted.pending(_note(12))[1] == (10, 12)
    with pytest.raises(LogInconsistent, match="rolled back from 10 to 4 entries"):
        restarted.accept(_note(4))


def _assert_alarm(
    state_file: Path, witness: CheckpointWitness, note: str, proof: list[bytes], message: str, kind: str
) -> LogInconsistent:
    remembered, remembered_text = witness.latest, state_file.read_text(encoding="utf-8")
    with capture_logs() as logs, pytest.raises(LogInconsistent, match=message) as caught:
        witness.accept(note, proof)
    # Never accepted, never overwriting what the node remembers.
    assert witness.latest == remembered
    assert state_file.read_text(encoding="utf-8") == remembered_text
    assert _witness(state_file).latest == remembered
    # The offending note is kept as evidence, and the alarm names it.
    [evidence] = _evidence(state_file)
    assert evidence.read_text(encoding="utf-8") == note
    alarms = [e for e in logs if e["event"] == "audit_log_inconsistent"]
    assert len(alarms) == 1
    assert alarms[0]["log_level"] == "critical"
    assert alarms[0]["kind"] == kind
    assert alarms[0]["evidence"] == str(evidence)
    error = caught.value
    assert error.reason == "LOG_INCONSISTENT"
    assert error.metadata["kind"] == kind
    assert error.metadata["evidence"] == str(evidence)
    assert remembered is not None
    assert error.metadata["remembered_size"] == str(remembered.size)
    return error


def test_a_rollback_to_fewer_entries_raises_the_alarm(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(10))
    error = _assert_alarm(state_file, witness, _note(6), [], "log rolled back from 10 to 6 entries", "rollback")
    assert error.metadata["offered_size"] == "6"


def test_a_different_root_for_the_same_size_is_a_fork(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(10))
    _assert_alarm(state_file, witness, _note(10, leaves=FORKED), [], "forked", "fork")


def test_growth_that_rewrites_history_fails_its_proof(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(5))
    # The forked history's own proof is internally valid, but does not lead to the remembered root.
    forked = _note(13, leaves=FORKED)
    assert witness.pending(forked)[1] == (5, 13)
    _assert_alarm(
        state_file,
        witness,
        forked,
        _proof(5, 13, FORKED),
        "not consistent: .*does not lead to the old root",
        "proof_invalid",
    )


@pytest.mark.parametrize(
    ("proof", "message"),
    [
        ([], "consistency proof from 5 to 13 is empty"),
        (_proof(5, 12), "does not lead to the new root"),
        (_proof(5, 13)[:-1], "too short"),
    ],
)
def test_growth_without_a_valid_proof_raises_the_alarm(state_file: Path, proof: list[bytes], message: str) -> None:
    witness = _witness(state_file)
    witness.accept(_note(5))
    _assert_alarm(state_file, witness, _note(13), proof, message, "proof_invalid")


def test_a_checkpoint_time_going_backwards_raises_the_alarm(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(5, time_us=2_000))
    _assert_alarm(
        state_file,
        witness,
        _note(8, time_us=1_000),
        _proof(5, 8),
        "time went backwards from 2000 to 1000",
        "time_backwards",
    )


def test_two_conflicting_notes_of_one_size_are_both_kept(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(10))
    first, second = _note(10, leaves=FORKED), _note(10, leaves=FORKED, time_us=1)
    for note in (first, second, first):
        with pytest.raises(LogInconsistent):
            witness.accept(note)
    assert sorted(path.read_text(encoding="utf-8") for path in _evidence(state_file)) == sorted([first, second])
    name = hashlib.sha256(first.encode()).hexdigest()[:16]
    assert (state_file.parent / f"checkpoint.note.conflict-10-{name}.note").exists()


def test_a_note_signed_by_another_key_is_refused_without_changing_anything(state_file: Path) -> None:
    witness = _witness(state_file)
    witness.accept(_note(5))
    impostor = _note(9, key=Ed25519PrivateKey.generate())
    with pytest.raises(SignatureInvalid):
        witness.pending(impostor)
    with pytest.raises(SignatureInvalid):
        witness.accept(impostor, _proof(5, 9))
    assert witness.latest is not None
    assert witness.latest.size == 5
    assert _evidence(state_file) == []


def test_a_checkpoint_of_another_log_is_refused(state_file: Path) -> None:
    witness = _witness(state_file)
    other = _note(5, origin="other.example/audit")
    with pytest.raises(CheckpointInvalid, match=r"not hub\.example\.gov\.cn/audit") as caught:
        witness.accept(other)
    assert caught.value.field == "origin"
    assert witness.latest is None
    assert not state_file.exists()


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (b"", CheckpointInvalid, "no blank line"),
        (b"garbage\n", CheckpointInvalid, "no blank line"),
        (b"\xff\xfe\n", CheckpointInvalid, "not UTF-8"),
        (
            _note(5).replace("hub.example.gov.cn/audit\n5\n", "hub.example.gov.cn/audit\n6\n").encode(),
            SignatureInvalid,
            "does not verify",
        ),
        (_note(5, key=Ed25519PrivateKey.generate()).encode(), SignatureInvalid, "different key"),
        (_note(5, origin="other.example/audit").encode(), CheckpointInvalid, "not hub"),
    ],
)
def test_a_corrupt_or_foreign_state_file_is_refused_at_construction(
    state_file: Path, content: bytes, error: type[CheckpointInvalid], message: str
) -> None:
    state_file.parent.mkdir(parents=True)
    state_file.write_bytes(content)
    with pytest.raises(error, match=message) as caught:
        _witness(state_file)
    assert str(state_file) in caught.value.message
    assert caught.value.field == "state_file"
    assert state_file.read_bytes() == content  # never reset


def test_the_log_hash_function_is_used_for_roots_and_proofs(state_file: Path) -> None:
    def sha3(data: bytes) -> bytes:
        return hashlib.sha3_256(data).digest()

    leaves = [leaf_hash(f"entry {i}".encode(), sha3) for i in range(9)]
    witness = CheckpointWitness(state_file, VERIFIER, ORIGIN, hash_fn=sha3)
    witness.accept(_note(3, leaves=leaves, hash_fn=sha3))
    grown = _note(9, leaves=leaves, hash_fn=sha3)
    assert witness.accept(grown, consistency_proof(leaves, 3, 9, sha3)).size == 9
    with pytest.raises(LogInconsistent):
        witness.accept(_note(12), _proof(9, 12))
