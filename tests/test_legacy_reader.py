"""Plain-text captures of the legacy TYPE::arg::json frames, mapped to v1 body names."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.read.legacy import (
    legacy_split,
    looks_legacy,
    parse_frame,
    read_text_capture,
    split_line,
)
from sleap_rtc.capture.read.reader import CaptureReader

LEGACY = """\
# a legacy session, as logged by the old client
2026-01-02T03:04:05.000100Z client_to_worker USE_WORKER_PATH::/mnt/lab/odd::name/labels.slp
2026-01-02T03:04:05.200000Z worker_to_client WORKER_PATH_OK::/mnt/lab/odd::name/labels.slp
2026-01-02T03:04:05.300000Z w->c FS_CHECK_VIDEOS_RESPONSE::{"slp_path": "/l.slp", "missing": []}
2026-01-02T03:04:06Z c->w JOB_SUBMIT::client-1::{"config_content": "a: 'x::y'", "n": 1}
2026-01-02T03:04:06.5Z worker_to_client JOB_ACCEPTED::job-77
JOB_PROGRESS::{"job_id": "job-77", "event": "epoch_end", "logs": {"val/loss": 0.5}}
PROGRESS_REPORT::{"what": "", "event": "train_begin"}
JOB_REJECTED::client-2::{"errors": [{"field": "labels_path", "message": "missing :: really"}]}
WORKER_PATH_ERROR::not found
JOB_STOP
JOB_CANCEL
JOB_COMPLETE::{"job_id": "job-77"}
JOB_FAILED::{"job_id": "job-78", "error": "boom"}
INFO 2026-01-02 training started (a log line, not a frame)

SOMETHING_NEW::{"x": 1}
"""


def test_split_keeps_payloads_and_paths_whole() -> None:
    assert legacy_split("USE_WORKER_PATH::/a::b/c.slp") == ("USE_WORKER_PATH", ["/a::b/c.slp"])
    kind, args = legacy_split('JOB_SUBMIT::j1::{"config": "x::y::z"}')
    assert kind == "JOB_SUBMIT" and args == ["j1", '{"config": "x::y::z"}']
    assert legacy_split("JOB_STOP") == ("JOB_STOP", [])
    assert legacy_split('JOB_REJECTED::j::{"errors": ["a::b"]}')[1] == [
        "j",
        '{"errors": ["a::b"]}',
    ]


@pytest.mark.parametrize(
    ("legacy", "v1"),
    [
        ("JOB_SUBMIT", "job_submit"),
        ("JOB_ACCEPTED", "job_accepted"),
        ("JOB_REJECTED", "job_rejected"),
        ("JOB_PROGRESS", "job_progress"),
        ("PROGRESS_REPORT", "job_progress"),
        ("JOB_COMPLETE", "job_complete"),
        ("JOB_FAILED", "job_failed"),
        ("JOB_STOP", "job_control"),
        ("JOB_CANCEL", "job_control"),
        ("USE_WORKER_PATH", "path_check_request"),
        ("WORKER_PATH_OK", "path_check_result"),
        ("WORKER_PATH_ERROR", "path_check_result"),
        ("FS_CHECK_VIDEOS_RESPONSE", "path_check_result"),
    ],
)
def test_types_map_to_v1_bodies(legacy: str, v1: str) -> None:
    assert parse_frame(f"{legacy}::x")["body"] == v1


def test_parse_frame_details() -> None:
    submit = parse_frame('JOB_SUBMIT::client-1::{"type": "train", "labels_path": "/l.slp"}')
    assert submit["job_id"] == "client-1" and submit["message"]["spec"]["labels_path"] == "/l.slp"
    rejected = parse_frame('JOB_REJECTED::c2::{"errors": [{"field": "f", "message": "m :: n"}]}')
    assert rejected["message"]["payload"]["errors"][0]["message"] == "m :: n"
    assert parse_frame('JOB_FAILED::{"job_id": "j9"}')["job_id"] == "j9"
    broken = parse_frame("JOB_PROGRESS::{not json")
    assert broken["message"]["payload"] == "{not json"
    assert parse_frame("NEW_THING::1")["body"] == "NEW_THING"


def test_split_line_prefixes() -> None:
    t, direction, frame = split_line("2026-01-02T03:04:05.5Z c2w JOB_STOP")
    assert t == 1767323045_500000000 and direction == fmt.CLIENT_TO_WORKER and frame == "JOB_STOP"
    assert split_line("worker_to_client JOB_ACCEPTED::j") == (
        0,
        fmt.WORKER_TO_CLIENT,
        "JOB_ACCEPTED::j",
    )
    assert split_line("JOB_ACCEPTED::j a b") == (0, "", "JOB_ACCEPTED::j a b")


def test_text_capture_in_the_same_table(tmp_path: Path) -> None:
    path = tmp_path / "legacy.log"
    path.write_text(LEGACY)
    reader = CaptureReader([path])
    recs = list(reader.records())
    assert len(recs) == 15
    first = recs[0]
    assert first.body == "path_check_request" and first.legacy_type == "USE_WORKER_PATH"
    assert first.message() == {
        "legacy_type": "USE_WORKER_PATH",
        "path": "/mnt/lab/odd::name/labels.slp",
    }
    assert first.direction == fmt.CLIENT_TO_WORKER and first.time_ns == 1767323045_000100000
    assert recs[2].direction == fmt.WORKER_TO_CLIENT and recs[2].body == "path_check_result"
    submit = recs[3]
    assert submit.job_id == "client-1" and submit.message()["spec"]["config_content"] == "a: 'x::y'"  # type: ignore[index]
    assert recs[5].job_id == "job-77" and recs[5].direction == fmt.WORKER_TO_CLIENT
    assert recs[9].body == "job_control" and recs[9].direction == fmt.CLIENT_TO_WORKER
    log_line = recs[13]
    assert log_line.kind == "raw" and "log line" in (log_line.reason or "")
    assert recs[14].body == "SOMETHING_NEW"
    assert [p.message for p in reader.problems] == ["line 15 is not a legacy frame"]
    assert not reader.stopped_early
    assert recs[0].to_json()["legacy_type"] == "USE_WORKER_PATH"


def test_binary_file_is_not_a_text_capture(tmp_path: Path) -> None:
    from sleap_rtc.capture.read.mcapio import CaptureError

    path = tmp_path / "blob.bin"
    path.write_bytes(b"JOB\x00\x01")
    with pytest.raises(CaptureError):
        list(read_text_capture(path))


def test_python_logging_lines_keep_their_date(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    path.write_text(
        "2026-01-02 03:04:05,612 - sleap_rtc.worker - INFO - JOB_ACCEPTED::job-9\n"
        "2026-01-02 03:04:06,001 - sleap_rtc.worker - INFO - training started\n"
        '2026-01-02T03:04:07.5Z worker_to_client JOB_COMPLETE::{"job_id": "job-9"}\n'
    )
    recs = list(CaptureReader([path]).records())
    assert [r.time_ns for r in recs] == [
        1767323045_612000000,
        1767323046_001000000,
        1767323047_500000000,
    ]
    assert recs[0].legacy_type == "JOB_ACCEPTED" and recs[0].job_id == "job-9"
    assert recs[1].kind == "raw" and recs[1].raw == b"training started"


def test_a_bare_upper_case_log_line_is_not_a_frame(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("DONE\nOK\nJOB_STOP\n")
    recs = list(CaptureReader([path]).records())
    assert [(r.kind, r.body) for r in recs] == [
        ("raw", "raw"),
        ("raw", "raw"),
        ("legacy", "job_control"),
    ]
    assert not looks_legacy(b"DONE") and looks_legacy(b"SOMETHING_NEW::{}")
