"""The typed events a :class:`~sleap_rtc.client.session.ClientSession` gives out.

Small frozen, slotted, keyword-only dataclasses, one per thing the worker can do
on a connection: accept or refuse the Hello, answer a request (matched by
correlation id), send a job event or a typed Error, miss a deadline, or send
a frame it should not have (:class:`WorkerViolation`, which changes no state).
The worker's side has its own events (:mod:`sleap_rtc.worker.events`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from sleap_rtc_proto.v1 import handshake_pb2, progress_pb2
from sleap_rtc_proto.versions import Version


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Event:
    """Base class of everything :meth:`ClientSession.receive` returns."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class WorkerAccepted(Event):
    """The worker accepted the Hello; ``chosen_version`` is spoken from now on."""

    correlation_id: int
    ack: handshake_pb2.HelloAck
    chosen_version: Version


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class WorkerRefused(Event):
    """The worker refused the Hello (bad token, no common version), or its
    HelloAck named a version outside our range (``code`` UNSUPPORTED_VERSION)."""

    correlation_id: int
    code: int
    message: str
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AnswerReceived(Event):
    """An answer (a body the table lists as answering ``request``) to request ``correlation_id``.

    Attributes:
        correlation_id: the request it answers.
        request: the request's body name, e.g. ``"job_submit"``.
        name: the answer's body name, e.g. ``"job_accepted"``.
        body: the answer itself.
    """

    correlation_id: int
    request: str
    name: str
    body: Message


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ProgressReceived(Event):
    """A JobProgress (unsolicited; one per item of a JobProgressBatch)."""

    progress: progress_pb2.JobProgress


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LogReceived(Event):
    """A JobLog (unsolicited)."""

    log: progress_pb2.JobLog


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class JobCompleted(Event):
    """A JobComplete: the job finished (possibly stopped early)."""

    complete: progress_pb2.JobComplete


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class JobFailedEvent(Event):
    """A JobFailed: the job failed or was cancelled."""

    failed: progress_pb2.JobFailed


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ErrorReceived(Event):
    """A typed Error from the worker.

    ``correlation_id`` is the request it answers, 0 when it answers nothing we
    sent (e.g. the worker complaining about a frame of ours).
    """

    correlation_id: int
    code: int
    message: str
    details: Mapping[str, str] = field(default_factory=dict)
    retryable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RequestTimedOut(Event):
    """No answer to ``correlation_id`` before its deadline; later answers are ``late``.

    ``request`` is the request's body name (e.g. ``"path_check_request"``).
    """

    correlation_id: int
    request: str
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class WorkerViolation(Event):
    """A frame the worker should not have sent; it was ignored.

    ``reason`` is a stable short code (``malformed``, ``too_large``,
    ``fragment``, ``unsupported_version``, ``unsolicited``, ``late``,
    ``wrong_answer``, ``unexpected``, ``unknown_body``, ``before_hello``);
    ``message`` names the problem for logs.
    """

    reason: str
    message: str
    correlation_id: int = 0


#: The unsolicited events of one job, numbered by the worker from 1 without gaps.
JobEvent = ProgressReceived | LogReceived | JobCompleted | JobFailedEvent


def job_id_of(event: JobEvent) -> str:
    """The job a job event belongs to."""
    return str(_message_of(event).job_id)


def sequence_of(event: JobEvent) -> int:
    """The event's sequence number in its job (0: unnumbered, from an old worker)."""
    return int(_message_of(event).sequence)


def _message_of(
    event: JobEvent,
) -> (
    progress_pb2.JobProgress
    | progress_pb2.JobLog
    | progress_pb2.JobComplete
    | progress_pb2.JobFailed
):
    if isinstance(event, ProgressReceived):
        return event.progress
    if isinstance(event, LogReceived):
        return event.log
    if isinstance(event, JobCompleted):
        return event.complete
    return event.failed
