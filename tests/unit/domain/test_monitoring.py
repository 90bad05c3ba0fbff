"""Monitoring rules: parsed with errors naming the key, lines by longest prefix, matches as declared."""

from __future__ import annotations

import pytest

from gateway.domain.model import Program
from gateway.domain.monitoring import HouseholdFacts, parse_rules
from gateway.errors import ConfigError

RULES = """
[lines.dibao]
"44" = 950
"4401" = 1230

[[rules]]
id = "dibao-marginal-candidate"
description = "income below 1.5 x the dibao line and not assisted"
income_below = { line = "dibao", times = 1.5 }
not_enrolled = ["dibao", "dibao-marginal", "extreme-poverty"]

[[rules]]
id = "dibao-above-line"
description = "on dibao with income at or above the line"
income_at_least = { line = "dibao", times = 1 }
enrolled = ["dibao"]
"""


def facts(income_yuan: float, division: str = "440106", programs: tuple[Program, ...] = ()) -> HouseholdFacts:
    mask = 0
    for p in programs:
        mask |= p.bit
    return HouseholdFacts("440000", "H1", division, int(income_yuan * 100), mask, 2, ("r1", "r2"))


def test_lines_take_the_longest_prefix() -> None:
    rules = parse_rules(RULES)
    assert rules.line_at("dibao", "440106") == 123_000
    assert rules.line_at("dibao", "440303") == 95_000
    assert rules.line_at("dibao", "410105") is None


def test_rules_match_as_declared() -> None:
    rules = parse_rules(RULES)
    matched = [r.id for r, _ in rules.evaluate(facts(1500))]  # 1500 < 1.5 x 1230
    assert matched == ["dibao-marginal-candidate"]
    assert rules.evaluate(facts(1900)) == []  # above 1.5 x the line
    assert rules.evaluate(facts(1000, programs=(Program.DIBAO,))) == []  # on dibao, below the line
    assert [r.id for r, _ in rules.evaluate(facts(1300, programs=(Program.DIBAO,)))] == ["dibao-above-line"]
    # No line where the household lives, or no assessed income (-1): a rule on income cannot say.
    assert rules.evaluate(facts(10, division="410105")) == []
    assert rules.evaluate(facts(-0.01)) == []
    (_, why), *_ = rules.evaluate(facts(1500))
    assert "1500.00" in why
    assert "1230.00" in why


def test_the_digest_names_the_rules_not_the_layout() -> None:
    reordered = RULES.replace('"44" = 950\n"4401" = 1230', '"4401" = 1230\n"44" = 950')
    assert parse_rules(RULES).digest == parse_rules(reordered).digest
    assert parse_rules(RULES).digest != parse_rules(RULES.replace("1.5", "1.4")).digest


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("times = 1.5", "times = -1"), "rules[0].income_below.times"),
        (('line = "dibao", times = 1.5', 'line = "tekun", times = 1.5'), "rules[0].income_below.line"),
        (('"dibao-marginal", "extreme-poverty"', '"dibao-marginal", "poverty"'), "rules[0].not_enrolled[2]"),
        (('"4401" = 1230', '"440" = 1230'), "lines.dibao.440"),
        (('id = "dibao-above-line"', 'id = "dibao-marginal-candidate"'), "rules[1].id"),
        (('enrolled = ["dibao"]\n', 'enrolled = ["dibao"]\ncolour = "red"\n'), "rules[1].colour"),
    ],
)
def test_mistakes_name_the_key(change: tuple[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as bad:
        parse_rules(RULES.replace(*change))
    assert bad.value.field == field


def test_a_rule_without_conditions_is_refused() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_rules('[[rules]]\nid = "all"\ndescription = "everyone"\n')
    assert bad.value.field == "rules[0]"


def test_the_shipped_example_is_valid() -> None:
    from pathlib import Path

    from gateway.domain.monitoring import load_rules

    example = Path(__file__).resolve().parents[3] / "deploy" / "monitoring.example.toml"
    rules = load_rules(example)
    assert [r.id for r in rules.rules] == [
        "dibao-marginal-candidate",
        "dibao-income-above-line",
        "large-household-temporary-only",
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (('"44" = 950', '"44" = nan'), "lines.dibao.44"),
        (('"44" = 950', '"44" = inf'), "lines.dibao.44"),
        (('"44" = 950', '"٤٤" = 950'), "lines.dibao.٤٤"),  # Arabic-Indic digits are not a division prefix
        (("times = 1.5", "times = nan"), "rules[0].income_below.times"),
        (("times = 1.5", "times = -inf"), "rules[0].income_below.times"),
        (('line = "dibao", times = 1.5', "line = { a = 1 }, times = 1.5"), "rules[0].income_below.line"),
        (('line = "dibao", times = 1.5', "line = [], times = 1.5"), "rules[0].income_below.line"),
    ],
)
def test_amounts_and_factors_must_be_finite_and_lines_named_by_text(change: tuple[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_rules(RULES.replace(*change))
    assert refused.value.field == field
