"""Running a server (the hub, a node's federation server) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

__all__ = ["serve_until_signalled"]


async def serve_until_signalled(
    start: Callable[[], Awaitable[int]], stop: Callable[[], Awaitable[None]], *, port_file: Path | None = None
) -> None:
    """Start, write the bound port to ``port_file`` (atomically) if asked, wait for a signal, then stop (drain)."""
    port = await start()
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n", encoding="utf-8")
        tmp.replace(port_file)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await stop()
