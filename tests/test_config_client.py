"""client.toml: parsing, validation errors naming key and file, flag overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleap_rtc.config import CONFIG_DIR_ENV, STATE_DIR_ENV
from sleap_rtc.config import client as cc
from sleap_rtc.config.client import ClientConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(text)
    return path


def test_defaults_and_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "cfg"))
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    settings = cc.load()
    assert settings.source is None
    assert settings.server.startswith("ws://127.0.0.1:")
    assert settings.mappings_file == tmp_path / "state" / "mappings.json"
    assert cc.default_path() == tmp_path / "cfg" / "client.toml"


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'server = "wss://signal.lab.org"\nroom = "lab"\nworker = "gpu-1"\n'
        'mappings_file = "maps.json"\ntoken_file = "~/tok"\n'
        "connect_timeout_s = 7\nloopback = true\n",
    )
    settings = cc.load(path)
    assert settings.server == "wss://signal.lab.org"
    assert settings.room == "lab"
    assert settings.worker == "gpu-1"
    assert settings.mappings_file == tmp_path / "maps.json"
    assert settings.token_file == Path("~/tok").expanduser()
    assert settings.connect_timeout_s == 7.0
    assert settings.loopback is True


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('sever = "ws://x"\n', "sever", "unknown key"),
        ('server = "http://x"\n', "server", "ws://"),
        ("connect_timeout_s = 0\n", "connect_timeout_s", "positive number"),
        ('connect_timeout_s = "5"\n', "connect_timeout_s", "positive number"),
        ("worker = 5\n", "worker", "must be a string"),
        ('mappings_file = ""\n', "mappings_file", "must not be empty"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ClientConfigError) as info:
        cc.load(path)
    assert str(path) in str(info.value)
    assert f": {key}: " in str(info.value)
    assert words in str(info.value)


def test_flags_override(tmp_path: Path) -> None:
    path = write(tmp_path, 'server = "ws://a:1"\nroom = "lab"\n')
    settings = cc.with_overrides(cc.load(path), server=None, room="other", worker="w")
    assert settings.server == "ws://a:1"
    assert settings.room == "other"
    assert settings.worker == "w"
    with pytest.raises(ClientConfigError, match="--server"):
        cc.with_overrides(settings, server="nope")


def test_client_config_error_is_its_own_kind_of_config_file_error(tmp_path: Path) -> None:
    from sleap_rtc.config import ConfigFileError
    from sleap_rtc.config.worker import WorkerConfigError

    with pytest.raises(ClientConfigError) as info:
        cc.load(write(tmp_path, "[nested]\nkey = 1\n"))
    assert isinstance(info.value, ConfigFileError)
    assert not isinstance(info.value, WorkerConfigError)
    with pytest.raises(ClientConfigError, match="invalid TOML"):
        cc.load(write(tmp_path, "server = \n"))
