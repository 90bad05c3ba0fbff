"""The public names of gateway.audit; a change here is an API change."""

from __future__ import annotations

import gateway.audit
import gateway.audit.errors
from gateway.errors import HutongError


def test_audit_exports_resolve_and_include_the_core() -> None:
    for name in gateway.audit.__all__:
        assert getattr(gateway.audit, name) is not None
    assert {
        "AuditEntry",
        "MerkleAccumulator",
        "consistency_proof",
        "inclusion_proof",
        "root_hash",
        "sign_checkpoint",
        "verify_checkpoint",
        "verify_consistency",
        "verify_inclusion",
    } <= set(gateway.audit.__all__)


def test_every_audit_error_is_a_hutong_error_with_an_upper_snake_reason() -> None:
    for name in gateway.audit.errors.__all__:
        cls = getattr(gateway.audit.errors, name)
        assert issubclass(cls, gateway.audit.errors.AuditError)
        assert issubclass(cls, HutongError)
        assert cls.default_reason.isupper()
