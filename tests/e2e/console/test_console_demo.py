"""The console of ``hutong demo --console`` in headless Chromium: the demo's own data, as a newcomer sees it.

The demo runs as a user would run it (a subprocess: throwaway CA, hub, three provinces, a live
revocation), then keeps its hub up and prints a console token. The browser logs in with that
token through the login form and reads every page; screenshots land with the other browser tests'.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.demo.run import DEMO_NODES

#: Seconds the demo may take to reach its console (a few hundred persons per province).
DEMO_SECONDS = 180


async def read_token(demo: asyncio.subprocess.Process, transcript: list[str]) -> str:
    """The console token the demo prints once its hub is up for browsing."""
    assert demo.stdout is not None
    while line := (await demo.stdout.readline()).decode():
        transcript.append(line)
        if line.startswith("eyJ"):
            return line.strip()
    raise AssertionError("the demo ended without printing a console token:\n" + "".join(transcript))


def table(capture: dict[str, Any], table_id: str) -> list[dict[str, str]]:
    for found in capture["tables"]:
        if found["id"] == table_id:
            header, *rows = found["rows"]
            return [dict(zip(header, row, strict=True)) for row in rows]
    raise AssertionError(f"no table #{table_id} on {capture['url']}")


def nav(path: str) -> dict[str, str]:
    return {"click": f'header nav a[href="{path}"]'}


async def test_the_demo_console_shows_the_demos_exchange(
    tmp_path: Path, console_browser: Any, free_port: Callable[[], int]
) -> None:
    port = free_port()
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "demo", "--persons", "200", "--console", str(port),
        "--data-dir", str(tmp_path / "demo"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    transcript: list[str] = []
    try:
        async with asyncio.timeout(DEMO_SECONDS):
            token = await read_token(demo, transcript)
        pages = await console_browser(
            f"https://localhost:{port}",
            [
                {"goto": "/"},
                {"capture": "login"},
                {"fill": "#token", "value": token},
                {"click": "#login"},
                {"capture": "overview"},
                nav("/provinces"),
                {"capture": "provinces"},
                nav("/loop"),
                {"capture": "loop"},
                nav("/audit"),
                {"capture": "audit"},
                nav("/certificates"),
                {"capture": "certificates"},
            ],
        )
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)  # as Ctrl-C: the demo stops its hub and prints its summary
        async with asyncio.timeout(60):
            rest, _ = await demo.communicate()
        transcript.append(rest.decode())
    assert demo.returncode == 0, "".join(transcript)

    assert pages.pop("login")["status"] == 401
    for page in pages.values():
        assert page["status"] == 200, page["text"]
        assert page["problems"] == []
    assert "demo-operator · admin, audit:read, query:detail" in pages["overview"]["text"]
    provinces = {row["Province"]: row for row in table(pages["provinces"], "provinces")}
    assert set(provinces) == {code for code, _ in DEMO_NODES}
    for code, _ in DEMO_NODES:
        assert int(provinces[code]["Records held"].replace(",", "")) > 150
    revoked_code, revoked_name = DEMO_NODES[2]  # the node the demo revokes live
    assert provinces[revoked_code]["Certificate"] == "revoked"
    assert {provinces[code]["Certificate"] for code, _ in DEMO_NODES[:2]} == {"valid"}
    kinds = {row["Event"] for row in table(pages["loop"], "loop")}
    assert "duplicate enrollment" in kinds
    methods = {row["Method"] for row in table(pages["audit"], "entries")}
    assert methods  # the newest page of the demo's log
    certificates = {row["Holder"]: row for row in table(pages["certificates"], "certificates")}
    revoked = certificates[f"hutong://province/{revoked_code}/node/{revoked_name}"]
    assert (revoked["State"], revoked["In the CRL"]) == ("revoked", "yes")
    assert "summary" in "".join(transcript)  # the demo finished its run after the console
