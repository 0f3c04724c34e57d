"""JobProgress -> LossViewer over ZMQ: bound like LossViewer binds, exact shapes and order."""

from __future__ import annotations

import asyncio
import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from rich.console import Console

from sleap_rtc.client.display import TerminalProgress, plain_console
from sleap_rtc.client.events import JobCompleted, JobFailedEvent, LogReceived, ProgressReceived
from sleap_rtc.client.lossviewer import LossViewerBridge, progress_message
from sleap_rtc_proto.v1 import progress_pb2 as P


class FakeLossViewer:
    """Binds like SLEAP's LossViewer: SUB on the publish port, PUB on the controller port.

    Like LossViewer's QTimer, a thread polls the SUB every 20 ms (a SUB that is never
    polled never sends its subscription, since ZMQ runs socket commands on the owning
    thread).
    """

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.publish_port = self.sub.bind_to_random_port("tcp://127.0.0.1")
        self.ctl = self.ctx.socket(zmq.PUB)
        self.controller_port = self.ctl.bind_to_random_port("tcp://127.0.0.1")
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._running = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while self._running:
            if self.sub.poll(20, zmq.POLLIN):
                while self.sub.poll(0, zmq.POLLIN):
                    self.messages.put(json.loads(self.sub.recv_string()))

    def receive(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.messages.get(timeout=min(left, 0.1)))
            except queue.Empty:
                continue
        return out

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self.sub.close(linger=0)
        self.ctl.close(linger=0)
        self.ctx.term()


@pytest.fixture
def viewer() -> Iterator[FakeLossViewer]:
    v = FakeLossViewer()
    yield v
    v.close()


def bridge_for(viewer: FakeLossViewer, **kw: Any) -> LossViewerBridge:
    kw.setdefault("controller_port", viewer.controller_port)
    return LossViewerBridge(publish_port=viewer.publish_port, **kw)


def run_sequence() -> list[P.JobProgress]:
    return [
        P.JobProgress(job_id="j", sequence=1, event=P.PROGRESS_EVENT_TRAIN_BEGIN, what=""),
        P.JobProgress(job_id="j", sequence=2, event=P.PROGRESS_EVENT_EPOCH_BEGIN, epoch=0),
        P.JobProgress(job_id="j", sequence=3, event=P.PROGRESS_EVENT_BATCH_START, batch=0),
        P.JobProgress(job_id="j", sequence=4, event=P.PROGRESS_EVENT_BATCH_END, epoch=0,
                      batch=0, metrics={"loss": 0.5}),
        P.JobProgress(job_id="j", sequence=5, event=P.PROGRESS_EVENT_EPOCH_END, epoch=0,
                      metrics={"train/loss": 0.6, "val/loss": 0.4}),
        P.JobProgress(job_id="j", sequence=6, event=P.PROGRESS_EVENT_TRAIN_END),
    ]


EXPECTED: list[dict[str, Any]] = [
    {"what": "", "event": "train_begin", "logs": None, "wandb_url": None},
    {"what": "", "event": "epoch_begin", "logs": None, "epoch": 0},
    {"what": "", "event": "batch_start", "logs": None, "batch": 0},
    {"what": "", "event": "batch_end", "logs": {"loss": 0.5}, "epoch": 0, "batch": 0},
    {"what": "", "event": "epoch_end", "logs": {"train/loss": 0.6, "val/loss": 0.4}, "epoch": 0},
    {"what": "", "event": "train_end", "logs": None},
]


def test_exact_sleap_nn_shapes_in_order(viewer: FakeLossViewer) -> None:
    bridge = bridge_for(viewer)
    with bridge:
        for progress in run_sequence():
            bridge.handle(ProgressReceived(progress=progress))
        got = viewer.receive(len(EXPECTED))
    assert got == EXPECTED
    # Key order too: sleap-nn builds dict(what=, event=, logs=, **kwargs).
    assert [list(m) for m in got] == [list(m) for m in EXPECTED]


def test_the_first_message_is_never_lost(viewer: FakeLossViewer) -> None:
    # No sleep anywhere in the test: the bridge waits for the subscription itself.
    bridge = bridge_for(viewer, slow_joiner_s=0.0)
    with bridge:
        bridge.publish(run_sequence()[0])
        [first] = viewer.receive(1, timeout_s=5)
    assert first["event"] == "train_begin" and first["what"] == ""


def test_train_begin_is_synthesized_when_joining_mid_run(viewer: FakeLossViewer) -> None:
    bridge = bridge_for(viewer)
    with bridge:
        bridge.publish(P.JobProgress(event=P.PROGRESS_EVENT_EPOCH_BEGIN, epoch=3, what="m"))
        got = viewer.receive(2)
    assert got == [
        {"what": "m", "event": "train_begin", "logs": None, "wandb_url": None},
        {"what": "m", "event": "epoch_begin", "logs": None, "epoch": 3},
    ]


def test_job_end_without_train_end_closes_the_run(viewer: FakeLossViewer) -> None:
    bridge = bridge_for(viewer)
    with bridge:
        bridge.handle(ProgressReceived(progress=run_sequence()[0]))
        bridge.handle(LogReceived(log=P.JobLog(job_id="j", lines=["x"])))  # not for LossViewer
        bridge.handle(JobFailedEvent(failed=P.JobFailed(job_id="j", message="boom")))
        bridge.handle(JobCompleted(complete=P.JobComplete(job_id="j")))  # only one train_end
        got = viewer.receive(3, timeout_s=1.0)
    assert [m["event"] for m in got] == ["train_begin", "train_end"]


def test_py_keys_and_unknown_events_are_not_sent() -> None:
    msg = progress_message(P.JobProgress(event=P.PROGRESS_EVENT_BATCH_END,
                                         metrics={"loss": 1.0, "py/object": 2.0}))
    assert msg is not None and msg["logs"] == {"loss": 1.0}
    assert progress_message(P.JobProgress(event=P.PROGRESS_EVENT_UNSPECIFIED)) is None


def test_burst_of_20000_messages_arrives_complete(viewer: FakeLossViewer) -> None:
    bridge = bridge_for(viewer, controller_port=None)
    n = 20_000
    with bridge:
        bridge.publish(run_sequence()[0])
        for i in range(n):
            bridge.publish(P.JobProgress(event=P.PROGRESS_EVENT_BATCH_END, epoch=0, batch=i,
                                         metrics={"loss": 1.0}))
        got = viewer.receive(n + 1, timeout_s=30)
    assert len(got) == n + 1
    assert [m["batch"] for m in got[1:]] == list(range(n))


def test_stop_button_becomes_a_stop_request(viewer: FakeLossViewer) -> None:
    stops: list[int] = []
    bridge = bridge_for(viewer, on_stop=lambda: stops.append(1))
    with bridge:
        bridge.publish(run_sequence()[0])
        viewer.receive(1)
        deadline = time.monotonic() + 5
        # LossViewer's controller PUB also has a slow joiner: repeat until heard (bounded).
        while not bridge.stop_requested() and time.monotonic() < deadline:
            viewer.ctl.send_string("not json")
            viewer.ctl.send_string(json.dumps({"command": "set_lr", "lr": 0.1}))
            viewer.ctl.send_string(json.dumps({"command": "stop"}))
            time.sleep(0.05)
        assert bridge.stop_requested()
        viewer.ctl.send_string(json.dumps({"command": "stop"}))
        time.sleep(0.05)
        bridge.poll_commands()
    assert stops == [1]


def test_stop_in_lossviewer_stops_the_remote_job(viewer: FakeLossViewer, tmp_path: Any) -> None:
    """End to end: real worker, stand-in trainer, bridge; Stop -> JobControl STOP."""
    from slp_factory import make_h5_video, make_labels
    from test_flow import FAST, Harness, Lab, fake_config, with_worker

    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "data" / "a.h5")
    labels = make_labels(mnt / "data" / "labels.slp", [video])
    lab = Lab(tmp_path, mnt, mnt / "data", video, video)
    received: list[dict[str, Any]] = []

    async def body(h: Harness) -> Any:
        from sleap_rtc.client.flow import PresubmissionFlow

        flow = PresubmissionFlow(connect=h.connect, timeouts=FAST)
        bridge = bridge_for(viewer, on_stop=flow.request_stop)
        flow.sinks.append(bridge)
        task = asyncio.create_task(flow.run(
            config=fake_config(epochs=50, batches=20, batch_sleep=0.02), labels_path=str(labels)))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not task.done():
            received.extend(viewer.drain())
            if any(m["event"] == "batch_end" for m in received):
                viewer.ctl.send_string(json.dumps({"command": "stop"}))
            await asyncio.sleep(0.02)
        result = await task
        received.extend(viewer.receive(1000, timeout_s=0.5))
        return result

    result = with_worker(lab, body)
    assert result.ok, result
    assert result.completion is not None and result.completion.stopped_early
    assert received[0]["event"] == "train_begin"
    assert received[-1]["event"] == "train_end"
    assert any(m["event"] == "epoch_end" and set(m["logs"]) >= {"train/loss", "val/loss"}
               for m in received)


def test_terminal_display() -> None:
    out = io.StringIO()
    display = TerminalProgress(console=Console(file=out, width=120, color_system=None),
                               batch_every=1, show_logs=True, max_epochs=2)
    for progress in run_sequence():
        display.handle(ProgressReceived(progress=progress))
    display.handle(LogReceived(log=P.JobLog(job_id="j", lines=["[bold]not markup[/]"])))
    display.handle(JobCompleted(complete=P.JobComplete(job_id="j", run_dir="/runs/x",
                                              duration_seconds=3.0)))
    display.handle(JobFailedEvent(failed=P.JobFailed(job_id="k", message="boom", log_tail=["tb"])))
    text = out.getvalue()
    assert "Training started" in text
    assert "epoch 1/2 batch 1: loss 0.5000" in text
    assert "epoch 1/2: train/loss 0.6000  val/loss 0.4000" in text
    assert "[bold]not markup[/]" in text
    assert "Job j finished in 3.0 s; outputs in /runs/x" in text
    # The failure itself is the command's one error line; the display shows the tail only.
    assert "boom" not in text
    assert "Job k: the trainer's last output:\ntb" in text


def test_terminal_display_shows_the_batch_schedulers_moves_without_show_logs() -> None:
    """Queued -> running in Slurm is printed even when the trainer's own logs are not."""
    from sleap_rtc.client.results import SchedulerView
    from sleap_rtc_proto.v1 import scheduler_pb2

    out = io.StringIO()
    display = TerminalProgress(console=plain_console(out))
    queued = P.JobLog(job_id="j", lines=["queued in Slurm as job 12: waiting (Resources)"])
    queued.scheduler.CopyFrom(
        scheduler_pb2.SchedulerJob(system="slurm", id="12", state="PENDING", reason="Resources")
    )
    display.handle(LogReceived(log=queued))
    display.handle(LogReceived(log=P.JobLog(job_id="j", lines=["trainer chatter"])))
    text = out.getvalue()
    assert "queued in Slurm as job 12: waiting (Resources)" in text
    assert "trainer chatter" not in text
    view = SchedulerView.of(queued)
    assert view is not None and str(view) == "Slurm job 12: PENDING (Resources)"
    assert SchedulerView.of(P.JobLog(job_id="j")) is None


def test_terminal_display_says_once_that_train_loss_lags() -> None:
    """sleap-nn's first epoch_end has only val/loss: the first such line says why, once."""
    from sleap_rtc.client.display import TRAIN_LOSS_LAG_NOTE

    out = io.StringIO()
    display = TerminalProgress(console=Console(file=out, width=200, color_system=None))
    for epoch, metrics in enumerate([{"val/loss": 0.5}, {"val/loss": 0.4},
                                     {"val/loss": 0.3, "train/loss": 0.6}]):
        display.handle(ProgressReceived(progress=P.JobProgress(
            event=P.PROGRESS_EVENT_EPOCH_END, epoch=epoch, metrics=metrics)))
    assert out.getvalue().splitlines() == [
        f"epoch 1: val/loss 0.5000  {TRAIN_LOSS_LAG_NOTE}",
        "epoch 2: val/loss 0.4000",
        "epoch 3: train/loss 0.6000  val/loss 0.3000",
    ]


def test_display_off_a_terminal_keeps_long_lines_whole() -> None:
    """Logs and CI: a non-terminal stdout is not 80 columns; nothing wraps mid-path."""
    from sleap_rtc.client.display import plain_console

    out = io.StringIO()
    run_dir = "/mnt/lab-share/" + "/".join(["a-rather-long-folder-name"] * 8) + "/run"
    display = TerminalProgress(console=plain_console(out))
    display.handle(JobCompleted(complete=P.JobComplete(job_id="j", run_dir=run_dir,
                                                       duration_seconds=3.0)))
    assert out.getvalue() == f"Job j finished in 3.0 s; outputs in {run_dir}\n"


def test_terminal_display_shows_losses_and_lr_unless_verbose() -> None:
    def lines(verbose: bool) -> list[str]:
        out = io.StringIO()
        display = TerminalProgress(console=Console(file=out, width=200, color_system=None),
                                   batch_every=1, verbose=verbose)
        metrics = {"val/mAP": 0.5, "val/loss": 0.25, "train/loss": 0.5, "lr-Adam": 3e-05,
                   "val/oks": 0.125, "epoch_time": 12.0}
        display.handle(ProgressReceived(progress=P.JobProgress(
            event=P.PROGRESS_EVENT_EPOCH_END, epoch=2, metrics=metrics)))
        display.handle(ProgressReceived(progress=P.JobProgress(
            event=P.PROGRESS_EVENT_BATCH_END, epoch=3, batch=0,
            metrics={"loss": 0.125, "lr": 0.001, "grad_norm": 2.0})))
        return out.getvalue().splitlines()

    assert lines(verbose=False) == [
        "epoch 3: train/loss 0.5000  val/loss 0.2500  lr-Adam 3e-05",
        "  epoch 4 batch 1: loss 0.1250  lr 0.0010",
    ]
    assert lines(verbose=True) == [
        "epoch 3: train/loss 0.5000  val/loss 0.2500  lr-Adam 3e-05  epoch_time 12.0000  "
        "val/mAP 0.5000  val/oks 0.1250",
        "  epoch 4 batch 1: loss 0.1250  lr 0.0010  grad_norm 2.0000",
    ]
