"""``AuditService``: checkpoints, entries and proofs of the exchange log (scope ``audit:read``).

Listings and proofs default to the tree of the newest signed checkpoint, so that what a caller
gets can be checked against a signature; a caller may name any size up to the committed one.
"""

from __future__ import annotations

import json
import re

import grpc

from gateway import errors
from gateway.audit import parse_checkpoint
from gateway.hub.audit import AuditRecorder
from gateway.hub.convert import decode_page_token, encode_page_token, timestamp_from_us
from gateway.hub.interceptors import current_call
from gateway.store.base import AuditFilter, Store
from hutong.v1 import audit_pb2, audit_pb2_grpc

__all__ = ["MAX_AUDIT_PAGE", "AuditServicer"]

MAX_AUDIT_PAGE = 1000
_DEFAULT_PAGE = 100
_PERSON_KEY_BYTES = 16
_METHOD = re.compile(r"(/[A-Za-z0-9_.]+/)?[A-Za-z0-9_]+")


def _us(ts: object) -> int:
    seconds = getattr(ts, "seconds", 0)
    nanos = getattr(ts, "nanos", 0)
    return int(seconds) * 1_000_000 + int(nanos) // 1000


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Serves the exchange log to auditors and province nodes."""

    def __init__(self, store: Store, recorder: AuditRecorder, key_binding: bytes = b"") -> None:
        self._store = store
        self._recorder = recorder
        self._binding = key_binding

    async def _bound(self, requested: int, field: str) -> int:
        """The tree size a request refers to: the newest checkpoint's by default, never past the committed log."""
        committed, _ = await self._store.audit_tree()
        if requested == 0:
            latest = await self._store.latest_checkpoint()
            if latest is None:
                raise errors.FailedPrecondition("the hub has signed no checkpoint yet", reason="NO_CHECKPOINT")
            return latest[0]
        if requested > committed:
            raise errors.InvalidArgument(
                f"{field} {requested} is beyond the log, which holds {committed} entries",
                reason="TREE_SIZE_INVALID",
                field=field,
                metadata={"tree_size": str(committed)},
            )
        return requested

    async def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.GetCheckpointResponse:
        """The newest signed checkpoint and the key that verifies it."""
        current_call().purpose = "audit"
        latest = await self._store.latest_checkpoint()
        if latest is None:
            raise errors.FailedPrecondition("the hub has signed no checkpoint yet", reason="NO_CHECKPOINT")
        _, note = latest
        checkpoint = parse_checkpoint(note, hash_size=len(self._recorder.hash_fn(b"")))
        response = audit_pb2.GetCheckpointResponse(
            checkpoint=note,
            tree_size=checkpoint.size,
            root_hash=checkpoint.root_hash,
            verifier_key=self._recorder.key.verifier_key,
            key_binding=self._binding,
            hash_algorithm=self._recorder.hash_name,
        )
        if checkpoint.time_us is not None:
            response.signed_at.CopyFrom(timestamp_from_us(checkpoint.time_us))
        return response

    async def ListAuditEntries(
        self, request: audit_pb2.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ListAuditEntriesResponse:
        """Entries in index order, filtered, a page at a time."""
        call = current_call()
        call.purpose = "audit"
        if not 0 <= request.page_size <= MAX_AUDIT_PAGE:
            raise errors.InvalidArgument(
                f"page_size must be between 0 and {MAX_AUDIT_PAGE}", reason="PAGE_SIZE_INVALID", field="page_size"
            )
        if request.person_key and len(request.person_key) != _PERSON_KEY_BYTES:
            raise errors.InvalidArgument(
                f"person_key must be {_PERSON_KEY_BYTES} bytes", reason="PERSON_KEY_INVALID", field="person_key"
            )
        filt = AuditFilter(
            since_us=_us(request.start_time) if request.HasField("start_time") else 0,
            until_us=_us(request.end_time) if request.HasField("end_time") else 0,
            province=request.province_code,
            method=request.method,
            purpose=request.purpose,
            person_key=request.person_key,
        )
        if request.person_key:
            call.person_keys.add(request.person_key)
        if request.method and not _METHOD.fullmatch(request.method):
            raise errors.InvalidArgument(
                "method must be an RPC name: CheckEnrollment, or /hutong.v1.AssistanceQueryService/CheckEnrollment",
                reason="METHOD_INVALID",
                field="method",
            )
        fingerprint = json.dumps(
            [filt.since_us, filt.until_us, filt.province, filt.method, filt.purpose, filt.person_key.hex()]
        )
        # A listing keeps the tree size it started with (in its token): new checkpoints do not end a walk.
        if request.tree_size:
            fingerprint += f"/{request.tree_size}"
        position = decode_page_token(request.page_token, fingerprint, ("i", "s"))
        if position is None:
            after, size = 0, await self._bound(request.tree_size, "tree_size")
        else:
            after, size = position["i"], position["s"]
        page = request.page_size or _DEFAULT_PAGE
        rows = await self._store.audit_entries(filt, after=after, limit=page + 1, size=size)
        response = audit_pb2.ListAuditEntriesResponse(
            entries=[audit_pb2.AuditLogEntry(index=i, entry=data) for i, data in rows[:page]], tree_size=size
        )
        if len(rows) > page:
            response.next_page_token = encode_page_token({"i": rows[page][0], "s": size}, fingerprint)
        call.counts.update(entries=len(response.entries))
        return response

    async def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.GetInclusionProofResponse:
        """The audit path of one entry in the tree of a size."""
        current_call().purpose = "audit"
        size = await self._bound(request.tree_size, "tree_size")
        if request.index >= size:
            raise errors.InvalidArgument(
                f"entry {request.index} is not in the tree of {size} entries",
                reason="INDEX_INVALID",
                field="index",
                metadata={"tree_size": str(size)},
            )
        found = await self._store.audit_entry(request.index)
        if found is None:  # pragma: no cover - the size was checked against the committed log
            raise errors.NotFound(f"entry {request.index} is missing", reason="ENTRY_MISSING", field="index")
        entry, leaf = found
        return audit_pb2.GetInclusionProofResponse(
            index=request.index,
            tree_size=size,
            entry=entry,
            leaf_hash=leaf,
            hashes=await self._store.inclusion_proof(request.index, size),
            checkpoint=await self._store.checkpoint_at(size) or "",
        )

    async def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.GetConsistencyProofResponse:
        """The proof that the smaller tree is a prefix of the larger."""
        current_call().purpose = "audit"
        second = await self._bound(request.second_tree_size, "second_tree_size")
        first = request.first_tree_size
        if first > second:
            raise errors.InvalidArgument(
                f"first_tree_size {first} is larger than second_tree_size {second}",
                reason="TREE_SIZE_INVALID",
                field="first_tree_size",
            )
        return audit_pb2.GetConsistencyProofResponse(
            first_tree_size=first,
            second_tree_size=second,
            hashes=await self._store.consistency_proof(first, second),
            checkpoint=await self._store.checkpoint_at(second) or "",
        )
