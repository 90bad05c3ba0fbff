"""THREAT_MODEL.md names the test behind each mitigation: every one it cites must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def test_every_test_the_threat_model_cites_exists() -> None:
    cited = CITED.findall((ROOT / "THREAT_MODEL.md").read_text(encoding="utf-8"))
    assert len(cited) > 100  # the model cites its evidence; a rewrite that drops it should fail here
    missing = []
    names: dict[str, set[str]] = {}
    for file, test in cited:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        if test not in names.setdefault(file, _test_names(path)):
            missing.append(f"{file}::{test}")
    assert not missing, "THREAT_MODEL.md cites tests that do not exist:\n" + "\n".join(sorted(set(missing)))
