"""One served link: pumps frames between a :class:`Link` and a :class:`WorkerSession`.

:class:`Connection` owns the asyncio side of one connection: the receive loop
(frames and ``time.monotonic()`` into the session, events out to a handler),
the bounded outbox and its writer (a send slower than ``send_timeout_s``, or an
outbox past ``max_outbox_frames`` frames or ``max_outbox_bytes`` bytes, closes
the link), the worker-wide cap on what connections send before Hello
(``preauth_budget``: every byte a connection receives before it authenticated,
past its first ``PREAUTH_FREE_BYTES``, is charged to one budget shared by all
connections and given back once it authenticated or closed; over the budget, or
over ``max_preauth_bytes`` for one connection, it is closed; an honest Hello
never comes near either), the ticker that expires
half-received fragmented messages, the connection's helper tasks (path checks)
and its job subscriptions. JobProgress for a client that announced the
"progress_batch" feature waits in an open group at the end of the outbox; the
group is encoded (runs of progress as JobProgressBatch, see
:mod:`sleap_rtc.worker.batching`) when the writer reaches it or when anything
else is queued behind it, so progress is never delayed, only coalesced while
the link is busy, and other messages keep their order. What the events *mean*
is the handler's business (:class:`~sleap_rtc.worker.service.WorkerService`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from sleap_rtc.transport.link import Link, LinkClosed
from sleap_rtc.worker.batching import coalesce
from sleap_rtc.worker.events import Event, make_error
from sleap_rtc.worker.jobrecord import Job, JobMessage
from sleap_rtc.worker.session import WorkerSession
from sleap_rtc_proto.bodies import Feature
from sleap_rtc_proto.stream import ByteBudget
from sleap_rtc_proto.v1 import error_pb2, progress_pb2

log = logging.getLogger(__name__)

#: Seconds between checks for expired fragmented messages.
TICK_S = 1.0
#: Seconds a closing connection waits for its queued answers to go out.
DRAIN_S = 1.0
#: Bytes each connection may receive before Hello without drawing on the shared budget.
PREAUTH_FREE_BYTES = 64 * 1024


@dataclass(eq=False)
class _ProgressGroup:
    """JobProgress waiting in the outbox; ``frames`` once encoded."""

    items: list[progress_pb2.JobProgress] = field(default_factory=list)
    frames: list[bytes] | None = None
    #: Bytes charged to the outbox for this group (the items' encoded sizes).
    charged: int = 0


class Connection:
    """One link, its session, outbox, helper tasks and job subscriptions.

    Args:
        link: the transport.
        peer_id: the remote peer (for logs).
        session: the sans-IO protocol state of this connection.
        send_timeout_s: a send that takes longer closes the connection.
        max_outbox_frames: frames queued for a slow reader before it is closed.
        max_outbox_bytes: bytes queued for a slow reader before it is closed.
        preauth_budget: shared by every connection of the worker: bytes they may
            receive before authenticating, together (None: no shared cap).
        max_preauth_bytes: bytes this connection may receive before authenticating.
    """

    def __init__(
        self,
        link: Link,
        peer_id: str,
        session: WorkerSession,
        *,
        send_timeout_s: float = 30.0,
        max_outbox_frames: int = 20_000,
        max_outbox_bytes: int = 64 * 1024 * 1024,
        preauth_budget: ByteBudget | None = None,
        max_preauth_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.preauth_budget = preauth_budget
        self.max_preauth_bytes = max_preauth_bytes
        #: Bytes received before authentication, and the part charged to the budget.
        self.preauth_bytes = 0
        self._charged_preauth = 0
        self.link = link
        self.peer_id = peer_id
        self.session = session
        self.send_timeout_s = send_timeout_s
        self.max_outbox_frames = max_outbox_frames
        self.max_outbox_bytes = max_outbox_bytes
        #: Bytes queued in the outbox and not yet sent.
        self.outbox_bytes = 0
        self.outbox: asyncio.Queue[bytes | _ProgressGroup] = asyncio.Queue()
        self._open: _ProgressGroup | None = None  # the group still taking progress
        self.subscriptions: dict[str, Callable[[], None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.dead = False

    # --- output ----------------------------------------------------------------

    @property
    def batching(self) -> bool:
        """True when the client agreed to JobProgressBatch (HelloAck.features)."""
        return Feature.PROGRESS_BATCH in self.session.features

    def _close_group(self) -> None:
        """Encode the open progress group in place (before anything queued after it)."""
        group, self._open = self._open, None
        if group is None:
            return
        for message in coalesce(group.items):
            try:
                self.session.send(message)
            except Exception as exc:  # e.g. an outgoing message over the size limit
                log.warning("connection %s: cannot send %s: %s", self.peer_id, type(message), exc)
        group.frames = self.session.data_to_send()

    @property
    def subject(self) -> str:
        """The authenticated user of this connection ("" without authentication)."""
        return self.session.subject

    @property
    def features(self) -> frozenset[str]:
        """The features in effect on this connection (agreed in the handshake)."""
        return self.session.features

    @property
    def session_id(self) -> str:
        """The session's name in logs."""
        return self.session.session_id

    def reply(self, correlation_id: int, body: Message) -> None:
        """Send ``body`` as the answer to request ``correlation_id``."""
        self._close_group()
        self.session.send(body, correlation_id=correlation_id)
        self.flush()

    def send(self, body: Message) -> None:
        """Send ``body`` unsolicited, after everything queued before it (never batched)."""
        self._close_group()
        self.session.send(body)
        self.flush()

    def reply_error(self, correlation_id: int, error: error_pb2.Error) -> None:
        """Answer request ``correlation_id`` with a typed Error."""
        self._close_group()
        self.session.send_error(correlation_id, error)
        self.flush()

    def flush(self) -> None:
        """Move the session's queued frames to the outbox (closing a reader that lags)."""
        self._close_group()
        for frame in self.session.data_to_send():
            if self.outbox.qsize() >= self.max_outbox_frames or not self._charge(len(frame)):
                log.warning("connection %s is not reading; closing it", self.peer_id)
                self.kill()
                return
            self.outbox.put_nowait(frame)

    def _charge(self, n: int) -> bool:
        """Count ``n`` more queued bytes; False (nothing counted) past the byte cap."""
        if self.outbox_bytes + n > self.max_outbox_bytes:
            return False
        self.outbox_bytes += n
        return True

    def kill(self) -> None:
        """Give up on this connection (its jobs keep running)."""
        if not self.dead:
            self.dead = True
            self.spawn(self._close_link())

    async def _close_link(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await self.link.close()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a helper task of this connection (cancelled when it ends)."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _writer(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
        while not self.dead:
            item = await self.outbox.get()
            if isinstance(item, _ProgressGroup):
                if item is self._open:
                    self._close_group()
                frames = item.frames or []
                self.outbox_bytes -= item.charged
            else:
                frames = [item]
                self.outbox_bytes -= len(item)
            try:
                for frame in frames:
                    async with asyncio.timeout(self.send_timeout_s):
                        await self.link.send(frame)
            except (LinkClosed, ConnectionError, TimeoutError, OSError) as exc:
                log.info("connection %s: send failed (%s); closing", self.peer_id, exc)
                self.kill()
                return

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self.session.expire(time.monotonic()):
                self.flush()

    async def _drained(self) -> None:
        while not self.outbox.empty():
            await asyncio.sleep(0.01)

    # --- jobs --------------------------------------------------------------------

    def send_job_message(self, message: JobMessage) -> None:
        """Send one numbered job message (a job listener; never raises)."""
        if self.dead:
            return
        if isinstance(message, progress_pb2.JobProgress) and self.batching:
            size = message.ByteSize()
            if self._open is not None:
                if len(self._open.items) >= self.max_outbox_frames or not self._charge(size):
                    log.warning("connection %s is not reading; closing it", self.peer_id)
                    self.kill()
                    return
                self._open.items.append(message)
                self._open.charged += size
                return
            if self.outbox.qsize() >= self.max_outbox_frames:
                log.warning("connection %s is not reading; closing it", self.peer_id)
                self.kill()
                return
            self.flush()  # frames the session already holds go first
            if self.dead or not self._charge(size):
                log.warning("connection %s is not reading; closing it", self.peer_id)
                self.kill()
                return
            self._open = _ProgressGroup([message], charged=size)
            self.outbox.put_nowait(self._open)
            return
        self._close_group()
        try:
            self.session.send(message)
        except Exception as exc:  # e.g. an outgoing message over the size limit
            log.warning("connection %s: cannot send %s: %s", self.peer_id, type(message), exc)
            return
        self.flush()

    def follow(self, job: Job) -> None:
        """Send ``job``'s later messages to this connection (once per job)."""
        if job.job_id not in self.subscriptions:
            self.subscriptions[job.job_id] = job.subscribe(self.send_job_message)

    def unfollow(self, job_id: str) -> None:
        """Stop sending ``job_id``'s messages here."""
        unsubscribe = self.subscriptions.pop(job_id, None)
        if unsubscribe is not None:
            unsubscribe()

    def drop(self) -> None:
        """Unsubscribe from every job."""
        for unsubscribe in self.subscriptions.values():
            unsubscribe()
        self.subscriptions.clear()

    # --- before Hello ----------------------------------------------------------------

    def _preauth(self, size: int) -> bool:
        """Count ``size`` bytes received before authentication; False closes the link."""
        self.preauth_bytes += size
        over = self.preauth_bytes - PREAUTH_FREE_BYTES - self._charged_preauth
        if self.preauth_bytes > self.max_preauth_bytes:
            why = f"{self.preauth_bytes} bytes before Hello (limit {self.max_preauth_bytes})"
        elif over > 0 and self.preauth_budget is not None and not self.preauth_budget.take(over):
            why = (
                f"unauthenticated connections hold {self.preauth_budget.used} of "
                f"{self.preauth_budget.limit} bytes"
            )
        else:
            self._charged_preauth += max(0, over)
            return True
        log.warning("connection %s sent too much before Hello (%s); closing it", self.peer_id, why)
        self.kill()
        return False

    def _release_preauth(self) -> None:
        if self.preauth_budget is not None and self._charged_preauth:
            self.preauth_budget.give(self._charged_preauth)
        self._charged_preauth = 0

    # --- the pump ------------------------------------------------------------------

    async def run(self, handle: Callable[[Event], None]) -> None:
        """Pump frames until the link closes (or the connection is killed).

        Each session event goes to ``handle``; a handler that raises gets the
        peer an INTERNAL Error answering that request, and the pump goes on.
        """
        writer = asyncio.create_task(self._writer())
        ticker = asyncio.create_task(self._ticker())
        try:
            while not self.dead:
                try:
                    frame = await self.link.recv()
                except (LinkClosed, ConnectionError):
                    break
                if not self.session.authenticated and not self._preauth(len(frame)):
                    await self._close_link()  # now: the helper kill() spawned is cancelled below
                    break
                self._close_group()  # progress queued so far goes before any answer
                for event in self.session.receive(frame, time.monotonic()):
                    try:
                        handle(event)
                    except Exception as exc:  # e.g. an answer over the size limit
                        log.exception("session %s: handling failed", self.session.session_id)
                        self.session.send_error(
                            getattr(event, "correlation_id", 0),
                            make_error(
                                error_pb2.ERROR_CODE_INTERNAL,
                                f"the worker failed to answer: {type(exc).__name__}",
                            ),
                        )
                self.flush()
                if self.session.authenticated and self._charged_preauth:
                    self._release_preauth()
            # Let queued answers go out before returning (bounded).
            if not self.dead and not self.outbox.empty():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DRAIN_S):
                        await self._drained()
        finally:
            self.dead = True
            self._release_preauth()
            self.drop()
            tasks = {writer, ticker, *self.tasks}
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5.0)
