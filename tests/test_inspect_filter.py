"""inspect filter: a smaller MCAP that keeps the schema and stays readable everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcap.reader import make_reader
from test_inspect_support import session_capture

from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.cli.inspect_cmd import main


def test_filter_writes_a_valid_smaller_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "s.mcap"
    session_capture(src, progress=50, big_result=True)
    out = tmp_path / "small.mcap"
    assert (
        main(["filter", str(src), "-o", str(out), "-b", "path_check_result", "-b", "job_submit"])
        == 0
    )
    assert "kept 2 of" in capsys.readouterr().out
    assert out.stat().st_size < src.stat().st_size
    with open(out, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None and summary.statistics is not None
        assert [s.name for s in summary.schemas.values()] == ["sleap_rtc_proto.v1.Envelope"]
        assert summary.statistics.message_count > 2  # the result's fragments
        channel = next(iter(summary.channels.values()))
        assert channel.metadata["connection_id"] == "conn-1"
    recs = list(CaptureReader([out]).records())
    assert [r.body for r in recs] == ["path_check_result", "job_submit"]
    assert recs[0].fragments > 1 and len(recs[0].message()["videos"]) == 400  # type: ignore[index]


def test_filter_by_job_direction_and_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "s.mcap"
    session_capture(src, progress=10)
    out = tmp_path / "job.mcap"
    assert main(["filter", str(src), "-o", str(out), "-j", "job-1", "-d", "worker_to_client"]) == 0
    recs = list(CaptureReader([out]).records())
    assert {r.job_id for r in recs} == {"job-1"} and {r.direction for r in recs} == {
        "worker_to_client"
    }
    assert len(recs) == 14  # accepted, 10 progress, log, status, complete
    late = tmp_path / "late.mcap"
    first, last = recs[0].time_ns, recs[-1].time_ns
    del first, last
    assert main(["filter", str(src), "-o", str(late), "--since", "+0.010"]) == 0
    kept = list(CaptureReader([late]).records())
    assert 0 < len(kept) < 25


def test_filter_legacy_text_into_the_raw_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "old.log"
    src.write_text("JOB_SUBMIT::j::{}\nJOB_ACCEPTED::j\nJOB_STOP\n")
    out = tmp_path / "old.mcap"
    assert main(["filter", str(src), "-o", str(out), "-j", "j"]) == 0
    recs = list(CaptureReader([out]).records())
    assert [(r.kind, r.body) for r in recs] == [
        ("legacy", "job_submit"),
        ("legacy", "job_accepted"),
    ]


def test_filter_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    src = tmp_path / "s.mcap"
    session_capture(src, progress=1)
    assert main(["filter", str(src), "-o", str(src)]) == 2
