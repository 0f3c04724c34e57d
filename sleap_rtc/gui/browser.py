"""A small browser of the worker's shared storage (protocol 1.2, feature "browse").

:class:`WorkerBrowser` lists one worker folder at a time through a
:class:`Lister` (the flow's open connection, on the flow's thread): each page
comes back through a queued signal, so the Qt thread never waits on the
network. Double-click a folder to open it, "Up" to go back, "More" for the
next page; picking a file (double-click or "Choose") closes the dialog with
its worker path in :attr:`WorkerBrowser.chosen`.
"""

from __future__ import annotations

import concurrent.futures
import posixpath
from typing import Protocol

from qtpy import QtCore, QtWidgets

from sleap_rtc_proto.v1 import paths_pb2

__all__ = ["Lister", "WorkerBrowser"]

_PATH_ROLE = QtCore.Qt.ItemDataRole.UserRole
_KIND_ROLE = QtCore.Qt.ItemDataRole.UserRole + 1


class Lister(Protocol):
    """Lists worker folders (see ``WorkerConnection.list_directory``)."""

    @property
    def available(self) -> bool:
        """Whether the worker agreed to the ``browse`` feature on this connection."""
        ...

    def __call__(
        self, path: str, page_token: str
    ) -> concurrent.futures.Future[paths_pb2.DirectoryList]: ...


class WorkerBrowser(QtWidgets.QDialog):
    """Pick a file on the worker. ``start`` is the folder shown first ("" = the mounts)."""

    listed = QtCore.Signal(object, object)  # type: ignore[attr-defined]

    def __init__(
        self, lister: Lister, start: str = "", parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("workerBrowser")
        self.setWindowTitle("Browse the worker's storage")
        self.lister = lister
        #: The chosen file's worker path once accepted.
        self.chosen = ""
        self.folder = ""
        self._token = ""
        self._request = 0
        self.listed.connect(self._on_listed, QtCore.Qt.ConnectionType.QueuedConnection)
        self.where = QtWidgets.QLabel()
        self.where.setObjectName("browserPath")
        self.entries = QtWidgets.QListWidget()
        self.entries.setObjectName("browserList")
        self.entries.itemDoubleClicked.connect(self._activated)
        self.status = QtWidgets.QLabel()
        self.status.setObjectName("browserStatus")
        self.status.setWordWrap(True)
        self.up_button = QtWidgets.QPushButton("Up")
        self.up_button.setObjectName("browserUpButton")
        self.up_button.clicked.connect(self.go_up)
        self.more_button = QtWidgets.QPushButton("More")
        self.more_button.setObjectName("browserMoreButton")
        self.more_button.clicked.connect(self.more)
        self.choose_button = QtWidgets.QPushButton("Choose")
        self.choose_button.setObjectName("browserChooseButton")
        self.choose_button.clicked.connect(self._choose)
        cancel = QtWidgets.QPushButton("Cancel")
        cancel.setObjectName("browserCancelButton")
        cancel.clicked.connect(self.reject)
        buttons = QtWidgets.QHBoxLayout()
        for w in (self.up_button, self.more_button):
            buttons.addWidget(w)
        buttons.addStretch(1)
        buttons.addWidget(cancel)
        buttons.addWidget(self.choose_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.where)
        layout.addWidget(self.entries, 1)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(640, 420)
        self.open_folder(start)

    def open_folder(self, path: str) -> None:
        """Show ``path`` ("" = the mount roots) from its first page."""
        self.folder = path
        self.entries.clear()
        self._list("")

    def go_up(self) -> None:
        parent = posixpath.dirname(self.folder.rstrip("/")) if self.folder else ""
        self.open_folder("" if parent == self.folder else parent)

    def more(self) -> None:
        if self._token:
            self._list(self._token)

    def _list(self, token: str) -> None:
        self._request += 1
        request, folder = self._request, self.folder
        self.where.setText(folder or "The worker's shared storage")
        self.status.setText("Listing on the worker…")
        self.more_button.setEnabled(False)
        future = self.lister(folder, token)

        def done(f: concurrent.futures.Future[paths_pb2.DirectoryList]) -> None:
            try:
                self.listed.emit(request, f.result())
            except BaseException as exc:  # shown in the dialog
                self.listed.emit(request, exc)

        future.add_done_callback(done)

    def _on_listed(self, request: int, answer: object) -> None:
        if request != self._request:
            return  # an older listing answered after the user moved on
        if not isinstance(answer, paths_pb2.DirectoryList):
            self.status.setText(f"The worker could not list it: {answer}")
            return
        if answer.path:
            self.folder = answer.path
            self.where.setText(answer.path)
        for entry in answer.entries:
            is_dir = entry.kind == paths_pb2.ENTRY_KIND_DIRECTORY
            item = QtWidgets.QListWidgetItem(entry.name + ("/" if is_dir else ""))
            item.setData(_PATH_ROLE, entry.path)
            item.setData(_KIND_ROLE, "dir" if is_dir else "file")
            item.setToolTip(entry.path)
            self.entries.addItem(item)
        self._token = answer.next_page_token
        self.more_button.setEnabled(bool(self._token))
        self.status.setText(f"{self.entries.count()} of {answer.total} entries.")

    def item_named(self, name: str) -> QtWidgets.QListWidgetItem | None:
        """The shown entry called ``name`` (folders end with "/")."""
        found = self.entries.findItems(name, QtCore.Qt.MatchFlag.MatchExactly)
        return found[0] if found else None

    def _activated(self, item: QtWidgets.QListWidgetItem) -> None:
        if item.data(_KIND_ROLE) == "dir":
            self.open_folder(str(item.data(_PATH_ROLE)))
        else:
            self.chosen = str(item.data(_PATH_ROLE))
            self.accept()

    def _choose(self) -> None:
        item = self.entries.currentItem()
        if item is not None:
            self._activated(item)
