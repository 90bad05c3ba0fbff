"""What every target shares: the contract, reading options from the input's bytes, the target registry.

A target is ``check(data: bytes) -> None``. It calls a parser through :func:`allowed` (a
:class:`~gateway.errors.HutongError` is a refusal, which is fine) and checks invariants with
:func:`expect`; anything that escapes ``check`` is a violation of the contract. A violation is
named by :func:`signature`: the exception's type and the innermost frame of the project's own code
it passed through (where the fix goes), so that one bug found by many inputs counts once.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from gateway.errors import HutongError

__all__ = [
    "FUZZ_DIR",
    "ROOT",
    "TARGETS",
    "ByteReader",
    "InvariantBroken",
    "Target",
    "allowed",
    "describe",
    "expect",
    "signature",
    "slug",
    "target",
]

P = ParamSpec("P")
T = TypeVar("T")

#: The repository, and this folder in it.
ROOT = Path(__file__).resolve().parent.parent
FUZZ_DIR = ROOT / "fuzz"
#: Code whose frames name a violation (the fuzz harness only when nothing else is on the stack).
_PRODUCT = tuple(str(ROOT / name) + "/" for name in ("gateway", "adapters", "pki", "hutong"))


class InvariantBroken(AssertionError):
    """A parser accepted an input but what it returned breaks a property it promises."""

    def __init__(self, invariant: str, detail: str = "") -> None:
        super().__init__(f"{invariant}: {detail}" if detail else invariant)
        #: A stable name of the property (the violation's signature).
        self.invariant = invariant


def expect(condition: object, invariant: str, detail: str = "") -> None:
    """Raise :class:`InvariantBroken` naming ``invariant`` unless ``condition`` holds."""
    if not condition:
        raise InvariantBroken(invariant, detail)


def allowed(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
    """``call(*args, **kwargs)``, or None when it refuses the input with one of the project's errors."""
    try:
        return call(*args, **kwargs)
    except HutongError:
        return None


class ByteReader:
    """Options drawn from the front of an input, the rest as payload; past the end, every read gives zeros."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    @property
    def exhausted(self) -> bool:
        """Whether every byte has been read."""
        return self._position >= len(self._data)

    def byte(self) -> int:
        """The next byte (0 past the end)."""
        if self._position >= len(self._data):
            return 0
        value = self._data[self._position]
        self._position += 1
        return value

    def below(self, limit: int) -> int:
        """A number from 0 to ``limit - 1`` (two bytes' worth of choice)."""
        if limit <= 1:
            return 0
        value = self.byte() if limit <= 256 else self.byte() << 8 | self.byte()
        return value % limit

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options`` (not empty)."""
        return options[self.below(len(options))]

    def take(self, count: int) -> bytes:
        """Up to ``count`` next bytes."""
        chunk = self._data[self._position : self._position + count]
        self._position += len(chunk)
        return chunk

    def rest(self) -> bytes:
        """Every byte not read yet."""
        chunk = self._data[self._position :]
        self._position = len(self._data)
        return chunk


@dataclass(frozen=True)
class Target:
    """One parser under test."""

    name: str
    #: Raises when the contract is broken; returns otherwise.
    check: Callable[[bytes], None]
    #: What it feeds to which parser (the first line of the check's docstring).
    doc: str
    #: Modules (and their submodules) whose coverage guides libFuzzer: the parser and what it hands input to.
    instrument: tuple[str, ...] = ()
    #: Longest input libFuzzer generates for it.
    max_len: int = 16384


#: Every target, by name, in the order they are defined.
TARGETS: dict[str, Target] = {}


def target(
    name: str, *instrument: str, max_len: int = 16384
) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    """Register ``check`` as the target ``name``, guided by the coverage of the modules ``instrument``."""

    def register(check: Callable[[bytes], None]) -> Callable[[bytes], None]:
        if name in TARGETS:
            raise ValueError(f"target {name} is defined twice")
        doc = (check.__doc__ or "").strip().splitlines()
        TARGETS[name] = Target(name, check, doc[0] if doc else "", instrument, max_len)
        return check

    return register


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    # Too deep a recursion ends in whichever frame crossed the limit: name the way in instead.
    order = frames if isinstance(exc, RecursionError) else list(reversed(frames))
    for frame in order:
        if frame.filename.startswith(_PRODUCT):
            return f"{Path(frame.filename).relative_to(ROOT)}:{frame.name}"
    for frame in order:
        if frame.filename.startswith(str(ROOT) + "/"):
            return f"{Path(frame.filename).relative_to(ROOT)}:{frame.name}"
    return frames[-1].name if frames else "?"


def signature(exc: BaseException) -> str:
    """What names a violation: ``InvariantBroken(name)``, else ``Type at file:function`` of the project's code.

    The function is the innermost of the product's on the stack (where the fix goes); for a
    RecursionError, the outermost (the parser the input entered through).
    """
    if isinstance(exc, InvariantBroken):
        return f"InvariantBroken({exc.invariant})"
    return f"{type(exc).__name__} at {_where(exc)}"


def describe(exc: BaseException) -> str:
    """The signature, the message and the traceback, for a crash report."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{signature(exc)}\n{type(exc).__name__}: {exc}\n\n{''.join(lines)}"


def slug(text: str) -> str:
    """``text`` as a file-name-safe slug."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80]
