"""The typed events a :class:`~sleap_rtc.client.session.ClientSession` gives out.

Small frozen dataclasses, one per thing that can happen on a connection:
answers to requests (matched by correlation id), unsolicited job events, typed
Errors, deadlines passed, and frames the worker should not have sent
(:class:`ProtocolViolation`, which change no state).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from sleap_rtc_proto.v1 import handshake_pb2, job_pb2, paths_pb2, progress_pb2
from sleap_rtc_proto.versions import Version


class RequestKind(StrEnum):
    """What a pending request asked for (and so which answers fit)."""

    HELLO = "hello"
    PATH_CHECK = "path_check"
    SUBMIT = "submit"
    ATTACH = "attach"
    CONTROL = "control"


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, eq=False)
class Event:
    """Base class of everything :meth:`ClientSession.receive` returns."""


@dataclass(frozen=True, eq=False)
class HelloAccepted(Event):
    """The worker accepted the Hello; ``chosen_version`` is spoken from now on."""

    request_id: int
    ack: handshake_pb2.HelloAck
    chosen_version: Version


@dataclass(frozen=True, eq=False)
class HelloRefused(Event):
    """The worker refused the Hello (bad token, no common version), or its
    HelloAck named a version outside our range (``code`` UNSUPPORTED_VERSION)."""

    request_id: int
    code: int
    message: str
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class PathCheckAnswered(Event):
    """A PathCheckResult answering ``request_id``."""

    request_id: int
    result: paths_pb2.PathCheckResult


@dataclass(frozen=True, eq=False)
class JobAcceptedEvent(Event):
    """A JobAccepted answering the JobSubmit ``request_id``."""

    request_id: int
    accepted: job_pb2.JobAccepted


@dataclass(frozen=True, eq=False)
class JobRejectedEvent(Event):
    """A JobRejected answering the JobSubmit ``request_id``."""

    request_id: int
    rejected: job_pb2.JobRejected


@dataclass(frozen=True, eq=False)
class JobStatusReceived(Event):
    """A JobStatus answering a JobAttach or JobControl ``request_id``."""

    request_id: int
    status: job_pb2.JobStatus


@dataclass(frozen=True, eq=False)
class ProgressReceived(Event):
    """A JobProgress (unsolicited)."""

    progress: progress_pb2.JobProgress


@dataclass(frozen=True, eq=False)
class LogReceived(Event):
    """A JobLog (unsolicited)."""

    log: progress_pb2.JobLog


@dataclass(frozen=True, eq=False)
class JobCompleted(Event):
    """A JobComplete: the job finished (possibly stopped early)."""

    complete: progress_pb2.JobComplete


@dataclass(frozen=True, eq=False)
class JobFailedEvent(Event):
    """A JobFailed: the job failed or was cancelled."""

    failed: progress_pb2.JobFailed


@dataclass(frozen=True, eq=False)
class ErrorReceived(Event):
    """A typed Error from the worker.

    ``request_id`` is the request it answers, 0 when it answers nothing we
    sent (e.g. the worker complaining about a frame of ours).
    """

    request_id: int
    code: int
    message: str
    details: Mapping[str, str] = field(default_factory=dict)
    retryable: bool = False


@dataclass(frozen=True, eq=False)
class RequestTimedOut(Event):
    """No answer to ``request_id`` before its deadline; later answers are ignored."""

    request_id: int
    kind: RequestKind
    timeout_s: float


@dataclass(frozen=True, eq=False)
class ProtocolViolation(Event):
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
    if isinstance(event, ProgressReceived):
        return event.progress.job_id
    if isinstance(event, LogReceived):
        return event.log.job_id
    if isinstance(event, JobCompleted):
        return event.complete.job_id
    return event.failed.job_id


def sequence_of(event: JobEvent) -> int:
    """The event's sequence number in its job (0: unnumbered, from an old worker)."""
    if isinstance(event, ProgressReceived):
        return event.progress.sequence
    if isinstance(event, LogReceived):
        return event.log.sequence
    if isinstance(event, JobCompleted):
        return event.complete.sequence
    return event.failed.sequence
