"""Fixtures of the end-to-end tests: the ``hutong`` command in real processes, loopback only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HUTONG = [sys.executable, "-m", "gateway.cli"]

#: ``serve_hub(*extra_args)`` starts ``hutong hub serve`` with quickstart certificates; returns (certs, port).
ServeHub = Callable[..., tuple[Path, int]]


def run_hutong(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``hutong ARGS`` to completion, wide output, text captured."""
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([*HUTONG, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def serve_hub(tmp_path: Path) -> Iterator[ServeHub]:
    """Start one hub process (certificates for node 440000/gd-gz-01); stopped with SIGTERM after the test."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(*extra: str) -> tuple[Path, int]:
        certs = tmp_path / "certs"
        made = run_hutong("pki", "quickstart", str(certs), "--node", "440000/gd-gz-01", cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        port_file = tmp_path / "hub.port"
        log_path = tmp_path / "hub.log"
        with log_path.open("wb") as log:
            hub = subprocess.Popen(
                [
                    *HUTONG, "hub", "serve", "--data-dir", str(tmp_path / "hub"), "--listen", "127.0.0.1:0",
                    "--cert", str(certs / "hub.pem"), "--key", str(certs / "hub.key"), "--ca", str(certs / "ca.pem"),
                    "--port-file", str(port_file), *extra,
                ],
                stdout=log,
                stderr=log,
            )  # fmt: skip
        started.append((hub, log_path))
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert hub.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return certs, int(port_file.read_text())

    yield start
    for hub, log_path in started:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=30) == 0, log_path.read_text()


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """How ``serve_hub``'s hub (``--data-dir hub``) is named to an operator's command: per engine.

    ``--data-dir hub`` (SQLite there), or ``--config etc/hub.toml`` naming that directory and a
    PostgreSQL ``store.url`` (then add the same ``--config`` to ``serve_hub``).
    """
    if request.param == "sqlite":
        return ["--data-dir", str(tmp_path / "hub")]
    url = request.getfixturevalue("postgres_url")
    config = tmp_path / "etc" / "hub.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[hub]\ndata_dir = "../hub"\n[store]\nurl = "{url}"\n', encoding="utf-8")
    return ["--config", str(config)]
