"""The worker's busy/available status, as the room sees it in discovery.

The worker service keeps its jobs in a registry; :class:`StatusReporter` reads
how many are active and tells the signaling server (``update_metadata``)
whenever the status changes: ``busy`` while every job slot is taken (a job
started and no slot is left), ``available`` once one is free again (the job
ended). The properties also carry ``active_jobs``, so a room listing shows how
loaded a worker with several slots is.

The service exposes no job start/end callback, so the reporter polls the
registry (cheap: a count) every ``poll_s`` seconds; a failed update is retried
at the next poll, and a new signaling connection starts from the current
status, not from "available".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sleap_rtc.signaling.client import SignalingClient

log = logging.getLogger(__name__)

#: Seconds between checks of the worker's job registry.
STATUS_POLL_S = 0.25
BUSY = "busy"
AVAILABLE = "available"


class _Registry(Protocol):
    def active_count(self) -> int: ...


class _Service(Protocol):
    @property
    def registry(self) -> _Registry: ...


class StatusReporter:
    """Derives the worker's status from its service and reports changes to signaling.

    Args:
        service: The worker service (its ``registry.active_count()`` is read).
        concurrency: Job slots; all taken means ``busy``.
        metadata: Builds the full metadata for a status and active-job count
            (``update_metadata`` replaces the peer's metadata as a whole).
        poll_s: Seconds between checks.
    """

    def __init__(
        self,
        service: _Service,
        concurrency: int,
        metadata: Callable[[str, int], Mapping[str, Any]],
        *,
        poll_s: float = STATUS_POLL_S,
    ) -> None:
        self.service = service
        self.concurrency = max(1, concurrency)
        self.metadata = metadata
        self.poll_s = poll_s
        #: (status, active jobs) the signaling server was last told.
        self.reported: tuple[str, int] | None = None

    def active(self) -> int:
        return int(self.service.registry.active_count())

    def current(self) -> tuple[str, int]:
        """The status now, and the number of active jobs."""
        active = self.active()
        return (BUSY if active >= self.concurrency else AVAILABLE), active

    def registration_metadata(self) -> Mapping[str, Any]:
        """Metadata for (re-)registering: the current status, not "available"."""
        status, active = self.current()
        self.reported = (status, active)
        return self.metadata(status, active)

    async def report_once(self, sig: SignalingClient) -> bool:
        """Tell ``sig`` the status if it changed; True when an update was sent."""
        from sleap_rtc.signaling.client import SignalingError

        now = self.current()
        if now == self.reported:
            return False
        try:
            await sig.update_metadata(self.metadata(*now))
        except SignalingError as exc:
            log.warning("could not report status %r to signaling: %s", now[0], exc)
            return False
        if self.reported is None or now[0] != self.reported[0]:
            log.info("worker status: %s (%d active job(s))", now[0], now[1])
        self.reported = now
        return True

    async def run(self, sig: SignalingClient) -> None:
        """Report changes until cancelled or the signaling connection closes."""
        while not sig.closed:
            await self.report_once(sig)
            await asyncio.sleep(self.poll_s)
