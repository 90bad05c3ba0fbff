"""Tests of gateway.domain.protection: person keys and sealed fields with key rotation, under both suites."""

from __future__ import annotations

import os
import pickle

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.protection import (
    PERSON_KEY_BYTES,
    CryptoSuite,
    FieldSealer,
    KeyMaterial,
    PersonKeyer,
    digest,
    generate_key_material,
    hash_algorithm,
    parse_suite,
    suite_hash,
)
from gateway.errors import ConfigError, StoreError

SECRET = b"p" * 32
KEY_1 = b"1" * 32
KEY_2 = b"2" * 32
SM4_KEY_1 = b"3" * 16
SM4_KEY_2 = b"4" * 16
AD = b"440000/r-1"
ID_NUMBER = "11010519491231002X"


SUITES = pytest.mark.parametrize("suite", list(CryptoSuite), ids=[s.value for s in CryptoSuite])


def material(
    keys: dict[str, bytes], active: str, secret: bytes = SECRET, suite: CryptoSuite = CryptoSuite.INTL
) -> KeyMaterial:
    return KeyMaterial(person_key_secret=secret, sealing_keys=keys, active_key_id=active, suite=suite)


def one_key(suite: CryptoSuite, key_id: str = "k1") -> KeyMaterial:
    """Key material of ``suite`` with one fixed key of the right size."""
    return material({key_id: SM4_KEY_1 if suite is CryptoSuite.SM else KEY_1}, key_id, suite=suite)


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


@SUITES
@given(plain=st.binary(max_size=256), ad=st.binary(max_size=64))
def test_sealed_blob_opens_with_the_same_associated_data(suite: CryptoSuite, plain: bytes, ad: bytes) -> None:
    sealer = FieldSealer(one_key(suite))
    assert sealer.open(sealer.seal(plain, ad), ad) == plain


@SUITES
def test_sealed_blob_does_not_open_with_other_associated_data(suite: CryptoSuite) -> None:
    sealer = FieldSealer(one_key(suite))
    blob = sealer.seal(ID_NUMBER.encode(), AD)
    with pytest.raises(StoreError) as caught:
        sealer.open(blob, b"440000/r-2")
    assert caught.value.reason == "SEALED_FIELD_DAMAGED"


@SUITES
@pytest.mark.parametrize("position", [-1, -17, -18], ids=["tag", "ciphertext", "nonce"])
def test_tampered_blob_does_not_open(suite: CryptoSuite, position: int) -> None:
    sealer = FieldSealer(one_key(suite))
    blob = bytearray(sealer.seal(b"x", AD))
    blob[position] ^= 0x01
    with pytest.raises(StoreError) as caught:
        sealer.open(bytes(blob), AD)
    assert caught.value.reason == "SEALED_FIELD_DAMAGED"


@SUITES
def test_truncated_blob_is_reported_damaged(suite: CryptoSuite) -> None:
    sealer = FieldSealer(one_key(suite))
    blob = sealer.seal(b"x", AD)
    for cut in (1, 3, len(blob) - 16, len(blob) - 1):
        with pytest.raises(StoreError) as caught:
            sealer.open(blob[:cut], AD)
        assert caught.value.reason == "SEALED_FIELD_DAMAGED"


def test_empty_blob_is_reported_damaged() -> None:
    with pytest.raises(StoreError) as caught:
        FieldSealer(material({"k1": KEY_1}, "k1")).open(b"", AD)
    assert caught.value.reason == "SEALED_FIELD_DAMAGED"


@SUITES
def test_blob_holds_no_plaintext_and_two_seals_differ(suite: CryptoSuite) -> None:
    sealer = FieldSealer(one_key(suite))
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


@SUITES
def test_a_blob_sealed_under_an_unknown_key_id_is_refused_naming_the_key_id(suite: CryptoSuite) -> None:
    first, second = (SM4_KEY_1, SM4_KEY_2) if suite is CryptoSuite.SM else (KEY_1, KEY_2)
    after = FieldSealer(material({"k1": first, "k2": second}, "k2", suite=suite))
    before = FieldSealer(material({"k1": first}, "k1", suite=suite))
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


@pytest.mark.parametrize(
    ("suite", "keys", "active"),
    [
        pytest.param(CryptoSuite.SM, {"k1": KEY_1}, "k1", id="sm4-with-a-32-byte-key"),
        pytest.param(CryptoSuite.SM, {"k1": b"k" * 15}, "k1", id="sm4-with-a-15-byte-key"),
        pytest.param(CryptoSuite.INTL, {"k1": SM4_KEY_1}, "k1", id="aes-256-with-a-16-byte-key"),
        pytest.param(CryptoSuite.SM, {"sm:k1": SM4_KEY_1}, "sm:k1", id="key-id-with-the-suite-separator"),
        pytest.param(CryptoSuite.INTL, {"a:b": KEY_1}, "a:b", id="intl-key-id-with-the-suite-separator"),
        pytest.param(CryptoSuite.SM, {"k" * 253: SM4_KEY_1}, "k" * 253, id="sm-key-id-too-long-with-its-prefix"),
    ],
)
def test_sealing_keys_must_fit_the_suite(suite: CryptoSuite, keys: dict[str, bytes], active: str) -> None:
    with pytest.raises(ConfigError) as caught:
        material(keys, active, suite=suite)
    assert caught.value.field == "sealing_keys"


def test_sm4_key_size_error_names_the_key_the_size_and_the_suite() -> None:
    with pytest.raises(ConfigError) as caught:
        material({"k1": KEY_1}, "k1", suite=CryptoSuite.SM)
    assert "16 bytes for SM4-GCM" in caught.value.message
    assert caught.value.metadata == {"key_id": "k1", "crypto_suite": "sm"}


def test_longest_sm_key_id_fits_the_blob_header() -> None:
    sealer = FieldSealer(material({"k" * 252: SM4_KEY_1}, "k" * 252, suite=CryptoSuite.SM))
    assert sealer.open(sealer.seal(b"x", AD), AD) == b"x"


def test_key_material_takes_the_suite_by_name_and_defaults_to_intl() -> None:
    positional = KeyMaterial(SECRET, {"k1": KEY_1}, "k1")
    assert positional.suite is CryptoSuite.INTL
    by_name = KeyMaterial(SECRET, {"k1": SM4_KEY_1}, "k1", suite="sm")  # type: ignore[arg-type]
    assert by_name.suite is CryptoSuite.SM
    with pytest.raises(ConfigError) as caught:
        KeyMaterial(SECRET, {"k1": KEY_1}, "k1", suite="rsa")  # type: ignore[arg-type]
    assert (caught.value.reason, caught.value.field) == ("CRYPTO_SUITE_UNKNOWN", "suite")


@SUITES
def test_key_material_survives_pickling_for_the_preparation_workers(suite: CryptoSuite) -> None:
    keys = generate_key_material(suite=suite)
    copy = pickle.loads(pickle.dumps(keys))  # noqa: S301 -- our own object, as initargs cross to a worker
    assert copy == keys
    assert copy.suite is suite


def test_generated_sm_key_material_has_sm4_keys_and_seals_sm_blobs() -> None:
    keys = generate_key_material("k7", suite="sm")
    assert keys.suite is CryptoSuite.SM
    assert [len(k) for k in keys.sealing_keys.values()] == [16]
    assert len(keys.person_key_secret) == 32
    blob = FieldSealer(keys).seal(b"x", AD)
    assert blob.startswith(b"\x05sm:k7")
    assert FieldSealer(keys).open(blob, AD) == b"x"


def test_generated_key_material_is_fresh_and_usable() -> None:
    one, two = generate_key_material(), generate_key_material("k9")
    assert one.person_key_secret != two.person_key_secret
    assert one.active_key_id == "k1"
    assert two.active_key_id == "k9"
    assert one.suite is CryptoSuite.INTL
    assert [len(k) for k in one.sealing_keys.values()] == [32]
    sealer = FieldSealer(two)
    assert sealer.open(sealer.seal(b"x", AD), AD) == b"x"


# -- crypto suites ----------------------------------------------------------------------------

#: GM/T 0042-2015 appendix D.3, example 1 (HMAC-SM3).
GMT_0042_KEY = bytes(range(1, 33))
GMT_0042_INPUT = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq" * 2
GMT_0042_MAC = "ca05e144ed05d1857840d1f318a4a8669e559fc8391f414485bfdf7bb408963a"
#: RFC 8998 appendix A.1 (SM4-GCM).
RFC_8998_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
RFC_8998_IV = bytes.fromhex("00001234567800000000ABCD")
RFC_8998_AAD = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
RFC_8998_PLAIN = bytes.fromhex(
    "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
    "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
)
RFC_8998_CIPHER = bytes.fromhex(
    "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
    "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
)
RFC_8998_TAG = bytes.fromhex("83DE3541E4C2B58177E065A9BF7B62EC")


@pytest.mark.parametrize(
    ("suite", "data", "expected"),
    [
        # GB/T 32905-2016 appendix A, examples 1 and 2.
        ("sm", b"abc", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
        ("sm", b"abcd" * 16, "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"),
        # FIPS 180-2 appendix B.1.
        ("intl", b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ],
)
def test_suite_hash_matches_the_published_vectors(suite: str, data: bytes, expected: str) -> None:
    assert digest(suite, data).hex() == expected
    assert suite_hash(suite)(data).hex() == expected


def test_hash_algorithm_is_sm3_in_the_sm_suite_and_sha256_in_intl() -> None:
    assert isinstance(hash_algorithm("sm"), hashes.SM3)
    assert isinstance(hash_algorithm(CryptoSuite.INTL), hashes.SHA256)


def test_sm_person_key_is_hmac_sm3_per_gmt_0042() -> None:
    key = PersonKeyer(GMT_0042_KEY, suite="sm").person_key(GMT_0042_INPUT)
    assert key.hex() == GMT_0042_MAC[: 2 * PERSON_KEY_BYTES]


def test_intl_person_key_is_hmac_sha256_per_rfc_4231() -> None:
    # RFC 4231 test case 2; the default suite, so person keys of existing hubs do not change.
    key = PersonKeyer(b"Jefe").person_key("what do ya want for nothing?")
    assert key.hex() == "5bdcc146bf60754e6a042426089575c7"


def test_person_keys_differ_between_suites_and_are_deterministic_in_each() -> None:
    intl = PersonKeyer(SECRET, suite="intl").person_key(ID_NUMBER)
    sm = PersonKeyer(SECRET, suite="sm").person_key(ID_NUMBER)
    assert intl != sm
    assert len(intl) == len(sm) == PERSON_KEY_BYTES
    assert PersonKeyer(SECRET, suite=CryptoSuite.SM).person_key(ID_NUMBER) == sm
    assert PersonKeyer(SECRET).person_key(ID_NUMBER) == intl


def test_sm_blob_is_sm4_gcm_per_rfc_8998() -> None:
    # A blob laid out by hand around RFC 8998's vector opens to its plaintext.
    blob = b"\x05sm:k1" + RFC_8998_IV + RFC_8998_CIPHER + RFC_8998_TAG
    sealer = FieldSealer(material({"k1": RFC_8998_KEY}, "k1", suite=CryptoSuite.SM))
    assert sealer.open(blob, RFC_8998_AAD) == RFC_8998_PLAIN


def test_blob_written_before_suites_existed_still_opens_in_intl() -> None:
    nonce = os.urandom(12)
    blob = b"\x02k1" + nonce + AESGCM(KEY_1).encrypt(nonce, b"old", AD)
    assert FieldSealer(material({"k1": KEY_1}, "k1")).open(blob, AD) == b"old"


def test_sm_blob_names_its_suite_before_the_key_id() -> None:
    blob = FieldSealer(material({"old": SM4_KEY_1, "2025-06": SM4_KEY_2}, "2025-06", suite=CryptoSuite.SM)).seal(
        b"x", AD
    )
    assert blob.startswith(b"\x0asm:2025-06")


@pytest.mark.parametrize(
    ("sealed_in", "opened_in"),
    [(CryptoSuite.SM, CryptoSuite.INTL), (CryptoSuite.INTL, CryptoSuite.SM)],
    ids=["sm-blob-on-intl-hub", "intl-blob-on-sm-hub"],
)
def test_a_blob_of_another_suite_is_refused_as_a_suite_mismatch(sealed_in: CryptoSuite, opened_in: CryptoSuite) -> None:
    blob = FieldSealer(one_key(sealed_in)).seal(b"x", AD)
    with pytest.raises(StoreError) as caught:
        FieldSealer(one_key(opened_in)).open(blob, AD)
    assert caught.value.reason == "CRYPTO_SUITE_MISMATCH"
    assert caught.value.metadata == {"key_id": "k1", "blob_suite": sealed_in.value, "hub_suite": opened_in.value}


def test_a_blob_naming_an_unknown_suite_is_refused_as_a_suite_mismatch() -> None:
    blob = b"\x05xx:k1" + bytes(12 + 17)
    with pytest.raises(StoreError) as caught:
        FieldSealer(one_key(CryptoSuite.SM)).open(blob, AD)
    assert caught.value.reason == "CRYPTO_SUITE_MISMATCH"
    assert caught.value.metadata["blob_suite"] == "xx"


def test_sealer_and_keyer_report_their_suite() -> None:
    assert FieldSealer(one_key(CryptoSuite.SM)).suite is CryptoSuite.SM
    assert FieldSealer(one_key(CryptoSuite.INTL)).suite is CryptoSuite.INTL
    assert PersonKeyer(SECRET, suite="sm").suite is CryptoSuite.SM
    assert PersonKeyer(SECRET).suite is CryptoSuite.INTL


def test_an_unknown_suite_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_suite("gost")
    assert (caught.value.reason, caught.value.field) == ("CRYPTO_SUITE_UNKNOWN", "crypto_suite")
    assert "intl, sm" in caught.value.message
    with pytest.raises(ConfigError) as caught:
        PersonKeyer(SECRET, suite="SM")
    assert (caught.value.reason, caught.value.field) == ("CRYPTO_SUITE_UNKNOWN", "suite")
    with pytest.raises(ConfigError) as caught:
        generate_key_material(suite="aes")
    assert caught.value.field == "suite"
