"""The baseline for bench_hub.py: the hub's two services over the same mTLS, doing no work.

``SyncRecords`` deserializes each batch (grpc does, as for the hub) and acknowledges it with
one CREATED per record; ``CheckEnrollment`` echoes a fixed answer. Whatever the hub is slower
than this is the cost of Hutong itself, not of gRPC, TLS or Python's protobuf.

Usage: python bench/bare_server.py CERT KEY CA PORT_FILE
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from hutong.v1 import query_pb2, query_pb2_grpc, records_pb2, records_pb2_grpc
from pki import TlsMaterial


class BareRecords(records_pb2_grpc.RecordExchangeServiceServicer):
    """Acknowledges every batch without looking at it."""

    async def SyncRecords(
        self, request_iterator: AsyncIterator[records_pb2.SyncRecordsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[records_pb2.SyncRecordsResponse]:
        async for request in request_iterator:
            n = len(request.records)
            yield records_pb2.SyncRecordsResponse(
                batch_id=request.batch_id,
                record_outcomes=[records_pb2.OUTCOME_CREATED] * n,
                record_counts=records_pb2.OutcomeCounts(created=n),
            )


class BareQueries(query_pb2_grpc.AssistanceQueryServiceServicer):
    """Answers every check with the same two programmes."""

    async def CheckEnrollment(
        self, request: query_pb2.CheckEnrollmentRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.CheckEnrollmentResponse:
        return query_pb2.CheckEnrollmentResponse(
            results=[query_pb2.ProgramEnrollment(program=1, enrolled=True, province_codes=["440000"])]
        )


async def main(cert: str, key: str, ca: str, port_file: str) -> None:
    tls = TlsMaterial.from_files(Path(cert), Path(key), Path(ca))
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)])
    records_pb2_grpc.add_RecordExchangeServiceServicer_to_server(BareRecords(), server)
    query_pb2_grpc.add_AssistanceQueryServiceServicer_to_server(BareQueries(), server)
    creds = grpc.ssl_server_credentials(
        [(tls.private_key_pem, tls.cert_chain_pem)], root_certificates=tls.ca_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    Path(port_file).write_text(f"{port}\n")  # noqa: ASYNC240 - once, before serving
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
