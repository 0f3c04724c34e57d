"""Coalescing of queued JobProgress into JobProgressBatch (pure; protocol 1.1).

The worker never delays a message to fill a batch: a connection hands
:func:`coalesce` only what is already waiting to be sent, and every run of two
or more consecutive JobProgress becomes one JobProgressBatch (bounded in items
and bytes). A lone JobProgress stays plain, and every other message keeps its
place, so JobLog, JobComplete and JobFailed stay in order with the progress.

>>> from sleap_rtc_proto.v1 import progress_pb2
>>> p = [progress_pb2.JobProgress(job_id="j", sequence=i) for i in (1, 2, 3)]
>>> log = progress_pb2.JobLog(job_id="j", sequence=4, lines=["x"])
>>> [type(m).__name__ for m in coalesce([*p, log, p[0]], max_items=2)]
['JobProgressBatch', 'JobProgress', 'JobLog', 'JobProgress']
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

from sleap_rtc_proto.v1 import progress_pb2

#: Most JobProgress in one batch.
MAX_ITEMS = 256
#: Most encoded bytes of one batch's items (well under a 256 KiB frame).
MAX_BYTES = 128 * 1024


def _item_size(progress: progress_pb2.JobProgress) -> int:
    """Bytes ``progress`` takes inside a batch: tag, length prefix and payload."""
    size = progress.ByteSize()
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def coalesce(
    messages: Iterable[Message], *, max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES
) -> list[Message]:
    """``messages`` in order, runs of JobProgress joined into JobProgressBatch.

    A batch holds at least 2 and at most ``max_items`` items whose encoded size
    stays within ``max_bytes`` (an item larger than that on its own is sent
    alone). Items are the original messages, unchanged.

    Raises:
        ValueError: ``max_items`` is below 2 or ``max_bytes`` is not positive.
    """
    if max_items < 2 or max_bytes <= 0:
        raise ValueError("max_items must be at least 2 and max_bytes positive")
    out: list[Message] = []
    run: list[progress_pb2.JobProgress] = []
    run_bytes = 0

    def close() -> None:
        nonlocal run, run_bytes
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(progress_pb2.JobProgressBatch(items=run))
        run, run_bytes = [], 0

    for message in messages:
        if not isinstance(message, progress_pb2.JobProgress):
            close()
            out.append(message)
            continue
        size = _item_size(message)
        if run and (len(run) >= max_items or run_bytes + size > max_bytes):
            close()
        run.append(message)
        run_bytes += size
    close()
    return out
