"""Protection of personal data at rest: keyed person keys and sealed fields, under a crypto suite.

A hub runs one **crypto suite** for everything it hashes or encrypts at rest:

=========  =====================  ==================  ============
suite      person key             sealed fields       hashing
=========  =====================  ==================  ============
``intl``   HMAC-SHA-256           AES-256-GCM         SHA-256
``sm``     HMAC-SM3 (GM/T 0042)   SM4-GCM (RFC 8998)  SM3
=========  =====================  ==================  ============

* The **person key** is the HMAC of the normalised ID number under a secret key, truncated
  to 128 bits (RFC 2104 section 5) in both suites. It is the only thing the hub indexes:
  equal numbers give equal keys, and without the secret a key cannot be turned back into a
  number by enumerating the (small) space of valid IDs. 128 bits keep the chance of any
  collision among 70 million persons below 1e-23 while halving the index that every record
  updates. SM3 gives 256 bits like SHA-256, so the same truncation holds, and the store's
  schema, the findings ids and the query path need not know which suite made a key.
* **Sealed fields** (ID number and name) are AEAD ciphertexts (AES-256-GCM or SM4-GCM, a
  fresh 96-bit nonce each, 128-bit tag). Each blob starts with a reference to the key that
  sealed it, so keys rotate by adding a new active key while old blobs stay readable. The
  row's identity is bound in as associated data, so a blob copied onto another row fails to
  open.

Blob layout: ``len(ref) (1 byte) | ref (ASCII) | nonce (12 bytes) | ciphertext | tag (16 bytes)``.
``ref`` says which algorithm sealed the blob: for ``intl`` it is the bare key id (the layout
from before suites existed, so every old blob stays readable); for any other suite it is
``<suite>:<key id>`` (``sm:k1``). Key ids therefore never contain ``:``. A hub opens only
blobs of its own suite; any other is refused (``CRYPTO_SUITE_MISMATCH``) before a key is
tried, so a blob is never decrypted under the wrong algorithm.

There is no AEAD class for SM4-GCM in ``cryptography``; :class:`_Sm4Gcm` drives the GCM mode
of its ``Cipher`` exactly as the AEAD classes do (associated data first, the tag appended,
and nothing returned before the tag verifies). It is checked against RFC 8998's vectors.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError, StoreError

__all__ = [
    "PERSON_KEY_BYTES",
    "CryptoSuite",
    "FieldSealer",
    "KeyMaterial",
    "PersonKeyer",
    "digest",
    "generate_key_material",
    "hash_algorithm",
    "parse_suite",
    "suite_hash",
]

_NONCE_BYTES = 12
_TAG_BYTES = 16
#: Length of a person key (both suites).
PERSON_KEY_BYTES = 16
_SECRET_MIN_BYTES = 32
_KEY_REF_MAX = 255
_SUITE_SEPARATOR = ":"


class CryptoSuite(StrEnum):
    """The algorithms a hub hashes and encrypts with at rest (TLS stays ECDSA P-256 in both)."""

    #: HMAC-SHA-256 person keys, AES-256-GCM sealing, SHA-256 hashing.
    INTL = "intl"
    #: HMAC-SM3 person keys, SM4-GCM sealing, SM3 hashing (the Chinese commercial standards).
    SM = "sm"


_SEALING_KEY_BYTES = {CryptoSuite.INTL: 32, CryptoSuite.SM: 16}
_SEALING_NAME = {CryptoSuite.INTL: "AES-256-GCM", CryptoSuite.SM: "SM4-GCM"}


def parse_suite(value: str, *, field: str = "crypto_suite") -> CryptoSuite:
    """The suite named ``value``; ConfigError (CRYPTO_SUITE_UNKNOWN) naming ``field`` otherwise."""
    try:
        return CryptoSuite(value)
    except ValueError:
        known = ", ".join(s.value for s in CryptoSuite)
        raise ConfigError(
            f"unknown crypto suite {value!r}; use one of {known}",
            reason="CRYPTO_SUITE_UNKNOWN",
            field=field,
            metadata={"crypto_suite": str(value)},
        ) from None


def hash_algorithm(suite: str) -> hashes.HashAlgorithm:
    """The suite's hash (SHA-256 or SM3), for ``hashes.Hash``, HMAC or signatures."""
    return hashes.SM3() if parse_suite(suite) is CryptoSuite.SM else hashes.SHA256()


def digest(suite: str, data: bytes) -> bytes:
    """The 32-byte hash of ``data`` under the suite (SHA-256 or SM3)."""
    h = hashes.Hash(hash_algorithm(suite))
    h.update(data)
    return h.finalize()


def suite_hash(suite: str) -> Callable[[bytes], bytes]:
    """The suite's hash as a function of bytes (for audit chains and content digests)."""
    parsed = parse_suite(suite)

    def hash_of(data: bytes) -> bytes:
        return digest(parsed, data)

    return hash_of


def _key_ref(suite: CryptoSuite, key_id: str) -> bytes:
    """The reference written before the nonce: the bare key id for intl, ``suite:key id`` otherwise."""
    ref = key_id if suite is CryptoSuite.INTL else f"{suite.value}{_SUITE_SEPARATOR}{key_id}"
    return ref.encode("ascii")


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """The secrets of one hub: its crypto suite, the person-key secret and the sealing keys."""

    #: Secret of the person-key HMAC. Changing it changes every person key (a re-key migration).
    person_key_secret: bytes
    #: Sealing keys by key id (32 bytes for AES-256, 16 for SM4); the active one seals, all open.
    sealing_keys: Mapping[str, bytes]
    #: Id of the key new blobs are sealed with.
    active_key_id: str
    #: The suite every key here belongs to. Fixed for the life of a hub's data: switching it
    #: changes every person key and leaves every sealed field unreadable.
    suite: CryptoSuite = CryptoSuite.INTL

    def __post_init__(self) -> None:
        # Accept the plain strings of key files and settings; hold the enum.
        object.__setattr__(self, "suite", parse_suite(self.suite, field="suite"))
        if len(self.person_key_secret) < _SECRET_MIN_BYTES:
            raise ConfigError("person-key secret must be at least 32 bytes", field="person_key_secret")
        if self.active_key_id not in self.sealing_keys:
            raise ConfigError("active key id has no key", field="active_key_id")
        size = _SEALING_KEY_BYTES[self.suite]
        for key_id, key in self.sealing_keys.items():
            if (
                not key_id
                or not key_id.isascii()
                or _SUITE_SEPARATOR in key_id
                or len(_key_ref(self.suite, key_id)) > _KEY_REF_MAX
            ):
                raise ConfigError(
                    f"sealing key ids are 1 to {_KEY_REF_MAX - len(_key_ref(self.suite, ''))}"
                    f" ASCII characters without {_SUITE_SEPARATOR!r}",
                    field="sealing_keys",
                )
            if len(key) != size:
                raise ConfigError(
                    f"sealing key {key_id} must be {size} bytes for {_SEALING_NAME[self.suite]}"
                    f" (crypto suite {self.suite.value}), got {len(key)}",
                    field="sealing_keys",
                    metadata={"key_id": key_id, "crypto_suite": self.suite.value},
                )


def generate_key_material(key_id: str = "k1", *, suite: str = CryptoSuite.INTL) -> KeyMaterial:
    """Fresh random key material of the given suite (for a new hub)."""
    parsed = parse_suite(suite, field="suite")
    return KeyMaterial(
        person_key_secret=secrets.token_bytes(_SECRET_MIN_BYTES),
        sealing_keys={key_id: secrets.token_bytes(_SEALING_KEY_BYTES[parsed])},
        active_key_id=key_id,
        suite=parsed,
    )


class PersonKeyer:
    """Turns a normalised ID number into the national person key (HMAC-SHA-256 or HMAC-SM3)."""

    __slots__ = ("_keyed", "suite")

    def __init__(self, secret: bytes, *, suite: str = CryptoSuite.INTL) -> None:
        #: The suite whose HMAC this keyer computes.
        self.suite = parse_suite(suite, field="suite")
        # Keyed once; each person key continues from a copy (half the cost of re-keying).
        self._keyed = hmac.HMAC(secret, hash_algorithm(self.suite))

    def person_key(self, normalised_id_number: str) -> bytes:
        """The 16-byte keyed hash of a normalised ID number."""
        mac = self._keyed.copy()
        mac.update(normalised_id_number.encode("ascii"))
        return mac.finalize()[:PERSON_KEY_BYTES]


class _Aead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


class _Sm4Gcm:
    """SM4-GCM with the interface of ``AESGCM``: ciphertext with the 16-byte tag appended."""

    __slots__ = ("_algorithm",)

    def __init__(self, key: bytes) -> None:
        self._algorithm = algorithms.SM4(key)

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        encryptor = Cipher(self._algorithm, modes.GCM(nonce)).encryptor()
        if associated_data:
            encryptor.authenticate_additional_data(associated_data)
        ciphertext = encryptor.update(data) + encryptor.finalize()
        return ciphertext + encryptor.tag

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if len(data) < _TAG_BYTES:
            raise InvalidTag
        decryptor = Cipher(self._algorithm, modes.GCM(nonce, data[-_TAG_BYTES:])).decryptor()
        if associated_data:
            decryptor.authenticate_additional_data(associated_data)
        plaintext = decryptor.update(data[:-_TAG_BYTES])
        # finalize() raises InvalidTag on any tampering; only then is the plaintext released.
        return plaintext + decryptor.finalize()


def _aead(suite: CryptoSuite, key: bytes) -> _Aead:
    return _Sm4Gcm(key) if suite is CryptoSuite.SM else AESGCM(key)


def _suite_of_ref(ref: bytes) -> tuple[str, bytes]:
    """(suite name, key id) named by a blob's key reference; a bare key id is intl."""
    suite, sep, key_id = ref.partition(_SUITE_SEPARATOR.encode())
    if not sep:
        return CryptoSuite.INTL.value, ref
    return suite.decode("ascii", "replace"), key_id


class FieldSealer:
    """Seals and opens small personal fields with the suite's AEAD and key ids."""

    __slots__ = ("_active", "_by_ref", "_prefix", "suite")

    def __init__(self, keys: KeyMaterial) -> None:
        #: The suite of every blob this sealer writes and of every blob it will open.
        self.suite = keys.suite
        self._by_ref = {_key_ref(keys.suite, kid): _aead(keys.suite, key) for kid, key in keys.sealing_keys.items()}
        active = _key_ref(keys.suite, keys.active_key_id)
        self._active = self._by_ref[active]
        self._prefix = bytes([len(active)]) + active

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``associated_data`` under the active key."""
        nonce = os.urandom(_NONCE_BYTES)
        return self._prefix + nonce + self._active.encrypt(nonce, plaintext, associated_data)

    def open(self, blob: bytes, associated_data: bytes) -> bytes:
        """Decrypt a sealed blob; raises StoreError if it is damaged, bound elsewhere or of another suite."""
        if not blob:
            raise StoreError("sealed field is empty", reason="SEALED_FIELD_DAMAGED")
        n = blob[0]
        body = 1 + n + _NONCE_BYTES
        if len(blob) < body + _TAG_BYTES:
            raise StoreError("sealed field is truncated", reason="SEALED_FIELD_DAMAGED")
        ref = blob[1 : 1 + n]
        aead = self._by_ref.get(ref)
        if aead is None:
            blob_suite, key_id = _suite_of_ref(ref)
            if blob_suite != self.suite.value:
                raise StoreError(
                    f"sealed field was sealed under crypto suite {blob_suite!r}"
                    f" but this hub runs {self.suite.value!r}; it cannot be opened here",
                    reason="CRYPTO_SUITE_MISMATCH",
                    metadata={
                        "key_id": key_id.decode("ascii", "replace"),
                        "blob_suite": blob_suite,
                        "hub_suite": self.suite.value,
                    },
                )
            raise StoreError(
                "sealed field uses an unknown key id",
                reason="SEALING_KEY_UNKNOWN",
                metadata={"key_id": key_id.decode("ascii", "replace")},
            )
        try:
            return aead.decrypt(blob[1 + n : body], blob[body:], associated_data)
        except InvalidTag as exc:
            raise StoreError("sealed field failed authentication", reason="SEALED_FIELD_DAMAGED") from exc
