"""The public names of the packages provinces and operators import; a change here is an API change."""

from __future__ import annotations

import gateway.client
import gateway.errors
import pki


def test_client_exports() -> None:
    assert sorted(gateway.client.__all__) == ["HubClient", "RetryConfig"]


def test_error_hierarchy_exports() -> None:
    assert sorted(gateway.errors.__all__) == [
        "ConfigError",
        "DeadlineExceeded",
        "FailedPrecondition",
        "HutongError",
        "InvalidArgument",
        "InvalidDivision",
        "InvalidIdNumber",
        "InvalidRecord",
        "NotFound",
        "PermissionDenied",
        "PkiError",
        "ResourceExhausted",
        "StoreError",
        "Unauthenticated",
        "Unavailable",
    ]
    for name in gateway.errors.__all__:
        assert issubclass(getattr(gateway.errors, name), gateway.errors.HutongError)


def test_pki_exports_resolve() -> None:
    for name in pki.__all__:
        assert getattr(pki, name) is not None
    assert {"CertificateAuthority", "NodeIdentity", "TlsMaterial", "write_demo_pki"} <= set(pki.__all__)
