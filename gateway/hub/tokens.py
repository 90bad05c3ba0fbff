"""Certificate-bound access tokens (RFC 8705): issued over mTLS, checked on every call.

A token is a JWT signed ES256 by the hub. Its claims: ``iss`` and ``aud`` (``hutong``), ``sub``
(the node's URI), ``scope`` (space-separated), ``iat``/``nbf``/``exp``, ``jti``, and
``cnf`` = ``{"x5t#S256": base64url(SHA-256(client certificate DER))}``. The hub refuses a token
whose ``cnf`` does not match the certificate of the connection it arrives on, so a token
copied to another node is useless.

Signing keys live in ``token-keys.json`` in the data directory (0600); the newest signs, all
verify, and each token names its key in the ``kid`` header, so keys rotate without cutting off
tokens already issued. :meth:`TokenKeys.jwks` is the public key set.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import errors
from gateway.hub.keys import require_private
from pki.operator import write_secret_file

__all__ = [
    "CONSOLE_AUDIENCE",
    "TOKEN_KEYS_FILE",
    "TokenClaims",
    "TokenKeys",
    "TokenService",
    "certificate_thumbprint",
]

TOKEN_KEYS_FILE = "token-keys.json"  # noqa: S105 - a file name
_ISSUER = "hutong"
_AUDIENCE = "hutong"
#: The audience of console login tokens (``hutong hub console-token``): a person's browser session,
#: not bound to a certificate. The gRPC API refuses them and the console refuses API tokens.
CONSOLE_AUDIENCE = "hutong-console"
_ALGORITHM = "ES256"


def certificate_thumbprint(der: bytes) -> str:
    """``x5t#S256`` of a certificate: base64url (unpadded) of SHA-256 of its DER encoding."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token grants."""

    subject: str
    scopes: frozenset[str]
    expires_at: float
    thumbprint: str | None


class TokenKeys:
    """The hub's token-signing keys: the newest signs, every one verifies."""

    def __init__(self, keys: list[tuple[str, ec.EllipticCurvePrivateKey]]) -> None:
        if not keys:
            raise errors.ConfigError("no token-signing key", reason="TOKEN_KEYS_MISSING", field="token_keys")
        self._keys = list(keys)
        self._public = {kid: key.public_key() for kid, key in keys}

    @property
    def active(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """The key that signs new tokens."""
        return self._keys[-1]

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The verification key of a key id."""
        return self._public.get(kid)

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JSON Web Key Set."""
        keys = []
        for kid, public in self._public.items():
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": _ALGORITHM})
        return {"keys": keys}

    @classmethod
    def load_or_create(cls, data_dir: Path) -> TokenKeys:
        """Read the key file, creating it (0600) with one key on first start."""
        path = data_dir / TOKEN_KEYS_FILE
        if not path.exists():
            keys = cls([(_new_kid(), ec.generate_private_key(ec.SECP256R1()))])
            keys.save(path, create=True)
            return keys
        require_private(path)
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            loaded = []
            for entry in body["keys"]:
                key = serialization.load_pem_private_key(entry["private_key"].encode(), password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise ValueError("not an EC key")
                loaded.append((str(entry["kid"]), key))
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.ConfigError(
                f"{path} is not a valid token key file: {exc}", reason="KEY_FILE_INVALID", field=str(path)
            ) from exc
        return cls(loaded)

    def rotated(self, *, keep: int = 3) -> TokenKeys:
        """A key set with a new signing key; the newest ``keep`` older keys still verify."""
        return TokenKeys([*self._keys[-keep:], (_new_kid(), ec.generate_private_key(ec.SECP256R1()))])

    def save(self, path: Path, *, create: bool = False) -> None:
        """Write the key file (0600): a new one with ``create``, else replacing the old atomically."""
        body = {
            "keys": [
                {
                    "kid": kid,
                    "private_key": key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ).decode(),
                }
                for kid, key in self._keys
            ]
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret_file(path, json.dumps(body, indent=2).encode(), field="token_keys_file", overwrite=not create)


def _unverified_audience(token: str) -> object:
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("aud")
    except jwt.InvalidTokenError:
        return None


def _new_kid() -> str:
    return time.strftime("%Y%m%d") + "-" + secrets.token_hex(4)


class TokenService:
    """Issues and verifies certificate-bound tokens; verified tokens are cached until they expire."""

    def __init__(self, keys: TokenKeys, *, lifetime_seconds: int = 900, cache_size: int = 10_000) -> None:
        self.keys = keys
        self.lifetime = lifetime_seconds
        self._cache: OrderedDict[str, TokenClaims] = OrderedDict()
        self._cache_size = cache_size

    def issue(
        self,
        subject: str,
        scopes: Iterable[str],
        thumbprint: str | None,
        *,
        audience: str = _AUDIENCE,
        lifetime_seconds: int | None = None,
    ) -> tuple[str, TokenClaims]:
        """A signed token for ``subject`` carrying ``scopes``, bound to ``thumbprint``."""
        now = int(time.time())
        granted = frozenset(scopes)
        lifetime = self.lifetime if lifetime_seconds is None else lifetime_seconds
        claims: dict[str, Any] = {
            "iss": _ISSUER,
            "aud": audience,
            "sub": subject,
            "scope": " ".join(sorted(granted)),
            "iat": now,
            "nbf": now - 5,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(12),
        }
        if thumbprint is not None:
            claims["cnf"] = {"x5t#S256": thumbprint}
        kid, key = self.keys.active
        token = jwt.encode(claims, key, algorithm=_ALGORITHM, headers={"kid": kid})
        return token, TokenClaims(subject, granted, float(now + lifetime), thumbprint)

    def verify(self, token: str, thumbprint: str | None) -> TokenClaims:
        """The claims of a valid token presented over a connection with ``thumbprint``."""
        claims = self._cache.get(token)
        if claims is None:
            claims = self._decode(token, _AUDIENCE)
            self._cache[token] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if time.time() >= claims.expires_at:
            self._cache.pop(token, None)
            raise errors.Unauthenticated("the access token has expired; ask for a new one", reason="TOKEN_EXPIRED")
        if claims.thumbprint != thumbprint:
            raise errors.Unauthenticated(
                "the access token was issued to another client certificate", reason="TOKEN_CERTIFICATE_MISMATCH"
            )
        return claims

    def verify_console(self, token: str) -> TokenClaims:
        """The claims of a valid console login token (audience :data:`CONSOLE_AUDIENCE`, no certificate).

        Only the newest key verifies a console token: API tokens live minutes and their clients fetch
        new ones, so older keys keep verifying them through a rotation; a console session is a
        person's bearer token for hours, and rotating the keys (then restarting) is how an operator
        ends every one of them.
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            kid = None
        if kid is not None and kid != self.keys.active[0] and self.keys.public_key(kid) is not None:
            raise errors.Unauthenticated(
                "this console token was signed with a token key that has since been rotated: ask for a new one",
                reason="TOKEN_KEY_ROTATED",
            )
        try:
            claims = self._decode(token, CONSOLE_AUDIENCE)
        except errors.Unauthenticated as exc:
            if exc.reason == "TOKEN_INVALID" and _unverified_audience(token) == _AUDIENCE:
                raise errors.Unauthenticated(
                    "this is an API token (audience hutong), not a console login: ask for one made with "
                    "`hutong hub console-token`",
                    reason="TOKEN_AUDIENCE_MISMATCH",
                ) from None
            raise
        if claims.thumbprint is not None:
            raise errors.Unauthenticated("a console token is not bound to a certificate", reason="TOKEN_INVALID")
        return claims

    def _decode(self, token: str, audience: str) -> TokenClaims:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.public_key(kid) if isinstance(kid, str) else None
            if key is None:
                raise errors.Unauthenticated("the access token's key is unknown", reason="TOKEN_KEY_UNKNOWN")
            body = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                audience=audience,
                issuer=_ISSUER,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthenticated(
                "the access token has expired; ask for a new one", reason="TOKEN_EXPIRED"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise errors.Unauthenticated(f"the access token is invalid: {exc}", reason="TOKEN_INVALID") from None
        cnf = body.get("cnf")
        thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        return TokenClaims(
            str(body["sub"]),
            frozenset(str(body.get("scope", "")).split()),
            float(body["exp"]),
            thumbprint if isinstance(thumbprint, str) else None,
        )
