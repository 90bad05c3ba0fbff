"""The one error hierarchy of Hutong.

Every error a user can see is a :class:`HutongError`. Each carries a machine
reason in UPPER_SNAKE (the ``ErrorInfo.reason`` on the wire), the field and the
record it concerns, and free metadata. The gRPC layer maps the class to a status
code in exactly one place (``gateway.hub.errors``); the client maps it back.

Messages never contain raw personal data (ID numbers, names): they name the
field, the record id and the position of a fault, not the value.

::

    HutongError
    ├── InvalidArgument          INVALID_ARGUMENT
    │   ├── InvalidIdNumber
    │   ├── InvalidDivision
    │   └── InvalidRecord
    ├── Unauthenticated          UNAUTHENTICATED
    ├── PermissionDenied         PERMISSION_DENIED
    ├── NotFound                 NOT_FOUND
    ├── FailedPrecondition       FAILED_PRECONDITION
    ├── ResourceExhausted        RESOURCE_EXHAUSTED
    ├── Unavailable              UNAVAILABLE
    │   └── DeadlineExceeded     DEADLINE_EXCEEDED
    ├── ConfigError              (local: bad config, missing files)
    ├── PkiError                 (local: CA and certificate operations)
    └── StoreError               INTERNAL
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
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


class HutongError(Exception):
    """Base of every error Hutong raises on purpose."""

    #: Status name used on the wire (``grpc.StatusCode`` member name).
    code_name: str = "INTERNAL"
    #: Reason used when the raiser does not give one.
    default_reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        record: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field = field
        self.record = record
        self.metadata: dict[str, str] = dict(metadata or {})
        #: The full text as the server rendered it, for errors rebuilt from a gRPC status.
        self.rendered: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Reason, field and record survive a trip between processes (adapters may run in their own).
        return (_rebuild, (type(self), self.message, self.reason, self.field, self.record, self.metadata))

    def error_metadata(self) -> dict[str, str]:
        """All context as ``ErrorInfo.metadata``: field and record included."""
        meta = dict(self.metadata)
        if self.field is not None:
            meta["field"] = self.field
        if self.record is not None:
            meta["record_id"] = self.record
        return meta

    def __str__(self) -> str:
        if self.rendered is not None:
            return self.rendered
        where = []
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field {self.field}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.message} [{self.reason}]"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, reason={self.reason!r},"
            f" field={self.field!r}, record={self.record!r})"
        )


class InvalidArgument(HutongError):
    """The caller sent something malformed or impossible."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"


class InvalidIdNumber(InvalidArgument):
    """A citizen ID number (GB 11643) is malformed or fails its check."""

    default_reason = "ID_NUMBER_INVALID"


class InvalidDivision(InvalidArgument):
    """A GB/T 2260 division code is malformed or unknown."""

    default_reason = "DIVISION_INVALID"


class InvalidRecord(InvalidArgument):
    """A person record breaks a rule (dates, amounts, enums, consistency)."""

    default_reason = "RECORD_INVALID"


class Unauthenticated(HutongError):
    """The caller could not be identified (no or unusable certificate)."""

    code_name = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(HutongError):
    """The caller is known but not allowed to do this."""

    code_name = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class NotFound(HutongError):
    """The thing asked for does not exist."""

    code_name = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class FailedPrecondition(HutongError):
    """The request is well formed but conflicts with the state held."""

    code_name = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(HutongError):
    """A size or rate bound was exceeded."""

    code_name = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(HutongError):
    """The service cannot answer now; an idempotent retry may succeed."""

    code_name = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(Unavailable):
    """A deadline ended the call before it completed (the server's own, e.g. an idle stream); a retry may succeed."""

    code_name = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class ConfigError(HutongError):
    """Local configuration or files are missing or wrong."""

    default_reason = "CONFIG_INVALID"


class PkiError(HutongError):
    """A CA or certificate operation failed."""

    default_reason = "PKI_ERROR"


class StoreError(HutongError):
    """The store failed in a way the caller cannot fix."""

    default_reason = "STORE_ERROR"


class StoreUnavailable(StoreError):
    """The database cannot be reached (a restart, a failover, the network): nothing was written; retry."""

    code_name = "UNAVAILABLE"
    default_reason = "STORE_UNAVAILABLE"


def _rebuild(
    cls: type[HutongError],
    message: str,
    reason: str,
    field: str | None,
    record: str | None,
    metadata: dict[str, str],
) -> HutongError:
    return cls(message, reason=reason, field=field, record=record, metadata=metadata)
