"""MessageStream: numbering, fragmentation, reassembly, and every way a fragment set breaks."""

from __future__ import annotations

import contextlib
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc_proto.codec import Envelope, body_of, make_envelope
from sleap_rtc_proto.errors import FragmentError, FrameTooLarge, ProtocolError
from sleap_rtc_proto.stream import (
    FRAGMENT_OVERHEAD,
    MessageStream,
    Reassembler,
    split,
)
from sleap_rtc_proto.v1 import envelope_pb2, job_pb2, paths_pb2, progress_pb2
from sleap_rtc_proto.versions import Version

U64 = 2**64 - 1


def big_result(videos: int = 1000, suggestions: int = 5) -> paths_pb2.PathCheckResult:
    result = paths_pb2.PathCheckResult(
        labels=paths_pb2.PathEntry(
            original_path="/mnt/lab/labels.slp",
            worker_path="/mnt/lab/labels.slp",
            status=paths_pb2.PATH_STATUS_FOUND,
        )
    )
    for i in range(videos):
        video = result.videos.add(
            index=i,
            original_path=f"C:\\Users\\ana\\videos\\session_{i:04d}\\camera_top.mp4",
            status=paths_pb2.PATH_STATUS_MISSING,
            kind=paths_pb2.VIDEO_KIND_FILE,
            detail="no file at the mapped path",
        )
        for j in range(suggestions):
            video.suggestions.add(
                worker_path=f"/mnt/lab/archive/{j}/session_{i:04d}/camera_top.mp4",
                reason=paths_pb2.SUGGESTION_REASON_SAME_NAME,
                score=1.0 - j / 10,
                explanation="same file name and folder tail",
            )
    return result


def control(job_id: str = "j1") -> job_pb2.JobControl:
    return job_pb2.JobControl(job_id=job_id, action=job_pb2.CONTROL_ACTION_STOP)


def fragment_frame(message_id: int = 50, **fields: object) -> bytes:
    piece = envelope_pb2.Fragment(**fields)  # type: ignore[arg-type]
    return make_envelope(piece, message_id=message_id).SerializeToString()


def test_small_message_is_one_frame() -> None:
    sender, receiver = MessageStream(), MessageStream()
    message_id, frames = sender.send(control(), correlation_id=4, sent_time_unix_nano=99)
    assert message_id == 1 and len(frames) == 1
    env = receiver.receive(frames[0], now=0.0)
    assert env is not None
    assert (env.message_id, env.correlation_id, env.sent_time_unix_nano) == (1, 4, 99)
    assert body_of(env) == control()
    assert sender.send(control())[0] == 2


def test_large_message_fragments_and_reassembles() -> None:
    sender, receiver = MessageStream(), MessageStream()
    result = big_result()
    message_id, frames = sender.send(result)
    assert len(frames) > 1
    assert all(len(f) <= sender.max_frame_bytes for f in frames)
    for frame in frames[:-1]:
        assert receiver.receive(frame, now=1.0) is None
    env = receiver.receive(frames[-1], now=1.0)
    assert env is not None and env.message_id == message_id
    assert body_of(env) == result
    # Fragment envelopes took the ids after the message's own.
    assert sender.send(control())[0] == message_id + len(frames) + 1
    assert receiver._reassembler.pending == 0


def test_fragments_may_arrive_out_of_order() -> None:
    sender, receiver = MessageStream(max_frame_bytes=4096), MessageStream(max_frame_bytes=4096)
    result = big_result(videos=50)
    _, frames = sender.send(result)
    random.Random(7).shuffle(frames)
    out = [receiver.receive(f, now=0.0) for f in frames]
    assert out[:-1] == [None] * (len(frames) - 1)
    assert out[-1] is not None and body_of(out[-1]) == result


def test_interleaved_messages_reassemble_separately() -> None:
    sender, receiver = MessageStream(max_frame_bytes=2048), MessageStream(max_frame_bytes=2048)
    a, b = big_result(videos=10), big_result(videos=12)
    _, fa = sender.send(a)
    _, fb = sender.send(b)
    got = [e for pair in zip(fa, fb, strict=False) for f in pair if (e := receiver.receive(f, 0.0))]
    got += [e for f in fb[len(fa) :] if (e := receiver.receive(f, 0.0))]
    assert [body_of(e) for e in got] == [a, b]


def test_frames_fit_even_with_the_widest_header() -> None:
    data = bytes(10_000)
    frames = split(
        data,
        fragmented_message_id=U64,
        next_message_id=U64 - 100,
        max_frame_bytes=1000,
        version=Version(2**32 - 1, 2**32 - 1),
        sent_time_unix_nano=U64,
    )
    assert max(len(f) for f in frames) <= 1000
    assert FRAGMENT_OVERHEAD >= 77
    assert split(b"abc", fragmented_message_id=1, next_message_id=2) == [b"abc"]
    with pytest.raises(ValueError, match="too small"):
        split(data, fragmented_message_id=1, next_message_id=2, max_frame_bytes=FRAGMENT_OVERHEAD)


def _fragments(n_videos: int = 30, frame: int = 1024) -> tuple[MessageStream, list[bytes]]:
    sender = MessageStream(max_frame_bytes=frame)
    _, frames = sender.send(big_result(videos=n_videos))
    assert len(frames) >= 3
    return MessageStream(max_frame_bytes=frame), frames


def _assert_usable(receiver: MessageStream) -> None:
    env = receiver.receive(MessageStream().send(control("after"))[1][0], now=0.0)
    assert env is not None and body_of(env) == control("after")


def test_missing_piece_times_out_via_expire() -> None:
    receiver, frames = _fragments()
    for frame in frames[:1] + frames[2:]:
        assert receiver.receive(frame, now=10.0) is None
    assert receiver.expire(now=10.0 + 30.0) == []  # not yet past the timeout
    (error,) = receiver.expire(now=10.0 + 30.5)
    assert isinstance(error, FragmentError)
    assert "timed out" in error.message and "[1]" in error.message
    assert receiver._reassembler.pending == 0
    assert receiver.expire(now=1000.0) == []
    _assert_usable(receiver)


def test_duplicated_piece() -> None:
    receiver, frames = _fragments()
    receiver.receive(frames[0], now=0.0)
    with pytest.raises(FragmentError, match="arrived twice"):
        receiver.receive(frames[0], now=0.0)
    assert receiver._reassembler.pending == 0
    _assert_usable(receiver)


def test_inconsistent_pieces() -> None:
    r = MessageStream()
    r.receive(
        fragment_frame(fragmented_message_id=7, index=0, count=3, total_bytes=30, data=b"x" * 10),
        0.0,
    )
    with pytest.raises(FragmentError, match="disagrees"):
        r.receive(
            fragment_frame(fragmented_message_id=7, index=1, count=4, total_bytes=30, data=b"y"),
            0.0,
        )
    r.receive(
        fragment_frame(fragmented_message_id=8, index=0, count=2, total_bytes=10, data=b"x" * 8),
        0.0,
    )
    with pytest.raises(FragmentError, match="does not fit 2 fragments of 10 bytes"):
        r.receive(
            fragment_frame(
                fragmented_message_id=8, index=1, count=2, total_bytes=10, data=b"x" * 8
            ),
            0.0,
        )
    with pytest.raises(FragmentError, match="does not fit"):  # 4 + 4 can never be 10
        r.receive(
            fragment_frame(
                fragmented_message_id=9, index=0, count=2, total_bytes=10, data=b"x" * 4
            ),
            0.0,
        )
    assert r._reassembler.pending == 0
    _assert_usable(r)


@pytest.mark.parametrize(
    "fields",
    [
        {"fragmented_message_id": 0, "index": 0, "count": 2, "total_bytes": 4, "data": b"ab"},
        {"fragmented_message_id": 1, "index": 0, "count": 1, "total_bytes": 2, "data": b"ab"},
        {"fragmented_message_id": 1, "index": 2, "count": 2, "total_bytes": 4, "data": b"ab"},
        {"fragmented_message_id": 1, "index": 0, "count": 2, "total_bytes": 4, "data": b""},
        {
            "fragmented_message_id": 1,
            "index": 0,
            "count": 2**32 - 1,
            "total_bytes": 4,
            "data": b"a",
        },
    ],
)
def test_invalid_single_pieces(fields: dict) -> None:
    r = MessageStream()
    with pytest.raises(FragmentError):
        r.receive(fragment_frame(**fields), 0.0)
    assert r._reassembler.pending == 0


def test_huge_count_expires_quickly() -> None:
    r = Reassembler(max_message_bytes=2**23, timeout_s=1.0)
    piece = envelope_pb2.Fragment(
        fragmented_message_id=3, index=5, count=2**22, total_bytes=2**23, data=b"xx"
    )
    assert r.feed(piece, now=0.0) is None
    start = time.perf_counter()
    (error,) = r.expire(now=2.0)
    assert time.perf_counter() - start < 0.5
    assert "[0, 1, 2, 3, 4, 6, 7, 8, 9, 10] and more" in error.message


def test_size_past_the_cap_is_refused_before_buffering() -> None:
    r = MessageStream(max_message_bytes=1000)
    with pytest.raises(FrameTooLarge, match="over the limit of 1000") as info:
        r.receive(
            fragment_frame(fragmented_message_id=4, index=0, count=2, total_bytes=1001, data=b"x"),
            0.0,
        )
    assert info.value.details == {"size_bytes": "1001", "limit_bytes": "1000"}
    assert r._reassembler.pending == 0
    _assert_usable(r)


def test_oversize_frame_and_oversize_send() -> None:
    small = MessageStream(max_frame_bytes=100)
    big_frame = MessageStream().send(progress_pb2.JobLog(job_id="j", lines=["x" * 200]))[1][0]
    with pytest.raises(FrameTooLarge):
        small.receive(big_frame, 0.0)
    with pytest.raises(FrameTooLarge, match="outgoing PathCheckResult"):
        MessageStream(max_message_bytes=10_000).send(big_result(videos=100))


def test_too_many_messages_in_flight() -> None:
    r = Reassembler(max_pending=2)
    for key in (1, 2):
        r.feed(
            envelope_pb2.Fragment(
                fragmented_message_id=key, index=0, count=2, total_bytes=2, data=b"a"
            ),
            0.0,
        )
    with pytest.raises(FragmentError, match="too many"):
        r.feed(
            envelope_pb2.Fragment(
                fragmented_message_id=3, index=0, count=2, total_bytes=2, data=b"a"
            ),
            0.0,
        )
    assert r.pending == 2


def test_nested_fragment_and_id_mismatch_are_refused() -> None:
    inner = fragment_frame(
        message_id=5, fragmented_message_id=1, index=0, count=2, total_bytes=400, data=b"a" * 200
    )
    frames = split(
        inner, fragmented_message_id=5, next_message_id=6, max_frame_bytes=FRAGMENT_OVERHEAD + 100
    )
    assert len(frames) > 1
    r = MessageStream()
    with pytest.raises(FragmentError, match="another fragment"):
        for frame in frames:
            r.receive(frame, 0.0)
    whole = make_envelope(progress_pb2.JobLog(lines=["x" * 300]), message_id=11).SerializeToString()
    frames = split(
        whole, fragmented_message_id=12, next_message_id=13, max_frame_bytes=FRAGMENT_OVERHEAD + 100
    )
    assert len(frames) > 1
    with pytest.raises(FragmentError, match="reassemble into message 11"):
        for frame in frames:
            r.receive(frame, 0.0)
    _assert_usable(r)


def test_bad_reassembled_bytes_are_malformed() -> None:
    r = MessageStream()
    r.receive(
        fragment_frame(fragmented_message_id=6, index=0, count=2, total_bytes=4, data=b"\xff\xff"),
        0.0,
    )
    with pytest.raises(ProtocolError, match="not a protobuf Envelope"):
        r.receive(
            fragment_frame(
                message_id=51,
                fragmented_message_id=6,
                index=1,
                count=2,
                total_bytes=4,
                data=b"\xff\xff",
            ),
            0.0,
        )
    _assert_usable(r)


@settings(max_examples=2 * settings.default.max_examples, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_random_frames_only_raise_protocol_errors(frames: list[bytes]) -> None:
    r = MessageStream(max_frame_bytes=256)
    for frame in frames:
        with contextlib.suppress(ProtocolError):
            r.receive(frame, now=0.0)
    r.expire(now=1e9)
    _assert_usable(r)


@settings(max_examples=settings.default.max_examples // 2, deadline=None)
@given(
    st.integers(FRAGMENT_OVERHEAD + 1, 5000), st.integers(1, 40), st.randoms(use_true_random=False)
)
def test_any_frame_size_round_trips(frame_bytes: int, n_videos: int, rnd: random.Random) -> None:
    sender = MessageStream(max_frame_bytes=frame_bytes)
    receiver = MessageStream(max_frame_bytes=frame_bytes)
    result = big_result(videos=n_videos, suggestions=2)
    _, frames = sender.send(result)
    assert all(len(f) <= frame_bytes for f in frames)
    rnd.shuffle(frames)
    out: list[Envelope] = [e for f in frames if (e := receiver.receive(f, 0.0)) is not None]
    assert len(out) == 1 and body_of(out[0]) == result


# --- memory in real bytes ------------------------------------------------------------------


def _one_byte_fragments(message_id: int, total: int) -> list[envelope_pb2.Fragment]:
    return [
        envelope_pb2.Fragment(
            fragmented_message_id=message_id, index=i, count=total, total_bytes=total, data=b"z"
        )
        for i in range(total)
    ]


def test_one_byte_fragments_cost_at_most_twice_their_payload() -> None:
    """The issue measured ~82 bytes of memory per buffered byte of 1-byte fragments."""
    import tracemalloc

    total = 200_000
    r = Reassembler(max_message_bytes=total)
    pieces = _one_byte_fragments(5, total)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for piece in pieces[:-1]:
            assert r.feed(piece, 0.0) is None
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    real = held - base
    assert real <= 2 * total + 4096, f"{real / total:.1f} bytes per payload byte"
    assert r.buffered_bytes <= 2 * total + 4096
    assert r.buffered_bytes >= real - 4096  # the accounting is not below what is held
    assert r.feed(pieces[-1], 0.0) == b"z" * total
    assert r.buffered_bytes == 0


def test_fragments_of_unequal_size_are_refused() -> None:
    r = Reassembler()
    r.feed(envelope_pb2.Fragment(fragmented_message_id=1, index=0, count=3, total_bytes=25,
                                 data=b"a" * 10), 0.0)
    with pytest.raises(FragmentError, match="all but the last of one size"):
        r.feed(envelope_pb2.Fragment(fragmented_message_id=1, index=1, count=3, total_bytes=25,
                                     data=b"b" * 5), 0.0)
    assert r.pending == 0 and r.buffered_bytes == 0
    # the last piece first tells the size of the others
    r.feed(envelope_pb2.Fragment(fragmented_message_id=2, index=2, count=3, total_bytes=25,
                                 data=b"c" * 5), 0.0)
    r.feed(envelope_pb2.Fragment(fragmented_message_id=2, index=0, count=3, total_bytes=25,
                                 data=b"a" * 10), 0.0)
    whole = r.feed(envelope_pb2.Fragment(fragmented_message_id=2, index=1, count=3,
                                         total_bytes=25, data=b"b" * 10), 0.0)
    assert whole == b"a" * 10 + b"b" * 10 + b"c" * 5


def test_a_shared_budget_caps_what_many_reassemblers_buffer_together() -> None:
    from sleap_rtc_proto.stream import ByteBudget

    budget = ByteBudget(1_000_000)
    connections = [Reassembler(budget=budget) for _ in range(10)]
    accepted = refused = 0
    for n, r in enumerate(connections):
        try:
            r.feed(envelope_pb2.Fragment(fragmented_message_id=n + 1, index=0, count=2,
                                         total_bytes=300_000, data=b"x" * 150_000), 0.0)
            accepted += 1
        except FragmentError as exc:
            assert "shared bytes in use" in str(exc)
            refused += 1
    assert accepted == 3 and refused == 7
    assert budget.used <= budget.limit
    for r in connections:
        r.expire(100.0)
    assert budget.used == 0
    # moving a reassembler off the budget (e.g. after Hello) gives its bytes back
    r = connections[0]
    r.feed(envelope_pb2.Fragment(fragmented_message_id=9, index=0, count=2,
                                 total_bytes=300_000, data=b"x" * 150_000), 0.0)
    assert budget.used > 0
    r.budget = None
    assert budget.used == 0
