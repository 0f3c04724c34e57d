"""Token storage: 0600 files, per-server records, headless env/file sources."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs
import pytest

from sleap_rtc.auth.store import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TokenStore,
    normalize_server,
    read_token_file,
    resolve_token,
    write_token_file,
)
from sleap_rtc.auth.tokens import TokenIssuer


@pytest.fixture
def token() -> str:
    return TokenIssuer.generate().issue("alice", "lab")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_is_private_and_per_server(tmp_path: Path, token: str) -> None:
    store = TokenStore(tmp_path / "cfg" / "tokens.json")
    rec = store.save(token, server="ws://127.0.0.1:8765/", room="lab", subject="alice")
    assert mode(store.path) == 0o600
    assert rec.expires_at is not None and rec.server == "ws://127.0.0.1:8765"
    store.save("other-token", server="wss://hosted.example", room="x")
    assert mode(store.path) == 0o600
    assert store.load("http://127.0.0.1:8765") == rec  # same server, other spelling
    other = store.load("wss://hosted.example")
    assert other is not None and other.token == "other-token"
    assert store.load("ws://unknown:1") is None
    assert store.remove("wss://hosted.example") and not store.remove("wss://hosted.example")
    last = store.load()
    assert last is not None and last.token == token


def test_default_location_is_the_user_config_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(platformdirs, "user_config_dir", lambda *a, **k: str(tmp_path / "u"))
    assert TokenStore().path == tmp_path / "u" / "tokens.json"


def test_resolve_order(tmp_path: Path, token: str) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    assert resolve_token(env={}, store=store) is None
    store.save(token, server="ws://s:1", room="lab")
    assert resolve_token(env={}, store=store, server="ws://s:1") == token
    tf = tmp_path / "tok"
    write_token_file(tf, "from-file-env")
    assert mode(tf) == 0o600
    assert resolve_token(env={TOKEN_FILE_ENV: str(tf)}, store=store) == "from-file-env"
    env = {TOKEN_ENV: " from-env \n", TOKEN_FILE_ENV: str(tf)}
    assert resolve_token(env=env, store=store) == "from-env"
    explicit = tmp_path / "explicit"
    write_token_file(explicit, "explicit-token")
    assert resolve_token(token_file=explicit, env=env, store=store) == "explicit-token"


def test_env_var_from_the_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(TOKEN_ENV, "process-env-token")
    assert resolve_token(store=TokenStore(tmp_path / "none.json")) == "process-env-token"


def test_token_file_formats(tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture) -> None:
    bare = tmp_path / "bare"
    bare.write_text(f"\n  {token}\n")
    os.chmod(bare, 0o644)
    assert read_token_file(bare) == token
    assert "readable by other users" in caplog.text
    record = tmp_path / "record.json"
    record.write_text('{"token": "abc", "room": "lab"}')
    assert read_token_file(record) == "abc"
    for bad in ("", "{not json", '{"no": "token"}'):
        p = tmp_path / "bad"
        p.write_text(bad)
        with pytest.raises(ValueError):
            read_token_file(p)


def test_corrupt_store_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{{{")
    assert TokenStore(path).load() is None


def test_normalize_server() -> None:
    assert normalize_server("https://a.example/") == "wss://a.example"
    assert normalize_server(" ws://h:1 ") == "ws://h:1"
