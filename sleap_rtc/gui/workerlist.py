"""The remote panel's worker list: discovery off the Qt thread.

:class:`WorkerDiscovery` runs a :data:`Discover` coroutine (the room's workers,
as ``sleap-rtc workers`` lists them) on a short-lived daemon thread with its own
event loop and hands the answer to the Qt thread through a queued signal, so a
slow or unreachable signaling server never blocks the GUI. A newer refresh
supersedes an older one still in flight.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from qtpy import QtCore

from sleap_rtc.signaling.client import PeerInfo

__all__ = ["Discover", "WorkerDiscovery", "no_worker_hint", "settings_discover", "worker_text"]

#: room ("" = the client settings' room) -> the workers registered there.
Discover = Callable[[str], Awaitable[list[PeerInfo]]]


async def settings_discover(room: str) -> list[PeerInfo]:
    """The production discovery: client settings, the stored token, the signaling server."""
    from sleap_rtc.auth.store import resolve_token
    from sleap_rtc.client.wiring import list_workers
    from sleap_rtc.config.client import load, with_overrides

    settings = with_overrides(load(), room=room or None)
    token = resolve_token(token_file=settings.token_file, server=settings.server) or ""
    return await list_workers(settings, token)


def worker_text(peer: PeerInfo) -> str:
    """One line of the list: name, status (available / busy) and GPU."""
    gpu = peer.properties.get("gpu") or "no GPU reported"
    return f"{peer.name} — {peer.status or 'status unknown'}, {gpu}"


def no_worker_hint(room: str) -> str:
    """What to run when the room has no worker (the README's set-up commands)."""
    shown = room or "default"
    return (
        f"No worker is registered in room {shown!r}. On the GPU machine, start one:\n"
        f"  sleap-rtc worker --server ws://lab-server:8765 --room {shown} "
        f"--credential-file ~/.config/sleap-rtc/{shown}.key --mount lab=/mnt/lab-share\n"
        "then press Refresh (`sleap-rtc workers` lists the room's workers)."
    )


class WorkerDiscovery(QtCore.QObject):
    """Refreshes the worker list off the Qt thread.

    Signals:
        listed(object): a list of PeerInfo, or the Exception discovery raised.
    """

    listed = QtCore.Signal(object)  # type: ignore[attr-defined]
    _answer = QtCore.Signal(int, object)  # type: ignore[attr-defined]

    def __init__(self, discover: Discover, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.discover = discover
        self._latest = 0
        self.busy = False
        self._answer.connect(self._on_answer, QtCore.Qt.ConnectionType.QueuedConnection)

    def refresh(self, room: str, timeout_s: float = 20.0) -> None:
        """Start a discovery of ``room`` (returns at once)."""
        self._latest += 1
        request = self._latest
        self.busy = True

        def main() -> None:
            answer: Any
            try:
                answer = asyncio.run(asyncio.wait_for(self.discover(room), timeout_s))
            except BaseException as exc:  # shown in the panel
                answer = exc
            self._answer.emit(request, answer)

        threading.Thread(target=main, name="sleap-rtc-discovery", daemon=True).start()

    def _on_answer(self, request: int, answer: object) -> None:
        if request != self._latest:
            return  # superseded by a newer refresh
        self.busy = False
        self.listed.emit(answer)
