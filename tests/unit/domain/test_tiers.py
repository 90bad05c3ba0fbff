"""Tier rules: parsed with errors naming the key, first match wins, evidence that reproduces the decision."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.model import ALL_PROGRAMS, Program
from gateway.domain.monitoring import HouseholdFacts
from gateway.domain.standards import Standard, StandardsRegistry, StandardValue, load_standards
from gateway.domain.tiers import (
    Area,
    PersonFacts,
    TierRules,
    affected,
    could_change,
    evaluate,
    load_tier_rules,
    parse_tier_rules,
    reproduce,
    rules_from_canonical,
)
from gateway.errors import ConfigError, InvalidArgument

DEPLOY = Path(__file__).parents[3] / "deploy"
D = dt.date
DAY = D(2026, 3, 1)

RULES = """
version = "test-1"

[[tiers]]
id = "core"
label = "核心保障对象"
[tiers.when]
enrolled = ["extreme-poverty", "dibao"]

[[tiers]]
id = "marginal"
label = "低保边缘"
[[tiers.when]]
enrolled = ["dibao-marginal"]
[[tiers.when]]
income_below = { standard = "dibao", times = 1.5 }

[[tiers]]
id = "rigid_expenditure"
label = "刚性支出困难"
[tiers.when]
income_below = { standard = "dibao", times = 2 }
income_after_rigid_below = { standard = "dibao", times = 1 }

[[tiers]]
id = "other_monitored"
label = "其他低收入人口"
[[tiers.when]]
enrolled = ["temporary-assistance", "medical"]
[[tiers.when]]
rigid_expenditure_ratio_at_least = 1
[[tiers.when]]
income_below = { standard = "dibao", times = 2 }
"""

REGISTRY = StandardsRegistry(
    [
        StandardValue("440000", Standard.DIBAO_URBAN, D(2025, 1, 1), 95_000, "粤民规字〔2024〕12号"),
        StandardValue("440000", Standard.DIBAO_RURAL, D(2025, 1, 1), 80_000, "粤民规字〔2024〕12号"),
        StandardValue("440000", Standard.EXTREME_POVERTY, D(2025, 1, 1), 123_500),
        StandardValue("440100", Standard.DIBAO_URBAN, D(2025, 7, 1), 123_000, "穗民规字〔2025〕3号"),
        StandardValue("440100", Standard.DIBAO_RURAL, D(2025, 7, 1), 123_000, "穗民规字〔2025〕3号"),
    ]
)


def person(
    income_fen: int,
    *,
    division: str = "440303",
    area: Area = Area.URBAN,
    programs: tuple[Program, ...] = (),
    rigid_fen: int = -1,
    members: int = 1,
) -> PersonFacts:
    mask = 0
    for p in programs:
        mask |= p.bit
    return PersonFacts(b"\x01" * 32, division[:2] + "0000", division, area, mask, income_fen, rigid_fen, members)


def decide(facts: PersonFacts, rules: TierRules | None = None, registry: StandardsRegistry = REGISTRY) -> Any:
    return evaluate(rules or parse_tier_rules(RULES), registry, facts, DAY)


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("times = 2", "times = 0"), "tiers[2].when.income_below.times"),
        (("times = 2", "times = true"), "tiers[2].when.income_below.times"),
        (("times = 2", "times = inf"), "tiers[2].when.income_below.times"),
        (("times = 2", 'times = "2"'), "tiers[2].when.income_below.times"),
        (
            ('standard = "dibao", times = 1.5', 'standard = "tekun", times = 1.5'),
            "tiers[1].when[1].income_below.standard",
        ),
        (('standard = "dibao", times = 1.5 }', 'standard = "dibao" }'), "tiers[1].when[1].income_below.times"),
        (("times = 1.5 }", 'times = 1.5, per = "month" }'), "tiers[1].when[1].income_below.per"),
        (('"extreme-poverty", "dibao"]', '"extreme-poverty", "dibao2"]'), "tiers[0].when.enrolled[1]"),
        (('enrolled = ["extreme-poverty", "dibao"]', "enrolled = []"), "tiers[0].when.enrolled"),
        (('enrolled = ["extreme-poverty", "dibao"]', "members_at_least = 0"), "tiers[0].when.members_at_least"),
        (('enrolled = ["dibao-marginal"]', 'enroled = ["dibao-marginal"]'), "tiers[1].when[0].enroled"),
        (
            ("rigid_expenditure_ratio_at_least = 1", "rigid_expenditure_ratio_at_least = -1"),
            "tiers[3].when[1].rigid_expenditure_ratio_at_least",
        ),
        (('version = "test-1"', 'version = ""'), "version"),
        (('version = "test-1"', ""), "version"),
        (('version = "test-1"', 'version = "test-1"\nunknown_area = "city"'), "unknown_area"),
        (('version = "test-1"', 'version = "test-1"\nname = "x"'), "name"),
        (('id = "marginal"', 'id = "Marginal"'), "tiers[1].id"),
        (('id = "other_monitored"', 'id = "core"'), "tiers[3].id"),
        (('label = "其他低收入人口"', 'label = "其他低收入人口"\ncolour = "red"'), "tiers[3].colour"),
        (('label = "低保边缘"', ""), "tiers[1].label"),
        (('[tiers.when]\nenrolled = ["extreme-poverty", "dibao"]', ""), "tiers[0].when"),
        (('[tiers.when]\nenrolled = ["extreme-poverty", "dibao"]', "[tiers.when]"), "tiers[0].when"),
        (('version = "test-1"', "version = "), "tiers"),  # not TOML
    ],
)
def test_mistakes_name_the_key(change: tuple[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as bad:
        parse_tier_rules(RULES.replace(*change, 1))
    assert bad.value.field == field


def test_a_rule_set_needs_tiers() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_tier_rules('version = "1"\n')
    assert bad.value.field == "tiers"


def test_the_digest_names_the_rules_not_the_layout() -> None:
    rules = parse_tier_rules(RULES)
    after_rigid = 'income_after_rigid_below = { standard = "dibao", times = 1 }'
    both = 'income_below = { standard = "dibao", times = 2 }\n' + after_rigid
    swapped = 'income_after_rigid_below = { times = 1.0, standard = "dibao" }\n' + both.splitlines()[0]
    relaid = RULES.replace("times = 1.5 }", "times = 1.50 }").replace(both, swapped)
    assert relaid != RULES
    assert parse_tier_rules(relaid).digest == rules.digest
    assert parse_tier_rules(RULES.replace("times = 1.5", "times = 1.4")).digest != rules.digest
    assert parse_tier_rules(RULES.replace("test-1", "test-2")).digest != rules.digest
    assert rules.standards_used() == {Standard.DIBAO_URBAN, Standard.DIBAO_RURAL}
    assert rules.tier("marginal").label == "低保边缘"


# --- evaluation ----------------------------------------------------------------------------------


def test_each_of_the_four_tiers() -> None:
    # Shenzhen (4403) reads Guangdong's lines: urban 950 yuan, so 1.5x = 1425 and 2x = 1900.
    core = decide(person(50_000, programs=(Program.EXTREME_POVERTY,)))
    assert (core.tier, core.tier_index, core.when_index) == ("core", 0, 0)
    assert core.evidence["basis"] == [
        {"condition": "enrolled", "programmes": ["dibao", "extreme-poverty"], "holds": True}
    ]
    assert core.evidence["standards"] == {}  # enrolment alone decided: no standard was read

    marginal = decide(person(120_000))
    assert (marginal.tier, marginal.when_index) == ("marginal", 1)
    (check,) = marginal.evidence["basis"]
    assert check == {
        "condition": "income_below",
        "standard": "dibao",
        "times": "1.5",
        "resolved": "dibao_urban",
        "line_fen": 95_000,
        "threshold_fen": "142500",
        "income_per_member_fen": 120_000,
        "holds": True,
    }
    assert marginal.evidence["standards"]["dibao_urban"] == {
        "division": "440000",
        "standard": "dibao_urban",
        "effective_from": "2025-01-01",
        "monthly_fen": 95_000,
        "document": "粤民规字〔2024〕12号",
    }
    assert decide(person(10_000_000, programs=(Program.DIBAO_MARGINAL,))).tier == "marginal"

    # 1500 yuan per member, 3 members, 2000 yuan of medical bills: 4500 - 2000 = 2500 < 3 x 950.
    rigid = decide(person(150_000, rigid_fen=200_000, members=3))
    assert (rigid.tier, rigid.when_index) == ("rigid_expenditure", 0)
    after = rigid.evidence["basis"][1]
    assert after["condition"] == "income_after_rigid_below"
    assert (after["income_after_rigid_fen"], after["threshold_fen"], after["members"]) == (250_000, "285000", 3)
    # The same household with 1000 yuan of bills is not (3500 >= 2850), and falls to the last tier.
    assert decide(person(150_000, rigid_fen=100_000, members=3)).tier == "other_monitored"

    other = decide(person(300_000, programs=(Program.MEDICAL,)))
    assert (other.tier, other.when_index) == ("other_monitored", 0)
    ratio = decide(person(300_000, rigid_fen=300_000))
    assert (ratio.tier, ratio.when_index) == ("other_monitored", 1)
    assert ratio.evidence["basis"][0]["threshold_fen"] == "300000"
    assert decide(person(180_000)).tier == "other_monitored"

    none = decide(person(190_000))
    assert (none.tier, none.label, none.tier_index, none.when_index) == (None, None, None, None)
    assert none.evidence["basis"] == []
    assert none.summary() == "no tier matched"
    assert len(none.trace) == 1 + 2 + 1 + 3  # every alternative was checked


def test_the_first_matching_tier_wins() -> None:
    poor_on_dibao = person(50_000, programs=(Program.DIBAO,))
    assert decide(poor_on_dibao).tier == "core"
    head, core, marginal, rest = RULES.split("[[tiers]]", 3)
    assert 'id = "core"' in core
    assert 'id = "marginal"' in marginal
    reordered = parse_tier_rules(head + "[[tiers]]" + marginal + "[[tiers]]" + core + "[[tiers]]" + rest)
    decision = decide(poor_on_dibao, reordered)
    assert (decision.tier, decision.tier_index, decision.when_index) == ("marginal", 0, 1)
    # The trace shows the enrolment alternative of marginal failing before the income one held.
    assert [(t["tier"], t["when_index"], t["holds"]) for t in decision.trace] == [
        ("marginal", 0, False),
        ("marginal", 1, True),
    ]


def test_an_unknown_income_satisfies_no_income_condition() -> None:
    unknown = decide(person(-1))
    assert unknown.tier is None
    assert "income not assessed (-1): no condition on income holds" in unknown.evidence["assumptions"]
    checks = [c for t in unknown.trace for c in t["conditions"] if c["condition"].startswith("income")]
    assert checks
    assert all(c["unknown"] == "income" and not c["holds"] for c in checks)
    # Not even "at least": an unknown income is not a high one.
    at_least = parse_tier_rules(
        'version = "1"\n[[tiers]]\nid = "well-off"\nlabel = "x"\n'
        '[tiers.when]\nincome_at_least = { standard = "dibao_urban", times = 0.01 }\n'
    )
    assert decide(person(-1), at_least).tier is None
    assert decide(person(0), at_least).tier is None
    assert decide(person(950), at_least).tier == "well-off"
    # Still tiered by enrolment.
    assert decide(person(-1, programs=(Program.DIBAO,))).tier == "core"


def test_an_unknown_area_reads_the_line_the_rules_say_and_records_it() -> None:
    # Rural line 800 yuan: 1.5x = 1200 and 2x = 1600; urban would say marginal for 1300.
    rural = decide(person(130_000, area=Area.UNKNOWN, rigid_fen=0))
    assert rural.tier == "other_monitored"
    assert rural.evidence["assumptions"] == ['area unknown: "dibao" read as the rural line (unknown_area = "rural")']
    assert set(rural.evidence["standards"]) == {"dibao_rural"}
    urban = decide(person(130_000, area=Area.UNKNOWN), parse_tier_rules('unknown_area = "urban"\n' + RULES))
    assert urban.tier == "marginal"
    assert urban.evidence["assumptions"] == ['area unknown: "dibao" read as the urban line (unknown_area = "urban")']
    neither = decide(person(130_000, area=Area.UNKNOWN), parse_tier_rules('unknown_area = "none"\n' + RULES))
    assert neither.tier is None
    assert neither.evidence["standards"] == {}
    assert "unknown_area" in neither.evidence["assumptions"][0]
    assert decide(person(130_000, area=Area.RURAL, rigid_fen=0)).evidence["assumptions"] == []


def test_no_standard_in_force_fails_the_condition_and_is_recorded() -> None:
    henan = decide(person(10_000, division="410105", rigid_fen=0))
    assert henan.tier is None
    assert henan.evidence["standards"] == {"dibao_urban": None}
    assert henan.evidence["assumptions"] == ["no dibao_urban standard in force at the residence on the day"]
    before = evaluate(parse_tier_rules(RULES), REGISTRY, person(10_000), D(2024, 12, 31))
    assert before.tier is None


def test_the_summary_states_the_figures_and_their_source() -> None:
    summary = decide(person(120_000)).summary()
    assert summary == (
        "marginal (低保边缘): income 1200.00 yuan per member below 1.5 × dibao_urban 950.00 yuan"
        " (440000 from 2025-01-01, 粤民规字〔2024〕12号) = 1425.00 yuan"
    )
    assert "2500.00" in decide(person(150_000, rigid_fen=200_000, members=3)).summary()


def test_facts_are_checked() -> None:
    with pytest.raises(InvalidArgument) as bad:
        person(1, members=0)
    assert bad.value.field == "members"
    with pytest.raises(InvalidArgument) as bad:
        PersonFacts(b"k", "440000", "440106", Area.URBAN, 1 << 30, 0, 0, 1)
    assert bad.value.field == "active_programs"
    with pytest.raises(InvalidArgument) as bad:
        person(-2)
    assert bad.value.field == "income_per_member_fen"
    with pytest.raises(InvalidArgument) as bad:
        PersonFacts(b"k", "440106", "440106", Area.URBAN, 0, 0, 0, 1)
    assert bad.value.field == "province"
    household = HouseholdFacts("440000", "H1", "440106", 90_000, Program.DIBAO.bit, 0, ())
    facts = PersonFacts.from_household(household, person_key=b"k", area=Area.RURAL)
    assert (facts.members, facts.rigid_expenditure_fen, facts.active_programs) == (1, -1, Program.DIBAO.bit)


# --- reproduction --------------------------------------------------------------------------------


def test_evidence_reproduces_the_decision_after_a_trip_through_json() -> None:
    rules = parse_tier_rules(RULES)
    decision = decide(person(150_000, rigid_fen=200_000, members=3), rules)
    stored = json.loads(decision.canonical_evidence())
    assert reproduce(stored, rules) == decision
    assert reproduce(decision.evidence, rules) == decision
    assert decision.evidence["rules"] == {"version": "test-1", "digest": rules.digest.hex()}
    assert len(decision.evidence_digest) == 32


def test_evidence_of_other_rules_is_refused() -> None:
    decision = decide(person(120_000))
    other = parse_tier_rules(RULES.replace("times = 1.5", "times = 1.6"))
    with pytest.raises(InvalidArgument) as bad:
        reproduce(decision.evidence, other)
    assert bad.value.reason == "TIER_RULES_MISMATCH"
    with pytest.raises(InvalidArgument) as bad:
        reproduce(decision.evidence, parse_tier_rules(RULES.replace("test-1", "test-2")))
    assert bad.value.reason == "TIER_RULES_MISMATCH"


def _tampered(evidence: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(evidence))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("facts", "income_per_member_fen"), 150_000, "TIER_EVIDENCE_MISMATCH"),  # the recorded tier no longer follows
        (("standards", "dibao_urban", "monthly_fen"), 90_000, "TIER_EVIDENCE_MISMATCH"),  # same tier, other figures
        (("decision", "tier"), "core", "TIER_EVIDENCE_MISMATCH"),
        (("assumptions",), ["none"], "TIER_EVIDENCE_MISMATCH"),
        (("standards", "dibao_urban", "division"), "410000", "TIER_EVIDENCE_INVALID"),  # not at this residence
        (("standards", "dibao_urban", "effective_from"), "2027-01-01", "TIER_EVIDENCE_INVALID"),  # not yet in force
        (("standards", "dibao_urban"), "950", "STANDARD_VALUE_INVALID"),
        (("facts", "members"), 0, "TIER_FACTS_INVALID"),
        (("day",), "tomorrow", "TIER_EVIDENCE_INVALID"),
        (("schema",), 2, "TIER_EVIDENCE_INVALID"),
    ],
)
def test_evidence_that_does_not_reproduce_is_refused(path: tuple[str, ...], value: Any, reason: str) -> None:
    rules = parse_tier_rules(RULES)
    decision = decide(person(120_000), rules)
    with pytest.raises(InvalidArgument) as bad:
        reproduce(_tampered(decision.evidence, path, value), rules)
    assert bad.value.reason == reason


def test_evidence_lacking_a_standard_the_decision_needs_is_refused() -> None:
    rules = parse_tier_rules(RULES)
    decision = decide(person(120_000), rules)
    evidence = json.loads(decision.canonical_evidence())
    del evidence["standards"]["dibao_urban"]
    with pytest.raises(InvalidArgument) as bad:
        reproduce(evidence, rules)
    assert bad.value.field == "evidence.standards.dibao_urban"


_DIVISIONS = ("440000", "440100", "440106", "440300", "410000", "510000")
_values = st.builds(
    StandardValue,
    division=st.sampled_from(_DIVISIONS),
    standard=st.sampled_from(list(Standard)),
    effective_from=st.dates(D(2024, 1, 1), D(2027, 12, 31)),
    monthly_fen=st.integers(1, 400_000),
    document=st.sampled_from(["", "粤民规字〔2026〕3号"]),
)
_facts = st.builds(
    PersonFacts,
    person_key=st.binary(min_size=1, max_size=32),
    province=st.just("440000"),
    residence_division=st.sampled_from(["440106", "440303", "440117", "410105", "510104"]),
    area=st.sampled_from(list(Area)),
    active_programs=st.sets(st.sampled_from(ALL_PROGRAMS), max_size=3).map(lambda ps: sum(p.bit for p in ps)),
    income_per_member_fen=st.integers(-1, 800_000),
    rigid_expenditure_fen=st.integers(-1, 2_000_000),
    members=st.integers(1, 9),
)
_RULE_SETS = [
    parse_tier_rules(RULES),
    parse_tier_rules('unknown_area = "none"\n' + RULES.replace("times = 1.5", "times = 1.33")),
    load_tier_rules(DEPLOY / "tiers.example.toml"),
]


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(_values, max_size=14),
    facts=_facts,
    day=st.dates(D(2024, 1, 1), D(2028, 12, 31)),
    rules=st.sampled_from(_RULE_SETS),
)
def test_any_decision_reproduces_from_its_evidence(
    values: list[StandardValue], facts: PersonFacts, day: dt.date, rules: TierRules
) -> None:
    decision = evaluate(rules, StandardsRegistry(values), facts, day)
    assert reproduce(decision.evidence, rules) == decision
    assert reproduce(json.loads(decision.canonical_evidence()), rules) == decision
    if decision.tier is not None:
        assert all(check["holds"] for check in decision.evidence["basis"])
        decision.summary()


# --- re-tiering ----------------------------------------------------------------------------------


def test_a_standard_change_names_the_divisions_and_moves_the_people_between_thresholds() -> None:
    rules = parse_tier_rules(RULES)
    raised = REGISTRY.publish(
        [
            StandardValue("440100", Standard.DIBAO_URBAN, D(2026, 1, 1), 130_000, "穗民规字〔2025〕9号"),
            StandardValue("440000", Standard.EXTREME_POVERTY, D(2026, 1, 1), 127_400),  # no rule reads it
        ]
    ).registry
    changes = affected(REGISTRY, raised, DAY, rules=rules)
    assert changes == {("4401", Standard.DIBAO_URBAN)}
    assert affected(REGISTRY, raised, DAY) == {("4401", Standard.DIBAO_URBAN), ("44", Standard.EXTREME_POVERTY)}
    assert affected(REGISTRY, raised, D(2025, 12, 31), rules=rules) == frozenset()  # not in force yet

    # Urban Tianhe (440106), 1900 yuan per member: between 1.5 x 1230 = 1845 and 1.5 x 1300 = 1950.
    between = person(190_000, division="440106")
    before = evaluate(rules, REGISTRY, between, DAY)
    assert before.tier == "other_monitored"
    assert could_change(changes, between.residence_division, before.consulted)
    after = evaluate(rules, raised, between, DAY)
    assert after.tier == "marginal"
    assert after.evidence["basis"][0]["threshold_fen"] == "195000"
    assert after.evidence["standards"]["dibao_urban"]["document"] == "穗民规字〔2025〕9号"

    # Shenzhen, and rural Tianhe (which reads the rural line), cannot change.
    shenzhen = person(190_000, division="440303")
    assert not could_change(changes, shenzhen.residence_division)
    rural = person(190_000, division="440106", area=Area.RURAL)
    rural_before = evaluate(rules, REGISTRY, rural, DAY)
    assert could_change(changes, rural.residence_division)  # by division alone: maybe
    assert not could_change(changes, rural.residence_division, rural_before.consulted)
    assert evaluate(rules, raised, rural, DAY).tier == rural_before.tier


def test_the_example_files_load_and_evaluate() -> None:
    rules = load_tier_rules(DEPLOY / "tiers.example.toml")
    registry = StandardsRegistry.from_files(load_standards(DEPLOY / "standards.example.csv"))
    assert [t.id for t in rules.tiers] == ["core", "marginal", "rigid_expenditure", "other_monitored"]
    assert rules.version
    cases = [
        (person(50_000, division="410105", programs=(Program.DIBAO,)), "core"),
        (person(100_000, division="410105"), "marginal"),  # Zhengzhou urban 840 yuan: 1.5x = 1260
        (person(150_000, division="410105", rigid_fen=200_000, members=2), "rigid_expenditure"),  # 1000 < 1680
        (person(160_000, division="410105"), "other_monitored"),  # below 2x = 1680
        (person(200_000, division="410105"), None),
    ]
    assert [evaluate(rules, registry, facts, DAY).tier for facts, _ in cases] == [tier for _, tier in cases]
    # Chengdu, area unknown: Sichuan's rural line (560 yuan) is read, so 1000 yuan is below 2x but not 1.5x.
    unknown_area = evaluate(rules, registry, person(100_000, division="510104", area=Area.UNKNOWN), DAY)
    assert unknown_area.tier == "other_monitored"
    assert unknown_area.evidence["standards"]["dibao_rural"]["division"] == "510000"
    assert unknown_area.evidence["assumptions"][0].startswith("area unknown")
    assert reproduce(unknown_area.evidence, rules) == unknown_area


def test_a_rule_set_comes_back_from_its_canonical_text_with_the_same_digest() -> None:
    """The hub keeps old rule sets by their canonical text: old evidence must reproduce under them."""
    rules = load_tier_rules(DEPLOY / "tiers.example.toml")
    again = rules_from_canonical(rules.canonical())
    assert again.digest == rules.digest
    assert [t.id for t in again.tiers] == [t.id for t in rules.tiers]
    with pytest.raises(ConfigError):
        rules_from_canonical('{"version": "x"}')


def _canonical_with(edit: Any) -> str:
    doc = json.loads(load_tier_rules(DEPLOY / "tiers.example.toml").canonical())
    edit(doc)
    return json.dumps(doc, ensure_ascii=False)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["tiers"][0].update(when=["not an object"]), "tiers"),
        (lambda d: d["tiers"][0]["when"][0].update(income_below={"standard": "dibao_urban", "times": "x"}), "tiers"),
        (lambda d: d["tiers"][0].update(label="\ud800"), "tiers[0].label"),  # a lone surrogate, as JSON can hold
    ],
    ids=["when-not-an-object", "times-not-a-number", "label-lone-surrogate"],
)
def test_a_damaged_canonical_rule_set_is_a_config_error_naming_the_key(edit: Any, field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        rules_from_canonical(_canonical_with(edit))
    assert refused.value.field == field


def test_a_canonical_rule_set_nested_too_deep_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as refused:
        rules_from_canonical("[" * 100_000 + "]" * 100_000)
    assert (refused.value.field, refused.value.message) == ("tiers", "not a canonical tier rule set: nested too deep")
