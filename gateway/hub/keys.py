"""The hub's secrets on disk: ``keys.json`` in the data directory, mode 0600.

Created on first start. Losing it makes every sealed field unreadable and every person key
unreproducible: back it up with the database (``hutong hub backup`` will include it).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

from gateway.domain.protection import KeyMaterial, generate_key_material
from gateway.errors import ConfigError

__all__ = ["KEYS_FILE", "load_or_create_keys"]

KEYS_FILE = "keys.json"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def load_or_create_keys(data_dir: Path) -> KeyMaterial:
    """Read the hub's key material, creating it (0600) on first start."""
    path = data_dir / KEYS_FILE
    if not path.exists():
        keys = generate_key_material()
        body = {
            "person_key_secret": _b64(keys.person_key_secret),
            "sealing_keys": {kid: _b64(k) for kid, k in keys.sealing_keys.items()},
            "active_key_id": keys.active_key_id,
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        return keys
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is readable by others; run: chmod 600 {path}", reason="KEY_PERMISSIONS_TOO_OPEN", field=str(path)
        )
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return KeyMaterial(
            person_key_secret=base64.b64decode(body["person_key_secret"]),
            sealing_keys={kid: base64.b64decode(k) for kid, k in body["sealing_keys"].items()},
            active_key_id=body["active_key_id"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a valid key file: {exc}", reason="KEY_FILE_INVALID", field=str(path)) from exc
