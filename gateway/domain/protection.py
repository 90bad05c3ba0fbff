"""Protection of personal data at rest: keyed person keys and sealed fields.

* The **person key** is HMAC-SHA256 of the normalised ID number under a secret key,
  truncated to 128 bits (RFC 2104 section 5). It is the only thing the hub indexes: equal
  numbers give equal keys, and without the secret a key cannot be turned back into a number
  by enumerating the (small) space of valid IDs. 128 bits keep the chance of any collision
  among 70 million persons below 1e-23 while halving the index that every record updates.
* **Sealed fields** (ID number and name) are AES-256-GCM ciphertexts. Each blob starts with
  the id of the key that sealed it, so keys rotate by adding a new active key while old
  blobs stay readable. The row's identity is bound in as associated data, so a blob copied
  onto another row fails to open.

Blob layout: ``len(key_id) (1 byte) | key_id (ASCII) | nonce (12 bytes) | ciphertext+tag``.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError, StoreError

__all__ = ["PERSON_KEY_BYTES", "FieldSealer", "KeyMaterial", "PersonKeyer", "generate_key_material"]

_NONCE_BYTES = 12
#: Length of a person key.
PERSON_KEY_BYTES = 16
_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """The secrets of one hub: the person-key secret and the sealing keys."""

    #: Secret of the person-key HMAC. Changing it changes every person key (a re-key migration).
    person_key_secret: bytes
    #: Sealing keys by key id; the active one seals, all of them open.
    sealing_keys: Mapping[str, bytes]
    #: Id of the key new blobs are sealed with.
    active_key_id: str

    def __post_init__(self) -> None:
        if len(self.person_key_secret) < _KEY_BYTES:
            raise ConfigError("person-key secret must be at least 32 bytes", field="person_key_secret")
        if self.active_key_id not in self.sealing_keys:
            raise ConfigError("active key id has no key", field="active_key_id")
        for key_id, key in self.sealing_keys.items():
            if not key_id.isascii() or not 0 < len(key_id) < 256:
                raise ConfigError("sealing key ids are 1 to 255 ASCII characters", field="sealing_keys")
            if len(key) != _KEY_BYTES:
                raise ConfigError(f"sealing key {key_id} must be 32 bytes", field="sealing_keys")


def generate_key_material(key_id: str = "k1") -> KeyMaterial:
    """Fresh random key material (for a new hub)."""
    return KeyMaterial(
        person_key_secret=secrets.token_bytes(_KEY_BYTES),
        sealing_keys={key_id: AESGCM.generate_key(bit_length=256)},
        active_key_id=key_id,
    )


class PersonKeyer:
    """Turns a normalised ID number into the national person key."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def person_key(self, normalised_id_number: str) -> bytes:
        """The 16-byte keyed hash of a normalised ID number."""
        return hmac.digest(self._secret, normalised_id_number.encode("ascii"), "sha256")[:PERSON_KEY_BYTES]


class FieldSealer:
    """Seals and opens small personal fields with AES-256-GCM and key ids."""

    __slots__ = ("_active", "_by_id", "_prefix")

    def __init__(self, keys: KeyMaterial) -> None:
        self._by_id = {kid.encode("ascii"): AESGCM(key) for kid, key in keys.sealing_keys.items()}
        active = keys.active_key_id.encode("ascii")
        self._active = self._by_id[active]
        self._prefix = bytes([len(active)]) + active

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``associated_data`` under the active key."""
        nonce = os.urandom(_NONCE_BYTES)
        return self._prefix + nonce + self._active.encrypt(nonce, plaintext, associated_data)

    def open(self, blob: bytes, associated_data: bytes) -> bytes:
        """Decrypt a sealed blob; raises StoreError if it is damaged or bound elsewhere."""
        if not blob:
            raise StoreError("sealed field is empty", reason="SEALED_FIELD_DAMAGED")
        n = blob[0]
        key_id = blob[1 : 1 + n]
        aead = self._by_id.get(key_id)
        if aead is None:
            raise StoreError(
                "sealed field uses an unknown key id",
                reason="SEALING_KEY_UNKNOWN",
                metadata={"key_id": key_id.decode("ascii", "replace")},
            )
        nonce = blob[1 + n : 1 + n + _NONCE_BYTES]
        try:
            return aead.decrypt(nonce, blob[1 + n + _NONCE_BYTES :], associated_data)
        except InvalidTag as exc:
            raise StoreError("sealed field failed authentication", reason="SEALED_FIELD_DAMAGED") from exc
