"""Random and mutated protobuf requests through a real hub: every answer must be a proper gRPC status.

A hub is started in this process exactly as the tests start one (demo PKI, mTLS, SQLite, port 0),
with a policy granting the fuzzing node every scope, so that requests get past authorization to
the servicers. Each request body is raw bytes sent to one of the hub's RPCs through a raw
channel (``request_serializer=None``), with a valid access token: a random message built from
the method's descriptor, such a message with its bytes mutated, or random bytes; now and then
the token itself is mangled. Answers are classified:

* any status but INTERNAL and UNKNOWN is fine (INVALID_ARGUMENT, NOT_FOUND, ... and OK);
* INTERNAL or UNKNOWN betrays an unhandled exception (the hub logs ``rpc_unexpected_error``,
  whose exception names the bug) unless it is grpc.aio's own refusal of bytes that do not decode
  as the request message (UNKNOWN, before any of the hub's code runs), which is counted apart
  (``undecodable``) and pinned by an expected failure in the tests; INTERNAL from gRPC's core on
  the client's side with nothing logged by the hub (a large request still being written when the
  hub refused it) is not the hub's answer, and is counted apart too (``transport``);
* a call still running after :data:`CALL_TIMEOUT` is a hang.

After every :data:`HEALTH_EVERY` requests, and at the end, the hub must still answer its health
check SERVING. ``python -m fuzz.live_server --messages N`` runs it alone; ``fuzz/run.py`` runs it
beside the parsers' targets. Cases in ``fuzz/regressions/live_server/*.json`` are replayed first:
those that still fail are known bugs, counted and not saved again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import random
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Iterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import FUZZ_DIR, signature, slug
from gateway.domain.access import SCOPES, AccessPolicy
from gateway.domain.identity import make_id_number
from gateway.hub.server import HubServer, HubSettings
from hutong.v1 import (
    audit_pb2,
    auth_pb2,
    auth_pb2_grpc,
    linkage_pb2,
    notification_pb2,
    query_pb2,
    records_pb2,
    signal_pb2,
    verification_pb2,
)
from pki import write_demo_pki

__all__ = ["CALL_TIMEOUT", "Case", "LiveReport", "Method", "fuzz_hub", "hub_methods", "live_hub", "replay"]

#: Seconds a call may take before it counts as a hang.
CALL_TIMEOUT = 10.0
#: Requests between two health checks.
HEALTH_EVERY = 50
#: How grpc.aio's server words its refusal of a body that does not decode as the method's message
#: (status UNKNOWN; the synchronous server says INTERNAL "Exception deserializing request!").
UNDECODABLE = ("Unexpected <class 'google.protobuf.message.DecodeError'>", "Exception deserializing request!")
NODE = "hutong://province/440000/node/gz-01"
REGRESSIONS = FUZZ_DIR / "regressions" / "live_server"
CRASHES = FUZZ_DIR / "crashes" / "live_server"
_FILES = (audit_pb2, auth_pb2, linkage_pb2, notification_pb2, query_pb2, records_pb2, signal_pb2, verification_pb2)
_BAD = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
#: How the hub (its interceptor) and grpc.aio's handler wrapper word an error raised on the server.
_FROM_SERVER = ("internal error; the", "Unexpected <class")


@dataclass(frozen=True)
class Method:
    """One RPC of the hub, from its descriptor."""

    path: str
    request: type[Any]
    client_streaming: bool
    server_streaming: bool


def hub_methods() -> list[Method]:
    """Every RPC of the services the hub serves (``hutong.v1``, the node's ProvinceNodeService excepted)."""
    methods = []
    for module in _FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.append(
                    Method(
                        f"/{service.full_name}/{method.name}",
                        message_factory.GetMessageClass(method.input_type),
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return methods


@dataclass(frozen=True)
class Case:
    """One request: the method, the body, and the authorization header when it is not the valid token."""

    method: str
    body: bytes
    authorization: str | None = None

    def to_json(self) -> str:
        """The case as kept in ``fuzz/regressions/live_server/``."""
        obj: dict[str, Any] = {"method": self.method, "body_hex": self.body.hex()}
        if self.authorization is not None:
            obj["authorization"] = self.authorization
        return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Case:
        """A case read back from :meth:`to_json`'s text."""
        obj = json.loads(text)
        return cls(obj["method"], bytes.fromhex(obj["body_hex"]), obj.get("authorization"))


@dataclass(frozen=True)
class Answer:
    """How the hub answered one case."""

    code: grpc.StatusCode
    details: str
    #: Exceptions the hub logged as unexpected while answering.
    unexpected: tuple[BaseException, ...] = ()
    #: Errors of the project's own that the hub mapped to INTERNAL (``StoreError``), as it logged them.
    internal: tuple[str, ...] = ()

    @property
    def violation(self) -> str | None:
        """The violation's signature, or None for a proper answer (``undecodable`` and ``transport`` are not
        violations of the hub: they are counted apart)."""
        if self.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return "hang: no answer within the call timeout"
        if self.code not in _BAD or self.undecodable:
            return None
        if self.unexpected:
            return f"{self.code.name}: {signature(self.unexpected[0])}"
        if self.internal:
            return f"{self.code.name}: {self.internal[0][:80]}"
        if self.details.startswith(_FROM_SERVER):
            return f"{self.code.name}: {self.details[:80]}"
        return None

    @property
    def transport(self) -> bool:
        """INTERNAL or UNKNOWN from gRPC's core on the client's side, the hub having logged nothing (a large
        request still being written when the hub refused it, for one): not an answer of the hub's."""
        return self.code in _BAD and not self.undecodable and self.violation is None

    @property
    def undecodable(self) -> bool:
        """Whether gRPC refused the body as not the method's message (UNKNOWN, not INVALID_ARGUMENT)."""
        return self.code in _BAD and self.details.startswith(UNDECODABLE) and not self.unexpected


# ----------------------------------------------------------------------------- request bodies

_STRINGS = (
    "",
    "a",
    "\x00",
    "😀",
    "低保",
    "x" * 10_000,
    "440000",
    "440106",
    "999999",
    NODE,
    "hutong://province/410000/node/zz-01",
    make_id_number("440106", dt.date(1985, 7, 15), 123),
    "44010619850715123X",
    "440106850715123",
    "duplicate-check",
    "eligibility-review",
    "-1",
    "%s%n",
    "' OR 1=1 --",
    "../../etc/passwd",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
)
_INTS = (0, 1, -1, 2, 7, 100, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 2**63 - 1, -(2**63), 2**64 - 1)
_FLOATS = (0.0, -0.0, 1.5, 1e308, float("inf"), float("-inf"), float("nan"))
_LIMITS = {
    pb_descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    pb_descriptor.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    pb_descriptor.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    pb_descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    pb_descriptor.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    pb_descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    pb_descriptor.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: Any, rng: random.Random) -> Any:
    kind = field.type
    if kind == field.TYPE_STRING:
        return rng.choice(_STRINGS)
    if kind == field.TYPE_BYTES:
        return rng.randbytes(rng.choice((0, 1, 16, 32, 33, 200)))
    if kind == field.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return rng.choice(_FLOATS)
    if kind == field.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [99, -1])
    low, high = _LIMITS[kind]
    return rng.choice([v for v in _INTS if low <= v <= high])


def random_message(cls: type[Any], rng: random.Random, depth: int = 0) -> Any:
    """A message of ``cls`` with random fields set (interesting strings and numbers, nested up to 3 deep)."""
    message = cls()
    for member in cls.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        try:
            _set_field(message, member, rng, depth)
        except (ValueError, TypeError):
            continue  # a value the field cannot hold (an unknown value of a closed enum)
    return message


def _set_field(message: Any, field: Any, rng: random.Random, depth: int) -> None:
    repeated = bool(field.is_repeated)
    count = rng.choice((0, 1, 2, 3, 40)) if repeated else 1
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            target = getattr(message, field.name)
            for _ in range(count):
                key = _scalar(key_field, rng)
                if value_field.message_type is not None:
                    if depth < 3:
                        sub_cls = message_factory.GetMessageClass(value_field.message_type)
                        target[key].CopyFrom(random_message(sub_cls, rng, depth + 1))
                else:
                    target[key] = _scalar(value_field, rng)
            return
        if depth >= 3:
            return
        sub = message_factory.GetMessageClass(field.message_type)
        if repeated:
            getattr(message, field.name).extend(random_message(sub, rng, depth + 1) for _ in range(count))
        else:
            getattr(message, field.name).CopyFrom(random_message(sub, rng, depth + 1))
        return
    if repeated:
        getattr(message, field.name).extend(_scalar(field, rng) for _ in range(count))
    else:
        setattr(message, field.name, _scalar(field, rng))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a few byte-level edits (flips, inserts, cuts, odd tags and lengths)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(7)
        position = rng.randint(0, len(out))
        if how == 0 and out:
            out[min(position, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif how == 1:
            out[position:position] = rng.randbytes(rng.randint(1, 8))
        elif how == 2:
            del out[position : position + rng.randint(1, 16)]
        elif how == 3:
            del out[position:]
        elif how == 4:  # a field of any number and wire type, with a length that lies
            tag = _varint(rng.randint(1, 40) << 3 | rng.choice((0, 1, 2, 5, 3, 4, 6, 7)))
            out[position:position] = tag + _varint(rng.choice((0, 1, 127, 2**31, 2**64 - 1)))
        elif how == 5 and out:
            start = rng.randrange(len(out))
            out[position:position] = out[start : start + rng.randint(1, 32)]
        else:
            out.extend(bytes(out))
    return bytes(out[: 1 << 20])


def random_case(methods: Sequence[Method], rng: random.Random) -> Case:
    """A request to a random method: a random message, a mutated one, or random bytes; sometimes a bad token."""
    method = rng.choice(methods)
    kind = rng.random()
    if kind < 0.45:
        body = random_message(method.request, rng).SerializeToString()
    elif kind < 0.9:
        body = mutate_bytes(random_message(method.request, rng).SerializeToString(), rng)
    else:
        body = rng.randbytes(rng.choice((0, 1, 5, 64, 1000)))
    authorization = None
    if rng.random() < 0.05:
        authorization = rng.choice(
            (
                "",
                "Bearer",
                "Bearer ",
                "Basic Zm9vOmJhcg==",
                "Bearer " + rng.randbytes(24).hex(),
                "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
                "Bearer a.b.c.d",
            )
        )
    return Case(method.path, body, authorization)


# ----------------------------------------------------------------------------- the live hub


@dataclass
class LiveHub:
    """A running hub and a channel to it as the node ``NODE``."""

    hub: HubServer
    channel: grpc.aio.Channel
    token: str
    methods: dict[str, Method]
    #: Events the hub logged (structlog's capture), cleared before each call.
    logs: list[MutableMapping[str, Any]]

    async def refresh_token(self) -> None:
        """A new access token carrying every scope (they last 15 minutes)."""
        stub = auth_pb2_grpc.AuthServiceStub(self.channel)
        response = await stub.IssueToken(auth_pb2.IssueTokenRequest(scopes=list(SCOPES)), timeout=CALL_TIMEOUT)
        self.token = response.access_token

    async def call(self, case: Case) -> Answer:
        """Send one case; how the hub answered."""
        method = self.methods[case.method]
        authorization = f"Bearer {self.token}" if case.authorization is None else case.authorization
        metadata = (("authorization", authorization),) if authorization else ()
        self.logs.clear()
        try:
            await self._send(method, case.body, metadata)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        else:
            code, details = grpc.StatusCode.OK, ""
        unexpected = tuple(
            e["exc_info"]
            for e in self.logs
            if e.get("event") == "rpc_unexpected_error" and isinstance(e.get("exc_info"), BaseException)
        )
        internal = tuple(str(e.get("error")) for e in self.logs if e.get("event") == "rpc_internal_error")
        return Answer(code, details, unexpected, internal)

    async def _send(self, method: Method, body: bytes, metadata: tuple[tuple[str, str], ...]) -> None:
        channel = self.channel
        if not method.client_streaming and not method.server_streaming:
            call = channel.unary_unary(method.path, request_serializer=None, response_deserializer=None)
            await call(body, timeout=CALL_TIMEOUT, metadata=metadata)
        elif not method.client_streaming:
            # A subscription stays open: its first answer (or its error) is enough.
            stream = channel.unary_stream(method.path, request_serializer=None, response_deserializer=None)
            responses = stream(body, timeout=CALL_TIMEOUT, metadata=metadata)
            try:
                await asyncio.wait_for(responses.read(), timeout=0.1)
            except TimeoutError:
                pass
            finally:
                responses.cancel()
        else:
            bidi = channel.stream_stream(method.path, request_serializer=None, response_deserializer=None)

            async def requests() -> AsyncIterator[bytes]:
                for chunk in (body, body[: len(body) // 2]):
                    yield chunk

            async for _ in bidi(requests(), timeout=CALL_TIMEOUT, metadata=metadata):
                pass

    async def healthy(self) -> bool:
        """Whether the hub still answers its health check SERVING."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


@asynccontextmanager
async def live_hub(directory: Path) -> AsyncIterator[LiveHub]:
    """A hub in ``directory`` (demo PKI, SQLite), and a channel with every scope's token, closed after."""
    pki = write_demo_pki(directory / "pki", provinces=(("440000", "gz-01"), ("410000", "zz-01")))
    every = {"scopes": list(SCOPES), "rate_per_second": 1_000_000, "burst": 1_000_000}
    policy = AccessPolicy.from_mapping({"nodes": {NODE: every}})
    settings = HubSettings(
        data_dir=directory / "hub",
        tls=pki.hub_tls,
        host="127.0.0.1",
        port=0,
        policy=policy,
        prepare_workers=0,
        crypto_suite="intl",
        grace_seconds=1.0,
        sqlite_synchronous="NORMAL",  # speed: power-loss durability is not what is under test
    )
    with structlog.testing.capture_logs() as logs:
        hub = HubServer(settings)
        await hub.start()
        tls = pki.nodes[NODE].tls
        credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
        channel = grpc.aio.secure_channel(f"localhost:{hub.port}", credentials)
        live = LiveHub(hub, channel, "", {m.path: m for m in hub_methods()}, logs)
        try:
            await live.refresh_token()
            yield live
        finally:
            await channel.close()
            await hub.stop(0)


async def replay(live: LiveHub, cases: Sequence[Case]) -> list[Answer]:
    """Each case's answer, in order."""
    return [await live.call(case) for case in cases]


# ----------------------------------------------------------------------------- the fuzzing loop


@dataclass
class LiveReport:
    """What a run of the live fuzzer saw."""

    messages: int = 0
    seconds: float = 0.0
    #: Status code name → answers.
    codes: dict[str, int] = field(default_factory=dict)
    #: Bodies grpc.aio refused as not the method's message (UNKNOWN rather than INVALID_ARGUMENT).
    undecodable: int = 0
    #: INTERNAL or UNKNOWN from gRPC's core on the client's side, with nothing logged by the hub.
    transport: int = 0
    #: New violations: signature → the saved case file (or the case itself when not saved).
    new: dict[str, str] = field(default_factory=dict)
    #: Known violations (from the regressions) → answers that hit them.
    known: dict[str, int] = field(default_factory=dict)
    #: Health checks that failed.
    unhealthy: int = 0

    def to_json(self) -> str:
        """The figures as ``fuzz/run.py`` reads them."""
        return json.dumps(self.__dict__, indent=2, ensure_ascii=False) + "\n"


def regression_cases() -> Iterator[tuple[Path, Case]]:
    """The saved cases of ``fuzz/regressions/live_server``."""
    for path in sorted(REGRESSIONS.glob("*.json")) if REGRESSIONS.is_dir() else ():
        yield path, Case.from_json(path.read_text(encoding="utf-8"))


def _save(case: Case, answer: Answer, sig: str) -> str:
    CRASHES.mkdir(parents=True, exist_ok=True)
    path = CRASHES / f"{slug(sig)}-{hashlib.sha256(case.to_json().encode()).hexdigest()[:12]}.json"
    path.write_text(case.to_json(), encoding="utf-8")
    report = [sig, f"{answer.code.name}: {answer.details}", ""]
    for exc in answer.unexpected:
        report.append("".join(traceback.format_exception(exc)))
    path.with_suffix(".txt").write_text("\n".join(report), encoding="utf-8")
    return str(path)


async def fuzz_hub(
    messages: int, *, seed: int, directory: Path | None = None, save: bool = True, seconds: float = float("inf")
) -> LiveReport:
    """Send ``messages`` random cases (seeded) to a fresh hub; new violations are saved under ``fuzz/crashes``."""
    report = LiveReport()
    rng = random.Random(seed)  # noqa: S311 - reproducible inputs, not secrets
    with tempfile.TemporaryDirectory(prefix="hutong-live-fuzz-") as scratch:
        async with live_hub(directory or Path(scratch)) as live:
            for _, case in regression_cases():
                sig = (await live.call(case)).violation
                if sig is not None:
                    report.known[sig] = 0
            methods = list(live.methods.values())
            started = time.monotonic()
            while report.messages < messages and time.monotonic() - started < seconds:
                case = random_case(methods, rng)
                answer = await live.call(case)
                report.messages += 1
                report.codes[answer.code.name] = report.codes.get(answer.code.name, 0) + 1
                report.undecodable += answer.undecodable
                report.transport += answer.transport
                sig = answer.violation
                if sig is not None and sig in report.known:
                    report.known[sig] += 1
                elif sig is not None and sig not in report.new:
                    report.new[sig] = _save(case, answer, sig) if save else case.to_json()
                if report.messages % HEALTH_EVERY == 0:
                    report.unhealthy += not await live.healthy()
                if report.messages % 2000 == 0:
                    await live.refresh_token()
            report.unhealthy += not await live.healthy()
            report.seconds = round(time.monotonic() - started, 2)
    if report.unhealthy:
        report.new["the hub stopped answering its health check SERVING"] = f"{report.unhealthy} failed checks"
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the live fuzzer from the command line; exit 1 on a new violation."""
    parser = argparse.ArgumentParser(prog="python -m fuzz.live_server", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=float("inf"))
    parser.add_argument("--stats", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    report = asyncio.run(fuzz_hub(args.messages, seed=args.seed, seconds=args.seconds))
    if args.stats is not None:
        args.stats.write_text(report.to_json(), encoding="utf-8")
    print(report.to_json())
    return 1 if report.new else 0


if __name__ == "__main__":
    sys.exit(main())
