"""The capture package's shape: one MCAP writer, one reassembler, grouped by what it does."""

from __future__ import annotations

import ast
from pathlib import Path

from test_inspect_support import C2W, W2C

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.read.frames import MAX_PENDING_FRAGMENTS
from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.capture.write.recorder import CaptureWriter
from sleap_rtc_proto import codec
from sleap_rtc_proto.stream import split
from sleap_rtc_proto.v1 import job_pb2

CAPTURE = Path(__file__).resolve().parents[1] / "sleap_rtc" / "capture"


def _classes() -> dict[str, str]:
    found = {}
    for path in CAPTURE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                found[node.name] = str(path.relative_to(CAPTURE))
    return found


def test_one_mcap_writer_and_one_reassembler() -> None:
    classes = _classes()
    # No MCAP writer of its own: parts.py writes with mcap.writer.Writer.
    assert not [c for c in classes if "Writer" in c and c != "CaptureWriter"], classes
    parts = (CAPTURE / "write" / "parts.py").read_text()
    assert "from mcap.writer import CompressionType, Writer" in parts
    # No reassembler of its own: frames.Fragments drives sleap_rtc_proto.stream.Reassembler.
    assert "Reassembler" not in classes
    assert (
        "from sleap_rtc_proto.stream import Reassembler"
        in (CAPTURE / "read" / "frames.py").read_text()
    )
    assert not (CAPTURE / "fragments.py").exists() and not (CAPTURE / "mcapwrite.py").exists()
    # Grouped: the file contract, writing, reading, JSON.
    top = sorted(p.name for p in CAPTURE.iterdir() if not p.name.startswith("__pycache__"))
    assert top == ["__init__.py", "format.py", "read", "tojson", "write"]
    for path in CAPTURE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 520, path


def _fragments(message_id: int, job: str) -> list[bytes]:
    data = codec.encode(job_pb2.JobSubmit(job_id=job, check_token="x" * 300), message_id=message_id)
    return split(
        data,
        fragmented_message_id=message_id,
        next_message_id=10_000 + message_id * 10,
        max_frame_bytes=200,
    )


def test_reassembly_by_the_protocol_keeps_the_captures_behaviour(tmp_path: Path) -> None:
    """Whole messages back, inconsistent pieces shown raw with the protocol's reason,
    at most MAX_PENDING_FRAGMENTS sets pending per direction (the oldest given up)."""
    path = tmp_path / "f.mcap"
    w = CaptureWriter(path, background=False, compression="none", redact_tokens=False)
    conn = w.connection("c", local_peer="a", remote_peer="b", local_role="client")
    t = 1_800_000_000_000_000_000
    whole = _fragments(1, "job-whole")
    for frame in whole:
        t += 1000
        w.record(conn, C2W, frame, t)
    # The same fragmented message id in the other direction is a different message.
    for frame in _fragments(1, "job-other-way")[:1]:
        t += 1000
        w.record(conn, W2C, frame, t)
    dup = _fragments(2, "job-dup")
    for frame in [dup[0], dup[0]]:
        t += 1000
        w.record(conn, C2W, frame, t)
    for mid in range(3, 3 + MAX_PENDING_FRAGMENTS + 1):  # one set more than may wait
        t += 1000
        w.record(conn, C2W, _fragments(mid, f"job-{mid}")[0], t)
    w.close()
    recs = list(CaptureReader([path]).records())
    assert recs[0].body == "job_submit" and recs[0].job_id == "job-whole"
    assert recs[0].fragments == len(whole) and recs[0].message_id == 1
    duplicate = [r for r in recs if r.kind == "raw" and r.message_id == 2]
    assert duplicate and "arrived twice" in (duplicate[0].reason or "")
    incomplete = [r for r in recs if r.reason and "incomplete" in r.reason]
    given_up_early = incomplete[0]
    assert given_up_early.message_id == 3 and given_up_early.direction == C2W
    assert {r.message_id for r in incomplete} == set(range(3, 4 + MAX_PENDING_FRAGMENTS)) | {1}
    other_way = [r for r in incomplete if r.direction == W2C]
    assert len(other_way) == 1 and other_way[0].message_id == 1
    assert all(r.direction in fmt.DIRECTIONS for r in recs)


def test_stream_reassembler_lists_and_abandons_partials() -> None:
    from sleap_rtc_proto.stream import Reassembler

    r = Reassembler()
    for mid in (5, 7):
        r.feed(codec.decode(_fragments(mid, "j")[0]).fragment, 0.0)
    assert r.pending_ids() == [5, 7] and r.buffered_bytes > 0
    received, count = r.abandon(5) or (0, 0)
    assert received == 1 and count == len(_fragments(5, "j"))
    assert r.pending_ids() == [7] and r.abandon(5) is None
    r.abandon(7)
    assert r.buffered_bytes == 0
