"""``[trainer] confinement`` and ``allow_reporting`` in worker.toml; unknown keys stay refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleap_rtc.config.worker import WorkerConfigError, parse


def test_defaults_confine_when_possible_and_keep_reporting_off() -> None:
    settings = parse({}, None)
    assert settings.confinement == "auto" and settings.allow_reporting is False


def test_values_are_read_and_checked() -> None:
    settings = parse({"trainer": {"confinement": "require", "allow_reporting": True}}, None)
    assert settings.confinement == "require" and settings.allow_reporting is True
    with pytest.raises(WorkerConfigError, match="confinement"):
        parse({"trainer": {"confinement": "sometimes"}}, None)
    with pytest.raises(WorkerConfigError, match="allow_reporting"):
        parse({"trainer": {"allow_reporting": "yes"}}, None)
    with pytest.raises(WorkerConfigError, match="landlock"):
        parse({"trainer": {"landlock": True}}, None)


def test_the_worker_says_how_trainers_are_confined_at_start_up(tmp_path: Path) -> None:
    """Before it registers: the line comes even when signaling is unreachable."""
    import asyncio

    from sleap_rtc.config.worker import Mount, WorkerSettings
    from sleap_rtc.worker.confine import probe
    from sleap_rtc.worker.runtime import WorkerRuntimeError, run_worker, worker_metadata

    (tmp_path / "mnt").mkdir()
    settings = WorkerSettings(
        name="w",
        signaling_url="ws://127.0.0.1:9",
        mounts=(Mount(tmp_path / "mnt", "mnt"),),
        state_dir=tmp_path / "state",
        jwks_file=None,
    )
    said: list[str] = []
    with pytest.raises(WorkerRuntimeError):
        asyncio.run(run_worker(settings, "secret", say=said.append, stop=asyncio.Event()))
    line = next(s for s in said if s.startswith("trainer confinement: "))
    found = probe()
    assert (found.describe() in line) if found.available else ("NOT confined" in line)
    meta = worker_metadata(settings, confinement=line.removeprefix("trainer confinement: "))
    assert meta["properties"]["confinement"] == line.removeprefix("trainer confinement: ")
