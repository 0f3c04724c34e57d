"""inspect stats: counts, bytes, request -> answer latency percentiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_inspect_support import session_capture

from sleap_rtc.capture.read.record import Record
from sleap_rtc.cli.inspect_cmd import main
from sleap_rtc.inspect.stats import compute, percentile


def rec(t_ms: float, direction: str, body: str, mid: int, corr: int = 0) -> Record:
    return Record(
        int(t_ms * 1e6), direction, "c", "protobuf", body, 10, message_id=mid, correlation_id=corr
    )


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (
        percentile(values, 50) == 50
        and percentile(values, 90) == 90
        and percentile(values, 99) == 99
    )
    assert percentile([7.0], 99) == 7.0


def test_latency_per_request_type() -> None:
    c2w, w2c = "client_to_worker", "worker_to_client"
    records = [rec(0, c2w, "hello", 1), rec(5, w2c, "hello_ack", 1, 1)]
    for i in range(100):
        records += [
            rec(100 + i * 10, c2w, "path_check_request", 2 + i),
            rec(100 + i * 10 + (i + 1) * 0.1, w2c, "path_check_result", 2 + i, 2 + i),
        ]
    records += [
        rec(2000, c2w, "job_submit", 500),
        rec(2003, w2c, "error", 600, 500),
        rec(2100, c2w, "job_control", 501),
    ]
    stats = compute(records)
    lat = stats["latency"]
    assert lat["hello"]["count"] == 1 and lat["hello"]["p50_ms"] == 5.0
    pcr = lat["path_check_request"]
    assert (
        pcr["count"] == 100
        and pcr["p50_ms"] == pytest.approx(5.0)
        and pcr["p90_ms"] == pytest.approx(9.0)
    )
    assert pcr["p99_ms"] == pytest.approx(9.9) and pcr["max_ms"] == pytest.approx(10.0)
    assert pcr["answers"] == {"path_check_result": 100}
    assert lat["job_submit"]["answers"] == {"error": 1}
    assert lat["job_control"] == {"count": 0, "answers": {}, "unanswered": 1}
    by = {(r["body"], r["direction"]): r for r in stats["by_type"]}
    assert (
        by[("path_check_request", c2w)]["count"] == 100
        and by[("path_check_request", c2w)]["bytes"] == 1000
    )


def test_stats_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.mcap"
    session_capture(path, progress=30, big_result=True)
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "job_progress" in out and "p50" in out and "path_check_request" in out
    assert main(["stats", "--json", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    lat = stats["latency"]
    assert set(lat) >= {"hello", "path_check_request", "job_submit", "job_control", "job_attach"}
    assert lat["job_attach"]["answers"] == {"error": 1}
    assert lat["path_check_request"]["p50_ms"] > 0
    progress = next(r for r in stats["by_type"] if r["body"] == "job_progress" and r["count"] == 31)
    assert progress["direction"] == "worker_to_client"
