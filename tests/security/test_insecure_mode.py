"""``--insecure``: plaintext, callers naming themselves, and therefore loopback only (THREAT_MODEL.md G4).

The gRPC port was always refused off loopback; the console, plain HTTP under ``--insecure``, is
refused off loopback too: its tokens and person pages must not cross a network in clear.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.hub.server import HubServer, HubSettings
from pki import DemoPki


# S104: binding every interface is exactly what the hub must refuse here.
@pytest.mark.parametrize("host", ["0.0.0.0", "", "192.0.2.10", "hub.example.org", "::"])  # noqa: S104
def test_insecure_mode_refuses_a_console_off_loopback(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HubServer(HubSettings(data_dir=tmp_path, insecure=True, console_listen=(host, 8443)))
    assert (caught.value.reason, caught.value.field) == ("INSECURE_NOT_LOOPBACK", "console_listen")
    assert "plain HTTP" in caught.value.message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]"])
def test_insecure_mode_accepts_a_console_on_loopback(tmp_path: Path, host: str) -> None:
    hub = HubServer(HubSettings(data_dir=tmp_path, insecure=True, console_listen=(host, 0)))
    assert hub.settings.console_listen == (host, 0)


def test_a_tls_hub_may_serve_its_console_on_any_interface(tmp_path: Path, demo_pki: DemoPki) -> None:
    """With TLS the console is HTTPS with the hub's certificate: where it listens is the operator's choice."""
    hub = HubServer(HubSettings(data_dir=tmp_path, tls=demo_pki.hub_tls, console_listen=("0.0.0.0", 0)))  # noqa: S104
    assert hub.settings.console_listen == ("0.0.0.0", 0)  # noqa: S104
