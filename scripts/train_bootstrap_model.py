"""Rebuild ``gateway/domain/linkage/bootstrap_model.json``: the model a hub links with before it trains its own.

    .venv/bin/python scripts/train_bootstrap_model.py [--persons 6000] [--check]

Trains on the benchmark's synthetic Chinese population (``bench/linkage_population.py``: four
provinces, households that moved and were registered again with missing, 15-digit and mistyped
ID numbers, homophones, traditional characters, swapped day and month), household co-members
included, exactly as the hub feeds them to the linker (their normalised names). Deterministic:
the same population and settings give the same file. ``--check`` exits 1 if the committed file
differs from what this would write.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from linkage_population import generate  # noqa: E402

from gateway.domain.linkage import train_model  # noqa: E402

TARGET = ROOT / "gateway" / "domain" / "linkage" / "bootstrap_model.json"


def build(persons: int) -> str:
    population = generate(persons)
    model = train_model(population.records)
    data = json.loads(model.to_json())
    data["training"] = {
        "population": f"bench/linkage_population.py generate({persons}), seed 7, with households",
        **data.get("training", {}),
    }
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=6000, help="persons per province (default 6000)")
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    args = parser.parse_args()
    text = build(args.persons)
    if args.check:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(ROOT)} differs from a fresh training run", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
