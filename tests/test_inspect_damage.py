"""Damaged captures (issue 14): exit 1 whenever anything was lost, `info` never calls a
damaged file complete, salvage inside damaged chunks like `mcap recover`, garbage in
bounded time, and a newer capture format refused with a clear message.

Captures are made by the real recorder from a real MessageStream conversation
(tests/test_inspect_support.py); the `mcap` library locates the chunks to damage.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from mcap.reader import make_reader
from test_inspect_support import Clock, session_capture

from sleap_rtc.capture.write.recorder import CaptureWriter
from sleap_rtc.cli.inspect_cmd import main


def _chunks(path: Path) -> list[tuple[int, int]]:
    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None
    return sorted((c.chunk_start_offset, c.chunk_length) for c in summary.chunk_indexes)


def _capture(
    path: Path, *, compression: str = "zstd", chunk_size: int = 1 << 20, progress: int = 300
) -> int:
    """A real conversation; returns how many messages `cat` shows for it undamaged."""
    writer = CaptureWriter(
        path, background=False, clock=Clock(), compression=compression, chunk_size=chunk_size
    )
    session_capture(path, progress=progress, writer=writer)
    writer.close()
    return len(_cat_json(path)[1])


def _cat_json(path: Path, *extra: str) -> tuple[int, list[dict[str, object]]]:
    import contextlib
    import io

    buf = io.StringIO()
    err = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(["cat", "--json", *extra, str(path)])
    return rc, [json.loads(line) for line in buf.getvalue().splitlines()]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _chunk_data_offset(path: Path, chunk_offset: int) -> int:
    """Where the (compressed) records of the Chunk record at ``chunk_offset`` start."""
    data = path.read_bytes()
    pos = chunk_offset + 9 + 8 + 8 + 8 + 4
    (n,) = struct.unpack_from("<I", data, pos)
    return pos + 4 + n + 8


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_flipped_byte_in_the_single_chunk_exits_1(
    tmp_path: Path, compression: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.mcap"
    total = _capture(path, compression=compression)
    chunks = _chunks(path)
    assert len(chunks) == 1
    start = _chunk_data_offset(path, chunks[0][0])
    _flip(path, start + (chunks[0][0] + chunks[0][1] - start) // 2)
    rc, rows = _cat_json(path)
    assert rc == 1
    assert len(rows) <= total
    # Salvage: the messages before the damage are still shown (mcap recover does the same).
    assert len(rows) >= total // 4
    capsys.readouterr()
    assert main(["info", str(path)]) == 1
    out = capsys.readouterr()
    # The status word, not a body name (job_complete may be counted before the damage).
    assert "complete" not in out.out.replace("INCOMPLETE", "").replace("job_complete", "")
    assert "damaged" in out.err
    assert main(["info", "--json", str(path)]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["files"][0]["complete"] is False and info["damaged"] is True


def test_crc_mismatch_keeps_the_messages_marked(tmp_path: Path) -> None:
    path = tmp_path / "c.mcap"
    total = _capture(path, compression="none")
    ((offset, _length),) = _chunks(path)
    start = _chunk_data_offset(path, offset)
    # Flip a byte inside a log time: the records still parse, only the CRC disagrees.
    data = path.read_bytes()
    at = data.index(b"\x05", start)  # first message record in the chunk
    _flip(path, at + 9 + 2 + 4 + 3)
    rc, rows = _cat_json(path)
    assert rc == 1
    assert len(rows) == total
    assert all("CRC" in str(r.get("reason", "")) for r in rows if r["kind"] == "protobuf")
    rc_text = main(["cat", str(path)])
    assert rc_text == 1


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_flips_in_many_chunks_exit_1(tmp_path: Path, jobs: str) -> None:
    path = tmp_path / "c.mcap"
    total = _capture(path, chunk_size=2048)
    chunks = _chunks(path)
    assert len(chunks) > 6
    for offset, length in chunks[1::3]:
        _flip(path, offset + length - 5)
    rc, rows = _cat_json(path, "--jobs", jobs)
    assert rc == 1
    assert 0 < len(rows) <= total


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_truncated_chunk_yields_what_can_be_parsed(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "c.mcap"
    # Over 128 KiB of records: zstd blocks before the cut decompress on their own.
    total = _capture(path, compression=compression, progress=4000)
    ((offset, length),) = _chunks(path)
    data = path.read_bytes()
    path.write_bytes(data[: offset + length * 2 // 3])
    rc, rows = _cat_json(path)
    assert rc == 1
    assert total // 3 <= len(rows) < total
    assert rows[0]["body"] == "hello"


def test_zeros_after_the_header_finish_fast(tmp_path: Path) -> None:
    path = tmp_path / "zeros.mcap"
    good = tmp_path / "good.mcap"
    _capture(good)
    head = good.read_bytes()
    # The magic and the Header record, then 2 GiB of zeros (a sparse file: no disk used).
    (length,) = struct.unpack_from("<Q", head, 9)
    with open(path, "wb") as f:
        f.write(head[: 8 + 9 + length])
        f.truncate(2 << 30)
    t = time.monotonic()
    assert main(["info", str(path)]) == 1
    assert main(["cat", "--json", str(path)]) == 1
    assert time.monotonic() - t < 10


def test_a_newer_capture_format_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcap.writer import Writer

    path = tmp_path / "newer.mcap"
    with open(path, "wb") as f:
        w = Writer(f)
        w.start(profile="", library="sleap-rtc capture (sleap-rtc-capture/2)")
        w.add_metadata("sleap_rtc.capture", {"format": "sleap-rtc-capture/2", "part": "0"})
        cid = w.register_channel("/datachannel/raw", "x-sleap-rtc-raw", 0, {})
        w.add_message(cid, 1, b'{"direction":"","reason":"x"}\nhi', 1)
        w.finish()  # type: ignore[no-untyped-call]
    assert main(["cat", str(path)]) == 1
    err = capsys.readouterr().err
    assert "sleap-rtc-capture/2" in err and "newer" in err and "upgrade" in err


def test_recover_writes_a_clean_file_of_what_could_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.mcap"
    total = _capture(path, compression="none", progress=4000)
    ((offset, length),) = _chunks(path)
    path.write_bytes(path.read_bytes()[: offset + length // 2])  # cut off mid-chunk
    rc, rows = _cat_json(path)
    assert rc == 1 and 0 < len(rows) < total
    out = tmp_path / "clean.mcap"
    capsys.readouterr()
    assert main(["recover", str(path), "-o", str(out)]) == 1
    assert f"recovered {len(rows)} messages" in capsys.readouterr().out
    # The clean file: the mcap library reads it to the end, and so do we, exit 0.
    with open(out, "rb") as f:
        reader = make_reader(f)
        assert reader.get_summary() is not None
        assert sum(1 for _ in reader.iter_messages()) >= len(rows)
    rc, again = _cat_json(out)
    assert rc == 0
    assert [r["message_id"] for r in again] == [r["message_id"] for r in rows]
