"""C2SP signed-note checkpoints: format, signing, verification and every way to tamper with them."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.checkpoint import (
    Checkpoint,
    encode_signer_key,
    encode_verifier_key,
    key_hash,
    parse_checkpoint,
    parse_checkpoint_body,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)
from gateway.audit.errors import CheckpointInvalid, KeyInvalid, SignatureInvalid

ORIGIN = "hub.mca.example/audit"
ROOT = hashlib.sha256(b"root").digest()
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _note(size: int = 42, *, extensions: tuple[str, ...] = ()) -> str:
    return sign_checkpoint(ORIGIN, size, ROOT, ORIGIN, KEY, extensions=extensions)


def test_signed_checkpoint_has_the_c2sp_layout() -> None:
    note = _note()
    body, _, signature = note.partition("\n\n")
    assert body + "\n" == f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n"
    assert signature.startswith(f"\u2014 {ORIGIN} ")
    assert signature.endswith("\n")
    blob = base64.b64decode(signature.split(" ")[-1])
    assert len(blob) == 4 + 64
    assert blob[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + _raw(KEY)).digest()[:4]


def test_sign_parse_verify_round_trips() -> None:
    note = _note(extensions=("time 1718000000",))
    expected = Checkpoint(ORIGIN, 42, ROOT, ("time 1718000000",))
    assert parse_checkpoint(note) == expected
    assert verify_checkpoint(note, ORIGIN, KEY.public_key(), origin=ORIGIN) == expected


def test_empty_tree_checkpoint_verifies() -> None:
    root = hashlib.sha256(b"").digest()
    note = sign_checkpoint(ORIGIN, 0, root, ORIGIN, KEY)
    assert verify_checkpoint(note, ORIGIN, KEY.public_key()).size == 0


def test_tampered_size_is_rejected() -> None:
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_checkpoint(_note().replace("\n42\n", "\n43\n", 1), ORIGIN, KEY.public_key())


def test_tampered_root_is_rejected() -> None:
    note = _note()
    forged_root = base64.b64encode(hashlib.sha256(b"forged").digest()).decode()
    tampered = note.replace(base64.b64encode(ROOT).decode(), forged_root, 1)
    with pytest.raises(SignatureInvalid):
        verify_checkpoint(tampered, ORIGIN, KEY.public_key())


def test_tampered_signature_is_rejected() -> None:
    note = _note()
    text, _, line = note[:-1].rpartition("\n")
    blob = bytearray(base64.b64decode(line.split(" ")[-1]))
    blob[10] ^= 1
    tampered = f"{text}\n\u2014 {ORIGIN} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_checkpoint(tampered, ORIGIN, KEY.public_key())


def test_signature_by_another_key_with_the_same_name_is_rejected() -> None:
    forged = sign_checkpoint(ORIGIN, 42, ROOT, ORIGIN, OTHER)
    with pytest.raises(SignatureInvalid, match="different key"):
        verify_checkpoint(forged, ORIGIN, KEY.public_key())


def test_wrong_key_name_is_rejected() -> None:
    with pytest.raises(SignatureInvalid, match="no signature by key"):
        verify_checkpoint(_note(), "someone-else", KEY.public_key())


def test_wrong_origin_is_rejected() -> None:
    with pytest.raises(CheckpointInvalid, match=r"not other\.example"):
        verify_checkpoint(_note(), ORIGIN, KEY.public_key(), origin="other.example")


def test_unknown_cosignatures_are_ignored_and_any_order_verifies() -> None:
    note = _note()
    text = parse_note(note).text
    witness = sign_note(text, "witness.example", OTHER)
    both = note + witness.split("\n\n")[-1]
    reversed_order = witness + note.split("\n\n")[-1]
    for combined in (both, reversed_order):
        assert len(parse_note(combined).signatures) == 2
        assert verify_checkpoint(combined, ORIGIN, KEY.public_key()).size == 42
        assert verify_checkpoint(combined, "witness.example", OTHER.public_key()).size == 42


@pytest.mark.parametrize(
    ("note", "match"),
    [
        ("no blank line\n", "blank line"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\n- {ORIGIN} AAAAAAA=\n", "em dash"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\n\u2014 {ORIGIN} AAAA\n", "too short"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\n\u2014 {ORIGIN} !!!!\n", "base64"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\n\u2014 {ORIGIN} AAAAAAA=", "end with a newline"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT).decode()}\n\n\u2014 AAAAAAA=\n", "no key name"),
        (f"{ORIGIN}\x07\n1\n{base64.b64encode(ROOT).decode()}\n\n\u2014 {ORIGIN} AAAAAAA=\n", "control"),
    ],
)
def test_malformed_notes_are_rejected_naming_the_fault(note: str, match: str) -> None:
    with pytest.raises(CheckpointInvalid, match=match):
        parse_note(note)


def test_note_with_too_many_signatures_is_rejected() -> None:
    note = _note()
    line = note.split("\n\n")[-1]
    with pytest.raises(CheckpointInvalid, match="more than 100"):
        parse_note(note + line * 100)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (f"{ORIGIN}\n42\n", "text"),
        (f"\n42\n{base64.b64encode(ROOT).decode()}\n", "origin"),
        (f"{ORIGIN}\n042\n{base64.b64encode(ROOT).decode()}\n", "size"),
        (f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n", "size"),
        (f"{ORIGIN}\n4\u0662\n{base64.b64encode(ROOT).decode()}\n", "size"),
        (f"{ORIGIN}\n{2**64}\n{base64.b64encode(ROOT).decode()}\n", "size"),
        (f"{ORIGIN}\n{'1' * 5000}\n{base64.b64encode(ROOT).decode()}\n", "size"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n", "root_hash"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode().rstrip('=')}\n", "root_hash"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n\n", "extensions"),
        (f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}", "text"),
    ],
)
def test_malformed_checkpoint_bodies_are_rejected_naming_the_field(body: str, field: str) -> None:
    with pytest.raises(CheckpointInvalid) as info:
        parse_checkpoint_body(body)
    assert info.value.field == field


def test_signing_refuses_a_multi_line_origin_or_bad_size() -> None:
    with pytest.raises(CheckpointInvalid):
        sign_checkpoint("a\nb", 1, ROOT, ORIGIN, KEY)
    with pytest.raises(CheckpointInvalid):
        sign_checkpoint(ORIGIN, -1, ROOT, ORIGIN, KEY)


@pytest.mark.parametrize("name", ["", "has space", "a+b", "tab\tname"])
def test_malformed_key_names_are_refused(name: str) -> None:
    with pytest.raises(KeyInvalid):
        key_hash(name, KEY.public_key())


def test_verifier_key_string_round_trips() -> None:
    text = encode_verifier_key(ORIGIN, KEY.public_key())
    name, hash_hex, blob = text.split("+", 2)
    assert name == ORIGIN
    assert bytes.fromhex(hash_hex) == key_hash(ORIGIN, KEY.public_key())
    assert base64.b64decode(blob) == b"\x01" + _raw(KEY)
    verifier = parse_verifier_key(text)
    assert str(verifier) == text
    assert verify_checkpoint(_note(), verifier.name, verifier.public_key).size == 42


def test_signer_key_string_round_trips() -> None:
    text = encode_signer_key(ORIGIN, KEY)
    assert text.startswith(f"PRIVATE+KEY+{ORIGIN}+")
    name, key = parse_signer_key(text)
    assert name == ORIGIN
    assert _raw(key) == _raw(KEY)


def test_verifier_key_with_a_wrong_hash_is_refused() -> None:
    name, _, blob = encode_verifier_key(ORIGIN, KEY.public_key()).split("+", 2)
    with pytest.raises(KeyInvalid, match="does not match"):
        parse_verifier_key(f"{name}+00000000+{blob}")


@pytest.mark.parametrize(
    "text",
    [
        "name+0000",
        "name+zzzzzzzz+AQ==",
        "name+00000000+" + base64.b64encode(bytes([2]) + bytes(32)).decode(),
        "name+00000000+" + base64.b64encode(bytes([1]) + bytes(31)).decode(),
        "has space+00000000+AQ==",
    ],
)
def test_malformed_verifier_keys_are_refused(text: str) -> None:
    with pytest.raises(KeyInvalid):
        parse_verifier_key(text)


def test_key_strings_whose_base64_contains_a_plus_parse() -> None:
    for seed in range(64):
        key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        verifier_text = encode_verifier_key("k", key.public_key())
        assert str(parse_verifier_key(verifier_text)) == verifier_text
        assert _raw(parse_signer_key(encode_signer_key("k", key))[1]) == _raw(key)


def test_signer_key_must_start_with_private_key() -> None:
    text = encode_signer_key(ORIGIN, KEY).replace("PRIVATE+KEY", "SECRET+KEY", 1)
    with pytest.raises(KeyInvalid, match="PRIVATE"):
        parse_signer_key(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1718000000000000", 1718000000000000), (str(2**63 - 1), 2**63 - 1), (str(2**63), None), ("1" * 5000, None)],
    ids=["a-time", "the-largest", "past-bigint", "over-int-digit-limit"],
)
def test_the_time_extension_reads_only_times_within_bigint(value: str, expected: int | None) -> None:
    # An unreadable time line is opaque, as any other extension: time_us says there is no time.
    assert parse_checkpoint(_note(extensions=(f"time {value}",))).time_us == expected
