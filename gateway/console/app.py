"""The hub's HTTP side (aiohttp): probes, metrics, the token keys and the CRL.

Served by the hub itself on ``hub.console_listen`` (HTTPS with the hub's certificate; a client
certificate is asked for but not required, so that probes and Prometheus can reach what is
public). What each path gives:

=========================  ==================================================================
``/healthz``               200 while the process serves (liveness)
``/readyz``                200 when the store answers a read and opens a write transaction,
                           the hub's certificate is valid now, and the hub is not draining;
                           else 503 naming the check that failed (JSON)
``/metrics``               Prometheus text: RPCs by method and code, latencies, records synced
                           by province, node and outcome, records held, the exchange log's
                           size, unacknowledged and overdue notifications per province
``/.well-known/jwks.json`` the public keys that verify the hub's access tokens (RFC 7517)
``/crl``                   the certificate revocation list the hub enforces (DER), if any
=========================  ==================================================================

None of these shows personal data. The pages (:mod:`gateway.console.pages`) need a login.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.console.pages import add_pages
from gateway.errors import ConfigError
from gateway.hub.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from gateway.hub.server import HubServer

__all__ = ["ConsoleServer", "make_app"]

log = structlog.get_logger("hutong.console")

#: Seconds a readiness check may take before it counts as failed.
_CHECK_SECONDS = 3.0


def make_app(hub: HubServer) -> web.Application:
    """The console's application for a started hub."""
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz(hub))
    app.router.add_get("/metrics", _metrics(hub))
    app.router.add_get("/.well-known/jwks.json", _jwks(hub))
    app.router.add_get("/crl", _crl(hub))
    add_pages(app, hub)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _readyz(hub: HubServer) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        store = hub.store
        if store is None or hub.draining:
            checks["serving"] = "the hub is stopping" if hub.draining else "the hub has not started"
        else:
            checks["serving"] = "ok"
            checks["store"] = await _check(store.audit_tree(), "the store does not answer")
            checks["audit_log"] = await _check(store.ping_writer(), "the exchange log cannot be written")
        checks["certificate"] = _certificate_check(hub)
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    return handle


async def _check(probe: Awaitable[Any], failure: str) -> str:
    try:
        async with asyncio.timeout(_CHECK_SECONDS):
            await probe
    except TimeoutError:
        return f"{failure} within {_CHECK_SECONDS:g}s"
    except Exception as exc:
        return f"{failure}: {exc}"
    return "ok"


def _certificate_check(hub: HubServer) -> str:
    tls = hub.settings.tls
    if tls is None:
        return "ok"  # --insecure: no certificate to expire
    leaf = x509.load_pem_x509_certificates(tls.cert_chain_pem)[0]
    now = dt.datetime.now(dt.UTC)
    if now < leaf.not_valid_before_utc:
        return f"the hub certificate is not valid before {leaf.not_valid_before_utc.isoformat()}"
    if now >= leaf.not_valid_after_utc:
        return f"the hub certificate expired at {leaf.not_valid_after_utc.isoformat()}"
    return "ok"


def _metrics(hub: HubServer) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        if hub.store is None:
            raise web.HTTPServiceUnavailable(text="the hub has not started")
        monitor = hub.audit_monitor.status if hub.audit_monitor is not None else None
        body = await hub.metrics.render(hub.store, monitor)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return handle


def _jwks(hub: HubServer) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        if hub.tokens is None:
            raise web.HTTPServiceUnavailable(text="the hub has not started")
        return web.json_response(hub.tokens.keys.jwks(), headers={"Cache-Control": "max-age=300"})

    return handle


def _crl(hub: HubServer) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        path = hub.settings.crl_path
        if path is None:
            raise web.HTTPNotFound(text="this hub enforces no CRL")
        data = await asyncio.to_thread(path.read_bytes)
        if data.lstrip().startswith(b"-----BEGIN"):
            data = x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)
        return web.Response(body=data, content_type="application/pkix-crl")

    return handle


class ConsoleServer:
    """The console on its own port: HTTPS with the hub's certificate (or plain HTTP on ``--insecure``)."""

    def __init__(self, hub: HubServer, host: str, port: int) -> None:
        self._hub = hub
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        #: The bound port (``port`` 0 picks one).
        self.port = 0

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            sock = socket.create_server((self._host, self._port), family=family)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port}: {exc}", reason="LISTEN_FAILED", field="hub.console_listen"
            ) from exc
        self.port = sock.getsockname()[1]
        runner = web.AppRunner(make_app(self._hub), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=self._ssl_context()).start()
        self._runner = runner
        log.info("console_started", host=self._host, port=self.port, tls=self._hub.settings.tls is not None)
        return self.port

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self._hub.settings.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads a key only from a file: written into a private directory for the call and
        # removed at once (gRPC took the same bytes from memory).
        with tempfile.TemporaryDirectory(prefix="hutong-console-") as folder:
            cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            for path, data in ((cert, tls.cert_chain_pem), (key, tls.private_key_pem)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(data)
            context.load_cert_chain(cert, key)
        context.load_verify_locations(cadata=tls.ca_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # operators log in with one; probes come without
        return context

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
