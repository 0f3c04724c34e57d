"""Bounded time on any input: a chunk decompressing to millions of tiny valid records."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest
import zstandard

from sleap_rtc.capture.read import mcapio
from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.cli.inspect_cmd import main

MAGIC = b"\x89MCAP0\r\n"


def _record(opcode: int, body: bytes) -> bytes:
    return struct.pack("<BQ", opcode, len(body)) + body


def _string(text: str) -> bytes:
    return struct.pack("<I", len(text)) + text.encode()


def bomb(path: Path, records: int) -> Path:
    """An MCAP file whose one chunk holds ``records`` empty user records (9 bytes each).

    Valid MCAP (readers skip user opcodes 0x80..), a few kilobytes on disk.
    """
    data = _record(0x80, b"") * records
    compressed = zstandard.compress(data, 19)
    chunk = (
        struct.pack("<QQQI", 0, 0, len(data), zlib.crc32(data))
        + _string("zstd")
        + struct.pack("<Q", len(compressed))
        + compressed
    )
    path.write_bytes(
        MAGIC
        + _record(0x01, _string("") + _string("bomb"))
        + _record(0x06, chunk)
        + _record(0x0F, struct.pack("<I", 0))
        + _record(0x02, struct.pack("<QQI", 0, 0, 0))
        + MAGIC
    )
    return path


@pytest.mark.parametrize("verb", [["cat"], ["cat", "--json"], ["info"]])
def test_a_chunk_of_millions_of_tiny_records_is_cut_off_in_bounded_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: list[str]
) -> None:
    path = bomb(tmp_path / "bomb.mcap", 3 * mcapio.RECORD_BUDGET_BASE)
    assert path.stat().st_size < 64 * 1024
    start = time.monotonic()
    assert main([*verb, str(path)]) == 1
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert "more records than a file of" in err and "decompression bomb" in err
    # The budget (1,000,000 records plus one per byte) is about a second of walking
    # (2.3 s measured); the old code walked all 119 million records (82 s). Loose: CI
    # shares its cores.
    assert elapsed < 20


def test_the_budget_is_linear_in_the_file_size(tmp_path: Path) -> None:
    path = bomb(tmp_path / "bomb.mcap", 3 * mcapio.RECORD_BUDGET_BASE)
    scan = mcapio.McapScan(path)
    assert scan.budget == mcapio.RECORD_BUDGET_BASE + path.stat().st_size
    reader = CaptureReader([path])
    assert list(reader.records()) == []
    assert reader.damaged and any(p.fatal for p in reader.problems)


def test_a_real_capture_is_far_inside_the_budget(tmp_path: Path) -> None:
    from test_inspect_support import session_capture

    path = tmp_path / "s.mcap"
    session_capture(path, progress=2000)
    reader = CaptureReader([path])
    records = len(list(reader.records()))
    assert records > 2000 and not reader.problems
    # Far fewer records than bytes: the budget's one per byte is never what stops a capture.
    assert records * 10 < path.stat().st_size
