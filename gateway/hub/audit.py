"""The hub's side of the exchange log: its checkpoint key, the entry of every call, signed checkpoints.

* :class:`AuditKey` — the Ed25519 note key that signs checkpoints, ``audit-note.key`` in the data
  directory (mode 0600, a C2SP signer key string). Its key name is the log's *origin*, fixed
  when the key is made. With TLS, the hub writes ``audit-key-binding.json`` at every start:
  the verifier key, signed with the hub's certificate key, so auditors who trust the ministry
  CA can trust the checkpoints (see :mod:`gateway.audit.binding`).
* :class:`AuditRecorder` — builds one :class:`~gateway.audit.AuditEntry` per call (and one per
  SyncRecords batch, committed with the batch) and appends it before the call's answer leaves
  the hub. Concurrent calls share one durable write (group commit).
* Checkpoints: signed every ``checkpoint_seconds`` when the log grew, at start when entries were
  left unsigned by a crash, and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import (
    AuditEntry,
    HashFn,
    KeyInvalid,
    NoteVerifier,
    encode_signer_key,
    encode_verifier_key,
    parse_signer_key,
    sign_checkpoint,
)
from gateway.audit.archive import hash_function
from gateway.audit.binding import bind_key
from gateway.domain.protection import CryptoSuite
from gateway.errors import ConfigError, HutongError
from gateway.hub.interceptors import CallInfo
from gateway.hub.keys import KEYS_FILE, load_or_create_keys, require_private
from gateway.store.base import BatchAck, Store
from gateway.store.sqlite_audit import StoreAuditSource
from pki import TlsMaterial
from pki.operator import write_public_pem, write_secret_file

__all__ = [
    "AUDIT_KEY_FILE",
    "KEY_BINDING_FILE",
    "AuditKey",
    "AuditRecorder",
    "default_origin",
    "log_hash_name",
    "open_audit_source",
    "payload_digest",
]

log = structlog.get_logger("hutong.audit")

AUDIT_KEY_FILE = "audit-note.key"
KEY_BINDING_FILE = "audit-key-binding.json"
_ORIGIN_SUFFIX = "/hutong-audit"


def _now_us() -> int:
    return time.time_ns() // 1000


def default_origin(tls: TlsMaterial | None) -> str:
    """``<hub DNS name or address>/hutong-audit``, from the hub certificate; ``localhost/...`` without one."""
    if tls is not None:
        cert = x509.load_pem_x509_certificate(tls.cert_chain_pem)
        with contextlib.suppress(x509.ExtensionNotFound):
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
            if names:
                return names[0] + _ORIGIN_SUFFIX
    return "localhost" + _ORIGIN_SUFFIX


@dataclass(frozen=True)
class AuditKey:
    """The key that signs the log's checkpoints; its name is the log's origin."""

    origin: str
    private_key: Ed25519PrivateKey

    @property
    def verifier(self) -> NoteVerifier:
        """The public side, for verifying checkpoints."""
        return NoteVerifier.of(self.origin, self.private_key.public_key())

    @property
    def verifier_key(self) -> str:
        """The C2SP verifier key string (``<origin>+<hash>+<key>``): what auditors pin."""
        return encode_verifier_key(self.origin, self.private_key.public_key())

    @classmethod
    def load_or_create(cls, data_dir: Path, *, origin: str | None, default_origin: str) -> AuditKey:
        """Read ``audit-note.key``, creating it on first start for ``origin`` (or ``default_origin``).

        The origin is the log's permanent name: with ``origin`` given, a key file made for
        another origin is refused rather than silently starting a second log under a new name.
        """
        path = data_dir / AUDIT_KEY_FILE
        if not path.exists():
            name = origin or default_origin
            key = cls(name, Ed25519PrivateKey.generate())
            try:
                text = encode_signer_key(name, key.private_key)
            except KeyInvalid as exc:
                raise ConfigError(
                    f"audit origin {name!r} is not a valid log name: {exc}", reason="AUDIT_ORIGIN_INVALID",
                    field="audit_origin",
                ) from exc  # fmt: skip
            data_dir.mkdir(parents=True, exist_ok=True)
            write_secret_file(path, (text + "\n").encode(), field="audit_key_file")
            log.info("audit_key_created", origin=name, verifier_key=key.verifier_key)
            return key
        require_private(path)
        try:
            name, private_key = parse_signer_key(path.read_text(encoding="utf-8").strip())
        except (KeyInvalid, ValueError) as exc:
            raise ConfigError(f"{path} is not a valid audit key file: {exc}", reason="KEY_FILE_INVALID") from exc
        if origin is not None and name != origin:
            raise ConfigError(
                f"{path} signs the log {name!r}, but the hub is configured for {origin!r}; a log's origin"
                f" never changes. Configure audit_origin = {name!r}",
                reason="AUDIT_ORIGIN_MISMATCH",
                field="audit_origin",
                metadata={"key_file_origin": name, "configured_origin": origin},
            )
        return cls(name, private_key)

    def sign(self, size: int, root: bytes, time_us: int) -> str:
        """The signed checkpoint note of ``size`` and ``root`` at ``time_us``."""
        return sign_checkpoint(self.origin, size, root, self.origin, self.private_key, time_us=time_us)

    def write_binding(self, data_dir: Path, tls: TlsMaterial) -> bytes:
        """Sign the key binding with the hub's certificate key and write it; returns the document."""
        document = bind_key(
            self.verifier_key, self.origin, cert_chain_pem=tls.cert_chain_pem, private_key_pem=tls.private_key_pem
        )
        write_public_pem(data_dir / KEY_BINDING_FILE, document, field="key_binding", overwrite=True)
        return document


def open_audit_source(data_dir: Path, store_url: str = "") -> StoreAuditSource:
    """The exchange log of the hub with this data directory and ``store.url``, read-only, for ``hutong audit export``.

    The database is the one ``store_url`` names (empty: SQLite in ``data_dir``); the key files
    that name and vouch for the log are always in ``data_dir``.
    """
    from gateway.hub.config import store_for, store_location  # the config module imports this one

    for name in (KEYS_FILE, AUDIT_KEY_FILE):
        if not (data_dir / name).exists():
            raise ConfigError(
                f"{data_dir} holds no {name}: is it a hub's data directory, and has the hub run?",
                reason="FILE_MISSING",
                field="hub.data_dir",
            )
    database = store_location(store_url, data_dir).sqlite_path
    if database is not None and not database.exists():  # connecting would create an empty one
        raise ConfigError(
            f"no hub database at {database}: has the hub run?",
            reason="FILE_MISSING",
            field="store.url" if store_url else "hub.data_dir",
        )
    hash_name = log_hash_name(load_or_create_keys(data_dir).suite)
    key = AuditKey.load_or_create(data_dir, origin=None, default_origin="")
    binding_path = data_dir / KEY_BINDING_FILE
    return StoreAuditSource.open(
        store_for(store_url, data_dir, audit_hash=hash_function(hash_name)).engine,
        origin=key.origin,
        hash_name=hash_name,
        verifier_key=key.verifier_key,
        key_binding=binding_path.read_bytes() if binding_path.exists() else None,
    )


def _serialized(message: Any) -> bytes:
    if message is None:
        return b""
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message)
    data: bytes = message.SerializeToString(deterministic=True)
    return data


def payload_digest(hash_fn: HashFn, request: Any, response: Any) -> bytes:
    """``H(H(request) || H(response))`` over the wire bytes (deterministic serialisation)."""
    return hash_fn(hash_fn(_serialized(request)) + hash_fn(_serialized(response)))


class AuditRecorder:
    """Appends the audit entries of the hub's calls and signs checkpoints."""

    def __init__(self, store: Store, key: AuditKey, hash_name: str, *, checkpoint_seconds: float) -> None:
        self._store = store
        self.key = key
        #: ``sha256`` or ``sm3``: the tree hash, also used for payload digests.
        self.hash_name = hash_name
        self.hash_fn = hash_function(hash_name)
        self._checkpoint_seconds = checkpoint_seconds
        self._pending: list[tuple[AuditEntry, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    # -- entries -----------------------------------------------------------------------------

    def entry(
        self,
        call: CallInfo,
        *,
        outcome: str,
        counts: dict[str, int],
        person_keys: Iterable[bytes],
        digest: bytes,
        batch_id: str = "",
    ) -> AuditEntry:
        """The entry of ``call`` (or of one of its batches)."""
        caller = call.caller
        return AuditEntry(
            time_us=_now_us(),
            request_id=call.request_id,
            caller=caller.uri if caller else "",
            province=caller.province_code if caller else "",
            subject=call.subject,
            method=call.full_method or call.method,
            purpose=call.purpose,
            outcome=outcome,
            counts=counts,
            person_keys=[k.hex() for k in person_keys],
            payload_digest=digest.hex(),
            batch_id=batch_id,
        )

    def batch_entry(
        self, call: CallInfo, batch_id: str, digest: bytes, keys: list[bytes]
    ) -> Callable[[BatchAck], AuditEntry]:
        """The entry of one SyncRecords batch, built inside the batch's transaction from its acknowledgement."""

        def build(ack: BatchAck) -> AuditEntry:
            counts = {o.name.lower(): n for o, n in ack.counts().items() if n}
            counts["records"] = len(ack.record_outcomes)
            counts["households"] = len(ack.household_outcomes)
            if ack.replayed:
                counts["replayed"] = 1
            refused = ack.batch_rejection
            return self.entry(
                call,
                outcome=refused.code_name if refused is not None else "OK",
                counts=counts,
                person_keys=keys if refused is None else (),
                digest=digest,
                batch_id=batch_id,
            )

        return build

    async def record(self, call: CallInfo, request: Any, response: Any) -> None:
        """Append the entry of a finished call; returns once it is durable."""
        if call.batch_digests:
            digest = self.hash_fn(b"".join(call.batch_digests))
        else:
            digest = payload_digest(self.hash_fn, None if call.streaming_request else request, response)
        counts = {k: v for k, v in call.counts.items() if v >= 0}
        entry = self.entry(call, outcome=call.code, counts=counts, person_keys=call.person_keys, digest=digest)
        await self.append(entry)

    async def append(self, entry: AuditEntry) -> int:
        """Append one entry with whatever else is waiting (one transaction); returns its index.

        A caller that gives up (cancelled) cancels only its own wait: the entry is written anyway.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            try:
                first = await self._store.append_audit([entry for entry, _ in group])
            except Exception as exc:  # every waiter learns of it; their calls fail closed
                failure = exc if isinstance(exc, HutongError) else HutongError(f"audit append failed: {exc}")
                for _, future in group:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for offset, (_, future) in enumerate(group):
                if not future.done():
                    future.set_result(first + offset)

    # -- checkpoints -------------------------------------------------------------------------

    async def checkpoint(self) -> tuple[int, str] | None:
        """Sign a checkpoint of the committed log unless its size has one already."""

        def sign(size: int, root: bytes) -> tuple[int, str]:
            now = _now_us()
            return now, self.key.sign(size, root, now)

        signed = await self._store.add_checkpoint(sign)
        if signed is not None:
            log.info("audit_checkpoint_signed", tree_size=signed[0])
        return signed

    async def start(self) -> None:
        """Cover what a crash left unsigned, then sign on the cadence."""
        await self.checkpoint()
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_seconds)
            try:
                await self.checkpoint()
            except HutongError as exc:
                log.error("audit_checkpoint_failed", error=str(exc), reason=exc.reason)

    async def stop(self) -> None:
        """Finish pending appends and sign a last checkpoint."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        await self.checkpoint()


def log_hash_name(suite: CryptoSuite) -> str:
    """The exchange log's tree hash for a crypto suite: ``sha256`` (intl) or ``sm3`` (sm)."""
    return "sha256" if suite is CryptoSuite.INTL else "sm3"
