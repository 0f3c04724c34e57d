"""JWTs for sleap-rtc: issued by the signaling server, verified by everyone else.

Tokens are EdDSA (Ed25519) JWTs. Verification always checks the signature
against known public keys (never ``alg: none``, never an HMAC with a public
key), the expiry with a small leeway, the audience, the issuer and, where a
room is given, the room claim. Workers verify clients' tokens themselves; they
do not take the signaling server's word.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: Audience of tokens that let a client talk to workers.
AUDIENCE = "sleap-rtc"
#: Default issuer name (the embedded signaling server).
ISSUER = "sleap-rtc-signal"
ALGORITHM = "EdDSA"
#: The one expiry leeway every check uses (the worker's and the signaling server's
#: verifiers, the client's stored-token checks, ``login --token-file``): a token is
#: expired from its ``exp`` on, so no command accepts a token another refuses.
DEFAULT_LEEWAY_S = 0.0
#: Seconds a token's ``iat``/``nbf`` may lie in the future (the issuer's clock ahead).
NOT_BEFORE_SKEW_S = 30.0
DEFAULT_TTL_S = 12 * 3600


class TokenError(Exception):
    """A token that cannot be used; ``reason`` is a stable short code.

    Reasons: missing, malformed, unsupported_alg, unknown_key, bad_signature,
    expired, not_yet_valid, wrong_audience, wrong_issuer, wrong_room.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Claims:
    """The verified content of a token."""

    subject: str
    room: str
    audience: str
    issuer: str
    issued_at: float
    expires_at: float
    token_id: str


def redact(token: str) -> str:
    """A loggable stand-in for a token: its shape, never its signature."""
    if not token:
        return "<no token>"
    return f"<jwt …{len(token)} chars>"


class TokenIssuer:
    """Signs tokens with an Ed25519 key pair and publishes the public key as a JWKS."""

    def __init__(
        self, private_key: Ed25519PrivateKey, *, issuer: str = ISSUER, key_id: str = ""
    ) -> None:
        self._key = private_key
        self.issuer = issuer
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id or raw.hex()[:16]

    @classmethod
    def generate(cls, *, issuer: str = ISSUER) -> TokenIssuer:
        return cls(Ed25519PrivateKey.generate(), issuer=issuer)

    @classmethod
    def load_or_create(cls, path: Path, *, issuer: str = ISSUER) -> TokenIssuer:
        """Load the private key at ``path`` (PEM), creating it with mode 0600 if absent."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} does not hold an Ed25519 private key")
            return cls(key, issuer=issuer)
        issuer_obj = cls.generate(issuer=issuer)
        pem = issuer_obj._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(path, pem)
        return issuer_obj

    def issue(
        self,
        subject: str,
        room: str,
        *,
        audience: str = AUDIENCE,
        ttl_s: float = DEFAULT_TTL_S,
        now: float | None = None,
    ) -> str:
        """A signed token for ``subject`` in ``room``."""
        issued = time.time() if now is None else now
        payload = {
            "sub": subject,
            "room": room,
            "aud": audience,
            "iss": self.issuer,
            "iat": int(issued),
            "nbf": int(issued),
            "exp": int(issued + ttl_s),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id})

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def jwks(self) -> dict[str, Any]:
        """The public key as a JSON Web Key Set."""
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.public_key()))
        jwk.update({"kid": self.key_id, "alg": ALGORITHM, "use": "sig"})
        return {"keys": [jwk]}


class TokenVerifier:
    """Verifies tokens against a set of public keys (by ``kid``)."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey],
        *,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        leeway_s: float = DEFAULT_LEEWAY_S,
        skew_s: float = NOT_BEFORE_SKEW_S,
        max_lifetime_s: float | None = None,
    ) -> None:
        """``max_lifetime_s``: refuse validly signed tokens whose ``exp - iat`` exceeds
        it (an operator limit; None accepts any lifetime)."""
        if not keys:
            raise ValueError("a TokenVerifier needs at least one public key")
        self._keys = dict(keys)
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.skew_s = skew_s
        self.max_lifetime_s = max_lifetime_s

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any], **kwargs: Any) -> TokenVerifier:
        keys: dict[str, Ed25519PublicKey] = {}
        entries: Sequence[Mapping[str, Any]] = jwks.get("keys", [])
        for entry in entries:
            key = jwt.algorithms.OKPAlgorithm.from_jwk(dict(entry))
            if isinstance(key, Ed25519PublicKey):
                keys[str(entry.get("kid", ""))] = key
        return cls(keys, **kwargs)

    @classmethod
    def for_issuer(cls, source: TokenIssuer, /, **kwargs: Any) -> TokenVerifier:
        """A verifier for the tokens of ``source`` (same process, e.g. tests and the demo)."""
        kwargs.setdefault("issuer", source.issuer)
        return cls({source.key_id: source.public_key()}, **kwargs)

    def verify(self, token: str, *, room: str | None = None, now: float | None = None) -> Claims:
        """Check signature, algorithm, expiry (with leeway), audience, issuer and room.

        Raises:
            TokenError: with a reason code and a message naming the problem.
        """
        if not token:
            raise TokenError("missing", "no token was presented")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise TokenError("malformed", f"token is not a JWT: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise TokenError(
                "unsupported_alg", f"token algorithm {header.get('alg')!r} is not accepted"
            )
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            if len(self._keys) != 1 or "kid" in header:
                raise TokenError("unknown_key", "token was signed by an unknown key")
            key = next(iter(self._keys.values()))
        options: Any = {"require": ["exp", "iat", "sub", "aud", "iss"]}
        try:
            payload = self._decode_at(token, key, time.time() if now is None else now, options)
        except jwt.ExpiredSignatureError:
            raise TokenError("expired", "token has expired; log in again") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("not_yet_valid", "token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenError(
                "wrong_audience", f"token is not for audience {self.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenError("wrong_issuer", f"token was not issued by {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature", "token signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError("malformed", f"token is invalid: {exc}") from None
        claims = Claims(
            subject=str(payload["sub"]),
            room=str(payload.get("room", "")),
            audience=self.audience,
            issuer=str(payload["iss"]),
            issued_at=float(payload["iat"]),
            expires_at=float(payload["exp"]),
            token_id=str(payload.get("jti", "")),
        )
        lifetime = claims.expires_at - claims.issued_at
        if self.max_lifetime_s is not None and lifetime > self.max_lifetime_s:
            raise TokenError(
                "lifetime_too_long",
                f"token lives {lifetime / 3600:.4g} h, longer than this verifier's limit of "
                f"{self.max_lifetime_s / 3600:.4g} h; log in again for a shorter token",
            )
        if room is not None and claims.room != room:
            raise TokenError("wrong_room", f"token is for room {claims.room!r}, not {room!r}")
        return claims

    def _decode_at(
        self, token: str, key: Ed25519PublicKey, now: float, options: Any
    ) -> dict[str, Any]:
        """Decode with an explicit clock (pyjwt reads time itself, so times are checked
        here): expired from ``exp + leeway_s`` on; ``iat``/``nbf`` up to ``skew_s`` ahead."""
        relaxed: Any = {**options, "verify_exp": False, "verify_nbf": False, "verify_iat": False}
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=self.audience,
            issuer=self.issuer,
            options=relaxed,
        )
        if float(payload["exp"]) + self.leeway_s <= now:
            raise jwt.ExpiredSignatureError()
        if float(payload.get("nbf", payload["iat"])) - self.skew_s > now:
            raise jwt.ImmatureSignatureError()
        return payload


def jwks_fingerprint(jwks: Mapping[str, Any]) -> str:
    """A short, stable fingerprint of a JWKS's Ed25519 keys (``SHA256:<hex>``): the
    sorted (kid, x) pairs, so key order and extra fields do not change it."""
    import hashlib

    entries: Sequence[Mapping[str, Any]] = jwks.get("keys", [])
    pairs = sorted((str(e.get("kid", "")), str(e.get("x", ""))) for e in entries)
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
    return f"SHA256:{digest[:32]}"


def unverified_expiry(token: str) -> float | None:
    """The ``exp`` claim read without verification (for 'log in again soon' hints only)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.InvalidTokenError:
        return None
    return float(exp) if isinstance(exp, int | float) else None


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
