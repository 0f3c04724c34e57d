"""The client's half of a sleap-rtc connection, sans-IO.

:class:`ClientSession` turns requests into frames and frames into typed events.
It owns no socket, no task and no clock: every method that needs the time takes
``now`` (seconds, any monotonic origin). Like the worker's session it queues
what it sends; the adapter (:mod:`sleap_rtc.client.connection`) takes the
frames with :meth:`ClientSession.data_to_send` and puts them on the link.

>>> from sleap_rtc_proto.v1 import paths_pb2
>>> session = ClientSession(token="", software="sleap-rtc test")
>>> session.hello(now=0.0), len(session.data_to_send())
(1, 1)
>>> [type(e).__name__ for e in session.timeouts(now=60.0)]
['RequestTimedOut']

Answers are matched to requests by ``Envelope.correlation_id``; which body may
answer which request comes from the body table (:mod:`sleap_rtc_proto.bodies`).
A frame that cannot be used (garbage bytes, an answer to nothing, an answer of
the wrong kind, a late answer) becomes a :class:`WorkerViolation` event and
changes no state: the session stays usable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.message import Message

from sleap_rtc.client.events import (
    AnswerReceived,
    ErrorReceived,
    Event,
    JobCompleted,
    JobFailedEvent,
    LogReceived,
    ProgressReceived,
    RequestTimedOut,
    WorkerAccepted,
    WorkerRefused,
    WorkerViolation,
)
from sleap_rtc_proto import bodies
from sleap_rtc_proto.codec import Envelope, body_name, body_of
from sleap_rtc_proto.errors import ProtocolError, SessionMisuse
from sleap_rtc_proto.limits import MAX_FRAME_BYTES, MAX_MESSAGE_BYTES
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import error_pb2, handshake_pb2
from sleap_rtc_proto.versions import SUPPORTED, Version, VersionRange

__all__ = ["DEFAULT_TIMEOUT_S", "ClientSession", "SessionState"]

#: Seconds a request waits for its answer unless the caller says otherwise.
DEFAULT_TIMEOUT_S = 10.0
#: How many answered or abandoned request ids are remembered to tell late answers apart.
_FORGOTTEN_LIMIT = 1024


class SessionState(StrEnum):
    """Where the handshake is."""

    NEW = "new"
    HELLO_SENT = "hello_sent"
    READY = "ready"
    REFUSED = "refused"


@dataclass(slots=True)
class _Pending:
    request: str
    deadline: float
    timeout_s: float


class ClientSession:
    """One connection to a worker, from the client's side (sans-IO).

    Args:
        token: the client's JWT, sent in Hello. Empty for workers without auth.
        software: this client's name and version for the worker's logs.
        components: other component versions (e.g. ``{"sleap": "1.6.6"}``).
        client_name: a human-readable name for the worker's logs.
        features: optional capabilities to announce.
        supported: the protocol versions this client speaks.
        default_timeout_s: answer deadline of requests that give none.
        max_frame_bytes / max_message_bytes: receive limits (also announced).
    """

    def __init__(
        self,
        *,
        token: str = "",
        software: str = "",
        components: Mapping[str, str] | None = None,
        client_name: str = "",
        features: Sequence[str] = bodies.DEFAULT_FEATURES,
        supported: VersionRange = SUPPORTED,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        if not software:
            from sleap_rtc import __version__

            software = f"sleap-rtc {__version__}"
        self.token = token
        self.software = software
        self.components = dict(components or {})
        self.client_name = client_name
        self.features = tuple(str(f) for f in features)
        self.supported = supported
        self.default_timeout_s = default_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.max_message_bytes = max_message_bytes
        self.state = SessionState.NEW
        self.hello_ack: handshake_pb2.HelloAck | None = None
        self.chosen_version: Version | None = None
        self._stream = MessageStream(
            max_frame_bytes=max_frame_bytes,
            max_message_bytes=max_message_bytes,
            version=supported.max,
        )
        self._outbox: list[bytes] = []
        self._pending: dict[int, _Pending] = {}
        self._forgotten: dict[int, str] = {}  # request id -> "answered" | "timed_out" | "abandoned"

    # ------------------------------------------------------------------ queries

    @property
    def ready(self) -> bool:
        """True once a HelloAck was accepted."""
        return self.state is SessionState.READY

    @property
    def pending(self) -> dict[int, str]:
        """Requests waiting for an answer: correlation id -> request body name."""
        return {cid: p.request for cid, p in self._pending.items()}

    def next_deadline(self) -> float | None:
        """The earliest deadline of a pending request, or None."""
        if not self._pending:
            return None
        return min(p.deadline for p in self._pending.values())

    def next_deadline_of(self, correlation_id: int) -> float:
        """The deadline of pending request ``correlation_id``.

        Raises:
            KeyError: the request is not pending.
        """
        return self._pending[correlation_id].deadline

    @property
    def mounts(self) -> tuple[str, ...]:
        """The worker's allowed mounts as disclosed in HelloAck (may be empty)."""
        return tuple(self.hello_ack.mounts) if self.hello_ack is not None else ()

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> list[bytes]:
        """Take every frame queued since the last call, in order."""
        frames, self._outbox = self._outbox, []
        return frames

    # ------------------------------------------------------------------ requests

    def hello(self, *, now: float, timeout_s: float | None = None) -> int:
        """Queue the Hello; returns its correlation id. Call once, first.

        Raises:
            SessionMisuse: hello() was already called.
        """
        if self.state is not SessionState.NEW:
            raise SessionMisuse(f"hello() called in state {self.state.value}")
        body = handshake_pb2.Hello(
            min_version=self.supported.min.to_proto(),
            max_version=self.supported.max.to_proto(),
            software=self.software,
            components=self.components,
            features=list(self.features),
            limits=handshake_pb2.Limits(
                max_frame_bytes=self.max_frame_bytes, max_message_bytes=self.max_message_bytes
            ),
            token=self.token,
            client_name=self.client_name,
        )
        self.state = SessionState.HELLO_SENT
        return self._queue("hello", body, now, timeout_s)

    def request(self, body: Message, *, now: float, timeout_s: float | None = None) -> int:
        """Queue a request body (any row of kind REQUEST but Hello); returns its correlation id.

        The answer comes back as :class:`AnswerReceived` (or :class:`ErrorReceived`,
        or :class:`RequestTimedOut` once ``timeout_s`` passed).

        Raises:
            SessionMisuse: before a successful hello, ``body`` is not a request, or
                the row's version or feature is not in effect on this connection.
        """
        row = bodies.ROWS_BY_TYPE.get(body.DESCRIPTOR.full_name)
        if row is None or row.kind is not bodies.Kind.REQUEST or row.name == "hello":
            raise SessionMisuse(f"{type(body).__name__} is not a request a client sends")
        if self.state is not SessionState.READY:
            raise SessionMisuse(f"{row.name} request before a successful hello")
        assert self.chosen_version is not None and self.hello_ack is not None
        if row.since > self.chosen_version:
            raise SessionMisuse(
                f"{row.name} needs protocol {row.since}; this connection speaks "
                f"{self.chosen_version}"
            )
        if row.feature is not None and row.feature not in self.hello_ack.features:
            raise SessionMisuse(
                f"{row.name} needs the {row.feature!s} feature, which the worker did not agree to"
            )
        # Fields behind a feature the worker did not agree to are not sent (FieldFeature).
        return self._queue(row.name, bodies.for_peer(body, self.hello_ack.features), now, timeout_s)

    def abandon(self, correlation_id: int) -> None:
        """Stop waiting for ``correlation_id``; a later answer becomes a ``late`` violation."""
        if self._pending.pop(correlation_id, None) is not None:
            self._remember(correlation_id, "abandoned")

    def _queue(self, request: str, body: Message, now: float, timeout_s: float | None) -> int:
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        correlation_id, frames = self._stream.send(body)
        self._outbox.extend(frames)
        self._pending[correlation_id] = _Pending(request, now + timeout, timeout)
        return correlation_id

    # ------------------------------------------------------------------ time

    def timeouts(self, now: float) -> list[Event]:
        """Expire requests past their deadline and stale fragments.

        Returns one :class:`RequestTimedOut` per expired request (oldest first)
        and a :class:`WorkerViolation` per fragmented message that timed out.
        """
        out: list[Event] = []
        for cid in sorted(self._pending):
            pending = self._pending[cid]
            if now >= pending.deadline:
                del self._pending[cid]
                self._remember(cid, "timed_out")
                if pending.request == "hello":
                    self.state = SessionState.REFUSED
                out.append(
                    RequestTimedOut(
                        correlation_id=cid, request=pending.request, timeout_s=pending.timeout_s
                    )
                )
        for error in self._stream.expire(now):
            out.append(WorkerViolation(reason="fragment", message=error.message))
        return out

    # ------------------------------------------------------------------ receive

    def receive(self, frame: bytes, now: float) -> list[Event]:
        """Feed one frame from the worker; return the events it completes.

        Never raises on remote misbehaviour: a bad frame gives a
        :class:`WorkerViolation` and leaves the session as it was.
        """
        try:
            envelope = self._stream.receive(frame, now)
        except ProtocolError as exc:
            return [WorkerViolation(reason=_reason_of(exc), message=exc.message)]
        if envelope is None:
            return []
        return self._dispatch(envelope)

    def _dispatch(self, envelope: Envelope) -> list[Event]:
        name = body_name(envelope)
        cid = envelope.correlation_id
        if name in bodies.ANSWERS or (name == "error" and cid != 0):
            return self._answer(name, envelope)
        if name == "error":
            error = envelope.error
            return [
                ErrorReceived(
                    correlation_id=0,
                    code=_error_code(error),
                    message=error.message,
                    details=dict(error.details),
                    retryable=error.retryable,
                )
            ]
        if name in bodies.JOB_EVENTS:
            if self.state is not SessionState.READY:
                return [
                    WorkerViolation(
                        reason="before_hello",
                        message=f"{name} arrived before the handshake completed",
                        correlation_id=cid,
                    )
                ]
            if name == "job_progress_batch":
                return self._batch(envelope, cid)
            return [_job_event(name, envelope)]
        if name in bodies.CLIENT_ONLY:
            return [
                WorkerViolation(
                    reason="unexpected",
                    message=f"the worker sent a {name}, which only clients send",
                    correlation_id=cid,
                )
            ]
        return [
            WorkerViolation(
                reason="unknown_body",
                message=f"unknown body {name} from a newer protocol",
                correlation_id=cid,
            )
        ]

    def _batch(self, envelope: Envelope, cid: int) -> list[Event]:
        """One ProgressReceived per item of a JobProgressBatch, in order."""
        items = envelope.job_progress_batch.items
        if not items:
            return [
                WorkerViolation(
                    reason="malformed",
                    message="job_progress_batch has no items",
                    correlation_id=cid,
                )
            ]
        return [ProgressReceived(progress=item) for item in items]

    def _answer(self, name: str, envelope: Envelope) -> list[Event]:
        cid = envelope.correlation_id
        pending = self._pending.get(cid)
        if pending is None:
            earlier = self._forgotten.get(cid)
            if earlier in ("timed_out", "abandoned"):
                return [
                    WorkerViolation(
                        reason="late",
                        message=f"{name} answers request {cid}, which already {earlier}",
                        correlation_id=cid,
                    )
                ]
            what = "was already answered" if earlier == "answered" else "was never sent"
            return [
                WorkerViolation(
                    reason="unsolicited",
                    message=f"{name} answers request {cid}, which {what}",
                    correlation_id=cid,
                )
            ]
        if name not in bodies.answers_to(pending.request):
            return [
                WorkerViolation(
                    reason="wrong_answer",
                    message=f"{name} cannot answer a {pending.request} request ({cid})",
                    correlation_id=cid,
                )
            ]
        del self._pending[cid]
        self._remember(cid, "answered")
        if name == "error":
            error = envelope.error
            if pending.request == "hello":
                self.state = SessionState.REFUSED
                return [
                    WorkerRefused(
                        correlation_id=cid,
                        code=_error_code(error),
                        message=error.message,
                        details=dict(error.details),
                    )
                ]
            return [
                ErrorReceived(
                    correlation_id=cid,
                    code=_error_code(error),
                    message=error.message,
                    details=dict(error.details),
                    retryable=error.retryable,
                )
            ]
        if name == "hello_ack":
            return [self._hello_ack(cid, envelope.hello_ack)]
        body = body_of(envelope)
        assert isinstance(body, Message)
        return [AnswerReceived(correlation_id=cid, request=pending.request, name=name, body=body)]

    def _hello_ack(self, cid: int, ack: handshake_pb2.HelloAck) -> Event:
        chosen = Version.from_proto(ack.chosen_version)
        in_range = self.supported.min <= chosen <= self.supported.max
        if not (ack.HasField("chosen_version") and in_range):
            self.state = SessionState.REFUSED
            return WorkerRefused(
                correlation_id=cid,
                code=error_pb2.ERROR_CODE_UNSUPPORTED_VERSION,
                message=f"the worker chose protocol version {chosen}, outside this client's "
                f"{self.supported}",
                details={"local": str(self.supported), "remote_chosen": str(chosen)},
            )
        self.state = SessionState.READY
        self.hello_ack = ack
        self.chosen_version = chosen
        self._stream.version = chosen
        return WorkerAccepted(correlation_id=cid, ack=ack, chosen_version=chosen)

    def _remember(self, correlation_id: int, outcome: str) -> None:
        self._forgotten[correlation_id] = outcome
        if len(self._forgotten) > _FORGOTTEN_LIMIT:
            del self._forgotten[next(iter(self._forgotten))]


def _job_event(name: str, envelope: Envelope) -> Event:
    if name == "job_progress":
        return ProgressReceived(progress=envelope.job_progress)
    if name == "job_log":
        return LogReceived(log=envelope.job_log)
    if name == "job_complete":
        return JobCompleted(complete=envelope.job_complete)
    return JobFailedEvent(failed=envelope.job_failed)


def _error_code(error: error_pb2.Error) -> int:
    """The error's code; UNSPECIFIED is read as INTERNAL (error.proto)."""
    return int(error.code) or error_pb2.ERROR_CODE_INTERNAL


_REASONS: dict[int, str] = {
    error_pb2.ERROR_CODE_MALFORMED: "malformed",
    error_pb2.ERROR_CODE_TOO_LARGE: "too_large",
    error_pb2.ERROR_CODE_FRAGMENT: "fragment",
    error_pb2.ERROR_CODE_UNSUPPORTED_VERSION: "unsupported_version",
}


def _reason_of(exc: ProtocolError) -> str:
    return _REASONS.get(exc.code, "malformed")
