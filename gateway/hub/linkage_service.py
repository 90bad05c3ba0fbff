"""``LinkageReviewService``: the review queue and lineage of identity linkage, for reviewers (scope ``linkage:review``).

The linking itself happens inside ``SyncRecords`` (see :mod:`gateway.store.sqlite_linkage`); this
servicer lists the grey-band pairs it queued, records reviewers' decisions and splits, and shows a
record's lineage. Every call's audit entry names the persons it touched: the person keys of the
records listed, decided, split or shown, before and after a decision.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import grpc
import structlog

from gateway import errors
from gateway.hub.audit import AuditRecorder
from gateway.hub.convert import decode_page_token, encode_page_token, timestamp_from_us
from gateway.hub.interceptors import CallInfo, current_call, current_caller
from gateway.hub.preparation import check_client_id
from gateway.store.base import LineageEventView, LinkView, RecordKey, ReviewView
from gateway.store.sql import SqlStore
from gateway.store.sqlite_linkage import LinkageStatus
from hutong.v1 import linkage_pb2, linkage_pb2_grpc

__all__ = ["MAX_PAGE_SIZE", "MAX_REASON", "LinkageReviewServicer", "linkage_started"]

log = structlog.get_logger("hutong.linkage")

MAX_PAGE_SIZE = 500
MAX_REASON = 500
_DEFAULT_PAGE = 100
_PURPOSE = "duplicate-check"
_STATES = frozenset(v for v in linkage_pb2.ReviewState.values() if v)
_DECISIONS = {linkage_pb2.REVIEW_DECISION_ACCEPT: True, linkage_pb2.REVIEW_DECISION_REJECT: False}


def _province(value: str, field: str) -> str:
    if len(value) != 6 or not value.isdigit() or not value.endswith("0000"):
        raise errors.InvalidArgument(
            "must be a 6-digit province code such as 440000", reason="PROVINCE_CODE_INVALID", field=field
        )
    return value


def _record(ref: linkage_pb2.RecordRef, field: str) -> RecordKey:
    _province(ref.province_code, f"{field}.province_code")
    if not ref.record_id or len(ref.record_id) > 64 or not ref.record_id.isprintable():
        raise errors.InvalidArgument(
            "record_id must be 1 to 64 printable characters", reason="ITEM_ID_INVALID", field=f"{field}.record_id"
        )
    return ref.province_code, ref.record_id


def _reason(text: str) -> str:
    reason = text.strip()
    if not reason or len(reason) > MAX_REASON or not reason.isprintable():
        raise errors.InvalidArgument(
            f"reason must be 1 to {MAX_REASON} printable characters", reason="TEXT_INVALID", field="reason"
        )
    return reason


def _ref(record: RecordKey) -> linkage_pb2.RecordRef:
    return linkage_pb2.RecordRef(province_code=record[0], record_id=record[1])


def evidence_to_proto(decision: Mapping[str, Any], model_version: int) -> linkage_pb2.LinkEvidence:
    """The wire form of a stored ``LinkDecision.as_dict()``."""
    return linkage_pb2.LinkEvidence(
        rule=str(decision["rule"]),
        match_weight=float(decision["match_weight"]),
        match_probability=float(decision["match_probability"]),
        comparisons=[
            linkage_pb2.ComparisonEvidence(
                comparison=str(e["comparison"]),
                level=str(e["level"]),
                weight=float(e["weight"]),
                term_frequency_adjusted=bool(e["term_frequency_adjusted"]),
            )
            for e in decision["evidence"]
        ],
        model_version=model_version,
    )


def review_to_proto(item: ReviewView) -> linkage_pb2.ReviewItem:
    """The wire form of a review item."""
    pb = linkage_pb2.ReviewItem(
        review_id=item.review_id,
        state=item.state,  # type: ignore[arg-type]  # stored as the wire enum's number
        record=_ref(item.record),
        other_record=_ref(item.other_record),
        evidence=evidence_to_proto(item.decision, item.model_version),
        created_at=timestamp_from_us(item.created_at_us),
        decided_by=item.decided_by,
        reason=item.reason,
    )
    if item.decided_at_us:
        pb.decided_at.CopyFrom(timestamp_from_us(item.decided_at_us))
    return pb


def event_to_proto(event: LineageEventView) -> linkage_pb2.LineageEvent:
    """The wire form of a lineage event."""
    pb = linkage_pb2.LineageEvent(
        sequence=event.seq,
        kind=event.kind,  # type: ignore[arg-type]  # stored as the wire enum's number
        records=[_ref(r) for r in event.records],
        actor=event.actor,
        reason=event.reason,
        time=timestamp_from_us(event.at_us),
        person_key_changes=[
            linkage_pb2.PersonKeyChange(record=_ref(c.record), before=c.before, after=c.after) for c in event.rekeyed
        ],
    )
    if event.decision is not None:
        pb.evidence.CopyFrom(evidence_to_proto(event.decision, event.model_version))
    return pb


def link_to_proto(link: LinkView) -> linkage_pb2.Link:
    """The wire form of a link."""
    pb = linkage_pb2.Link(
        record=_ref(link.record),
        other_record=_ref(link.other_record),
        evidence=evidence_to_proto(link.decision, link.model_version),
        made_by=link.made_by,
        created_at=timestamp_from_us(link.created_at_us),
    )
    if link.ended_at_us:
        pb.ended_at.CopyFrom(timestamp_from_us(link.ended_at_us))
    return pb


class LinkageReviewServicer(linkage_pb2_grpc.LinkageReviewServiceServicer):
    """Review queue, decisions, splits and lineage of identity linkage."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def ListReviewItems(
        self, request: linkage_pb2.ListReviewItemsRequest, context: grpc.aio.ServicerContext
    ) -> linkage_pb2.ListReviewItemsResponse:
        """Review items, oldest first, one page."""
        call = current_call()
        call.purpose = _PURPOSE
        province = _province(request.province_code, "province_code") if request.province_code else ""
        if request.state and request.state not in _STATES:
            raise errors.InvalidArgument(
                "state is not a known review state", reason="UNKNOWN_ENUM_VALUE", field="state"
            )
        size = request.page_size or _DEFAULT_PAGE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise errors.InvalidArgument(
                f"page_size must be 1 to {MAX_PAGE_SIZE}", reason="PAGE_SIZE_INVALID", field="page_size"
            )
        binding = f"reviews|{province}|{int(request.state)}"
        position = decode_page_token(request.page_token, binding, ("after",))
        after = position["after"] if position else 0
        items = await self._store.review_items(
            province_code=province, state=int(request.state), after=after, limit=size + 1
        )
        page = items[:size]
        for item in page:
            call.person_keys.update(k for k in item.person_keys if k)
        call.counts["items"] = len(page)
        token = encode_page_token({"after": page[-1].review_id}, binding) if len(items) > size else ""
        return linkage_pb2.ListReviewItemsResponse(items=[review_to_proto(i) for i in page], next_page_token=token)

    async def DecideReviewItem(
        self, request: linkage_pb2.DecideReviewItemRequest, context: grpc.aio.ServicerContext
    ) -> linkage_pb2.DecideReviewItemResponse:
        """Accept or reject one open item; both provinces are told."""
        caller = current_caller()
        call = current_call()
        call.purpose = _PURPOSE
        check_client_id(request.request_id, "request_id")
        if request.review_id < 1:
            raise errors.InvalidArgument("review_id is required", reason="REVIEW_ID_MISSING", field="review_id")
        accept = _DECISIONS.get(request.decision)
        if accept is None:
            raise errors.InvalidArgument(
                "decision must be ACCEPT or REJECT", reason="DECISION_MISSING", field="decision"
            )
        result = await self._store.decide_review(
            caller, request.request_id, request.review_id, accept, _reason(request.reason)
        )
        call.person_keys.update(result.touched)
        call.counts["accepted" if accept else "rejected"] = 1
        return linkage_pb2.DecideReviewItemResponse(
            item=review_to_proto(result.review), replayed=result.replayed, person_keys=list(result.person_keys)
        )

    async def SplitLink(
        self, request: linkage_pb2.SplitLinkRequest, context: grpc.aio.ServicerContext
    ) -> linkage_pb2.SplitLinkResponse:
        """Undo one link; the pair is kept apart from then on."""
        caller = current_caller()
        call = current_call()
        call.purpose = _PURPOSE
        check_client_id(request.request_id, "request_id")
        record = _record(request.record, "record")
        other = _record(request.other_record, "other_record")
        result = await self._store.split_link(caller, request.request_id, record, other, _reason(request.reason))
        call.person_keys.update(result.touched)
        call.counts["split"] = 1
        return linkage_pb2.SplitLinkResponse(
            event=event_to_proto(result.event), replayed=result.replayed, person_keys=list(result.person_keys)
        )

    async def GetLineage(
        self, request: linkage_pb2.GetLineageRequest, context: grpc.aio.ServicerContext
    ) -> linkage_pb2.GetLineageResponse:
        """One record's person, its cluster's links and the events that touched it."""
        call = current_call()
        call.purpose = _PURPOSE
        record = _record(request.record, "record")
        view = await self._store.lineage(record)
        if view is None:
            raise errors.NotFound(
                "the hub holds no record with this id for that province", reason="RECORD_NOT_FOUND", field="record"
            )
        call.person_keys.add(view.person_key)
        for event in view.events:
            for change in event.rekeyed:
                call.person_keys.update((change.before, change.after))
        call.counts.update(links=len(view.links), events=len(view.events))
        return linkage_pb2.GetLineageResponse(
            record=_ref(view.record),
            person_key=view.person_key,
            id_number_unverified=view.unverified,
            person_records=[_ref(r) for r in view.person_records],
            links=[link_to_proto(link) for link in view.links],
            events=[event_to_proto(e) for e in view.events],
        )


async def linkage_started(status: LinkageStatus, audit: AuditRecorder) -> None:
    """Log what the linkage index holds; a trained model no hub linked with before is an exchange-log entry.

    The bootstrap model ships with Hutong (its digest is stored with its version); a trained one is
    an operator's doing, and the log says from when the hub linked with it.
    """
    if status.model_first_use and status.model_source != "bootstrap":
        call = CallInfo(
            method="LoadLinkageModel",
            request_id=status.model_digest.hex()[:32],
            started=time.perf_counter(),
            full_method="/hutong.hub.Operator/LoadLinkageModel",
            subject="hub-operator",
            counts={"model_version": status.model_version, "trained_records": status.model_records},
        )
        await audit.record(call, status.model_digest, None)
    log.info(
        "linkage_index_ready",
        model_version=status.model_version,
        model_source=status.model_source,
        held=status.held,
        unverified=status.unverified,
        directory=status.directory,
        active_links=status.active_links,
        open_reviews=status.open_reviews,
        seconds=round(status.seconds, 3),
    )
