"""Fixtures of the browser tests: the hub's web console in a real headless Chromium.

``console_browser`` runs ``drive.cjs`` (Node, playwright-core) as a child process of the test's
event loop, so the hub under test keeps serving while the browser reads its pages. What they need:

* Chromium: ``$HUTONG_CHROMIUM``, else ``/usr/bin/chromium`` (``apt-get install chromium``);
* Node.js (``node`` on PATH) and playwright-core in ``$HUTONG_NODE_MODULES``, else
  ``.ci/tools/node_modules`` (``cd .ci/tools && npm install --no-save playwright-core@1.65.1``).
  playwright-core never downloads a browser here: it runs the Chromium above.

Without them the tests skip, naming what is missing; with ``HUTONG_REQUIRE_BROWSER=1`` (CI) they fail.
Screenshots are kept after the test, as artefacts: ``$HUTONG_ARTIFACTS/console/<test name>/``, by
default under ``build/test-artifacts``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest

DRIVER = Path(__file__).with_name("drive.cjs")
#: The playwright-core CI installs (.ci/run); any 1.46+ presents client certificates.
PLAYWRIGHT_CORE = "playwright-core@1.65.1"
#: Seconds each navigation, click or fill may take in the browser.
ACTION_SECONDS = 15
#: Seconds one run of the driver may take, browser start included; the test waits a little longer.
OVERALL_SECONDS = 60

#: A step of drive.cjs: {"goto": path}, {"fill": selector, "value": text}, {"click": selector}, {"capture": name}.
Step = dict[str, Any]
#: What a capture saw: name, url, status, title, text, tables [{"id", "rows"}], ids, problems.
Capture = dict[str, Any]


class Browse(Protocol):
    """``await console_browser(base_url, steps, certificate=(cert_path, key_path) | None)``: captures by name."""

    def __call__(
        self, base_url: str, steps: Sequence[Step], *, certificate: tuple[Path, Path] | None = None
    ) -> Awaitable[dict[str, Capture]]: ...


@dataclass(frozen=True)
class _Tools:
    node: str
    node_modules: Path
    chromium: Path


def _find_tools(root: Path) -> _Tools | str:
    """What the driver needs, or why it cannot run (what is missing and how to install it)."""
    missing = []
    node = shutil.which("node")
    if node is None:
        missing.append("Node.js (no `node` on PATH; install Node.js 20: apt-get install nodejs)")
    node_modules = Path(os.environ.get("HUTONG_NODE_MODULES") or root / ".ci" / "tools" / "node_modules")
    if not (node_modules / "playwright-core" / "package.json").is_file():
        missing.append(
            f"playwright-core (not in {node_modules}; cd .ci/tools && npm install --no-save {PLAYWRIGHT_CORE},"
            " or set HUTONG_NODE_MODULES)"
        )
    chromium = Path(os.environ.get("HUTONG_CHROMIUM") or "/usr/bin/chromium")
    if not (chromium.is_file() and os.access(chromium, os.X_OK)):
        missing.append(f"Chromium (no executable {chromium}; apt-get install chromium, or set HUTONG_CHROMIUM)")
    if missing:
        return "the browser tests need " + "; ".join(missing)
    assert node is not None
    return _Tools(node, node_modules, chromium)


@pytest.fixture(scope="session")
def _browser_tools(pytestconfig: pytest.Config) -> _Tools | str:
    return _find_tools(pytestconfig.rootpath)


@pytest.fixture
def console_artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's screenshot directory, emptied first and kept afterwards (one per test: no clash under xdist)."""
    base = os.environ.get("HUTONG_ARTIFACTS")
    root = Path(base) if base else request.config.rootpath / "build" / "test-artifacts"
    folder = root / "console" / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def console_browser(
    _browser_tools: _Tools | str, console_artifacts: Path, prerequisite: Callable[..., NoReturn]
) -> Browse:
    """Drive the console in headless Chromium: ``await console_browser(base_url, steps, certificate=...)``.

    Returns the captures by name (see drive.cjs for what each holds); a full-page screenshot of
    each is ``console_artifacts / f"{name}.png"``. Fails the test with the driver's message when
    the browser fails or takes too long.
    """
    if isinstance(_browser_tools, str):
        prerequisite(_browser_tools, required_by="HUTONG_REQUIRE_BROWSER")
    tools = _browser_tools

    async def browse(
        base_url: str, steps: Sequence[Step], *, certificate: tuple[Path, Path] | None = None
    ) -> dict[str, Capture]:
        document = {
            "baseURL": base_url,
            "clientCertificate": None
            if certificate is None
            else {"certPath": str(certificate[0]), "keyPath": str(certificate[1])},
            "screenshots": str(console_artifacts),
            "executablePath": str(tools.chromium),
            "actionTimeoutMs": ACTION_SECONDS * 1000,
            "overallTimeoutMs": OVERALL_SECONDS * 1000,
            "steps": list(steps),
        }
        env = {**os.environ, "NODE_PATH": str(tools.node_modules), "NO_COLOR": "1"}
        process = await asyncio.create_subprocess_exec(
            tools.node,
            str(DRIVER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            async with asyncio.timeout(OVERALL_SECONDS + 15):
                out, err = await process.communicate(json.dumps(document).encode())
        except TimeoutError:
            await _stop(process)
            pytest.fail(
                f"the browser driver did not end within {OVERALL_SECONDS + 15}s; screenshots in {console_artifacts}"
            )
        if process.returncode != 0:
            pytest.fail(
                f"the browser driver failed (exit {process.returncode}): {err.decode(errors='replace').strip()}\n"
                f"screenshots in {console_artifacts}",
                pytrace=False,
            )
        captures: list[Capture] = json.loads(out)
        return {capture["name"]: capture for capture in captures}

    return browse


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM (playwright-core then closes the browser it started), SIGKILL if that is not enough."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(5):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
