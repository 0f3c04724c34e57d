"""worker/runtime.py: the room's signing keys are pinned on first use; a change is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sleap_rtc.auth.tokens import TokenError, TokenIssuer, jwks_fingerprint
from sleap_rtc.worker.runtime import _Keys


def test_first_use_pins_prints_and_a_later_change_is_refused(tmp_path: Path) -> None:
    room_keys = TokenIssuer.generate()
    said: list[str] = []
    keys = _Keys("lab", tmp_path / "jwks.json", say=said.append)
    assert keys.update(room_keys.jwks())
    assert jwks_fingerprint(room_keys.jwks()) in said[-1] and "pinned" in said[-1]
    assert json.loads((tmp_path / "jwks.json").read_text()) == room_keys.jwks()
    token = room_keys.issue("ann", "lab")
    assert keys.verify(token).subject == "ann"

    # A man in the middle of plain ws:// hands out his own keys: refused.
    intruder = TokenIssuer.generate()
    assert not keys.update(intruder.jwks())
    assert "REFUSED" in said[-1] and "delete" in said[-1]
    with pytest.raises(TokenError):
        keys.verify(intruder.issue("mallory", "lab"))
    assert keys.verify(token).subject == "ann"  # the pinned keys still work
    assert json.loads((tmp_path / "jwks.json").read_text()) == room_keys.jwks()

    # After a restart the pin is read back, and the change is still refused.
    again = _Keys("lab", tmp_path / "jwks.json", say=said.append)
    again.load_cache()
    assert not again.update(intruder.jwks())
    assert again.verify(token).subject == "ann"

    # The documented rotation: delete the pin, start again.
    (tmp_path / "jwks.json").unlink()
    rotated = _Keys("lab", tmp_path / "jwks.json", say=said.append)
    rotated.load_cache()
    assert rotated.update(intruder.jwks())
    assert rotated.verify(intruder.issue("ann", "lab")).subject == "ann"


def test_the_worker_refuses_tokens_past_its_lifetime_limit(tmp_path: Path) -> None:
    room_keys = TokenIssuer.generate()
    keys = _Keys("lab", tmp_path / "jwks.json", max_lifetime_s=24 * 3600.0)
    keys.update(room_keys.jwks())
    with pytest.raises(TokenError) as info:
        keys.verify(room_keys.issue("ann", "lab", ttl_s=100 * 365 * 86400))
    assert info.value.reason == "lifetime_too_long"
    assert keys.verify(room_keys.issue("ann", "lab", ttl_s=3600)).subject == "ann"
