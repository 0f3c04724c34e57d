"""The worker's side of one connection, sans-IO: frames and time in, events and frames out.

:class:`WorkerSession` owns the handshake (version negotiation, token check),
the authentication gate, request/response correlation and every protocol
Error. It never touches sockets, asyncio or a clock: the adapter
(:mod:`sleap_rtc.worker.connection`) feeds it frames with the current time and
sends whatever :meth:`WorkerSession.data_to_send` returns, h11-style. The
events it reports live in :mod:`sleap_rtc.worker.events`.

>>> from sleap_rtc_proto.stream import MessageStream
>>> from sleap_rtc_proto.v1 import handshake_pb2
>>> from sleap_rtc_proto.versions import SUPPORTED
>>> session = WorkerSession(WorkerInfo(worker_id="w1"), verifier=None, session_id="s1")
>>> client = MessageStream()
>>> _, frames = client.send(handshake_pb2.Hello(
...     min_version=SUPPORTED.min.to_proto(), max_version=SUPPORTED.max.to_proto()))
>>> [type(e).__name__ for e in session.receive(frames[0], now=0.0)]
['ClientAccepted']
>>> client.receive(session.data_to_send()[0], now=0.0).WhichOneof("body")
'hello_ack'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError, Message

from sleap_rtc.worker.events import (
    ClientAccepted,
    ClientError,
    ClientViolation,
    Event,
    RequestReceived,
    make_error,
    submit_violations,
)
from sleap_rtc_proto import bodies
from sleap_rtc_proto.codec import Envelope, UnknownBody, body_of
from sleap_rtc_proto.errors import ProtocolError, SessionMisuse, UnsupportedVersion
from sleap_rtc_proto.limits import MAX_CONFIG_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import error_pb2, handshake_pb2, job_pb2
from sleap_rtc_proto.versions import SUPPORTED, Version, VersionRange, negotiate

__all__ = ["TokenRefused", "Verifier", "WorkerInfo", "WorkerSession"]


class TokenRefused(Exception):
    """Raised by a :data:`Verifier` for a token it does not accept.

    Args:
        reason: a stable short code (e.g. ``"expired"``), sent in the Error's details.
        message: a human sentence naming the problem.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


#: Checks a client's Hello token and returns its subject (the user), or raises
#: :class:`TokenRefused`. Injected by the adapter: the session knows no token format.
Verifier = Callable[[str], str]


@dataclass(frozen=True)
class WorkerInfo:
    """What the worker tells clients in HelloAck.

    Attributes:
        worker_id: the worker's peer id in its signaling room. Required.
        software: e.g. ``"sleap-rtc 0.1.0"``.
        components: e.g. ``{"sleap-nn": "0.3.5"}``.
        features: optional capabilities offered (intersected with the client's).
        mounts: allowed roots disclosed to clients; empty hides them.
        max_frame_bytes: largest datachannel message accepted.
        max_message_bytes: largest reassembled message accepted.
        max_config_bytes: largest ``config_content`` accepted.
        max_concurrent_jobs: jobs run at once.
    """

    worker_id: str
    software: str = ""
    components: Mapping[str, str] = field(default_factory=dict)
    features: Sequence[str] = bodies.DEFAULT_FEATURES
    mounts: Sequence[str] = ()
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_config_bytes: int = MAX_CONFIG_BYTES
    max_concurrent_jobs: int = 1

    def limits(self) -> handshake_pb2.Limits:
        return handshake_pb2.Limits(
            max_frame_bytes=self.max_frame_bytes,
            max_message_bytes=self.max_message_bytes,
            max_config_bytes=self.max_config_bytes,
            max_concurrent_jobs=self.max_concurrent_jobs,
        )


def _guess_message_id(frame: bytes, max_bytes: int) -> int:
    """Best-effort message id of a frame the codec refused (0 when unknown)."""
    if len(frame) > max_bytes:
        return 0
    envelope = Envelope()
    try:
        envelope.ParseFromString(frame)
    except (DecodeError, RuntimeError, ValueError):
        return 0
    return int(envelope.message_id)


class WorkerSession:
    """One connection's protocol state machine on the worker (sans-IO).

    Args:
        info: what HelloAck reports.
        verifier: checks the Hello token and returns its subject. ``None``
            disables authentication (local development only); it must be
            passed explicitly.
        session_id: a name for this session in logs (the adapter makes one).
        supported: the protocol versions this worker speaks.
    """

    def __init__(
        self,
        info: WorkerInfo,
        *,
        verifier: Verifier | None,
        session_id: str = "",
        supported: VersionRange = SUPPORTED,
    ) -> None:
        self.info = info
        self._verifier = verifier
        self.session_id = session_id
        self.supported = supported
        self._stream = MessageStream(
            max_frame_bytes=info.max_frame_bytes, max_message_bytes=info.max_message_bytes
        )
        self._outbox: list[bytes] = []
        self.authenticated = False
        self.subject = ""
        self.chosen_version: Version | None = None
        #: Features both sides announced (HelloAck.features), set by a successful Hello.
        self.features: frozenset[str] = frozenset()

    # --- output -------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Take every frame queued since the last call, in order."""
        frames, self._outbox = self._outbox, []
        return frames

    def send(self, body: Message, *, correlation_id: int = 0) -> int:
        """Queue ``body`` (fragmented when large), answering ``correlation_id`` if set;
        returns its message id.

        Raises:
            SessionMisuse: before the handshake succeeded (only Errors may be
                sent then, through the session itself), or ``body`` is one
                only clients send.
        """
        if not self.authenticated:
            raise SessionMisuse("nothing but Errors may be sent before a successful Hello")
        row = bodies.ROWS_BY_TYPE.get(body.DESCRIPTOR.full_name)
        if row is None or row.name in bodies.CLIENT_ONLY:
            raise SessionMisuse(f"{type(body).__name__} is not a body a worker sends")
        return self._queue(bodies.for_peer(body, self.features), correlation_id)

    def send_error(self, correlation_id: int, error: error_pb2.Error) -> int:
        """Queue an Error answering ``correlation_id`` (0: answers nothing known)."""
        return self._queue(error, correlation_id)

    def _queue(self, body: Message, correlation_id: int) -> int:
        message_id, frames = self._stream.send(body, correlation_id=correlation_id)
        self._outbox.extend(frames)
        return message_id

    # --- input --------------------------------------------------------------

    def expire(self, now: float) -> list[Event]:
        """Drop fragmented messages that waited too long; answer each with an Error."""
        events: list[Event] = []
        for exc in self._stream.expire(now):
            events.append(self._violation(self._fragment_id(exc), exc.to_message()))
        return events

    def receive(self, frame: bytes, now: float) -> list[Event]:
        """Handle one frame received at ``now`` (seconds, any monotonic clock).

        Never raises for anything the peer sent: bad input gives a queued
        Error and a :class:`ProtocolViolation` event.
        """
        try:
            envelope = self._stream.receive(frame, now)
        except ProtocolError as exc:
            correlation = self._fragment_id(exc) or _guess_message_id(
                frame, self.info.max_frame_bytes
            )
            return self._violations_then_expired(correlation, exc.to_message(), now)
        except Exception as exc:  # a codec bug must not kill the connection
            error = make_error(
                error_pb2.ERROR_CODE_INTERNAL, f"could not decode the frame: {type(exc).__name__}"
            )
            return [self._violation(0, error)]
        events = self.expire(now)
        if envelope is None:
            return events
        try:
            events.extend(self._dispatch(envelope))
        except Exception as exc:  # defensive: answer instead of dying
            events.append(
                self._violation(
                    envelope.message_id,
                    make_error(
                        error_pb2.ERROR_CODE_INTERNAL,
                        f"the worker failed to handle the message: {type(exc).__name__}: {exc}",
                    ),
                )
            )
        return events

    def _violations_then_expired(
        self, correlation: int, error: error_pb2.Error, now: float
    ) -> list[Event]:
        return [self._violation(correlation, error), *self.expire(now)]

    @staticmethod
    def _fragment_id(exc: ProtocolError) -> int:
        raw = exc.details.get("fragmented_message_id", "")
        return int(raw) if raw.isdigit() else 0

    def _violation(self, correlation_id: int, error: error_pb2.Error) -> ClientViolation:
        self._queue(error, correlation_id)
        return ClientViolation(correlation_id=correlation_id, error=error)

    def _dispatch(self, envelope: Envelope) -> list[Event]:
        mid = envelope.message_id
        body = body_of(envelope)
        name = envelope.WhichOneof("body")
        if name == "error":
            if not self.authenticated:
                return []
            assert isinstance(body, error_pb2.Error)
            return [ClientError(correlation_id=envelope.correlation_id, error=body)]
        if isinstance(body, handshake_pb2.Hello):
            return self._hello(mid, body)
        if not self.authenticated:
            what = (
                f"unknown body (field {body.field_number})"
                if isinstance(body, UnknownBody)
                else name
            )
            return [
                self._violation(
                    mid,
                    make_error(
                        error_pb2.ERROR_CODE_UNAUTHENTICATED,
                        f"{what} refused: send Hello with a valid token first",
                    ),
                )
            ]
        if isinstance(body, UnknownBody):
            return [
                self._violation(
                    mid,
                    make_error(
                        error_pb2.ERROR_CODE_UNKNOWN_BODY,
                        f"body field {body.field_number} is not known to this worker "
                        f"(protocol {self.chosen_version})",
                        details={"field_number": str(body.field_number)},
                    ),
                )
            ]
        if name in bodies.WORKER_ONLY:
            return [
                self._violation(
                    mid,
                    make_error(
                        error_pb2.ERROR_CODE_UNEXPECTED,
                        f"{name} is sent by workers, not to them",
                        details={"body": str(name)},
                    ),
                )
            ]
        return self._request(mid, body)

    def _request(self, mid: int, body: Message | UnknownBody) -> list[Event]:
        row = None if isinstance(body, UnknownBody) else bodies.ROWS_BY_TYPE.get(
            body.DESCRIPTOR.full_name
        )
        if row is None or row.kind is not bodies.Kind.REQUEST:
            return [
                self._violation(
                    mid,
                    make_error(
                        error_pb2.ERROR_CODE_UNEXPECTED,
                        f"{type(body).__name__} is not a request this worker handles",
                    ),
                )
            ]
        assert isinstance(body, Message)
        if self.chosen_version is not None and row.since > self.chosen_version:
            return [
                self._violation(
                    mid,
                    make_error(
                        error_pb2.ERROR_CODE_UNEXPECTED,
                        f"{row.name} needs protocol {row.since}; this connection speaks "
                        f"{self.chosen_version}",
                        details={"body": row.name},
                    ),
                )
            ]
        if row.feature is not None and row.feature not in self.features:
            return [
                self._violation(
                    mid,
                    make_error(
                        error_pb2.ERROR_CODE_UNEXPECTED,
                        f"{row.name} needs the {row.feature!s} feature, which was not agreed "
                        "in the handshake",
                        details={"body": row.name, "feature": str(row.feature)},
                    ),
                )
            ]
        if isinstance(body, job_pb2.JobSubmit):
            # Rule violations of a submit are answered with JobRejected (job.proto).
            violations = submit_violations(body, max_config_bytes=self.info.max_config_bytes)
            if violations:
                rejected = job_pb2.JobRejected(
                    job_id=body.job_id,
                    violations=[v.to_proto() for v in violations],
                    message=f"job {body.job_id!r} rejected: {violations[0].message}",
                )
                self._queue(rejected, mid)
                error = make_error(
                    error_pb2.ERROR_CODE_INVALID_ARGUMENT,
                    rejected.message,
                    details={"rule_id": violations[0].rule_id, "field": violations[0].field},
                )
                return [ClientViolation(correlation_id=mid, error=error)]
        else:
            violations = bodies.validate(body)
            if violations:
                first = violations[0]
                return [
                    self._violation(
                        mid,
                        make_error(
                            error_pb2.ERROR_CODE_INVALID_ARGUMENT,
                            "; ".join(v.message for v in violations),
                            details={"rule_id": first.rule_id, "field": first.field},
                        ),
                    )
                ]
        return [RequestReceived(correlation_id=mid, name=row.name, body=body)]

    def _hello(self, mid: int, hello: handshake_pb2.Hello) -> list[Event]:
        if self.authenticated:
            return [
                self._violation(
                    mid,
                    make_error(
                        error_pb2.ERROR_CODE_UNEXPECTED,
                        "Hello was already accepted on this connection; open a new one "
                        "to authenticate again",
                    ),
                )
            ]
        remote = VersionRange(
            Version.from_proto(hello.min_version), Version.from_proto(hello.max_version)
        )
        try:
            chosen = negotiate(self.supported, remote)
        except UnsupportedVersion as exc:
            error = exc.to_message()
            error.message = (
                f"no common protocol version: this worker speaks {self.supported}, "
                f"the client speaks {remote}"
            )
            return [self._violation(mid, error)]
        subject = ""
        if self._verifier is not None:
            try:
                subject = self._verifier(hello.token)
            except TokenRefused as exc:
                return [
                    self._violation(
                        mid,
                        make_error(
                            error_pb2.ERROR_CODE_UNAUTHENTICATED,
                            f"token refused ({exc.reason}): {exc.message}",
                            details={"reason": exc.reason},
                        ),
                    )
                ]
            except Exception as exc:
                return [
                    self._violation(
                        mid,
                        make_error(
                            error_pb2.ERROR_CODE_INTERNAL,
                            f"token verification failed on the worker: {type(exc).__name__}",
                        ),
                    )
                ]
        self.authenticated = True
        self.subject = subject
        self.chosen_version = chosen
        self._stream.version = chosen
        offered = set(self.info.features)
        features = [f for f in bodies.features_for(chosen, hello.features) if f in offered]
        self.features = frozenset(features)
        ack = handshake_pb2.HelloAck(
            chosen_version=chosen.to_proto(),
            min_version=self.supported.min.to_proto(),
            max_version=self.supported.max.to_proto(),
            software=self.info.software,
            components=dict(self.info.components),
            features=features,
            limits=self.info.limits(),
            worker_id=self.info.worker_id,
            session_id=self.session_id,
            subject=subject,
            mounts=list(self.info.mounts),
        )
        self._queue(ack, mid)
        return [
            ClientAccepted(
                correlation_id=mid,
                subject=subject,
                chosen_version=chosen,
                client_name=hello.client_name,
                client_software=hello.software,
            )
        ]
