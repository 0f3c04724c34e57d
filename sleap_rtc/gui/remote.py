"""One "Run Remotely" from SLEAP's training dialog, model after model, off the Qt thread.

:class:`RemoteRun` follows the seed: each model's config built as SLEAP's
``copy()`` builds it (:func:`~sleap_rtc.gui.configs.dialog_configs`), then per
model one :class:`~sleap_rtc.client.flow.PresubmissionFlow` run (login check,
one connection, path check, :class:`~sleap_rtc.gui.pathdialog.QtResolver` when
something is missing, submit, progress). SLEAP's LossViewer is made before the
first submit and its real ports go to the flow; it is reset per model. The
training dialog closes on the first JobAccepted. Presubmission errors show
over the (still open) training dialog with the flow's message; errors after
submission are popups (rejection reasons field by field; failures with the log
tail, the run folder and a resume command).

The flow runs on a :class:`~sleap_rtc.gui.threads.FlowThread`; everything it
needs from Qt goes through a :class:`~sleap_rtc.gui.threads.GuiCall`.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from qtpy import QtCore, QtWidgets

from sleap_rtc.client.events import LogReceived
from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.lossviewer import LossViewerBridge
from sleap_rtc.client.pathrequest import path_check_request
from sleap_rtc.client.resolve import PrefixStore
from sleap_rtc.client.results import AcceptedView, FlowResult, FlowStatus
from sleap_rtc.client.views import CheckView, Resolution
from sleap_rtc.gui.configs import ModelConfig
from sleap_rtc.gui.pathdialog import Checker, PathResolutionDialog, QtResolver
from sleap_rtc.gui.progress import CancelWatch, make_lossviewer, viewer_ports
from sleap_rtc.gui.threads import FlowThread, GuiCall
from sleap_rtc_proto.bodies import Feature
from sleap_rtc_proto.v1 import job_pb2, paths_pb2

__all__ = ["FlowFactory", "GatedStore", "RemoteRun", "failure_text", "rejection_text"]

#: Stages that end before anything was submitted.
PRESUBMISSION = ("config", "auth", "connect", "check", "resolve")


class FlowFactory(Protocol):
    """Makes the flow for one model (the panel's room/worker, or a test's injected link)."""

    def __call__(self, *, resolver: QtResolver, store: PrefixStore | None,
                 on_accepted: Callable[[AcceptedView], Any]) -> PresubmissionFlow: ...


class GatedStore(PrefixStore):
    """Saved prefix rules that are only written when the user kept "remember these rules"."""

    def __init__(self, inner: PrefixStore, remember: Callable[[], bool]) -> None:
        super().__init__(inner.path)
        self._wanted = remember

    def remember(self, prefixes: Mapping[str, str], worker_id: str = "") -> None:
        if self._wanted():
            super().remember(prefixes, worker_id)


def rejection_text(result: FlowResult) -> str:
    lines = [result.message] + [f"• {v.field}: {v.message}" for v in result.violations]
    return "\n".join(lines)


def failure_text(result: FlowResult, config_hint: str = "config.yaml") -> str:
    lines = [result.message]
    failure = result.failure
    if failure is not None:
        lines.append(f"{failure.code}: {failure.message}")
        if failure.log_tail:
            lines += ["", "Last lines of the log:", *failure.log_tail[-15:]]
    if result.accepted is not None and result.accepted.run_dir:
        run_dir = result.accepted.run_dir
        lines += ["", f"Run folder on the worker: {run_dir}", "Resume with:",
                  f"sleap-rtc train {shlex.quote(config_hint)} {shlex.quote(result.labels_path)} "
                  f"--resume {shlex.quote(run_dir + '/best.ckpt')}"]
    return "\n".join(lines)


class _FlowLister:
    """Browse's lister: the flow's open connection, on the flow's thread."""

    def __init__(self, run: RemoteRun, flow: PresubmissionFlow) -> None:
        self.run, self.flow = run, flow

    @property
    def available(self) -> bool:
        conn = self.flow.connection
        ack = conn.session.hello_ack if conn is not None else None
        return ack is not None and Feature.BROWSE in ack.features

    def __call__(self, path: str, page_token: str) -> Any:
        assert self.run.flow_thread is not None
        return self.run.flow_thread.submit(self.run._list(self.flow, path, page_token))


def _remember_of(resolver: QtResolver) -> Callable[[], bool]:
    return lambda: resolver.remember


class SchedulerTitle:
    """A progress sink: while a job waits in (or moves through) the worker's batch
    scheduler, LossViewer's title says so ("queued in Slurm as job 12: waiting
    (Resources)"); LossViewer retitles itself once training reports."""

    def __init__(self, run: RemoteRun) -> None:
        self.run = run

    def handle(self, event: Any) -> None:
        if isinstance(event, LogReceived) and event.log.HasField("scheduler") and event.log.lines:
            line = event.log.lines[-1]
            viewer = self.run.viewer
            if viewer is not None:
                self.run.gui.submit(lambda: self.run._sleap(lambda: viewer.set_message(line)))


class RemoteRun(QtCore.QObject):
    """A remote run of every model of one training dialog (create on the Qt thread).

    Signals:
        accepted(AcceptedView): a model's job was accepted (the dialog closes on the first).
        finished(list): every model's FlowResult, in order (stops at the first not ok).
    """

    accepted = QtCore.Signal(object)  # type: ignore[attr-defined]
    finished = QtCore.Signal(object)  # type: ignore[attr-defined]
    _done = QtCore.Signal(object)  # type: ignore[attr-defined]

    def __init__(
        self,
        dialog: QtWidgets.QWidget,
        models: Sequence[ModelConfig],
        labels_path: str,
        make_flow: FlowFactory,
        *,
        store: PrefixStore | None = None,
        overrides: Mapping[str, Any] | None = None,
        on_path_dialog: Callable[[PathResolutionDialog], None] | None = None,
    ) -> None:
        super().__init__(dialog)
        self.dialog = dialog
        self.models = list(models)
        self.labels_path = labels_path
        self.make_flow = make_flow
        self.store = store
        self.overrides = dict(overrides or {})
        self.on_path_dialog = on_path_dialog
        self.gui = GuiCall(self)
        self.viewer: Any = None
        self.watch: CancelWatch | None = None
        self.flow_thread: FlowThread | None = None
        self.results: list[FlowResult] = []
        self.popups: list[QtWidgets.QMessageBox] = []
        self.job_ids: list[str] = []
        self.cancelled = False
        #: (start, end) perf_counter times of SLEAP's own LossViewer work on the Qt thread.
        self.sleap_calls: list[tuple[float, float]] = []
        self._flow: PresubmissionFlow | None = None
        self._done.connect(self._finish, QtCore.Qt.ConnectionType.QueuedConnection)

    # ------------------------------------------------------------------ Qt thread

    def _sleap(self, what: Callable[[], Any]) -> Any:
        """Call SLEAP's LossViewer on the Qt thread, noting how long it took."""
        began = time.perf_counter()
        try:
            return what()
        finally:
            self.sleap_calls.append((began, time.perf_counter()))

    def start(self) -> RemoteRun:
        self.viewer = self._sleap(make_lossviewer)
        self.watch = CancelWatch(self.viewer, self.cancel)
        self.flow_thread = FlowThread()
        future = self.flow_thread.submit(self._main(*viewer_ports(self.viewer)))
        future.add_done_callback(self._done.emit)
        return self

    @property
    def running(self) -> bool:
        return self.flow_thread is not None and self.flow_thread.alive

    def cancel(self) -> None:
        """Cancel: no further model starts; the running job is cancelled on the worker."""
        self.cancelled = True
        if self.flow_thread is not None and self.job_ids:
            self.flow_thread.submit(self._cancel_remote(self.job_ids[-1]))

    def _on_accepted(self, view: AcceptedView, index: int) -> None:
        self.job_ids.append(view.job_id)
        if index == 0:
            self.dialog.close()
        self._sleap(self.viewer.show)
        self.accepted.emit(view)

    def _finish(self, future: Any) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.flow_thread is not None:
            self.flow_thread.stop(timeout=0)  # the loop ends by itself; never join on Qt
        try:
            self.results = list(future.result())
        except BaseException as exc:  # never leave the user without an answer
            self.results = [FlowResult(FlowStatus.ERROR, f"Remote training failed: {exc}")]
        last = self.results[-1] if self.results else None
        user_cancelled = (self.cancelled and last is not None and last.failure is not None
                          and last.failure.code == "cancelled")
        if last is not None and last.status is FlowStatus.ERROR and not user_cancelled:
            self._popup(last)
        if not self.job_ids and self.viewer is not None:
            self._sleap(self.viewer.close)
        self.finished.emit(self.results)

    def _popup(self, result: FlowResult) -> None:
        parent = self.dialog if result.stage in PRESUBMISSION and not result.job_id else None
        if result.violations:
            name, title, text = "remoteRejectedBox", "Job rejected", rejection_text(result)
        elif result.failure is not None or result.stage == "progress":
            name, title, text = "remoteFailedBox", "Training failed", failure_text(result)
        else:
            name, title = "remoteErrorBox", "Run Remotely"
            text = "\n".join([result.message, *result.details])
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Warning, title, text,
                                    QtWidgets.QMessageBox.StandardButton.Ok, parent)
        box.setObjectName(name)
        box.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.popups.append(box)
        box.open()  # never exec(): the Qt loop keeps running

    # ------------------------------------------------------------------ flow thread

    async def _main(self, publish_port: int, controller_port: int | None) -> list[FlowResult]:
        results: list[FlowResult] = []
        mappings: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        for index, model in enumerate(self.models):
            if self.cancelled:
                break
            await self.gui.run(lambda: self._sleap(lambda: self.viewer.reset(what="")))
            resolver = QtResolver(self.gui, parent=self.dialog)
            resolver.on_shown = self.on_path_dialog
            store = (None if self.store is None
                     else GatedStore(self.store, _remember_of(resolver)))

            def on_accepted(view: AcceptedView, i: int = index) -> Any:
                return self.gui.run(lambda: self._on_accepted(view, i))

            flow = self.make_flow(resolver=resolver, store=store, on_accepted=on_accepted)
            resolver.checker = self._checker_for(flow)
            resolver.lister = _FlowLister(self, flow)
            bridge = LossViewerBridge(publish_port=publish_port,
                                      controller_port=controller_port,
                                      on_stop=flow.request_stop)
            flow.sinks.append(bridge)
            flow.sinks.append(SchedulerTitle(self))
            self._flow = flow
            try:
                content, _verified = await asyncio.to_thread(model.render)
                result = await flow.run(config_content=content, labels_path=self.labels_path,
                                        path_mappings=mappings, prefix_mappings=prefixes,
                                        **self.overrides)
            finally:
                self._flow = None
                bridge.close()
            results.append(result)
            if not result.ok:
                break
            mappings, prefixes = dict(result.path_mappings), dict(result.prefix_mappings)
        return results

    def _checker_for(self, flow: PresubmissionFlow) -> Checker:
        def check(view: CheckView, resolution: Resolution) -> Any:
            assert self.flow_thread is not None
            return self.flow_thread.submit(self._recheck(flow, view, resolution))

        return check

    async def _recheck(self, flow: PresubmissionFlow, view: CheckView,
                       resolution: Resolution) -> CheckView:
        """An in-place check of the dialog's choices on the flow's open connection."""
        conn = flow.connection
        if conn is None:
            raise RuntimeError("the connection to the worker is closed")
        mappings = {**view.path_mappings, **resolution.path_mappings}
        prefixes = {**view.prefix_mappings, **resolution.prefix_mappings}
        request = path_check_request(self.labels_path, path_mappings=mappings,
                                     prefix_mappings=prefixes)
        answer = await conn.request(request, timeout_s=flow.timeouts.check_s)
        assert isinstance(answer, paths_pb2.PathCheckResult)
        return CheckView.from_result(answer, path_mappings=mappings, prefix_mappings=prefixes,
                                     mounts=conn.session.mounts, attempt=view.attempt,
                                     worker_id=view.worker_id)

    async def _list(self, flow: PresubmissionFlow, path: str,
                    page_token: str) -> paths_pb2.DirectoryList:
        conn = flow.connection
        if conn is None:
            raise RuntimeError("the connection to the worker is closed")
        return await conn.list_directory(path, page_token=page_token,
                                         timeout_s=flow.timeouts.check_s)

    async def _cancel_remote(self, job_id: str) -> None:
        flow = self._flow
        conn = flow.connection if flow is not None else None
        if conn is None:
            return
        await conn.control(job_id, job_pb2.CONTROL_ACTION_CANCEL,
                           timeout_s=flow.timeouts.control_s if flow is not None else None)
