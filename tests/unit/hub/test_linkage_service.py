"""Tests of gateway.hub.linkage_service: every RPC implemented and scoped, stored views to wire messages."""

from __future__ import annotations

from gateway.domain.access import SCOPES, AccessPolicy
from gateway.hub.linkage_service import LinkageReviewServicer, event_to_proto, review_to_proto
from gateway.hub.server import SCOPES_BY_METHOD
from gateway.store.base import LineageEventView, PersonKeyChange, ReviewView
from hutong.v1 import linkage_pb2, linkage_pb2_grpc

DECISION = {
    "record_key": "410000/ha-1",
    "other_key": "440000/gd-1",
    "rule": "probabilistic",
    "outcome": "review",
    "match_weight": 1.5,
    "match_probability": 0.74,
    "evidence": [
        {"comparison": "surname", "level": "exact", "weight": 5.1, "term_frequency_adjusted": True},
        {"comparison": "id_number", "level": "null", "weight": 0.0, "term_frequency_adjusted": False},
    ],
}


def test_every_review_rpc_is_implemented_and_needs_the_linkage_review_scope() -> None:
    methods = linkage_pb2.DESCRIPTOR.services_by_name["LinkageReviewService"].methods
    base = linkage_pb2_grpc.LinkageReviewServiceServicer
    for method in methods:
        assert getattr(LinkageReviewServicer, method.name) is not getattr(base, method.name), method.name
        assert SCOPES_BY_METHOD[method.name] == "linkage:review", method.name
    assert "linkage:review" in SCOPES
    assert "linkage:review" not in AccessPolicy.open_default().default.scopes  # granted by policy only


def test_a_review_item_keeps_its_evidence_and_model_version_on_the_wire() -> None:
    view = ReviewView(7, 1, ("410000", "ha-1"), ("440000", "gd-1"), DECISION, 3, 1_000_000)
    pb = review_to_proto(view)
    assert pb.review_id == 7
    assert pb.state == linkage_pb2.REVIEW_STATE_OPEN
    assert pb.record == linkage_pb2.RecordRef(province_code="410000", record_id="ha-1")
    assert pb.evidence.model_version == 3
    assert pb.evidence.match_probability == 0.74
    assert [(c.comparison, c.level, c.term_frequency_adjusted) for c in pb.evidence.comparisons] == [
        ("surname", "exact", True),
        ("id_number", "null", False),
    ]
    assert not pb.HasField("decided_at")


def test_a_split_event_names_the_person_keys_it_changed() -> None:
    change = PersonKeyChange(("410000", "ha-1"), b"a" * 16, b"b" * 16)
    view = LineageEventView(
        4, 4, (("410000", "ha-1"), ("440000", "gd-1")), None, 1, "hutong://x", "twins", 5, (change,)
    )
    pb = event_to_proto(view)
    assert pb.kind == linkage_pb2.LINEAGE_EVENT_KIND_SPLIT
    assert not pb.HasField("evidence")
    assert [(c.record.record_id, c.before, c.after) for c in pb.person_key_changes] == [("ha-1", b"a" * 16, b"b" * 16)]
