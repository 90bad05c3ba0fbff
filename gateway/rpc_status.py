"""The one place where Hutong errors and gRPC statuses meet.

Server side: a :class:`~gateway.errors.HutongError` becomes a ``google.rpc.Status`` carrying
one ``ErrorInfo`` (reason, domain ``hutong``, metadata naming the field and record).
Client side: such a status becomes the same ``HutongError`` subclass again.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway import errors

__all__ = [
    "ERROR_DOMAIN",
    "INSECURE_IDENTITY_KEY",
    "REQUEST_ID_KEY",
    "error_from_rpc",
    "status_code",
    "status_for",
    "to_grpc_status",
]

ERROR_DOMAIN = "hutong"
#: Metadata key a caller may use to pass its own request id (echoed in logs).
REQUEST_ID_KEY = "x-request-id"
#: Metadata key naming the caller to an ``--insecure`` hub only (there is no certificate then).
INSECURE_IDENTITY_KEY = "x-hutong-insecure-node"

_BY_CODE: dict[grpc.StatusCode, type[errors.HutongError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


def status_code(name: str) -> grpc.StatusCode:
    """The gRPC status code of a code name; INTERNAL for names that are not codes."""
    code: grpc.StatusCode = getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)
    return code


def status_for(exc: errors.HutongError) -> status_pb2.Status:
    """The rich status of an error."""
    meta = exc.error_metadata()
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=meta)
    details = [any_pb2.Any()]
    details[0].Pack(info)
    retry_ms = meta.get("retry_after_ms", "")
    if retry_ms.isdigit():
        # Rate limits also say when to come back, in the standard place (google.rpc.RetryInfo).
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(retry_ms))
        details.append(any_pb2.Any())
        details[1].Pack(retry)
    code = status_code(exc.code_name)
    return status_pb2.Status(code=code.value[0], message=str(exc), details=details)


def to_grpc_status(exc: errors.HutongError) -> grpc.Status:
    """A ``grpc.Status`` for ``context.abort_with_status``."""
    return rpc_status.to_status(status_for(exc))


def error_from_rpc(
    code: grpc.StatusCode, details: str | None, trailing: grpc.aio.Metadata | None
) -> errors.HutongError:
    """The Hutong error a failed call stands for."""
    cls = _BY_CODE.get(code, errors.HutongError)
    reason = code.name
    metadata: dict[str, str] = {}
    message = details or code.name
    for key, value in trailing or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        message = status.message or message
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
                metadata = dict(info.metadata)
    field = metadata.pop("field", None)
    record = metadata.pop("record_id", None)
    err = cls(message, reason=reason, field=field, record=record, metadata=metadata)
    err.code_name = code.name
    err.rendered = message
    return err
