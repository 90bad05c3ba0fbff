"""The hub's call pipeline: authenticate → authorize → bind log context → servicer → audit → map errors.

One :class:`HubInterceptor` wraps every ``hutong.v1`` method when it is registered. It runs an
ordered chain of :class:`CallStep` objects before the servicer and in reverse after it, and turns any
:class:`~gateway.errors.HutongError` into a status with ``ErrorInfo``; anything else becomes
INTERNAL with a logged traceback and no detail leaked to the caller. Then, before the answer
or the error leaves the hub, the :class:`Recorder` (the exchange log) appends the call's entry;
if it cannot, the call fails closed with the recorder's error instead of answering unaudited.

Request bodies are decoded leniently: one that is not the method's request message reaches the
pipeline (instead of grpc.aio answering UNKNOWN before any of it runs) and is refused, after the
caller is identified, as INVALID_ARGUMENT ``REQUEST_MALFORMED``, audited like any other refusal.
Client streams may also be given an idle limit: a stream whose caller sends nothing for
``stream_idle_seconds`` is ended with DEADLINE_EXCEEDED ``STREAM_IDLE``.

Health checking and reflection are not wrapped: they carry no personal data and must be
reachable by load balancers that hold no node identity.

A province node's federation server (:mod:`gateway.node.serve`) runs the same pipeline with its
own first step (only the hub's certificate is let in) and its own exchange log; ``role`` names
the server in the errors it sends.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError

from gateway import errors
from gateway.domain.access import AccessPolicy, TokenBucket
from gateway.hub.revocation import RevocationList
from gateway.hub.tokens import TokenService, certificate_thumbprint
from gateway.rpc_status import INSECURE_IDENTITY_KEY, REQUEST_ID_KEY, to_grpc_status
from gateway.store.base import NodeRef
from pki import NodeIdentity, identity_from_certificate

__all__ = [
    "Authenticator",
    "Authorizer",
    "CallInfo",
    "CallStep",
    "HubInterceptor",
    "LogContext",
    "Recorder",
    "current_call",
    "current_caller",
]

log = structlog.get_logger("hutong.hub")

_current: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("hutong_call")


@dataclass(slots=True)
class CallInfo:
    """What the pipeline knows about the call in progress."""

    method: str
    request_id: str
    started: float
    caller: NodeRef | None = None
    #: ``x5t#S256`` of the caller's client certificate (None in --insecure mode).
    thumbprint: str | None = None
    code: str = "OK"
    #: Further facts for the call's log line.
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``/package.Service/Method``.
    full_method: str = ""
    #: The access token's subject, once verified.
    subject: str = ""
    #: The purpose the call stated (policy name, ``duplicate-check``), set by the servicer.
    purpose: str = ""
    #: Named counts for the audit entry and the log line (records, persons, ...).
    counts: dict[str, int] = field(default_factory=dict)
    #: Person keys of every person the call touched, for the audit entry.
    person_keys: set[bytes] = field(default_factory=set)
    #: Digests of the batches of a request stream, in order (the entry's payload digest covers them).
    batch_digests: list[bytes] = field(default_factory=list)
    #: True for a client-streaming call, whose requests the pipeline does not see.
    streaming_request: bool = False


def current_call() -> CallInfo:
    """The call being served (inside a servicer)."""
    return _current.get()


def current_caller() -> NodeRef:
    """The authenticated caller of the call being served."""
    caller = _current.get().caller
    if caller is None:  # pragma: no cover - the Authenticator always runs first
        raise errors.Unauthenticated("caller is not authenticated", reason="CALLER_UNKNOWN")
    return caller


class Recorder(Protocol):
    """Appends the audit entry of a finished call, durably, before its answer is sent."""

    async def record(self, call: CallInfo, request: Any, response: Any) -> None:
        """Append the entry of ``call``; raise a HutongError if it cannot be made durable."""


class CallStep(Protocol):
    """One link of the chain: runs before the servicer, and after it in reverse order."""

    async def enter(self, call: CallInfo, context: grpc.aio.ServicerContext) -> None:
        """Check or enrich the call; raise a HutongError to refuse it."""

    def exit(self, call: CallInfo) -> None:
        """Observe the finished call (its code is set)."""


@dataclass(frozen=True, slots=True)
class _Peer:
    """What the hub keeps of a verified client certificate."""

    caller: NodeRef
    serial: int
    not_after: float
    thumbprint: str


class Authenticator:
    """Names the caller from its verified client certificate's ``hutong://`` SAN URI.

    TLS has already verified the chain to the ministry CA at the handshake; this step reads the
    identity (so the province is never taken from the request) and, on every call, refuses a
    certificate that has since expired or been revoked (the connection may be days old).
    """

    def __init__(
        self,
        *,
        insecure: bool = False,
        revocations: RevocationList | None = None,
        cache_size: int = 4096,
    ) -> None:
        self._insecure = insecure
        self._revocations = revocations
        self._cache: OrderedDict[bytes, _Peer] = OrderedDict()
        self._cache_size = cache_size

    async def enter(self, call: CallInfo, context: grpc.aio.ServicerContext) -> None:
        """Set ``call.caller`` or refuse with UNAUTHENTICATED."""
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if not pems:
            if self._insecure:
                call.caller = self._insecure_caller(context)
                return
            raise errors.Unauthenticated(
                "a client certificate issued by the ministry CA is required", reason="CLIENT_CERTIFICATE_MISSING"
            )
        pem: bytes = pems[0]
        peer = self._cache.get(pem)
        if peer is None:
            peer = self._parse(pem)
            self._cache[pem] = peer
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        # TLS verified this certificate's chain, so the identity it names is the ministry CA's word; an
        # expired or revoked one is refused below, but its entry still says who kept knocking (G6).
        call.caller = peer.caller
        call.thumbprint = peer.thumbprint
        if time.time() > peer.not_after:
            raise errors.Unauthenticated(
                "the client certificate has expired; renew it", reason="CLIENT_CERTIFICATE_EXPIRED"
            )
        if self._revocations is not None and self._revocations.is_revoked(peer.serial):
            raise errors.Unauthenticated(
                "the client certificate has been revoked by the ministry CA",
                reason="CLIENT_CERTIFICATE_REVOKED",
                metadata={"serial": f"{peer.serial:x}"},
            )

    @staticmethod
    def _parse(pem: bytes) -> _Peer:
        try:
            cert = x509.load_pem_x509_certificate(pem)
            identity = identity_from_certificate(cert)
        except (ValueError, errors.PkiError) as exc:
            reason = exc.reason if isinstance(exc, errors.HutongError) else "CLIENT_CERTIFICATE_INVALID"
            raise errors.Unauthenticated(
                f"client certificate carries no usable node identity: {exc}", reason=reason
            ) from exc
        return _Peer(
            NodeRef(identity.province_code, identity.node_name),
            cert.serial_number,
            cert.not_valid_after_utc.timestamp(),
            certificate_thumbprint(cert.public_bytes(serialization.Encoding.DER)),
        )

    @staticmethod
    def _insecure_caller(context: grpc.aio.ServicerContext) -> NodeRef:
        for key, value in context.invocation_metadata() or ():
            if key == INSECURE_IDENTITY_KEY and isinstance(value, str):
                try:
                    identity = NodeIdentity.parse_uri(value)
                except errors.PkiError as exc:
                    raise errors.Unauthenticated(str(exc), reason=exc.reason) from exc
                return NodeRef(identity.province_code, identity.node_name)
        raise errors.Unauthenticated(
            f"insecure mode: name the caller in metadata {INSECURE_IDENTITY_KEY}", reason="CALLER_UNKNOWN"
        )

    def exit(self, call: CallInfo) -> None:
        """Nothing to observe."""


class Authorizer:
    """Refuses a call unless the caller's rate allows it and it carries the scope its method needs.

    The rate is spent first, per certificate identity: a certified node sending calls without a
    valid token or scope is throttled (RESOURCE_EXHAUSTED ``RATE_LIMITED``) like any other, so its
    refusals cannot flood the exchange log at the speed of the network.

    With a :class:`~gateway.hub.tokens.TokenService`, the scope must be in the call's access
    token (``authorization: Bearer``), which must be bound to the caller's certificate, and the
    policy must still grant it (a policy change takes effect before old tokens expire). Methods
    mapped to ``""`` need no scope: they are authenticated by the client certificate alone
    (``IssueToken``). A method missing from ``scopes_by_method`` is refused, so a new RPC is
    closed until it is mapped.
    """

    def __init__(
        self,
        policy: AccessPolicy,
        scopes_by_method: Mapping[str, str],
        *,
        tokens: TokenService | None = None,
    ) -> None:
        self._policy = policy
        self._scopes = dict(scopes_by_method)
        self._tokens = tokens
        self._buckets: dict[str, TokenBucket] = {}

    async def enter(self, call: CallInfo, context: grpc.aio.ServicerContext) -> None:
        """Spend one unit of the caller's rate, then check the token and scope."""
        caller = current_caller()
        uri = caller.uri
        now = time.monotonic()
        bucket = self._buckets.get(uri)
        if bucket is None:
            node = self._policy.for_node(uri)
            bucket = self._buckets[uri] = TokenBucket(node.rate_per_second, node.burst, now)
        bucket.take(now)
        scope = self._scopes.get(call.method)
        if scope is None:
            raise errors.PermissionDenied(
                f"{call.method} is not mapped to a scope", reason="SCOPE_UNKNOWN", metadata={"method": call.method}
            )
        if scope:
            if self._tokens is not None:
                claims = self._tokens.verify(_bearer(context), call.thumbprint)
                call.subject = claims.subject
                if claims.subject != uri:
                    raise errors.Unauthenticated(
                        "the access token was issued to another node", reason="TOKEN_SUBJECT_MISMATCH"
                    )
                if scope not in claims.scopes:
                    raise errors.PermissionDenied(
                        f"this call needs scope {scope}, which the access token does not carry",
                        reason="SCOPE_MISSING",
                        metadata={"scope": scope, "node": uri},
                    )
            self._policy.require_scope(uri, scope)
            call.extra["scope"] = scope

    def exit(self, call: CallInfo) -> None:
        """Nothing to observe."""


def _bearer(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
            break
    raise errors.Unauthenticated(
        "an access token is required: call AuthService.IssueToken and send it as 'authorization: Bearer <token>'",
        reason="TOKEN_MISSING",
    )


class LogContext:
    """Binds node and province to every log line of the call; logs and counts its end.

    The rpc and request id are bound by :class:`HubInterceptor` before any step runs, so the line
    of a call refused by an earlier step still says which call it was; so does its caller, when
    the certificate named one.
    """

    def __init__(self, observe: Callable[[CallInfo, float], None] | None = None) -> None:
        #: Called with each finished call and its duration in seconds (the hub's metrics).
        self._observe = observe

    async def enter(self, call: CallInfo, context: grpc.aio.ServicerContext) -> None:
        """Bind the caller's identity to structlog's context."""
        structlog.contextvars.bind_contextvars(
            province=call.caller.province_code if call.caller else None,
            node=call.caller.node_name if call.caller else None,
        )

    def exit(self, call: CallInfo) -> None:
        """Log and count the finished call."""
        seconds = time.perf_counter() - call.started
        if self._observe is not None:
            self._observe(call, seconds)
        duration_ms = round(seconds * 1000, 3)
        level = log.info if call.code == "OK" else log.warning
        purpose = {"purpose": call.purpose} if call.purpose else {}
        # A call refused before enter() ran has no node bound; name the caller if it is known.
        who = {"province": call.caller.province_code, "node": call.caller.node_name} if call.caller else {}
        level("rpc_finished", code=call.code, duration_ms=duration_ms, **who, **purpose, **call.counts, **call.extra)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
    return os.urandom(16).hex()


class _Undecodable:
    """A request body that did not decode as its message: refused inside the pipeline, not by grpc.aio."""

    __slots__ = ("data", "message")

    def __init__(self, data: bytes, message: str) -> None:
        self.data = data
        #: The request message's full name, for the refusal.
        self.message = message


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning an :class:`_Undecodable` where it would raise.

    grpc.aio answers a deserializer's exception with UNKNOWN before the handler runs: no
    ErrorInfo, no audit entry, no log line with the caller.
    """
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message = getattr(descriptor, "full_name", "") or "request message"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RecursionError):
            return _Undecodable(bytes(data), message)

    return deserialize


def _decoded(request: Any) -> Any:
    """The request, or INVALID_ARGUMENT if its body did not decode."""
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument(
            f"the request body is not a valid {request.message}",
            reason="REQUEST_MALFORMED",
            metadata={"message": request.message},
        )
    return request


def _as_received(request: Any) -> Any:
    """What the audit entry's digest covers: the message, or the bytes that did not decode."""
    return request.data if isinstance(request, _Undecodable) else request


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """True once the caller's deadline is over: whatever the handler did, the caller saw DEADLINE_EXCEEDED."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class _Capture:
    """Stands in for a server to collect the handlers a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, generic_handlers: object) -> None:
        """Ignored: the same handlers arrive through add_registered_method_handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, dict(handlers)


class HubInterceptor:
    """Runs the call steps around every ``hutong.v1`` method and maps errors to statuses.

    The chain is applied once, when a service is registered (:meth:`register`), rather than
    through grpc.aio's per-call interceptor hook: that hook costs a coroutine and a new
    handler object on every call (measured: a third of CheckEnrollment's throughput).
    """

    def __init__(
        self,
        steps: Sequence[CallStep],
        *,
        recorder: Recorder | None = None,
        role: str = "hub",
        stream_idle_seconds: float | None = None,
    ) -> None:
        if stream_idle_seconds is not None and stream_idle_seconds <= 0:
            raise ValueError("stream_idle_seconds must be positive")
        self._steps = tuple(steps)
        self._recorder = recorder
        #: What the server is ("hub", "node"), for the messages of the errors it sends.
        self._role = role
        #: Longest wait for the next message of a client stream; None: no limit.
        self._stream_idle = stream_idle_seconds

    def register(
        self,
        server: grpc.aio.Server,
        add_to_server: Callable[[Any, Any], None],
        servicer: object,
        *,
        overrides: dict[str, grpc.RpcMethodHandler] | None = None,
    ) -> str:
        """Register a servicer through its generated ``add_*_to_server``, every method wrapped.

        ``overrides`` replaces generated handlers by name (e.g. to take raw request bytes).
        Returns the full service name.
        """
        capture = _Capture()
        add_to_server(servicer, capture)
        handlers = {**capture.handlers, **(overrides or {})}
        wrapped = {name: self.wrap(name, handler, service=capture.service) for name, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, wrapped),))
        server.add_registered_method_handlers(capture.service, wrapped)
        return capture.service

    def wrap(self, method: str, handler: grpc.RpcMethodHandler, *, service: str = "") -> grpc.RpcMethodHandler:
        """The handler with the call steps, error mapping and audit around its behaviour."""
        full = f"/{service}/{method}" if service else method
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            wrapped = self._wrap_stream(method, full, behavior, handler.request_streaming)
            return make(wrapped, _lenient(handler.request_deserializer), handler.response_serializer)
        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
        make = (
            grpc.stream_unary_rpc_method_handler if handler.request_streaming else grpc.unary_unary_rpc_method_handler
        )
        wrapped = self._wrap_unary(method, full, behavior, handler.request_streaming)
        return make(wrapped, _lenient(handler.request_deserializer), handler.response_serializer)

    def _begin(self, method: str, full: str, streaming: bool, context: grpc.aio.ServicerContext) -> CallInfo:
        structlog.contextvars.clear_contextvars()
        call = CallInfo(
            method=method,
            request_id=_request_id(context),
            started=time.perf_counter(),
            full_method=full,
            streaming_request=streaming,
        )
        _current.set(call)
        # Bound before any step runs: the log line of a refused call still names the call.
        structlog.contextvars.bind_contextvars(rpc=method, request_id=call.request_id)
        return call

    async def _requests(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A client stream's messages, each decoded, each awaited at most ``stream_idle_seconds``.

        A node that goes silent mid-stream would otherwise hold its stream, a reader task and
        pipeline slots until its connection dies. DEADLINE_EXCEEDED, not CANCELLED: the hub
        ended the call on a deadline of its own; everything acknowledged before stays applied.
        """
        incoming = aiter(requests)
        idle = self._stream_idle
        while True:
            try:
                if idle is None:
                    item = await anext(incoming)
                else:
                    async with asyncio.timeout(idle):
                        item = await anext(incoming)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise errors.DeadlineExceeded(
                    f"the stream sent nothing for {idle:g} seconds; the {self._role} ended it",
                    reason="STREAM_IDLE",
                    metadata={"idle_seconds": f"{idle:g}"},
                ) from None
            yield _decoded(item)

    async def _enter(self, call: CallInfo, context: grpc.aio.ServicerContext) -> None:
        for step in self._steps:
            await step.enter(call, context)

    async def _cancelled(self, call: CallInfo, request: Any) -> None:
        """Log and audit a call its caller gave up on: there is no answer to hold back."""
        call.code = "CANCELLED"
        for step in reversed(self._steps):
            step.exit(call)
        if self._recorder is not None:
            try:
                await self._recorder.record(call, request, None)
            except errors.HutongError as exc:
                log.error("audit_append_failed", error=str(exc), reason=exc.reason)

    async def _finish(
        self, call: CallInfo, context: grpc.aio.ServicerContext, request: Any, response: Any, failure: Exception | None
    ) -> None:
        """Audit the call, log it, and send its error, if any (aborting raises)."""
        if failure is None and _deadline_passed(context):
            # The deadline ended the call while the handler finished (grpc.aio ends a request stream
            # as if half-closed when it passes): the caller never sees this answer.
            await self._cancelled(call, request)
            return
        # Left open (THREAT_MODEL A-R1): a caller that resets its stream just before the hub's view
        # of the deadline, or a stream grpc itself ends (a message over the receive limit), also
        # looks half-closed here; grpc.aio reports the reset by cancelling this task only later,
        # so such a stream's own entry may say OK. Its batches' entries are exact either way.
        if failure is not None:
            call.code = _code_of(failure)
        if self._recorder is not None:
            try:
                await self._recorder.record(call, request, response)
            except errors.HutongError as exc:
                log.error("audit_append_failed", error=str(exc), reason=exc.reason)
                failure = errors.Unavailable(
                    f"the exchange log cannot record this call, so the {self._role} withholds its answer; retry later",
                    reason="AUDIT_UNAVAILABLE",
                )
                call.code = "UNAVAILABLE"
        for step in reversed(self._steps):
            step.exit(call)
        if failure is not None:
            await self._fail(context, failure)

    async def _fail(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, errors.HutongError):
            if _code_of(exc) == "INTERNAL":
                log.error("rpc_internal_error", error=repr(exc))
            await context.abort_with_status(to_grpc_status(exc))
        log.error("rpc_unexpected_error", exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error; the {self._role} logged it with this call's request id"
        )

    def _wrap_unary(self, method: str, full: str, behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, full, streaming, context)
            response = None
            failure: Exception | None = None
            try:
                await self._enter(call, context)
                response = await behavior(self._requests(request) if streaming else _decoded(request), context)
            except asyncio.CancelledError:
                await self._cancelled(call, _as_received(request))
                raise
            except Exception as exc:
                if _is_abort(exc):
                    raise
                failure = exc
            await self._finish(call, context, _as_received(request), response, failure)
            return response

        return wrapped

    def _wrap_stream(self, method: str, full: str, behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self._begin(method, full, streaming, context)
            failure: Exception | None = None
            try:
                await self._enter(call, context)
                async for response in behavior(self._requests(request) if streaming else _decoded(request), context):
                    yield response
            except (asyncio.CancelledError, GeneratorExit):
                await self._cancelled(call, _as_received(request))
                raise
            except Exception as exc:
                if _is_abort(exc):
                    raise
                failure = exc
            await self._finish(call, context, _as_received(request), None, failure)

        return wrapped


def _code_of(exc: Exception) -> str:
    if isinstance(exc, errors.HutongError) and exc.code_name in grpc.StatusCode.__members__:
        return exc.code_name
    return "INTERNAL"


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio signals context.abort() with an internal exception type; let it through.
    return type(exc).__name__ == "AbortError"
