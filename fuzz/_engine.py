"""One target under atheris (libFuzzer), in its own process.

``python -m fuzz._engine TARGET [options] -- [libFuzzer flags]``

``fuzz/run.py`` starts one of these per target. The functions of the modules the target names
(:attr:`fuzz._harness.Target.instrument`) are instrumented once imported, so that libFuzzer sees
their coverage (``atheris.instrument_imports`` would do it while importing, but slows down every
import of the process, three seconds a target). Before fuzzing, every input
in ``fuzz/regressions/TARGET/`` is replayed: the signatures of those that still fail are *known*
bugs (expected failures in the test suite), counted but not saved again. Any other violation is
saved, smallest input per signature, to the crash directory with a report beside it
(``<signature>-<sha256>`` and ``.txt``), and fuzzing goes on, so that one run finds several bugs.

The process stops itself after ``--runs`` inputs or ``--seconds`` (libFuzzer would exit without
letting Python write anything) and writes its figures to ``--stats`` as JSON. A hang or a memory
blow-up is libFuzzer's to catch (``-timeout``, ``-rss_limit_mb``): it writes ``timeout-*`` or
``oom-*`` to ``-artifact_prefix`` and exits without stats, which the runner reports as a failure.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import atheris  # type: ignore[import-untyped]  # ships no type information
import structlog


def _drop(*_: Any) -> Any:
    raise structlog.DropEvent


def _is_in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in packages)


def instrument(packages: tuple[str, ...]) -> int:
    """Instrument every Python function of ``packages`` (imported already); how many there were."""
    functions = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, types.FunctionType)
        and isinstance(getattr(obj, "__module__", None), str)
        and _is_in(obj.__module__, packages)
    ]
    for function in functions:
        atheris.instrument_func(function)
    return len(functions)


def main(argv: list[str]) -> None:
    """Fuzz one target until its budget is spent."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m fuzz._engine")
    parser.add_argument("target")
    parser.add_argument("--runs", type=int, default=1000, help="inputs to run, replayed regressions included")
    parser.add_argument("--seconds", type=float, default=float("inf"), help="stop after this long")
    parser.add_argument("--crashes", type=Path, required=True, help="where new crashing inputs are saved")
    parser.add_argument("--regressions", type=Path, required=True, help="saved inputs: known bugs among them")
    parser.add_argument("--stats", type=Path, required=True, help="JSON figures of the run")
    args = parser.parse_args(argv[:split])

    # Log lines of the product (a rejected row, an indexed source) would cost more than the parse.
    structlog.configure(processors=[_drop])
    logging.disable(logging.CRITICAL)
    from fuzz import _material as material
    from fuzz._harness import describe, signature, slug
    from fuzz.targets import TARGETS

    chosen = TARGETS[args.target]
    check = chosen.check
    print(f"INFO: instrumented {instrument(chosen.instrument)} functions of {', '.join(chosen.instrument)}")
    known: dict[str, int] = {}
    for path in sorted(args.regressions.glob("*")) if args.regressions.is_dir() else []:
        try:
            check(path.read_bytes())
        except Exception as exc:
            known[signature(exc)] = 0
    args.crashes.mkdir(parents=True, exist_ok=True)
    found: dict[str, tuple[int, Path]] = {}
    runs = 0
    started = time.monotonic()

    def finish() -> None:
        stats = {
            "target": args.target,
            "runs": runs,
            "seconds": round(time.monotonic() - started, 2),
            "new": {sig: str(path) for sig, (_, path) in sorted(found.items())},
            "known": dict(sorted(known.items())),
        }
        args.stats.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        material.cleanup()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def save(data: bytes, exc: Exception, sig: str) -> None:
        previous = found.get(sig)
        if previous is not None and previous[0] <= len(data):
            return
        if previous is not None:
            previous[1].unlink(missing_ok=True)
            previous[1].with_suffix(".txt").unlink(missing_ok=True)
        path = args.crashes / f"{slug(sig)}-{hashlib.sha256(data).hexdigest()[:12]}"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text(describe(exc), encoding="utf-8")
        found[sig] = (len(data), path)
        print(f"NEW CRASH in {args.target}: {sig} -> {path}", file=sys.stderr, flush=True)

    def one_input(data: bytes) -> None:
        nonlocal runs
        runs += 1
        try:
            check(data)
        except Exception as exc:
            sig = signature(exc)
            if sig in known:
                known[sig] += 1
            else:
                save(data, exc, sig)
        if runs >= args.runs or time.monotonic() - started >= args.seconds:
            finish()

    try:
        check(b"")  # builds the target's material (a PKI, an export) before the clock starts
    except Exception as exc:
        if signature(exc) not in known:
            save(b"", exc, signature(exc))
    started = time.monotonic()

    atheris.Setup([sys.argv[0], *argv[split + 1 :]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
