"""The trainer's launcher: what a confined trainer process can and cannot open.

Each test starts a real process through :class:`LaunchPolicy` and
:class:`TrainerRun` (the worker's own launch path) and watches the stand-in
trainer (``tests/support/peek_trainer.py``) report each open it tried.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq.asyncio

from sleap_rtc.worker import confine, launcher
from sleap_rtc.worker.launcher import REFUSED, LaunchPolicy, Mode, check_manifest
from sleap_rtc.worker.trainer import RunLimits, TrainerRun
from sleap_rtc.worker.trainplan import TrainPlan
from sleap_rtc.worker.zmqprogress import ProgressUpdate

PEEK = Path(__file__).parent / "support" / "peek_trainer.py"
AVAILABLE = confine.probe()
needs_landlock = pytest.mark.skipif(
    not AVAILABLE.network, reason=f"needs Landlock with TCP rules: {AVAILABLE.describe()}"
)


class Sink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def progress(self, update: ProgressUpdate) -> None:
        pass

    def log(self, stream: int, lines: list[str]) -> None:
        self.lines.extend(lines)


def peeks(lines: list[str]) -> dict[str, str]:
    """``"read /x" -> "ok" | "EACCES" ...`` from the stand-in's report."""
    out = {}
    for line in lines:
        if line.startswith("PEEK ") and line.count(" ") >= 3:
            what, target, result = line[5:].split(" ", 2)
            out[f"{what} {target}"] = result
    return out


def run_peek(
    tmp: Path, peek: dict[str, Any], *, mode: Mode = Mode.AUTO, manifest: tuple[Any, ...] = ()
) -> tuple[dict[str, str], list[str], Any]:
    mnt = tmp / "mnt"
    run_dir = mnt / "runs" / "r1"
    run_dir.mkdir(parents=True, exist_ok=True)
    state = tmp / "state"
    (state / "configs").mkdir(parents=True, exist_ok=True)
    config = state / "configs" / "job-r1.yaml"
    config.write_text(yaml.safe_dump({"peek": peek}))
    plan = TrainPlan(
        config_file=config,
        labels_path=str(mnt / "labels.slp"),
        ckpt_dir=mnt / "runs",
        run_name="r1",
        manifest=manifest,
    )
    policy = LaunchPolicy(
        mode=mode,
        availability=AVAILABLE,
        temp_root=state / "trainer-tmp",
        mounts=(str(mnt),),
        extra_env={"OPERATOR_SETTING": "kept"},
    )
    sink = Sink()

    async def main() -> Any:
        ctx = zmq.asyncio.Context()
        try:
            run = TrainerRun(
                (sys.executable, str(PEEK), "train"),
                plan,
                sink,
                context=ctx,
                limits=RunLimits(no_progress_timeout_s=60, max_run_s=120, log_flush_s=0.05),
                sandbox=policy,
            )
            return await run.run()
        finally:
            ctx.term()

    result = asyncio.run(main())
    assert not list((state / "trainer-tmp").iterdir())  # the private temp is gone
    return peeks(sink.lines), sink.lines, result


@pytest.fixture
def world(tmp_path: Path) -> Path:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "inside.txt").write_text("inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("OUTSIDE-CONTENT")
    (tmp_path / "mnt" / "link_out").symlink_to(tmp_path / "outside" / "secret.txt")
    return tmp_path


@needs_landlock
def test_confined_trainer_reads_mounts_and_nothing_outside(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_SECRET", "do-not-leak")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    other_port = listener.getsockname()[1]
    unix_path = str(world / "outside" / "s.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen(1)
    try:
        seen, lines, _ = run_peek(
            world,
            {
                "read": [
                    str(world / "mnt" / "inside.txt"),
                    str(world / "outside" / "secret.txt"),
                    str(world / "mnt" / "link_out"),
                    "/etc/shadow",
                    str(Path.home() / ".bashrc"),
                ],
                "write": [
                    str(world / "mnt" / "runs" / "r1" / "out.txt"),
                    str(world / "mnt" / "elsewhere.txt"),
                    str(world / "outside" / "new.txt"),
                ],
                "connect": [other_port],
                "unix": [unix_path],
                "udp": [other_port],
                "listen": [1],
                "env": ["WORKER_SECRET", "OPERATOR_SETTING", "WANDB_MODE"],
            },
        )
    finally:
        listener.close()
        unix.close()
    assert any("confined by Landlock ABI" in line for line in lines), lines
    assert seen[f"read {world / 'mnt' / 'inside.txt'}"] == "ok"
    assert seen[f"read {world / 'outside' / 'secret.txt'}"] == "EACCES"
    assert seen[f"read {world / 'mnt' / 'link_out'}"] == "EACCES"  # a link out of the mount
    assert seen["read /etc/shadow"] == "EACCES"
    assert seen[f"write {world / 'mnt' / 'runs' / 'r1' / 'out.txt'}"] == "ok"
    assert seen[f"write {world / 'mnt' / 'elsewhere.txt'}"] == "EACCES"  # mounts are read-only
    assert seen[f"write {world / 'outside' / 'new.txt'}"] == "EACCES"
    assert seen[f"connect {other_port}"] == "EACCES"  # only its own progress ports
    if confine.socket_filter_supported():  # the second layer: what Landlock ABI 7 leaves open
        assert seen[f"unix {unix_path}"] == "EACCES"
        assert seen[f"udp {other_port}"] == "EACCES"
        assert seen["listen 1"] == "EACCES"
    assert seen["env WORKER_SECRET"] == "<unset>"  # a scrubbed environment
    assert seen["env OPERATOR_SETTING"] == "kept"
    assert seen["env WANDB_MODE"] == "disabled"
    assert not (world / "outside" / "new.txt").exists()
    assert not any("OUTSIDE-CONTENT" in line for line in lines)


def test_unconfined_run_shows_what_the_stand_in_could_reach(world: Path) -> None:
    """The control for the test above: without confinement the same reads succeed."""
    seen, lines, _ = run_peek(
        world, {"read": [str(world / "outside" / "secret.txt")]}, mode=Mode.OFF
    )
    assert seen[f"read {world / 'outside' / 'secret.txt'}"] == "ok"
    assert any("confinement off" in line for line in lines)


@needs_landlock
def test_a_file_swapped_after_intake_is_refused_at_launch(world: Path) -> None:
    target = world / "mnt" / "inside.txt"
    st = os.stat(target)
    manifest = ((str(target), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),)
    seen, _, result = run_peek(world, {"read": [str(target)]}, manifest=manifest)
    assert seen[f"read {target}"] == "ok"
    copy = world / "mnt" / "copy.txt"
    copy.write_text("inside")
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(copy, target)  # same size, same mtime, another inode
    seen, _, result = run_peek(world, {"read": [str(target)]}, manifest=manifest)
    assert seen == {}  # the trainer never ran
    assert result.exit_code == REFUSED and "changed since the path check" in result.message


def test_check_manifest_refuses_links_and_changes(tmp_path: Path) -> None:
    real = tmp_path / "a.h5"
    real.write_text("x")
    st = os.stat(real)
    entry = (str(real), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    assert check_manifest([entry]) is None
    real.write_text("xy")
    assert "changed" in (check_manifest([entry]) or "")
    (tmp_path / "link").symlink_to(real)
    st = os.stat(real)
    linked = (str(tmp_path / "link"), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    assert "link" in (check_manifest([linked]) or "")
    assert "cannot be examined" in (check_manifest([(str(tmp_path / "gone"), 0, 0, 0, 0)]) or "")


def test_required_confinement_without_landlock_refuses_to_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "launch.json"
    spec.write_text('{"require": true, "paths": [], "ports": [], "manifest": []}')
    monkeypatch.setattr(confine, "probe", lambda: confine.Availability(0, "ENOSYS (test)"))
    assert launcher.main([str(spec), "--", "/bin/true"]) == REFUSED
    assert "confinement required" in capsys.readouterr().err


def test_service_refuses_to_start_when_confinement_is_required_but_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sleap_rtc.worker import service

    (tmp_path / "mnt").mkdir()
    monkeypatch.setattr(service, "probe_confinement", lambda: confine.Availability(0, "no"))
    config = service.WorkerConfig(
        mounts=[tmp_path / "mnt"], state_dir=tmp_path / "state", verifier=None,
        build_index=False, confinement="require",
    )  # fmt: skip
    with pytest.raises(launcher.ConfinementRequired, match="requires confinement"):
        service.WorkerService(config)
    monkeypatch.setattr(service, "probe_confinement", lambda: confine.Availability(3))
    with pytest.raises(launcher.ConfinementRequired, match="ABI < 4"):
        service.WorkerService(config)
    config.confinement = "auto"
    assert service.WorkerService(config).sandbox.mode is Mode.AUTO  # auto runs, and says so


def test_hydra_gets_a_config_folder_holding_only_the_jobs_config(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    for name in ("job-a.yaml", "job-b.yaml"):
        (tmp_path / "configs" / name).write_text("model_config: {}\n")
    policy = LaunchPolicy(
        mode=Mode.AUTO,
        availability=AVAILABLE,
        temp_root=tmp_path / "tmp",
        mounts=(str(tmp_path),),
    )
    argv = ["sleap-nn", "train", "--config", str(tmp_path / "configs" / "job-a.yaml"), "x=1"]
    config = tmp_path / "configs" / "job-a.yaml"
    launch = policy.prepare(
        ("sleap-nn", "train"), argv, run_dir=tmp_path, config_file=config,
        publish_port=1, controller_port=2,
    )  # fmt: skip
    try:
        given = Path(launch.argv[launch.argv.index("--config") + 1])
        assert sorted(p.name for p in given.parent.iterdir()) == ["job-a.yaml"]
        assert given.is_relative_to(launch.temp_dir)
        assert launch.env["HOME"].startswith(str(launch.temp_dir))
        if AVAILABLE.available:
            assert launch.argv[:4] == [sys.executable, "-I", "-m", "sleap_rtc.worker.launcher"]
    finally:
        launch.cleanup()
    assert not launch.temp_dir.exists()
