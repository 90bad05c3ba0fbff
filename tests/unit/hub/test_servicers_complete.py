"""Every RPC of the contract is implemented by the hub's servicers.

The generated servicer base classes (hutong/v1/*_pb2_grpc.py, written by grpc_tools and never
edited) answer UNIMPLEMENTED: their methods raise NotImplementedError until a subclass overrides
them. This test proves every hub servicer overrides every RPC of its service, so none is served
as unimplemented, and that every RPC is mapped to a scope.
"""

from __future__ import annotations

import pytest

from gateway.hub.audit_service import AuditServicer
from gateway.hub.auth_service import AuthServicer
from gateway.hub.linkage_service import LinkageReviewServicer
from gateway.hub.loop_service import NotificationServicer, SignalServicer
from gateway.hub.query_service import AssistanceQueryServicer
from gateway.hub.records_service import RecordExchangeServicer
from gateway.hub.server import SCOPES_BY_METHOD
from gateway.hub.verification import VerificationServicer
from gateway.node.serve import ProvinceNodeServicer
from hutong.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    linkage_pb2,
    linkage_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
    signal_pb2,
    signal_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)

CASES = [
    (AuthServicer, auth_pb2_grpc.AuthServiceServicer, auth_pb2, "AuthService"),
    (RecordExchangeServicer, records_pb2_grpc.RecordExchangeServiceServicer, records_pb2, "RecordExchangeService"),
    (AssistanceQueryServicer, query_pb2_grpc.AssistanceQueryServiceServicer, query_pb2, "AssistanceQueryService"),
    (AuditServicer, audit_pb2_grpc.AuditServiceServicer, audit_pb2, "AuditService"),
    (LinkageReviewServicer, linkage_pb2_grpc.LinkageReviewServiceServicer, linkage_pb2, "LinkageReviewService"),
    (NotificationServicer, notification_pb2_grpc.NotificationServiceServicer, notification_pb2, "NotificationService"),
    (SignalServicer, signal_pb2_grpc.SignalServiceServicer, signal_pb2, "SignalService"),
    (VerificationServicer, verification_pb2_grpc.VerificationServiceServicer, verification_pb2, "VerificationService"),
]


@pytest.mark.parametrize(("servicer", "base", "module", "service"), CASES)
def test_every_rpc_is_overridden_and_mapped_to_a_scope(
    servicer: type, base: type, module: object, service: str
) -> None:
    methods = module.DESCRIPTOR.services_by_name[service].methods  # type: ignore[attr-defined]
    for method in methods:
        assert getattr(servicer, method.name) is not getattr(base, method.name), method.name
        assert method.name in SCOPES_BY_METHOD, method.name


def test_the_province_node_overrides_every_rpc_of_its_service() -> None:
    """The node's federation server (no scopes: it answers the hub's certificate alone)."""
    for method in node_pb2.DESCRIPTOR.services_by_name["ProvinceNodeService"].methods:
        base = node_pb2_grpc.ProvinceNodeServiceServicer
        assert getattr(ProvinceNodeServicer, method.name) is not getattr(base, method.name), method.name
