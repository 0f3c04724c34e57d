"""Run Remotely inside the real SLEAP 1.6.6 LearningDialog, against a real worker.

The worker is the real WorkerService in its own process over loopback TCP
(``support/tcp_worker.py``) with the stand-in trainer; the labels files are
real (sleap-io); the dialog, the path dialog and the LossViewer are SLEAP's and
ours, offscreen. Screenshots of each dialog go under the test's temp folder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("qtpy", reason="the gui extra (qtpy) is not installed")
pytest.importorskip("PySide6", reason="the gui extra (PySide6) is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from slp_factory import make_h5_video, make_labels
from support.tcp_worker import StreamLink

from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.gui.threads import FlowThread
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.trainer import RunLimits

SUPPORT = Path(__file__).parent / "support"
FAKE = [sys.executable, str(SUPPORT / "fake_sleap_nn.py"), "train"]
FAST = FlowTimeouts(connect_s=5.0, hello_s=5.0, check_s=10.0, submit_s=10.0, control_s=10.0,
                    idle_s=30.0, tick_s=0.05)
WAIT_MS = 40_000


@pytest.fixture(scope="session", autouse=True)
def gui_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Offscreen Qt, HOME in a temp folder (importing sleap writes ~/.sleap), no re-exec.

    Session scope and autouse, so it runs before pytest-qt's session ``qapp``."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "QT_QPA_PLATFORM", "SLEAP_SKIP_QT_FIX",
                                            "XDG_CONFIG_HOME")}
    os.environ.update(HOME=str(home), QT_QPA_PLATFORM="offscreen", SLEAP_SKIP_QT_FIX="1",
                      XDG_CONFIG_HOME=str(home / ".config"))
    pytest.importorskip("sleap.gui.learning.dialog", reason="SLEAP (the gui extra) is missing")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class Worker:
    """The real WorkerService on its own thread and loop, reachable over loopback TCP.

    Its own loop (not the flow's, not Qt's), as a remote worker would be; the
    file index is built so the worker ranks suggestions.
    """

    def __init__(self, mnt: Path, state: Path) -> None:
        fields = {f.name for f in dataclasses.fields(WorkerConfig)}
        extra = {"confinement": "off"} if "confinement" in fields else {}
        self.service = WorkerService(WorkerConfig(
            **extra,  # type: ignore[arg-type]
            mounts=[mnt], state_dir=state, verifier=None, trainer_command=FAKE,
            worker_id="gpu-1", run_limits=RunLimits(no_progress_timeout_s=60, term_grace_s=2),
        ))
        self.thread = FlowThread("test-worker")
        self.port = self.thread.submit(self._start()).result(30)
        self.connects = 0

    async def _start(self) -> int:
        await self.service.start()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.service.serve(StreamLink(reader, writer), peer_id="gui-test")

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        for _ in range(200):  # bounded: the index of a tiny mount takes milliseconds
            if self.service.index is None or self.service.index.built:
                break
            await asyncio.sleep(0.02)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        self.server.close()
        await self.service.close()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def connect(self) -> StreamLink:
        self.connects += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return StreamLink(reader, writer)

    def make_flow(self, **kw: Any) -> PresubmissionFlow:
        return PresubmissionFlow(connect=self.connect, timeouts=FAST, **kw)

    def jobs(self) -> list[Any]:
        """Every job the worker was given."""
        return list(self.service.registry.jobs())

    def close(self) -> None:
        self.thread.submit(self._stop()).result(30)
        self.thread.stop()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "data" / "a.h5")
    # The client's own copy, outside the worker's storage (SLEAP opens it locally);
    # the worker has the same file next to the labels file.
    client_video = make_h5_video(tmp_path / "laptop" / "data" / "b.h5")
    worker_copy = make_h5_video(mnt / "shared" / "data" / "b.h5")
    for name in ("c", "d"):  # a folder of the client's with its twin on the worker
        make_h5_video(tmp_path / "laptop" / "data" / f"{name}.h5")
        make_h5_video(mnt / "shared" / "data" / f"{name}.h5")
    worker = Worker(mnt, tmp_path / "state")
    try:
        yield {"mnt": mnt, "video": video, "worker": worker, "tmp": tmp_path,
               "client_video": client_video, "worker_copy": worker_copy}
    finally:
        worker.close()


def learning_dialog(labels: Path, pipeline: str | None = "single") -> Any:
    """SLEAP's dialog, made the way MainWindow._show_learning_dialog makes it."""
    from sleap.gui.learning.dialog import LearningDialog

    dialog = LearningDialog("training", str(labels))
    if pipeline is not None:
        combo = dialog.pipeline_form_widget._pipeline_combo
        index = next(i for i in range(combo.count()) if pipeline in str(combo.itemData(i)))
        combo.setCurrentIndex(index)
    return dialog


def shot(widget: Any, tmp: Path, name: str) -> Path:
    from qtpy import QtWidgets

    for _ in range(5):  # let pending layout requests run before grabbing
        QtWidgets.QApplication.processEvents()
    path = tmp / f"{name}.png"
    assert widget.grab().save(str(path))
    return path


def attached(qtbot: Any, labels: Path, worker: Worker, pipeline: str | None = "single",
             **kw: Any) -> tuple[Any, Any]:
    from sleap_rtc.gui.plugin import attach

    dialog = learning_dialog(labels, pipeline)
    qtbot.addWidget(dialog)
    att = attach(dialog, make_flow=worker.make_flow, overrides={"max_epochs": 2}, **kw)
    assert att is not None
    dialog.show()
    return dialog, att


_VIEWERS: list[Any] = []


def close_later(viewer: Any) -> None:
    if viewer not in _VIEWERS:
        _VIEWERS.append(viewer)


@pytest.fixture(autouse=True)
def _close_viewers() -> Iterator[None]:
    """Close every LossViewer a test opened (it unbinds its ZMQ ports)."""
    yield
    while _VIEWERS:
        _VIEWERS.pop().close()


#: LossViewer's own plotting methods (SLEAP's work on the Qt thread, timed apart).
PLOTTING = ("_add_datapoint", "_set_end", "_redraw_plot", "_resize_axes", "_update_runtime",
            "_set_data_on_scatter", "_add_data_to_plot", "_set_start_time")


def time_plotting(viewer: Any, into: list[tuple[float, float]]) -> None:
    """Record (start, end) of each of LossViewer's plotting calls into ``into``."""
    for name in PLOTTING:
        original = getattr(viewer, name)

        def timed(*args: Any, _f: Any = original, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                into.append((began, time.perf_counter()))

        setattr(viewer, name, timed)


def watching(runs: list[Any], shown: list[Any]) -> Any:
    """An on_run hook: keep the run, and each path dialog it shows."""

    def hook(run: Any) -> None:
        runs.append(run)
        run.on_path_dialog = shown.append
        run.accepted.connect(lambda _view: close_later(run.viewer))

    return hook


def record_points(viewer: Any) -> list[tuple[Any, ...]]:
    points: list[tuple[Any, ...]] = []
    original = viewer._add_datapoint

    def spy(*args: Any, **kwargs: Any) -> Any:
        points.append(args + tuple(kwargs.values()))
        return original(*args, **kwargs)

    viewer._add_datapoint = spy
    return points


def test_install_adds_the_button_to_every_dialog_enabled_with_run(qtbot: Any, lab: Any) -> None:
    from qtpy import QtWidgets

    from sleap_rtc.gui.plugin import install

    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    install(QtWidgets.QApplication.instance())
    dialog = learning_dialog(labels)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.findChild(QtWidgets.QPushButton, "runRemotelyButton")
                    is not None, timeout=5000)
    button = dialog.findChild(QtWidgets.QPushButton, "runRemotelyButton")
    assert dialog.findChild(QtWidgets.QWidget, "remotePanel") is not None
    assert button.isVisible() and button.isEnabled() == dialog.run_button.isEnabled() is True
    dialog.run_button.setEnabled(False)
    assert not button.isEnabled()
    dialog.run_button.setEnabled(True)
    assert button.isEnabled()
    shot(dialog, lab["tmp"], "training_dialog")


def test_accept_closes_the_dialog_and_the_lossviewer_plots(qtbot: Any, lab: Any) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    runs: list[Any] = []
    dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, []))
    att.button.click()
    run = runs[0]
    points = record_points(run.viewer)
    with qtbot.waitSignal(run.finished, timeout=WAIT_MS):
        pass
    assert [r.status.value for r in run.results] == ["success"], run.results
    assert not dialog.isVisible()  # closed on JobAccepted
    assert run.viewer.isVisible()
    assert run.viewer.last_epoch_val_loss is not None  # epoch_end arrived after train_begin
    assert any("val_loss" in p for p in points)
    assert len(lab["worker"].jobs()) == 1
    shot(run.viewer, lab["tmp"], "lossviewer")


def test_missing_video_cancel_in_path_dialog_submits_nothing(qtbot: Any, lab: Any) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["client_video"]])
    shown: list[Any] = []
    runs: list[Any] = []
    dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, shown))
    att.button.click()
    qtbot.waitUntil(lambda: bool(shown), timeout=WAIT_MS)
    pd = shown[0]
    assert pd.objectName() == "pathResolutionDialog"
    table = pd.table
    assert table.objectName() == "pathTable" and table.rowCount() == 2
    assert table.item(0, 2).text() == "found"
    assert table.item(1, 1).text() == lab["client_video"]
    assert table.item(1, 2).text() != "found"
    combo = pd.choice_widget(1)
    assert combo is not None and combo.count() >= 1
    assert combo.itemText(0).startswith(lab["worker_copy"])  # the worker's suggestion, ranked first
    assert not pd.continue_button.isEnabled()
    shot(pd, lab["tmp"], "path_dialog")
    with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
        pd.cancel_button.click()
    assert runs[0].results[-1].status.value == "cancelled"
    assert dialog.isVisible()  # back to the training dialog, silently
    assert runs[0].popups == []
    assert lab["worker"].jobs() == []


def test_edit_check_on_worker_then_continue_trains(qtbot: Any, lab: Any) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["client_video"]])
    shown: list[Any] = []
    runs: list[Any] = []
    dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, shown))
    att.button.click()
    qtbot.waitUntil(lambda: bool(shown), timeout=WAIT_MS)
    pd = shown[0]
    combo = pd.choice_widget(1)
    combo.setEditText("/nowhere/a.h5")  # a wrong path: the worker says no
    pd.check_button.click()
    qtbot.waitUntil(lambda: "Checked" in pd.status.text() or "failed" in pd.status.text(),
                    timeout=WAIT_MS)
    assert not pd.continue_button.isEnabled()
    assert pd.table.item(1, 2).text() != "found"
    pd.choice_widget(1).setEditText(lab["worker_copy"])
    pd.check_button.click()
    qtbot.waitUntil(pd.continue_button.isEnabled, timeout=WAIT_MS)
    assert pd.table.item(1, 2).text() == "found"
    with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
        pd.continue_button.click()
    result = runs[0].results[-1]
    assert result.ok, result
    assert dict(result.path_mappings) == {lab["client_video"]: lab["worker_copy"]}
    assert not dialog.isVisible()


def test_two_model_pipeline_trains_one_after_another(qtbot: Any, lab: Any) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    runs: list[Any] = []
    accepted: list[Any] = []
    _dialog, att = attached(qtbot, labels, lab["worker"], pipeline="top",
                           on_run=watching(runs, []))
    att.button.click()
    runs[0].accepted.connect(accepted.append)
    assert [m.name for m in runs[0].models] == ["centroid", "centered_instance"]
    with qtbot.waitSignal(runs[0].finished, timeout=2 * WAIT_MS):
        pass
    assert [r.ok for r in runs[0].results] == [True, True], runs[0].results
    assert len({a.job_id for a in accepted}) == 2
    assert len(lab["worker"].jobs()) == 2


def test_cancel_in_lossviewer_cancels_the_remote_job(qtbot: Any, lab: Any) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    runs: list[Any] = []
    _dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, []))
    att.overrides["max_epochs"] = 500  # long enough to cancel
    att.button.click()
    run = runs[0]
    qtbot.waitUntil(lambda: run.viewer.isVisible() and run.viewer.is_timer_running,
                    timeout=WAIT_MS)
    run.viewer._cancel()  # LossViewer's Cancel button only sets .canceled
    with qtbot.waitSignal(run.finished, timeout=WAIT_MS):
        pass
    result = run.results[-1]
    assert not result.ok and result.job_id, result
    assert result.completion is None
    assert result.failure is not None and result.failure.code == "cancelled"  # by the worker
    assert run.popups == []  # the user cancelled: no failure popup


def test_stop_in_lossviewer_stops_early_and_keeps_the_checkpoint(qtbot: Any, lab: Any) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    runs: list[Any] = []
    _dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, []))
    att.overrides["max_epochs"] = 500
    att.button.click()
    run = runs[0]
    qtbot.waitUntil(lambda: run.viewer.isVisible() and run.viewer.last_epoch_val_loss
                    is not None, timeout=WAIT_MS)
    run.viewer.stop_button.click()  # sends {"command": "stop"} on LossViewer's controller
    with qtbot.waitSignal(run.finished, timeout=WAIT_MS):
        pass
    result = run.results[-1]
    assert result.ok and result.completion is not None, result
    assert result.completion.stopped_early
    assert any(o.endswith("best.ckpt") for o in result.completion.outputs), result.completion


def test_rejected_job_pops_up_the_reasons_field_by_field(qtbot: Any, lab: Any) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    outside = make_labels(lab["tmp"] / "elsewhere" / "val.slp", [lab["video"]])
    runs: list[Any] = []
    _dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, []))
    att.overrides["val_labels_path"] = str(outside)
    att.button.click()
    with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
        pass
    [box] = runs[0].popups
    assert box.objectName() == "remoteRejectedBox" and box.isVisible()
    assert "val_labels_path" in box.text(), box.text()
    assert lab["worker"].jobs() == []
    shot(box, lab["tmp"], "rejected")


def test_failed_training_pops_up_log_tail_run_folder_and_resume(
    qtbot: Any, lab: Any
) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    runs: list[Any] = []
    watch = watching(runs, [])

    def failing(run: Any) -> None:  # SLEAP's config, plus the stand-in trainer's fail switch
        run.models = [dataclasses.replace(m, extra_yaml="fake:\n  mode: fail\n")
                      for m in run.models]
        watch(run)

    dialog, att = attached(qtbot, labels, lab["worker"], on_run=failing)
    att.button.click()
    with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
        pass
    [box] = runs[0].popups
    assert box.objectName() == "remoteFailedBox"
    text = box.text()
    assert "Last lines of the log" in text and "Run folder on the worker" in text, text
    assert "--resume" in text
    assert not dialog.isVisible()  # it had been accepted
    shot(box, lab["tmp"], "failed")


def test_could_not_connect_returns_to_the_dialog_with_the_message(qtbot: Any, lab: Any) -> None:
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    runs: list[Any] = []

    async def refused() -> Any:
        raise ConnectionRefusedError("no worker here")

    from sleap_rtc.gui.plugin import attach

    dialog = learning_dialog(labels)
    qtbot.addWidget(dialog)
    att = attach(dialog, on_run=watching(runs, []),
                 make_flow=lambda **kw: PresubmissionFlow(connect=refused, timeouts=FAST, **kw))
    dialog.show()
    att.button.click()
    with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
        pass
    [box] = runs[0].popups
    assert box.objectName() == "remoteErrorBox" and box.parent() is dialog
    assert "Could not connect" in box.text()
    assert dialog.isVisible()
    assert "Could not connect" in att.panel.message.text()


def test_apply_to_all_fills_every_row_then_the_worker_confirms(qtbot: Any, lab: Any) -> None:
    laptop = lab["tmp"] / "laptop" / "data"
    mine = [str(laptop / f"{n}.h5") for n in ("c", "d")]
    labels = make_labels(lab["mnt"] / "project" / "labels.slp", mine)
    shown: list[Any] = []
    runs: list[Any] = []
    _dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, shown))
    att.button.click()
    qtbot.waitUntil(lambda: bool(shown), timeout=WAIT_MS)
    pd = shown[0]
    assert pd.rules.count() >= 1, "the worker proposed no folder rule"
    for row in (1, 2):  # clear the pre-filled suggestions: the rule must fill them
        pd.choice_widget(row).setEditText("")
    assert pd.apply_rule() == 2
    assert [pd.choice_widget(r).currentText() for r in (1, 2)] == [
        str(lab["mnt"] / "shared" / "data" / f"{n}.h5") for n in ("c", "d")]
    pd.check_button.click()
    qtbot.waitUntil(pd.continue_button.isEnabled, timeout=WAIT_MS)
    shot(pd, lab["tmp"], "path_dialog_resolved")
    with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
        pd.continue_button.click()
    result = runs[0].results[-1]
    assert result.ok, result
    assert dict(result.prefix_mappings) == {str(laptop): str(lab["mnt"] / "shared" / "data")}


class ProcessWorker:
    """The real worker in its own process (``support/tcp_worker.py``), over loopback TCP:
    nothing of it shares this process's GIL, as with a remote worker."""

    def __init__(self, mnt: Path, state: Path) -> None:
        port_file = state.parent / "port"
        state.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, str(SUPPORT / "tcp_worker.py"), str(mnt), str(state),
             str(port_file), json.dumps(FAKE)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert self.proc.poll() is None, "the worker process died"
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    async def connect(self) -> StreamLink:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return StreamLink(reader, writer)

    def make_flow(self, **kw: Any) -> PresubmissionFlow:
        return PresubmissionFlow(connect=self.connect, timeouts=FAST, **kw)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_the_gui_thread_is_never_blocked_by_the_flow_during_a_whole_run(
    qtbot: Any, tmp_path: Path
) -> None:
    """The longest gap between 5 ms timer ticks, click to the last result, is printed.

    The assertion is a freeze detector, not a timing bar (CI runs beside real training):
    a flow step on the Qt thread (a network wait, a path check, a submit) stalls it for
    most of a second or more; measured here, the longest stall was 5.5-94 ms.

    SLEAP's own LossViewer work (make, reset, show, its plotting) is timed apart;
    sleap-nn is imported first (a one-off of the first click, reported by the test
    log of an earlier test, not a stall of the run)."""
    pytest.importorskip("sleap_nn.config.training_job_config")
    from qtpy import QtCore

    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "data" / "a.h5")
    labels = make_labels(mnt / "project" / "labels.slp", [video])
    worker = ProcessWorker(mnt, tmp_path / "state")
    try:
        runs: list[Any] = []
        _dialog, att = attached(qtbot, labels, worker, on_run=watching(runs, []))  # type: ignore[arg-type]
        ticks: list[float] = []
        timer = QtCore.QTimer()
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start(5)
        qtbot.wait(50)
        clicked = [time.perf_counter()]
        att.button.click()
        clicked.append(time.perf_counter())
        time_plotting(runs[0].viewer, runs[0].sleap_calls)
        with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
            pass
        timer.stop()
    finally:
        worker.close()
    assert runs[0].results[-1].ok, runs[0].results
    sleap = runs[0].sleap_calls  # SLEAP's own LossViewer: make, reset, show
    assert sleap, "the LossViewer calls were not timed"

    def in_sleap(a: float, b: float) -> bool:
        return any(s < b and a < e for s, e in sleap)

    gaps = [(b - a, in_sleap(a, b)) for a, b in itertools.pairwise(ticks)]
    ours = max(g for g, s in gaps if not s)
    at = next(a - ticks[0] for (a, b), (g, s) in zip(itertools.pairwise(ticks), gaps,
                                                     strict=True) if g == ours and not s)
    theirs = max((g for g, s in gaps if s), default=0.0)
    print(f"GUI thread: {len(ticks)} ticks over {ticks[-1] - ticks[0]:.2f} s; longest stall "
          f"{ours * 1000:.1f} ms outside SLEAP's LossViewer, {theirs * 1000:.1f} ms inside "
          f"(its {len(sleap)} calls, longest {max(e - s for s, e in sleap) * 1000:.0f} ms); "
          f"worst at {at:.2f} s, click at {clicked[0] - ticks[0]:.2f}-"
          f"{clicked[1] - ticks[0]:.2f} s")
    assert ours < 1.0, f"the GUI thread stalled {ours * 1000:.0f} ms: a flow step ran on it"


def test_sleap_main_window_training_dialog_gets_run_remotely(qtbot: Any, lab: Any) -> None:
    """SLEAP's own menu path: MainWindow._show_learning_dialog makes the dialog itself."""
    from qtpy import QtWidgets
    from sleap.gui.app import MainWindow

    from sleap_rtc.gui.plugin import install

    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["video"]])
    install(QtWidgets.QApplication.instance())
    window = MainWindow(labels_path=str(labels), no_usage_data=True)
    qtbot.addWidget(window)
    window._show_learning_dialog("training")
    dialogs = [w for w in QtWidgets.QApplication.topLevelWidgets()
               if type(w).__name__ == "LearningDialog" and w.isVisible()]
    assert dialogs, "SLEAP showed no training dialog"
    qtbot.waitUntil(lambda: dialogs[0].findChild(QtWidgets.QPushButton, "runRemotelyButton")
                    is not None, timeout=5000)
    button = dialogs[0].findChild(QtWidgets.QPushButton, "runRemotelyButton")
    assert button.isEnabled() == dialogs[0].run_button.isEnabled()
    dialogs[0].close()


def test_a_dialog_without_the_hook_points_gets_nothing_and_a_warning(qtbot: Any) -> None:
    from qtpy import QtWidgets

    from sleap_rtc.gui.plugin import attach

    class LearningDialog(QtWidgets.QDialog):  # a SLEAP that renamed run_button
        labels_filename = "x.slp"

    dialog = LearningDialog()
    qtbot.addWidget(dialog)
    with pytest.warns(RuntimeWarning, match="run_button"):
        assert attach(dialog) is None
    assert dialog.findChild(QtWidgets.QPushButton, "runRemotelyButton") is None


@pytest.mark.parametrize("remember", [True, False])
def test_remember_these_rules_decides_whether_the_rule_is_saved(
    qtbot: Any, lab: Any, remember: bool
) -> None:
    from sleap_rtc.client.resolve import PrefixStore

    laptop = lab["tmp"] / "laptop" / "data"
    labels = make_labels(lab["mnt"] / "project" / "labels.slp",
                         [str(laptop / "c.h5"), str(laptop / "d.h5")])
    store = PrefixStore(lab["tmp"] / "rules.json")
    shown: list[Any] = []
    runs: list[Any] = []
    _dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, shown),
                           store=store)
    att.button.click()
    qtbot.waitUntil(lambda: bool(shown), timeout=WAIT_MS)
    pd = shown[0]
    pd.remember.setChecked(remember)
    assert pd.apply_rule() == 2
    pd.check_button.click()
    qtbot.waitUntil(pd.continue_button.isEnabled, timeout=WAIT_MS)
    with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
        pd.continue_button.click()
    assert runs[0].results[-1].ok
    saved = store.load("gpu-1")
    assert (saved == {str(laptop): str(lab["mnt"] / "shared" / "data")}) is remember, saved


def test_the_panel_flow_uses_the_client_settings_and_the_chosen_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an injected connection, Run Remotely builds the WebRTC flow of the panel's
    room and worker (nothing connects until it runs)."""
    from sleap_rtc.gui.plugin import settings_flow

    monkeypatch.setenv("SLEAP_RTC_CONFIG_DIR", str(tmp_path / "config"))
    calls: list[Any] = []
    flow = settings_flow("lab", "gpu-1")(resolver=None, store=None, on_accepted=calls.append)
    assert isinstance(flow, PresubmissionFlow)
    assert flow.worker_id == "gpu-1"
    assert flow.on_accepted is not None and calls == []


def test_browse_picks_a_file_on_the_worker_then_check_finds_it(qtbot: Any, lab: Any) -> None:
    from sleap_rtc.gui.pathdialog import BROWSE_UNAVAILABLE, PathResolutionDialog

    labels = make_labels(lab["mnt"] / "project" / "labels.slp", [lab["client_video"]])
    shown: list[Any] = []
    runs: list[Any] = []
    _dialog, att = attached(qtbot, labels, lab["worker"], on_run=watching(runs, shown))
    att.button.click()
    qtbot.waitUntil(lambda: bool(shown), timeout=WAIT_MS)
    pd = shown[0]
    pd.choice_widget(1).setEditText("")  # no suggestion kept: the browser starts at the mounts
    assert pd.browse_button.isEnabled() and pd.browse_button.objectName() == "browseButton"
    pd.browse_button.click()
    browser = pd.browser
    assert browser is not None and browser.isVisible()

    def open_entry(name: str) -> None:
        qtbot.waitUntil(lambda: browser.item_named(name) is not None, timeout=WAIT_MS)
        browser.entries.itemDoubleClicked.emit(browser.item_named(name))

    open_entry(str(lab["mnt"].resolve()) + "/")  # the mount root
    open_entry("shared/")
    open_entry("data/")
    qtbot.waitUntil(lambda: browser.item_named("b.h5") is not None, timeout=WAIT_MS)
    assert browser.item_named("d.h5") is not None and "of 3 entries" in browser.status.text()
    shot(browser, lab["tmp"], "worker_browser")
    open_entry("b.h5")
    qtbot.waitUntil(lambda: not browser.isVisible(), timeout=WAIT_MS)
    worker_copy = str(Path(lab["worker_copy"]).resolve())
    assert pd.choice_widget(1).currentText() == worker_copy
    assert pd.table.item(1, 2).text() != "found"  # picking is not finding: the worker decides
    assert not pd.continue_button.isEnabled()
    pd.check_button.click()
    qtbot.waitUntil(pd.continue_button.isEnabled, timeout=WAIT_MS)
    assert pd.table.item(1, 2).text() == "found"

    class NoBrowse:
        available = False

        def __call__(self, path: str, page_token: str) -> Any:
            raise AssertionError("never called")

    for lister in (None, NoBrowse()):
        other = PathResolutionDialog(pd.model.view, lister=lister)  # type: ignore[arg-type]
        qtbot.addWidget(other)
        assert not other.browse_button.isEnabled()
        assert other.browse_button.toolTip() == BROWSE_UNAVAILABLE
    with qtbot.waitSignal(runs[0].finished, timeout=WAIT_MS):
        pd.continue_button.click()
    result = runs[0].results[-1]
    assert result.ok, result
    assert dict(result.path_mappings) == {lab["client_video"]: worker_copy}


def test_the_panel_lists_the_rooms_workers_off_the_gui_thread(
    qtbot: Any, tmp_path: Path
) -> None:
    from sleap_rtc.gui.plugin import attach
    from sleap_rtc.gui.workerlist import no_worker_hint
    from sleap_rtc.signaling.client import PeerInfo

    video = make_h5_video(tmp_path / "mnt" / "a.h5")
    labels = make_labels(tmp_path / "mnt" / "labels.slp", [video])
    rooms = {
        "lab": [PeerInfo("peer-a1", "worker", {"properties": {"name": "gpu-1", "status": "busy",
                                                            "gpu": "NVIDIA H200"}}),
                PeerInfo("peer-b2", "worker", {"properties": {"name": "gpu-2",
                                                            "status": "available"}})],
        "empty": [],
    }
    asked: list[str] = []

    async def discover(room: str) -> list[PeerInfo]:
        asked.append(room)
        await asyncio.sleep(0.5)  # a slow signaling server: the GUI keeps running
        if room == "down":
            raise ConnectionRefusedError("the signaling server is unreachable")
        return rooms[room]

    dialog = learning_dialog(labels)
    qtbot.addWidget(dialog)
    att = attach(dialog, make_flow=lambda **kw: None, discover=discover)  # type: ignore[arg-type]
    assert att is not None
    panel = att.panel
    panel.room.setText("lab")
    panel.worker.setText("peer-b2")
    began = time.perf_counter()
    panel.refresh()
    assert time.perf_counter() - began < 0.1  # returns at once; the listing runs elsewhere
    assert not panel.refresh_button.isEnabled()
    qtbot.waitUntil(lambda: len(panel.peers) == 2, timeout=WAIT_MS)
    texts = [panel.workers.itemText(i) for i in range(panel.workers.count())]
    assert texts == ["gpu-1 — busy, NVIDIA H200", "gpu-2 — available, no GPU reported"]
    assert panel.workers.currentIndex() == 1 and not panel.hint.isVisible()
    panel.workers.activated.emit(0)
    assert panel.worker.text() == "gpu-1"  # the name `sleap-rtc workers` shows
    assert panel.settings.value("worker") == "gpu-1"
    dialog.show()
    shot(panel, tmp_path, "remote_panel")
    for room, expected in (("empty", "sleap-rtc worker --server"),
                           ("down", "Could not list the room's workers")):
        panel.room.setText(room)
        panel.refresh()
        qtbot.waitUntil(lambda: panel.refresh_button.isEnabled(), timeout=WAIT_MS)
        assert panel.peers == [] and panel.hint.isVisible()
        assert expected in panel.hint.text(), panel.hint.text()
    assert "--room empty" in no_worker_hint("empty")
    assert asked[1:] == ["lab", "empty", "down"]  # asked[0]: the refresh when attached


def test_panel_log_in_runs_off_the_gui_thread_and_can_be_cancelled(qtbot: Any) -> None:
    from sleap_rtc.client.login import LoginError
    from sleap_rtc.gui.loginctl import LoginControl
    from sleap_rtc.gui.plugin import RemotePanel

    behaviour = {"mode": "ok"}
    rooms: list[str] = []
    forgotten: list[str] = []

    async def fake_login(room: str) -> None:
        rooms.append(room)
        await asyncio.sleep(0.3)
        if behaviour["mode"] == "refused":
            raise LoginError("denied", "the server refused the login: access_denied")
        if behaviour["mode"] == "abandoned":
            await asyncio.sleep(3600)  # nobody finishes the browser page

    def fake_logout(room: str) -> bool:
        forgotten.append(room)
        return True

    async def no_workers(room: str) -> list[Any]:
        return []

    panel = RemotePanel(discover=no_workers,
                        login=LoginControl(login=fake_login, logout=fake_logout))
    qtbot.addWidget(panel)
    panel.room.setText("lab")
    for mode, expected in (("ok", "logged in"),
                           ("refused", "Login required. Please try again."),
                           ("abandoned", "login cancelled")):
        behaviour["mode"] = mode
        began = time.perf_counter()
        panel.login_button.click()
        assert time.perf_counter() - began < 0.1  # the GUI thread never waits on the login
        assert panel.login_button.text() == "Cancel login"
        if mode == "abandoned":
            qtbot.wait(400)
            began = time.perf_counter()
            panel.login_button.click()  # "Cancel login"
        qtbot.waitUntil(lambda: panel.login_button.text() == "Log in", timeout=WAIT_MS)
        assert panel.login.text().startswith(expected), (mode, panel.login.text())
        if mode == "abandoned":
            assert time.perf_counter() - began < 2.0
    assert rooms == ["lab", "lab", "lab"]
    panel.logout_button.click()
    assert forgotten == ["lab"] and panel.login.text() == "logged out"


def test_lossviewer_title_follows_the_batch_scheduler_while_the_job_waits(qtbot: Any) -> None:
    """A job queued in Slurm: SLEAP's LossViewer says so in its title (set on the Qt thread)."""
    import threading
    import types

    from sleap_rtc.client.events import LogReceived
    from sleap_rtc.gui.progress import make_lossviewer
    from sleap_rtc.gui.remote import SchedulerTitle
    from sleap_rtc.gui.threads import GuiCall
    from sleap_rtc_proto.v1 import progress_pb2, scheduler_pb2

    viewer = make_lossviewer()
    qtbot.addWidget(viewer)
    run = types.SimpleNamespace(viewer=viewer, gui=GuiCall(), _sleap=lambda what: what())
    sink = SchedulerTitle(run)  # type: ignore[arg-type]
    line = "queued in Slurm as job 12: waiting (Resources)"
    log = progress_pb2.JobLog(job_id="j", lines=[line])
    log.scheduler.CopyFrom(scheduler_pb2.SchedulerJob(system="slurm", id="12", state="PENDING"))
    plain = progress_pb2.JobLog(job_id="j", lines=["trainer chatter"])
    worker = threading.Thread(  # the flow's thread, as in a real run
        target=lambda: (sink.handle(LogReceived(log=log)), sink.handle(LogReceived(log=plain)))
    )
    worker.start()
    worker.join(5)
    qtbot.waitUntil(lambda: viewer.canvas.axes.get_title() == line, timeout=5000)
