"""The tamper-evident exchange log: RFC 9162 Merkle trees, canonical audit entries, signed checkpoints.

This package is the pure core (no grpc, no SQL): every RPC becomes an :class:`AuditEntry` whose
canonical bytes are a leaf of an RFC 9162 Merkle tree; the hub signs C2SP checkpoints of the tree
(size and root) and answers inclusion and consistency proofs that anyone can check offline with
:func:`verify_inclusion`, :func:`verify_consistency` and :func:`verify_checkpoint`.

Trust without trusting the hub's operators: :func:`verify_binding` ties the checkpoint key to a
hub certificate of the ministry CA; a :class:`CheckpointWitness` (a province node) remembers the
newest checkpoint it saw and raises :class:`LogInconsistent` when the log is rewritten.
:func:`export_log` writes the log to a directory and :func:`verify_export` checks one offline.
"""

from __future__ import annotations

from gateway.audit.archive import (
    EXPORT_FORMAT,
    AuditSource,
    ExportSummary,
    VerifyReport,
    export_log,
    read_export_entries,
    verify_export,
)
from gateway.audit.binding import BINDING_TYPE, KeyBinding, bind_key, verify_binding
from gateway.audit.checkpoint import (
    ALG_ED25519,
    TIME_EXTENSION,
    Checkpoint,
    NoteSignature,
    NoteVerifier,
    SignedNote,
    encode_signer_key,
    encode_verifier_key,
    key_hash,
    parse_checkpoint,
    parse_checkpoint_body,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)
from gateway.audit.entry import (
    ENTRY_VERSION,
    AuditEntry,
)
from gateway.audit.errors import (
    AuditError,
    BindingInvalid,
    CheckpointInvalid,
    EntryInvalid,
    ExportInvalid,
    KeyInvalid,
    LogInconsistent,
    ProofInvalid,
    SignatureInvalid,
    TreeRangeInvalid,
)
from gateway.audit.merkle import (
    HashFn,
    MerkleAccumulator,
    SubtreeHash,
    consistency_path,
    consistency_proof,
    empty_root,
    inclusion_path,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    sha256,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit.witness import CheckpointWitness

__all__ = [
    "ALG_ED25519",
    "BINDING_TYPE",
    "ENTRY_VERSION",
    "EXPORT_FORMAT",
    "TIME_EXTENSION",
    "AuditEntry",
    "AuditError",
    "AuditSource",
    "BindingInvalid",
    "Checkpoint",
    "CheckpointInvalid",
    "CheckpointWitness",
    "EntryInvalid",
    "ExportInvalid",
    "ExportSummary",
    "HashFn",
    "KeyBinding",
    "KeyInvalid",
    "LogInconsistent",
    "MerkleAccumulator",
    "NoteSignature",
    "NoteVerifier",
    "ProofInvalid",
    "SignatureInvalid",
    "SignedNote",
    "SubtreeHash",
    "TreeRangeInvalid",
    "VerifyReport",
    "bind_key",
    "consistency_path",
    "consistency_proof",
    "empty_root",
    "encode_signer_key",
    "encode_verifier_key",
    "export_log",
    "inclusion_path",
    "inclusion_proof",
    "key_hash",
    "leaf_hash",
    "node_hash",
    "parse_checkpoint",
    "parse_checkpoint_body",
    "parse_note",
    "parse_signer_key",
    "parse_verifier_key",
    "read_export_entries",
    "root_hash",
    "sha256",
    "sign_checkpoint",
    "sign_note",
    "verify_binding",
    "verify_checkpoint",
    "verify_consistency",
    "verify_export",
    "verify_inclusion",
]
