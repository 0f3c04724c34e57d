"""Log in / Log out for the remote panel: the browser login off the Qt thread, cancellable.

:class:`LoginControl` runs a :data:`LoginFn` (by default the browser login of
the client settings' server and the panel's room, bounded by
``FlowTimeouts.login_s``) on a daemon thread with its own event loop; the
answer comes back through a queued signal. :meth:`LoginControl.cancel` cancels
the login task on that loop, so an abandoned browser tab never keeps the
panel waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from qtpy import QtCore

__all__ = ["LoginControl", "LoginFn", "LogoutFn", "settings_login", "settings_logout"]

#: room -> runs the login (raises on failure).
LoginFn = Callable[[str], Awaitable[Any]]
#: room -> forgets the stored token; True when there was one.
LogoutFn = Callable[[str], bool]


async def settings_login(room: str) -> Any:
    """The browser login of the client settings' server for ``room`` (bounded)."""
    from sleap_rtc.client.login import login
    from sleap_rtc.client.timeouts import FlowTimeouts
    from sleap_rtc.config.client import load, with_overrides

    settings = with_overrides(load(), room=room or None)
    return await login(settings.server, room=settings.room, timeout=FlowTimeouts().login_s)


def settings_logout(room: str) -> bool:
    """Forget the token saved for the client settings' server."""
    from sleap_rtc.auth.store import TokenStore
    from sleap_rtc.config.client import load

    return TokenStore().remove(load().server)


class LoginControl(QtCore.QObject):
    """One login at a time, off the Qt thread.

    Signals:
        finished(object): None when the login succeeded, else the Exception
            (``asyncio.CancelledError`` when cancelled).
    """

    finished = QtCore.Signal(object)  # type: ignore[attr-defined]
    _answer = QtCore.Signal(object)  # type: ignore[attr-defined]

    def __init__(
        self,
        login: LoginFn = settings_login,
        logout: LogoutFn = settings_logout,
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._login_fn = login
        self._logout_fn = logout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._answer.connect(self._done, QtCore.Qt.ConnectionType.QueuedConnection)

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self, room: str) -> None:
        """Start the login (returns at once); ``finished`` tells the outcome."""
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._task = None
        self._cancel_requested = False

        async def run() -> Any:
            self._task = asyncio.current_task()
            if self._cancel_requested:  # cancelled before the task existed
                raise asyncio.CancelledError
            return await self._login_fn(room)

        def main() -> None:
            outcome: object = None
            try:
                loop.run_until_complete(run())
            except BaseException as exc:  # shown in the panel
                outcome = exc
            finally:
                loop.close()
            self._answer.emit(outcome)

        threading.Thread(target=main, name="sleap-rtc-login", daemon=True).start()

    def cancel(self) -> None:
        """Give up the login in progress (from the Qt thread)."""
        self._cancel_requested = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            # RuntimeError: the loop just closed, the login ended by itself.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    def logout(self, room: str) -> bool:
        return self._logout_fn(room)

    def _done(self, outcome: object) -> None:
        self._loop = None
        self._task = None
        self.finished.emit(outcome)
