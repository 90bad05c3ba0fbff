"""Run every fuzz target for a bounded number of inputs; exit 1 when one crashes, hangs or breaks an invariant.

::

    python fuzz/run.py                      # every target, --runs inputs each, and the live hub
    python fuzz/run.py --runs 200000 --seconds 60 --targets 'adapter_*,tokens'
    python fuzz/run.py --live 0             # the parsers only

Each target runs in its own process under atheris (:mod:`fuzz._engine`), starting from its seed
corpus ``fuzz/corpus/<target>/`` and its saved inputs ``fuzz/regressions/<target>/`` (inputs
libFuzzer finds interesting on the way go to a temporary directory, not to the committed
corpus). A crashing input is saved to ``fuzz/crashes/<target>/`` with a ``.txt`` report (type,
message, traceback). Bugs already kept in ``fuzz/regressions`` (expected failures in the test
suite until they are fixed) are counted, not reported again. Once triaged, move a crash to
``fuzz/regressions/<target>/`` under a name that says what it is, and add its replay to
``tests/unit/test_fuzz_regressions.py``.

The live hub (:mod:`fuzz.live_server`) gets ``--live`` random and mutated requests (default:
``--runs``); it fails the run on an answer that betrays an unhandled exception.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import FUZZ_DIR, ROOT
from fuzz.targets import TARGETS

__all__ = ["Outcome", "main"]

CORPUS_DIR = FUZZ_DIR / "corpus"
CRASHES_DIR = FUZZ_DIR / "crashes"
DICTIONARY_DIR = FUZZ_DIR / "dictionaries"
REGRESSIONS_DIR = FUZZ_DIR / "regressions"
#: Seconds one input may take before libFuzzer calls it a hang.
INPUT_TIMEOUT = 30
#: Memory a target process may use before libFuzzer calls it a blow-up.
RSS_LIMIT_MB = 2048


@dataclass
class Outcome:
    """What one target's process did."""

    name: str
    runs: int = 0
    seconds: float = 0.0
    #: Signature → saved input, for violations not already kept as regressions.
    new: dict[str, str] = field(default_factory=dict)
    #: Signature → inputs that hit it, for the known bugs.
    known: dict[str, int] = field(default_factory=dict)
    #: Set when the process ended without its figures (a hang, a blow-up, a crash of the engine).
    failure: str = ""

    @property
    def failed(self) -> bool:
        """Whether this target fails the run."""
        return bool(self.new or self.failure)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(line for line in text[-lines:] if not line.startswith("INFO: Instrumenting"))


def run_target(name: str, *, runs: int, seconds: float, seed: int, work: Path) -> Outcome:
    """Fuzz one target in its own process; its outcome."""
    target = TARGETS[name]
    corpus = work / "corpus" / name
    corpus.mkdir(parents=True)
    crashes = CRASHES_DIR / name
    crashes.mkdir(parents=True, exist_ok=True)
    stats, log = work / f"{name}.json", work / f"{name}.log"
    seeds = [str(d) for d in (CORPUS_DIR / name, REGRESSIONS_DIR / name) if d.is_dir()]
    command = [
        sys.executable,
        "-m",
        "fuzz._engine",
        name,
        "--runs",
        str(runs),
        "--seconds",
        str(seconds),
        "--crashes",
        str(crashes),
        "--regressions",
        str(REGRESSIONS_DIR / name),
        "--stats",
        str(stats),
        "--",
        f"-max_len={target.max_len}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-seed={seed}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=0",
        *([f"-dict={dictionary}"] if (dictionary := DICTIONARY_DIR / f"{name}.dict").is_file() else []),
        str(corpus),
        *seeds,
    ]
    with log.open("wb") as out:
        code = subprocess.run(command, cwd=ROOT, env=_environment(), stdout=out, stderr=subprocess.STDOUT).returncode
    if not stats.exists():
        artifacts = sorted(p.name for p in crashes.glob("*-*") if p.name.split("-")[0] in ("timeout", "oom", "crash"))
        return Outcome(name, failure=f"exit {code}; libFuzzer artifacts: {artifacts or 'none'}\n{_tail(log)}")
    data = json.loads(stats.read_text(encoding="utf-8"))
    return Outcome(name, data["runs"], data["seconds"], data["new"], data["known"])


def run_live(messages: int, *, seed: int, seconds: float, work: Path) -> Outcome:
    """The live hub fuzzer (:mod:`fuzz.live_server`) in its own process."""
    stats, log = work / "live_server.json", work / "live_server.log"
    command = [
        sys.executable,
        "-m",
        "fuzz.live_server",
        "--messages",
        str(messages),
        "--seed",
        str(seed),
        "--seconds",
        str(seconds),
        "--stats",
        str(stats),
    ]
    with log.open("wb") as out:
        code = subprocess.run(command, cwd=ROOT, env=_environment(), stdout=out, stderr=subprocess.STDOUT).returncode
    if not stats.exists():
        return Outcome("live_server", failure=f"exit {code}\n{_tail(log)}")
    data = json.loads(stats.read_text(encoding="utf-8"))
    return Outcome("live_server", data["messages"], data["seconds"], data["new"], data["known"])


def _selected(patterns: str) -> list[str]:
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    names = [name for name in TARGETS if any(fnmatch.fnmatchcase(name, p) for p in wanted)]
    if not names and "live_server" not in wanted:
        raise SystemExit(f"no target matches {patterns!r}; targets: {', '.join(TARGETS)}")
    return names


def _report(outcomes: list[Outcome], elapsed: float, seed: int) -> None:
    width = max(len(o.name) for o in outcomes)
    print(f"\n{'target':{width}}  {'inputs':>9}  {'seconds':>7}  result")
    for o in outcomes:
        if o.failure:
            result = "FAILED: " + o.failure.splitlines()[0]
        elif o.new:
            result = f"NEW CRASHES: {len(o.new)}"
        else:
            result = "ok"
        if o.known:
            result += f" (known bugs hit: {sum(o.known.values())} inputs, {len(o.known)} signatures)"
        print(f"{o.name:{width}}  {o.runs:>9}  {o.seconds:>7.1f}  {result}")
    total = sum(o.runs for o in outcomes)
    print(f"\n{total} inputs in {elapsed:.0f} s (--seed {seed} repeats this run)")
    for o in outcomes:
        for sig, path in o.new.items():
            print(f"\nNEW in {o.name}: {sig}\n  input:  {path}\n  report: {Path(path).with_suffix('.txt')}")
        if o.failure:
            print(f"\nFAILED {o.name}:\n{o.failure}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected targets; 0 when nothing new crashed, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python fuzz/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="inputs per target (default: 2000)")
    parser.add_argument("--seconds", type=float, default=300.0, help="longest run of one target (default: 300)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="targets fuzzed at once")
    parser.add_argument("--targets", default="*", help="comma-separated names or globs (default: all)")
    parser.add_argument(
        "--live", type=int, default=None, help="requests sent to the live hub (default: --runs; 0: none)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=int(time.time()) % 2**31 or 1,
        help="seed of libFuzzer's mutations and of the live hub's requests (default: the time; CI fixes it)",
    )
    args = parser.parse_args(argv)

    names = _selected(args.targets)
    live_selected = any(fnmatch.fnmatchcase("live_server", p.strip()) for p in args.targets.split(","))
    live = args.live if args.live is not None else args.runs if live_selected else 0
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="hutong-fuzz-run-"))
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            live_future = (
                pool.submit(run_live, live, seed=args.seed, seconds=args.seconds, work=work) if live > 0 else None
            )
            futures = [
                pool.submit(run_target, n, runs=args.runs, seconds=args.seconds, seed=args.seed, work=work)
                for n in names
            ]
            outcomes = [f.result() for f in futures]
            if live_future is not None:
                outcomes.append(live_future.result())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(outcomes, time.monotonic() - started, args.seed)
    for name in names:  # no crash directory left behind for targets that found nothing
        crashes = CRASHES_DIR / name
        if crashes.is_dir() and not any(crashes.iterdir()):
            crashes.rmdir()
    if CRASHES_DIR.is_dir() and not any(CRASHES_DIR.iterdir()):
        CRASHES_DIR.rmdir()
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
