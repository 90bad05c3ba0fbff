"""``hutong node serve --config node.toml`` in a real process: it answers the hub from the node's outbox.

The outbox is filled the way ``hutong node sync`` fills it (a run, a writer, a record read at a
line of an export file); the hub is played by a raw channel holding the demo hub certificate.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import grpc
import pytest

from gateway.domain.identity import make_id_number
from gateway.domain.model import Enrollment, PersonRecord
from gateway.node.outbox import Outbox, RunWriter
from gateway.node.serve import AUDIT_DATABASE
from hutong.v1 import node_pb2, node_pb2_grpc, person_pb2
from pki import DemoPki

CD = "hutong://province/510000/node/cd-01"
ZZ = "hutong://province/410000/node/zz-01"


def fill_outbox(path: Path, export: Path) -> PersonRecord:
    """One record in the outbox, read at line 4 of ``export``."""
    record = PersonRecord(
        record_id="cd-r7",
        version=1,
        id_number=make_id_number("510104", dt.date(1958, 3, 9), 21),
        name="李秀英",
        gender=2,
        birth_date=dt.date(1958, 3, 9),
        hukou_division="510104",
        residence_division="510104",
        household_id="H-77",
        enrollments=(Enrollment(1, 1, dt.date(2024, 3, 1), None, 88_000, "510104"),),
        updated_at_us=0,
    )
    outbox = Outbox.open(path)
    try:
        run, _ = outbox.open_run("snapshot", [export])
        writer = RunWriter(outbox, run.run_id, batch_size=10, versions_from_source=False)
        writer.add_record(record, export.name, "line 4")
        writer.finish()
    finally:
        outbox.close()
    return record


@pytest.fixture
def served(demo_pki: DemoPki, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """A ``hutong node serve`` process for CD over a one-record outbox; (process, port, data dir)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    export = tmp_path / "dibao-2026-11.csv"
    export.write_text("header\n", encoding="utf-8")
    fill_outbox(data_dir / "outbox.sqlite", export)
    node = demo_pki.nodes[CD]
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "data"\nprofile = "profile.toml"\n'
        f'[hub]\naddress = "127.0.0.1:1"\nca = "{demo_pki.ca_cert_path}"\n'
        f'cert = "{node.cert_path}"\nkey = "{node.key_path}"\n'
        '[serve]\nlisten = "127.0.0.1:0"\nhub_name = "localhost"\n',
        encoding="utf-8",
    )
    port_file, log_path = tmp_path / "node.port", tmp_path / "node.log"
    command = [sys.executable, "-m", "gateway.cli", "node", "serve", "--config", str(config)]
    with log_path.open("wb") as log:
        process = subprocess.Popen([*command, "--port-file", str(port_file)], stdout=log, stderr=log, env=os.environ)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the node did not start: {log_path.read_text()}")
        time.sleep(0.05)
    try:
        yield process, int(port_file.read_text()), data_dir
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


async def test_node_serve_answers_from_the_outbox_and_stops_cleanly_on_sigterm(
    demo_pki: DemoPki, served: tuple[subprocess.Popen[bytes], int, Path]
) -> None:
    process, port, data_dir = served
    tls = demo_pki.hub_tls
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.private_key_pem, tls.cert_chain_pem)
    request = node_pb2.ProvinceNodeServiceFetchRecordDetailRequest(
        record_id="cd-r7",
        purpose=person_pb2.PURPOSE_MONITORING_FOLLOW_UP,
        requester=node_pb2.Requester(node_uri=ZZ, province_code="410000"),
        hub_request_id="hub-req-9",
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        answer = await node_pb2_grpc.ProvinceNodeServiceStub(channel).FetchRecordDetail(request, timeout=10)

    detail = answer.detail
    assert (detail.province_code, detail.node_uri) == ("510000", CD)
    assert (detail.record.record_id, detail.record.name, detail.record.household_id) == ("cd-r7", "李秀英", "H-77")
    assert detail.record.enrollments[0].monthly_amount_fen == 88_000
    assert (detail.source.file, detail.source.location) == ("dibao-2026-11.csv", "line 4")
    assert detail.HasField("exported_at")

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    with closing(sqlite3.connect(f"file:{data_dir / AUDIT_DATABASE}?mode=ro", uri=True)) as con:
        (entries,) = con.execute("SELECT count(*) FROM audit_entries").fetchone()
        (signed,) = con.execute("SELECT max(size) FROM audit_checkpoints").fetchone()
    assert entries == signed == 1
