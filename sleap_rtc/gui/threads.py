"""Crossing between the Qt thread and the flow's thread, without blocking either.

The flow runs on a plain :class:`threading.Thread` with its own asyncio loop
(:class:`FlowThread`); on PySide6 6.12 ``QTest.qWait()`` starves ``QThread``
subclasses running Python, so none is used. The flow reaches the GUI through
:class:`GuiCall`: a queued signal carries a callable to the Qt thread and a
:class:`concurrent.futures.Future` carries its result back. The GUI reaches the
flow with :meth:`FlowThread.submit` (``run_coroutine_threadsafe``). Nothing
here waits on the Qt thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from qtpy import QtCore

__all__ = ["FlowThread", "GuiCall"]

T = TypeVar("T")


class GuiCall(QtCore.QObject):
    """Runs callables on the thread this object lives on (the Qt thread)."""

    _call = QtCore.Signal(object)  # type: ignore[attr-defined]

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._call.connect(self._run, QtCore.Qt.ConnectionType.QueuedConnection)

    def _run(self, job: tuple[Callable[[], Any], concurrent.futures.Future[Any]]) -> None:
        fn, future = job
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # the caller gets it through the future
            future.set_exception(exc)

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn`` for the Qt thread; from any thread. Returns its future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._call.emit((fn, future))
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        """From the flow's loop: run ``fn`` on the Qt thread and await its result."""
        return await asyncio.wrap_future(self.submit(fn))


class FlowThread:
    """An asyncio loop on its own daemon thread (one per remote run)."""

    def __init__(self, name: str = "sleap-rtc-gui-flow") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the flow's loop; from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (after what runs on it) and join the thread."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
