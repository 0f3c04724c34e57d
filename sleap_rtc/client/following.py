"""Step 6: follow an accepted job to its end, feeding progress sinks in order.

:class:`ProgressFollower` reads the job's events from the connection, puts
them in sequence order (:class:`Reorder`), hands them to the sinks (the
LossViewer bridge, the terminal display), forwards a Stop request as
JobControl, and keeps the worker honest:

- **liveness**: after ``FlowTimeouts.probe_after_s`` of silence on the link it
  sends a JobAttach for the job after the last event seen (a probe: the worker
  answers JobStatus and replays nothing new); no answer within
  ``probe_timeout_s`` counts as a lost connection;
- **reattach**: on a lost connection it reconnects once and attaches after the
  last event delivered; if that fails too, the flow ends with "Connection
  lost. Try again." and says what is true: the job keeps running only if the
  worker does (a trainer dies with its worker), and a retry with the same job
  id shows how it ended; it never trains twice.

:func:`answer_or_lost` gives every other wait of the flow (check, resolution,
submit) the same liveness probe: a dead worker is reported within about
``probe_after_s + probe_timeout_s`` at every step, not after the request's own
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from sleap_rtc.client.callbacks import call_optional
from sleap_rtc.client.connection import (
    ConnectionLost,
    RemoteError,
    RequestTimeout,
    WorkerConnection,
)
from sleap_rtc.client.events import (
    JobCompleted,
    JobEvent,
    JobFailedEvent,
    job_id_of,
    sequence_of,
)
from sleap_rtc.client.results import (
    AcceptedView,
    Checked,
    FlowEnded,
    FlowResult,
    completed_result,
    error_result,
    failed_result,
    lost_following_result,
)
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc_proto.bodies import Feature
from sleap_rtc_proto.v1 import error_pb2, job_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a lost connection after acceptance means (replaces "keeps running").
AFTER_CRASH = (
    "Job {job_id} was accepted. The worker stopped answering: if it is still running, so "
    "is the job, and retrying with the same job id re-attaches to it; if the worker "
    "stopped, its trainer stopped with it, and the retry reports that the job failed. "
    "Either way the retry never trains twice."
)


def probe_job_id() -> str:
    """A job id no client uses: a JobAttach for it is a pure liveness probe (NOT_FOUND)."""
    return f"liveness-probe-{secrets.token_hex(6)}"


async def answer_or_lost(
    conn: WorkerConnection,
    request: Awaitable[T],
    timeouts: FlowTimeouts,
    *,
    probe_id: str | None = None,
) -> T:
    """Await ``request`` (any wait on the worker) while probing the worker's liveness.

    When the link has been silent for ``probe_after_s`` a JobAttach for
    ``probe_id`` (a job id nobody uses) goes out; a live worker answers at once
    (NOT_FOUND, or a status), busy or not. No answer within
    ``probe_timeout_s`` ends the wait with :class:`ConnectionLost`, whatever
    the request's own timeout. Workers without the ``attach`` feature are not
    probed (the request's own timeout applies).

    Raises:
        ConnectionLost: the link closed, or a probe went unanswered.
        Whatever ``request`` raises.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(request)
    ack = conn.session.hello_ack
    if timeouts.probe_after_s <= 0 or ack is None or Feature.ATTACH not in ack.features:
        return await task
    probe = probe_id or probe_job_id()
    try:
        while True:
            silent = conn.clock() - conn.last_received
            wait = max(timeouts.tick_s, timeouts.probe_after_s - silent)
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                return task.result()
            silent = conn.clock() - conn.last_received
            if silent < timeouts.probe_after_s:
                continue
            prober = asyncio.ensure_future(
                conn.attach(probe, 0, timeout_s=timeouts.probe_timeout_s)
            )
            waiting: set[asyncio.Future[Any]] = {task, prober}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                prober.cancel()
                return task.result()
            try:
                prober.result()
            except RemoteError:
                pass  # NOT_FOUND (or any typed answer): the worker is alive
            except RequestTimeout:
                raise ConnectionLost(
                    f"the link was silent for {silent:.1f} s and the worker did not answer "
                    f"a liveness probe within {timeouts.probe_timeout_s:g} s"
                ) from None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class ProgressSink(Protocol):
    """Receives job events. May also define ``open()``, ``close()`` and
    ``stop_requested() -> bool`` (LossViewer's Stop button)."""

    def handle(self, event: JobEvent) -> None: ...


class Reorder:
    """Releases job events in sequence order (1, 2, ...), each once."""

    #: Seconds a gap in the numbering may stay open before it is skipped.
    GAP_S = 2.0
    #: Events held back at most while waiting for a gap to fill.
    MAX_HELD = 50_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.delivered = 0
        self._held: dict[int, JobEvent] = {}
        self._gap_since: float | None = None

    def add(self, event: JobEvent) -> list[JobEvent]:
        seq = sequence_of(event)
        if seq == 0:  # unnumbered (an old worker): pass through
            return [event]
        if seq > self.delivered and seq not in self._held:
            self._held[seq] = event
        return self._release()

    def expire(self) -> list[JobEvent]:
        return self._release()

    def _release(self) -> list[JobEvent]:
        out: list[JobEvent] = []
        while self.delivered + 1 in self._held:
            self.delivered += 1
            out.append(self._held.pop(self.delivered))
        if not self._held:
            self._gap_since = None
            return out
        now = self.clock()
        if self._gap_since is None:
            self._gap_since = now
        if now - self._gap_since > self.GAP_S or len(self._held) > self.MAX_HELD:
            log.warning(
                "progress %d..%d never arrived; skipping ahead",
                self.delivered + 1,
                min(self._held) - 1,
            )
            self.delivered = min(self._held) - 1
            self._gap_since = None
            out.extend(self._release())
        return out


def _lost(
    checked: Checked | None, job_id: str, accepted: AcceptedView, exc: BaseException
) -> FlowResult:
    """The "Connection lost" result after acceptance, saying only what is known to be true."""
    result = lost_following_result(checked, job_id, accepted, exc)
    details = tuple(
        AFTER_CRASH.format(job_id=job_id) if d.startswith(f"Job {job_id} was accepted") else d
        for d in result.details
    )
    return dataclasses.replace(result, details=details)


class ProgressFollower:
    """Follows one accepted job to JobComplete / JobFailed (step 6).

    Args:
        sinks: fed every event of the job, in sequence order, each once.
        timeouts: tick, probe and control limits.
        reopen: opens a fresh connection (Hello done); raises
            :class:`~sleap_rtc.client.results.FlowEnded` when it cannot.
        stop_wanted: whether the user asked to stop early (besides the sinks).
        clock: monotonic seconds (the connection's clock).
    """

    def __init__(
        self,
        *,
        sinks: Sequence[ProgressSink],
        timeouts: FlowTimeouts,
        reopen: Callable[[], Awaitable[WorkerConnection]],
        stop_wanted: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self.sinks = list(sinks)
        self.timeouts = timeouts
        self.reopen = reopen
        self.stop_wanted = stop_wanted
        self.clock = clock
        self._stop_sent = False
        #: Liveness probes sent / answered (for logs and tests).
        self.probes = 0

    async def follow(
        self,
        conn: WorkerConnection,
        job_id: str,
        accepted: AcceptedView,
        checked: Checked | None,
        *,
        attach: bool = False,
    ) -> FlowResult:
        """Feed the sinks until the job ends; the outcome as a FlowResult.

        Job events are numbered from 1 without gaps. Replays (after a duplicate
        submit or a reconnect) can interleave with live events, so events are
        reordered by sequence and duplicates dropped; a gap that stays open for
        ``Reorder.GAP_S`` (history the worker no longer keeps) is skipped.
        With ``attach``, first ask the worker for everything this connection missed.
        """
        for sink in self.sinks:
            call_optional(sink, "open")
        original = conn
        order = Reorder(self.clock)
        reconnected = False
        try:
            if attach:
                await self._attach(conn, job_id, 0)
            while True:
                await self._maybe_stop(conn, job_id)
                try:
                    ready = await self._next(conn, job_id, order)
                except ConnectionLost as exc:
                    if reconnected:
                        return _lost(checked, job_id, accepted, exc)
                    reconnected = True
                    with contextlib.suppress(Exception):
                        await conn.close()
                    try:
                        conn = await self.reopen()
                    except FlowEnded:
                        return _lost(checked, job_id, accepted, exc)
                    await self._attach(conn, job_id, order.delivered)
                    continue
                for event in ready:
                    result = self._deliver(event, checked, job_id, accepted)
                    if result is not None:
                        return result
        except ConnectionLost as exc:
            return _lost(checked, job_id, accepted, exc)
        except FlowEnded as ended:
            return ended.result
        finally:
            for sink in self.sinks:
                call_optional(sink, "close")
            if conn is not original:
                await conn.close()

    async def _next(self, conn: WorkerConnection, job_id: str, order: Reorder) -> list[JobEvent]:
        """The events ready after one tick; probes the worker after a silence.

        Raises:
            ConnectionLost: the link closed, or the worker did not answer a probe.
        """
        try:
            event = await conn.next_event(timeout_s=self.timeouts.tick_s)
        except RequestTimeout:
            ready = order.expire()
            silent = self.clock() - conn.last_received
            if not ready and silent >= self.timeouts.silence_s:
                await self._probe(conn, job_id, order.delivered, silent)
            return ready
        if job_id_of(event) != job_id:
            return []
        return order.add(event)

    async def _probe(self, conn: WorkerConnection, job_id: str, after: int, silent: float) -> None:
        """JobAttach after the last delivered event: a live worker answers at once."""
        self.probes += 1
        wait = self.timeouts.probe_timeout_s
        log.debug("link silent for %.1f s; probing the worker (job %s)", silent, job_id)
        try:
            status = await conn.attach(job_id, after, timeout_s=wait)
        except RequestTimeout:
            raise ConnectionLost(
                f"the link was silent for {silent:.1f} s and the worker did not answer a "
                f"liveness probe within {wait:g} s"
            ) from None
        except RemoteError as exc:
            self._remote_error(job_id, exc)
            return
        log.debug("probe answered: job %s, state %d", job_id, status.state)

    async def _attach(self, conn: WorkerConnection, job_id: str, after: int) -> None:
        try:
            await conn.attach(job_id, after, timeout_s=self.timeouts.control_s)
        except RequestTimeout as exc:
            raise ConnectionLost(f"the worker stopped answering: {exc}") from None
        except RemoteError as exc:
            self._remote_error(job_id, exc)

    def _remote_error(self, job_id: str, exc: RemoteError) -> None:
        """A live worker that no longer knows the job ends the flow (it would never end)."""
        if exc.code == error_pb2.ERROR_CODE_NOT_FOUND:
            raise FlowEnded(
                error_result(
                    "progress",
                    f"The worker no longer knows job {job_id}; it may have restarted. "
                    "Start the training again.",
                    exc.message,
                    job_id=job_id,
                )
            )
        log.warning("attach to %s failed: %s", job_id, exc.message)

    def _deliver(
        self, event: JobEvent, checked: Checked | None, job_id: str, accepted: AcceptedView
    ) -> FlowResult | None:
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception:
                log.exception("progress sink %r failed", sink)
        if isinstance(event, JobCompleted):
            return completed_result(checked, job_id, accepted, event.complete)
        if isinstance(event, JobFailedEvent):
            return failed_result(checked, job_id, accepted, event.failed)
        return None

    async def _maybe_stop(self, conn: WorkerConnection, job_id: str) -> None:
        if self._stop_sent:
            return
        wanted = self.stop_wanted() or any(
            bool(call_optional(sink, "stop_requested")) for sink in self.sinks
        )
        if not wanted:
            return
        self._stop_sent = True
        try:
            await conn.control(
                job_id, job_pb2.CONTROL_ACTION_STOP, timeout_s=self.timeouts.control_s
            )
        except (RequestTimeout, RemoteError) as exc:
            log.warning("stop request for %s failed: %s", job_id, exc)
