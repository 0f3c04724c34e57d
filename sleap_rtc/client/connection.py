"""The asyncio adapter around :class:`~sleap_rtc.client.session.ClientSession`.

It owns one reader task that feeds frames from the :class:`Link` into the
session, resolves the waiting request with the matching answer, and queues job
events (progress, logs, the end of a job) for :meth:`WorkerConnection.events`.
Every wait has a deadline.

Example::

    async with WorkerConnection(link, ClientSession(token=token)) as conn:
        await conn.hello()
        result = await conn.check_paths("/mnt/lab/labels.slp")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType

from google.protobuf.message import Message

from sleap_rtc.client.events import (
    AnswerReceived,
    ErrorReceived,
    Event,
    JobCompleted,
    JobEvent,
    JobFailedEvent,
    LogReceived,
    ProgressReceived,
    RequestTimedOut,
    WorkerAccepted,
    WorkerRefused,
    WorkerViolation,
    job_id_of,
)
from sleap_rtc.client.session import ClientSession
from sleap_rtc.transport.link import Link, LinkClosed
from sleap_rtc_proto.v1 import error_pb2, handshake_pb2, job_pb2, paths_pb2, spec_pb2

log = logging.getLogger(__name__)

#: Seconds :meth:`WorkerConnection.events` waits for the next job event by default.
DEFAULT_IDLE_TIMEOUT_S = 600.0

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "ConnectionLost",
    "HelloRefusedError",
    "RemoteError",
    "RequestTimeout",
    "WorkerConnection",
]


class ConnectionLost(LinkClosed):
    """The link closed (or a send failed) while a request was outstanding."""


class RequestTimeout(TimeoutError):
    """The worker did not answer a request (or send a job event) in time."""


class RemoteError(Exception):
    """The worker answered a request with a typed Error."""

    def __init__(self, code: int, message: str, details: Mapping[str, str] | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.retryable = retryable


class HelloRefusedError(RemoteError):
    """The worker refused the Hello (token, version)."""


class WorkerConnection:
    """Drives one :class:`ClientSession` over one :class:`Link`.

    Args:
        link: the connection to the worker.
        session: a fresh client session (its token and versions go into Hello).
        clock: monotonic seconds; injected for tests.
    """

    def __init__(
        self, link: Link, session: ClientSession, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.link = link
        self.session = session
        self.clock = clock
        #: Frames the worker should not have sent (ignored), newest last.
        self.violations: list[WorkerViolation] = []
        #: Errors the worker sent that answered nothing of ours.
        self.errors: list[ErrorReceived] = []
        self._waiters: dict[int, asyncio.Future[Event]] = {}
        self._events: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._lost: BaseException | None = None
        #: ``clock()`` when the last frame arrived (or the connection was made):
        #: how long the link has been silent, for liveness probes.
        self.last_received: float = clock()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> WorkerConnection:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start the reader task (idempotent; requests start it too)."""
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def closed(self) -> bool:
        """True once the link is closed or the reader stopped."""
        return self._lost is not None or self.link.closed

    async def close(self) -> None:
        """Close the link and stop the reader; pending requests fail with ConnectionLost."""
        with contextlib.suppress(Exception):
            await self.link.close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._mark_lost(ConnectionLost("connection closed by the client"))

    # ------------------------------------------------------------------ requests

    async def hello(self, *, timeout_s: float | None = None) -> handshake_pb2.HelloAck:
        """Send Hello and wait for HelloAck.

        Raises:
            HelloRefusedError: the worker refused (token, version).
            RequestTimeout / ConnectionLost: no answer.
        """
        event = await self._call(self.session.hello(now=self.clock(), timeout_s=timeout_s))
        if isinstance(event, WorkerRefused):
            raise HelloRefusedError(event.code, event.message, event.details)
        assert isinstance(event, WorkerAccepted)
        return event.ack

    async def check_paths(
        self,
        labels_path: str,
        *,
        path_mappings: Mapping[str, str] | None = None,
        prefix_mappings: Mapping[str, str] | None = None,
        max_suggestions: int = 0,
        timeout_s: float | None = None,
    ) -> paths_pb2.PathCheckResult:
        """Ask the worker to check ``labels_path`` and its videos."""
        body = paths_pb2.PathCheckRequest(
            labels_path=labels_path,
            path_mappings=dict(path_mappings or {}),
            prefix_mappings=dict(prefix_mappings or {}),
            max_suggestions=max_suggestions,
        )
        answer = await self.request(body, timeout_s=timeout_s)
        assert isinstance(answer, paths_pb2.PathCheckResult)
        return answer

    async def list_directory(
        self,
        path: str = "",
        *,
        page_token: str = "",
        page_size: int = 0,
        timeout_s: float | None = None,
    ) -> paths_pb2.DirectoryList:
        """One page of a folder of the worker's shared storage (the mount roots for "").

        Needs the ``browse`` feature (protocol 1.2): without it the session
        raises SessionMisuse before anything is sent. A folder outside the
        mounts is answered with a RemoteError (FORBIDDEN) naming it.
        """
        body = paths_pb2.DirectoryListRequest(path=path, page_token=page_token, page_size=page_size)
        answer = await self.request(body, timeout_s=timeout_s)
        assert isinstance(answer, paths_pb2.DirectoryList)
        return answer

    async def submit(
        self,
        job_id: str,
        spec: spec_pb2.TrainJobSpec,
        *,
        check_token: str = "",
        timeout_s: float | None = None,
    ) -> job_pb2.JobAccepted | job_pb2.JobRejected:
        """Submit a job; the answer is JobAccepted or JobRejected (RemoteError otherwise).

        ``job_id`` is the idempotency key: resubmitting it is safe.
        """
        body = job_pb2.JobSubmit(job_id=job_id, spec=spec, check_token=check_token)
        answer = await self.request(body, timeout_s=timeout_s)
        assert isinstance(answer, job_pb2.JobAccepted | job_pb2.JobRejected)
        return answer

    async def attach(
        self, job_id: str, after_sequence: int = 0, *, timeout_s: float | None = None
    ) -> job_pb2.JobStatus:
        """Attach to a job: its state, and progress after ``after_sequence`` resent."""
        body = job_pb2.JobAttach(job_id=job_id, after_sequence=after_sequence)
        answer = await self.request(body, timeout_s=timeout_s)
        assert isinstance(answer, job_pb2.JobStatus)
        return answer

    async def control(
        self,
        job_id: str,
        action: job_pb2.ControlAction.ValueType,
        *,
        timeout_s: float | None = None,
    ) -> job_pb2.JobStatus:
        """Stop (graceful, keeps the checkpoint) or cancel (at once) a job."""
        body = job_pb2.JobControl(job_id=job_id, action=action)
        answer = await self.request(body, timeout_s=timeout_s)
        assert isinstance(answer, job_pb2.JobStatus)
        return answer

    async def request(self, body: Message, *, timeout_s: float | None = None) -> Message:
        """Send any request body and wait for its answer (the body table says which fit).

        Raises:
            RemoteError: the worker answered with a typed Error.
            RequestTimeout / ConnectionLost: no answer.
        """
        event = await self._call(self.session.request(body, now=self.clock(), timeout_s=timeout_s))
        assert isinstance(event, AnswerReceived)
        return event.body

    # ------------------------------------------------------------------ job events

    async def next_event(self, *, timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> JobEvent:
        """The next job event (progress, log, complete, failed).

        Raises:
            RequestTimeout: nothing arrived within ``timeout_s``.
            ConnectionLost: the link closed and every queued event was read.
        """
        self.start()
        if self._events.empty() and self._lost is not None:
            raise ConnectionLost(str(self._lost))
        if not self._events.empty():  # fast path: no timer for a queued event
            item = self._events.get_nowait()
        else:
            try:
                async with asyncio.timeout(timeout_s):
                    item = await self._events.get()
            except TimeoutError:
                raise RequestTimeout(f"no job event within {timeout_s:g} s") from None
        if item is None:
            self._events.put_nowait(None)  # keep the end marker for later readers
            raise ConnectionLost(str(self._lost or "connection closed"))
        return item

    async def events(
        self, job_id: str | None = None, *, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    ) -> AsyncIterator[JobEvent]:
        """Job events, optionally of one job, until that job completes or fails.

        Raises as :meth:`next_event` does.
        """
        while True:
            event = await self.next_event(timeout_s=idle_timeout_s)
            if job_id is not None and job_id_of(event) != job_id:
                continue
            yield event
            if job_id is not None and isinstance(event, JobCompleted | JobFailedEvent):
                return

    # ------------------------------------------------------------------ internals

    async def _call(self, rid: int) -> Event:
        self.start()
        frames = self.session.data_to_send()
        if self._lost is not None:
            self.session.abandon(rid)
            raise ConnectionLost(f"connection is closed: {self._lost}")
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = future
        timeout = self.session.next_deadline_of(rid) - self.clock()
        try:
            for frame in frames:
                try:
                    await self.link.send(frame)
                except LinkClosed as exc:
                    raise ConnectionLost(f"the link closed while sending: {exc}") from None
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    event = await asyncio.shield(future)
            except TimeoutError:
                self._expire()
                if not future.done():
                    self.session.abandon(rid)
                    future.set_exception(RequestTimeout(f"no answer to request {rid}"))
                event = await future
        finally:
            self._waiters.pop(rid, None)
            if rid in self.session.pending:  # cancelled or failed while waiting
                self.session.abandon(rid)
        if isinstance(event, ErrorReceived):
            raise RemoteError(event.code, event.message, event.details, event.retryable)
        return event

    def _expire(self) -> None:
        for event in self.session.timeouts(self.clock()):
            if isinstance(event, RequestTimedOut):
                waiter = self._waiters.get(event.correlation_id)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(
                        RequestTimeout(
                            f"no answer to the {event.request} request within "
                            f"{event.timeout_s:g} s"
                        )
                    )
            else:
                self._note_violation(event)

    async def _read(self) -> None:
        reason: BaseException = ConnectionLost("the link closed")
        try:
            while True:
                frame = await self.link.recv()
                self.last_received = self.clock()
                for event in self.session.receive(frame, self.clock()):
                    self._handle(event)
        except LinkClosed as exc:
            reason = ConnectionLost(str(exc) or "the link closed")
        except asyncio.CancelledError:
            reason = ConnectionLost("connection closed by the client")
            raise
        except Exception as exc:  # a transport bug must not leave waiters hanging
            log.exception("reader stopped")
            reason = ConnectionLost(f"reading from the link failed: {exc}")
        finally:
            self._mark_lost(reason)

    def _handle(self, event: Event) -> None:
        if isinstance(event, ProgressReceived | LogReceived | JobCompleted | JobFailedEvent):
            self._events.put_nowait(event)
            return
        if isinstance(event, WorkerViolation):
            self._note_violation(event)
            return
        rid = getattr(event, "correlation_id", 0)
        waiter = self._waiters.get(rid)
        if waiter is not None and not waiter.done():
            waiter.set_result(event)
        elif isinstance(event, ErrorReceived):
            log.warning("worker error: %s", event.message)
            self.errors.append(event)

    def _note_violation(self, event: Event) -> None:
        assert isinstance(event, WorkerViolation)
        log.warning("ignored a frame from the worker (%s): %s", event.reason, event.message)
        self.violations.append(event)
        del self.violations[:-100]

    def _mark_lost(self, reason: BaseException) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLost(str(reason)))
        self._events.put_nowait(None)



class OpenFailed(Exception):
    """:func:`open_connection` could not connect and say Hello.

    ``login`` is True when the token was refused (by the signaling server or the
    worker): the user must log in again; otherwise the worker could not be reached.
    """

    def __init__(self, message: str, *, login: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.login = login


async def open_connection(
    connect: Callable[[], Awaitable[Link]],
    session: ClientSession,
    *,
    connect_s: float,
    hello_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> WorkerConnection:
    """Connect (within ``connect_s``) and say Hello (within ``hello_s``): the one way
    every client flow opens a worker connection; nothing is sent after a failure.

    Raises:
        OpenFailed: naming why, with ``login`` set when the token was refused.
    """
    try:
        async with asyncio.timeout(connect_s):
            link = await connect()
    except TimeoutError:
        raise OpenFailed(f"no connection within {connect_s:g} s") from None
    except Exception as exc:
        login = getattr(exc, "is_auth", False) is True  # the signaling server refused it
        raise OpenFailed(_described(exc), login=login) from None
    conn = WorkerConnection(link, session, clock=clock)
    try:
        await conn.hello(timeout_s=hello_s)
    except HelloRefusedError as exc:
        await conn.close()
        if exc.code == error_pb2.ERROR_CODE_UNAUTHENTICATED:
            raise OpenFailed(f"the worker refused the token: {exc.message}", login=True) from None
        raise OpenFailed(f"the worker refused the connection: {exc.message}") from None
    except (ConnectionLost, RequestTimeout, RemoteError) as exc:
        await conn.close()
        raise OpenFailed(_described(exc)) from None
    except BaseException:
        await conn.close()
        raise
    return conn


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
