"""Tests of name normalisation and name comparison levels (gateway.domain.linkage._names)."""

from __future__ import annotations

import pytest

from gateway.domain.linkage import name_features, normalize_name
from gateway.domain.linkage._names import CLOSE, DIFFERENT, EXACT, HOMOPHONE, NULL, WEAK, NamePart, name_level


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("王　伟", "王伟"),  # ideographic space from an input method
        (" 張偉 ", "张伟"),  # traditional to simplified
        ("歐陽娜娜", "欧阳娜娜"),
        ("阿依古丽•买买提", "阿依古丽·买买提"),  # bullet
        ("阿依古丽・买买提", "阿依古丽·买买提"),  # katakana middle dot
        ("阿依古丽.买买提", "阿依古丽·买买提"),  # full stop typed on a Latin keyboard
        ("·阿依古丽··买买提·", "阿依古丽·买买提"),  # stray dots
        ("  John   SMITH ", "john smith"),
        ("ＷＡＮＧ Wei", "wang wei"),  # full-width Latin
    ],
)
def test_normalize_name_canonicalises_what_provinces_write(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


def test_surname_split_knows_compound_surnames_and_dotted_names() -> None:
    ouyang = name_features("欧阳娜娜")
    assert (ouyang.surname.text, ouyang.given.text) == ("欧阳", "娜娜")
    wang = name_features("王伟")
    assert (wang.surname.text, wang.given.text) == ("王", "伟")
    uyghur = name_features("阿依古丽·买买提")
    assert (uyghur.surname.text, uyghur.given.text, uyghur.dotted) == ("买买提", "阿依古丽", True)
    latin = name_features("mitchell green")
    assert (latin.surname.text, latin.given.text) == ("green", "mitchell")
    explicit = name_features("", surname="Green", given_name="Mitchell")
    assert (explicit.surname.text, explicit.given.text) == ("green", "mitchell")


def test_whole_name_key_is_pinyin_and_ignores_where_the_name_splits() -> None:
    assert name_features("阿依古丽·买买提").key == name_features("阿依古丽买买提").key
    assert name_features("張偉").key == "zhangwei"


def _given(name: str) -> NamePart:
    return name_features(name).given


def test_homophones_compare_as_homophones_including_heteronyms() -> None:
    assert name_level(_given("王秀英"), _given("王秀瑛")) == HOMOPHONE
    # 曾 reads zeng or ceng: either reading meets 增 (zeng).
    assert name_level(name_features("曾伟").surname, name_features("增伟").surname) == HOMOPHONE


def test_one_character_off_is_close_and_unrelated_names_differ() -> None:
    assert name_level(_given("李建国"), _given("李建图")) == CLOSE
    assert name_level(_given("李建国"), _given("李建国")) == EXACT
    assert name_level(_given("李建国"), _given("李梓涵")) == DIFFERENT
    assert name_level(_given("李建国"), name_features("").given) == NULL


def test_latin_names_fall_back_to_jaro_winkler() -> None:
    def level(a: str, b: str) -> int:
        return name_level(name_features(a).surname, name_features(b).surname)

    assert level("x green", "x green") == EXACT
    assert level("x matthews", "x matthwes") == HOMOPHONE  # JW ≥ 0.92
    assert level("x horsey", "x horsley") in (HOMOPHONE, CLOSE)
    assert level("x smith", "x smyth") in (CLOSE, WEAK, HOMOPHONE)
    assert level("x green", "x rundle") == DIFFERENT


def test_chinese_name_meets_its_romanised_form_through_pinyin() -> None:
    assert name_level(name_features("王伟").given, name_features("wei wang").given) == HOMOPHONE
