"""ClientSession (sans-IO): hello, correlation, deadlines, typed events, bad frames."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from sleap_rtc.client.session import ClientSession, SessionState
from sleap_rtc_proto.codec import Envelope
from sleap_rtc_proto.errors import SessionMisuse
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import error_pb2, handshake_pb2, job_pb2, paths_pb2, progress_pb2, spec_pb2
from sleap_rtc_proto.versions import SUPPORTED, Version


class Worker:
    """The worker's side, scripted with a real MessageStream."""

    def __init__(self) -> None:
        self.stream = MessageStream()

    def read(self, frames: list[bytes]) -> list[Envelope]:
        out = [self.stream.receive(f, 0.0) for f in frames]
        return [e for e in out if e is not None]

    def send(self, body: Message, correlation_id: int = 0) -> list[bytes]:
        return self.stream.send(body, correlation_id=correlation_id)[1]


def ack(**kw: Any) -> handshake_pb2.HelloAck:
    kw.setdefault("chosen_version", SUPPORTED.max.to_proto())
    kw.setdefault("features", ["fragments", "attach", "progress_batch"])
    kw.setdefault("worker_id", "w1")
    return handshake_pb2.HelloAck(**kw)


def feed(session: ClientSession, frames: list[bytes], now: float = 0.0) -> list[Event]:
    events = []
    for frame in frames:
        events += session.receive(frame, now)
    return events


def check(session: ClientSession, labels: str = "/l.slp", *, now: float = 0.0, **kw: Any) -> int:
    """Queue a PathCheckRequest; returns its correlation id."""
    return session.request(paths_pb2.PathCheckRequest(labels_path=labels, **kw), now=now)


def ready_session(**kw: Any) -> tuple[ClientSession, Worker]:
    session = ClientSession(token="tok", **kw)
    worker = Worker()
    session.hello(now=0.0)
    [hello] = worker.read(session.data_to_send())
    events = feed(session, worker.send(ack(mounts=["/mnt/lab"]), hello.message_id))
    assert isinstance(events[0], WorkerAccepted)
    return session, worker


def test_hello_carries_token_versions_and_software() -> None:
    session = ClientSession(
        token="jwt-token", software="sleap-rtc 9", components={"sleap": "1.6.6"}, client_name="me"
    )
    out = session.hello(now=0.0)
    [env] = Worker().read(session.data_to_send())
    hello = env.hello
    assert env.message_id == out
    assert hello.token == "jwt-token"
    assert Version.from_proto(hello.min_version) == SUPPORTED.min
    assert Version.from_proto(hello.max_version) == SUPPORTED.max
    assert hello.software == "sleap-rtc 9"
    assert dict(hello.components) == {"sleap": "1.6.6"}
    assert hello.client_name == "me"
    assert session.state is SessionState.HELLO_SENT


def test_requests_before_hello_are_misuse() -> None:
    session = ClientSession()
    with pytest.raises(SessionMisuse):
        check(session, "/a.slp")
    session.hello(now=0.0)
    with pytest.raises(SessionMisuse):
        session.hello(now=0.0)


def test_hello_refused_by_error() -> None:
    session = ClientSession(token="bad")
    worker = Worker()
    out = session.hello(now=0.0)
    error = error_pb2.Error(code=error_pb2.ERROR_CODE_UNAUTHENTICATED, message="token expired")
    [event] = feed(session, worker.send(error, out))
    assert isinstance(event, WorkerRefused)
    assert event.code == error_pb2.ERROR_CODE_UNAUTHENTICATED
    assert event.message == "token expired"
    assert session.state is SessionState.REFUSED


def test_hello_ack_with_foreign_version_is_refused() -> None:
    session = ClientSession()
    worker = Worker()
    out = session.hello(now=0.0)
    bad = ack(chosen_version=Version(1, 99).to_proto())
    [event] = feed(session, worker.send(bad, out))
    assert isinstance(event, WorkerRefused)
    assert event.code == error_pb2.ERROR_CODE_UNSUPPORTED_VERSION
    assert not session.ready


def test_path_check_request_and_answer() -> None:
    session, worker = ready_session()
    out = check(
        session, "/data/l.slp", now=1.0, path_mappings={"/a.mp4": "/mnt/a.mp4"},
        prefix_mappings={"/Users/me": "/mnt/lab"}, max_suggestions=3,
    )
    [env] = worker.read(session.data_to_send())
    req = env.path_check_request
    assert req.labels_path == "/data/l.slp"
    assert dict(req.path_mappings) == {"/a.mp4": "/mnt/a.mp4"}
    assert dict(req.prefix_mappings) == {"/Users/me": "/mnt/lab"}
    assert req.max_suggestions == 3
    assert session.pending == {out: "path_check_request"}
    result = paths_pb2.PathCheckResult(check_token="t1")
    [event] = feed(session, worker.send(result, out))
    assert isinstance(event, AnswerReceived) and event.name == "path_check_result"
    assert event.request == "path_check_request"
    assert event.correlation_id == out and event.body.check_token == "t1"
    assert session.pending == {}


def test_submit_accepted_rejected_and_error() -> None:
    session, worker = ready_session()
    spec = spec_pb2.TrainJobSpec(config_content="a: 1", labels_path="/l.slp")
    first = session.request(
        job_pb2.JobSubmit(job_id="job-1", spec=spec, check_token="ct"), now=0.0
    )
    [env] = worker.read(session.data_to_send())
    assert env.job_submit.job_id == "job-1" and env.job_submit.check_token == "ct"
    assert env.job_submit.spec.config_content == "a: 1"
    [event] = feed(session, worker.send(job_pb2.JobAccepted(job_id="job-1"), first))
    assert isinstance(event, AnswerReceived) and event.name == "job_accepted"

    second = session.request(job_pb2.JobSubmit(job_id="job-2", spec=spec), now=0.0)
    rejected = job_pb2.JobRejected(
        job_id="job-2",
        violations=[job_pb2.FieldViolation(field="spec.labels_path", message="missing")],
    )
    [event] = feed(session, worker.send(rejected, second))
    assert isinstance(event, AnswerReceived) and event.name == "job_rejected"
    assert isinstance(event.body, job_pb2.JobRejected)
    assert event.body.violations[0].field == "spec.labels_path"

    third = session.request(job_pb2.JobSubmit(job_id="job-3", spec=spec), now=0.0)
    busy = error_pb2.Error(code=error_pb2.ERROR_CODE_BUSY, message="busy", retryable=True)
    [event] = feed(session, worker.send(busy, third))
    assert isinstance(event, ErrorReceived)
    assert event.correlation_id == third and event.retryable


def test_attach_and_control_answers() -> None:
    session, worker = ready_session()
    out = session.request(job_pb2.JobAttach(job_id="job-1", after_sequence=7), now=0.0)
    [env] = worker.read(session.data_to_send())
    assert env.job_attach.after_sequence == 7
    status = job_pb2.JobStatus(job_id="job-1", state=job_pb2.JOB_STATE_RUNNING)
    [event] = feed(session, worker.send(status, out))
    assert isinstance(event, AnswerReceived) and event.name == "job_status"
    assert event.request == "job_attach"
    out = session.request(
        job_pb2.JobControl(job_id="job-1", action=job_pb2.CONTROL_ACTION_STOP), now=0.0
    )
    [env] = worker.read(session.data_to_send())
    assert env.job_control.action == job_pb2.CONTROL_ACTION_STOP


def test_job_events_are_typed() -> None:
    session, worker = ready_session()
    frames = (
        worker.send(progress_pb2.JobProgress(job_id="j", sequence=1,
                                             event=progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN))
        + worker.send(progress_pb2.JobLog(job_id="j", sequence=2, lines=["hi"]))
        + worker.send(progress_pb2.JobComplete(job_id="j", sequence=3))
        + worker.send(progress_pb2.JobFailed(job_id="k", sequence=1, message="boom"))
    )
    events = feed(session, frames)
    assert [type(e) for e in events] == [ProgressReceived, LogReceived, JobCompleted,
                                         JobFailedEvent]


def test_wrong_correlation_id_is_ignored_and_real_answer_still_lands() -> None:
    session, worker = ready_session()
    out = check(session, now=0.0)
    [event] = feed(session, worker.send(paths_pb2.PathCheckResult(), 999))
    assert isinstance(event, WorkerViolation) and event.reason == "unsolicited"
    assert out in session.pending
    [event] = feed(session, worker.send(paths_pb2.PathCheckResult(), out))
    assert isinstance(event, AnswerReceived)


def test_answer_of_the_wrong_kind_is_ignored() -> None:
    session, worker = ready_session()
    out = check(session, now=0.0)
    [event] = feed(session, worker.send(job_pb2.JobAccepted(job_id="x"), out))
    assert isinstance(event, WorkerViolation) and event.reason == "wrong_answer"
    assert out in session.pending


def test_duplicate_answer_is_unsolicited() -> None:
    session, worker = ready_session()
    out = check(session, now=0.0)
    feed(session, worker.send(paths_pb2.PathCheckResult(), out))
    [event] = feed(session, worker.send(paths_pb2.PathCheckResult(), out))
    assert isinstance(event, WorkerViolation) and event.reason == "unsolicited"


def test_deadlines_follow_the_time_passed_in() -> None:
    session, worker = ready_session(default_timeout_s=5.0)
    out = check(session, now=100.0)
    assert session.next_deadline() == 105.0
    assert session.timeouts(104.9) == []
    [event] = session.timeouts(105.0)
    assert isinstance(event, RequestTimedOut)
    assert event.correlation_id == out and event.request == "path_check_request"
    assert session.pending == {}
    [late] = feed(session, worker.send(paths_pb2.PathCheckResult(), out), now=200.0)
    assert isinstance(late, WorkerViolation) and late.reason == "late"


def test_hello_timeout_marks_refused() -> None:
    session = ClientSession()
    session.hello(now=0.0, timeout_s=1.0)
    [event] = session.timeouts(2.0)
    assert isinstance(event, RequestTimedOut) and event.request == "hello"
    assert session.state is SessionState.REFUSED


def test_abandon_makes_answer_late() -> None:
    session, worker = ready_session()
    out = check(session, now=0.0)
    session.abandon(out)
    [event] = feed(session, worker.send(paths_pb2.PathCheckResult(), out))
    assert isinstance(event, WorkerViolation) and event.reason == "late"


def test_garbage_is_a_violation_and_the_session_stays_usable() -> None:
    session, worker = ready_session()
    out = check(session, now=0.0)
    for junk in (b"", b"\xff\xff\xff", b"not protobuf at all", b"\x0a\x02\x08\x63"):
        events = session.receive(junk, 0.0)
        assert len(events) == 1 and isinstance(events[0], WorkerViolation)
    [event] = feed(session, worker.send(paths_pb2.PathCheckResult(), out))
    assert isinstance(event, AnswerReceived)


def test_unsolicited_error_and_unexpected_bodies() -> None:
    session, worker = ready_session()
    [event] = feed(session, worker.send(error_pb2.Error(message="your frame was bad")))
    assert isinstance(event, ErrorReceived) and event.correlation_id == 0
    [event] = feed(session, worker.send(handshake_pb2.Hello()))
    assert isinstance(event, WorkerViolation) and event.reason == "unexpected"


def test_unknown_body_from_newer_minor() -> None:
    session, _ = ready_session()
    from sleap_rtc_proto.v1 import envelope_pb2

    header = envelope_pb2.Envelope(version=SUPPORTED.max.to_proto(), message_id=5)
    unknown = header.SerializeToString() + bytes([0xEA, 0x02, 0x02, 0x08, 0x01])  # field 45
    [event] = session.receive(unknown, 0.0)
    assert isinstance(event, WorkerViolation) and event.reason == "unknown_body"


def test_progress_before_hello_is_ignored() -> None:
    session = ClientSession()
    session.hello(now=0.0)
    frame = Worker().send(progress_pb2.JobProgress(job_id="j", sequence=1))
    [event] = feed(session, frame)
    assert isinstance(event, WorkerViolation) and event.reason == "before_hello"


def test_stale_fragments_expire_through_timeouts() -> None:
    session, worker = ready_session()
    result = paths_pb2.PathCheckResult(
        videos=[paths_pb2.VideoCheck(original_path="y" * 1000) for _ in range(400)]
    )
    frames = worker.send(result, 1)
    assert len(frames) > 1
    assert session.receive(frames[0], 0.0) == []
    events = session.timeouts(1000.0)
    assert any(isinstance(e, WorkerViolation) and e.reason == "fragment" for e in events)


@settings(
    max_examples=3 * settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_receive_never_raises_on_arbitrary_bytes(frames: list[bytes]) -> None:
    session, worker = ready_session()
    out = check(session, now=0.0)
    for frame in frames:
        events = session.receive(frame, 0.0)
        assert all(isinstance(e, WorkerViolation | ErrorReceived | ProgressReceived
                              | LogReceived | JobCompleted | JobFailedEvent
                              | AnswerReceived | WorkerRefused | WorkerAccepted)
                   for e in events)
    # Unless random bytes happened to answer it, the request is still pending and answerable.
    if out in session.pending:
        [event] = feed(session, worker.send(paths_pb2.PathCheckResult(), out))
        assert isinstance(event, AnswerReceived)


_bodies = st.sampled_from([
    paths_pb2.PathCheckResult(),
    job_pb2.JobAccepted(job_id="j"),
    job_pb2.JobRejected(job_id="j"),
    job_pb2.JobStatus(job_id="j"),
    handshake_pb2.HelloAck(chosen_version=SUPPORTED.max.to_proto()),
    error_pb2.Error(code=error_pb2.ERROR_CODE_INTERNAL, message="x"),
    progress_pb2.JobProgress(job_id="j"),
    handshake_pb2.Hello(),
])


@settings(max_examples=3 * settings.default.max_examples, deadline=None)
@given(st.lists(st.tuples(_bodies, st.integers(min_value=0, max_value=6)), max_size=12))
def test_any_answer_sequence_keeps_correlation_consistent(
    answers: list[tuple[Message, int]],
) -> None:
    session, worker = ready_session()
    out = check(session, now=0.0)
    answered = 0
    for body, cid in answers:
        for event in feed(session, worker.send(body, cid)):
            if not isinstance(event, WorkerViolation) and (
                getattr(event, "correlation_id", None) == out
            ):
                answered += 1
    assert answered <= 1
    assert (out in session.pending) == (answered == 0)


# -- JobProgressBatch (protocol 1.1, feature "progress_batch") ----------------------------------


def _batch(*sequences: int) -> progress_pb2.JobProgressBatch:
    return progress_pb2.JobProgressBatch(
        items=[
            progress_pb2.JobProgress(
                job_id="j", sequence=s, event=progress_pb2.PROGRESS_EVENT_BATCH_END,
                epoch=0, batch=s, metrics={"loss": 1.0 / s},
            )
            for s in sequences
        ]
    )


def test_hello_announces_progress_batch_by_default() -> None:
    session = ClientSession()
    session.hello(now=0.0)
    [env] = Worker().read(session.data_to_send())
    assert "progress_batch" in env.hello.features
    session = ClientSession(features=("fragments", "attach"))
    session.hello(now=0.0)
    [env] = Worker().read(session.data_to_send())
    assert "progress_batch" not in env.hello.features


def test_batch_before_hello_is_a_violation() -> None:
    session = ClientSession()
    session.hello(now=0.0)
    [event] = feed(session, Worker().send(_batch(1, 2)))
    assert isinstance(event, WorkerViolation) and event.reason == "before_hello"


def test_empty_or_garbage_batch_is_a_typed_violation() -> None:
    session, worker = ready_session()
    out = check(session, now=0.0)
    [event] = feed(session, worker.send(progress_pb2.JobProgressBatch()))
    assert isinstance(event, WorkerViolation) and event.reason == "malformed"
    from sleap_rtc_proto.v1 import envelope_pb2

    header = envelope_pb2.Envelope(version=SUPPORTED.max.to_proto(), message_id=99)
    inner = b"\x0a\x03\xff\xff\xff"  # items: 3 bytes that are no JobProgress
    junk = header.SerializeToString() + b"\xc2\x02" + bytes([len(inner)]) + inner  # field 40
    [event] = session.receive(junk, 0.0)
    assert isinstance(event, WorkerViolation) and event.reason == "malformed"
    [event] = feed(session, worker.send(paths_pb2.PathCheckResult(), out))
    assert isinstance(event, AnswerReceived)


@given(st.lists(st.lists(st.integers(1, 10_000), min_size=1, max_size=5), max_size=20))
@settings(
    max_examples=settings.default.max_examples // 2, suppress_health_check=[HealthCheck.too_slow]
)
def test_batches_and_singles_arrive_as_the_items_in_order(groups: list[list[int]]) -> None:
    session, worker = ready_session()
    frames: list[bytes] = []
    for group in groups:
        if len(group) == 1:
            frames += worker.send(progress_pb2.JobProgress(job_id="j", sequence=group[0]))
        else:
            frames += worker.send(_batch(*group))
    events = feed(session, frames)
    assert all(isinstance(e, ProgressReceived) for e in events)
    assert [e.progress.sequence for e in events if isinstance(e, ProgressReceived)] == [
        s for g in groups for s in g
    ]
