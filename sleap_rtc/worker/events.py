"""What a :class:`~sleap_rtc.worker.session.WorkerSession` reports, and the Error/rule helpers.

Events are frozen, slotted, keyword-only dataclasses named for what the client
did: the adapter answers each :class:`RequestReceived` through its connection,
using the event's ``correlation_id``. The client's side has its own events
(:mod:`sleap_rtc.client.events`). :func:`make_error` builds Error bodies
(message capped) and :func:`submit_violations` applies the protocol rules to a
JobSubmit with the worker's config size limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from sleap_rtc_proto import rules
from sleap_rtc_proto.limits import MAX_CONFIG_BYTES
from sleap_rtc_proto.v1 import error_pb2, job_pb2
from sleap_rtc_proto.versions import Version

__all__ = [
    "MAX_ERROR_CHARS",
    "ClientAccepted",
    "ClientError",
    "ClientViolation",
    "Event",
    "RequestReceived",
    "make_error",
    "submit_violations",
]

#: Longest Error.message the worker sends (peer-supplied text can be long).
MAX_ERROR_CHARS = 4000


# --- events ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientAccepted:
    """The client's Hello succeeded; HelloAck is queued. ``subject`` is "" without auth."""

    correlation_id: int
    subject: str
    chosen_version: Version
    client_name: str
    client_software: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    """A request that passed its protocol rules; answer it through the connection.

    Attributes:
        correlation_id: the request's message id (the answer's correlation id).
        name: the request's body name (a REQUEST row of the body table).
        body: the request itself.
    """

    correlation_id: int
    name: str
    body: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientError:
    """The client sent an Error (never answered, to avoid error ping-pong)."""

    correlation_id: int
    error: error_pb2.Error


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientViolation:
    """The client misbehaved; the answer is already queued.

    The answer is ``error`` itself, except for a JobSubmit that breaks the
    protocol rules, which is answered with JobRejected (``error`` then
    summarises it). Informational (logs, metrics): the session stays usable.
    """

    correlation_id: int
    error: error_pb2.Error


Event = ClientAccepted | RequestReceived | ClientError | ClientViolation


def make_error(
    code: int,
    message: str,
    *,
    details: Mapping[str, str] | None = None,
    retryable: bool = False,
) -> error_pb2.Error:
    """An Error body (the message is capped at :data:`MAX_ERROR_CHARS`)."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return error_pb2.Error(
        code=code,  # type: ignore[arg-type]
        message=message,
        details=dict(details or {}),
        retryable=retryable,
    )


def submit_violations(
    submit: job_pb2.JobSubmit, *, max_config_bytes: int = MAX_CONFIG_BYTES
) -> list[rules.Violation]:
    """The protocol rules of a JobSubmit, with the worker's config size limit."""
    out = [
        v
        for v in rules.validate_job_submit(job_pb2.JobSubmit(job_id=submit.job_id))
        if v.rule_id != "job_submit.spec.required" or not submit.HasField("spec")
    ]
    if submit.HasField("spec"):
        out.extend(rules.validate_train_job_spec(submit.spec, max_config_bytes=max_config_bytes))
    return out
