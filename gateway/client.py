"""The async Python client for province systems (and the ``hutong`` CLI).

Any language can call the hub with only ``proto/``; this client adds what every Python
caller would otherwise write: mTLS channel set-up, errors as :class:`~gateway.errors.HutongError`
with the server's reason and field, retries of idempotent calls on UNAVAILABLE (tenacity:
exponential backoff with jitter under a total deadline), and windowed batch streaming.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import tenacity

from gateway import errors
from gateway.domain.model import Program, Purpose
from gateway.rpc_status import INSECURE_IDENTITY_KEY, REQUEST_ID_KEY, error_from_rpc
from hutong.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
    person_pb2,
    query_pb2,
    query_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
    signal_pb2,
    signal_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from pki import TlsMaterial

__all__ = ["HubClient", "RetryConfig"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryConfig:
    """When and how the client retries idempotent calls that failed UNAVAILABLE."""

    #: First wait between attempts, seconds.
    initial_backoff: float = 0.2
    #: Longest wait between attempts, seconds.
    max_backoff: float = 5.0
    #: Give up once this many seconds have passed since the first attempt.
    total_deadline: float = 30.0
    #: Give up after this many attempts.
    max_attempts: int = 8
    #: Deadline of each single attempt, seconds.
    attempt_timeout: float = 10.0


#: How often the client pings the hub while a call is open (the hub must accept pings this often).
_KEEPALIVE_TIME_MS = 20_000


def _purpose(value: int) -> person_pb2.Purpose.ValueType:
    return person_pb2.Purpose.ValueType(value)


def _programs(values: Sequence[int]) -> list[person_pb2.Program.ValueType]:
    return [person_pb2.Program.ValueType(v) for v in values]


#: What grpc.aio says when a stream's message could not be written because the connection went away
#: under it (grpc/grpc#36066): an INTERNAL made by the client's own runtime, not an answer of the hub.
_LOCAL_WRITE_FAILURE = "Internal error from Core"


def _translate(exc: grpc.aio.AioRpcError) -> errors.HutongError:
    if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _LOCAL_WRITE_FAILURE:
        return errors.Unavailable(
            "the connection to the hub was lost while sending; what was not acknowledged can be sent again",
            reason="CONNECTION_LOST",
        )
    return error_from_rpc(exc.code(), exc.details(), exc.trailing_metadata())


class HubClient:
    """A connection to the hub on behalf of one node."""

    def __init__(
        self,
        target: str,
        *,
        tls: TlsMaterial | None,
        server_name: str | None = None,
        insecure_identity: str | None = None,
        retry: RetryConfig = RetryConfig(),
        scopes: Sequence[str] = (),
    ) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            ("grpc.max_send_message_length", 32 * 1024 * 1024),
            # Ping the hub every 20 s while a call is open, and give the connection up when a ping goes
            # unanswered for 10 s: a connection the network forgot without a reset (NAT or firewall
            # state lost) would otherwise hold a stream until the kernel's retransmissions give up.
            # The hub accepts pings this often (gateway/hub/server.py).
            ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._open: Callable[[], grpc.aio.Channel]
        if tls is not None:
            creds = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
            self._open = lambda: grpc.aio.secure_channel(target, creds, options=options)
        elif insecure_identity is not None:
            self._open = lambda: grpc.aio.insecure_channel(target, options=options)
        else:
            raise errors.ConfigError("give TLS material, or an identity for an --insecure hub", field="tls")
        self._metadata: tuple[tuple[str, str], ...] = (
            ((INSECURE_IDENTITY_KEY, insecure_identity),) if tls is None and insecure_identity else ()
        )
        self._retry = retry
        self._scopes = list(scopes)
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._token_lock = asyncio.Lock()
        self._bind(self._open())

    def _bind(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self.records = records_pb2_grpc.RecordExchangeServiceStub(channel)
        self._sync_serialized = channel.stream_stream(
            "/hutong.v1.RecordExchangeService/SyncRecords",
            request_serializer=None,  # the requests are bytes already
            response_deserializer=records_pb2.SyncRecordsResponse.FromString,
        )
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.queries = query_pb2_grpc.AssistanceQueryServiceStub(channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(channel)
        self.notifications = notification_pb2_grpc.NotificationServiceStub(channel)
        self.signals = signal_pb2_grpc.SignalServiceStub(channel)
        self.verifications = verification_pb2_grpc.VerificationServiceStub(channel)

    async def reconnect(self) -> None:
        """Give up the current connection (calls on it end) and open a new one for the next calls.

        For a connection that still looks open but carries nothing (a stream unacknowledged past
        its deadline): gRPC keeps using a transport until a keepalive ping fails.
        """
        old = self._channel
        self._bind(self._open())
        await old.close()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata a raw stub call on this node's behalf needs (its current access token)."""
        try:
            return await self._md()
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc

    async def _md(self, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
        """Metadata for a call: identity (insecure mode), a current access token, request id."""
        md = (*self._metadata, ("authorization", f"Bearer {await self._access_token()}"))
        return (*md, (REQUEST_ID_KEY, request_id)) if request_id else md

    async def _access_token(self) -> str:
        """A token valid for a while yet; asks the hub for a new one at 80 % of its lifetime."""
        if self._token is None or time.monotonic() >= self._token_refresh_at:
            async with self._token_lock:
                if self._token is None or time.monotonic() >= self._token_refresh_at:
                    response = await self.auth.IssueToken(
                        auth_pb2.IssueTokenRequest(scopes=self._scopes),
                        timeout=self._retry.attempt_timeout,
                        metadata=self._metadata,
                    )
                    self._token = response.access_token
                    self._token_refresh_at = time.monotonic() + 0.8 * response.expires_in
        return self._token

    async def _idempotent(
        self, call: Callable[[tuple[tuple[str, str], ...]], Awaitable[T]], request_id: str | None = None
    ) -> T:
        r = self._retry
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.UNAVAILABLE
            ),
            wait=tenacity.wait_random_exponential(multiplier=r.initial_backoff, max=r.max_backoff),
            stop=tenacity.stop_after_delay(r.total_deadline) | tenacity.stop_after_attempt(r.max_attempts),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await call(await self._md(request_id))
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- household verification ------------------------------------------------------------

    async def request_verification(
        self, request: verification_pb2.RequestVerificationRequest
    ) -> verification_pb2.RequestVerificationResponse:
        """Start a household verification; safe to retry (the hub answers a repeated request_id the same)."""
        return await self._idempotent(
            lambda md: self.verifications.RequestVerification(
                request, timeout=self._retry.attempt_timeout, metadata=md
            ),
            request.request_id or None,
        )

    async def get_verification(self, verification_id: str) -> verification_pb2.GetVerificationResponse:
        """A verification's state and, once complete, its report."""
        request = verification_pb2.GetVerificationRequest(verification_id=verification_id)
        return await self._idempotent(
            lambda md: self.verifications.GetVerification(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    # -- queries -----------------------------------------------------------------------------

    async def check_enrollment(
        self, id_number: str, purpose: Purpose, programs: Sequence[Program] = ()
    ) -> query_pb2.CheckEnrollmentResponse:
        """Whether a person is enrolled, per programme, with the holding provinces."""
        request = query_pb2.CheckEnrollmentRequest(
            id_number=id_number, purpose=_purpose(purpose), programs=_programs(programs)
        )
        return await self._idempotent(
            lambda md: self.queries.CheckEnrollment(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    async def batch_check_enrollment(
        self, id_numbers: Sequence[str], purpose: Purpose, programs: Sequence[Program] = ()
    ) -> query_pb2.BatchCheckEnrollmentResponse:
        """CheckEnrollment for up to 1,000 persons."""
        request = query_pb2.BatchCheckEnrollmentRequest(
            id_numbers=id_numbers, purpose=_purpose(purpose), programs=_programs(programs)
        )
        return await self._idempotent(
            lambda md: self.queries.BatchCheckEnrollment(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    async def lookup_person(
        self, id_number: str, purpose: Purpose, *, page_size: int = 0, page_token: str = ""
    ) -> query_pb2.LookupPersonResponse:
        """A person's enrollments across provinces, filtered by purpose (one page)."""
        request = query_pb2.LookupPersonRequest(
            id_number=id_number, purpose=_purpose(purpose), page_size=page_size, page_token=page_token
        )
        return await self._idempotent(
            lambda md: self.queries.LookupPerson(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    async def fetch_record_detail(
        self, id_number: str, purpose: Purpose, *, province_code: str = ""
    ) -> query_pb2.FetchRecordDetailResponse:
        """A person's full records from the holding provinces' nodes (scope query:detail), filtered by purpose.

        A province whose node did not answer is a ``failures`` entry of the response, not an error.
        The call's deadline (``attempt_timeout``) is the time the hub gives the nodes.
        """
        request = query_pb2.FetchRecordDetailRequest(
            id_number=id_number, purpose=_purpose(purpose), province_code=province_code
        )
        return await self._idempotent(
            lambda md: self.queries.FetchRecordDetail(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    # -- audit log ---------------------------------------------------------------------------

    async def get_checkpoint(self) -> audit_pb2.GetCheckpointResponse:
        """The newest signed checkpoint of the hub's exchange log (scope audit:read)."""
        request = audit_pb2.GetCheckpointRequest()
        return await self._idempotent(
            lambda md: self.audit.GetCheckpoint(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    async def list_audit_entries(
        self, request: audit_pb2.ListAuditEntriesRequest
    ) -> audit_pb2.ListAuditEntriesResponse:
        """One page of exchange-log entries."""
        return await self._idempotent(
            lambda md: self.audit.ListAuditEntries(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    async def inclusion_proof(self, index: int, tree_size: int = 0) -> audit_pb2.GetInclusionProofResponse:
        """The audit path of entry ``index`` in the tree of ``tree_size`` (0: the newest checkpoint's)."""
        request = audit_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size)
        return await self._idempotent(
            lambda md: self.audit.GetInclusionProof(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    async def consistency_proof(self, first: int, second: int = 0) -> audit_pb2.GetConsistencyProofResponse:
        """The proof that the tree of ``first`` entries is a prefix of the tree of ``second`` (0: newest)."""
        request = audit_pb2.GetConsistencyProofRequest(first_tree_size=first, second_tree_size=second)
        return await self._idempotent(
            lambda md: self.audit.GetConsistencyProof(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    # -- the closed loop ---------------------------------------------------------------------

    async def subscribe(self, cursor: str = "") -> AsyncGenerator[notification_pb2.Event, None]:
        """The province's events after ``cursor`` (empty: after the last acknowledged), then new ones.

        Runs until the caller stops iterating; a broken stream raises a HutongError (subscribe again
        from the last event handled).
        """
        request = notification_pb2.SubscribeRequest(cursor=cursor)
        async for response in self._stream(lambda md: self.notifications.Subscribe(request, metadata=md)):
            yield response.event

    async def acknowledge_events(self, event_ids: Sequence[str]) -> notification_pb2.AcknowledgeEventsResponse:
        """Tell the hub these events were delivered to the province's system."""
        request = notification_pb2.AcknowledgeEventsRequest(event_ids=list(event_ids))
        return await self._idempotent(
            lambda md: self.notifications.AcknowledgeEvents(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    async def report_outcome(
        self, request_id: str, event_id: str, outcome: int, reason: str = ""
    ) -> notification_pb2.ReportOutcomeResponse:
        """Report what the province did about an event; safe to retry with the same request_id."""
        request = notification_pb2.ReportOutcomeRequest(
            request_id=request_id,
            event_id=event_id,
            outcome=notification_pb2.EventOutcome.ValueType(outcome),
            reason=reason,
        )
        return await self._idempotent(
            lambda md: self.notifications.ReportOutcome(request, timeout=self._retry.attempt_timeout, metadata=md),
            request_id,
        )

    async def submit_signals(
        self, request_id: str, signals: Iterable[signal_pb2.Signal]
    ) -> signal_pb2.SubmitSignalsResponse:
        """Submit a department's risk signals (scope signals:write); safe to retry with the same request_id."""
        request = signal_pb2.SubmitSignalsRequest(request_id=request_id, signals=list(signals))
        return await self._idempotent(
            lambda md: self.signals.SubmitSignals(request, timeout=self._retry.attempt_timeout, metadata=md),
            request_id,
        )

    # -- records -----------------------------------------------------------------------------

    async def get_sync_state(self) -> records_pb2.GetSyncStateResponse:
        """What the hub holds for this node."""
        request = records_pb2.GetSyncStateRequest()
        return await self._idempotent(
            lambda md: self.records.GetSyncState(request, timeout=self._retry.attempt_timeout, metadata=md)
        )

    async def retire_records(
        self, request_id: str, retirements: Iterable[records_pb2.RecordRetirement]
    ) -> records_pb2.RetireRecordsResponse:
        """Retire records; safe to retry with the same request_id."""
        request = records_pb2.RetireRecordsRequest(request_id=request_id, retirements=list(retirements))
        return await self._idempotent(
            lambda md: self.records.RetireRecords(request, timeout=self._retry.attempt_timeout, metadata=md),
            request_id,
        )

    async def sync(
        self,
        batches: Iterable[records_pb2.SyncRecordsRequest] | AsyncIterable[records_pb2.SyncRecordsRequest],
        *,
        window: int = 4,
    ) -> AsyncIterator[records_pb2.SyncRecordsResponse]:
        """Stream batches and yield their acknowledgements in order.

        At most ``window`` batches are unacknowledged at any time. A broken stream raises a
        HutongError; batches not yet acknowledged can be resent with the same batch_id.
        """
        if window < 1:
            raise errors.InvalidArgument("window must be at least 1", field="window")
        credits = asyncio.Semaphore(window)

        async def requests() -> AsyncIterator[bytes]:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    await credits.acquire()
                    yield batch.SerializeToString()
            else:
                for batch in batches:
                    await credits.acquire()
                    yield batch.SerializeToString()

        async for response in self.sync_serialized(requests()):
            credits.release()
            yield response

    async def sync_serialized(
        self, requests: AsyncIterable[bytes]
    ) -> AsyncGenerator[records_pb2.SyncRecordsResponse, None]:
        """SyncRecords over requests already serialized, acknowledgements in order; the caller paces the stream.

        The node's outbox keeps each batch as the bytes it sends, so a resend is the same batch byte for byte.
        """
        async for response in self._stream(lambda md: self._sync_serialized(requests, metadata=md)):
            yield response

    async def _stream(self, open_call: Callable[[tuple[tuple[str, str], ...]], Any]) -> AsyncGenerator[Any, None]:
        """The responses of a server-streaming call opened with this node's metadata; errors as HutongError.

        Not retried: a stream's caller knows where to resume (a cursor, the first unacknowledged batch).
        """
        try:
            metadata = await self._md()
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        call = open_call(metadata)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        finally:
            call.cancel()
