"""``hutong node inbox``: the hub's events, delivered into the province's own systems, at least once, in order.

The node subscribes to its province's events (``NotificationService.Subscribe``) and keeps each
one in ``inbox.sqlite`` before anything else happens. Each event is then delivered — to a webhook
(an aiohttp POST of the event as JSON, signed with HMAC-SHA256, with the event id as
``Idempotency-Key``) and/or as a JSON file in a directory — and only then acknowledged to the hub.
An event already delivered is never delivered again, even when the hub sends it again (a node that
crashed before its acknowledgement reached the hub). A delivery that fails is retried with
exponential backoff and jitter; the events after it wait, so the province's system sees them in the
hub's order.

A webhook receiver checks ``X-Hutong-Signature: sha256=<hex>``: the HMAC-SHA256, under the shared
secret, of ``X-Hutong-Timestamp`` + ``.`` + the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
import tenacity
from google.protobuf import json_format

from gateway import errors
from gateway.client import HubClient
from gateway.node.config import InboxSettings, NodeConfig
from gateway.node.sync import retryable
from gateway.store.sqlite import check_database_file
from hutong.v1 import notification_pb2

__all__ = ["Inbox", "InboxStatus", "deliver_pending", "run_inbox", "sign_body"]

log = structlog.get_logger("hutong.node.inbox")

#: Seconds an ``idle_exit`` run gives its subscription to connect and bring the first event.
_CONNECT_GRACE = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,   -- the hub's sequence for this province
    event_id     TEXT    NOT NULL UNIQUE,
    body         TEXT    NOT NULL,      -- the event, protobuf JSON mapping
    received_us  INTEGER NOT NULL,
    delivered_us INTEGER,
    acked_us     INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
"""


def _now_us() -> int:
    return time.time_ns() // 1000


def sign_body(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Hutong-Signature`` value of a webhook body."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class InboxStatus:
    """What ``hutong node status`` shows of the inbox."""

    received: int
    undelivered: int
    unacknowledged: int
    last_sequence: int
    last_error: str | None


class Inbox:
    """The node's inbox database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_database_file(path)  # 0600: events name the province's persons
        self._con = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._con.close()

    def cursor(self) -> str:
        """The sequence of the newest event kept, as the Subscribe cursor ('' before the first)."""
        row = self._con.execute("SELECT max(seq) FROM events").fetchone()
        return "" if row[0] is None else str(row[0])

    def keep(self, event: notification_pb2.Event) -> bool:
        """Keep an event; False if it was kept before (a redelivery by the hub)."""
        body = json_format.MessageToJson(event, indent=None, ensure_ascii=False)
        cur = self._con.execute(
            "INSERT OR IGNORE INTO events (seq, event_id, body, received_us) VALUES (?,?,?,?)",
            (event.sequence, event.event_id, body, _now_us()),
        )
        return cur.rowcount > 0

    def undelivered(self) -> list[tuple[int, str, str]]:
        """(sequence, event id, JSON body) of events not yet delivered, in order."""
        return self._con.execute(
            "SELECT seq, event_id, body FROM events WHERE delivered_us IS NULL ORDER BY seq"
        ).fetchall()

    def delivered(self, seq: int) -> None:
        """Mark an event delivered to the province's system."""
        self._con.execute("UPDATE events SET delivered_us=?, last_error=NULL WHERE seq=?", (_now_us(), seq))

    def failed(self, seq: int, error: str) -> None:
        """Count a failed delivery attempt."""
        self._con.execute("UPDATE events SET attempts=attempts+1, last_error=? WHERE seq=?", (error, seq))

    def unacknowledged(self) -> list[str]:
        """Event ids delivered but not yet acknowledged to the hub."""
        return [
            r[0]
            for r in self._con.execute(
                "SELECT event_id FROM events WHERE delivered_us IS NOT NULL AND acked_us IS NULL ORDER BY seq"
            )
        ]

    def acknowledged(self, event_ids: list[str]) -> None:
        """Mark events acknowledged to the hub."""
        now = _now_us()
        self._con.executemany("UPDATE events SET acked_us=? WHERE event_id=?", [(now, e) for e in event_ids])

    def status(self) -> InboxStatus:
        """Counts for ``hutong node status``."""
        received, undelivered, unacked, last = self._con.execute(
            "SELECT count(*), coalesce(sum(delivered_us IS NULL), 0), coalesce(sum(acked_us IS NULL), 0),"
            " coalesce(max(seq), 0) FROM events"
        ).fetchone()
        error = self._con.execute(
            "SELECT last_error FROM events WHERE last_error IS NOT NULL ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return InboxStatus(int(received), int(undelivered), int(unacked), int(last), error[0] if error else None)


class _Sinks:
    """Delivers one event to the configured webhook and directory; raises on failure."""

    def __init__(self, settings: InboxSettings, session: aiohttp.ClientSession | None) -> None:
        if not settings.webhook_url and settings.directory is None:
            raise errors.ConfigError(
                "the inbox needs inbox.webhook_url or inbox.directory to deliver to", field="inbox"
            )
        self._settings = settings
        self._session = session
        self._secret = b""
        if settings.webhook_url:
            assert settings.webhook_secret_file is not None
            try:
                self._secret = settings.webhook_secret_file.read_bytes().strip()
            except OSError as exc:
                raise errors.ConfigError(
                    f"cannot read {settings.webhook_secret_file}: {exc.strerror}", field="inbox.webhook_secret_file"
                ) from None
            if len(self._secret) < 16:
                raise errors.ConfigError(
                    "the webhook secret must be at least 16 bytes", field="inbox.webhook_secret_file"
                )
        if settings.directory is not None:
            settings.directory.mkdir(parents=True, exist_ok=True)

    async def deliver(self, seq: int, event_id: str, body: str) -> None:
        data = body.encode()
        if self._settings.directory is not None:
            target = self._settings.directory / f"{seq:012d}-{event_id}.json"
            if not target.exists():
                tmp = target.with_suffix(".json.tmp")
                with tmp.open("wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                tmp.replace(target)
        if self._settings.webhook_url:
            assert self._session is not None
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": event_id,
                "X-Hutong-Timestamp": timestamp,
                "X-Hutong-Signature": sign_body(self._secret, timestamp, data),
            }
            timeout = aiohttp.ClientTimeout(total=self._settings.webhook_timeout_seconds)
            async with self._session.post(self._settings.webhook_url, data=data, headers=headers, timeout=timeout) as r:
                if not 200 <= r.status < 300:
                    raise errors.Unavailable(
                        f"the webhook answered {r.status}", reason="WEBHOOK_REFUSED", field="inbox.webhook_url"
                    )


async def deliver_pending(inbox: Inbox, sinks: _Sinks, client: HubClient, *, retry_max: float) -> int:
    """Deliver every undelivered event in order (each retried until it goes through), then acknowledge."""
    delivered = 0
    for seq, event_id, body in inbox.undelivered():
        async for attempt in tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=retry_max),
            retry=tenacity.retry_if_exception_type((aiohttp.ClientError, OSError, errors.Unavailable, TimeoutError)),
            before_sleep=lambda state, seq=seq: inbox.failed(  # type: ignore[misc]
                seq, str(state.outcome.exception() if state.outcome else "")
            ),
        ):
            with attempt:
                await sinks.deliver(seq, event_id, body)
        inbox.delivered(seq)
        delivered += 1
    pending = inbox.unacknowledged()
    for start in range(0, len(pending), 1000):
        chunk = pending[start : start + 1000]
        await client.acknowledge_events(chunk)
        inbox.acknowledged(chunk)
    return delivered


async def run_inbox(
    config: NodeConfig, *, stop: asyncio.Event | None = None, client: HubClient | None = None, idle_exit: float = 0.0
) -> int:
    """Subscribe, keep, deliver, acknowledge — until ``stop`` is set (or, with ``idle_exit``, after that many
    seconds without a new event). Reconnects with backoff while the hub is away. Returns events delivered."""
    stop = stop or asyncio.Event()
    inbox = Inbox(config.inbox_path)
    own = client is None
    if client is None:
        client = config.hub_client()
    delivered = 0
    try:
        async with aiohttp.ClientSession() as session:
            sinks = _Sinks(config.inbox, session if config.inbox.webhook_url else None)
            delivered += await deliver_pending(inbox, sinks, client, retry_max=config.inbox.retry_max_seconds)

            async def pause(seconds: float) -> None:  # a backoff that ends early when asked to stop
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), seconds)

            while not stop.is_set():
                async for attempt in tenacity.AsyncRetrying(
                    retry=tenacity.retry_if_exception(retryable),
                    wait=tenacity.wait_random_exponential(multiplier=config.sync.retry.initial_backoff, max=30.0),
                    sleep=pause,
                    before_sleep=lambda state: log.warning(
                        "inbox_reconnecting", error=str(state.outcome.exception() if state.outcome else "")
                    ),
                    reraise=True,
                ):
                    with attempt:
                        if stop.is_set():
                            break
                        delivered += await _follow(inbox, sinks, client, config, stop, idle_exit)
                if idle_exit:
                    break
        return delivered
    finally:
        inbox.close()
        if own:
            await client.close()


async def _follow(
    inbox: Inbox, sinks: _Sinks, client: HubClient, config: NodeConfig, stop: asyncio.Event, idle_exit: float
) -> int:
    """One subscription: keep each event, deliver it, acknowledge it."""
    delivered = 0
    received = False
    events = client.subscribe(inbox.cursor())
    try:
        while not stop.is_set():
            next_event = asyncio.ensure_future(anext(events))
            stopped = asyncio.ensure_future(stop.wait())
            # The first wait also covers connecting (TLS, token): it gets a few seconds more.
            wait = (idle_exit if received else max(idle_exit, _CONNECT_GRACE)) if idle_exit else None
            done, _ = await asyncio.wait({next_event, stopped}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if next_event not in done:
                next_event.cancel()
                await asyncio.gather(next_event, return_exceptions=True)
                break  # stopped, or idle long enough
            try:
                event = next_event.result()
            except StopAsyncIteration:
                break
            received = True
            inbox.keep(event)
            delivered += await deliver_pending(inbox, sinks, client, retry_max=config.inbox.retry_max_seconds)
    finally:
        await events.aclose()
    return delivered
