"""PathResolutionDialog: the worker's found and missing paths, fixed in place.

One row per path (labels file, then each video) with the worker's status and
reason, and an editable choice holding the worker's ranked suggestions.
Folder rules (saved and proposed by the worker) fill every matching row with
"Apply to all". **Check on worker** sends the rows' choices to the worker and
redraws the rows from its answer: only the worker's answer marks a row found,
and Continue is enabled only when it found everything. Cancel returns with
nothing submitted. Typing never opens a popup.

:class:`QtResolver` is the flow's resolver (:data:`sleap_rtc.client.resolve.Resolver`):
called on the flow's thread, it shows the dialog on the Qt thread and awaits
the user's answer without blocking either thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import posixpath
from collections.abc import Callable

from qtpy import QtCore, QtWidgets

from sleap_rtc.client.views import CheckView, Resolution
from sleap_rtc.gui.browser import Lister, WorkerBrowser
from sleap_rtc.gui.pathmodel import PathModel, suggestion_text
from sleap_rtc.gui.threads import GuiCall

__all__ = ["Checker", "PathResolutionDialog", "QtResolver"]

#: Re-checks a resolution on the worker (on the flow's thread); gives the new view.
Checker = Callable[[CheckView, Resolution], "concurrent.futures.Future[CheckView]"]

COLUMNS = ("Path", "Original path", "Worker status", "Reason", "Worker path")
BROWSE_UNAVAILABLE = (
    "Browsing the worker's storage needs a worker with the directory listing "
    "request (protocol 1.2); this worker does not offer it. Type a worker path instead."
)


class PathResolutionDialog(QtWidgets.QDialog):
    """The path dialog for one check (updated in place by later checks)."""

    #: Emitted from any thread with a re-check's result (a CheckView or an Exception).
    checked = QtCore.Signal(object)  # type: ignore[attr-defined]

    def __init__(
        self,
        view: CheckView,
        *,
        checker: Checker | None = None,
        lister: Lister | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("pathResolutionDialog")
        self.setWindowTitle("Run Remotely - paths on the worker")
        self.model = PathModel(view)
        self.checker = checker
        self.lister = lister
        #: The storage browser while it is open (tests drive it).
        self.browser: WorkerBrowser | None = None
        #: The mappings of the last check sent from this dialog (what Continue returns).
        self.sent = Resolution()
        #: The user's answer once closed: a Resolution, or None (cancelled).
        self.answer: Resolution | None = None
        self._filling = False
        self.checked.connect(self._on_checked, QtCore.Qt.ConnectionType.QueuedConnection)

        self.summary = QtWidgets.QLabel()
        self.summary.setObjectName("summaryLabel")
        self.summary.setWordWrap(True)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("pathTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.hint = QtWidgets.QLabel()
        self.hint.setObjectName("hintLabel")
        self.hint.setWordWrap(True)

        self.rules = QtWidgets.QComboBox()
        self.rules.setObjectName("rulesCombo")
        self.apply_button = QtWidgets.QPushButton("Apply to all")
        self.apply_button.setObjectName("applyToAllButton")
        self.apply_button.setToolTip("Fill every missing path under the rule's folder.")
        self.apply_button.clicked.connect(self.apply_rule)
        rules_row = QtWidgets.QHBoxLayout()
        rules_row.addWidget(QtWidgets.QLabel("Folder rule:"))
        rules_row.addWidget(self.rules, 1)
        rules_row.addWidget(self.apply_button)

        self.browse_button = QtWidgets.QPushButton("Browse worker…")
        self.browse_button.setObjectName("browseButton")
        self.browse_button.clicked.connect(self.browse)
        self.check_button = QtWidgets.QPushButton("Check on worker")
        self.check_button.setObjectName("checkOnWorkerButton")
        self.check_button.clicked.connect(self.check_on_worker)
        self.remember = QtWidgets.QCheckBox("Remember these rules")
        self.remember.setObjectName("rememberRulesCheck")
        self.remember.setChecked(True)
        self.continue_button = QtWidgets.QPushButton("Continue")
        self.continue_button.setObjectName("continueButton")
        self.continue_button.clicked.connect(self._continue)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.clicked.connect(self.reject)
        self.status = QtWidgets.QLabel()
        self.status.setObjectName("statusLabel")
        buttons = QtWidgets.QHBoxLayout()
        for w in (self.browse_button, self.check_button, self.remember):
            buttons.addWidget(w)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.continue_button)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.hint)
        layout.addLayout(rules_row)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(1100, 380)
        self._fill()

    # ------------------------------------------------------------------ drawing

    def _fill(self) -> None:
        self._filling = True
        model = self.model
        self.table.setRowCount(len(model.rows))
        for i, row in enumerate(model.rows):
            what = "Labels file" if row.kind == "labels" else f"Video {row.index}"
            cells = (what, row.original_path, row.status_text, row.reason)
            for col, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(i, col, item)
            if row.found:
                self.table.removeCellWidget(i, 4)
                self.table.setItem(i, 4, QtWidgets.QTableWidgetItem(row.worker_path))
                continue
            combo = QtWidgets.QComboBox()
            combo.setEditable(True)
            combo.setObjectName(f"choice{i}")
            combo.addItems([suggestion_text(s) for s in row.suggestions])
            combo.setEditText(row.choice)
            combo.setToolTip("A worker path: pick a suggestion or type one.")
            combo.currentTextChanged.connect(lambda text, r=i: self._edited(r, text))
            self.table.setCellWidget(i, 4, combo)
        self.table.resizeColumnsToContents()
        for col, most in ((1, 340), (2, 220), (3, 200)):  # long paths elide; tooltips hold them
            self.table.setColumnWidth(col, min(self.table.columnWidth(col), most))
        self.table.setColumnWidth(4, max(self.table.columnWidth(4), 320))
        self.rules.clear()
        for rule in model.rules:
            origin = "saved" if rule.source == "saved" else f"worker, fixes {len(rule.resolves)}"
            self.rules.addItem(f"{rule.original_prefix} → {rule.worker_prefix} ({origin})",
                               (rule.original_prefix, rule.worker_prefix))
        self.apply_button.setEnabled(bool(model.rules) and bool(model.missing))
        found = sum(r.found for r in model.rows)
        self.summary.setText(f"The worker ({model.view.worker_id or 'worker'}) found {found} of "
                             f"{len(model.rows)} paths (check {model.view.attempt}).")
        lines = [model.all_missing_hint]
        lines += [f"Refused by the worker: {r.original} → {r.worker}: {r.reason}"
                  for r in model.view.refused]
        lines += list(model.view.notes)
        hint = "\n".join(line for line in lines if line)
        self.hint.setText(hint)
        self.hint.setVisible(bool(hint))
        self._filling = False
        self._update_buttons()

    def _update_buttons(self, busy: bool = False) -> None:
        self.continue_button.setEnabled(self.model.can_continue and not busy)
        self.check_button.setEnabled(bool(self.model.missing) and self.checker is not None
                                     and not busy)
        can_browse = self.lister is not None and self.lister.available
        self.browse_button.setEnabled(can_browse and bool(self.model.missing) and not busy)
        self.browse_button.setToolTip(
            "Pick the selected (or first) missing path's file on the worker's storage."
            if can_browse else BROWSE_UNAVAILABLE)

    def _edited(self, row: int, text: str) -> None:
        if self._filling:
            return
        self.model.set_choice(row, text)
        self.status.setText("Edited: press Check on worker to check.")

    def choice_widget(self, row: int) -> QtWidgets.QComboBox | None:
        """The editable choice of ``row`` (None for a found row)."""
        widget = self.table.cellWidget(row, 4)
        return widget if isinstance(widget, QtWidgets.QComboBox) else None

    # ------------------------------------------------------------------ actions

    def apply_rule(self) -> int:
        data = self.rules.currentData()
        if not data:
            return 0
        count = self.model.apply_rule(*data)
        self._fill()
        self.status.setText(f"Rule applied to {count} path(s): press Check on worker.")
        return count

    def browse_row(self) -> int | None:
        """The row Browse fills: the selected missing row, else the first missing one."""
        missing = [i for i, r in enumerate(self.model.rows) if not r.found]
        current = self.table.currentRow()
        return current if current in missing else (missing[0] if missing else None)

    def browse(self) -> None:
        """Open the worker's storage; the picked file becomes the row's choice."""
        row = self.browse_row()
        if self.lister is None or not self.lister.available or row is None:
            return
        choice = self.model.rows[row].choice
        start = posixpath.dirname(choice) if choice.startswith("/") else ""
        browser = WorkerBrowser(self.lister, start, parent=self)
        self.browser = browser

        def picked(code: int) -> None:
            if code == QtWidgets.QDialog.DialogCode.Accepted and browser.chosen:
                self.model.set_choice(row, browser.chosen)
                self._fill()
                self.status.setText(f"Picked {browser.chosen}: press Check on worker.")

        browser.finished.connect(picked)
        browser.open()  # never exec(): the Qt loop keeps running

    def update_view(self, view: CheckView) -> None:
        """The worker's new answer (a later round of the flow, or an in-place check)."""
        self.model.update(view)
        self._fill()

    def check_on_worker(self) -> None:
        """Send the rows' choices to the worker; the answer redraws the rows."""
        if self.checker is None:
            return
        resolution = self.model.resolution()
        combined = Resolution({**self.sent.path_mappings, **resolution.path_mappings},
                              {**self.sent.prefix_mappings, **resolution.prefix_mappings})
        self._update_buttons(busy=True)
        self.status.setText("Checking on the worker…")
        future = self.checker(self.model.view, combined)
        self._pending = combined
        future.add_done_callback(self._checked_future)

    def _checked_future(self, future: concurrent.futures.Future[CheckView]) -> None:
        try:
            self.checked.emit(future.result())
        except BaseException as exc:  # shown, never treated as found
            self.checked.emit(exc)

    def _on_checked(self, answer: object) -> None:
        if isinstance(answer, CheckView):
            self.sent = self._pending
            self.update_view(answer)
            self.status.setText("All paths found on the worker." if self.model.can_continue
                                else "Checked on the worker.")
        else:
            self.status.setText(f"The check failed: {answer}")
            self._update_buttons()

    def _continue(self) -> None:
        if not self.model.can_continue:
            return
        self.answer = self.sent
        self.accept()


class QtResolver:
    """The flow's resolver: a PathResolutionDialog per round of the flow.

    Args:
        gui: runs callables on the Qt thread.
        parent: the dialog's parent widget (SLEAP's training dialog).
        checker: re-checks in place (see :data:`Checker`); None hides nothing but
            disables Check on worker.
    """

    def __init__(self, gui: GuiCall, parent: QtWidgets.QWidget | None = None,
                 checker: Checker | None = None) -> None:
        self.gui = gui
        self.parent = parent
        self.checker = checker
        #: Lists the worker's storage for Browse (None: Browse stays disabled).
        self.lister: Lister | None = None
        self.dialog: PathResolutionDialog | None = None
        #: Called on the Qt thread with each dialog shown (tests, screenshots).
        self.on_shown: Callable[[PathResolutionDialog], None] | None = None

    @property
    def remember(self) -> bool:
        return self.dialog is None or self.dialog.remember.isChecked()

    def _show(self, view: CheckView, done: concurrent.futures.Future[Resolution | None]) -> None:
        dialog = PathResolutionDialog(view, checker=self.checker, lister=self.lister,
                                      parent=self.parent)
        self.dialog = dialog
        def finished(_code: int) -> None:
            if not done.done():
                done.set_result(dialog.answer)

        dialog.finished.connect(finished)
        dialog.open()
        if self.on_shown is not None:
            self.on_shown(dialog)

    async def __call__(self, view: CheckView) -> Resolution | None:
        done: concurrent.futures.Future[Resolution | None] = concurrent.futures.Future()
        await self.gui.run(lambda: self._show(view, done))
        try:
            return await asyncio.wrap_future(done)
        except asyncio.CancelledError:  # the flow ended (e.g. the worker was lost)
            self.gui.submit(self._close)
            raise

    def _close(self) -> None:
        if self.dialog is not None and self.dialog.isVisible():
            self.dialog.reject()
