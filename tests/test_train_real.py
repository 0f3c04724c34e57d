"""One tiny real training run with sleap-nn, through WorkerService and the trainer runner.

16 frames of 64x64 (an HDF5 video written with h5py, labels with sleap-io), a
single-instance UNet with 8 filters, 2 epochs on the CPU. Takes ~15-60 s.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from google.protobuf.message import Message

from sleap_rtc.transport.link import memory_link_pair
from sleap_rtc.worker.confine import probe
from sleap_rtc.worker.launcher import LaunchPolicy, Mode
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.trainer import RunLimits, TrainerRun
from sleap_rtc.worker.trainplan import TrainPlan
from sleap_rtc_proto.codec import body_of
from sleap_rtc_proto.v1 import job_pb2, paths_pb2, progress_pb2, spec_pb2

# The test runs the sleap-nn command, never imports it: importing it here (torch, ~4 s)
# only slowed down collecting the suite, in every pytest-xdist worker.
if importlib.util.find_spec("sleap_nn") is None:
    pytest.skip("sleap-nn is not installed (the train extra)", allow_module_level=True)
sio = pytest.importorskip("sleap_io")

from support.client import RawClient  # noqa: E402

CONFIG = """\
data_config:
  validation_fraction: 0.25
  use_augmentations_train: false
  preprocessing:
    scale: 1.0
model_config:
  backbone_config:
    unet:
      in_channels: 1
      filters: 8
      max_stride: 8
  head_configs:
    single_instance:
      confmaps:
        sigma: 2.5
        output_stride: 2
trainer_config:
  max_epochs: 5
  min_train_steps_per_epoch: 1
  trainer_accelerator: cpu
  train_data_loader: {batch_size: 4, num_workers: 0}
  val_data_loader: {batch_size: 4, num_workers: 0}
  use_wandb: false
  visualize_preds_during_training: false
  save_ckpt: true
"""


CLIENT_VIDEOS = "/Users/me/videos"
AVAILABLE = probe()


def make_dataset(folder: Path) -> Path:
    """16 frames of a blob at random places, two nodes per frame.

    The video lies in ``folder/videos``, the labels in ``folder/labels``, and the
    labels store the video under the client's path ``/Users/me/videos/video.h5``:
    training only finds it through the prefix mapping (``--prefix-map``).
    """
    (folder / "videos").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(0)
    frames = np.zeros((16, 64, 64, 1), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    points = []
    for i in range(16):
        x, y = rng.uniform(16, 44, 2)
        frames[i, ..., 0] = (255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 20)).astype(np.uint8)
        points.append([[x, y], [x + 4, y + 4]])
    with h5py.File(folder / "videos" / "video.h5", "w") as f:
        f.create_dataset("video", data=frames)
    skeleton = sio.Skeleton(["head", "tail"])
    video = sio.Video.from_filename(str(folder / "videos" / "video.h5"), dataset="video")
    labeled = [
        sio.LabeledFrame(
            video=video,
            frame_idx=i,
            instances=[sio.Instance.from_numpy(np.array(points[i]), skeleton)],
        )
        for i in range(16)
    ]
    labels = sio.Labels(labeled_frames=labeled, videos=[video], skeletons=[skeleton])
    labels.replace_filenames(prefix_map={str(folder / "videos"): CLIENT_VIDEOS}, open_videos=False)
    labels.save(str(folder / "labels" / "labels.slp"))
    return folder / "labels" / "labels.slp"


def sleap_nn_command() -> tuple[str, ...]:
    beside = Path(sys.executable).parent / "sleap-nn"
    found = str(beside) if beside.exists() else shutil.which("sleap-nn")
    if found is None:
        pytest.skip("the sleap-nn command is not installed")
    return (found, "train")


@pytest.mark.train
@pytest.mark.timeout(600)
def test_tiny_real_training_through_the_worker(tmp_path: Path) -> None:
    labels = make_dataset(tmp_path / "mnt" / "data")
    config = WorkerConfig(
        mounts=[tmp_path / "mnt"],
        state_dir=tmp_path / "state",
        verifier=None,
        trainer_command=sleap_nn_command(),
        build_index=False,
        run_limits=RunLimits(no_progress_timeout_s=300, max_run_s=540),
    )

    async def main() -> tuple[list[Message], Message, float, job_pb2.JobAccepted, Path]:
        service = WorkerService(config)
        await service.start()
        client_end, worker_end = memory_link_pair()
        serving = asyncio.create_task(service.serve(worker_end))
        try:
            client = RawClient(client_end)
            assert (await client.hello()).WhichOneof("body") == "hello_ack"
            mapping = {CLIENT_VIDEOS: str(labels.parent.parent / "videos")}
            check = body_of(
                await client.request(
                    paths_pb2.PathCheckRequest(labels_path=str(labels), prefix_mappings=mapping)
                )
            )
            assert isinstance(check, paths_pb2.PathCheckResult) and check.check_token, check
            submit = job_pb2.JobSubmit(
                job_id="tiny-1",
                spec=spec_pb2.TrainJobSpec(
                    config_content=CONFIG,
                    labels_path=str(labels),
                    prefix_mappings=mapping,
                    max_epochs=2,
                ),
                check_token=check.check_token,
            )
            started = time.monotonic()
            accepted = body_of(await client.request(submit))
            assert isinstance(accepted, job_pb2.JobAccepted), accepted
            end = await client.until_job_end("tiny-1", timeout=560)
            runs = service.runs_dir
            return client.job_messages("tiny-1"), end, time.monotonic() - started, accepted, runs
        finally:
            await service.close()
            serving.cancel()
            await asyncio.wait({serving}, timeout=5)

    messages, end, wall, accepted, runs = asyncio.run(main())
    print(f"real sleap-nn training through the worker: {wall:.1f} s wall")
    logs = [line for m in messages if isinstance(m, progress_pb2.JobLog) for line in m.lines]
    assert any("--video-path-map" in line for line in logs)  # every video, resolved
    if AVAILABLE.network:  # the trainer ran under the worker's Landlock ruleset
        assert any("trainer confined by Landlock ABI" in line for line in logs), logs[:5]
    assert isinstance(end, progress_pb2.JobComplete), (end, logs[-30:])
    events = [m.event for m in messages if isinstance(m, progress_pb2.JobProgress)]
    assert events[0] == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN
    assert events.count(progress_pb2.PROGRESS_EVENT_EPOCH_END) == 2
    assert progress_pb2.PROGRESS_EVENT_BATCH_END in events
    assert events[-1] == progress_pb2.PROGRESS_EVENT_TRAIN_END
    epoch_end = next(
        m
        for m in messages
        if isinstance(m, progress_pb2.JobProgress)
        and m.event == progress_pb2.PROGRESS_EVENT_EPOCH_END
    )
    assert "val/loss" in epoch_end.metrics
    checkpoints = [p for p in end.outputs if p.endswith(".ckpt")]
    assert checkpoints and all(Path(p).is_file() for p in checkpoints)
    assert Path(end.run_dir).is_relative_to((tmp_path / "mnt").resolve())
    # JobAccepted.run_dir is exactly where sleap-nn wrote: runs_dir/<job id>, not doubled.
    assert end.run_dir == accepted.run_dir == str(runs / "tiny-1")
    assert all(Path(p).parent == Path(accepted.run_dir) for p in checkpoints)
    assert not list((tmp_path / "state" / "configs").glob("*"))


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.events: list[str] = []

    def progress(self, update: object) -> None:
        self.events.append(str(getattr(update, "event", "")))

    def log(self, stream: int, lines: list[str]) -> None:
        self.lines.extend(lines)


def _run_direct(tmp: Path, config_text: str, mode: Mode, name: str) -> tuple[_Lines, object, float]:
    """Real sleap-nn through TrainerRun and the launcher, with no intake in front."""
    import zmq.asyncio

    labels = tmp / "mnt" / "data" / "labels" / "labels.slp"
    videos = str(labels.parent.parent / "videos" / "video.h5")
    state = tmp / "state"
    (state / "configs").mkdir(parents=True, exist_ok=True)
    config = state / "configs" / f"job-{name}.yaml"
    config.write_text(config_text)
    (tmp / "mnt" / "runs" / name).mkdir(parents=True)
    plan = TrainPlan(
        config_file=config,
        labels_path=str(labels),
        ckpt_dir=tmp / "mnt" / "runs",
        run_name=name,
        max_epochs=2,
        video_path_map=((f"{CLIENT_VIDEOS}/video.h5", videos),),
    )
    policy = LaunchPolicy(
        mode=mode, availability=AVAILABLE, temp_root=state / "tmp", mounts=(str(tmp / "mnt"),)
    )
    sink = _Lines()

    async def main() -> object:
        ctx = zmq.asyncio.Context()
        try:
            run = TrainerRun(
                sleap_nn_command(),
                plan,
                sink,
                context=ctx,
                limits=RunLimits(no_progress_timeout_s=300, max_run_s=540),
                sandbox=policy,
            )
            return await run.run()
        finally:
            ctx.term()

    started = time.monotonic()
    result = asyncio.run(main())
    return sink, result, time.monotonic() - started


@pytest.mark.train
@pytest.mark.timeout(900)
@pytest.mark.skipif(not AVAILABLE.network, reason=f"needs Landlock: {AVAILABLE.describe()}")
def test_confined_sleap_nn_cannot_follow_a_hydra_searchpath_outside(tmp_path: Path) -> None:
    """The second layer alone: intake bypassed, the OS still stops the read.

    A config with ``hydra.searchpath`` + ``defaults`` (refused at intake, see
    test_escapes.py) is handed straight to real sleap-nn under the launcher: the
    outside file's text never reaches the trainer's output. The control run,
    unconfined, shows the same config does read it (the escape is real).
    """
    make_dataset(tmp_path / "mnt" / "data")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "leak.yaml").write_text("description: OUTSIDE-FILE-CONTENT\n")
    hostile = (
        f"hydra:\n  searchpath: [file://{tmp_path / 'outside'}]\n"
        "defaults: [leak, _self_]\n" + CONFIG.replace("max_epochs: 5", "max_epochs: 1")
    )
    open_run, _, _ = _run_direct(tmp_path, hostile, Mode.OFF, "open")
    assert any("OUTSIDE-FILE-CONTENT" in line for line in open_run.lines)
    shut, result, _ = _run_direct(tmp_path, hostile, Mode.REQUIRE, "shut")
    assert any("confined by Landlock" in line for line in shut.lines)
    assert not any("OUTSIDE-FILE-CONTENT" in line for line in shut.lines)
    assert not result.completed


@pytest.mark.train
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not AVAILABLE.network, reason=f"needs Landlock: {AVAILABLE.describe()}")
def test_confinement_costs_little_on_a_tiny_real_run(tmp_path: Path) -> None:
    """The same 2-epoch run, unconfined and confined, alternating (the figure in the README)."""
    make_dataset(tmp_path / "mnt" / "data")
    times: dict[Mode, list[float]] = {Mode.OFF: [], Mode.REQUIRE: []}
    for i in range(2):
        for mode in (Mode.OFF, Mode.REQUIRE):
            sink, result, wall = _run_direct(tmp_path, CONFIG, mode, f"{mode.value}-{i}")
            assert result.completed, sink.lines[-20:]
            times[mode].append(wall)
    plain, confined = min(times[Mode.OFF]), min(times[Mode.REQUIRE])
    print(f"tiny real run: unconfined {times[Mode.OFF]} s, confined {times[Mode.REQUIRE]} s")
    assert confined < plain * 1.5 + 5  # generous: 2 shared cores; the README quotes the figures
