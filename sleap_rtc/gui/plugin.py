"""The hook into an unmodified SLEAP: a "Run Remotely…" button on every training dialog.

``install(app)`` parents an event filter to the application; it sees every
``LearningDialog`` SLEAP shows (SLEAP's MainWindow imports the class inside
``_show_learning_dialog``, so nothing of SLEAP is replaced) and calls
:func:`attach` once per dialog. ``attach(dialog)`` adds the remote panel
(``remotePanel``: room, worker, login state) above SLEAP's buttons and a
**Run Remotely…** button (``runRemotelyButton``) enabled exactly when SLEAP's
Run is. A dialog without the hook points (``run_button``,
``get_every_head_config_data``) gets nothing and a warning says why.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable
from typing import Any

from qtpy import QtCore, QtWidgets

from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.resolve import PrefixStore
from sleap_rtc.client.results import LOGIN_REQUIRED
from sleap_rtc.gui.configs import dialog_configs
from sleap_rtc.gui.loginctl import LoginControl
from sleap_rtc.gui.remote import FlowFactory, RemoteRun
from sleap_rtc.gui.workerlist import (
    Discover,
    WorkerDiscovery,
    no_worker_hint,
    settings_discover,
    worker_text,
)
from sleap_rtc.signaling.client import PeerInfo

log = logging.getLogger(__name__)

__all__ = ["RemotePanel", "attach", "install", "settings_flow"]

#: The attribute that marks a dialog as attached (on the dialog, ours).
_ATTACHED = "_sleap_rtc_remote"
#: Hook points a LearningDialog must have.
HOOK_POINTS = ("run_button", "get_every_head_config_data", "pipeline_form_widget",
               "labels_filename")


def settings_flow(room: str, worker: str) -> FlowFactory:
    """The production flow: client settings, stored login, WebRTC to ``worker`` in ``room``."""

    def make(**kw: Any) -> PresubmissionFlow:
        from sleap_rtc.client.timeouts import FlowTimeouts
        from sleap_rtc.client.wiring import build_flow, stored_login
        from sleap_rtc.config.client import load, with_overrides

        settings = with_overrides(load(), room=room or None, worker=worker or None)
        timeouts = FlowTimeouts()
        return build_flow(settings, stored_login(settings, login_timeout_s=timeouts.login_s),
                          client_name="sleap-rtc gui", worker_id=worker or None,
                          timeouts=timeouts, **kw)

    return make


class RemotePanel(QtWidgets.QGroupBox):
    """Room, worker and login state; choices persist (QSettings)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None,
                 discover: Discover | None = None,
                 login: LoginControl | None = None) -> None:
        super().__init__("Run remotely (sleap-rtc)", parent)
        self.setObjectName("remotePanel")
        self.settings = QtCore.QSettings("sleap-rtc", "gui")
        self.room = QtWidgets.QLineEdit(str(self.settings.value("room", "") or ""))
        self.room.setObjectName("roomEdit")
        self.room.setPlaceholderText("room (default: client settings)")
        self.worker = QtWidgets.QLineEdit(str(self.settings.value("worker", "") or ""))
        self.worker.setObjectName("workerEdit")
        self.worker.setPlaceholderText("worker name or id (sleap-rtc workers)")
        self.login = QtWidgets.QLabel(self._login_text())
        self.login.setObjectName("loginLabel")
        self.message = QtWidgets.QLabel("")
        self.message.setObjectName("remoteMessage")
        self.message.setWordWrap(True)
        self.workers = QtWidgets.QComboBox()
        self.workers.setObjectName("workerList")
        self.workers.setToolTip("The room's workers (status and GPU from discovery).")
        self.workers.activated.connect(self._picked)
        self.refresh_button = QtWidgets.QPushButton("Refresh")
        self.refresh_button.setObjectName("refreshWorkersButton")
        self.refresh_button.clicked.connect(self.refresh)
        self.hint = QtWidgets.QLabel("")
        self.hint.setObjectName("workerHint")
        self.hint.setWordWrap(True)
        self.hint.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint.setVisible(False)
        listing = QtWidgets.QHBoxLayout()
        listing.addWidget(self.workers, 1)
        listing.addWidget(self.refresh_button)
        form = QtWidgets.QFormLayout(self)
        form.addRow("Room:", self.room)
        form.addRow("Worker:", self.worker)
        form.addRow("Workers:", listing)
        form.addRow(self.hint)
        self.login_button = QtWidgets.QPushButton("Log in")
        self.login_button.setObjectName("loginButton")
        self.login_button.setToolTip("Log in to the room in the browser (sleap-rtc login).")
        self.login_button.clicked.connect(self.log_in)
        self.logout_button = QtWidgets.QPushButton("Log out")
        self.logout_button.setObjectName("logoutButton")
        self.logout_button.clicked.connect(self.log_out)
        login_row = QtWidgets.QHBoxLayout()
        login_row.addWidget(self.login, 1)
        login_row.addWidget(self.login_button)
        login_row.addWidget(self.logout_button)
        form.addRow("Login:", login_row)
        form.addRow(self.message)
        self.room.editingFinished.connect(self.save)
        self.worker.editingFinished.connect(self.save)
        self.discovery = WorkerDiscovery(discover or settings_discover, self)
        self.discovery.listed.connect(self._listed)
        #: The workers of the last refresh.
        self.peers: list[PeerInfo] = []
        self.login_control = login or LoginControl()
        self.login_control.setParent(self)
        self.login_control.finished.connect(self._logged_in)

    def log_in(self) -> None:
        """Start the browser login off the Qt thread; pressed again, cancel it."""
        if self.login_control.running:
            self.login_control.cancel()
            return
        self.login.setText("logging in: finish in the browser…")
        self.login_button.setText("Cancel login")
        self.login_control.start(self.room.text().strip())

    def _logged_in(self, outcome: object) -> None:
        self.login_button.setText("Log in")
        if outcome is None:
            self.login.setText("logged in")
        elif isinstance(outcome, asyncio.CancelledError):
            self.login.setText("login cancelled; not logged in")
        else:
            self.login.setText(f"{LOGIN_REQUIRED} ({outcome})")

    def log_out(self) -> None:
        had = self.login_control.logout(self.room.text().strip())
        self.login.setText("logged out" if had else "not logged in (sleap-rtc login)")

    def refresh(self) -> None:
        """List the room's workers off the Qt thread (the answer fills the list)."""
        self.refresh_button.setEnabled(False)
        self.workers.clear()
        self.workers.addItem("Looking for workers…")
        self.discovery.refresh(self.room.text().strip())

    def _listed(self, answer: object) -> None:
        self.refresh_button.setEnabled(True)
        self.workers.clear()
        if isinstance(answer, BaseException):
            self.peers = []
            reason = str(answer) or type(answer).__name__
            self.workers.addItem("(could not list the workers)")
            self.hint.setText(f"Could not list the room's workers: {reason}")
            self.hint.setVisible(True)
            return
        self.peers = list(answer)  # type: ignore[call-overload]
        for peer in self.peers:
            self.workers.addItem(worker_text(peer), peer.name)
        if not self.peers:
            self.workers.addItem("(no worker in this room)")
        self.hint.setText("" if self.peers else no_worker_hint(self.room.text().strip()))
        self.hint.setVisible(not self.peers)
        wanted = self.worker.text().strip()
        names = [p.name for p in self.peers]
        ids = [p.peer_id for p in self.peers]
        if wanted in names or wanted in ids:
            index = names.index(wanted) if wanted in names else ids.index(wanted)
            self.workers.setCurrentIndex(index)

    def _picked(self, index: int) -> None:
        name = self.workers.itemData(index)
        if name:
            self.workers.setCurrentIndex(index)
            self.worker.setText(str(name))
            self.save()

    def save(self) -> None:
        self.settings.setValue("room", self.room.text().strip())
        self.settings.setValue("worker", self.worker.text().strip())

    @staticmethod
    def _login_text() -> str:
        try:
            from sleap_rtc.auth.store import resolve_token

            return "logged in" if resolve_token() else "not logged in (sleap-rtc login)"
        except Exception:  # a missing or unreadable token store reads as not logged in
            return "not logged in (sleap-rtc login)"


class _EnabledMirror(QtCore.QObject):
    """Keeps ``target`` enabled exactly when ``source`` is."""

    def __init__(self, source: QtWidgets.QWidget, target: QtWidgets.QWidget) -> None:
        super().__init__(target)
        self.source, self.target = source, target
        source.installEventFilter(self)
        target.setEnabled(source.isEnabled())

    def eventFilter(self, obj: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if obj is self.source and event.type() == QtCore.QEvent.Type.EnabledChange:
            self.target.setEnabled(self.source.isEnabled())
        return False


class RemoteAttachment(QtCore.QObject):
    """What :func:`attach` added to one dialog."""

    def __init__(self, dialog: Any, make_flow: FlowFactory | None,
                 store: PrefixStore | None, overrides: dict[str, Any],
                 on_run: Callable[[RemoteRun], None] | None,
                 discover: Discover | None = None) -> None:
        super().__init__(dialog)
        self.dialog = dialog
        self.make_flow = make_flow
        self.store = store
        self.overrides = overrides
        self.on_run = on_run
        self.run: RemoteRun | None = None
        self.panel = RemotePanel(dialog, discover)
        self.button = QtWidgets.QPushButton("Run Remotely…")
        self.button.setObjectName("runRemotelyButton")
        self.button.setToolTip("Train on a lab GPU worker through sleap-rtc.")
        self.button.setAutoDefault(False)
        self.button.clicked.connect(self.run_remotely)
        run_button = dialog.run_button
        row = run_button.parentWidget().layout()
        row.insertWidget(row.indexOf(run_button), self.button)
        outer = dialog.layout()
        outer.insertWidget(max(outer.count() - 1, 0), self.panel)
        self.mirror = _EnabledMirror(run_button, self.button)
        self.button.show()  # added while the dialog is being shown: show them with it
        self.panel.show()
        if discover is not None or make_flow is None:  # an injected flow lists nothing by itself
            self.panel.refresh()

    def run_remotely(self) -> RemoteRun | None:
        if self.run is not None and self.run.running:
            self.panel.message.setText("A remote run is already going.")
            return None
        try:
            models = dialog_configs(self.dialog)
        except Exception as exc:  # SLEAP's own form validation: shown in the dialog
            self.panel.message.setText(f"Could not build the training config: {exc}")
            return None
        make = self.make_flow or settings_flow(self.panel.room.text().strip(),
                                               self.panel.worker.text().strip())
        self.panel.save()
        self.panel.message.setText(f"Checking {len(models)} model(s) with the worker…")
        self.run = RemoteRun(self.dialog, models, str(self.dialog.labels_filename), make,
                             store=self.store or PrefixStore(), overrides=self.overrides)
        self.run.finished.connect(self._finished)
        if self.on_run is not None:
            self.on_run(self.run)
        return self.run.start()

    def _finished(self, results: list[Any]) -> None:
        last = results[-1] if results else None
        self.panel.message.setText("" if last is None or last.ok else last.message)


def missing_hook_points(dialog: Any) -> list[str]:
    return [name for name in HOOK_POINTS if not hasattr(dialog, name)]


def attach(dialog: Any, *, make_flow: FlowFactory | None = None,
           store: PrefixStore | None = None, overrides: dict[str, Any] | None = None,
           on_run: Callable[[RemoteRun], None] | None = None,
           discover: Discover | None = None) -> RemoteAttachment | None:
    """Add the remote panel and Run Remotely… to one LearningDialog (once).

    ``make_flow`` replaces the settings-based connection (tests, embedding);
    ``overrides`` go to every model's TrainJobSpec (e.g. ``max_epochs``);
    ``discover`` replaces the panel's worker discovery (the signaling server).
    Returns the attachment, or None when the dialog lacks a hook point (warned).
    """
    existing = getattr(dialog, _ATTACHED, None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    missing = missing_hook_points(dialog)
    if missing or getattr(dialog, "mode", "training") != "training":
        if missing:
            warnings.warn(f"sleap-rtc: this SLEAP training dialog has no {', '.join(missing)}; "
                          "Run Remotely is not added.", RuntimeWarning, stacklevel=2)
        return None
    attachment = RemoteAttachment(dialog, make_flow, store, dict(overrides or {}), on_run,
                                  discover)
    setattr(dialog, _ATTACHED, attachment)
    return attachment


class _ShowFilter(QtCore.QObject):
    def __init__(self, app: QtWidgets.QApplication, kwargs: dict[str, Any]) -> None:
        super().__init__(app)  # parented to the app, or it is garbage-collected
        self.kwargs = kwargs

    def eventFilter(self, obj: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if event.type() == QtCore.QEvent.Type.Show and type(obj).__name__ == "LearningDialog":
            try:
                attach(obj, **self.kwargs)
            except Exception:  # the hook must never break SLEAP's dialog
                log.exception("sleap-rtc: could not add Run Remotely")
        return False


def install(app: QtWidgets.QApplication | None = None, **kwargs: Any) -> QtCore.QObject:
    """Make every LearningDialog this app shows get Run Remotely… (kwargs go to attach)."""
    app = app or QtWidgets.QApplication.instance()  # type: ignore[assignment]
    if app is None:
        raise RuntimeError("sleap_rtc.gui.install needs a QApplication")
    found = app.findChild(_ShowFilter)
    if found is not None:
        return found
    event_filter = _ShowFilter(app, kwargs)
    app.installEventFilter(event_filter)
    return event_filter
