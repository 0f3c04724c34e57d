"""A capture of a real demo run (signaling, worker, WebRTC on loopback, stand-in trainer),
decoded by `inspect cat`, `stats` and `timeline`; both sides' captures merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sleap_rtc.cli.inspect_cmd import main

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("demo")
    capture = tmp / "demo.mcap"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLEAP_RTC_")}
    env.update(
        SLEAP_RTC_CONFIG_DIR=str(tmp / "config"),
        SLEAP_RTC_STATE_DIR=str(tmp / "state"),
        TMPDIR=str(tmp),
        # The demo's worker records its side too ($SLEAP_RTC_CAPTURE; the client: --capture).
        SLEAP_RTC_CAPTURE=str(tmp / "worker.mcap"),
    )
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "sleap_rtc.cli.main",
                "demo",
                "--fake-trainer",
                "--capture",
                str(capture),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:  # pragma: no cover - a slow machine
        pytest.skip("the demo did not finish in time")
    if done.returncode != 0:
        pytest.skip(f"the demo itself failed here (rc {done.returncode}): {done.stderr[-500:]}")
    assert capture.exists()
    return capture


def test_cat_decodes_the_demo(demo_capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "--json", str(demo_capture)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    bodies = [r["body"] for r in rows]
    for expected in (
        "hello",
        "hello_ack",
        "path_check_request",
        "path_check_result",
        "job_submit",
        "job_accepted",
        "job_complete",
    ):
        assert expected in bodies, (expected, bodies[:20])
    # progress goes alone or, when several wait at once, as a batch (protocol 1.1)
    assert {"job_progress", "job_progress_batch"} & set(bodies), bodies[:20]
    assert bodies.index("hello") < bodies.index("job_submit") < bodies.index("job_complete")
    assert all(r["kind"] == "protobuf" for r in rows), [r for r in rows if r["kind"] != "protobuf"][
        :3
    ]
    hello = rows[bodies.index("hello")]
    assert "token" not in hello["message"] or hello["message"]["token"].startswith("<jwt")
    assert {r["direction"] for r in rows} == {"client_to_worker", "worker_to_client"}
    submit = rows[bodies.index("job_submit")]
    assert submit["message"]["spec"]["config_content"]


def test_stats_of_the_demo(demo_capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--json", str(demo_capture)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["latency"]["hello"]["answers"] == {"hello_ack": 1}
    assert stats["latency"]["path_check_request"]["count"] >= 1
    assert stats["latency"]["job_submit"]["answers"] == {"job_accepted": 1}
    assert stats["latency"]["job_submit"]["p50_ms"] > 0


def test_timeline_of_the_demo(demo_capture: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo.html"
    assert main(["timeline", str(demo_capture), "-o", str(out)]) == 0
    html = out.read_text()
    for body in ("hello", "path_check_result", "job_submit", "job_accepted", "job_complete"):
        assert f'data-body="{body}"' in html


def test_filter_j_of_the_demo_keeps_every_job_message(
    demo_capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-j` keeps the batches too (their items carry the job id), and `filter` the metadata;
    the `mcap` library, an independent reader, checks the filtered file."""
    from mcap.reader import make_reader

    from sleap_rtc.capture.read.reader import CaptureReader
    from sleap_rtc.capture.read.record import Record

    records = list(CaptureReader([demo_capture]).records())
    (job,) = {r.job_id for r in records if r.body == "job_submit"}

    def of_job(r: Record) -> bool:
        if r.body == "job_progress_batch":  # no job id of its own: its items have one
            return any(i.get("job_id") == job for i in (r.message() or {}).get("items", []))
        return r.job_id == job

    mine = [r for r in records if of_job(r)]
    out = tmp_path / "job.mcap"
    capsys.readouterr()
    assert main(["filter", str(demo_capture), "-o", str(out), "-j", job]) == 0
    assert f"kept {len(mine)} of {len(records)}" in capsys.readouterr().out
    assert main(["cat", "--json", "-j", job, str(demo_capture)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["body"] for r in rows] == [r.body for r in mine]
    with open(out, "rb") as f:
        reader = make_reader(f)
        names = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        assert sum(1 for _ in reader.iter_messages()) >= len(mine)
    assert names["sleap_rtc.capture"]["tokens"] == "redacted"
    assert main(["info", "--json", str(demo_capture)]) == 0
    assert job in json.loads(capsys.readouterr().out)["jobs"]


def test_merge_of_the_demos_two_sides(
    demo_capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client's and the worker's captures of one real WebRTC connection, merged: matched
    by the session key both wrote, every message once, both views, transit never negative."""
    from sleap_rtc.capture.read.reader import CaptureReader

    worker = demo_capture.parent / "worker.mcap"
    assert worker.exists()
    client_side = list(CaptureReader([demo_capture]).records())
    worker_side = list(CaptureReader([worker]).records())
    keys = {
        r.channel.metadata.get("session_key")
        for r in [*client_side, *worker_side]
        if r.channel is not None
    }
    assert len(keys) == 1 and next(iter(keys))  # one key, the same on both sides
    assert main(["merge", str(demo_capture), str(worker), "--json"]) == 0
    captured = capsys.readouterr()
    assert "matched by session" in captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) >= max(len(client_side), len(worker_side))
    both = [r for r in rows if r["sent_at"] and r["received_at"]]
    assert len(both) >= min(len(client_side), len(worker_side)) - 2
    # One machine, one clock: the estimated offset is small, and no message arrives early.
    assert all(r["transit_ms"] > -5 for r in both)
    times = [r["merged_time_ns"] for r in rows]
    assert times == sorted(times)
    assert rows[0]["body"] == "hello" and rows[0]["sent_at"]["side"] == "client"
