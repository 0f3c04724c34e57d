"""inspect cat: readable lines and JSON lines, selections, fragments, damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_inspect_support import session_capture

from sleap_rtc.cli.inspect_cmd import main
from sleap_rtc_proto.versions import CURRENT


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "s.mcap"
    session_capture(path, progress=5, big_result=True)
    return path


def test_text_lines(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", str(capture), "--width", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 19
    assert main(["cat", str(capture)]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 240
    assert "C->W" in lines[0] and "hello" in lines[0] and "<jwt" in lines[0] and "#1" in lines[0]
    assert "W->C" in lines[1] and "hello_ack" in lines[1] and "re #1" in lines[1]
    result = next(line for line in lines if "path_check_result" in line)
    assert "fragments]" in result
    assert any("job_progress (JOB_PROGRESS)" in line for line in lines)
    assert "RAW (not a protobuf Envelope" in lines[-1]
    assert "job=job-1" in next(line for line in lines if "job_accepted" in line)


def test_json_lines(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "--json", str(capture)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["body"] == "hello" and rows[0]["direction"] == "client_to_worker"
    assert rows[0]["message"]["software"] == "sleap-rtc 0.1.0"
    assert rows[0]["version"] == str(CURRENT)
    assert rows[1]["correlation_id"] == rows[0]["message_id"]
    progress = [r for r in rows if r["body"] == "job_progress" and r["kind"] == "protobuf"]
    assert (
        progress[1]["message"]["event"] == "PROGRESS_EVENT_BATCH_END"
        and progress[1]["job_id"] == "job-1"
    )
    assert progress[1]["message"]["sequence"] == "2" and progress[1]["time"].endswith("Z")
    assert rows[-1]["kind"] == "raw" and rows[-1]["hex"] and rows[-1]["reason"]


def test_selection_and_limit(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "--json", "-b", "job_submit,job_accepted", str(capture)]) == 0
    assert [json.loads(x)["body"] for x in capsys.readouterr().out.splitlines()] == [
        "job_submit",
        "job_accepted",
    ]
    assert main(["cat", "--json", "-d", "c2w", "--limit", "2", str(capture)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["body"] for r in rows] == ["hello", "path_check_request"]
    assert main(["cat", "--json", "-c", "3", str(capture)]) == 0
    assert [json.loads(x)["body"] for x in capsys.readouterr().out.splitlines()] == [
        "job_submit",
        "job_accepted",
    ]
    assert main(["cat", "--json", "--since", "+0.0065", "--until", "+0.0095", str(capture)]) == 0
    assert [json.loads(x)["body"] for x in capsys.readouterr().out.splitlines()] == [
        "path_check_result",
        "job_submit",
        "job_accepted",
    ]


def test_raw_fragments(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "--json", "--fragments", "-b", "fragment", str(capture)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) > 2 and all(r["message"]["count"] == len(rows) for r in rows)


def test_damaged_capture_prints_partial_output_and_where_it_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sleap_rtc.capture.write.recorder import CaptureWriter

    full = tmp_path / "full.mcap"
    writer = CaptureWriter(full, background=False, chunk_size=4096, compression="none")
    session_capture(full, progress=300, writer=writer)
    writer.close()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(full.read_bytes()[:20_000])
    assert main(["cat", str(cut)]) == 1
    out, err = capsys.readouterr()
    assert "hello" in out.splitlines()[0]
    assert "truncated" in err and "stopped here" in err and "Traceback" not in err


def test_colour_output(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "--color", "always", "-n", "3", str(capture)]) == 0
    assert "\x1b[" in capsys.readouterr().out


def test_jobs_give_the_same_output(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "--json", str(capture)]) == 0
    one = capsys.readouterr().out
    assert main(["cat", "--json", "--jobs", "2", str(capture)]) == 0
    assert capsys.readouterr().out == one


def test_write_json_counts_and_limits_joined_batches() -> None:
    import io

    from sleap_rtc.inspect.cat import write_json

    batches = [["a\nb\nc"], ["d", "e"], ["f\ng"]]
    out = io.StringIO()
    assert write_json(batches, out) == 7
    assert out.getvalue() == "a\nb\nc\nd\ne\nf\ng\n"
    for limit in range(1, 8):
        out = io.StringIO()
        assert write_json(batches, out, limit) == limit
        assert out.getvalue().splitlines() == list("abcdefg")[:limit]


def test_default_jobs_follow_the_idle_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded machine the default is one process (never slower than --jobs 1)."""
    import argparse
    import os

    from sleap_rtc.inspect import cat

    big = tmp_path / "big.mcap"
    with open(big, "wb") as f:
        f.truncate(cat.PARALLEL_FROM_BYTES)
    args = argparse.Namespace(jobs=0, captures=[str(big)])
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.3, 2.0, 2.0))
    assert cat._jobs(args) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert cat._jobs(args) == 2
    assert cat._jobs(argparse.Namespace(jobs=3, captures=[str(big)])) == 3
