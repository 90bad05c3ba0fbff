"""``hutong hub tiers`` as an operator runs it: a real process reading a hub database, SQLite or PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from gateway.domain.tiers import load_tier_rules
from gateway.hub.ops_commands import hub_config, hub_store
from gateway.store import tiers

from .conftest import run_hutong

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "tiers.example.toml"
#: (province, tier, persons) as the hub's tiering would leave them; "legacy" is a tier of older rules.
DECIDED = [
    ("440000", "core", 3),
    ("440000", "marginal", 1),
    ("440000", "", 1),
    ("410000", "core", 1),
    ("410000", "legacy", 1),
]


def decide(args: Sequence[str], decided: Sequence[tuple[str, str, int]], *, rules_in_force: bool) -> None:
    """Store tier decisions in the hub database ``args`` name, through the store's own (engine-neutral) writes.

    With ``rules_in_force`` the database also keeps deploy/tiers.example.toml as the rules the
    decisions were made under, as the hub's tiering does when it loads a rule set.
    """
    config = hub_config(Path(args[1])) if args[0] == "--config" else hub_config(None, data_dir=Path(args[1]))
    engine = hub_store(config).engine
    rules = load_tier_rules(RULES)
    con = engine.connect()
    try:
        con.execute(engine.begin)
        for province, tier, persons in decided:
            for n in range(persons):
                key = hashlib.sha256(f"{province}/{tier}/{n}".encode()).digest()
                decision = tiers.Decided(
                    person_key=key,
                    province=province,
                    residence_division=province[:2] + "0106",
                    tier=tier,
                    previous_tier="",
                    evidence="{}",
                    evidence_digest=hashlib.sha256(b"{}").digest(),
                    summary="",
                    changed=bool(tier),
                )
                tiers.write_decision(
                    con, decided=decision, rules_digest=rules.digest, standards_digest=b"s", day="2026-03-01", now=1
                )
        if rules_in_force:
            tiers.record_inputs(
                con, digest=rules.digest, kind="rules", version=rules.version, text=rules.canonical(), now=1
            )
            tiers.set_state(con, rules.digest, b"s", "2026-03-01")
        con.execute("COMMIT")
    finally:
        con.close()
        engine.close()


def row(stdout: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first`` (rich's box drawing: │ in the body, ┃ heading)."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").strip("│ ").split("│")]
        if cells[0] == first:
            return cells[1:]
    raise AssertionError(f"no row {first!r} in:\n{stdout}")


def test_tiers_counts_persons_per_tier_in_each_province_in_the_order_of_the_rules_in_force(
    hub_args: list[str], tmp_path: Path
) -> None:
    migrated = run_hutong("hub", "migrate", *hub_args, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    empty = run_hutong("hub", "tiers", *hub_args, cwd=tmp_path)
    assert empty.returncode == 0, empty.stderr
    assert "no tier decisions yet" in empty.stdout
    assert json.loads(run_hutong("hub", "tiers", *hub_args, "--json", cwd=tmp_path).stdout) == []

    decide(hub_args, DECIDED, rules_in_force=True)
    listed = run_hutong("hub", "tiers", *hub_args, "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [  # by province, then tier: the untiered as ''
        {"province": "410000", "tier": "core", "persons": 1},
        {"province": "410000", "tier": "legacy", "persons": 1},
        {"province": "440000", "tier": "", "persons": 1},
        {"province": "440000", "tier": "core", "persons": 3},
        {"province": "440000", "tier": "marginal", "persons": 1},
    ]
    shown = run_hutong("hub", "tiers", *hub_args, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    # The rules' tiers in their order (those nobody is in included), then older rules' tiers by id.
    assert row(shown.stdout, "province") == [
        "core", "marginal", "rigid_expenditure", "other_monitored", "legacy", "untiered", "total",
    ]  # fmt: skip
    assert row(shown.stdout, "440000") == ["3", "1", "0", "0", "0", "1", "5"]
    assert row(shown.stdout, "410000") == ["1", "0", "0", "0", "1", "0", "2"]
    assert row(shown.stdout, "total") == ["4", "1", "0", "0", "1", "1", "7"]
    assert "tier rules 2026.1" in shown.stdout
    assert "core: 核心保障对象（特困人员、低保对象）" in shown.stdout
    assert "legacy: not in these tier rules (decided under older rules)" in shown.stdout


def test_without_rules_in_the_database_tiers_reads_the_configs_rules_else_shows_ids(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    assert run_hutong("hub", "migrate", "--data-dir", str(data), cwd=tmp_path).returncode == 0
    decide(["--data-dir", str(data)], DECIDED, rules_in_force=False)
    by_id = run_hutong("hub", "tiers", "--data-dir", str(data), cwd=tmp_path)
    assert by_id.returncode == 0, by_id.stderr
    assert row(by_id.stdout, "province") == ["core", "legacy", "marginal", "untiered", "total"]
    assert row(by_id.stdout, "total") == ["4", "1", "1", "1", "7"]
    assert "no tier rules at hand" in by_id.stdout
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndata_dir = "hub"\n[tiers]\nrules = "{RULES}"\n', encoding="utf-8")
    labelled = run_hutong("hub", "tiers", "--config", str(config), cwd=tmp_path)
    assert labelled.returncode == 0, labelled.stderr
    assert row(labelled.stdout, "province")[:5] == [
        "core",
        "marginal",
        "rigid_expenditure",
        "other_monitored",
        "legacy",
    ]
    assert f"tier rules 2026.1 (from {RULES})" in labelled.stdout
    assert "marginal: 低保边缘家庭成员" in labelled.stdout
    config.write_text(f'[hub]\ndata_dir = "hub"\n[tiers]\nrules = "{tmp_path / "none.toml"}"\n', encoding="utf-8")
    assert run_hutong("hub", "tiers", "--config", str(config), cwd=tmp_path).returncode == 3


def test_tiers_refuses_a_directory_without_a_hub_database_and_a_database_of_an_older_release(tmp_path: Path) -> None:
    missing = run_hutong("hub", "tiers", "--data-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert missing.returncode == 3
    assert "FILE_MISSING" in missing.stderr
    assert not (tmp_path / "nothing").exists()  # not created by looking
    (tmp_path / "old").mkdir()
    con = sqlite3.connect(tmp_path / "old" / "hub.sqlite3")
    con.execute("PRAGMA user_version=5")  # before the tier tables
    con.close()
    old = run_hutong("hub", "tiers", "--data-dir", str(tmp_path / "old"), "--json", cwd=tmp_path)
    assert old.returncode == 3
    assert "run `hutong hub migrate` first" in old.stderr


def test_hub_standards_checks_files_and_answers_what_is_in_force_where_and_when(tmp_path: Path) -> None:
    example = ROOT / "deploy" / "standards.example.csv"
    answered = run_hutong(
        "hub", "standards", str(example), "--division", "440117", "--date", "2026-03-01", "--json", cwd=tmp_path
    )
    assert answered.returncode == 0, answered.stderr
    body = json.loads(answered.stdout)
    assert body["files"][0]["rejected"] == []
    # Conghua's own rural line takes effect in July; before, its 2025 transition value is in force.
    rural = body["in_force"]["dibao_rural"]
    assert (rural["division"], rural["monthly_fen"]) == ("440117", 118_000)
    july = run_hutong(
        "hub", "standards", str(example), "--division", "440117", "--date", "2026-07-01", "--json", cwd=tmp_path
    )
    assert json.loads(july.stdout)["in_force"]["dibao_rural"]["monthly_fen"] == 123_000
    # The city's urban line answers for the county, which publishes none of its own.
    assert body["in_force"]["dibao_urban"]["division"] == "440100"

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "division,standard,monthly_yuan,effective_from\n440106,dibao_urban,abc,2026-01-01\n990000,dibao_urban,1,2026-01-01\n",
        encoding="utf-8",
    )
    rejected = run_hutong("hub", "standards", str(example), str(bad), cwd=tmp_path)
    assert rejected.returncode == 4
    assert "line 2: AMOUNT_INVALID" in rejected.stdout
    assert "line 3: DIVISION" in rejected.stdout
    unknown = run_hutong("hub", "standards", str(example), "--division", "999999", cwd=tmp_path)
    assert unknown.returncode == 3
    assert "DIVISION_UNKNOWN" in unknown.stderr
    missing = run_hutong("hub", "standards", str(tmp_path / "absent.csv"), cwd=tmp_path)
    assert missing.returncode == 3
