"""The client's half of a sleap-rtc connection, sans-IO.

:class:`ClientSession` turns requests into frames and frames into typed events.
It owns no socket, no task and no clock: every method that needs the time takes
``now`` (seconds, any monotonic origin), and every method that sends returns
the frames to put on the link. The asyncio adapter
(:mod:`sleap_rtc.client.connection`) only feeds it.

>>> session = ClientSession(token="", software="sleap-rtc test")
>>> out = session.hello(now=0.0)
>>> out.request_id, len(out.frames)
(1, 1)
>>> [type(e).__name__ for e in session.timeouts(now=60.0)]
['RequestTimedOut']

Answers are matched to requests by ``Envelope.correlation_id``. A frame that
cannot be used (garbage bytes, an answer to nothing, an answer of the wrong
kind, a late answer) becomes a :class:`ProtocolViolation` event and changes no
state: the session stays usable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.message import Message

from sleap_rtc.client.events import (
    ErrorReceived,
    Event,
    HelloAccepted,
    HelloRefused,
    JobAcceptedEvent,
    JobCompleted,
    JobFailedEvent,
    JobRejectedEvent,
    JobStatusReceived,
    LogReceived,
    PathCheckAnswered,
    ProgressReceived,
    ProtocolViolation,
    RequestKind,
    RequestTimedOut,
)
from sleap_rtc_proto.codec import MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, Envelope, body_name
from sleap_rtc_proto.errors import ProtocolError
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import error_pb2, handshake_pb2, job_pb2, paths_pb2, spec_pb2
from sleap_rtc_proto.versions import SUPPORTED, Version, VersionRange

# The events are re-exported: ``from sleap_rtc.client.session import ProgressReceived`` works.
__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ClientSession",
    "Outgoing",
    "SessionMisuse",
    "SessionState",
]

#: Seconds a request waits for its answer unless the caller says otherwise.
DEFAULT_TIMEOUT_S = 10.0
#: How many answered or abandoned request ids are remembered to tell late answers apart.
_FORGOTTEN_LIMIT = 1024

#: Answer bodies that fit each request kind (besides ``error``).
_ANSWERS: dict[RequestKind, frozenset[str]] = {
    RequestKind.HELLO: frozenset({"hello_ack"}),
    RequestKind.PATH_CHECK: frozenset({"path_check_result"}),
    RequestKind.SUBMIT: frozenset({"job_accepted", "job_rejected"}),
    RequestKind.ATTACH: frozenset({"job_status"}),
    RequestKind.CONTROL: frozenset({"job_status"}),
}
_ANSWER_BODIES = frozenset().union(*_ANSWERS.values())
_JOB_EVENTS = frozenset(
    {"job_progress", "job_progress_batch", "job_log", "job_complete", "job_failed"}
)
_REQUEST_BODIES = frozenset(
    {"hello", "path_check_request", "job_submit", "job_control", "job_attach"}
)


class SessionState(StrEnum):
    """Where the handshake is."""

    NEW = "new"
    HELLO_SENT = "hello_sent"
    READY = "ready"
    REFUSED = "refused"


class SessionMisuse(RuntimeError):
    """The local caller used the session wrongly (e.g. a request before hello)."""


# ----------------------------------------------------------------------------- session


@dataclass(frozen=True)
class Outgoing:
    """A request ready to send: its id (the correlation key) and its frames, in order."""

    request_id: int
    frames: list[bytes]


@dataclass
class _Pending:
    kind: RequestKind
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
        features: tuple[str, ...] = ("fragments", "attach", "progress_batch"),
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
        self.features = tuple(features)
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
        self._pending: dict[int, _Pending] = {}
        self._forgotten: dict[int, str] = {}  # request id -> "answered" | "timed_out" | "abandoned"

    # ------------------------------------------------------------------ queries

    @property
    def ready(self) -> bool:
        """True once a HelloAck was accepted."""
        return self.state is SessionState.READY

    @property
    def pending(self) -> dict[int, RequestKind]:
        """Requests waiting for an answer: id -> kind."""
        return {rid: p.kind for rid, p in self._pending.items()}

    def next_deadline(self) -> float | None:
        """The earliest deadline of a pending request, or None."""
        if not self._pending:
            return None
        return min(p.deadline for p in self._pending.values())

    def next_deadline_of(self, request_id: int) -> float:
        """The deadline of pending request ``request_id``.

        Raises:
            KeyError: the request is not pending.
        """
        return self._pending[request_id].deadline

    @property
    def mounts(self) -> tuple[str, ...]:
        """The worker's allowed mounts as disclosed in HelloAck (may be empty)."""
        return tuple(self.hello_ack.mounts) if self.hello_ack is not None else ()

    # ------------------------------------------------------------------ requests

    def hello(self, *, now: float, timeout_s: float | None = None) -> Outgoing:
        """The Hello frame(s). Call once, first."""
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
        return self._request(RequestKind.HELLO, body, now, timeout_s)

    def check_paths(
        self,
        labels_path: str,
        *,
        now: float,
        path_mappings: Mapping[str, str] | None = None,
        prefix_mappings: Mapping[str, str] | None = None,
        max_suggestions: int = 0,
        timeout_s: float | None = None,
    ) -> Outgoing:
        """A PathCheckRequest for ``labels_path`` with the mappings to apply first."""
        body = paths_pb2.PathCheckRequest(
            labels_path=labels_path,
            path_mappings=dict(path_mappings or {}),
            prefix_mappings=dict(prefix_mappings or {}),
            max_suggestions=max_suggestions,
        )
        return self._request(RequestKind.PATH_CHECK, body, now, timeout_s)

    def submit(
        self,
        job_id: str,
        spec: spec_pb2.TrainJobSpec,
        *,
        now: float,
        check_token: str = "",
        timeout_s: float | None = None,
    ) -> Outgoing:
        """A JobSubmit. ``job_id`` is the idempotency key: resubmitting it is safe."""
        body = job_pb2.JobSubmit(job_id=job_id, spec=spec, check_token=check_token)
        return self._request(RequestKind.SUBMIT, body, now, timeout_s)

    def attach(
        self, job_id: str, *, now: float, after_sequence: int = 0, timeout_s: float | None = None
    ) -> Outgoing:
        """A JobAttach: the job's state, and progress after ``after_sequence`` resent."""
        body = job_pb2.JobAttach(job_id=job_id, after_sequence=after_sequence)
        return self._request(RequestKind.ATTACH, body, now, timeout_s)

    def control(
        self,
        job_id: str,
        action: job_pb2.ControlAction.ValueType,
        *,
        now: float,
        timeout_s: float | None = None,
    ) -> Outgoing:
        """A JobControl (STOP: graceful, keeps the checkpoint; CANCEL: at once)."""
        body = job_pb2.JobControl(job_id=job_id, action=action)
        return self._request(RequestKind.CONTROL, body, now, timeout_s)

    def abandon(self, request_id: int) -> None:
        """Stop waiting for ``request_id``; a later answer becomes a ``late`` violation."""
        if self._pending.pop(request_id, None) is not None:
            self._remember(request_id, "abandoned")

    def _request(
        self, kind: RequestKind, body: Message, now: float, timeout_s: float | None
    ) -> Outgoing:
        if kind is not RequestKind.HELLO and self.state is not SessionState.READY:
            raise SessionMisuse(f"{kind.value} request before a successful hello")
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        request_id, frames = self._stream.send(body)
        self._pending[request_id] = _Pending(kind, now + timeout, timeout)
        return Outgoing(request_id, frames)

    # ------------------------------------------------------------------ time

    def timeouts(self, now: float) -> list[Event]:
        """Expire requests past their deadline and stale fragments.

        Returns one :class:`RequestTimedOut` per expired request (oldest first)
        and a :class:`ProtocolViolation` per fragmented message that timed out.
        """
        out: list[Event] = []
        for rid in sorted(self._pending):
            pending = self._pending[rid]
            if now >= pending.deadline:
                del self._pending[rid]
                self._remember(rid, "timed_out")
                if pending.kind is RequestKind.HELLO:
                    self.state = SessionState.REFUSED
                out.append(RequestTimedOut(rid, pending.kind, pending.timeout_s))
        for error in self._stream.expire(now):
            out.append(ProtocolViolation("fragment", error.message))
        return out

    # ------------------------------------------------------------------ receive

    def receive(self, frame: bytes, now: float) -> list[Event]:
        """Feed one frame from the worker; return the events it completes.

        Never raises on remote misbehaviour: a bad frame gives a
        :class:`ProtocolViolation` and leaves the session as it was.
        """
        try:
            envelope = self._stream.receive(frame, now)
        except ProtocolError as exc:
            return [ProtocolViolation(_reason_of(exc), exc.message)]
        if envelope is None:
            return []
        return self._dispatch(envelope)

    def _dispatch(self, envelope: Envelope) -> list[Event]:
        name = body_name(envelope)
        cid = envelope.correlation_id
        if name in _ANSWER_BODIES or (name == "error" and cid != 0):
            return self._answer(name, envelope)
        if name == "error":
            error = envelope.error
            return [
                ErrorReceived(
                    0, _error_code(error), error.message, dict(error.details), error.retryable
                )
            ]
        if name in _JOB_EVENTS:
            if self.state is not SessionState.READY:
                return [
                    ProtocolViolation(
                        "before_hello", f"{name} arrived before the handshake completed", cid
                    )
                ]
            if name == "job_progress_batch":
                return self._batch(envelope, cid)
            return [_job_event(name, envelope)]
        if name in _REQUEST_BODIES:
            return [
                ProtocolViolation(
                    "unexpected", f"the worker sent a {name}, which only clients send", cid
                )
            ]
        return [
            ProtocolViolation("unknown_body", f"unknown body {name} from a newer protocol", cid)
        ]

    def _batch(self, envelope: Envelope, cid: int) -> list[Event]:
        """One ProgressReceived per item of a JobProgressBatch, in order."""
        items = envelope.job_progress_batch.items
        if not items:
            return [ProtocolViolation("malformed", "job_progress_batch has no items", cid)]
        return [ProgressReceived(item) for item in items]

    def _answer(self, name: str, envelope: Envelope) -> list[Event]:
        cid = envelope.correlation_id
        pending = self._pending.get(cid)
        if pending is None:
            earlier = self._forgotten.get(cid)
            if earlier in ("timed_out", "abandoned"):
                return [
                    ProtocolViolation(
                        "late", f"{name} answers request {cid}, which already {earlier}", cid
                    )
                ]
            what = "was already answered" if earlier == "answered" else "was never sent"
            return [
                ProtocolViolation("unsolicited", f"{name} answers request {cid}, which {what}", cid)
            ]
        if name != "error" and name not in _ANSWERS[pending.kind]:
            return [
                ProtocolViolation(
                    "wrong_answer",
                    f"{name} cannot answer a {pending.kind.value} request ({cid})",
                    cid,
                )
            ]
        del self._pending[cid]
        self._remember(cid, "answered")
        if name == "error":
            error = envelope.error
            if pending.kind is RequestKind.HELLO:
                self.state = SessionState.REFUSED
                return [HelloRefused(cid, _error_code(error), error.message, dict(error.details))]
            return [
                ErrorReceived(
                    cid, _error_code(error), error.message, dict(error.details), error.retryable
                )
            ]
        if name == "hello_ack":
            return [self._hello_ack(cid, envelope.hello_ack)]
        if name == "path_check_result":
            return [PathCheckAnswered(cid, envelope.path_check_result)]
        if name == "job_accepted":
            return [JobAcceptedEvent(cid, envelope.job_accepted)]
        if name == "job_rejected":
            return [JobRejectedEvent(cid, envelope.job_rejected)]
        return [JobStatusReceived(cid, envelope.job_status)]

    def _hello_ack(self, cid: int, ack: handshake_pb2.HelloAck) -> Event:
        chosen = Version.from_proto(ack.chosen_version)
        in_range = self.supported.min <= chosen <= self.supported.max
        if not (ack.HasField("chosen_version") and in_range):
            self.state = SessionState.REFUSED
            return HelloRefused(
                cid,
                error_pb2.ERROR_CODE_UNSUPPORTED_VERSION,
                f"the worker chose protocol version {chosen}, outside this client's "
                f"{self.supported}",
                {"local": str(self.supported), "remote_chosen": str(chosen)},
            )
        self.state = SessionState.READY
        self.hello_ack = ack
        self.chosen_version = chosen
        self._stream.version = chosen
        return HelloAccepted(cid, ack, chosen)

    def _remember(self, request_id: int, outcome: str) -> None:
        self._forgotten[request_id] = outcome
        if len(self._forgotten) > _FORGOTTEN_LIMIT:
            del self._forgotten[next(iter(self._forgotten))]


def _job_event(name: str, envelope: Envelope) -> Event:
    if name == "job_progress":
        return ProgressReceived(envelope.job_progress)
    if name == "job_log":
        return LogReceived(envelope.job_log)
    if name == "job_complete":
        return JobCompleted(envelope.job_complete)
    return JobFailedEvent(envelope.job_failed)


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
