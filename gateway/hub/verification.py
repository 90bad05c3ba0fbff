"""Household economic-status verification (核对), the hub's side: ``VerificationService``.

A province node asks for a household to be verified (``RequestVerification``: the members by ID
number, the household's consent, the purpose, the item classes). The hub checks the request
(scope ``verification:request``, a purpose allowed under it, a valid and unexpired consent, at most
20 valid ID numbers), stores it sealed and answers at once with the verification's id. Then it asks
every source at the same time: the first node of each province in the federation directory and
every department source (``department = "..."`` in the directory), each through
``ProvinceNodeService.AnswerVerification`` with its own deadline (``FederationSettings.
verification_seconds``; UNAVAILABLE retried with backoff inside it). Sources answer from their own
data (:mod:`gateway.node.verification`); nothing is copied to the centre but the report.

**The report** lists every source with what it did — answered (with how many items), timed out,
refused (its reason), failed — and every item (member, class, sensitivity, the source's reference),
so that an appeal can be traced to the source and to the entries of both exchange logs. Items a
source returns outside the request (another member, a class not asked for) are discarded and
counted. The report is sealed at rest (it may hold sensitive amounts); when it is stored the
requesting province gets a ``verification-completed`` event on its notification stream, in the
same transaction. ``GetVerification`` returns the state and, once complete, the report, to nodes
of the requesting province only (anyone else: NOT_FOUND, so that ids reveal nothing).

**Idempotency.** A repeated request with the same ``request_id`` from the same province returns the
same verification (``replayed``); the same id with another household, consent, purpose or classes
is refused (``REQUEST_ID_REUSED``).

**Audit.** Besides the entries of the two calls, each leg is an entry of the hub's exchange log:
method ``/hutong.v1.ProvinceNodeService/AnswerVerification``, caller and province the requesting
node, subject the source asked, request id ``<verification id>/<n>`` (the same id is sent to the
source, whose own log records it), outcome the leg's status code, counts of items; and the
completion is one more (``/hutong.hub.Verifier/CompleteVerification``). Every entry carries the
members' person keys, never their numbers.

**Restarts and replicas.** The replica that starts a verification holds it for a lease (the
sources' deadline and a margin); a pending verification whose lease ran out — its replica
stopped — is claimed by another replica (or this one after a restart) and its sources are asked
again: sources answer idempotently from their data, and the report is written once (completing
an already complete verification changes nothing and pushes no second event).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import secrets
import time
from collections import Counter
from typing import Any

import grpc
import structlog

from gateway import errors
from gateway.domain.access import AccessPolicy, purpose_name
from gateway.domain.model import Purpose
from gateway.domain.policy import require_purpose
from gateway.domain.protection import FieldSealer, PersonKeyer
from gateway.domain.verification import (
    CONSENT_VALID_DAYS,
    Consent,
    ItemClass,
    Sensitivity,
    check_consent,
    default_sensitivity,
    item_classes_asked,
    member_id_numbers,
    today_in_china,
)
from gateway.hub.audit import AuditRecorder
from gateway.hub.convert import date_from_proto, timestamp_from_us
from gateway.hub.federation import DetailFetcher, NodeAddress
from gateway.hub.interceptors import CallInfo, current_call, current_caller
from gateway.rpc_status import error_from_rpc
from gateway.store.base import NodeRef
from gateway.store.sql import SqlStore
from gateway.store.verifications import COMPLETE, PENDING, StoredVerification
from hutong.v1 import node_pb2, verification_pb2, verification_pb2_grpc

__all__ = ["VerificationServicer", "Verifier"]

log = structlog.get_logger("hutong.hub")

_SCOPE = "verification:request"
_LEG_METHOD = "/hutong.v1.ProvinceNodeService/AnswerVerification"
_COMPLETE_METHOD = "/hutong.hub.Verifier/CompleteVerification"
#: Seconds between looks for pending verifications another replica left behind.
_RESUME_SECONDS = 15.0
_MAX_DESCRIPTION = 500
_MAX_REFERENCE = 128
_REFUSALS = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


def _now_us() -> int:
    return time.time_ns() // 1000


def _canonical(request: verification_pb2.RequestVerificationRequest) -> verification_pb2.RequestVerificationRequest:
    """The request checked and normalised: what is stored, digested and sent to the sources."""
    request_id = request.request_id.strip()
    if not 1 <= len(request_id) <= 128:
        raise errors.InvalidArgument(
            "request_id must be 1 to 128 characters", reason="REQUEST_ID_INVALID", field="request_id"
        )
    numbers = member_id_numbers([m.id_number for m in request.members])
    members = [
        verification_pb2.VerifiedMember(id_number=number, name=m.name.strip())
        for number, m in zip(numbers, request.members, strict=True)
    ]
    classes = [int(c) for c in sorted(item_classes_asked(request.item_classes))]
    canonical = verification_pb2.RequestVerificationRequest(
        request_id=request_id,
        members=members,
        purpose=request.purpose,
        item_classes=classes,  # type: ignore[arg-type]
    )
    canonical.consent.CopyFrom(request.consent)
    canonical.consent.consent_id = canonical.consent.consent_id.strip()
    canonical.consent.document_sha256 = canonical.consent.document_sha256.strip().lower()
    return canonical


def _consent_of(pb: verification_pb2.Consent, present: bool) -> Consent | None:
    if not present:
        return None
    return Consent(pb.consent_id, pb.document_sha256, date_from_proto(pb.signed_on, "consent.signed_on", ""))


class Verifier:
    """Starts verifications, asks their sources, writes their reports; resumes what others left."""

    def __init__(
        self,
        store: SqlStore,
        keyer: PersonKeyer,
        sealer: FieldSealer,
        audit: AuditRecorder,
        fetcher: DetailFetcher | None,
        *,
        consent_valid_days: int = CONSENT_VALID_DAYS,
    ) -> None:
        self._store = store
        self._keyer = keyer
        self._sealer = sealer
        self._audit = audit
        self._fetcher = fetcher
        self.consent_valid_days = consent_valid_days
        self._running: dict[str, asyncio.Task[None]] = {}
        self._resumer: asyncio.Task[None] | None = None

    @property
    def _lease_us(self) -> int:
        seconds = self._fetcher.settings.verification_seconds if self._fetcher else 30.0
        return int((seconds * 2 + 10) * 1_000_000)

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self, caller: NodeRef, request: verification_pb2.RequestVerificationRequest, purpose: Purpose
    ) -> tuple[StoredVerification, bool]:
        """Check, store and start one verification; (it, whether the request id had started it already)."""
        canonical = _canonical(request)
        check_consent(
            _consent_of(canonical.consent, request.HasField("consent")),
            today=today_in_china(),
            valid_days=self.consent_valid_days,
        )
        if self._fetcher is None or not self._fetcher.directory.verification_sources():
            raise errors.FailedPrecondition(
                "this hub has no node directory to ask (hutong hub serve --node-directory)",
                reason="VERIFICATION_UNAVAILABLE",
            )
        body = canonical.SerializeToString(deterministic=True)
        verification_id = "vf-" + secrets.token_hex(12)
        now = _now_us()
        keys = tuple(self._keyer.person_key(m.id_number) for m in canonical.members)
        stored, replayed = await self._store.start_verification(
            StoredVerification(
                verification_id=verification_id,
                province=caller.province_code,
                node=caller.node_name,
                request_id=canonical.request_id,
                request_digest=hashlib.sha256(body).digest(),
                sealed_request=self._sealer.seal(body, verification_id.encode()),
                person_keys=keys,
                purpose=int(purpose),
                state=PENDING,
                created_at_us=now,
                lease_until_us=now + self._lease_us,
            )
        )
        if replayed and stored.request_digest != hashlib.sha256(body).digest():
            raise errors.InvalidArgument(
                f"request_id {canonical.request_id!r} already started another verification",
                reason="REQUEST_ID_REUSED",
                field="request_id",
            )
        if not replayed:
            self._start(stored, canonical)
        return stored, replayed

    async def get(
        self, caller: NodeRef, verification_id: str
    ) -> tuple[StoredVerification, verification_pb2.VerificationReport | None]:
        """A verification of the caller's province, with its report once complete."""
        stored = await self._store.verification(verification_id)
        if stored is None or stored.province != caller.province_code:
            raise errors.NotFound(
                f"no verification {verification_id!r} of province {caller.province_code}",
                reason="VERIFICATION_NOT_FOUND",
                field="verification_id",
            )
        if stored.state != COMPLETE or stored.sealed_report is None:
            return stored, None
        report = verification_pb2.VerificationReport.FromString(
            self._sealer.open(stored.sealed_report, stored.verification_id.encode())
        )
        return stored, report

    # -- asking the sources --------------------------------------------------------------------

    def _start(self, stored: StoredVerification, request: verification_pb2.RequestVerificationRequest) -> None:
        if stored.verification_id in self._running:
            return
        # A context of its own: the request's log context (its rpc, request id) is not this task's.
        task = asyncio.create_task(
            self._run(stored, request), name=f"verification-{stored.verification_id}", context=contextvars.Context()
        )
        self._running[stored.verification_id] = task
        task.add_done_callback(lambda _: self._running.pop(stored.verification_id, None))

    async def _run(self, stored: StoredVerification, request: verification_pb2.RequestVerificationRequest) -> None:
        assert self._fetcher is not None
        structlog.contextvars.bind_contextvars(verification_id=stored.verification_id, province=stored.province)
        started = _now_us()
        sources = self._fetcher.directory.verification_sources()
        legs = await asyncio.gather(
            *(self._ask(stored, request, node, f"{stored.verification_id}/{n}") for n, node in enumerate(sources))
        )
        report = verification_pb2.VerificationReport()
        report.started_at.CopyFrom(timestamp_from_us(started))
        for result, items in legs:
            report.sources.append(result)
            report.items.extend(items)
        report.completed_at.CopyFrom(timestamp_from_us(_now_us()))
        tally = Counter(r.outcome for r in report.sources)
        answered = tally[verification_pb2.SOURCE_OUTCOME_ANSWERED]
        summary = (
            f"household verification of {len(stored.person_keys)} member(s): {answered} of {len(sources)} sources "
            f"answered, {tally[verification_pb2.SOURCE_OUTCOME_TIMED_OUT]} timed out, "
            f"{tally[verification_pb2.SOURCE_OUTCOME_REFUSED]} refused, "
            f"{tally[verification_pb2.SOURCE_OUTCOME_FAILED]} failed; {len(report.items)} item(s)"
        )
        sealed = self._sealer.seal(report.SerializeToString(deterministic=True), stored.verification_id.encode())
        done = await self._store.complete_verification(stored.verification_id, sealed, summary)
        if done is None:
            return  # another replica completed it first
        await self._audit.record(
            self._call(stored, _COMPLETE_METHOD, stored.verification_id, subject="hub"),
            report.SerializeToString(deterministic=True),
            None,
        )
        log.info(
            "verification_completed",
            verification_id=stored.verification_id,
            province=stored.province,
            sources=len(sources),
            answered=answered,
            items=len(report.items),
        )

    def _call(self, stored: StoredVerification, method: str, request_id: str, *, subject: str) -> CallInfo:
        return CallInfo(
            method=method.rsplit("/", 1)[-1],
            request_id=request_id,
            started=time.perf_counter(),
            caller=NodeRef(stored.province, stored.node),
            full_method=method,
            subject=subject,
            purpose=purpose_name(Purpose(stored.purpose)),
            person_keys=set(stored.person_keys),
        )

    async def _ask(
        self,
        stored: StoredVerification,
        request: verification_pb2.RequestVerificationRequest,
        node: NodeAddress,
        leg_id: str,
    ) -> tuple[verification_pb2.SourceResult, list[verification_pb2.VerificationItem]]:
        """One source's leg: its answer (items checked against the request), or what went wrong; audited."""
        assert self._fetcher is not None
        result = verification_pb2.SourceResult(source_uri=node.uri, province_code=node.province_code)
        call = self._call(stored, _LEG_METHOD, leg_id, subject=node.uri)
        question = node_pb2.ProvinceNodeServiceAnswerVerificationRequest(
            verification_id=stored.verification_id,
            members=request.members,
            item_classes=request.item_classes,
            purpose=request.purpose,
            consent=request.consent,
            requester=node_pb2.Requester(
                node_uri=call.caller.uri if call.caller else "", province_code=stored.province
            ),
            hub_request_id=leg_id,
        )
        items: list[verification_pb2.VerificationItem] = []
        try:
            answer = await self._fetcher.answer_verification(node, question, leg_id)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            cause = error_from_rpc(code, exc.details(), exc.trailing_metadata())
            call.code = code.name
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                result.outcome = verification_pb2.SOURCE_OUTCOME_TIMED_OUT
                result.reason = f"no answer within {self._fetcher.settings.verification_seconds:g}s"
            elif code in _REFUSALS:
                result.outcome = verification_pb2.SOURCE_OUTCOME_REFUSED
                result.reason = f"{code.name} {cause.reason}: {cause.message}"
            else:
                result.outcome = verification_pb2.SOURCE_OUTCOME_FAILED
                result.reason = f"{code.name} {cause.reason}: {cause.message}"
            log.warning("verification_source_failed", source=node.uri, code=code.name, reason=cause.reason)
        else:
            items, discarded = self._checked(answer.items, request, node.uri)
            result.outcome = verification_pb2.SOURCE_OUTCOME_ANSWERED
            result.answer_id = answer.answer_id or leg_id
            if discarded:
                result.reason = f"{discarded} item(s) outside the request discarded"
            call.counts["discarded"] = discarded
        result.items = len(items)
        result.answered_at.CopyFrom(timestamp_from_us(_now_us()))
        call.counts["items"] = len(items)
        try:
            await self._audit.record(call, question.SerializeToString(deterministic=True), None)
        except errors.HutongError as exc:  # the log is down: the leg's answer is still reported
            log.error("verification_leg_not_audited", source=node.uri, reason=exc.reason)
        return result, items

    @staticmethod
    def _checked(
        answered: Any, request: verification_pb2.RequestVerificationRequest, source_uri: str
    ) -> tuple[list[verification_pb2.VerificationItem], int]:
        """The items that answer the request (right members, classes asked for), marked; and how many did not."""
        wanted = set(request.item_classes)
        members = len(request.members)
        kept: list[verification_pb2.VerificationItem] = []
        discarded = 0
        for item in answered:
            if not 0 <= item.member_index < members or item.item_class not in wanted or item.amount_fen < 0:
                discarded += 1
                continue
            out = verification_pb2.VerificationItem()
            out.CopyFrom(item)
            out.source_uri = source_uri
            out.description = out.description[:_MAX_DESCRIPTION]
            out.reference = out.reference[:_MAX_REFERENCE]
            if int(out.sensitivity) == Sensitivity.UNSPECIFIED:
                out.sensitivity = default_sensitivity(ItemClass(out.item_class))  # type: ignore[assignment]
            kept.append(out)
        return kept, discarded

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Resume, now and then, pending verifications nobody holds (a replica stopped mid-way)."""
        if self._resumer is None and self._fetcher is not None:
            self._resumer = asyncio.create_task(self._resume_loop(), name="verification-resume")

    async def resume(self) -> int:
        """Claim and restart pending verifications whose lease ran out; how many."""
        claimed = await self._store.claim_pending_verifications(lease_us=self._lease_us)
        for stored in claimed:
            request = verification_pb2.RequestVerificationRequest.FromString(
                self._sealer.open(stored.sealed_request, stored.verification_id.encode())
            )
            log.info("verification_resumed", verification_id=stored.verification_id, province=stored.province)
            self._start(stored, request)
        return len(claimed)

    async def _resume_loop(self) -> None:
        while True:
            try:
                await self.resume()
            except errors.HutongError as exc:
                log.warning("verification_resume_failed", reason=exc.reason, error=str(exc))
            await asyncio.sleep(_RESUME_SECONDS)

    async def stop(self) -> None:
        """Stop asking; what is pending is resumed by whichever replica runs next."""
        tasks = [t for t in (self._resumer, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._resumer = None

    async def wait(self, verification_id: str) -> None:
        """Until the verification's sources are all done here (tests, the CLI's --wait on an embedded hub)."""
        task = self._running.get(verification_id)
        if task is not None:
            await asyncio.shield(task)


class VerificationServicer(verification_pb2_grpc.VerificationServiceServicer):
    """``hutong.v1.VerificationService``: thin; :class:`Verifier` does the work."""

    def __init__(self, verifier: Verifier, policy: AccessPolicy) -> None:
        self._verifier = verifier
        self._policy = policy

    async def RequestVerification(
        self, request: verification_pb2.RequestVerificationRequest, context: grpc.aio.ServicerContext
    ) -> verification_pb2.RequestVerificationResponse:
        """Start a verification (or find the one this request id started)."""
        purpose = require_purpose(request.purpose)
        call = current_call()
        call.purpose = purpose_name(purpose)
        self._policy.require_purpose(_SCOPE, purpose)
        stored, replayed = await self._verifier.request(current_caller(), request, purpose)
        call.person_keys.update(stored.person_keys)
        call.counts.update(
            members=len(stored.person_keys), classes=len(set(request.item_classes)), replayed=int(replayed)
        )
        return verification_pb2.RequestVerificationResponse(
            verification_id=stored.verification_id,
            state=stored.state,  # type: ignore[arg-type]
            replayed=replayed,
        )

    async def GetVerification(
        self, request: verification_pb2.GetVerificationRequest, context: grpc.aio.ServicerContext
    ) -> verification_pb2.GetVerificationResponse:
        """The state and, once complete, the report."""
        stored, report = await self._verifier.get(current_caller(), request.verification_id.strip())
        call = current_call()
        call.purpose = purpose_name(Purpose(stored.purpose))
        call.person_keys.update(stored.person_keys)
        response = verification_pb2.GetVerificationResponse(
            verification_id=stored.verification_id,
            state=stored.state,  # type: ignore[arg-type]
        )
        if report is not None:
            response.report.CopyFrom(report)
            call.counts["items"] = len(report.items)
        return response
