"""Running a server (the hub, a node's federation server) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

__all__ = ["serve_until_signalled", "set_on_signals"]


def set_on_signals(event: asyncio.Event) -> None:
    """Set ``event`` on SIGTERM or SIGINT, where the running loop can install handlers.

    It cannot on Windows (NotImplementedError) or outside the main thread (RuntimeError, e.g. a
    command run from an embedding application's worker thread); there Ctrl-C still raises
    KeyboardInterrupt, and long-running loops also stop on their own bounds.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)


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
    set_on_signals(stopping)
    await stopping.wait()
    await stop()
