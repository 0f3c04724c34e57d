"""relaywire.py and relayqueue.py: the relay's files, its wire messages and both ends'
bookkeeping (pure: no sockets, no processes)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import stat
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sleap_rtc.worker.jobrecord import RunResult
from sleap_rtc.worker.relay import exit_status
from sleap_rtc.worker.relayqueue import Inbox, Outbox
from sleap_rtc.worker.relaywire import (
    MAX_FRAME,
    MAX_LINE_CHARS,
    MAX_LINES,
    PROTOCOL,
    RESULT_FILE,
    SPEC_FILE,
    Command,
    Hello,
    Log,
    Progress,
    RelaySpec,
    RelaySpecError,
    RelayWireError,
    Result,
    decode,
    encode,
    forget_secret,
    read_result,
    read_spec,
    write_result,
    write_spec,
)
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc.worker.trainplan import TrainPlan
from sleap_rtc.worker.zmqprogress import ProgressUpdate
from sleap_rtc_proto.v1 import progress_pb2

P = progress_pb2
KEY = "a" * 40

# --- strategies ------------------------------------------------------------------

texts = st.text(max_size=40)
ids = st.text(min_size=1, max_size=40)
seqs = st.integers(min_value=1, max_value=2**63 - 1)
counts = st.none() | st.integers(min_value=0, max_value=2**32)
floats = st.floats(allow_nan=True, allow_infinity=True)
updates = st.builds(
    ProgressUpdate,
    event=st.sampled_from([v for v in P.ProgressEvent.values() if v]),
    epoch=counts,
    batch=counts,
    metrics=st.dictionaries(texts, floats, max_size=5),
    what=texts,
)
results = st.builds(
    RunResult,
    completed=st.booleans(),
    failure_code=st.integers(min_value=0, max_value=100),
    exit_code=st.none() | st.integers(min_value=-64, max_value=255),
    message=texts,
    stopped_early=st.booleans(),
    duration_s=st.floats(min_value=0, max_value=1e6),
    log_tail=st.lists(texts, max_size=5).map(tuple),
    outputs=st.lists(texts, max_size=3).map(tuple),
)
messages = st.one_of(
    st.builds(
        Hello,
        job_id=ids,
        node=texts,
        relay_pid=st.integers(min_value=1, max_value=2**22),
        trainer_pid=st.none() | st.integers(min_value=1, max_value=2**22),
        assigned=st.integers(min_value=0, max_value=2**40),
        acked=st.integers(min_value=0, max_value=2**40),
    ),
    st.builds(Progress, job_id=ids, seq=seqs, update=updates),
    st.builds(
        Log,
        job_id=ids,
        seq=seqs,
        stream=st.sampled_from(list(P.LogStream.values())),
        lines=st.lists(st.text(max_size=80), max_size=5).map(tuple),
    ),
    st.builds(Result, job_id=ids, seq=seqs, result=results),
    st.builds(
        Command,
        action=st.sampled_from(["stop", "cancel", "ack"]),
        upto=st.integers(min_value=0, max_value=2**63 - 1),
        job_id=st.text(max_size=20),
    ),
)


def same(a: object, b: object) -> bool:
    """Equality that counts NaN as equal to NaN (metrics may be NaN)."""
    return json.dumps(dataclasses.asdict(a), sort_keys=True) == json.dumps(  # type: ignore[call-overload]
        dataclasses.asdict(b),
        sort_keys=True,  # type: ignore[call-overload]
    )


@settings()
@given(messages)
def test_every_message_round_trips(msg: object) -> None:
    frames = encode(msg)  # type: ignore[arg-type]
    assert frames[0] == PROTOCOL and len(frames) == 3
    back = decode(frames)
    assert type(back) is type(msg) and same(back, msg)


@settings()
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_garbage_frames_are_a_typed_error(frames: list[bytes]) -> None:
    with pytest.raises(RelayWireError):
        decode(frames)


@settings()
@given(messages, st.integers(min_value=0, max_value=2), st.binary(max_size=8))
def test_a_damaged_payload_never_escapes_as_another_error(
    msg: object, where: int, junk: bytes
) -> None:
    frames = encode(msg)  # type: ignore[arg-type]
    body = frames[2]
    frames[2] = body[:where] + junk + body[where + len(junk) :]
    with contextlib.suppress(RelayWireError):
        decode(frames)


def frames(kind: bytes, payload: object) -> list[bytes]:
    return [PROTOCOL, kind, json.dumps(payload).encode()]


LOG = {"job_id": "j", "seq": 1, "stream": 1, "lines": ["x"]}


@pytest.mark.parametrize(
    ("msg", "says"),
    [
        ([PROTOCOL, b"log"], "expected 3 frames"),
        ([b"sleap-rtc-relay/9", b"log", b"{}"], "not a relay message"),
        ([PROTOCOL, b"log", b"x" * (MAX_FRAME + 1)], "over the limit"),
        ([PROTOCOL, b"log", b"\xff"], "not JSON"),
        (frames(b"log", [1]), "must be a JSON object"),
        (frames(b"nope", LOG), "unknown message kind"),
        (frames(b"log", {**LOG, "seq": 0}), "'seq'"),
        (frames(b"log", {**LOG, "seq": True}), "'seq'"),
        (frames(b"log", {**LOG, "seq": 2**63}), "'seq'"),
        (frames(b"log", {**LOG, "job_id": ""}), "'job_id' is empty"),
        (frames(b"log", {**LOG, "job_id": "j" * 300}), "'job_id'"),
        (frames(b"log", {**LOG, "lines": ["x" * (MAX_LINE_CHARS + 1)]}), "a line"),
        (frames(b"log", {**LOG, "lines": ["x"] * (MAX_LINES + 1)}), "'lines'"),
        (frames(b"log", {**LOG, "lines": [1]}), "a line"),
        (frames(b"progress", {"job_id": "j", "seq": 1, "event": 99}), "'event'"),
        (
            frames(b"progress", {"job_id": "j", "seq": 1, "event": 4, "metrics": {"a": "1"}}),
            "not a number",
        ),
        (frames(b"progress", {"job_id": "j", "seq": 1, "event": 4, "epoch": -1}), "'epoch'"),
        (frames(b"result", {"job_id": "j", "seq": 1, "result": {}}), "'completed'"),
        (frames(b"command", {"action": "format-disk", "upto": 0}), "'action'"),
        (frames(b"hello", {"job_id": "j", "node": "n", "relay_pid": 0, "seq": 0}), "relay_pid"),
    ],
)
def test_bad_frames_name_the_problem(msg: list[bytes], says: str) -> None:
    with pytest.raises(RelayWireError, match=says):
        decode(msg)


# --- the files ---------------------------------------------------------------------


def spec_for(tmp: Path, **changes: object) -> RelaySpec:
    base = RelaySpec(
        job_id="job-1",
        endpoint="tcp://10.0.0.1:7000",
        server_key=KEY,
        client_public="b" * 40,
        client_secret="c" * 40,
        trainer_command=("sleap-nn", "train"),
        plan=TrainPlan(
            config_file=tmp / "relay" / "config.yaml",
            labels_path="/mnt/l.slp",
            ckpt_dir=tmp / "runs",
            run_name="r",
            max_epochs=3,
            video_path_map=(("C:\\v.mp4", "/mnt/v.mp4"),),
            manifest=(("/mnt/l.slp", 1, 2, 3, 4),),
        ),
        confinement="require",
        mounts=("/mnt",),
        allow_reporting=True,
        trainer_env={"A": "b"},
        limits=RunLimits(max_run_s=100.0, no_progress_timeout_s=None, log_batch_lines=7),
        result_wait_s=5.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_spec_round_trips_private_and_atomic(tmp_path: Path) -> None:
    folder = tmp_path / "relay"
    spec = spec_for(tmp_path)
    path = write_spec(folder, spec)
    assert path == folder / SPEC_FILE
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_spec(folder) == spec
    assert sorted(p.name for p in folder.iterdir()) == [SPEC_FILE]  # no temp file left


def test_forget_secret_leaves_everything_else(tmp_path: Path) -> None:
    folder = tmp_path / "relay"
    spec = spec_for(tmp_path)
    write_spec(folder, spec)
    forget_secret(folder)
    text = (folder / SPEC_FILE).read_text()
    assert "c" * 40 not in text
    assert read_spec(folder) == dataclasses.replace(spec, client_secret="")
    assert stat.S_IMODE((folder / SPEC_FILE).stat().st_mode) == 0o600


def test_unreadable_specs_name_the_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "relay"
    with pytest.raises(RelaySpecError, match=r"cannot read .*relay\.json"):
        read_spec(folder)
    write_spec(folder, spec_for(tmp_path))
    good = json.loads((folder / SPEC_FILE).read_text())
    cases: list[tuple[object, str]] = [
        ("{", "is not JSON"),
        ([], "JSON object"),
        ({k: v for k, v in good.items() if k != "endpoint"}, "'endpoint' is missing"),
        ({**good, "endpoint": "udp://x"}, "'endpoint' must be tcp"),
        ({**good, "confinement": "maybe"}, "'confinement' must be one of"),
        ({**good, "server_key": "short"}, "'server_key' is not a z85"),
        ({**good, "trainer_command": []}, "'trainer_command' is empty"),
        ({**good, "trainer_command": [1]}, "'trainer_command' must be a list of strings"),
        ({**good, "plan": {"labels_path": "x"}}, "'plan' is not a run plan"),
        ({**good, "limits": {"bogus": 1}}, "'limits.bogus' is unknown"),
        ({**good, "limits": {"max_run_s": "soon"}}, "'limits.max_run_s' must be a number"),
        ({**good, "trainer_env": {"A": 1}}, "'trainer_env'"),
        ({**good, "job_id": 7}, "'job_id' has the wrong type"),
    ]
    for content, says in cases:
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / SPEC_FILE).write_text(text)
        with pytest.raises(RelaySpecError, match=says) as caught:
            read_spec(folder)
        assert SPEC_FILE in str(caught.value)


@settings()
@given(results)
def test_result_file_round_trips(result: RunResult) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        assert read_result(folder) is None
        path = write_result(folder, result)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert read_result(folder) == result
        assert [p.name for p in folder.iterdir()] == [RESULT_FILE]


def test_a_garbled_result_file_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / RESULT_FILE).write_text('{"completed": "yes"}')
    with pytest.raises(RelaySpecError, match="'completed'"):
        read_result(tmp_path)
    (tmp_path / RESULT_FILE).write_text("[")
    with pytest.raises(RelaySpecError, match="not JSON"):
        read_result(tmp_path)


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (RunResult(completed=True, exit_code=0), 0),
        (RunResult(completed=True, exit_code=0, stopped_early=True), 0),
        (RunResult(completed=False, failure_code=P.FAILURE_CODE_TRAINER_EXITED, exit_code=3), 3),
        (RunResult(completed=False, failure_code=P.FAILURE_CODE_CANCELLED, exit_code=-15), 143),
        (RunResult(completed=False, failure_code=P.FAILURE_CODE_TRAINER_EXITED, exit_code=0), 1),
        (RunResult(completed=False, failure_code=P.FAILURE_CODE_INTERNAL), 1),
    ],
)
def test_exit_status_says_what_happened(result: RunResult, status: int) -> None:
    assert exit_status(result) == status


# --- the bookkeeping ------------------------------------------------------------------

BEGIN = ProgressUpdate(event=P.PROGRESS_EVENT_TRAIN_BEGIN)


def batch(i: int) -> ProgressUpdate:
    return ProgressUpdate(event=P.PROGRESS_EVENT_BATCH_END, epoch=0, batch=i, metrics={"loss": 1.0})


def drain(box: Outbox) -> list[int]:
    out = []
    while (msg := box.next_to_send()) is not None:
        box.mark_sent(msg)
        out.append(msg.seq)
    return out


def test_outbox_numbers_resends_after_rewind_and_forgets_on_ack() -> None:
    box = Outbox("j")
    box.add_progress(BEGIN)
    box.add_log(P.LOG_STREAM_STDOUT, ["a"])
    box.add_progress(batch(0))
    assert drain(box) == [1, 2, 3]
    assert drain(box) == []
    box.ack(2)
    box.rewind()  # a new connection: everything unacknowledged again
    assert drain(box) == [3]
    box.add_result(RunResult(completed=True))
    assert drain(box) == [4]
    box.ack(4)
    assert box.unacked == 0 and box.acked == 4
    box.ack(1)  # an old ack changes nothing
    assert box.acked == 4


def test_outbox_bound_drops_oldest_into_one_note_keeps_train_begin() -> None:
    box = Outbox("j", limit=5)
    box.add_progress(BEGIN)
    for i in range(10):
        box.add_progress(batch(i))
    box.add_result(RunResult(completed=True))
    kept = list(box._queue)
    assert box.unacked == 5 and box.dropped == 8
    assert isinstance(kept[0], Progress) and kept[0].update.event == P.PROGRESS_EVENT_TRAIN_BEGIN
    note = kept[1]
    assert isinstance(note, Log) and (note.first, note.seq) == (2, 9)  # batches 0..7
    assert "8 message(s) (progress and output) were dropped" in note.lines[0]
    assert [m.seq for m in kept[2:]] == [10, 11, 12]
    assert isinstance(kept[-1], Result)
    # The worker's inbox takes the note as covering 2..9: no hole, nothing "ahead".
    inbox = Inbox()
    assert [inbox.accept(m) for m in kept] == [True] * 5
    assert inbox.ahead == 0 and inbox.last == 12


def test_inbox_delivers_once_in_order_and_batches_acks() -> None:
    inbox = Inbox(every=3, after_s=0.2)
    msgs = [Log("j", i, 1, ("x",)) for i in range(1, 6)]
    assert [inbox.accept(m, now=0.0) for m in msgs[:2]] == [True, True]
    assert inbox.take_ack(now=0.1) is None  # neither 3 messages nor 0.2 s yet
    assert inbox.take_ack(now=0.25) == 2
    assert inbox.take_ack(now=5.0) is None  # nothing new
    assert inbox.accept(msgs[0], now=5.0) is False  # a duplicate after a reconnect...
    assert inbox.take_ack(now=5.3) == 2  # ...is acknowledged again
    assert [inbox.accept(m, now=6.0) for m in msgs[2:]] == [True, True, True]
    assert inbox.take_ack(now=6.0) == 5  # three deliveries: due at once
    assert inbox.duplicates == 1


def test_inbox_after_a_restart_skips_what_was_delivered_and_acks_a_hello() -> None:
    inbox = Inbox(after_seq=10)
    assert inbox.accept(Log("j", 10, 1, ("old",))) is False
    assert inbox.accept(Hello("j", "n", 5), now=1.0) is True
    assert inbox.take_ack(now=1.0) == 10  # the relay hears at once what may go
    assert inbox.accept(Log("j", 11, 1, ("new",)), now=1.0) is True


def test_inbox_moves_on_when_the_relay_had_more_acknowledged_than_it_knows() -> None:
    """A worker that restarted with an older position than an earlier life acknowledged
    would wait for ever for messages the relay no longer has: the Hello moves it on."""
    inbox = Inbox(after_seq=3)
    assert inbox.accept(Log("j", 9, 1, ("x",))) is False and inbox.ahead == 1
    assert inbox.accept(Hello("j", "n", 5, assigned=9, acked=8)) is True
    assert (inbox.last, inbox.skipped) == (8, 5)
    assert inbox.accept(Log("j", 9, 1, ("x",))) is True


@settings()
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("emit"), st.integers(1, 30)),
            st.tuples(st.just("send"), st.integers(1, 30)),
            st.tuples(st.just("break"), st.booleans()),
            st.tuples(st.just("reconnect"), st.booleans()),
            st.tuples(st.just("tick"), st.floats(0, 1)),
        ),
        max_size=40,
    ),
    st.sampled_from([3, 8, 10_000]),
)
@example(  # a reconnection the relay notices late: the hub must not skip the lost ones
    [
        ("emit", 3),
        ("send", 2),
        ("break", True),
        ("send", 1),
        ("reconnect", False),
        ("emit", 1),
        ("send", 1),
    ],
    10_000,
)
@example(  # an outage longer than the outbox: the note covers what was dropped
    [("emit", 2), ("send", 1), ("break", True), ("emit", 20), ("send", 30), ("reconnect", True)],
    3,
)
def test_outbox_and_inbox_deliver_once_in_order_without_holes(
    steps: list[tuple[object, ...]], limit: int
) -> None:
    """A connection delivers in order until it breaks; what was sent on a broken one is
    lost (acks too). A reconnection is noticed by the relay either at once or late
    (after it sent more on the new connection: the hub then asks for a resend). In the
    end every sequence reached the worker exactly once, in order: as itself, or inside
    a drop note when more than ``limit`` were unacknowledged."""
    box, inbox = Outbox("j", limit=limit), Inbox(every=5, after_s=0.2)
    covered: list[int] = []
    now = 0.0
    broken = False

    def pump(n: int) -> None:
        for _ in range(n):
            msg = box.next_to_send()
            if msg is None:
                break
            box.mark_sent(msg)
            before = inbox.last
            if not broken and inbox.accept(msg, now):
                first = msg.first if isinstance(msg, Log) and msg.first else msg.seq
                covered.extend(range(max(first, before + 1), msg.seq + 1))
        if broken:
            return
        resend = inbox.take_resend(now, every_s=0.0)
        if resend is not None:
            box.ack(resend)
            box.rewind()
        upto = inbox.take_ack(now)
        if upto is not None:
            box.ack(upto)

    for step in steps:
        kind = step[0]
        if kind == "emit":
            for _ in range(int(step[1])):  # type: ignore[call-overload]
                box.add_progress(batch(box.last_seq))
        elif kind == "send":
            pump(int(step[1]))  # type: ignore[call-overload]
        elif kind == "break":
            broken = True
        elif kind == "reconnect":
            broken = False
            if step[1]:  # noticed at once; else only after the hub asks for a resend
                box.rewind()
        else:
            now += float(step[1])  # type: ignore[arg-type]
    broken = False
    for _ in range(4):  # the link heals; the relay notices
        now += 1.0
        box.rewind()
        pump(100_000)
    assert covered == list(range(1, box.last_seq + 1))
    assert box.unacked == 0
    assert box.dropped == 0 or limit < 10_000
