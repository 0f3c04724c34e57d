"""``sleap-rtc demo``: the dataset it writes, and the whole demo end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sleap_rtc.demo import CLIENT_PREFIX, make_dataset, training_config_yaml

REPO = Path(__file__).resolve().parents[1]


def run_demo(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLEAP_RTC_")}
    env.update(
        SLEAP_RTC_CONFIG_DIR=str(tmp_path / "config"),
        SLEAP_RTC_STATE_DIR=str(tmp_path / "state"),
        TMPDIR=str(tmp_path),
    )
    return subprocess.run(
        [sys.executable, "-m", "sleap_rtc.cli.main", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def test_dataset_is_real_and_points_at_the_laptop_path(tmp_path: Path) -> None:
    import h5py
    import sleap_io as sio

    data = make_dataset(tmp_path, frames=8)
    assert data.labels_path.is_file() and data.video_worker_path.is_file()
    labels = sio.load_slp(str(data.labels_path), open_videos=False)
    assert len(labels) == 8
    assert [n.name for n in labels.skeletons[0].nodes] == ["head", "tail"]
    assert all(len(lf.user_instances) == 1 for lf in labels)
    assert labels.videos[0].filename == f"{CLIENT_PREFIX}/videos/clip.mp4"
    with h5py.File(data.labels_path, "r") as f:
        assert CLIENT_PREFIX.encode() in f["videos_json"][0]
    video = sio.load_video(str(data.video_worker_path))
    assert video.shape[0] == 8 and video.shape[1:3] == (64, 64)
    frame = video[3]
    assert frame.max() > 100  # the blob is there


def test_training_config_is_a_tiny_cpu_model() -> None:
    import yaml

    cfg = yaml.safe_load(training_config_yaml("/x/labels.slp"))
    trainer = cfg["trainer_config"]
    assert trainer["trainer_accelerator"] == "cpu"
    assert trainer["max_epochs"] == 2 and trainer["min_train_steps_per_epoch"] == 1
    assert trainer["train_data_loader"]["num_workers"] == 0
    assert trainer["use_wandb"] is False and trainer["visualize_preds_during_training"] is False
    unet = cfg["model_config"]["backbone_config"]["unet"]
    assert unet["filters"] == 8 and unet["max_stride"] == 8
    assert "single_instance" in cfg["model_config"]["head_configs"]
    assert "val_labels_path" in cfg["data_config"]  # sleap-nn 0.3.5 reads it when remapping


def _check_demo_output(out: str) -> Path:
    assert "Path check on the worker" in out
    assert f"{CLIENT_PREFIX}/videos/clip.mp4" in out
    assert "auto-accepted the worker's suggestion" in out
    assert re.search(r"epoch 2/2: .*val/loss", out)
    match = re.search(r"The worker trained the model into:\n\s+(\S+)", out)
    assert match, out
    return Path(match.group(1))


def test_demo_with_the_stand_in_trainer(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_demo(tmp_path, "--fake-trainer", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = _check_demo_output(result.stdout)
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()  # the temp folder is removed at exit
    assert not list(tmp_path.glob("sleap-rtc-demo-*"))
    assert time.monotonic() - started < 60


def test_demo_keep_and_capture(tmp_path: Path) -> None:
    work = tmp_path / "work"
    capture = tmp_path / "demo.mcap"
    result = run_demo(
        tmp_path, "--fake-trainer", "--workdir", str(work), "--capture", str(capture), timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = _check_demo_output(result.stdout)
    assert run_dir.is_dir() and (run_dir / "best.ckpt").exists()
    assert (work / "lab-share" / "project" / "labels.slp").exists()
    assert capture.exists() and capture.stat().st_size > 0


def test_demo_in_memory(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--fake-trainer", "--memory", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    _check_demo_output(result.stdout)


def test_fake_trainer_outside_a_source_checkout_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sleap_rtc.demo
    from sleap_rtc.cli import main as cli_main
    from sleap_rtc.cli.exits import ExitCode

    monkeypatch.setenv("SLEAP_RTC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("SLEAP_RTC_STATE_DIR", str(tmp_path / "state"))
    missing = tmp_path / "site-packages" / "tests" / "support" / "fake_sleap_nn.py"
    monkeypatch.setattr(sleap_rtc.demo, "FAKE_TRAINER_SCRIPT", missing)
    work = tmp_path / "work"
    code = cli_main.main(["demo", "--fake-trainer", "--workdir", str(work)])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sleap-rtc demo: error: --fake-trainer is for development")
    assert str(missing) in err and "source checkout" in err
    assert not work.exists()  # nothing was started or written


def test_fake_trainer_help_says_it_is_for_development(capsys: pytest.CaptureFixture[str]) -> None:
    from sleap_rtc.cli import main as cli_main

    with pytest.raises(SystemExit):
        cli_main.main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--fake-trainer for development" in help_text
    assert "source checkout" in help_text


@pytest.mark.train
def test_demo_trains_a_real_model(tmp_path: Path) -> None:
    pytest.importorskip("sleap_nn")
    result = run_demo(tmp_path, "--keep", timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = _check_demo_output(result.stdout)
    assert (run_dir / "best.ckpt").exists()
    assert (run_dir / "training_config.yaml").exists()
    assert (run_dir / "labels_pr.val.0.slp").exists()
