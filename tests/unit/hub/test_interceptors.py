"""The call chain's end of a call (gateway.hub.interceptors), with a stand-in for grpc.aio's context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.hub.interceptors import CallInfo, HubInterceptor


class _Context:
    """What the interceptor asks of grpc.aio's ServicerContext when a call ends normally."""

    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "r-1"),)

    def time_remaining(self) -> float | None:
        return self._remaining


class _Recorder:
    def __init__(self) -> None:
        self.codes: list[str] = []

    async def record(self, call: CallInfo, request: Any, response: Any) -> None:
        self.codes.append(call.code)


async def _one_message() -> AsyncIterator[bytes]:
    yield b"batch"


async def _drain(requests: AsyncIterator[Any], context: Any) -> str:
    async for _ in requests:
        pass
    return "done"


async def _end_stream(remaining: float | None) -> list[str]:
    recorder = _Recorder()
    interceptor = HubInterceptor([], recorder=recorder)
    wrapped = interceptor._wrap_unary("SyncRecords", "/x/SyncRecords", _drain, True)
    await wrapped(_one_message(), _Context(remaining))
    return recorder.codes


async def test_a_stream_that_ends_after_its_deadline_is_logged_cancelled() -> None:
    # grpc.aio ends the request stream as if half-closed when the deadline passes: the caller saw
    # DEADLINE_EXCEEDED, so the entry must not say OK.
    assert await _end_stream(0.0) == ["CANCELLED"]


async def test_a_stream_that_ends_in_time_or_without_a_deadline_is_logged_ok() -> None:
    assert await _end_stream(3.0) == ["OK"]
    assert await _end_stream(None) == ["OK"]
