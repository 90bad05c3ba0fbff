"""deploy/citus/distribute.sql places every table the PostgreSQL migrations create, once."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

DISTRIBUTE = Path(__file__).resolve().parents[3] / "deploy" / "citus" / "distribute.sql"
PLACED = re.compile(
    r"SELECT (create_distributed_table|create_reference_table|citus_add_local_table_to_metadata)\('(\w+)'"
)


def created_tables() -> set[str]:
    folder = resources.files("gateway.store") / "migrations" / "postgresql"
    names: set[str] = set()
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            text = entry.read_text(encoding="utf-8")
            names.update(re.findall(r"(?m)^CREATE TABLE (\w+) \(", text))
    return names


def test_every_table_of_the_migrations_is_placed_exactly_once() -> None:
    placed = [table for _, table in PLACED.findall(DISTRIBUTE.read_text(encoding="utf-8"))]
    assert len(placed) == len(set(placed)), "a table is placed twice"
    assert set(placed) == created_tables()


def test_province_tables_are_distributed_by_province_and_co_located() -> None:
    text = DISTRIBUTE.read_text(encoding="utf-8")
    for table in ("records", "households", "batches", "requests", "node_state"):
        assert re.search(rf"create_distributed_table\('{table}', 'province'", text), table
    assert text.count("colocate_with => 'records'") >= 4
