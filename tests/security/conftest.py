"""Fixtures of the security tests: reading the hub's exchange log and the statuses it answers.

Tests run with ``--import-mode=importlib``, so helpers shared by these modules are handed out as
fixtures (plain functions, usable from any event loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from gateway.audit import AuditEntry
from gateway.hub.server import HubServer
from gateway.rpc_status import error_from_rpc
from gateway.store.base import AuditFilter


@pytest.fixture
def crypto_suite() -> str:
    """One suite is enough: every refusal here happens before anything the crypto suite decides."""
    return "intl"


@dataclass(frozen=True)
class Answer:
    """What a call ended with, as the caller sees it: status code name, ErrorInfo reason and metadata."""

    code: str
    reason: str = ""
    message: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field: str | None = None


def answer_of(exc: grpc.aio.AioRpcError | None) -> Answer:
    """What a call ended with: OK for None, else the failure's code, reason (the code's name without ErrorInfo)."""
    if exc is None:
        return Answer("OK")
    error = error_from_rpc(exc.code(), exc.details(), exc.trailing_metadata())
    return Answer(exc.code().name, error.reason, str(exc.details() or ""), dict(error.metadata), error.field)


@pytest.fixture
def rpc_answer() -> Callable[[grpc.aio.AioRpcError | None], Answer]:
    """``rpc_answer(exc)``: the :class:`Answer` of a failed call (code, ErrorInfo reason and metadata); OK for None."""
    return answer_of


LogOf = Callable[..., Awaitable[list[tuple[int, AuditEntry]]]]


async def read_log(hub: HubServer, *, after: int = 0) -> list[tuple[int, AuditEntry]]:
    """Every committed entry of the hub's exchange log from index ``after``, decoded."""
    assert hub.store is not None
    size, _ = await hub.store.audit_tree()
    rows = await hub.store.audit_entries(AuditFilter(), after=after, limit=size + 1, size=size)
    return [(index, AuditEntry.decode(data)) for index, data in rows]


@pytest.fixture
def exchange_log() -> LogOf:
    """``await exchange_log(hub, after=0)``: (index, entry) of every committed entry of the hub's log."""
    return read_log


@pytest.fixture
def log_size() -> Callable[[HubServer], Awaitable[int]]:
    """``await log_size(hub)``: how many entries the hub's exchange log holds (committed)."""

    async def size(hub: HubServer) -> int:
        assert hub.store is not None
        committed, _ = await hub.store.audit_tree()
        return committed

    return size


@pytest.fixture
def entries_of() -> Callable[..., Awaitable[list[AuditEntry]]]:
    """``await entries_of(hub, request_id, count=1)``: the entries of one call, once ``count`` are in the log.

    A refused or answered call's entry is durable before its answer leaves the hub; a call its caller
    gave up on (a deadline, a cancel) is written just after, hence the wait (bounded: five seconds).
    """

    async def wait(hub: HubServer, request_id: str, *, count: int = 1, seconds: float = 5.0) -> list[AuditEntry]:
        found: list[AuditEntry] = []
        async with asyncio.timeout(seconds):
            while True:
                found = [e for _, e in await read_log(hub) if e.request_id == request_id]
                if len(found) >= count:
                    return found
                await asyncio.sleep(0.02)

    return wait
