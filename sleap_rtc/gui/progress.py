"""Progress in SLEAP's own LossViewer: created before submit, reset per model.

SLEAP's local training (``sleap.gui.learning.runners.run_gui_training``) makes a
``LossViewer(zmq_ports=...)``, reads the ports it really bound back from
``win.zmq_ports``, calls ``win.reset(what=...)`` per model and polls
``win.canceled``. We do the same: the flow's
:class:`~sleap_rtc.client.lossviewer.LossViewerBridge` connects to those ports
(so LossViewer's Stop reaches the flow as a stop request, checkpoint kept), and
:class:`CancelWatch` polls ``canceled`` (LossViewer's Cancel sends nothing)
and turns it into a cancel of the remote job.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from qtpy import QtCore

__all__ = ["CancelWatch", "free_port", "make_lossviewer", "viewer_ports"]

#: How often LossViewer's ``canceled`` flag is polled (ms).
CANCEL_POLL_MS = 100


def free_port() -> int:
    """A loopback port the OS says is free now (LossViewer re-checks it when binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_lossviewer(parent: Any = None) -> Any:
    """A SLEAP LossViewer on free ports (read the bound ones back with :func:`viewer_ports`).

    SLEAP starts from 9001 / 9000 and gives up after 10 busy ports; a second
    run while a first LossViewer is still open would collide, so free ports
    are picked first.
    """
    from sleap.gui.widgets.monitor import LossViewer  # type: ignore[import-untyped, import-not-found, unused-ignore]

    ports = {"publish_port": free_port(), "controller_port": free_port()}
    win = LossViewer(zmq_ports=ports, parent=parent)
    win.setObjectName("remoteLossViewer")
    win.resize(600, 400)
    return win


def viewer_ports(win: Any) -> tuple[int, int | None]:
    """The (publish, controller) ports the LossViewer really bound."""
    ports = win.zmq_ports
    controller = ports.get("controller_port") if win.zmq_ctrl is not None else None
    return int(ports["publish_port"]), None if controller is None else int(controller)


class CancelWatch(QtCore.QObject):
    """Polls a LossViewer's ``canceled`` flag; calls ``on_cancel`` once when it is set."""

    def __init__(self, win: Any, on_cancel: Callable[[], Any]) -> None:
        super().__init__(win)
        self.win = win
        self.on_cancel = on_cancel
        self.fired = False
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self._poll)
        self.timer.start(CANCEL_POLL_MS)

    def _poll(self) -> None:
        if not self.fired and bool(getattr(self.win, "canceled", False)):
            self.fired = True
            self.timer.stop()
            self.on_cancel()

    def stop(self) -> None:
        self.timer.stop()
