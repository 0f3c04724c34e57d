"""Coalescing JobProgress into JobProgressBatch (sleap_rtc.worker.batching)."""

from __future__ import annotations

import itertools

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc.worker.batching import MAX_BYTES, MAX_ITEMS, _item_size, coalesce
from sleap_rtc_proto.codec import body_of, decode, encode
from sleap_rtc_proto.limits import MAX_FRAME_BYTES
from sleap_rtc_proto.v1 import progress_pb2

P = progress_pb2


def progress(seq: int, *, metrics: int = 1, what: str = "") -> P.JobProgress:
    return P.JobProgress(
        job_id="job-1",
        sequence=seq,
        event=P.PROGRESS_EVENT_BATCH_END,
        epoch=seq // 100,
        batch=seq % 100,
        metrics={f"m{i}": seq / (i + 1) for i in range(metrics)},
        what=what,
    )


def flatten(messages: list[Message]) -> list[Message]:
    out: list[Message] = []
    for m in messages:
        out.extend(m.items if isinstance(m, P.JobProgressBatch) else [m])
    return out


def test_lone_progress_stays_plain_and_others_keep_their_place() -> None:
    log = P.JobLog(job_id="job-1", sequence=3, lines=["x"])
    done = P.JobComplete(job_id="job-1", sequence=6)
    out = coalesce([progress(1), log, progress(4), progress(5), done])
    assert [type(m) for m in out] == [P.JobProgress, P.JobLog, P.JobProgressBatch, P.JobComplete]
    assert out[0] == progress(1) and out[1] is log and out[3] is done
    assert list(out[2].items) == [progress(4), progress(5)]  # type: ignore[attr-defined]
    assert coalesce([]) == []


def test_item_and_byte_limits() -> None:
    out = coalesce([progress(i) for i in range(1, 601)])
    sizes = [len(m.items) for m in out]  # type: ignore[attr-defined]
    assert sizes == [MAX_ITEMS, MAX_ITEMS, 600 - 2 * MAX_ITEMS]
    big = [progress(i, what="x" * 40_000) for i in range(1, 8)]
    out = coalesce(big)
    assert all(m.ByteSize() <= MAX_BYTES + 16 for m in out)
    assert flatten(out) == big
    huge = progress(1, what="y" * (MAX_BYTES + 10))
    out = coalesce([progress(0), huge, progress(2)])
    assert out == [progress(0), huge, progress(2)]  # too big to share a batch: alone
    with pytest.raises(ValueError):
        coalesce([], max_items=1)


def test_a_full_batch_fits_one_frame() -> None:
    items = [progress(i, metrics=8, what="single_instance") for i in range(MAX_ITEMS * 3)]
    for message in coalesce(items):
        data = encode(message, message_id=2**40, sent_time_unix_nano=2**63)
        assert len(data) <= MAX_FRAME_BYTES
        assert body_of(decode(data)) == message


kinds = st.sampled_from(["progress", "log", "complete"])


@given(
    st.lists(st.tuples(kinds, st.integers(0, 30), st.integers(0, 300)), max_size=120),
    st.integers(2, 20),
    st.integers(1, 4000),
)
@settings(max_examples=2 * settings.default.max_examples, deadline=None)
def test_order_content_and_sizes(
    spec: list[tuple[str, int, int]], max_items: int, max_bytes: int
) -> None:
    messages: list[Message] = []
    for seq, (kind, metrics, what) in enumerate(spec, start=1):
        if kind == "progress":
            messages.append(progress(seq, metrics=metrics, what="w" * what))
        elif kind == "log":
            messages.append(P.JobLog(job_id="job-1", sequence=seq, lines=["l"] * (what % 3 + 1)))
        else:
            messages.append(P.JobComplete(job_id="job-1", sequence=seq))
    out = coalesce(messages, max_items=max_items, max_bytes=max_bytes)
    assert flatten(out) == messages  # order and content preserved
    for m in out:
        if isinstance(m, P.JobProgressBatch):
            assert 2 <= len(m.items) <= max_items
            assert sum(_item_size(x) for x in m.items) <= max_bytes
            assert m.ByteSize() == sum(_item_size(x) for x in m.items)
    # greedy: a run is only cut where the next item would break a limit
    runs = [list(m.items) if isinstance(m, P.JobProgressBatch) else [m] for m in out]
    for a, b in itertools.pairwise(runs):
        if all(isinstance(x, P.JobProgress) for x in a + b):
            room = sum(_item_size(x) for x in a) + _item_size(b[0])
            assert len(a) >= max_items or room > max_bytes, len(a)
