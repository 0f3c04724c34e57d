"""Tests for sleap_rtc.auth.tokens: issue, verify, and every way a token is refused."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc.auth.tokens import (
    AUDIENCE,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    redact,
    unverified_expiry,
    write_private,
)


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer.generate()


@pytest.fixture(scope="module")
def verifier(issuer: TokenIssuer) -> TokenVerifier:
    return TokenVerifier.from_jwks(issuer.jwks(), issuer=issuer.issuer)


def reason_of(verifier: TokenVerifier, token: str, **kwargs: object) -> str:
    with pytest.raises(TokenError) as info:
        verifier.verify(token, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def test_issued_token_verifies_with_its_claims(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.issue("alice", "lab", ttl_s=60)
    claims = verifier.verify(token, room="lab")
    assert (claims.subject, claims.room, claims.audience) == ("alice", "lab", AUDIENCE)
    assert claims.expires_at - claims.issued_at == 60
    assert claims.token_id


def test_expired_token_is_refused_but_leeway_is_honoured(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    now = time.time()
    token = issuer.issue("alice", "lab", ttl_s=100, now=now)
    assert verifier.verify(token, now=now + 100 + verifier.leeway_s - 1).subject == "alice"
    assert reason_of(verifier, token, now=now + 100 + verifier.leeway_s + 1) == "expired"
    assert reason_of(verifier, issuer.issue("alice", "lab", ttl_s=-120)) == "expired"


def test_token_from_the_future_is_not_yet_valid(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.issue("alice", "lab", now=time.time() + 3600)
    assert reason_of(verifier, token, now=time.time()) == "not_yet_valid"


def test_wrong_room_audience_and_issuer_are_refused(issuer: TokenIssuer) -> None:
    verifier = TokenVerifier.for_issuer(issuer)
    assert reason_of(verifier, issuer.issue("a", "lab"), room="other") == "wrong_room"
    assert reason_of(verifier, issuer.issue("a", "lab", audience="elsewhere")) == "wrong_audience"
    stranger = TokenVerifier.for_issuer(issuer, issuer="someone-else")
    assert reason_of(stranger, issuer.issue("a", "lab")) == "wrong_issuer"


def test_forged_tokens_are_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    other = TokenIssuer.generate()
    assert reason_of(verifier, other.issue("mallory", "lab")) == "unknown_key"
    # Same key id as the real issuer, signed with another key.
    impostor = TokenIssuer(other._key, key_id=issuer.key_id)
    assert reason_of(verifier, impostor.issue("mallory", "lab")) == "bad_signature"
    unsigned = jwt.encode({"sub": "mallory", "aud": AUDIENCE}, None, algorithm="none")
    assert reason_of(verifier, unsigned) == "unsupported_alg"
    hmac = jwt.encode({"sub": "mallory"}, "secret-key-of-at-least-32-bytes!!", algorithm="HS256")
    assert reason_of(verifier, hmac) == "unsupported_alg"


def test_tampered_payload_fails_the_signature(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    header, payload, signature = issuer.issue("alice", "lab").split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"lab"', b'"adm"')
    ).decode()
    assert reason_of(verifier, f"{header}.{forged_payload}.{signature}") == "bad_signature"


def test_missing_and_malformed_tokens(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, "") == "missing"
    assert reason_of(verifier, "not a jwt") == "malformed"


@settings(max_examples=2 * settings.default.max_examples, deadline=None)
@given(st.text(max_size=300))
def test_garbage_only_ever_raises_token_error(verifier: TokenVerifier, text: str) -> None:
    with pytest.raises(TokenError):
        verifier.verify(text)


def test_key_file_is_private_and_reloads_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "state" / "signing_key.pem"
    first = TokenIssuer.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = TokenIssuer.load_or_create(path)
    assert first.key_id == second.key_id
    TokenVerifier.for_issuer(second).verify(first.issue("alice", "lab"))


def test_write_private_replaces_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [path]


def test_redact_and_unverified_expiry(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice", "lab", ttl_s=50, now=1000.0)
    assert token not in redact(token)
    assert redact("") == "<no token>"
    assert unverified_expiry(token) == 1050.0
    assert unverified_expiry("garbage") is None


# --- one expiry leeway everywhere; an operator limit on token lifetime --------------------


def test_one_expiry_leeway_for_every_check(issuer: TokenIssuer) -> None:
    """A token that expired seconds ago is refused by the verifier (worker, signaling,
    login --token-file) and by the client's stored-token check alike."""
    from sleap_rtc.auth.tokens import DEFAULT_LEEWAY_S
    from sleap_rtc.client.auth import AuthCheck

    now = time.time()
    token = issuer.issue("alice", "lab", ttl_s=60, now=now - 65)  # expired 5 s ago
    verifier = TokenVerifier.from_jwks(issuer.jwks(), issuer=issuer.issuer)
    assert verifier.leeway_s == DEFAULT_LEEWAY_S == AuthCheck.leeway_s
    assert reason_of(verifier, token) == "expired"
    check = AuthCheck(get_token=lambda: token, login=lambda: None)
    assert check._problem(token) is not None
    fresh = issuer.issue("alice", "lab", ttl_s=60)
    assert verifier.verify(fresh).subject == "alice" and check._problem(fresh) is None
    # a token issued by a server whose clock runs a little ahead is still fine
    ahead = issuer.issue("alice", "lab", ttl_s=60, now=now + 10)
    assert verifier.verify(ahead).subject == "alice"


def test_tokens_living_longer_than_the_limit_are_refused(issuer: TokenIssuer) -> None:
    limited = TokenVerifier.from_jwks(
        issuer.jwks(), issuer=issuer.issuer, max_lifetime_s=7 * 24 * 3600
    )
    century = issuer.issue("alice", "lab", ttl_s=100 * 365 * 86400)
    with pytest.raises(TokenError) as info:
        limited.verify(century)
    assert info.value.reason == "lifetime_too_long"
    assert "longer than this verifier's limit of 168 h" in info.value.message
    assert limited.verify(issuer.issue("alice", "lab", ttl_s=12 * 3600)).subject == "alice"
    unlimited = TokenVerifier.from_jwks(issuer.jwks(), issuer=issuer.issuer)
    assert unlimited.verify(century).subject == "alice"


def test_jwks_fingerprint_is_stable_and_tells_keys_apart(issuer: TokenIssuer) -> None:
    from sleap_rtc.auth.tokens import jwks_fingerprint

    jwks = issuer.jwks()
    shuffled = {"keys": [dict(reversed(list(k.items()))) for k in jwks["keys"]], "extra": 1}
    assert jwks_fingerprint(jwks) == jwks_fingerprint(shuffled)
    assert jwks_fingerprint(jwks).startswith("SHA256:")
    assert jwks_fingerprint(jwks) != jwks_fingerprint(TokenIssuer.generate().jwks())
