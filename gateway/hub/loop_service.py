"""The closed loop's services: ``NotificationService`` (provinces) and ``SignalService`` (departments).

Events are raised by the store inside the transactions of their causes (see
:mod:`gateway.store.sqlite_loop`); these servicers only deliver them, record acknowledgements and
outcomes, and turn departments' signals into events. A signal's ID number and name are sealed at
rest like a record's and opened only to be sent to the province that must act.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format

from gateway import errors
from gateway.domain import identity
from gateway.domain.divisions import province_of, validate_division
from gateway.domain.protection import FieldSealer, PersonKeyer
from gateway.domain.records import MAX_NAME_LENGTH, rejection_from_error
from gateway.hub.convert import rejection_to_proto, timestamp_from_us
from gateway.hub.interceptors import current_call, current_caller
from gateway.hub.preparation import check_client_id
from gateway.store.sql import SqlStore
from gateway.store.sqlite_loop import LoopEvent, PreparedSignal
from hutong.v1 import notification_pb2, notification_pb2_grpc, signal_pb2, signal_pb2_grpc

__all__ = ["MAX_ACKNOWLEDGE", "MAX_SIGNALS", "NotificationServicer", "SignalServicer"]

MAX_ACKNOWLEDGE = 1000
MAX_SIGNALS = 1000
MAX_TEXT = 500
_PAGE = 200
_SIGNAL_KINDS = frozenset(v for v in notification_pb2.SignalKind.values() if v)
_OUTCOMES = frozenset(v for v in notification_pb2.EventOutcome.values() if v)


def _parse_cursor(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise errors.InvalidArgument(
            "cursor must be a decimal sequence number", reason="CURSOR_INVALID", field="cursor"
        )
    return int(text)


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    """Delivers each province's events, in order, at least once; records acknowledgements and outcomes."""

    def __init__(self, store: SqlStore, sealer: FieldSealer, *, poll_seconds: float = 0.5) -> None:
        self._store = store
        self._sealer = sealer
        self._poll = poll_seconds
        self._draining = asyncio.Event()

    def begin_drain(self) -> None:
        """End open subscriptions (UNAVAILABLE, HUB_SHUTTING_DOWN); nodes resubscribe elsewhere or later."""
        self._draining.set()

    def _to_proto(self, event: LoopEvent) -> notification_pb2.Event:
        pb = json_format.ParseDict(event.body, notification_pb2.Event(), ignore_unknown_fields=True)
        pb.sequence = event.seq
        pb.created_at.CopyFrom(timestamp_from_us(event.created_at_us))
        if event.respond_by_us:  # 0: no outcome is expected (a completed verification)
            pb.respond_by.CopyFrom(timestamp_from_us(event.respond_by_us))
        if event.sealed_pii:
            plain = json.loads(self._sealer.open(event.sealed_pii, event.subject.encode()))
            pb.signal.id_number, pb.signal.name = plain["id_number"], plain["name"]
        return pb

    async def Subscribe(
        self, request: notification_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[notification_pb2.SubscribeResponse]:
        """The province's events after the cursor, then new ones as they are raised."""
        caller = current_caller()
        call = current_call()
        call.purpose = "monitoring-follow-up"
        cursor = _parse_cursor(request.cursor)
        if cursor is None:
            cursor = await self._store.event_cursor(caller)
        call.counts["events"] = 0
        while not self._draining.is_set():
            events = await self._store.events_after(caller.province_code, cursor, _PAGE)
            for event in events:
                yield notification_pb2.SubscribeResponse(event=self._to_proto(event))
                cursor = event.seq
                call.counts["events"] += 1
            if len(events) < _PAGE:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._draining.wait(), self._poll)
        raise errors.Unavailable("the hub is shutting down; subscribe again", reason="HUB_SHUTTING_DOWN")

    async def AcknowledgeEvents(
        self, request: notification_pb2.AcknowledgeEventsRequest, context: grpc.aio.ServicerContext
    ) -> notification_pb2.AcknowledgeEventsResponse:
        """Record deliveries; the node's cursor moves over every event it has acknowledged in order."""
        caller = current_caller()
        if len(request.event_ids) > MAX_ACKNOWLEDGE:
            raise errors.ResourceExhausted(
                f"at most {MAX_ACKNOWLEDGE} event_ids per call; got {len(request.event_ids)}; split them",
                reason="BATCH_TOO_LARGE",
                field="event_ids",
            )
        current_call().counts["events"] = len(request.event_ids)
        cursor, unknown = await self._store.acknowledge_events(caller, list(request.event_ids))
        return notification_pb2.AcknowledgeEventsResponse(cursor=str(cursor), unknown_event_ids=unknown)

    async def ReportOutcome(
        self, request: notification_pb2.ReportOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> notification_pb2.ReportOutcomeResponse:
        """Record what the province did about one of its events (结果反馈)."""
        caller = current_caller()
        check_client_id(request.request_id, "request_id")
        if request.outcome not in _OUTCOMES:
            raise errors.InvalidArgument(
                "outcome must be ASSISTED, NOT_ELIGIBLE or ALREADY_HANDLED", reason="OUTCOME_MISSING", field="outcome"
            )
        reason = request.reason.strip()
        if len(reason) > MAX_TEXT or not reason.isprintable():
            raise errors.InvalidArgument(
                f"reason must be at most {MAX_TEXT} printable characters", reason="TEXT_INVALID", field="reason"
            )
        if request.outcome == notification_pb2.EVENT_OUTCOME_NOT_ELIGIBLE and not reason:
            raise errors.InvalidArgument(
                "a NOT_ELIGIBLE outcome needs a reason", reason="REASON_MISSING", field="reason"
            )
        result = await self._store.report_outcome(
            caller, request.request_id, request.event_id, int(request.outcome), reason
        )
        if result is None:
            raise errors.NotFound(
                "no event with this id is addressed to the caller's province",
                reason="EVENT_NOT_FOUND",
                field="event_id",
            )
        return notification_pb2.ReportOutcomeResponse(
            recorded_at=timestamp_from_us(result.recorded_at_us), replayed=result.replayed, closed=result.closed
        )


class SignalServicer(signal_pb2_grpc.SignalServiceServicer):
    """Matches departments' risk signals to persons and pushes them to the provinces that must act."""

    def __init__(self, store: SqlStore, keyer: PersonKeyer, sealer: FieldSealer) -> None:
        self._store = store
        self._keyer = keyer
        self._sealer = sealer

    def _prepare(self, source: str, index: int, s: signal_pb2.Signal) -> PreparedSignal:
        rid = s.signal_id
        try:
            check_client_id(rid, "signal_id")
        except errors.InvalidArgument as exc:
            raise errors.InvalidArgument(str(exc.message), reason=exc.reason, field="signal_id", record=rid) from None
        if s.kind not in _SIGNAL_KINDS:
            raise errors.InvalidArgument("kind is required", reason="SIGNAL_KIND_MISSING", field="kind", record=rid)
        parsed = identity.parse_id_number(s.id_number)
        name = s.name.strip()
        if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise errors.InvalidArgument(
                f"name must be 1 to {MAX_NAME_LENGTH} printable characters",
                reason="NAME_INVALID",
                field="name",
                record=rid,
            )
        occurred = None
        if s.occurred_on.year or s.occurred_on.month or s.occurred_on.day:
            try:
                occurred = dt.date(s.occurred_on.year, s.occurred_on.month, s.occurred_on.day)
            except ValueError:
                raise errors.InvalidArgument(
                    "occurred_on is not a calendar date", reason="DATE_IMPOSSIBLE", field="occurred_on", record=rid
                ) from None
            if occurred > dt.date.today():
                raise errors.InvalidArgument(
                    "occurred_on is in the future", reason="DATE_IN_FUTURE", field="occurred_on", record=rid
                )
        if s.amount_fen < 0:
            raise errors.InvalidArgument(
                "amount_fen must not be negative", reason="AMOUNT_NEGATIVE", field="amount_fen", record=rid
            )
        if len(s.note) > MAX_TEXT or (s.note and not s.note.isprintable()):
            raise errors.InvalidArgument(
                f"note must be at most {MAX_TEXT} printable characters", reason="TEXT_INVALID", field="note", record=rid
            )
        if s.residence_division:
            fallback = province_of(
                validate_division(s.residence_division, field="residence_division", record=rid),
                field="residence_division",
                record=rid,
            )
        else:
            try:
                fallback = province_of(parsed.value[:6])
            except errors.InvalidDivision:
                fallback = ""
        subject = f"signal:{source}:{rid}"
        fields: dict[str, object] = {
            "signal": {
                "signalId": rid,
                "kind": int(s.kind),
                "source": source,
                "amountFen": str(s.amount_fen),
                "note": s.note,
                **(
                    {"occurredOn": {"year": occurred.year, "month": occurred.month, "day": occurred.day}}
                    if occurred
                    else {}
                ),
            },
            "summary": f"{notification_pb2.SignalKind.Name(s.kind).removeprefix('SIGNAL_KIND_').lower()} reported"
            f" by {source}",
        }
        sealed = self._sealer.seal(
            json.dumps({"id_number": parsed.value, "name": name}, ensure_ascii=False).encode(), subject.encode()
        )
        return PreparedSignal(
            index=index,
            signal_id=rid,
            kind=int(s.kind),
            person_key=self._keyer.person_key(parsed.value),
            fallback_province=fallback,
            fields=fields,
            sealed_pii=sealed,
            subject=subject,
        )

    async def SubmitSignals(
        self, request: signal_pb2.SubmitSignalsRequest, context: grpc.aio.ServicerContext
    ) -> signal_pb2.SubmitSignalsResponse:
        """Check each signal; push the good ones; a bad one is refused alone, naming its field."""
        caller = current_caller()
        call = current_call()
        call.purpose = "monitoring-follow-up"
        check_client_id(request.request_id, "request_id")
        if len(request.signals) > MAX_SIGNALS:
            raise errors.ResourceExhausted(
                f"at most {MAX_SIGNALS} signals per call; got {len(request.signals)}; split them",
                reason="BATCH_TOO_LARGE",
                field="signals",
            )
        prepared: list[PreparedSignal] = []
        results: dict[int, signal_pb2.SignalResult] = {}
        for index, s in enumerate(request.signals):
            try:
                p = self._prepare(caller.uri, index, s)
            except errors.HutongError as exc:
                rejection = rejection_from_error(index, s.signal_id, exc)
                results[index] = signal_pb2.SignalResult(
                    index=index, signal_id=s.signal_id, rejection=rejection_to_proto(rejection)
                )
                continue
            prepared.append(p)
            call.person_keys.add(p.person_key)
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
        outcomes, replayed = await self._store.submit_signals(caller, request.request_id, digest, prepared)
        for o in outcomes:
            results[o.index] = signal_pb2.SignalResult(
                index=o.index, signal_id=o.signal_id, province_codes=list(o.provinces), matched=o.matched
            )
        call.counts["signals"] = len(request.signals)
        call.counts["rejected"] = sum(1 for r in results.values() if r.HasField("rejection"))
        return signal_pb2.SubmitSignalsResponse(results=[results[i] for i in sorted(results)], replayed=replayed)
