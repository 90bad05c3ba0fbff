"""Errors of the tamper-evident exchange log.

Every audit error is a :class:`gateway.errors.HutongError`, so the one gRPC error map and the
CLI render it like any other. Messages name sizes, indices and positions, never entry contents.

::

    HutongError
    └── AuditError              AUDIT_ERROR
        ├── TreeRangeInvalid    TREE_RANGE_INVALID   (INVALID_ARGUMENT: index or size outside the tree)
        ├── ProofInvalid        PROOF_INVALID        (an inclusion or consistency proof does not hold)
        ├── EntryInvalid        ENTRY_INVALID        (an audit entry breaks the canonical encoding)
        ├── KeyInvalid          KEY_INVALID          (a note key name or verifier key string is malformed)
        ├── CheckpointInvalid   CHECKPOINT_INVALID   (a checkpoint or signed note is malformed)
        │   └── SignatureInvalid  SIGNATURE_INVALID  (no valid signature by the expected key)
        ├── BindingInvalid      KEY_BINDING_INVALID  (the note key is not bound to a hub certificate of the CA)
        ├── LogInconsistent     LOG_INCONSISTENT     (a log rewritten, forked or rolled back: raise the alarm)
        └── ExportInvalid       EXPORT_INVALID       (an exported log does not verify; names the first bad entry)
"""

from __future__ import annotations

from gateway.errors import HutongError

__all__ = [
    "AuditError",
    "BindingInvalid",
    "CheckpointInvalid",
    "EntryInvalid",
    "ExportInvalid",
    "KeyInvalid",
    "LogInconsistent",
    "ProofInvalid",
    "SignatureInvalid",
    "TreeRangeInvalid",
]


class AuditError(HutongError):
    """Base of every error raised by the audit log's core."""

    default_reason = "AUDIT_ERROR"


class TreeRangeInvalid(AuditError):
    """A leaf index or tree size lies outside the tree it refers to."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "TREE_RANGE_INVALID"


class ProofInvalid(AuditError):
    """An inclusion or consistency proof does not prove what it claims."""

    default_reason = "PROOF_INVALID"


class EntryInvalid(AuditError):
    """An audit entry, or the bytes claimed to encode one, breaks the canonical encoding."""

    default_reason = "ENTRY_INVALID"


class KeyInvalid(AuditError):
    """A signed-note key name, key or verifier key string is malformed."""

    default_reason = "KEY_INVALID"


class CheckpointInvalid(AuditError):
    """A checkpoint body or signed note is malformed."""

    default_reason = "CHECKPOINT_INVALID"


class SignatureInvalid(CheckpointInvalid):
    """A signed note carries no valid signature by the expected key."""

    default_reason = "SIGNATURE_INVALID"


class BindingInvalid(AuditError):
    """The checkpoint key is not bound, by a valid signature, to a hub certificate issued by the CA."""

    default_reason = "KEY_BINDING_INVALID"


class LogInconsistent(AuditError):
    """Two views of the log cannot both be true: it was rewritten, forked or rolled back.

    This is the alarm a province node or an auditor raises; ``metadata`` names the sizes.
    """

    code_name = "DATA_LOSS"
    default_reason = "LOG_INCONSISTENT"


class ExportInvalid(AuditError):
    """An exported log does not verify; the message names the first entry or file that fails and why."""

    default_reason = "EXPORT_INVALID"
