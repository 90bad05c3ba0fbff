"""How the client reads a failed call (gateway.client)."""

from __future__ import annotations

import grpc

from gateway import errors
from gateway.client import _translate


def _failed(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_a_write_cut_off_by_a_lost_connection_is_unavailable_so_the_node_sends_it_again() -> None:
    # grpc.aio's own INTERNAL when a stream's message cannot be written (grpc/grpc#36066)
    lost = _translate(_failed(grpc.StatusCode.INTERNAL, "Internal error from Core"))
    assert isinstance(lost, errors.Unavailable)
    assert lost.reason == "CONNECTION_LOST"


def test_an_internal_error_of_the_hub_stays_internal() -> None:
    answered = _translate(_failed(grpc.StatusCode.INTERNAL, "internal error; the hub logged it"))
    assert not isinstance(answered, errors.Unavailable)
    assert answered.code_name == "INTERNAL"
