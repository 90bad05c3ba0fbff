"""Fuzzing's inputs, replayed: seeds and saved crashes keep the parsers' contract, and a fixed crash stays fixed.

The contract (``fuzz/__init__.py``): bad input raises one of the project's errors or gives a result;
anything else, or a broken invariant, is a bug. Every file of ``fuzz/corpus/<target>/`` (the seeds,
from the repository's samples) and of ``fuzz/regressions/<target>/`` (inputs that once crashed a
parser) goes through the target's check function, without atheris. A crash not fixed yet is an
expected failure here (strict: fixing it turns the test red until its mark is removed), listed in
``KNOWN_BUGS`` with what is wrong and where the fix goes. The live hub's saved requests, and a
bounded run of random and mutated requests, go through a real hub.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit import AuditEntry, checkpoint

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # fuzz/ is a folder of the repository, not an installed package


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


targets = _module("fuzz.targets")
live_server = _module("fuzz.live_server")

FUZZ = ROOT / "fuzz"
TARGETS: dict[str, Any] = targets.TARGETS

#: Saved inputs that still break the contract: "<target>/<file>" → (what is wrong and where to fix it, the
#: exception the replay raises). Remove an entry once its fix lands (the strict mark makes the test fail).
#: Empty now: the 61 inputs the fuzzers found so far are fixed and replayed below as plain regression
#: cases. fuzz/README.md says how a new crash is added here until its fix lands.
KNOWN_BUGS: dict[str, tuple[str, type[BaseException]]] = {}


def _inputs(folder: str) -> Iterator[Any]:
    for name in TARGETS:
        directory = FUZZ / folder / name
        for path in sorted(directory.iterdir()) if directory.is_dir() else ():
            key = f"{name}/{path.name}"
            marks = []
            if key in KNOWN_BUGS:
                reason, raises = KNOWN_BUGS[key]
                marks.append(pytest.mark.xfail(strict=True, reason=reason, raises=raises))
            yield pytest.param(name, path, id=key, marks=marks)


def _replay(name: str, path: Path) -> None:
    with structlog.testing.capture_logs():  # the adapters and the node log every row they reject
        TARGETS[name].check(path.read_bytes())


def test_every_target_has_seeds() -> None:
    empty = [name for name in TARGETS if not any((FUZZ / "corpus" / name).glob("*"))]
    assert empty == []


def test_every_saved_input_belongs_to_a_target() -> None:
    folders = {p.name for p in (FUZZ / "regressions").iterdir() if p.is_dir()} - {"live_server"}
    assert folders <= set(TARGETS)
    listed = {key.split("/")[0] for key in KNOWN_BUGS}
    assert listed <= set(TARGETS)
    missing = [key for key in KNOWN_BUGS if not (FUZZ / "regressions" / key).is_file()]
    assert missing == []


@pytest.mark.parametrize(("name", "path"), list(_inputs("corpus")))
def test_seed_inputs_keep_the_contract(name: str, path: Path) -> None:
    _replay(name, path)


@pytest.mark.parametrize(("name", "path"), list(_inputs("regressions")))
def test_saved_crashes_stay_fixed(name: str, path: Path) -> None:
    _replay(name, path)


# ------------------------------------------------------------------ properties (hypothesis)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_keeps_the_id_number_contract(text: str) -> None:
    TARGETS["id_number"].check(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(
    origin=st.text(
        st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\n\x7f"), min_size=1, max_size=40
    ),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\n\x7f"), min_size=1), max_size=3
    ),
)
def test_any_checkpoint_body_parses_back_to_itself(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    body = checkpoint.Checkpoint(origin, size, root, tuple(extensions)).body()
    assert checkpoint.parse_checkpoint_body(body) == checkpoint.Checkpoint(origin, size, root, tuple(extensions))
    TARGETS["checkpoint"].check(body.encode("utf-8"))


_HEX = st.binary(min_size=1, max_size=32).map(bytes.hex)


@settings(max_examples=200, deadline=None)
@given(
    time_us=st.integers(0, 2**63 - 1),
    text=st.text(max_size=30),
    counts=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), st.integers(0, 2**63 - 1)),
    person_keys=st.lists(_HEX, max_size=4),
    digest=st.one_of(st.just(""), _HEX),
)
def test_any_audit_entry_decodes_from_its_encoding(
    time_us: int, text: str, counts: dict[str, int], person_keys: list[str], digest: str
) -> None:
    entry = AuditEntry(time_us, text, text, "440000", text, f"/m{text}", text, "OK", counts, person_keys, digest, text)
    assert AuditEntry.decode(entry.encode()) == entry
    TARGETS["audit_entry"].check(entry.encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_any_token_keeps_the_contract(token: bytes) -> None:
    TARGETS["tokens"].check(b"\x00" + token)
    TARGETS["tokens"].check(b"\x01" + token)


# --------------------------------------------------------------------------- the live hub

#: Saved requests (``fuzz/regressions/live_server/<file>``) the hub still answers badly → what is wrong.
#: Empty now, as KNOWN_BUGS: both saved requests are answered correctly since their fixes.
KNOWN_LIVE_BUGS: dict[str, str] = {}


def _live_cases() -> Iterator[Any]:
    for path, case in live_server.regression_cases():
        marks = []
        if path.name in KNOWN_LIVE_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_LIVE_BUGS[path.name], raises=AssertionError))
        yield pytest.param(case, id=path.name, marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_live_cases()))
async def test_saved_requests_get_a_proper_status(case: Any, tmp_path: Path) -> None:
    async with live_server.live_hub(tmp_path) as live:
        answer = await live.call(case)
        assert answer.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
            f"{case.method}: {answer.code.name} {answer.details}"
        )
        assert await live.healthy()


@pytest.mark.slow
async def test_random_and_mutated_requests_get_proper_statuses_and_the_hub_stays_healthy(tmp_path: Path) -> None:
    # A fixed seed: the same 300 requests every time. fuzz/run.py sends new ones on every run.
    report = await live_server.fuzz_hub(300, seed=20260101, directory=tmp_path, save=False)

    assert report.messages == 300
    assert report.unhealthy == 0
    assert report.new == {}, "requests answered INTERNAL/UNKNOWN by an unhandled exception (see the cases)"
    assert sum(report.codes.values()) == 300
    assert report.codes.get("OK", 0) > 0, "some requests must get through to a servicer and succeed"
