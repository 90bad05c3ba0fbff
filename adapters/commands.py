"""``hutong adapt``: a province export through its profile, to records and rejects, with a summary."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adapters.profile import load_profile
from adapters.run import Reject, Summary, adapt, household_to_json, record_to_json
from gateway.domain.model import Household, PersonRecord

__all__ = ["adapt_command", "profile_lint"]

#: Exit code when rows were rejected or a file could not be read (the outputs are still written).
EXIT_REJECTS = 4


def profile_lint(path: Path) -> int:
    """``hutong adapt profile-lint P``: load and validate a profile; say what it reads."""
    profile = load_profile(path)
    console = Console()
    console.print(f"[green]valid[/] profile {path}: {profile.name}")
    console.print(f"  province {profile.province}, format {profile.format}, encoding {profile.encoding}")
    console.print(f"  reads {len(profile.source_fields)} source fields: {', '.join(profile.source_fields)}")
    console.print(f"  maps {len(profile.record)} record fields and {len(profile.enrollments)} enrollment group(s)")
    return 0


def adapt_command(
    profile_path: Path,
    files: Sequence[Path],
    *,
    out: Path | None,
    rejects: Path | None,
    check: bool,
    households: Path | None = None,
) -> int:
    """``hutong adapt``: write records (``-o``), rejects (``--rejects``), households; ``--check`` writes nothing."""
    profile = load_profile(profile_path)
    console = Console(stderr=True)
    with contextlib.ExitStack() as stack:
        record_out: IO[str] | None = None
        reject_out: IO[str] | None = None
        household_out: IO[str] | None = None
        if not check:
            record_out = stack.enter_context(_open(out))
            reject_out = stack.enter_context(_open(rejects)) if rejects is not None else None
            household_out = stack.enter_context(_open(households)) if households is not None else None
        progress = stack.enter_context(
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,} rows"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            )
        )
        task = progress.add_task(profile.name, total=None)
        kept_rejects: list[Reject] = []

        def on_record(record: PersonRecord) -> None:
            if record_out is not None:
                record_out.write(record_to_json(record) + "\n")

        def on_reject(reject: Reject) -> None:
            if reject_out is not None:
                reject_out.write(reject.to_json() + "\n")
            elif len(kept_rejects) < 20:
                kept_rejects.append(reject)

        seen = 0

        def on_row() -> None:
            # The bar moves every 1,000 rows: a redraw check per row would cost more than reading it.
            nonlocal seen
            seen += 1
            if seen == 1000:
                progress.advance(task, seen)
                seen = 0

        def on_household(household: Household) -> None:
            if household_out is not None:
                household_out.write(household_to_json(household) + "\n")

        summary = adapt(
            profile,
            files,
            on_record=on_record,
            on_reject=on_reject,
            on_household=on_household if household_out is not None else None,
            on_row=on_row,
        )
    _print_summary(console, summary, kept_rejects if reject_out is None else [])
    return 0 if not summary.rejected and not summary.failed_files else EXIT_REJECTS


@contextlib.contextmanager
def _open(path: Path | None) -> Iterator[IO[str]]:
    if path is None or str(path) == "-":
        yield sys.stdout
        return
    with path.open("w", encoding="utf-8") as fh:
        yield fh


def _print_summary(console: Console, summary: Summary, rejects: list[Reject]) -> None:
    table = Table(title="adapt: every row accounted for")
    for column in ("file", "rows read", "records", "rejected", "structure rows", "problem"):
        table.add_column(column, overflow="fold")
    for f in summary.files:
        structure = ", ".join(f"{kind} {n}" for kind, n in sorted(f.structure.items()))
        table.add_row(f.path, f"{f.rows_read:,}", f"{f.produced:,}", f"{f.rejected:,}", structure, f.failure)
    console.print(table)
    console.print(f"rows read {summary.rows_read:,} = records {summary.produced:,} + rejected {summary.rejected:,}")
    if summary.households:
        console.print(f"households {summary.households:,}")
    if summary.reasons:
        console.print("rejected, by reason: " + ", ".join(f"{r} {n:,}" for r, n in summary.reasons.most_common()))
    for reject in rejects:
        problems = "; ".join(f"{p.field}: {p.reason}" for p in reject.problems)
        console.print(f"  {reject.file} {reject.location}: {problems}")
