"""inspect info: versions, peers, time span, counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_inspect_support import session_capture

from sleap_rtc.cli.inspect_cmd import main
from sleap_rtc_proto.versions import CURRENT


def test_info_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.mcap"
    sent = session_capture(path, progress=4)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "client client-7 <-> worker worker-3" in out
    assert f"sleap-rtc 0.1.0 speaks {CURRENT}..{CURRENT} sleap 1.6.6" in out
    assert f"chose {CURRENT}" in out and "sleap-nn 0.3.5" in out
    assert "tokens redacted" in out and "complete" in out
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["messages"] == len(sent)
    assert info["by_kind"] == {"protobuf": len(sent) - 2, "legacy": 1, "raw": 1}
    assert info["by_body"]["job_progress"] == 5
    assert info["hello"][0]["components"] == {"sleap": "1.6.6"}
    assert info["hello"][0]["token"].startswith("<jwt")
    assert info["hello_ack"][0]["worker_id"] == "worker-3"
    assert info["connections"]["conn-1"]["local_role"] == "client"
    assert info["duration_s"] > 0 and info["start"] < info["end"]
    assert info["jobs"] == ["job-1", "nope"] and not info["partial"]


def test_info_of_a_legacy_text_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.txt"
    path.write_text("JOB_SUBMIT::j::{}\nJOB_ACCEPTED::j\n")
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["by_body"] == {"job_submit": 1, "job_accepted": 1}
        and info["files"][0]["kind"] == "text"
    )
