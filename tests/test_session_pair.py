"""ClientSession and WorkerSession joined in memory, frames dropped and reordered, no asyncio.

The handshake, version negotiation, fragments, correlation and batching as the
two real state machines see them; each side's own edge cases stay in
test_client_session.py and test_worker_session.py.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.pair import SessionPair

from sleap_rtc.client.events import (
    AnswerReceived,
    ErrorReceived,
    JobCompleted,
    LogReceived,
    ProgressReceived,
    RequestTimedOut,
    WorkerAccepted,
    WorkerRefused,
    WorkerViolation,
)
from sleap_rtc.client.session import ClientSession, SessionState
from sleap_rtc.worker.batching import coalesce
from sleap_rtc.worker.events import ClientAccepted, ClientViolation, RequestReceived
from sleap_rtc.worker.session import WorkerInfo, WorkerSession
from sleap_rtc_proto.bodies import Feature
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import error_pb2, job_pb2, paths_pb2, progress_pb2
from sleap_rtc_proto.versions import SUPPORTED, Version, VersionRange

V1_0 = Version(1, 0)


def check_request(labels: str = "/mnt/lab/l.slp") -> paths_pb2.PathCheckRequest:
    return paths_pb2.PathCheckRequest(labels_path=labels)


# --- handshake and versions ----------------------------------------------------------------


def test_handshake_agrees_on_version_features_and_subject() -> None:
    pair = SessionPair()
    cid = pair.client.hello(now=0.0)
    worker_events, client_events = pair.roundtrip()
    [accepted] = worker_events
    assert isinstance(accepted, ClientAccepted) and accepted.correlation_id == cid
    assert accepted.subject == "ann" and accepted.client_software == "pair-client"
    [ready] = client_events
    assert isinstance(ready, WorkerAccepted) and ready.correlation_id == cid
    assert ready.chosen_version == SUPPORTED.max == pair.client.chosen_version
    assert pair.worker.chosen_version == SUPPORTED.max
    assert set(ready.ack.features) == set(pair.worker.features) == {str(f) for f in Feature}
    assert ready.ack.subject == "ann" and pair.client.mounts == ("/mnt/lab",)


def test_a_1_0_client_gets_1_0_and_no_batching() -> None:
    pair = SessionPair(client=ClientSession(token="good", supported=VersionRange(V1_0, V1_0)))
    pair.handshake()
    assert pair.client.chosen_version == pair.worker.chosen_version == V1_0
    assert Feature.PROGRESS_BATCH not in pair.worker.features
    assert Feature.ATTACH in pair.worker.features


def test_no_common_version_is_refused_with_both_ranges_named() -> None:
    future = VersionRange(Version(2, 0), Version(2, 3))
    pair = SessionPair(client=ClientSession(token="good", supported=future))
    pair.client.hello(now=0.0)
    # A 2.x client writes 2.x envelopes, which a 1.x worker cannot read at all.
    worker_events, client_events = pair.roundtrip()
    [violation] = worker_events
    assert isinstance(violation, ClientViolation)
    assert violation.error.code == error_pb2.ERROR_CODE_UNSUPPORTED_VERSION
    [refused] = client_events
    assert isinstance(refused, WorkerRefused)
    assert refused.code == error_pb2.ERROR_CODE_UNSUPPORTED_VERSION
    assert pair.client.state is SessionState.REFUSED and not pair.worker.authenticated


def test_bad_token_is_refused_and_nothing_else_is_served() -> None:
    pair = SessionPair(client=ClientSession(token="stolen"))
    pair.client.hello(now=0.0)
    _, client_events = pair.roundtrip()
    [refused] = client_events
    assert isinstance(refused, WorkerRefused)
    assert refused.code == error_pb2.ERROR_CODE_UNAUTHENTICATED
    assert refused.details["reason"] == "malformed"
    assert not pair.worker.authenticated


def test_lost_hello_times_out_on_the_client_and_a_retry_on_a_new_pair_works() -> None:
    pair = SessionPair()
    pair.client.hello(now=0.0, timeout_s=2.0)
    assert pair.deliver("worker", drop=lambda i, f: True) == []
    pair.now = 2.0
    [timed_out] = pair.client.timeouts(pair.now)
    assert isinstance(timed_out, RequestTimedOut) and timed_out.request == "hello"
    assert pair.client.state is SessionState.REFUSED
    SessionPair().handshake()


# --- correlation ---------------------------------------------------------------------------


def test_answers_reach_their_requests_in_any_order() -> None:
    pair = SessionPair()
    pair.handshake()
    first = pair.client.request(check_request("/mnt/lab/a.slp"), now=0.0)
    second = pair.client.request(job_pb2.JobAttach(job_id="j1"), now=0.0)
    requests = pair.deliver("worker", order=[1, 0])
    assert [e.correlation_id for e in requests if isinstance(e, RequestReceived)] == [
        second,
        first,
    ]
    for event in requests:
        assert isinstance(event, RequestReceived)
        if event.name == "job_attach":
            answer: object = job_pb2.JobStatus(job_id="j1", state=job_pb2.JOB_STATE_RUNNING)
        else:
            answer = paths_pb2.PathCheckResult(check_token="t")
        pair.worker.send(answer, correlation_id=event.correlation_id)  # type: ignore[arg-type]
    answers = pair.deliver("client", order=[1, 0])
    by_id = {e.correlation_id: e for e in answers if isinstance(e, AnswerReceived)}
    assert by_id[first].name == "path_check_result" and by_id[first].request == (
        "path_check_request"
    )
    assert by_id[second].name == "job_status" and by_id[second].request == "job_attach"
    assert pair.client.pending == {}


def test_rule_violation_is_answered_by_the_worker_and_seen_typed_by_the_client() -> None:
    pair = SessionPair()
    pair.handshake()
    cid = pair.client.request(job_pb2.JobControl(job_id="j1"), now=0.0)  # no action
    worker_events, client_events = pair.roundtrip()
    assert isinstance(worker_events[0], ClientViolation)
    [error] = client_events
    assert isinstance(error, ErrorReceived) and error.correlation_id == cid
    assert error.code == error_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert error.details["rule_id"] == "job_control.action.specified"


def test_submit_breaking_rules_gets_job_rejected_not_an_error() -> None:
    pair = SessionPair()
    pair.handshake()
    cid = pair.client.request(job_pb2.JobSubmit(job_id="../x"), now=0.0)
    _, client_events = pair.roundtrip()
    [answer] = client_events
    assert isinstance(answer, AnswerReceived) and answer.correlation_id == cid
    assert isinstance(answer.body, job_pb2.JobRejected)
    assert {v.rule_id for v in answer.body.violations} >= {"job_id.format"}


def test_a_lost_answer_times_out_and_its_late_copy_is_a_violation() -> None:
    pair = SessionPair()
    pair.handshake()
    cid = pair.client.request(check_request(), now=0.0, timeout_s=5.0)
    [event] = pair.deliver("worker")
    assert isinstance(event, RequestReceived)
    pair.worker.send(paths_pb2.PathCheckResult(), correlation_id=cid)
    pair.pump()
    late = pair.in_flight["client"][:]
    assert pair.deliver("client", drop=lambda i, f: True) == []
    pair.now = 5.0
    [timed_out] = pair.client.timeouts(pair.now)
    assert isinstance(timed_out, RequestTimedOut) and timed_out.correlation_id == cid
    [violation] = pair.client.receive(late[0], pair.now)
    assert isinstance(violation, WorkerViolation) and violation.reason == "late"


# --- fragments -----------------------------------------------------------------------------


def _big_result(n: int = 4000) -> paths_pb2.PathCheckResult:
    return paths_pb2.PathCheckResult(
        videos=[paths_pb2.VideoCheck(index=i, original_path=f"/v/{i:05d}" + "x" * 300)
                for i in range(n)]
    )


def test_a_large_answer_crosses_in_fragments_in_any_order() -> None:
    pair = SessionPair()
    pair.handshake()
    cid = pair.client.request(check_request(), now=0.0)
    pair.deliver("worker")
    pair.worker.send(_big_result(), correlation_id=cid)
    pair.pump()
    count = len(pair.in_flight["client"])
    assert count > 2
    [answer] = pair.deliver("client", order=list(reversed(range(count))))
    assert isinstance(answer, AnswerReceived) and answer.correlation_id == cid
    assert isinstance(answer.body, paths_pb2.PathCheckResult) and len(answer.body.videos) == 4000


def test_a_large_request_crosses_in_reordered_fragments_with_its_correlation() -> None:
    pair = SessionPair()
    pair.handshake()
    big = "model_config: {}\n" + "# pad\n" * 60_000  # ~360 KB: two frames or more
    from sleap_rtc_proto.v1 import spec_pb2

    submit = job_pb2.JobSubmit(
        job_id="j", spec=spec_pb2.TrainJobSpec(labels_path="/mnt/l.slp", config_content=big)
    )
    cid = pair.client.request(submit, now=0.0)
    pair.pump()
    count = len(pair.in_flight["worker"])
    assert count >= 2
    [event] = pair.deliver("worker", order=list(reversed(range(count))))
    assert isinstance(event, RequestReceived) and event.correlation_id == cid
    assert isinstance(event.body, job_pb2.JobSubmit) and event.body.spec.config_content == big


def test_a_lost_fragment_expires_on_the_worker_with_a_typed_error() -> None:
    pair = SessionPair()
    pair.handshake()
    spec_yaml = "trainer_config: {}\n# " + "p" * 600_000
    from sleap_rtc_proto.v1 import spec_pb2

    submit = job_pb2.JobSubmit(
        job_id="j1", spec=spec_pb2.TrainJobSpec(labels_path="/mnt/l.slp", config_content=spec_yaml)
    )
    cid = pair.client.request(submit, now=0.0)
    assert pair.deliver("worker", drop=lambda i, f: i == 1) == []
    pair.now = 120.0
    [expired] = pair.worker.expire(pair.now)
    assert isinstance(expired, ClientViolation) and expired.correlation_id == cid
    assert expired.error.code == error_pb2.ERROR_CODE_FRAGMENT
    [error] = pair.deliver("client")
    assert isinstance(error, ErrorReceived) and error.correlation_id == cid
    # The connection is still usable.
    again = pair.client.request(check_request(), now=pair.now)
    [event] = pair.deliver("worker")
    assert isinstance(event, RequestReceived) and event.correlation_id == again


# --- batching ------------------------------------------------------------------------------


def _progress(*sequences: int) -> list[progress_pb2.JobProgress]:
    return [
        progress_pb2.JobProgress(
            job_id="j", sequence=s, event=progress_pb2.PROGRESS_EVENT_BATCH_END, batch=s
        )
        for s in sequences
    ]


def test_coalesced_progress_reaches_the_client_as_items_in_order() -> None:
    pair = SessionPair()
    pair.handshake()
    assert Feature.PROGRESS_BATCH in pair.worker.features
    log = progress_pb2.JobLog(job_id="j", sequence=4, lines=["x"])
    done = progress_pb2.JobComplete(job_id="j", sequence=7)
    for message in coalesce([*_progress(1, 2, 3), log, *_progress(5, 6), done]):
        pair.worker.send(message)
    pair.pump()
    assert len(pair.in_flight["client"]) == 4  # batch, log, batch, complete
    events = pair.deliver("client")
    assert [type(e) for e in events] == [ProgressReceived] * 3 + [LogReceived] + [
        ProgressReceived
    ] * 2 + [JobCompleted]


@settings(max_examples=settings.default.max_examples // 2)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_batches_survive_reordering_by_sequence(groups: list[int], rnd: object) -> None:
    pair = SessionPair()
    pair.handshake()
    sequence = 0
    for size in groups:
        items = _progress(*range(sequence + 1, sequence + size + 1))
        sequence += size
        for message in coalesce(items):
            pair.worker.send(message)
    pair.pump()
    order = list(range(len(pair.in_flight["client"])))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    events = pair.deliver("client", order=order)
    got = sorted(e.progress.sequence for e in events if isinstance(e, ProgressReceived))
    assert got == list(range(1, sequence + 1))


def test_a_request_needs_its_feature_and_version_in_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sleap_rtc_proto import bodies
    from sleap_rtc_proto.errors import SessionMisuse

    no_attach = WorkerSession(
        WorkerInfo(worker_id="w1", features=("fragments",)), verifier=None, session_id="s"
    )
    pair = SessionPair(worker=no_attach)
    pair.handshake()
    with pytest.raises(SessionMisuse, match="attach feature"):
        pair.client.request(job_pb2.JobAttach(job_id="j1"), now=0.0)
    assert pair.client.pending == {}
    # A peer that sends it anyway is answered UNEXPECTED by the worker session itself.
    cid, frames = pair.client._stream.send(job_pb2.JobAttach(job_id="j1"))
    [refused] = pair.worker.receive(frames[0], 0.0)
    assert isinstance(refused, ClientViolation) and refused.correlation_id == cid
    assert refused.error.details["feature"] == "attach"
    # Pretend JobControl arrived in 1.1: a 1.0 connection may not send it, and a
    # worker that gets it anyway answers UNEXPECTED naming the version.
    row = bodies.ROWS["job_control"]
    later = dataclasses.replace(row, since=Version(1, 1))
    monkeypatch.setitem(bodies.ROWS_BY_TYPE, row.full_name, later)
    old = SessionPair(client=ClientSession(token="good", supported=VersionRange(V1_0, V1_0)))
    old.handshake()
    control = job_pb2.JobControl(job_id="j1", action=job_pb2.CONTROL_ACTION_STOP)
    with pytest.raises(SessionMisuse, match=r"needs protocol 1\.1"):
        old.client.request(control, now=0.0)
    raw = MessageStream(version=V1_0)
    cid, frames = raw.send(control)
    [event] = old.worker.receive(frames[0], 0.0)
    assert isinstance(event, ClientViolation) and event.correlation_id == cid
    assert event.error.code == error_pb2.ERROR_CODE_UNEXPECTED
    assert "needs protocol 1.1" in event.error.message


def test_worker_refuses_sending_a_client_body_and_an_unauthenticated_send() -> None:
    from sleap_rtc_proto.errors import SessionMisuse

    worker = WorkerSession(WorkerInfo(worker_id="w1"), verifier=None)
    with pytest.raises(SessionMisuse):
        worker.send(progress_pb2.JobProgress(job_id="j"))
    client = ClientSession()
    with pytest.raises(SessionMisuse):
        client.request(check_request(), now=0.0)


def test_browse_is_routed_only_where_the_feature_and_1_2_are_in_effect() -> None:
    from sleap_rtc_proto.errors import SessionMisuse

    pair = SessionPair()
    pair.handshake()
    assert Feature.BROWSE in pair.client.features and Feature.BROWSE in pair.worker.features
    cid = pair.client.request(paths_pb2.DirectoryListRequest(path="/mnt/lab"), now=0.0)
    [event] = pair.deliver("worker")
    assert isinstance(event, RequestReceived) and event.name == "directory_list_request"
    pair.worker.send(paths_pb2.DirectoryList(path="/mnt/lab", total=0), correlation_id=cid)
    [answer] = pair.deliver("client")
    assert isinstance(answer, AnswerReceived) and answer.name == "directory_list"
    assert answer.request == "directory_list_request"

    no_browse = SessionPair(client=ClientSession(token="good", features=("fragments", "attach")))
    no_browse.handshake()
    assert Feature.BROWSE not in no_browse.client.features
    with pytest.raises(SessionMisuse, match="browse feature"):
        no_browse.client.request(paths_pb2.DirectoryListRequest(), now=0.0)
    assert no_browse.client.pending == {}

    v1_1 = Version(1, 1)
    old = SessionPair(client=ClientSession(token="good", supported=VersionRange(V1_0, v1_1)))
    old.handshake()
    assert Feature.BROWSE not in old.worker.features  # a 1.1 peer never agrees to it
    with pytest.raises(SessionMisuse):
        old.client.request(paths_pb2.DirectoryListRequest(), now=0.0)
    raw = MessageStream(version=v1_1)
    rid, frames = raw.send(paths_pb2.DirectoryListRequest())
    [violation] = old.worker.receive(frames[0], 0.0)
    assert isinstance(violation, ClientViolation) and violation.correlation_id == rid
    assert violation.error.code == error_pb2.ERROR_CODE_UNEXPECTED
