"""Tests of gateway.domain.protection: person keys and sealed fields with key rotation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.protection import (
    PERSON_KEY_BYTES,
    FieldSealer,
    KeyMaterial,
    PersonKeyer,
    generate_key_material,
)
from gateway.errors import ConfigError, StoreError

SECRET = b"p" * 32
KEY_1 = b"1" * 32
KEY_2 = b"2" * 32
AD = b"440000/r-1"
ID_NUMBER = "11010519491231002X"


def material(keys: dict[str, bytes], active: str, secret: bytes = SECRET) -> KeyMaterial:
    return KeyMaterial(person_key_secret=secret, sealing_keys=keys, active_key_id=active)


# -- person keys ------------------------------------------------------------------------------


def test_person_key_is_deterministic_and_of_the_documented_size() -> None:
    key = PersonKeyer(SECRET).person_key(ID_NUMBER)
    assert key == PersonKeyer(SECRET).person_key(ID_NUMBER)
    assert len(key) == PERSON_KEY_BYTES


def test_person_key_changes_with_the_secret() -> None:
    assert PersonKeyer(SECRET).person_key(ID_NUMBER) != PersonKeyer(b"q" * 32).person_key(ID_NUMBER)


def test_person_key_differs_between_numbers() -> None:
    keyer = PersonKeyer(SECRET)
    assert keyer.person_key(ID_NUMBER) != keyer.person_key("110105194912310021")


def test_person_key_does_not_contain_the_number() -> None:
    key = PersonKeyer(SECRET).person_key(ID_NUMBER)
    assert ID_NUMBER.encode() not in key


# -- sealing ----------------------------------------------------------------------------------


@given(st.binary(max_size=256), st.binary(max_size=64))
def test_sealed_blob_opens_with_the_same_associated_data(plain: bytes, ad: bytes) -> None:
    sealer = FieldSealer(material({"k1": KEY_1}, "k1"))
    assert sealer.open(sealer.seal(plain, ad), ad) == plain


def test_sealed_blob_does_not_open_with_other_associated_data() -> None:
    sealer = FieldSealer(material({"k1": KEY_1}, "k1"))
    blob = sealer.seal(ID_NUMBER.encode(), AD)
    with pytest.raises(StoreError) as caught:
        sealer.open(blob, b"440000/r-2")
    assert caught.value.reason == "SEALED_FIELD_DAMAGED"


def test_tampered_blob_does_not_open() -> None:
    sealer = FieldSealer(material({"k1": KEY_1}, "k1"))
    blob = bytearray(sealer.seal(ID_NUMBER.encode(), AD))
    blob[-1] ^= 0x01
    with pytest.raises(StoreError) as caught:
        sealer.open(bytes(blob), AD)
    assert caught.value.reason == "SEALED_FIELD_DAMAGED"


def test_empty_blob_is_reported_damaged() -> None:
    with pytest.raises(StoreError) as caught:
        FieldSealer(material({"k1": KEY_1}, "k1")).open(b"", AD)
    assert caught.value.reason == "SEALED_FIELD_DAMAGED"


def test_blob_holds_no_plaintext_and_two_seals_differ() -> None:
    sealer = FieldSealer(material({"k1": KEY_1}, "k1"))
    first, second = sealer.seal(ID_NUMBER.encode(), AD), sealer.seal(ID_NUMBER.encode(), AD)
    assert ID_NUMBER.encode() not in first
    assert first != second  # a fresh nonce each time


def test_blob_starts_with_the_active_key_id() -> None:
    blob = FieldSealer(material({"old": KEY_1, "2025-06": KEY_2}, "2025-06")).seal(b"x", AD)
    assert blob.startswith(b"\x072025-06")


def test_after_rotation_old_blobs_open_and_new_ones_use_the_new_key_id() -> None:
    before = FieldSealer(material({"k1": KEY_1}, "k1"))
    after = FieldSealer(material({"k1": KEY_1, "k2": KEY_2}, "k2"))
    old_blob = before.seal(b"old", AD)
    new_blob = after.seal(b"new", AD)
    assert after.open(old_blob, AD) == b"old"
    assert new_blob.startswith(b"\x02k2")
    assert old_blob.startswith(b"\x02k1")
    assert after.open(new_blob, AD) == b"new"


def test_a_blob_sealed_under_an_unknown_key_id_is_refused_naming_the_key_id() -> None:
    after = FieldSealer(material({"k1": KEY_1, "k2": KEY_2}, "k2"))
    before = FieldSealer(material({"k1": KEY_1}, "k1"))
    with pytest.raises(StoreError) as caught:
        before.open(after.seal(b"new", AD), AD)
    assert caught.value.reason == "SEALING_KEY_UNKNOWN"
    assert caught.value.metadata == {"key_id": "k2"}


def test_same_key_id_with_another_key_fails_authentication() -> None:
    blob = FieldSealer(material({"k1": KEY_1}, "k1")).seal(b"x", AD)
    with pytest.raises(StoreError) as caught:
        FieldSealer(material({"k1": KEY_2}, "k1")).open(blob, AD)
    assert caught.value.reason == "SEALED_FIELD_DAMAGED"


# -- key material -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "keys", "active", "field"),
    [
        pytest.param(b"short", {"k1": KEY_1}, "k1", "person_key_secret", id="short-secret"),
        pytest.param(SECRET, {"k1": KEY_1}, "k2", "active_key_id", id="active-missing"),
        pytest.param(SECRET, {"k1": b"k" * 16}, "k1", "sealing_keys", id="aes-128-key"),
        pytest.param(SECRET, {"": KEY_1, "k1": KEY_1}, "k1", "sealing_keys", id="empty-key-id"),
        pytest.param(SECRET, {"钥匙": KEY_1, "k1": KEY_1}, "k1", "sealing_keys", id="non-ascii-key-id"),
        pytest.param(SECRET, {"k" * 256: KEY_1, "k1": KEY_1}, "k1", "sealing_keys", id="key-id-too-long"),
    ],
)
def test_unusable_key_material_is_a_config_error(
    secret: bytes, keys: dict[str, bytes], active: str, field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        material(keys, active, secret)
    assert caught.value.field == field


def test_generated_key_material_is_fresh_and_usable() -> None:
    one, two = generate_key_material(), generate_key_material("k9")
    assert one.person_key_secret != two.person_key_secret
    assert one.active_key_id == "k1"
    assert two.active_key_id == "k9"
    sealer = FieldSealer(two)
    assert sealer.open(sealer.seal(b"x", AD), AD) == b"x"
