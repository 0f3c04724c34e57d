"""worker.toml: parsing, validation errors naming key and file, flag overrides."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from sleap_rtc.config import CONFIG_DIR_ENV
from sleap_rtc.config import worker as wc
from sleap_rtc.config.worker import WorkerConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "worker.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path


def test_example_file_parses_and_documents_every_setting(tmp_path: Path) -> None:
    settings = wc.parse(tomllib.loads(EXAMPLE.read_text()), EXAMPLE)
    assert settings.name == "gpu-box-1"
    assert settings.room == "lab"
    assert settings.signaling_url == "ws://lab-signal.example.org:8765"
    assert [m.label for m in settings.mounts] == ["lab-share", "scratch"]
    assert settings.mounts[0].path == Path("/mnt/lab-share")
    assert settings.concurrency == 1
    assert settings.trainer_command == ("sleap-nn", "train")
    assert settings.credential_file == Path("~/.config/sleap-rtc/lab.worker-key").expanduser()
    text = EXAMPLE.read_text()
    for name in wc.WorkerSettings.__dataclass_fields__:
        if name in ("source", "credential", "concurrency", "max_config_bytes", "trainer_command"):
            continue
        key = "mounts" if name == "mounts" else name
        assert key in text, f"{key} is not documented in {EXAMPLE.name}"


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(wc.CREDENTIAL_ENV, raising=False)
    settings = wc.load()
    assert settings.source is None
    assert settings.mounts == ()
    assert settings.concurrency == 1
    assert wc.default_path() == tmp_path / "worker.toml"


def test_default_file_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    write(tmp_path, f'room = "lab"\nmounts = ["{tmp_path}"]\n')
    settings = wc.load()
    assert settings.room == "lab"
    assert settings.source == tmp_path / "worker.toml"
    assert settings.mounts[0].path == tmp_path


def test_mount_strings_tables_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    path = write(
        tmp_path,
        '[[mounts]]\npath = "share"\nlabel = "lab"\n\n[[mounts]]\npath = "/abs/elsewhere"\n',
    )
    settings = wc.load(path)
    assert settings.mounts[0] == wc.Mount(tmp_path / "share", "lab")
    assert settings.mounts[1] == wc.Mount(Path("/abs/elsewhere"), "elsewhere")
    strings = write(tmp_path, 'mounts = ["lab=/data/lab", "/data/x"]\n')
    assert [(m.label, str(m.path)) for m in wc.load(strings).mounts] == [
        ("lab", "/data/lab"),
        ("x", "/data/x"),
    ]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('romo = "lab"\n', "romo", "unknown key"),
        ("room = 3\n", "room", "must be a string"),
        ('room = ""\n', "room", "must not be empty"),
        ("[limits]\nconcurrency = 0\n", "limits.concurrency", "at least 1"),
        ('[limits]\nconcurrency = "two"\n', "limits.concurrency", "must be an integer"),
        ("[limits]\nconcurency = 2\n", "limits.concurency", "unknown key"),
        ("[trainer]\ncommand = []\n", "trainer.command", "must name a program"),
        ("[trainer]\ncommand = [1]\n", "trainer.command", "list of strings"),
        ('signaling_url = "http://x"\n', "signaling_url", "ws://"),
        ("loopback = 1\n", "loopback", "true or false"),
        ('[[mounts]]\nlabel = "x"\n', "mounts[0].path", "is required"),
        ('[[mounts]]\npath = "/x"\nlabl = "x"\n', "mounts[0].labl", "unknown key"),
        ('credential = "secret"\n', "credential", "do not put the secret"),
        ("limits = 3\n", "limits", "must be a table"),
    ],
)
def test_validation_errors_name_the_key_and_the_file(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(WorkerConfigError) as info:
        wc.load(path)
    message = str(info.value)
    assert str(path) in message
    assert f": {key}: " in message
    assert words in message
    assert info.value.key == key


def test_bad_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'room = "lab"\nmounts = [\n\nname = "x"\n')
    with pytest.raises(WorkerConfigError) as info:
        wc.load(path)
    assert str(path) in str(info.value)
    assert "invalid TOML" in str(info.value)
    assert "line" in str(info.value)


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(WorkerConfigError, match="file not found"):
        wc.load(tmp_path / "nope.toml")


def test_flags_override_the_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = write(
        tmp_path,
        f'room = "lab"\nmounts = ["{tmp_path / "a"}"]\n[limits]\nconcurrency = 2\n'
        '[trainer]\ncommand = ["sleap-nn", "train"]\n',
    )
    settings = wc.with_overrides(
        wc.load(path),
        room="other",
        mounts=[f"b={tmp_path / 'b'}"],
        concurrency=None,
        trainer_command="python -m fake --flag 'a b'",
        signaling_url=None,
    )
    assert settings.room == "other"
    assert settings.mounts == (wc.Mount(tmp_path / "b", "b"),)
    assert settings.concurrency == 2  # None keeps the file's value
    assert settings.trainer_command == ("python", "-m", "fake", "--flag", "a b")
    with pytest.raises(WorkerConfigError, match="--concurrency"):
        wc.with_overrides(settings, concurrency=0)
    with pytest.raises(WorkerConfigError, match="--server"):
        wc.with_overrides(settings, signaling_url="http://nope")


def test_validate_checks_mounts_exist(tmp_path: Path) -> None:
    settings = wc.WorkerSettings(mounts=(wc.Mount(tmp_path / "missing", "m"),))
    with pytest.raises(WorkerConfigError, match="not an existing folder"):
        settings.validate()
    with pytest.raises(WorkerConfigError, match="at least one mount"):
        wc.WorkerSettings().validate()
    wc.WorkerSettings(mounts=(wc.Mount(tmp_path, "t"),)).validate()


def test_credential_from_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret-worker-key\n")
    path = write(tmp_path, 'credential_file = "key"\n')
    monkeypatch.delenv(wc.CREDENTIAL_ENV, raising=False)
    settings = wc.load(path)
    assert settings.read_credential() == "s3cret-worker-key"
    monkeypatch.setenv(wc.CREDENTIAL_ENV, "from-env-key")
    assert wc.load(path).read_credential() == "from-env-key"
    missing = wc.WorkerSettings(credential_file=tmp_path / "nope", source=path)
    with pytest.raises(WorkerConfigError, match="credential_file"):
        missing.read_credential()
    (tmp_path / "empty").write_text("")
    with pytest.raises(WorkerConfigError, match="is empty"):
        wc.WorkerSettings(credential_file=tmp_path / "empty").read_credential()


def test_example_is_a_copyable_template(tmp_path: Path) -> None:
    copy = tmp_path / "worker.toml"
    shutil.copy(EXAMPLE, copy)
    assert wc.load(copy).source == copy


def test_worker_config_error_is_its_own_kind_of_config_file_error(tmp_path: Path) -> None:
    from sleap_rtc.config import ConfigFileError
    from sleap_rtc.config.client import ClientConfigError

    with pytest.raises(WorkerConfigError) as info:
        wc.load(write(tmp_path, '[limits]\nconcurrency = "many"\n'))
    assert isinstance(info.value, ConfigFileError)
    assert not isinstance(info.value, ClientConfigError)
    assert "limits.concurrency" in str(info.value)
    with pytest.raises(WorkerConfigError, match="invalid TOML"):
        wc.load(write(tmp_path, "room = \n"))


def test_example_slurm_table_parses_to_its_settings() -> None:
    settings = wc.parse(tomllib.loads(EXAMPLE.read_text()), EXAMPLE)
    assert settings.backend == "local"
    assert settings.slurm.partition == "gpu"
    assert settings.slurm.gres == "gpu:1"
    assert settings.slurm.extra_sbatch == ("--constraint=cuda12",)
    assert settings.slurm.listen == "0.0.0.0:5570"
    assert settings.slurm.poll_s == 5.0


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ('[trainer]\nbackend = "k8s"', "trainer.backend", "local, slurm"),
        ('[slurm]\npartition = "gpu\\n#SBATCH --uid=0"', "slurm.partition", "one word"),
        ('[slurm]\nextra_sbatch = ["x"]', "slurm.extra_sbatch[0]", "one sbatch option"),
        ('[slurm]\nextra_sbatch = ["--a\\n--b"]', "slurm.extra_sbatch[0]", "one sbatch option"),
        ('[slurm]\nsetup = ["ok", "a\\nb"]', "slurm.setup[1]", "one line"),
        ('[slurm]\nlisten = "5570"', "slurm.listen", "host:port"),
        ('[slurm]\nworker_address = "head:99999"', "slurm.worker_address", "host:port"),
        ("[slurm]\npoll_s = 0", "slurm.poll_s", "positive"),
        ("[slurm]\ncpus_per_task = -1", "slurm.cpus_per_task", "at least 0"),
        ('[slurm]\nparttion = "gpu"', "slurm.parttion", "unknown key"),
    ],
)
def test_bad_slurm_settings_name_the_key(tmp_path: Path, table: str, key: str, words: str) -> None:
    path = write(tmp_path, f'mounts = ["{tmp_path}"]\n{table}\n')
    with pytest.raises(WorkerConfigError) as info:
        wc.load(path)
    assert key in str(info.value)
    assert words in str(info.value)
