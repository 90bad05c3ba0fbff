"""TOML configuration files (``node.toml``, ``hub.toml``): read, check every key, typed reads naming the key.

Both loaders follow one pattern: :func:`read_sections` refuses a file that is missing, unreadable,
not TOML, or holds a section or key the loader does not know; each setting is then read with a
:class:`Section` method that checks its type and range. Every mistake is a
:class:`~gateway.errors.ConfigError` whose field is ``section.key`` (exit 3 at the command line).
Relative paths are read from the config file's directory, so a config directory can be moved or
mounted as a whole.

:func:`read_toml` is the one way every other TOML file (profiles, policy, tier and monitoring rules, the
node directory) is read: a file that is missing, unreadable, not UTF-8 or not TOML is a ConfigError
naming the loader's field, never an ``OSError`` or ``UnicodeDecodeError``. :func:`config_path` is the one
way a configured path is made: ``~user`` that names nobody, or a NUL byte, is a ConfigError naming the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

__all__ = ["Section", "config_path", "parse_listen", "parse_port", "read_sections", "read_text", "read_toml"]

_REQUIRED = object()


def read_text(
    path: Path,
    *,
    what: str,
    field: str,
    error: type[ConfigError] = ConfigError,
    missing: str = "FILE_MISSING",
    unreadable: str = "FILE_MISSING",
) -> str:
    """The text of the UTF-8 file ``what`` at ``path``; missing, unreadable or not UTF-8, a ConfigError on ``field``."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist", reason=missing, field=field) from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}", reason=unreadable, field=field) from None
    except UnicodeDecodeError as exc:
        # The offset only: the bytes may be personal data pasted by mistake.
        where = f"byte {exc.start} does not decode"
        raise error(f"{what} {path} is not UTF-8 text ({where})", reason="ENCODING_INVALID", field=field) from None


def read_toml(
    path: Path,
    *,
    what: str,
    field: str,
    error: type[ConfigError] = ConfigError,
    invalid: str | None = None,
    missing: str = "FILE_MISSING",
    unreadable: str = "FILE_MISSING",
) -> dict[str, Any]:
    """The document of the TOML file ``what`` at ``path``; any fault (see :func:`read_text`) a ConfigError on ``field``.

    ``invalid`` is the reason for text that is not TOML (the error class's own reason by default).
    """
    text = read_text(path, what=what, field=field, error=error, missing=missing, unreadable=unreadable)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}", reason=invalid, field=field) from None


def read_sections(path: Path, sections: Mapping[str, frozenset[str]], *, what: str) -> dict[str, Section]:
    """Every known section of the TOML file at ``path`` (empty where absent); unknown sections and keys are errors."""
    doc = read_toml(
        path,
        what=what,
        field="config",
        invalid="CONFIG_INVALID",
        missing="CONFIG_MISSING",
        unreadable="CONFIG_UNREADABLE",
    )
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


def parse_port(text: str, *, low: int = 0) -> int | None:
    """``text`` as a port from ``low`` to 65535, or None: ASCII digits only.

    ``str.isdigit`` alone accepts '²' (which ``int`` refuses) and '٧' (which ``int`` reads as 7).
    """
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        return None
    port = int(text)
    return port if low <= port <= 65535 else None


def parse_listen(value: str, *, field: str, default_host: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host is ``default_host``) as (host, port)."""
    host, sep, text = value.rpartition(":")
    port = parse_port(text) if sep else None
    if port is None:
        raise ConfigError(f"{field} must be HOST:PORT, not {value!r}", field=field)
    return host.strip("[]") or default_host, port


def config_path(value: str, base: Path, *, field: str) -> Path:
    """``value`` as a path, ``~`` expanded, a relative one read from ``base``; a ConfigError on ``field`` if none.

    A NUL byte (which no file name holds; ``open`` and ``stat`` raise ValueError) and ``~user`` for a user
    this machine does not know (``expanduser`` raises RuntimeError) are refused here, once for every key.
    """
    if "\x00" in value:
        raise ConfigError(f"{field} must be a path without a NUL character", reason="PATH_INVALID", field=field)
    try:
        return base / Path(value).expanduser()
    except (RuntimeError, ValueError):
        user = value[1:].partition("/")[0]
        raise ConfigError(
            f"{field} names the home directory of {user or 'the current user'!r}, which this machine does not know",
            reason="PATH_INVALID",
            field=field,
        ) from None


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
        return config_path(self.text(key), self._base, field=f"{self.name}.{key}")

    def path_of(self, value: str, key: str | None = None) -> Path:
        """A path given as a value (of list ``key``), read from the config file's directory when relative."""
        return config_path(value, self._base, field=self._field_of(value, key))

    def _field_of(self, value: str, key: str | None) -> str:
        # path_of's callers pass an item of a list key: name the item (section.key[i]) the error concerns.
        keys = [key] if key is not None else list(self.table)
        for name in keys:
            items = self.table.get(name)
            if isinstance(items, list) and value in items:
                return f"{self.name}.{name}[{items.index(value)}]"
        return f"{self.name}.{key}" if key is not None else self.name

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
