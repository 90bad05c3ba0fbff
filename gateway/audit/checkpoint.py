"""Signed checkpoints of the exchange log, in the C2SP formats.

A **checkpoint** (https://c2sp.org/tlog-checkpoint) states a tree size and root hash for a log
named by its *origin*::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <root hash, standard base64>\\n
    [<extension line>\\n ...]

It is the text of a **signed note** (https://c2sp.org/signed-note): the text, a blank line, then
one or more signature lines ``— <key name> <base64(key hash || signature)>\\n`` (an em dash,
U+2014). For Ed25519 (signature type ``0x01``) the signature is over the note text's UTF-8
bytes, and the key hash is the first four bytes of
``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)``, which lets a verifier skip, without
trying them, the signatures of keys it does not know (witness cosignatures, for instance).
A verifier key is written ``<name>+<key hash, 8 hex digits>+<base64(0x01 || public key)>``;
a signer key ``PRIVATE+KEY+<name>+<key hash>+<base64(0x01 || private seed)>``.

:func:`verify_checkpoint` raises :class:`SignatureInvalid` or :class:`CheckpointInvalid` naming
what is wrong; it never returns a checkpoint whose signature it did not check.
:func:`parse_checkpoint` reads a note *without* checking signatures, for display only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from gateway.audit.errors import CheckpointInvalid, KeyInvalid, SignatureInvalid

__all__ = [
    "ALG_ED25519",
    "TIME_EXTENSION",
    "Checkpoint",
    "NoteSignature",
    "NoteVerifier",
    "SignedNote",
    "encode_signer_key",
    "encode_verifier_key",
    "key_hash",
    "parse_checkpoint",
    "parse_checkpoint_body",
    "parse_note",
    "parse_signer_key",
    "parse_verifier_key",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
]

#: Signature type byte of Ed25519 in signed notes.
ALG_ED25519 = 0x01
#: The extension line carrying the signing time: ``time <integer microseconds since the Unix epoch>``.
#: C2SP checkpoints have no time field; extension lines are signed with the rest of the body.
TIME_EXTENSION = "time "
#: Notes with more signatures are refused outright (as the Go reference does), bounding work.
_MAX_SIGNATURES = 100
_SIGNATURE_PREFIX = "\u2014 "
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_MAX_TREE_SIZE = 2**64 - 1
#: Times are microseconds within SQL BIGINT, like audit entries' ``time_us``.
_MAX_TIME_US = 2**63 - 1


def _bounded_decimal(text: str, maximum: int) -> int | None:
    """``text`` as an integer if it is a decimal without leading zeros within ``0..maximum``, else None.

    The length is bounded before converting: int() refuses more than 4,300 digits with ValueError.
    """
    if len(text) > len(str(maximum)) or not _DECIMAL.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint states: the log's origin, a tree size, its root hash, and extension lines."""

    #: The log's permanent name, by convention a schema-less URL (``hub.example.gov.cn/audit``).
    origin: str
    #: The number of entries the root covers.
    size: int
    #: The RFC 9162 root hash of the first ``size`` entries.
    root_hash: bytes
    #: Extra non-empty lines after the root (opaque to the format).
    extensions: tuple[str, ...] = ()

    @property
    def time_us(self) -> int | None:
        """When the hub signed the checkpoint (its ``time`` extension line), or None without one."""
        for line in self.extensions:
            if line.startswith(TIME_EXTENSION):
                value = _bounded_decimal(line[len(TIME_EXTENSION) :], _MAX_TIME_US)
                if value is not None:
                    return value
        return None

    def body(self) -> str:
        """The checkpoint's note text."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii"), *self.extensions]
        return "".join(f"{line}\n" for line in lines)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a signed note, not yet verified."""

    #: The key name on the line.
    name: str
    #: The four-byte key hash that starts the signature blob.
    key_hash: bytes
    #: The signature proper (the rest of the blob).
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A signed note split into its text and its (unverified) signatures."""

    #: The signed text, ending with a newline.
    text: str
    #: The signature lines, in order.
    signatures: tuple[NoteSignature, ...]


def _check_key_name(name: str) -> None:
    if not name or "+" in name or any(ch.isspace() for ch in name) or not name.isprintable():
        raise KeyInvalid("key name must be non-empty printable text without spaces or '+'", field="key_name")


def _public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The four-byte key hash of an Ed25519 note key: ``SHA-256(name || 0x0A || 0x01 || key)[:4]``."""
    _check_key_name(name)
    data = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + _public_bytes(public_key)
    return hashlib.sha256(data).digest()[:4]


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """An Ed25519 note verifier: a key name, its key hash and its public key."""

    #: The key name signatures must carry.
    name: str
    #: The four-byte key hash signatures must start with.
    key_hash: bytes
    #: The Ed25519 public key.
    public_key: Ed25519PublicKey

    @classmethod
    def of(cls, name: str, public_key: Ed25519PublicKey) -> NoteVerifier:
        """The verifier for ``public_key`` under ``name``."""
        return cls(name, key_hash(name, public_key), public_key)

    def verifies(self, text: str, signature: NoteSignature) -> bool:
        """Whether ``signature`` is this key's valid signature over ``text``."""
        if signature.name != self.name or signature.key_hash != self.key_hash:
            return False
        try:
            self.public_key.verify(signature.signature, text.encode("utf-8"))
        except InvalidSignature:
            return False
        return True

    def __str__(self) -> str:
        return encode_verifier_key(self.name, self.public_key)


def encode_verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string ``<name>+<hex key hash>+<base64(0x01 || public key)>``."""
    blob = base64.b64encode(bytes([ALG_ED25519]) + _public_bytes(public_key)).decode("ascii")
    return f"{name}+{key_hash(name, public_key).hex()}+{blob}"


def _b64(text: str, what: str, error: type[CheckpointInvalid] | type[KeyInvalid]) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"{what} is not standard base64", field=what) from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise error(f"{what} is not canonical base64", field=what)
    return data


def _split_key(text: str, parts: int) -> list[str]:
    # Only the leading fields are split off: the base64 key itself may contain "+".
    fields = text.split("+", parts - 1)
    if len(fields) != parts:
        raise KeyInvalid(f"key string must have {parts} '+'-separated fields, not {len(fields)}", field="key")
    return fields


def _typed_key(name: str, hash_hex: str, blob_b64: str) -> tuple[bytes, bytes]:
    _check_key_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
        raise KeyInvalid("key hash must be 8 lower-case hex digits", field="key_hash")
    blob = _b64(blob_b64, "key", KeyInvalid)
    if len(blob) != 33 or blob[0] != ALG_ED25519:
        raise KeyInvalid("key must be 0x01 followed by 32 Ed25519 key bytes", field="key")
    return bytes.fromhex(hash_hex), blob[1:]


def parse_verifier_key(text: str) -> NoteVerifier:
    """The verifier of a ``<name>+<hex key hash>+<base64 key>`` string; checks the key hash."""
    name, hash_hex, blob_b64 = _split_key(text, 3)
    expected_hash, raw = _typed_key(name, hash_hex, blob_b64)
    verifier = NoteVerifier.of(name, Ed25519PublicKey.from_public_bytes(raw))
    if verifier.key_hash != expected_hash:
        raise KeyInvalid("key hash does not match the key name and key", field="key_hash")
    return verifier


def encode_signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """The signer key string ``PRIVATE+KEY+<name>+<hex key hash>+<base64(0x01 || seed)>``; keep it secret."""
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    blob = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
    return f"PRIVATE+KEY+{name}+{key_hash(name, private_key.public_key()).hex()}+{blob}"


def parse_signer_key(text: str) -> tuple[str, Ed25519PrivateKey]:
    """The key name and private key of a signer key string; checks the key hash."""
    fields = _split_key(text, 5)
    if fields[:2] != ["PRIVATE", "KEY"]:
        raise KeyInvalid("signer key must start with PRIVATE+KEY+", field="key")
    name, hash_hex, blob_b64 = fields[2:]
    expected_hash, seed = _typed_key(name, hash_hex, blob_b64)
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    if key_hash(name, private_key.public_key()) != expected_hash:
        raise KeyInvalid("key hash does not match the key name and key", field="key_hash")
    return name, private_key


def _check_text(text: str) -> None:
    if not text or not text.endswith("\n"):
        raise CheckpointInvalid("note text must be non-empty and end with a newline", field="text")
    if any(ch != "\n" and (ch < " " or ch == "\x7f") for ch in text):
        raise CheckpointInvalid("note text must not contain control characters other than newline", field="text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CheckpointInvalid("note text is not valid Unicode", field="text") from exc


def sign_note(text: str, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """``text`` as a signed note carrying one Ed25519 signature by ``key_name``."""
    _check_text(text)
    hash_ = key_hash(key_name, private_key.public_key())
    signature = private_key.sign(text.encode("utf-8"))
    blob = base64.b64encode(hash_ + signature).decode("ascii")
    return f"{text}\n{_SIGNATURE_PREFIX}{key_name} {blob}\n"


def parse_note(note: str) -> SignedNote:
    """Split a signed note into text and signatures; checks the form, not the signatures."""
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointInvalid("signed note has no blank line before its signatures", field="note")
    text, block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    if not block.endswith("\n"):
        raise CheckpointInvalid("signature block must end with a newline", field="signatures")
    lines = block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise CheckpointInvalid(f"signed note has more than {_MAX_SIGNATURES} signatures", field="signatures")
    signatures = []
    for number, line in enumerate(lines, start=1):
        where = {"line": str(number)}
        if not line.startswith(_SIGNATURE_PREFIX):
            raise CheckpointInvalid(
                f"signature line {number} does not start with an em dash and a space",
                field="signatures",
                metadata=where,
            )
        name, space, blob_b64 = line[len(_SIGNATURE_PREFIX) :].rpartition(" ")
        if not space:
            raise CheckpointInvalid(f"signature line {number} has no key name", field="signatures", metadata=where)
        try:
            _check_key_name(name)
        except KeyInvalid as exc:
            raise CheckpointInvalid(
                f"signature line {number} has a malformed key name", field="signatures", metadata=where
            ) from exc
        blob = _b64(blob_b64, "signature", CheckpointInvalid)
        if len(blob) < 5:
            raise CheckpointInvalid(f"signature line {number} is too short", field="signatures", metadata=where)
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    return SignedNote(text, tuple(signatures))


def parse_checkpoint_body(text: str, *, hash_size: int = 32) -> Checkpoint:
    """The checkpoint stated by a note text (origin, size, root, extensions)."""
    _check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointInvalid("checkpoint needs an origin, a tree size and a root hash line", field="text")
    origin, size_text, root_b64, *extensions = lines
    if not origin:
        raise CheckpointInvalid("checkpoint origin line is empty", field="origin")
    size = _bounded_decimal(size_text, _MAX_TREE_SIZE)
    if size is None:
        raise CheckpointInvalid(
            "checkpoint tree size is not a decimal without leading zeros within 0..2**64-1", field="size"
        )
    root = _b64(root_b64, "root_hash", CheckpointInvalid)
    if len(root) != hash_size:
        raise CheckpointInvalid(
            f"checkpoint root hash has {len(root)} bytes, not {hash_size}",
            field="root_hash",
            metadata={"length": str(len(root))},
        )
    if any(not line for line in extensions):
        raise CheckpointInvalid("checkpoint extension lines must not be empty", field="extensions")
    return Checkpoint(origin, size, root, tuple(extensions))


def parse_checkpoint(note: str, *, hash_size: int = 32) -> Checkpoint:
    """The checkpoint in a signed note, **signatures unchecked**: for display only.

    Use :func:`verify_checkpoint` before trusting it.
    """
    return parse_checkpoint_body(parse_note(note).text, hash_size=hash_size)


def sign_checkpoint(
    origin: str,
    size: int,
    root: bytes,
    key_name: str,
    private_key: Ed25519PrivateKey,
    *,
    extensions: tuple[str, ...] = (),
    time_us: int | None = None,
) -> str:
    """A signed-note checkpoint of ``size`` and ``root`` for the log ``origin``.

    With ``time_us``, the first extension line is ``time <time_us>`` (see :data:`TIME_EXTENSION`).
    """
    if time_us is not None:
        if time_us < 0:
            raise CheckpointInvalid("checkpoint time must not be negative", field="time_us")
        extensions = (f"{TIME_EXTENSION}{time_us}", *extensions)
    if not 0 <= size <= _MAX_TREE_SIZE:
        raise CheckpointInvalid(f"tree size {size} is outside 0..2**64-1", field="size")
    for line in (origin, *extensions):
        if not line or "\n" in line:
            raise CheckpointInvalid("origin and extension lines must be non-empty single lines", field="text")
    body = Checkpoint(origin, size, root, extensions).body()
    parse_checkpoint_body(body, hash_size=len(root))
    return sign_note(body, key_name, private_key)


def verify_checkpoint(
    note: str,
    key_name: str,
    public_key: Ed25519PublicKey,
    *,
    origin: str | None = None,
    hash_size: int = 32,
) -> Checkpoint:
    """The checkpoint in ``note`` once a valid signature by ``key_name``/``public_key`` is found.

    Signatures by other keys are ignored (they may be witnesses'). With ``origin``, the
    checkpoint must name that log. Raises :class:`SignatureInvalid` or :class:`CheckpointInvalid`.
    """
    signed = parse_note(note)
    verifier = NoteVerifier.of(key_name, public_key)
    named = [sig for sig in signed.signatures if sig.name == key_name]
    if not named:
        raise SignatureInvalid(f"note has no signature by key {key_name}", metadata={"key_name": key_name})
    mine = [sig for sig in named if sig.key_hash == verifier.key_hash]
    if not mine:
        raise SignatureInvalid(
            f"note is signed by a different key named {key_name}",
            metadata={"key_name": key_name, "key_hash": verifier.key_hash.hex()},
        )
    if not any(verifier.verifies(signed.text, sig) for sig in mine):
        raise SignatureInvalid(
            f"signature by key {key_name} does not verify over the note text", metadata={"key_name": key_name}
        )
    checkpoint = parse_checkpoint_body(signed.text, hash_size=hash_size)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointInvalid(
            f"checkpoint is for log {checkpoint.origin}, not {origin}",
            field="origin",
            metadata={"origin": checkpoint.origin, "expected_origin": origin},
        )
    return checkpoint
