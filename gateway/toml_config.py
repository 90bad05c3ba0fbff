"""TOML configuration files (``node.toml``, ``hub.toml``): read, check every key, typed reads naming the key.

Both loaders follow one pattern: :func:`read_sections` refuses a file that is missing, unreadable,
not TOML, or holds a section or key the loader does not know; each setting is then read with a
:class:`Section` method that checks its type and range. Every mistake is a
:class:`~gateway.errors.ConfigError` whose field is ``section.key`` (exit 3 at the command line).
Relative paths are read from the config file's directory, so a config directory can be moved or
mounted as a whole.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

__all__ = ["Section", "parse_listen", "read_sections"]

_REQUIRED = object()


def read_sections(path: Path, sections: Mapping[str, frozenset[str]], *, what: str) -> dict[str, Section]:
    """Every known section of the TOML file at ``path`` (empty where absent); unknown sections and keys are errors."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no {what} at {path}", reason="CONFIG_MISSING", field="config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", reason="CONFIG_UNREADABLE", field="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not TOML: {exc}", reason="CONFIG_INVALID", field="config") from None
    for section, value in doc.items():
        if section not in sections:
            raise ConfigError(f"unknown section [{section}] in {path}", field=section)
        if not isinstance(value, dict):
            raise ConfigError(f"{section} must be a table", field=section)
        for key in value:
            if key not in sections[section]:
                raise ConfigError(f"unknown key {section}.{key} in {path}", field=f"{section}.{key}")
    base = path.resolve().parent
    return {name: Section(doc.get(name, {}), name, base) for name in sections}


def parse_listen(value: str, *, field: str, default_host: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host is ``default_host``) as (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{field} must be HOST:PORT, not {value!r}", field=field)
    return host.strip("[]") or default_host, int(port)


class Section:
    """Typed reads of one table, each error naming ``section.key``."""

    def __init__(self, table: Mapping[str, Any], name: str, base: Path) -> None:
        self.table = table
        self.name = name
        self._base = base

    def __contains__(self, key: str) -> bool:
        return key in self.table

    def _get(self, key: str, default: Any) -> Any:
        if key in self.table:
            return self.table[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self.name}.{key} is required", reason="CONFIG_MISSING", field=f"{self.name}.{key}")
        return default

    def fail(self, key: str, what: str) -> ConfigError:
        """The error for ``section.key``, which must be ``what``."""
        return ConfigError(f"{self.name}.{key} must be {what}", field=f"{self.name}.{key}")

    def text(self, key: str, default: Any = None) -> str:
        """A string; without a default the key is required and must not be empty."""
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, str) or (default is None and not value):
            raise self.fail(key, "a non-empty string")
        return value

    def texts(self, key: str, default: tuple[str, ...]) -> list[str]:
        """A list of non-empty strings."""
        value = self._get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "a list of strings")
        return value

    def path(self, key: str) -> Path:
        """A required path; a relative one is read from the config file's directory."""
        return self._base / Path(self.text(key)).expanduser()

    def path_of(self, value: str) -> Path:
        """A path given as a value (of a list key), read from the config file's directory when relative."""
        return self._base / Path(value).expanduser()

    def optional_path(self, key: str) -> Path | None:
        """A path, or None when the key is absent."""
        return self.path(key) if key in self.table else None

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        """An integer from ``low`` to ``high``."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"an integer from {low} to {high}")
        return value

    def number(self, key: str, default: float) -> float:
        """A positive number (integer or float)."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(key, "a positive number")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        """``true`` or ``false``."""
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value
