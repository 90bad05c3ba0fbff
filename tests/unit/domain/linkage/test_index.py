"""Tests of the incremental linker (gateway.domain.linkage._index): crafted pairs, order, review, lineage."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.identity import make_id_number
from gateway.domain.linkage import (
    EventKind,
    LinkageIndex,
    LinkageModel,
    LinkageRecord,
    LinkOutcome,
    LinkRule,
    LinkSettings,
    ReviewStatus,
)
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound

BIRTH = dt.date(1962, 3, 7)
ID_GD = make_id_number("440106", BIRTH, 124)
FAMILY = frozenset({"王建国", "王浩然"})


def _pair(model: LinkageModel, a: LinkageRecord, b: LinkageRecord) -> tuple[LinkageIndex, Any]:
    index = LinkageIndex(model)
    index.add(a)
    return index, index.add(b)


def _outcome(result: Any) -> LinkOutcome | None:
    if result.links:
        return LinkOutcome.LINK
    return LinkOutcome.REVIEW if result.reviews else None


def _guangdong(**fields: Any) -> LinkageRecord:
    base: dict[str, Any] = {
        "key": "440000/44-1",
        "province": "440000",
        "name": "王秀英",
        "id_number": ID_GD,
        "birth_date": BIRTH,
        "gender": 2,
        "hukou_division": "440106",
        "residence_division": "440106",
        "household_members": FAMILY,
    }
    base.update(fields)
    return LinkageRecord(**base)


def _henan(**fields: Any) -> LinkageRecord:
    base: dict[str, Any] = {
        "key": "410000/41-9",
        "province": "410000",
        "name": "王秀英",
        "id_number": "",
        "birth_date": BIRTH,
        "gender": 2,
        "hukou_division": "440106",
        "residence_division": "410105",
        "household_members": FAMILY,
    }
    base.update(fields)
    return LinkageRecord(**base)


def test_same_person_across_provinces_with_a_fifteen_digit_number_is_linked_by_id(model: LinkageModel) -> None:
    short = ID_GD[:6] + ID_GD[8:17]
    _, result = _pair(model, _guangdong(), _henan(id_number=short, name="王秀瑛", household_members=frozenset()))
    assert [d.rule for d in result.links] == [LinkRule.ID_NUMBER]
    assert result.links[0].match_probability == 1.0


def test_homophone_in_the_given_name_still_links(model: LinkageModel) -> None:
    _, result = _pair(model, _guangdong(), _henan(name="王秀瑛"))
    assert _outcome(result) is LinkOutcome.LINK
    evidence = {e.comparison: e.level for e in result.links[0].evidence}
    assert evidence["given_name"] == "homophone"
    assert evidence["id_number"] == "null"


def test_traditional_characters_link_to_simplified(model: LinkageModel) -> None:
    _, result = _pair(model, _guangdong(name="张建国"), _henan(name="張建國"))
    assert _outcome(result) is LinkOutcome.LINK
    assert {e.comparison: e.level for e in result.links[0].evidence}["given_name"] == "exact"


@pytest.mark.parametrize("written", ["阿依古丽•买买提", "阿依古丽・买买提", "阿依古丽买买提"])
def test_minority_name_links_whatever_its_dot(model: LinkageModel, written: str) -> None:
    _, result = _pair(model, _guangdong(name="阿依古丽·买买提"), _henan(name=written))
    assert _outcome(result) is LinkOutcome.LINK


def test_swapped_day_and_month_links_or_goes_to_review(model: LinkageModel) -> None:
    _, result = _pair(model, _guangdong(), _henan(birth_date=dt.date(1962, 7, 3)))
    assert _outcome(result) in (LinkOutcome.LINK, LinkOutcome.REVIEW)
    decision = (result.links or tuple(r.decision for r in result.reviews))[0]
    assert {e.comparison: e.level for e in decision.evidence}["birth_date"] == "day_month_swapped"


def test_swapped_day_and_month_with_a_homophone_and_nothing_else_goes_to_review(model: LinkageModel) -> None:
    # Two slips, another county, no ID number and no household to vouch: a person decides.
    _, result = _pair(
        model,
        _guangdong(household_members=frozenset()),
        _henan(name="王秀瑛", birth_date=dt.date(1962, 7, 3), hukou_division="410105", household_members=frozenset()),
    )
    assert _outcome(result) is LinkOutcome.REVIEW
    assert 0.5 <= result.reviews[0].decision.match_probability < 0.99


def test_mistyped_id_number_links_to_the_valid_one(model: LinkageModel) -> None:
    typo = ID_GD[:3] + str((int(ID_GD[3]) + 1) % 10) + ID_GD[4:]
    _, result = _pair(model, _guangdong(), _henan(id_number=typo, household_members=frozenset()))
    assert _outcome(result) is LinkOutcome.LINK
    assert {e.comparison: e.level for e in result.links[0].evidence}["id_number"] == "one_typo"


def test_different_people_sharing_a_common_name_and_birth_year_are_not_linked(model: LinkageModel) -> None:
    a = LinkageRecord(
        "440000/a", "440000", "王伟", birth_date=dt.date(1980, 1, 5), gender=1, residence_division="440106"
    )
    b = LinkageRecord(
        "410000/b", "410000", "王伟", birth_date=dt.date(1980, 9, 21), gender=1, residence_division="410105"
    )
    index, result = _pair(model, a, b)
    assert _outcome(result) is None
    assert index.candidates(b).links == ()


def test_two_valid_different_numbers_are_never_linked_without_a_person(model: LinkageModel) -> None:
    # Same name, birth date and hukou but two real numbers: maybe one person holding two (一人多证).
    other = make_id_number("410105", BIRTH, 126)
    _, result = _pair(model, _guangdong(), _henan(id_number=other))
    assert _outcome(result) is LinkOutcome.REVIEW


def test_candidates_changes_nothing(model: LinkageModel) -> None:
    index = LinkageIndex(model)
    index.add(_guangdong())
    found = index.candidates(_henan())
    assert [d.other_key for d in found.links] == ["440000/44-1"]
    assert len(index) == 1
    assert "410000/41-9" not in index


def test_adding_a_key_twice_is_refused(model: LinkageModel) -> None:
    index = LinkageIndex(model)
    index.add(_guangdong())
    with pytest.raises(FailedPrecondition):
        index.add(_guangdong())


def test_settings_refuse_inverted_thresholds() -> None:
    with pytest.raises(InvalidArgument):
        LinkSettings(link_threshold=0.5, review_threshold=0.9)


def test_links_of_the_generated_population_are_mostly_right(model: LinkageModel, population: Any) -> None:
    index = LinkageIndex(model)
    linked = set()
    for record in population.records:
        for decision in index.add(record).links:
            linked.add(decision.pair)
    true = {pair for pair in linked if len({population.person_of[k] for k in pair}) == 1}
    duplicates = sum(1 for k in population.person_of if "/D" in k)
    assert len(true) / len(linked) > 0.98
    assert len(true) / duplicates > 0.85


# --- Order independence ---------------------------------------------------------------------

_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰"


@st.composite
def exact_id_records(draw: st.DrawFn) -> list[LinkageRecord]:
    """Persons with valid ID numbers, each in 1-3 records (one possibly 15-digit), names varied."""
    persons = draw(st.integers(min_value=2, max_value=8))
    records = []
    for p in range(persons):
        birth = dt.date(1940 + 7 * p, 1 + p, 2 + 3 * p)
        number = make_id_number("440106", birth, 10 + 2 * p)
        copies = draw(st.integers(min_value=1, max_value=3))
        for c in range(copies):
            short = draw(st.booleans())
            records.append(
                LinkageRecord(
                    key=f"p{p}-r{c}",
                    province=draw(st.sampled_from(("440000", "410000", "510000"))),
                    name="李" + draw(st.sampled_from(_GIVEN)) + draw(st.sampled_from(_GIVEN)),
                    id_number=number[:6] + number[8:17] if short else number,
                    birth_date=birth,
                )
            )
    return records


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=exact_id_records(), data=st.data())
def test_exact_id_linkage_is_independent_of_arrival_order(
    model: LinkageModel, records: list[LinkageRecord], data: st.DataObject
) -> None:
    expected = {}
    for record in records:
        expected.setdefault(record.key.split("-")[0], set()).add(record.key)

    def clusters(order: list[LinkageRecord]) -> set[frozenset[str]]:
        index = LinkageIndex(model)
        for record in order:
            index.add(record)
        return set(index.clusters.values())

    shuffled = data.draw(st.permutations(records))
    assert clusters(records) == clusters(shuffled) == {frozenset(keys) for keys in expected.values()}


# --- Review queue, split and lineage ---------------------------------------------------------


def test_review_accept_links_and_is_audited_in_lineage(model: LinkageModel) -> None:
    index = LinkageIndex(model, LinkSettings(link_threshold=1.0, review_threshold=0.5))
    index.add(_guangdong())
    result = index.add(_henan(name="王秀瑛"))
    assert result.links == ()
    assert len(result.reviews) == 1
    item = result.reviews[0]
    assert index.review_queue() == (item,)
    event = index.accept(item.review_id, actor="reviewer-7", reason="same person per household visit")
    assert event.kind is EventKind.REVIEW_ACCEPTED
    assert event.actor == "reviewer-7"
    assert index.cluster_of("440000/44-1") == index.cluster_of("410000/41-9")
    assert index.review_queue() == ()
    assert index.review(item.review_id).status is ReviewStatus.ACCEPTED
    assert index.lineage("410000/41-9")[-1] == event
    with pytest.raises(FailedPrecondition):
        index.reject(item.review_id, actor="reviewer-8", reason="changed my mind")


def test_review_reject_keeps_clusters_apart_and_records_the_refusal(model: LinkageModel) -> None:
    index = LinkageIndex(model, LinkSettings(link_threshold=1.0, review_threshold=0.5))
    index.add(_guangdong())
    item = index.add(_henan(name="王秀瑛")).reviews[0]
    event = index.reject(item.review_id, actor="reviewer-7", reason="different mother")
    assert event.kind is EventKind.REVIEW_REJECTED
    assert event.clusters_before == event.clusters_after
    assert index.cluster_of("440000/44-1") != index.cluster_of("410000/41-9")
    assert event in index.lineage("440000/44-1")
    assert event in index.lineage("410000/41-9")
    with pytest.raises(NotFound):
        index.accept(99, actor="reviewer-7", reason="")


def test_a_changed_record_supersedes_its_open_items_and_relink_queues_the_pair_again(model: LinkageModel) -> None:
    index = LinkageIndex(model, LinkSettings(link_threshold=1.0, review_threshold=0.5))
    index.add(_guangdong())
    item = index.add(_henan(name="王秀瑛")).reviews[0]
    assert index.supersede("440000/44-1", actor="linker", reason="the record changed") == (
        replace(item, status=ReviewStatus.SUPERSEDED, decided_by="linker", reason="the record changed"),
    )
    assert index.review_queue() == ()
    assert index.supersede("440000/44-1", actor="linker", reason="again") == ()
    with pytest.raises(FailedPrecondition):
        index.accept(item.review_id, actor="reviewer-7", reason="too late")
    # Superseded is not kept apart: scored again, the pair is a new item.
    (again,) = index.relink("410000/41-9").reviews
    assert again.review_id != item.review_id
    assert again.decision.pair == item.decision.pair


def test_a_review_decision_needs_an_actor(model: LinkageModel) -> None:
    index = LinkageIndex(model, LinkSettings(link_threshold=1.0, review_threshold=0.5))
    index.add(_guangdong())
    item = index.add(_henan(name="王秀瑛")).reviews[0]
    with pytest.raises(InvalidArgument):
        index.accept(item.review_id, actor="", reason="looks fine")
    assert index.review(item.review_id).status is ReviewStatus.OPEN


def test_split_and_detach_keep_lineage(model: LinkageModel) -> None:
    index = LinkageIndex(model)
    a, b, c = (_guangdong(key=k, household_members=frozenset()) for k in ("a", "b", "c"))
    index.add(a)
    index.add(b)
    index.add(c)  # linked to a and to b: the same ID number
    cluster = index.cluster_of("a")
    assert index.members(cluster) == {"a", "b", "c"}

    split = index.split("a", "b", actor="operator-1", reason="twins registered under one number")
    assert split.kind is EventKind.SPLIT
    assert split.clusters_after == (cluster,)
    detached = index.detach("c", actor="operator-1", reason="c is a data-entry error")
    assert detached.clusters_before == (cluster,)
    assert set(index.clusters.values()) >= {frozenset({"a"}), frozenset({"b"}), frozenset({"c"})}
    assert index.cluster_of("a") == cluster  # the oldest record keeps the cluster id

    kinds = [e.kind for e in index.lineage("a")]
    assert kinds == [EventKind.LINKED, EventKind.LINKED, EventKind.LINKED, EventKind.SPLIT, EventKind.DETACHED]
    assert all(e.decision is not None and e.decision.rule is LinkRule.ID_NUMBER for e in index.lineage("a")[:3])
    assert index.lineage("a")[3].decision is not None  # the split names the link it undid
    assert [e.sequence for e in index.events] == [1, 2, 3, 4, 5]
    assert index.links_of("c") == ()
    with pytest.raises(NotFound):
        index.split("a", "b", actor="operator-1", reason="again")
