"""Fixtures of the fault tests: quickstart certificates, node configs, and a loopback TCP fault proxy.

The fault tests inject one fault each into real processes (``hutong hub serve``, ``hutong node
sync``, ``hutong node inbox``) and then check the same four things: nothing accepted is lost,
nothing is applied twice, the exchange log verifies with ``hutong audit verify``, and the service
recovers by itself. Hub processes come from ``hub_process`` (tests/conftest.py, shared with
tests/e2e/test_node_crash.py). Sizes are small by default; ``HUTONG_FAULT_RECORDS`` raises them.

Tests run with ``--import-mode=importlib``, so the proxy is handed out as a fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway import errors
from gateway.audit import verify_binding, verify_checkpoint
from gateway.client import HubClient

HUTONG = [sys.executable, "-m", "gateway.cli"]
ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "adapters" / "profiles" / "guangdong-440000.toml"
#: The nodes of the quickstart certificates: 广东 syncs, 河南 receives events about its residents.
GD_NODE, HA_NODE = "440000/gd-gz-01", "410000/ha-zz-01"
GD = "hutong://province/440000/node/gd-gz-01"
HA = "hutong://province/410000/node/ha-zz-01"
#: Records each fault test syncs (``HUTONG_FAULT_RECORDS``; batches of a fiftieth of it, at least 20).
RECORDS = int(os.environ.get("HUTONG_FAULT_RECORDS", "3000"))


def run_hutong(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``hutong ARGS`` to completion, wide output, text captured."""
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([*HUTONG, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def fault_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Quickstart certificates (per test worker): the hub's (SAN localhost, 127.0.0.1), 广东's and 河南's node."""
    directory = tmp_path_factory.mktemp("fault-pki") / "certs"
    made = run_hutong("pki", "quickstart", str(directory), "--node", GD_NODE, "--node", HA_NODE)
    assert made.returncode == 0, made.stderr
    return directory


def hub_tls_args(certs: Path) -> list[str]:
    """``hutong hub serve``'s certificate flags for the quickstart certificates."""
    return ["--cert", str(certs / "hub.pem"), "--key", str(certs / "hub.key"), "--ca", str(certs / "ca.pem")]


@pytest.fixture
def hub_tls() -> Callable[[Path], list[str]]:
    """``hub_tls(certs)``: the ``--cert/--key/--ca`` flags of ``hutong hub serve``."""
    return hub_tls_args


def write_node_config(
    path: Path, certs: Path, address: str, *, node: str = GD_NODE, server_name: str = "", extra: str = ""
) -> Path:
    """A node.toml at ``path`` for ``node`` (quickstart certificates), fast retries, ``extra`` TOML appended."""
    stem = node.replace("/", "-")
    path.parent.mkdir(parents=True, exist_ok=True)
    name = f'server_name = "{server_name}"\n' if server_name else ""
    path.write_text(
        f'[node]\ndata_dir = "node"\nprofile = "{PROFILE}"\n'
        f'[hub]\naddress = "{address}"\n{name}ca = "{certs / "ca.pem"}"\n'
        f'cert = "{certs / "nodes" / stem}.pem"\nkey = "{certs / "nodes" / stem}.key"\n'
        f"[sync]\nbatch_size = {max(20, RECORDS // 50)}\nwindow = 4\nretry_initial_seconds = 0.05\n"
        "retry_max_seconds = 0.5\nretry_deadline_seconds = 60\nattempt_timeout_seconds = 5\n" + extra,
        encoding="utf-8",
    )
    return path


@pytest.fixture
def node_config() -> Callable[..., Path]:
    """``node_config(path, certs, address, node=..., server_name=..., extra=...)``: write a node.toml."""
    return write_node_config


def verify_exchange_log(hub_args: list[str], certs: Path, out: Path, *, known: Sequence[str] = ()) -> list[bytes]:
    """``hutong audit export`` then ``hutong audit verify --check-entries`` against the CA; the entries, in order.

    ``hub_args`` name the hub's store as ``hutong hub serve`` was given it (``--data-dir`` or
    ``--config``); each of ``known`` is a signed checkpoint note seen before a fault, which the
    verifier checks the exported log is consistent with (the log was not rolled back or forked).
    """
    from gateway.audit.archive import read_export_entries

    exported = run_hutong("audit", "export", *hub_args, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    notes = []
    for n, note in enumerate(known):
        path = out.parent / f"{out.name}-known-{n}.note"
        path.write_text(note, encoding="utf-8")
        notes += ["--known", str(path)]
    verified = run_hutong("audit", "verify", str(out), "--ca", str(certs / "ca.pem"), "--check-entries", *notes)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout
    entries = list(read_export_entries(out))
    assert [index for index, _ in entries] == list(range(len(entries)))
    return [data for _, data in entries]


@pytest.fixture
def postgres_hub(tmp_path: Path, fault_certs: Path, hub_process: Callable[..., Any]) -> Callable[[str], Any]:
    """``await postgres_hub(url)``: ``hutong hub serve`` on the PostgreSQL database at ``url``, migrated and started.

    Its configuration is ``tmp_path/etc/hub.toml`` (what ``hutong audit export --config`` reads afterwards).
    """

    async def start(url: str) -> Any:
        hub_toml = tmp_path / "etc" / "hub.toml"
        hub_toml.parent.mkdir()
        hub_toml.write_text(
            f'[hub]\ndata_dir = "{tmp_path / "hub"}"\nprepare_workers = 0\n'
            f'[tls]\ncert = "{fault_certs / "hub.pem"}"\nkey = "{fault_certs / "hub.key"}"\n'
            f'ca = "{fault_certs / "ca.pem"}"\n'
            f'[store]\nurl = "{url}"\n[audit]\ncheckpoint_seconds = 0.2\n',
            encoding="utf-8",
        )
        migrate = await asyncio.create_subprocess_exec(
            *HUTONG, "hub", "migrate", "--config", str(hub_toml), "--create-keys",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        migrated, _ = await migrate.communicate()
        assert migrate.returncode == 0, migrated.decode()
        hub = hub_process("--config", str(hub_toml))
        await asyncio.to_thread(hub.start)
        return hub

    return start


@pytest.fixture
def exchange_log_verified() -> Callable[..., list[bytes]]:
    """``exchange_log_verified(hub_args, certs, out, known=[notes])``: export, verify offline, return the entries."""
    return verify_exchange_log


async def newest_signed_checkpoint(
    client: HubClient, certs: Path, *, at_least: int = 0, wait: float = 60.0
) -> tuple[str, int]:
    """The newest signed checkpoint note covering ``at_least`` entries (signature checked against the CA); its size."""
    async with asyncio.timeout(wait):
        while True:
            with contextlib.suppress(errors.FailedPrecondition):  # NO_CHECKPOINT yet
                head = await client.get_checkpoint()
                if head.tree_size >= at_least:
                    break
            await asyncio.sleep(0.05)
    verifier = verify_binding(head.key_binding, (certs / "ca.pem").read_bytes()).verifier
    signed = verify_checkpoint(head.checkpoint, verifier.name, verifier.public_key)
    assert (signed.size, signed.root_hash) == (head.tree_size, head.root_hash)
    return head.checkpoint, head.tree_size


@pytest.fixture
def signed_checkpoint() -> Callable[..., Coroutine[Any, Any, tuple[str, int]]]:
    """``await signed_checkpoint(client, certs, at_least=n, wait=s)``: (note, size) of the newest checkpoint."""
    return newest_signed_checkpoint


# -- the fault proxy ---------------------------------------------------------------------------------


class FaultProxy:
    """A TCP proxy on loopback between a client and one upstream port that can cut, delay and reset.

    Bytes pass through untouched (TLS included: the client still verifies the upstream's
    certificate, so it must name a host the certificate covers). Modes:

    - ``pass``: forward both ways;
    - ``blackhole``: forward nothing — bytes already in flight are held, not lost, and new
      connections are accepted but not connected upstream, as when a link goes down and TCP
      keeps retransmitting; :meth:`restore` lets everything held flow on, in order;
    - ``delay``: forward each chunk ``delay`` seconds late, in order;
    - :meth:`reset`: every open connection is closed with a TCP RST on both sides (SO_LINGER 0);
      new ones are served as the mode says.
    - :meth:`drop_existing`: every open connection silently stops forwarding for good (what is
      sent on it is read and discarded) while new connections pass: a stateful firewall or NAT
      that forgot the flow without telling either end.
    """

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = "pass"
        self.delay = 0.0
        self.connections = 0
        self.resets = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._dropped: set[asyncio.StreamWriter] = set()
        self._waiting: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        """Listen on 127.0.0.1, an ephemeral port (``self.port``)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        self.reset()
        for writer in [*self._dropped, *self._waiting]:  # forgotten flows, and clients held by a cut
            _abort_with_rst(writer)
        self._dropped.clear()
        self._flowing.set()  # clients held by a cut find their writer closed and give up
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def blackhole(self) -> None:
        """Cut the link: nothing is forwarded until :meth:`restore`."""
        self.mode = "blackhole"
        self._flowing.clear()

    def slow(self, seconds: float) -> None:
        """Forward each chunk ``seconds`` late."""
        self.mode, self.delay = "delay", seconds
        self._flowing.set()

    def restore(self) -> None:
        """Forward again, at once; whatever was held during a cut flows on."""
        self.mode, self.delay = "pass", 0.0
        self._flowing.set()

    def reset(self) -> None:
        """RST every open connection on both sides (new connections are served as the mode says)."""
        for pair in list(self._pairs):
            for writer in pair:
                _abort_with_rst(writer)
            self.resets += 1
        self._pairs.clear()

    def drop_existing(self) -> None:
        """Open connections forward nothing more, ever, and tell nobody; new ones pass."""
        for pair in list(self._pairs):
            self._dropped.update(pair)
        self._pairs.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._waiting.add(client_writer)
        try:
            await self._flowing.wait()  # a cut link: the client's SYN was answered, nothing more
            if client_writer.is_closing():
                return  # the proxy closed meanwhile
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort_with_rst(client_writer)
            return
        finally:
            self._waiting.discard(client_writer)
        pair = (client_writer, upstream_writer)
        self._pairs.add(pair)
        self._spawn(self._pipe(client_reader, upstream_writer, pair))
        self._spawn(self._pipe(upstream_reader, client_writer, pair))

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
                if writer in self._dropped:
                    continue  # read and discarded: the flow is forgotten
                if pair not in self._pairs:
                    break  # reset
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if pair in self._pairs:  # one side closed: close the other (a reset already did both)
                self._pairs.discard(pair)
                for w in pair:
                    with contextlib.suppress(Exception):
                        w.close()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
async def fault_proxy() -> AsyncIterator[Callable[[int], asyncio.Future[FaultProxy]]]:
    """``await fault_proxy(upstream_port)``: a started :class:`FaultProxy`; closed after the test."""
    made: list[FaultProxy] = []

    def make(upstream_port: int) -> asyncio.Future[FaultProxy]:
        proxy = FaultProxy(upstream_port)
        made.append(proxy)
        return asyncio.ensure_future(proxy.start())

    yield make
    for proxy in made:
        await proxy.close()
