"""``hutong node inbox``: the hub's events into the province's system — webhook and directory, once each."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.client import HubClient
from gateway.hub.server import HubServer
from gateway.node.config import load_node_config
from gateway.node.inbox import Inbox, run_inbox, sign_body
from gateway.store.base import NodeRef
from hutong.v1 import notification_pb2, records_pb2
from pki import DemoPki

GZ = "hutong://province/440000/node/gz-01"
ZZ = "hutong://province/410000/node/zz-01"
SECRET = b"a-shared-secret-of-32-bytes-long"


@pytest.fixture
def crypto_suite() -> str:
    return "intl"


class Receiver:
    """A province system's webhook: checks each signature, fails the first ``fail`` calls with 503."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.refused = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = sign_body(SECRET, request.headers["X-Hutong-Timestamp"], body)
        if request.headers["X-Hutong-Signature"] != expected:
            return web.Response(status=401)
        if self.fail:
            self.fail -= 1
            self.refused += 1
            return web.Response(status=503)
        self.received.append((request.headers["Idempotency-Key"], json.loads(body)))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    target = Receiver(fail=2)
    app = web.Application()
    app.router.add_post("/hutong/events", target.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield target, port
    await runner.cleanup()


async def test_events_reach_the_webhook_and_the_directory_once_in_order(
    hub: HubServer,
    demo_pki: DemoPki,
    client_for: Callable[..., HubClient],
    make_record: Callable[..., Any],
    receiver: tuple[Receiver, int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, port = receiver
    gz, zz = client_for(GZ), client_for(ZZ)
    for client, batch_id, record in (
        (gz, "g1", make_record("gz-a")),
        (zz, "z1", make_record("zz-b", province="410000", hukou_province="440000")),
    ):
        [_ async for _ in client.sync([records_pb2.SyncRecordsRequest(batch_id=batch_id, records=[record])])]
    creds = demo_pki.nodes[GZ]
    (tmp_path / "secret").write_bytes(SECRET)
    config_path = tmp_path / "node.toml"
    config_path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "node"}"\nprofile = "p.toml"\n'
        f'[hub]\naddress = "localhost:{hub.port}"\nca = "{demo_pki.ca_cert_path}"\n'
        f'cert = "{creds.cert_path}"\nkey = "{creds.key_path}"\n'
        "[sync]\nretry_initial_seconds = 0.01\n"
        f'[inbox]\nwebhook_url = "http://127.0.0.1:{port}/hutong/events"\nwebhook_secret_file = "secret"\n'
        f'directory = "{tmp_path / "events"}"\nretry_max_seconds = 0.05\n',
        encoding="utf-8",
    )
    config = load_node_config(config_path)

    delivered = await run_inbox(config, idle_exit=1.0)
    assert delivered == 2  # the duplicate finding, and 河南 enrolling a 广东 hukou
    assert target.refused == 2  # retried until the system took it
    keys = [key for key, _ in target.received]
    assert len(keys) == len(set(keys)) == 2
    sequences = [int(body["sequence"]) for _, body in target.received]
    assert sequences == sorted(sequences)
    files = sorted(p.name for p in (tmp_path / "events").iterdir())
    assert [f.split("-", 1)[1].removesuffix(".json") for f in files] == keys

    # Acknowledged at the hub: a new subscription from the acknowledged cursor has nothing for the node.
    inbox = Inbox(config.inbox_path)
    try:
        status = inbox.status()
        assert (status.received, status.undelivered, status.unacknowledged) == (2, 0, 0)
    finally:
        inbox.close()
    assert await hub.store.event_cursor(NodeRef("440000", "gz-01")) == max(sequences)
    # hutong node status shows the inbox too.
    from gateway.node.commands import node_status

    capsys.readouterr()
    assert await node_status(config, as_json=True) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["inbox"] == {
        "events": 2, "undelivered": 0, "unacknowledged": 0, "last_sequence": max(sequences), "last_error": None
    }  # fmt: skip

    # Run again: nothing new, nothing delivered twice — even if the hub sends an event again.
    assert await run_inbox(config, idle_exit=0.5) == 0
    inbox = Inbox(config.inbox_path)
    try:
        assert not inbox.keep(notification_pb2.Event(event_id=keys[0], sequence=sequences[0]))
    finally:
        inbox.close()
    assert len(target.received) == 2
