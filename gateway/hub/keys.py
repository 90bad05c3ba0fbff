"""The hub's secrets on disk: ``keys.json`` in the data directory, mode 0600.

Created on first start, in the crypto suite the hub is configured with (``intl`` unless
told otherwise), and the file records that suite. Losing it makes every sealed field
unreadable and every person key unreproducible: back it up with the database (``hutong hub
backup`` will include it).

The suite is fixed when the file is made. A hub configured for another suite than its key
file holds refuses to start (``CRYPTO_SUITE_MISMATCH``) rather than switch in place: every
person key would change, so no record would match its earlier versions or other provinces'
records, and every sealed field would be unreadable. A key file without a ``suite`` was
written before suites existed and is ``intl``.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

from gateway.domain.protection import CryptoSuite, KeyMaterial, generate_key_material, parse_suite
from gateway.errors import ConfigError
from pki.operator import write_secret_file

__all__ = ["KEYS_FILE", "load_or_create_keys", "require_private"]

KEYS_FILE = "keys.json"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def require_private(path: Path) -> None:
    """Refuse a key file that group or others may read (ConfigError KEY_PERMISSIONS_TOO_OPEN)."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is readable by others; run: chmod 600 {path}", reason="KEY_PERMISSIONS_TOO_OPEN", field=str(path)
        )


def load_or_create_keys(data_dir: Path, *, suite: str | None = None) -> KeyMaterial:
    """Read the hub's key material, creating it (0600) in ``suite`` (default intl) on first start.

    With ``suite`` given, a key file of another suite is refused (ConfigError
    CRYPTO_SUITE_MISMATCH); with ``None`` the file's own suite is used.
    """
    wanted = None if suite is None else parse_suite(suite)
    path = data_dir / KEYS_FILE
    if not path.exists():
        keys = generate_key_material(suite=wanted or CryptoSuite.INTL)
        body = {
            "suite": keys.suite.value,
            "person_key_secret": _b64(keys.person_key_secret),
            "sealing_keys": {kid: _b64(k) for kid, k in keys.sealing_keys.items()},
            "active_key_id": keys.active_key_id,
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        write_secret_file(path, json.dumps(body, indent=2).encode(), field="keys_file")
        return keys
    require_private(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        held = body.get("suite", CryptoSuite.INTL.value)
        if held not in set(CryptoSuite):
            raise ValueError(f"unknown crypto suite {held!r}")
        held_suite = CryptoSuite(held)
        if wanted is not None and wanted is not held_suite:
            # Checked before the keys are parsed: the keys of another suite may not even fit.
            raise ConfigError(
                f"{path} holds keys of crypto suite {held_suite.value!r} but the hub is configured for"
                f" {wanted.value!r}; a hub cannot switch suites in place: every person key would change"
                f" and every sealed field would become unreadable. Configure crypto_suite"
                f" = {held_suite.value!r}, or start a new hub in an empty data directory and resync",
                reason="CRYPTO_SUITE_MISMATCH",
                field="crypto_suite",
                metadata={"path": str(path), "configured_suite": wanted.value, "key_file_suite": held_suite.value},
            )
        return KeyMaterial(
            person_key_secret=base64.b64decode(body["person_key_secret"]),
            sealing_keys={kid: base64.b64decode(k) for kid, k in body["sealing_keys"].items()},
            active_key_id=body["active_key_id"],
            suite=held_suite,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a valid key file: {exc}", reason="KEY_FILE_INVALID", field=str(path)) from exc
