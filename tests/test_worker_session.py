"""WorkerSession (sans-IO): handshake, auth gate, correlation, and every bad frame typed."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleap_rtc.worker.events import ClientAccepted, ClientError, ClientViolation, RequestReceived
from sleap_rtc.worker.session import TokenRefused, WorkerInfo, WorkerSession
from sleap_rtc_proto.codec import Envelope, body_of, make_envelope
from sleap_rtc_proto.errors import SessionMisuse
from sleap_rtc_proto.stream import MessageStream, split
from sleap_rtc_proto.v1 import (
    envelope_pb2,
    error_pb2,
    handshake_pb2,
    job_pb2,
    paths_pb2,
    progress_pb2,
    spec_pb2,
)
from sleap_rtc_proto.versions import SUPPORTED, Version

E = error_pb2
INFO = WorkerInfo(
    worker_id="w1", software="sleap-rtc test", mounts=["/mnt/lab"], max_frame_bytes=4096
)


def verifier(token: str) -> str:
    if token == "good":
        return "ann"
    if token == "old":
        raise TokenRefused("expired", "token has expired; log in again")
    raise TokenRefused("malformed", "token is not a JWT")


def hello(
    token: str = "good", lo: Version = SUPPORTED.min, hi: Version = SUPPORTED.max
) -> handshake_pb2.Hello:
    return handshake_pb2.Hello(
        min_version=lo.to_proto(),
        max_version=hi.to_proto(),
        token=token,
        client_name="t",
        features=["fragments", "attach"],
    )


class Pair:
    """A client MessageStream joined to a WorkerSession in memory."""

    def __init__(self, verify: object = verifier) -> None:
        self.worker = WorkerSession(INFO, verifier=verify, session_id="s1")  # type: ignore[arg-type]
        self.client = MessageStream(max_frame_bytes=4096)
        self.now = 0.0

    def send(self, body: Message) -> tuple[int, list[object]]:
        message_id, frames = self.client.send(body)
        events: list[object] = []
        for frame in frames:
            events.extend(self.worker.receive(frame, self.now))
        return message_id, events

    def raw(self, frame: bytes) -> list[object]:
        return self.worker.receive(frame, self.now)

    def replies(self) -> list[Envelope]:
        out = []
        for frame in self.worker.data_to_send():
            envelope = self.client.receive(frame, self.now)
            if envelope is not None:
                out.append(envelope)
        return out

    def reply(self) -> Envelope:
        (envelope,) = self.replies()
        return envelope

    def authenticate(self) -> None:
        _, events = self.send(hello())
        assert isinstance(events[0], ClientAccepted)
        self.replies()


def error_of(envelope: Envelope) -> error_pb2.Error:
    assert envelope.WhichOneof("body") == "error", envelope
    body = body_of(envelope)
    assert isinstance(body, error_pb2.Error)
    return body


# --- handshake -------------------------------------------------------------------------


def test_hello_ack_reports_worker_and_subject() -> None:
    pair = Pair()
    mid, events = pair.send(hello())
    (event,) = events
    assert isinstance(event, ClientAccepted) and event.subject == "ann"
    reply = pair.reply()
    assert reply.correlation_id == mid and reply.WhichOneof("body") == "hello_ack"
    ack = reply.hello_ack
    assert ack.worker_id == "w1" and ack.subject == "ann" and ack.session_id == "s1"
    assert Version.from_proto(ack.chosen_version) == SUPPORTED.max
    assert list(ack.mounts) == ["/mnt/lab"] and ack.limits.max_frame_bytes == 4096
    assert pair.worker.authenticated


def test_auth_disabled_must_be_explicit_and_gives_no_subject() -> None:
    pair = Pair(verify=None)
    _, events = pair.send(hello(token=""))
    assert isinstance(events[0], ClientAccepted) and events[0].subject == ""


def test_bad_tokens_are_unauthenticated_with_the_reason() -> None:
    pair = Pair()
    for token, reason in (("old", "expired"), ("", "malformed"), ("junk", "malformed")):
        mid, events = pair.send(hello(token))
        assert isinstance(events[0], ClientViolation)
        reply = pair.reply()
        err = error_of(reply)
        assert reply.correlation_id == mid
        assert err.code == E.ERROR_CODE_UNAUTHENTICATED
        assert err.details["reason"] == reason and reason in err.message
    assert not pair.worker.authenticated
    pair.authenticate()  # still usable


def test_verifier_crash_is_internal_not_accepted() -> None:
    def broken(token: str) -> str:
        raise RuntimeError("boom")

    pair = Pair(verify=broken)
    pair.send(hello())
    assert error_of(pair.reply()).code == E.ERROR_CODE_INTERNAL
    assert not pair.worker.authenticated


def test_no_common_version_names_both_ranges() -> None:
    pair = Pair()
    pair.send(hello(lo=Version(1, 5), hi=Version(1, 9)))
    err = error_of(pair.reply())
    assert err.code == E.ERROR_CODE_UNSUPPORTED_VERSION
    assert str(SUPPORTED) in err.message and "1.5..1.9" in err.message
    pair.send(hello(lo=Version(0, 0), hi=Version(0, 0)))
    assert error_of(pair.reply()).code == E.ERROR_CODE_UNSUPPORTED_VERSION


def test_commands_before_hello_are_refused_with_no_event() -> None:
    pair = Pair()
    bodies: list[Message] = [
        paths_pb2.PathCheckRequest(labels_path="/a.slp"),
        job_pb2.JobSubmit(
            job_id="j", spec=spec_pb2.TrainJobSpec(labels_path="/a.slp", config_content="a: 1")
        ),
        job_pb2.JobControl(job_id="j", action=job_pb2.CONTROL_ACTION_CANCEL),
        job_pb2.JobAttach(job_id="j"),
        handshake_pb2.HelloAck(),
    ]
    for body in bodies:
        mid, events = pair.send(body)
        assert all(isinstance(e, ClientViolation) for e in events)
        reply = pair.reply()
        assert reply.correlation_id == mid
        assert error_of(reply).code == E.ERROR_CODE_UNAUTHENTICATED
    # An Error from an unauthenticated peer is dropped, never answered.
    _, events = pair.send(error_pb2.Error(code=E.ERROR_CODE_INTERNAL, message="x"))
    assert events == [] and pair.replies() == []


def test_second_hello_is_unexpected() -> None:
    pair = Pair()
    pair.authenticate()
    mid, _ = pair.send(hello())
    reply = pair.reply()
    assert reply.correlation_id == mid and error_of(reply).code == E.ERROR_CODE_UNEXPECTED
    assert pair.worker.authenticated


# --- requests after authentication -----------------------------------------------------


def test_requests_become_events_with_correlation() -> None:
    pair = Pair()
    pair.authenticate()
    spec = spec_pb2.TrainJobSpec(labels_path="/a.slp", config_content="model_config: {}")
    cases: list[tuple[Message, type]] = [
        (paths_pb2.PathCheckRequest(labels_path="/a.slp"), "path_check_request"),
        (job_pb2.JobSubmit(job_id="j1", spec=spec), "job_submit"),
        (job_pb2.JobControl(job_id="j1", action=job_pb2.CONTROL_ACTION_STOP), "job_control"),
        (job_pb2.JobAttach(job_id="j1", after_sequence=4), "job_attach"),
    ]
    for body, name in cases:
        mid, events = pair.send(body)
        (event,) = events
        assert isinstance(event, RequestReceived) and event.correlation_id == mid
        assert event.name == name and event.body == body
    assert pair.replies() == []
    status = job_pb2.JobStatus(job_id="j1", state=job_pb2.JOB_STATE_RUNNING)
    sent = pair.worker.send(status, correlation_id=7)
    reply = pair.reply()
    assert reply.correlation_id == 7 and reply.message_id == sent


def test_sending_before_hello_or_a_client_body_is_local_misuse() -> None:
    pair = Pair()
    with pytest.raises(SessionMisuse, match="before a successful Hello"):
        pair.worker.send(job_pb2.JobStatus(job_id="j1"))
    pair.authenticate()
    with pytest.raises(SessionMisuse, match="not a body a worker sends"):
        pair.worker.send(job_pb2.JobSubmit(job_id="j1"))
    assert pair.replies() == []


def test_invalid_requests_are_answered_not_handed_out() -> None:
    pair = Pair()
    pair.authenticate()
    mid, events = pair.send(job_pb2.JobSubmit(job_id="bad id"))
    assert isinstance(events[0], ClientViolation)
    reply = pair.reply()
    assert reply.correlation_id == mid and reply.WhichOneof("body") == "job_rejected"
    assert {v.rule_id for v in reply.job_rejected.violations} == {
        "job_id.format",
        "job_submit.spec.required",
    }
    for body, rule in (
        (job_pb2.JobControl(job_id="j"), "job_control.action.specified"),
        (job_pb2.JobAttach(job_id=""), "job_id.format"),
        (
            paths_pb2.PathCheckRequest(path_mappings={"rel": "/x"}),
            "path_check.labels_path.required",
        ),
    ):
        mid, events = pair.send(body)
        err = error_of(pair.reply())
        assert err.code == E.ERROR_CODE_INVALID_ARGUMENT and err.details["rule_id"] == rule
        assert isinstance(events[0], ClientViolation)


def test_config_size_uses_the_workers_limit() -> None:
    info = WorkerInfo(worker_id="w", max_config_bytes=10)
    session = WorkerSession(info, verifier=None)
    client = MessageStream()
    session.receive(client.send(hello())[1][0], 0.0)
    session.data_to_send()
    spec = spec_pb2.TrainJobSpec(labels_path="/a.slp", config_content="model_config: {}")
    _mid, frames = client.send(job_pb2.JobSubmit(job_id="j", spec=spec))
    session.receive(frames[0], 0.0)
    reply = client.receive(session.data_to_send()[0], 0.0)
    assert reply is not None
    assert reply.job_rejected.violations[0].rule_id == "spec.config_content.size"


def test_wrong_direction_bodies_are_unexpected() -> None:
    pair = Pair()
    pair.authenticate()
    for body in (
        handshake_pb2.HelloAck(),
        paths_pb2.PathCheckResult(),
        job_pb2.JobAccepted(job_id="j"),
        job_pb2.JobStatus(job_id="j"),
        progress_pb2.JobProgress(job_id="j"),
        progress_pb2.JobComplete(job_id="j"),
    ):
        mid, events = pair.send(body)
        reply = pair.reply()
        assert reply.correlation_id == mid and error_of(reply).code == E.ERROR_CODE_UNEXPECTED
        assert isinstance(events[0], ClientViolation)


def test_peer_error_is_an_event_not_answered() -> None:
    pair = Pair()
    pair.authenticate()
    _, events = pair.send(error_pb2.Error(code=E.ERROR_CODE_INTERNAL, message="client broke"))
    assert isinstance(events[0], ClientError) and events[0].error.message == "client broke"
    assert pair.replies() == []


def unknown_body_frame(message_id: int, field_number: int = 45) -> bytes:
    head = make_envelope(job_pb2.JobAttach(job_id="x"), message_id=message_id).SerializeToString()
    # Replace the known body with an unknown length-delimited field.
    envelope = Envelope()
    envelope.ParseFromString(head)
    envelope.ClearField("job_attach")
    tag = bytes([(field_number << 3 | 2) & 0x7F | 0x80, (field_number << 3 | 2) >> 7])
    return envelope.SerializeToString() + tag + b"\x02hi"


def test_unknown_body_is_answered_unknown_body() -> None:
    pair = Pair()
    pair.authenticate()
    events = pair.raw(unknown_body_frame(99))
    reply = pair.reply()
    err = error_of(reply)
    assert reply.correlation_id == 99 and err.code == E.ERROR_CODE_UNKNOWN_BODY
    assert err.details["field_number"] == "45"
    assert isinstance(events[0], ClientViolation)


def test_malformed_and_oversize_frames() -> None:
    pair = Pair()
    pair.authenticate()
    pair.raw(b"\xff\xff\xff garbage")
    reply = pair.reply()
    assert error_of(reply).code == E.ERROR_CODE_MALFORMED and reply.correlation_id == 0
    no_version = Envelope(message_id=5)
    no_version.job_attach.job_id = "j"
    pair.raw(no_version.SerializeToString())
    reply = pair.reply()
    assert error_of(reply).code == E.ERROR_CODE_MALFORMED and reply.correlation_id == 5
    no_body = make_envelope(job_pb2.JobAttach(job_id="j"), message_id=6)
    no_body.ClearField("job_attach")
    pair.raw(no_body.SerializeToString())
    assert error_of(pair.reply()).code == E.ERROR_CODE_MALFORMED
    pair.raw(b"\x00" * 5000)
    err = error_of(pair.reply())
    assert err.code == E.ERROR_CODE_TOO_LARGE
    v2 = make_envelope(job_pb2.JobAttach(job_id="j"), message_id=8, version=Version(2, 0))
    pair.raw(v2.SerializeToString())
    reply = pair.reply()
    assert error_of(reply).code == E.ERROR_CODE_UNSUPPORTED_VERSION and reply.correlation_id == 8
    # Still usable.
    _, events = pair.send(job_pb2.JobAttach(job_id="j"))
    assert isinstance(events[0], RequestReceived) and events[0].name == "job_attach"


def test_fragment_errors_name_the_message_and_expire() -> None:
    pair = Pair()
    pair.authenticate()
    data = make_envelope(job_pb2.JobAttach(job_id="j" * 200), message_id=50).SerializeToString()
    frames = split(data, fragmented_message_id=50, next_message_id=51, max_frame_bytes=100)
    assert len(frames) >= 2
    pair.raw(frames[0])
    pair.raw(frames[0])  # duplicated piece
    reply = pair.reply()
    assert error_of(reply).code == E.ERROR_CODE_FRAGMENT and reply.correlation_id == 50
    pair.raw(frames[0])  # a fresh partial message that never completes
    assert pair.replies() == []
    pair.now = 1000.0
    events = pair.worker.expire(pair.now)
    assert len(events) == 1
    reply = pair.reply()
    assert error_of(reply).code == E.ERROR_CODE_FRAGMENT and "timed out" in error_of(reply).message
    nested = make_envelope(
        envelope_pb2.Fragment(fragmented_message_id=1, index=0, count=1, total_bytes=1, data=b"x"),
        message_id=60,
    )
    pair.raw(nested.SerializeToString())
    assert error_of(pair.reply()).code == E.ERROR_CODE_FRAGMENT


# --- fuzz ----------------------------------------------------------------------------------


def still_usable(pair: Pair) -> None:
    if not pair.worker.authenticated:
        pair.send(hello())
        pair.replies()
    mid, events = pair.send(job_pb2.JobAttach(job_id="probe"))
    assert any(
        isinstance(e, RequestReceived) and e.name == "job_attach" and e.correlation_id == mid
        for e in events
    )


@settings(
    max_examples=3 * settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(frames=st.lists(st.binary(max_size=300), max_size=5), authenticated=st.booleans())
def test_random_bytes_never_crash(frames: list[bytes], authenticated: bool) -> None:
    pair = Pair()
    if authenticated:
        pair.authenticate()
    for frame in frames:
        for event in pair.raw(frame):
            assert not isinstance(event, RequestReceived) or authenticated
        for envelope in pair.replies():
            if envelope.WhichOneof("body") == "error":
                assert envelope.error.code != E.ERROR_CODE_UNSPECIFIED
    still_usable(pair)


_text = st.text(max_size=20)
_version = st.builds(Version, st.integers(0, 3), st.integers(0, 3))
_bodies = st.one_of(
    st.builds(
        lambda t, a, b: hello(t, a, b),
        st.sampled_from(["good", "old", "", "x"]),
        _version,
        _version,
    ),
    st.builds(lambda p: paths_pb2.PathCheckRequest(labels_path=p), _text),
    st.builds(
        lambda j, c, lp, e: job_pb2.JobSubmit(
            job_id=j, spec=spec_pb2.TrainJobSpec(config_content=c, labels_path=lp, max_epochs=e)
        ),
        _text,
        _text,
        _text,
        st.integers(0, 2**32 - 1),
    ),
    st.builds(lambda j, a: job_pb2.JobControl(job_id=j, action=a), _text, st.integers(0, 5)),
    st.builds(
        lambda j, s: job_pb2.JobAttach(job_id=j, after_sequence=s), _text, st.integers(0, 2**64 - 1)
    ),
    st.builds(lambda m: error_pb2.Error(code=E.ERROR_CODE_BUSY, message=m), _text),
    st.just(handshake_pb2.HelloAck()),
    st.just(progress_pb2.JobLog(job_id="j", lines=["x"])),
)


@settings(
    max_examples=3 * settings.default.max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(bodies=st.lists(_bodies, max_size=8))
def test_random_valid_envelopes_never_crash(bodies: list[Message]) -> None:
    pair = Pair()
    for body in bodies:
        was_authenticated = pair.worker.authenticated
        mid, events = pair.send(body)
        replies = pair.replies()
        handed_out = [
            e for e in events if not isinstance(e, ClientViolation | ClientAccepted | ClientError)
        ]
        if not was_authenticated:
            assert handed_out == []  # nothing handled before authentication
        if handed_out:
            assert replies == []  # the service answers those
        elif not isinstance(body, error_pb2.Error):
            assert [r.correlation_id for r in replies] == [mid]
    still_usable(pair)


# --- progress_batch (protocol 1.1) --------------------------------------------------------


def test_progress_batch_is_agreed_only_from_1_1_and_when_asked() -> None:
    features = ["fragments", "attach", "progress_batch"]
    pair = Pair()
    pair.send(handshake_pb2.Hello(**{**_hello_kw(), "features": features}))
    ack = pair.reply().hello_ack
    assert list(ack.features) == features and pair.worker.features == frozenset(features)
    assert Version.from_proto(ack.chosen_version) == SUPPORTED.max
    # a v1.0 peer that (wrongly) lists the feature still gets plain 1.0 and no batches
    old = Pair()
    old.client.version = Version(1, 0)
    kw = {**_hello_kw(), "features": features, "max_version": Version(1, 0).to_proto()}
    old.send(handshake_pb2.Hello(**kw))
    envelope = old.reply()
    assert (envelope.version.major, envelope.version.minor) == (1, 0)
    assert (envelope.hello_ack.chosen_version.major, envelope.hello_ack.chosen_version.minor) == (
        1,
        0,
    )
    assert "progress_batch" not in envelope.hello_ack.features
    assert old.worker.features == frozenset({"fragments", "attach"})
    # a client that does not ask does not get it
    plain = Pair()
    plain.send(hello())
    assert "progress_batch" not in plain.reply().hello_ack.features


def test_a_batch_sent_to_the_worker_is_refused_as_unexpected() -> None:
    pair = Pair()
    pair.authenticate()
    batch = progress_pb2.JobProgressBatch(
        items=[progress_pb2.JobProgress(job_id="j", sequence=s) for s in (1, 2)]
    )
    _mid, events = pair.send(batch)
    assert len(events) == 1
    error = error_of(pair.reply())
    assert error.code == error_pb2.ERROR_CODE_UNEXPECTED and "job_progress_batch" in error.message


def _hello_kw() -> dict[str, object]:
    return {
        "min_version": SUPPORTED.min.to_proto(),
        "max_version": SUPPORTED.max.to_proto(),
        "token": "good",
        "client_name": "t",
    }
