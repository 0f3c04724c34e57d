"""``sleap-rtc demo``: the whole flow on one machine, with real parts.

It starts a local signaling server and a worker (in this process, on asyncio
tasks) whose only mount is a temporary "lab share"; writes a small real SLEAP
dataset there (a synthetic video of a moving blob, written with sleap-io, and
labels with a two-node skeleton) whose video is referenced by a *laptop* path
(``/Users/demo/project/videos/clip.mp4``) that the worker does not have; then
runs the client's presubmission flow over WebRTC on loopback: the path check
finds the video missing and suggests the worker's path, the demo accepts the
suggestion (saying so), submits, and streams the training progress of a tiny
sleap-nn model trained on the CPU. Everything lives in a temporary folder that
is removed at exit unless ``keep`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sleap_rtc.client.results import FlowResult
    from sleap_rtc.config.worker import WorkerSettings
    from sleap_rtc.worker.runtime import WorkerRuntime

#: The prefix the demo's labels pretend the project has on the user's laptop.
CLIENT_PREFIX = "/Users/demo/project"
DEMO_ROOM = "demo"
DEMO_WORKER = "demo-worker"
#: The client name the demo's flow sends in Hello (as ``sleap-rtc train`` does).
CLIENT_NAME = "sleap-rtc cli"
NODES = ("head", "tail")


@dataclass(frozen=True)
class DemoDataset:
    """Where the demo's dataset lies, as the client and the worker see it."""

    share: Path
    """The worker's mount (the temporary "lab share")."""
    project: Path
    """The project folder on the worker: ``<share>/project``."""
    labels_path: Path
    """The labels file (both sides open it by this path)."""
    video_worker_path: Path
    """The video, where the worker sees it."""
    video_client_path: str
    """The video, where the labels say it is (the laptop's path)."""
    frames: int
    size: int


def make_dataset(root: Path, *, frames: int = 24, size: int = 64) -> DemoDataset:
    """Write a synthetic video and its labels under ``root/lab-share/project``.

    The video is a bright blob circling the frame; every frame carries one user
    instance (``head``, ``tail``) that follows the blob. The labels are saved
    with the video's *client* path, so a worker check must map it.
    """
    import numpy as np
    import sleap_io as sio

    share = root / "lab-share"
    project = share / "project"
    videos = project / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.zeros((frames, size, size, 1), np.uint8)
    points: list[Any] = []
    center, radius, sigma = size / 2, size * 0.22, size / 12
    for i in range(frames):
        angle = 2 * np.pi * i / frames
        cx, cy = center + radius * np.cos(angle), center + radius * np.sin(angle)
        blob = 255.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        images[i, ..., 0] = np.clip(blob, 0, 255).astype(np.uint8)
        dx, dy = np.cos(angle + np.pi / 2) * sigma, np.sin(angle + np.pi / 2) * sigma
        points.append(np.array([[cx + dx, cy + dy], [cx - dx, cy - dy]], np.float64))
    video_path = videos / "clip.mp4"
    sio.save_video(images, video_path, fps=15)

    video = sio.Video.from_filename(str(video_path))
    skeleton = sio.Skeleton(list(NODES), [NODES], name="blob")
    labeled = [
        sio.LabeledFrame(
            video=video,
            frame_idx=i,
            instances=[sio.Instance.from_numpy(pts, skeleton=skeleton)],
        )
        for i, pts in enumerate(points)
    ]
    labels = sio.Labels(labeled, videos=[video], skeletons=[skeleton])
    labels.replace_filenames(prefix_map={str(project): CLIENT_PREFIX})
    labels_path = project / "labels.slp"
    sio.save_slp(labels, str(labels_path))
    return DemoDataset(
        share=share,
        project=project,
        labels_path=labels_path,
        video_worker_path=video_path,
        video_client_path=f"{CLIENT_PREFIX}/videos/clip.mp4",
        frames=frames,
        size=size,
    )


def training_config_yaml(labels_path: str, *, max_epochs: int = 2) -> str:
    """A tiny single-instance sleap-nn config (see REFERENCE.md) as YAML text.

    ``val_labels_path: null`` is spelled out: sleap-nn 0.3.5 reads it when video
    paths are remapped on its command line, and a missing key is an error there.
    """
    return f"""\
data_config:
  train_labels_path:
    - {labels_path}
  val_labels_path: null
  validation_fraction: 0.25
  use_augmentations_train: false
  preprocessing:
    ensure_grayscale: true
model_config:
  backbone_config:
    unet:
      in_channels: 1
      filters: 8
      max_stride: 8
      output_stride: 2
  head_configs:
    single_instance:
      confmaps:
        sigma: 2.5
        output_stride: 2
trainer_config:
  max_epochs: {max_epochs}
  min_train_steps_per_epoch: 1
  trainer_accelerator: cpu
  train_data_loader:
    batch_size: 4
    num_workers: 0
  val_data_loader:
    batch_size: 4
    num_workers: 0
  use_wandb: false
  visualize_preds_during_training: false
  enable_progress_bar: false
  save_ckpt: true
"""


def real_trainer_command() -> list[str]:
    """``sleap-nn train`` run by this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "sleap_nn.cli", "train"]


#: The test suite's stand-in trainer: in a source checkout only (not in the wheel).
FAKE_TRAINER_SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "support" / "fake_sleap_nn.py"


class FakeTrainerMissing(FileNotFoundError):
    """``--fake-trainer`` was asked for outside a source checkout."""


class DemoError(Exception):
    """The demo could not run to the end; ``message`` is the one line to show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DemoSetupError(DemoError):
    """The demo cannot start as asked (no trainer: sleap-nn missing, no stand-in)."""


class DemoWorkerNotReady(DemoError):
    """The demo's worker did not register with the local signaling server in time."""


class DemoFailed(DemoError):
    """The demo broke on the way (its worker stopped, a file or socket error)."""


def fake_trainer_command() -> list[str]:
    """The stand-in trainer script of the test suite (a source checkout only).

    Raises:
        FakeTrainerMissing: with a one-line message saying what to do instead.
    """
    script = FAKE_TRAINER_SCRIPT
    if not script.is_file():
        raise FakeTrainerMissing(
            f"--fake-trainer is for development: it needs the test suite's stand-in trainer "
            f"({script}), which only a source checkout of sleap-rtc has. Install sleap-nn "
            "(pip install 'sleap-rtc[train]') and run the demo without it, or pass "
            "--trainer-command."
        )
    return [sys.executable, str(script), "train"]


@dataclass
class DemoOptions:
    """What ``sleap-rtc demo`` was asked to do."""

    keep: bool = False
    fake_trainer: bool = False
    trainer_command: Sequence[str] | None = None
    workdir: Path | None = None
    max_epochs: int = 2
    frames: int = 24
    capture: Path | None = None
    #: Join client and worker in memory instead of signaling + WebRTC.
    memory: bool = False
    #: Lowest suggestion score the demo's auto-accept takes.
    min_score: float = 0.5
    out: Callable[[str], None] = field(default=lambda text: print(text, flush=True))


class DemoProgress:
    """A compact progress sink: one line per epoch with the two losses."""

    def __init__(self, out: Callable[[str], None], max_epochs: int) -> None:
        self.out = out
        self.max_epochs = max_epochs
        self.batches = 0

    def handle(self, event: Any) -> None:
        from sleap_rtc.client.events import JobCompleted, JobFailedEvent, ProgressReceived
        from sleap_rtc_proto.v1 import progress_pb2 as pp

        if isinstance(event, ProgressReceived):
            p = event.progress
            if p.event == pp.PROGRESS_EVENT_TRAIN_BEGIN:
                self.out("   training started")
            elif p.event == pp.PROGRESS_EVENT_BATCH_END:
                self.batches += 1
            elif p.event == pp.PROGRESS_EVENT_EPOCH_END:
                losses = "  ".join(
                    f"{k} {p.metrics[k]:.4f}" for k in ("train/loss", "val/loss") if k in p.metrics
                )
                self.out(
                    f"   epoch {p.epoch + 1}/{self.max_epochs}: {losses}  ({self.batches} batches)"
                )
                self.batches = 0
            elif p.event == pp.PROGRESS_EVENT_TRAIN_END:
                self.out("   training ended")
        elif isinstance(event, JobCompleted):
            self.out(f"   job complete in {event.complete.duration_seconds:.1f} s")
        elif isinstance(event, JobFailedEvent):
            self.out(f"   job failed: {event.failed.message}")


def _trainer(options: DemoOptions) -> tuple[list[str], str]:
    if options.trainer_command:
        return list(options.trainer_command), " ".join(options.trainer_command)
    if options.fake_trainer:
        return fake_trainer_command(), "the stand-in trainer (--fake-trainer)"
    import importlib.util

    if importlib.util.find_spec("sleap_nn") is None:
        raise RuntimeError(
            "sleap-nn is not installed: pip install 'sleap-rtc[train]' (or run with --fake-trainer)"
        )
    return real_trainer_command(), "sleap-nn on the CPU"


async def run_demo(options: DemoOptions) -> FlowResult:
    """Run the whole demo; returns the client flow's result (``ok`` when the model trained).

    Raises:
        DemoError: the demo could not start or broke on the way (see the subclasses);
            the worker's and the wiring's typed errors pass through as they are.
    """
    out = options.out
    started = time.monotonic()
    try:
        trainer, trainer_text = _trainer(options)
    except (RuntimeError, FileNotFoundError) as exc:
        raise DemoSetupError(str(exc)) from None
    if options.workdir is not None:
        root = options.workdir.expanduser().absolute()
        root.mkdir(parents=True, exist_ok=True)
        keep = True
    else:
        root = Path(tempfile.mkdtemp(prefix="sleap-rtc-demo-"))
        keep = options.keep
    out("sleap-rtc demo: the remote-training flow, all on this machine")
    out(f"   work folder: {root}" + ("" if keep else " (removed at exit; --keep keeps it)"))
    try:
        return await _run(options, root, trainer, trainer_text, started)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


async def _run(
    options: DemoOptions, root: Path, trainer: list[str], trainer_text: str, started: float
) -> FlowResult:
    from sleap_rtc.client.wiring import build_flow, fixed_token, open_capture
    from sleap_rtc.config.client import ClientSettings
    from sleap_rtc.config.worker import Mount, WorkerSettings
    from sleap_rtc.signaling.client import PeerInfo
    from sleap_rtc.signaling.rooms import RoomConfig
    from sleap_rtc.signaling.server import serve_signaling
    from sleap_rtc.worker.runtime import WorkerRuntime, run_worker

    out = options.out
    data = await asyncio.to_thread(make_dataset, root, frames=options.frames)
    out("")
    size = f"{data.size}x{data.size}"
    out(f"1. Dataset: a {data.frames}-frame {size} video of a moving blob and its labels")
    out("   (skeleton head-tail, one labeled animal per frame), written with sleap-io.")
    out(f"   labels file:  {data.labels_path}")
    out(f"   its video is recorded at {data.video_client_path} (the laptop's path);")
    out(f"   the worker sees the share at {data.share}, so that path is missing there.")

    room = RoomConfig.generate()
    server = await serve_signaling(
        "127.0.0.1", 0, state_dir=root / "signal", rooms={DEMO_ROOM: room}
    )
    stop = asyncio.Event()
    worker_task: asyncio.Task[None] | None = None
    writer = None
    try:
        out(f"2. Signaling server on {server.url} (room {DEMO_ROOM!r}).")
        settings = WorkerSettings(
            name=DEMO_WORKER,
            room=DEMO_ROOM,
            signaling_url=server.url,
            mounts=(Mount(data.share, "lab-share"),),
            trainer_command=tuple(trainer),
            state_dir=root / "worker-state",
            loopback=True,
        )
        runtime = WorkerRuntime()
        worker_task = asyncio.create_task(
            run_worker(
                settings,
                room.worker_key,
                stop=stop,
                runtime=runtime,
                say=lambda text: None,
            )
        )
        await _wait_registered(runtime, worker_task)
        out(
            f"3. Worker {DEMO_WORKER!r} registered: mount lab-share = {data.share}; "
            f"trainer: {trainer_text}."
        )
        token = server.issuer.issue("demo-user", DEMO_ROOM, ttl_s=3600)
        client = ClientSettings(
            server=server.url,
            room=DEMO_ROOM,
            worker=runtime.peer_id,
            loopback=True,
            mappings_file=root / "client-state" / "mappings.json",
        )
        how = "in memory" if options.memory else "over WebRTC (loopback)"
        out(f"4. Client: logged in as demo-user (a token from the local server); connecting {how}.")
        writer = open_capture(options.capture)
        flow = build_flow(
            client,
            fixed_token(client, token),
            client_name=CLIENT_NAME,
            worker=PeerInfo(peer_id=runtime.peer_id, role="worker"),
            resolver=_auto_accept(out, options.min_score),
            sinks=[DemoProgress(out, options.max_epochs)],
            use_saved=False,
            capture=writer,
            on_accepted=lambda view: _accepted(out, view, trainer_text),
        )
        if options.memory:
            flow.connect = _memory_connector(settings)
        result = await flow.run(
            labels_path=str(data.labels_path),
            config_content=training_config_yaml(
                str(data.labels_path), max_epochs=options.max_epochs
            ),
            run_name="demo",
        )
        if not result.ok:
            return result
        elapsed = time.monotonic() - started
        run_dir = result.completion.run_dir if result.completion else ""
        out("")
        out(f"Done in {elapsed:.1f} s. The worker trained the model into:")
        out(f"   {run_dir}")
        if run_dir and Path(run_dir).is_dir():
            files = sorted(p.name for p in Path(run_dir).iterdir())
            out("   " + ", ".join(files))
        return result
    except OSError as exc:
        raise DemoFailed(f"demo failed: {exc}") from None
    finally:
        stop.set()
        if worker_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(30.0):  # then the worker task is cancelled
                    await worker_task
        await server.close()
        if writer is not None:
            await writer.aclose()
            out(f"   capture written to {writer.path}")


async def _wait_registered(
    runtime: WorkerRuntime, task: asyncio.Task[None], timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while not runtime.peer_id:
        if task.done():
            task.result()  # raises the worker's error
            raise DemoFailed("the demo worker stopped before registering")
        if time.monotonic() > deadline:
            raise DemoWorkerNotReady("the demo worker did not register in time")
        await asyncio.sleep(0.02)


def _auto_accept(out: Callable[[str], None], min_score: float) -> Callable[[Any], Any]:
    """Show the path check, then take the best suggestion for each missing path (and say so)."""
    from sleap_rtc.client.resolve import AutoResolver

    auto = AutoResolver(threshold=min_score, use_saved=False)

    def resolve(view: Any) -> Any:
        if view.attempt == 1:
            out("5. Path check on the worker (before anything is submitted):")
        out(f"   check {view.attempt}: {len(view.found)} found, {len(view.missing)} missing")
        out(f"     labels  {view.labels.status:<15} {view.labels.original_path}")
        for video in view.videos:
            out(f"     video   {video.status:<15} {video.original_path}")
            for s in video.suggestions:
                out(
                    f"             suggestion      {s.worker_path}  ({s.explanation or s.reason}, "
                    f"score {s.score:.2f})"
                )
        resolution = auto(view)
        for original, worker_path in resolution.path_mappings.items():
            out(f"   auto-accepted the worker's suggestion: {original} -> {worker_path}")
        out("   re-checking on the worker with that mapping...")
        return resolution

    return resolve


def _accepted(out: Callable[[str], None], view: Any, trainer_text: str) -> None:
    out("   all paths found.")
    out(f"6. Submitted: job {view.job_id} accepted; run folder on the worker:")
    out(f"   {view.run_dir}")
    out(f"   Training with {trainer_text}, progress streamed from the worker:")


def _memory_connector(settings: WorkerSettings) -> Callable[[], Any]:
    """Join the flow to a separate in-process WorkerService through a memory link."""
    from sleap_rtc.transport.link import memory_link_pair
    from sleap_rtc.worker.runtime import build_service

    state: dict[str, Any] = {}

    async def connect() -> Any:
        service = state.get("service")
        if service is None:
            service = build_service(settings, None)
            await service.start()
            state["service"] = service
        client, worker = memory_link_pair()
        task = asyncio.ensure_future(service.serve(worker, peer_id="demo-client"))
        state.setdefault("tasks", []).append(task)
        return client

    return connect
