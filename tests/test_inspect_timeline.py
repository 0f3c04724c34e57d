"""inspect timeline: a sequence diagram a person can open (SVG or HTML).

Each test reads what was drawn back out of the SVG (arrows, their payload
lines, the request/answer brackets, pauses, collapsed runs, the lifeline
heads), so a wrong pairing, a lost payload or a missing pause fails here. One
test opens the HTML in a real headless Chromium and reads the DOM after the
page's own script ran.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from google.protobuf.message import Message
from test_inspect_support import Clock, session_capture

from sleap_rtc.capture.read.record import Record
from sleap_rtc.capture.write.recorder import CaptureWriter
from sleap_rtc.cli.inspect_cmd import main
from sleap_rtc.inspect.timeline_layout import Arrow, Run, TimelineBuilder
from sleap_rtc.inspect.timeline_payload import payload
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import error_pb2, handshake_pb2, job_pb2, paths_pb2, progress_pb2
from sleap_rtc_proto.versions import CURRENT

SVG = "{http://www.w3.org/2000/svg}"
C2W, W2C = "client_to_worker", "worker_to_client"


def texts(g: ET.Element) -> dict[str, str]:
    """class -> text of a group's <text> children (the first of each class)."""
    out: dict[str, str] = {}
    for t in g.iter(f"{SVG}text"):
        out.setdefault((t.get("class") or "").split(" ")[0], t.text or "")
    return out


class Drawn:
    """What an SVG timeline shows, read back."""

    def __init__(self, svg_text: str) -> None:
        self.text = svg_text
        self.root = ET.fromstring(svg_text)
        groups = list(self.root.iter(f"{SVG}g"))
        self.arrows = {
            int(g.get("data-i", "-1")): g for g in groups if "arrow" in (g.get("class") or "")
        }
        self.links = [g for g in groups if g.get("class") == "link"]
        self.runs = [g for g in groups if g.get("class") == "run"]
        self.pauses = [g for g in groups if g.get("class") == "pause"]
        self.heads = {g.get("class"): texts(g) for g in groups if "head" in (g.get("class") or "")}

    def bodies(self) -> list[str]:
        return [self.arrows[i].get("data-body") or "" for i in sorted(self.arrows)]

    def label(self, i: int) -> str:
        return texts(self.arrows[i])["lbl"]

    def payload(self, i: int) -> str:
        return texts(self.arrows[i])["pay"]

    def first(self, body: str) -> int:
        return next(i for i in sorted(self.arrows) if self.arrows[i].get("data-body") == body)

    def pairs(self) -> list[tuple[str, str, str]]:
        """(request body, answer body, latency text) of each bracket."""
        out = []
        for g in self.links:
            req, ans = int(g.get("data-req", "-1")), int(g.get("data-ans", "-1"))
            latency = next(iter(g.iter(f"{SVG}text"))).text or ""
            out.append(
                (
                    self.arrows[req].get("data-body") or "",
                    self.arrows[ans].get("data-body") or "",
                    latency,
                )
            )
        return out


def draw(path: Path, tmp_path: Path, *extra: str, name: str = "t.svg") -> Drawn:
    out = tmp_path / name
    assert main(["timeline", str(path), "-o", str(out), *extra]) == 0
    text = out.read_text()
    if name.endswith(".html"):
        text = text[text.index("<svg") : text.index("</svg>") + 6]
    return Drawn(text)


class Talk:
    """A conversation written into a capture, message by message, on a fake clock."""

    def __init__(self, path: Path, *, meta_worker: str = "peer-w", meta_client: str = "peer-c"):
        self.clock = Clock()
        self.writer = CaptureWriter(path, background=False, clock=self.clock, compression="none")
        self.conn = self.writer.connection(
            "conn-1", local_peer=meta_client, remote_peer=meta_worker, local_role="client"
        )
        self.client, self.worker = MessageStream(), MessageStream()

    def c(self, body: Message, re: int = 0) -> int:
        mid, frames = self.client.send(body, correlation_id=re)
        for f in frames:
            self.writer.record(self.conn, C2W, f)
        return mid

    def w(self, body: Message, re: int = 0) -> int:
        mid, frames = self.worker.send(body, correlation_id=re)
        for f in frames:
            self.writer.record(self.conn, W2C, f)
        return mid

    def wait(self, seconds: float) -> None:
        self.clock.now += int(seconds * 1e9)

    def hello(self, **ack: str) -> None:
        hid = self.c(
            handshake_pb2.Hello(
                min_version=CURRENT.to_proto(),
                max_version=CURRENT.to_proto(),
                software="sleap-rtc 9.9",
                client_name="lab-laptop",
            )
        )
        self.w(
            handshake_pb2.HelloAck(
                chosen_version=CURRENT.to_proto(),
                software="sleap-rtc 9.9",
                components={"sleap-nn": "0.3.5"},
                **ack,
            ),
            re=hid,
        )

    def progress(self, n: int, *, start: int = 0) -> None:
        for i in range(start, start + n):
            self.w(
                progress_pb2.JobProgress(
                    job_id="job-1",
                    sequence=i + 1,
                    event=progress_pb2.PROGRESS_EVENT_BATCH_END,
                    epoch=i // 10,
                    batch=i % 10,
                    metrics={"loss": 1.0 / (i + 1), "val/loss": 2.0 / (i + 1)},
                )
            )

    def close(self) -> None:
        self.writer.close()


def test_arrows_in_order_with_ids_and_lifelines(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    session_capture(path, progress=40)
    d = draw(path, tmp_path)
    assert d.bodies()[:6] == [
        "hello",
        "hello_ack",
        "path_check_request",
        "path_check_result",
        "job_submit",
        "job_accepted",
    ]
    assert d.label(1) == "hello_ack #1 re #1"
    assert d.label(d.first("job_submit")) == "job_submit #3 job=job-1"
    assert d.arrows[1].get("data-direction") == W2C
    # one arrow per message: 40 progress = first + run of 38 + last, then the legacy frame
    assert d.bodies().count("job_progress") == 3
    assert [r.get("data-count") for r in d.runs] == ["38"]
    assert "RAW: not a protobuf Envelope" in d.text
    assert "arrow c2w err raw" in d.text  # the garbage frame: red and dashed
    assert "arrow w2c legacy" in d.text


def test_each_answer_is_linked_to_its_request_with_the_latency(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    session_capture(path, progress=5)
    d = draw(path, tmp_path)
    # the fake clock ticks 1 ms per frame, so every answer comes 1 ms after its request
    assert sorted(d.pairs()) == sorted(
        [
            ("hello", "hello_ack", "1.0 ms"),
            ("path_check_request", "path_check_result", "1.0 ms"),
            ("job_submit", "job_accepted", "1.0 ms"),
            ("job_control", "job_status", "1.0 ms"),
            ("job_attach", "error", "1.0 ms"),
        ]
    )
    # a standalone SVG viewer shows the same details as a tooltip
    title = d.arrows[d.first("hello_ack")].find(f"{SVG}title")
    assert title is not None and "answers hello #1 in 1.000 ms" in (title.text or "")
    for g in d.links:  # each bracket joins a request to an answer below it, on the worker side
        assert int(g.get("data-req", "0")) < int(g.get("data-ans", "0"))
        path_d = next(iter(g.iter(f"{SVG}path"))).get("d") or ""
        assert path_d.startswith("M883,")


def test_latency_is_measured_and_requests_without_answers_get_no_link(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    talk = Talk(path)
    talk.hello(worker_id="gpu-1")
    check = talk.c(paths_pb2.PathCheckRequest(labels_path="/d/l.slp"))
    talk.c(job_pb2.JobAttach(job_id="never-answered"))
    talk.wait(0.250)
    talk.w(paths_pb2.PathCheckResult(labels=paths_pb2.PathEntry(status=1)), re=check)
    talk.close()
    d = draw(path, tmp_path, "--pause", "0")
    assert ("path_check_request", "path_check_result", "252.0 ms") in d.pairs()
    assert not any(req == "job_attach" for req, _, _ in d.pairs())
    assert len(d.links) == 2


def test_overlapping_links_get_their_own_lanes(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    talk = Talk(path)
    a = talk.c(job_pb2.JobAttach(job_id="a"))
    b = talk.c(job_pb2.JobAttach(job_id="b"))
    talk.w(job_pb2.JobStatus(job_id="a", state=job_pb2.JOB_STATE_RUNNING), re=a)
    talk.w(job_pb2.JobStatus(job_id="b", state=job_pb2.JOB_STATE_QUEUED), re=b)
    c = talk.c(job_pb2.JobAttach(job_id="c"))
    talk.w(job_pb2.JobStatus(job_id="c"), re=c)
    talk.close()
    d = draw(path, tmp_path)
    xs = [
        re.match(r"M883,\d+ H(\d+)", next(iter(g.iter(f"{SVG}path"))).get("d") or "")
        for g in d.links
    ]
    # a and b overlap (two lanes); c comes after both and reuses the first lane
    assert [int(m.group(1)) for m in xs if m] == [896, 910, 896]


def test_key_payload_of_each_message(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    talk = Talk(path)
    talk.hello(worker_id="gpu-1", subject="alice")
    check = talk.c(
        paths_pb2.PathCheckRequest(labels_path="/d/l.slp", path_mappings={"/a.mp4": "/b.mp4"})
    )
    talk.w(
        paths_pb2.PathCheckResult(
            labels=paths_pb2.PathEntry(status=paths_pb2.PATH_STATUS_FOUND),
            videos=[
                paths_pb2.VideoCheck(status=paths_pb2.PATH_STATUS_FOUND),
                paths_pb2.VideoCheck(status=paths_pb2.PATH_STATUS_MISSING),
                paths_pb2.VideoCheck(status=paths_pb2.PATH_STATUS_OUTSIDE_MOUNTS),
            ],
        ),
        re=check,
    )
    sub = talk.c(job_pb2.JobSubmit(job_id="job-7"))
    talk.w(job_pb2.JobAccepted(job_id="job-7", run_dir="/runs/r7"), re=sub)
    talk.w(
        progress_pb2.JobProgress(
            job_id="job-7",
            event=progress_pb2.PROGRESS_EVENT_EPOCH_END,
            epoch=3,
            metrics={"loss": 0.125, "val/loss": 0.25},
        )
    )
    att = talk.c(job_pb2.JobAttach(job_id="job-7"))
    talk.w(job_pb2.JobStatus(job_id="job-7", state=job_pb2.JOB_STATE_RUNNING), re=att)
    talk.w(
        progress_pb2.JobFailed(
            job_id="job-7",
            code=progress_pb2.FAILURE_CODE_TRAINER_EXITED,
            exit_code=3,
            message="CUDA out of memory",
        )
    )
    talk.c(error_pb2.Error(code=error_pb2.ERROR_CODE_MALFORMED, message="bad frame"))
    talk.close()
    d = draw(path, tmp_path)
    result = d.first("path_check_result")
    assert (
        d.payload(result)
        == "labels found · videos 1 found, 2 missing (1 missing, 1 outside_mounts)"
    )
    assert "warn" in (d.arrows[result].get("class") or "")  # missing paths: amber
    assert d.payload(d.first("path_check_request")) == "labels l.slp · 1 mapping"
    assert d.payload(d.first("job_accepted")) == "accepted · run r7"
    assert d.label(d.first("job_accepted")).endswith("job=job-7")
    assert d.payload(d.first("job_progress")) == "epoch_end · epoch 3 · loss 0.125 · val_loss 0.25"
    assert d.payload(d.first("job_status")) == "state running"
    failed = d.first("job_failed")
    assert d.payload(failed) == "FAILED TRAINER_EXITED (exit 3): CUDA out of memory"
    assert "err" in (d.arrows[failed].get("class") or "").split()
    error = d.first("error")
    assert d.payload(error) == "MALFORMED: bad frame"
    assert (d.arrows[error].get("class") or "").split() == ["arrow", "c2w", "err"]
    assert "user alice" in d.payload(d.first("hello_ack"))


def test_payload_lines_for_legacy_odd_and_unknown_messages() -> None:
    legacy = {
        "legacy_type": "JOB_PROGRESS",
        "payload": {"event": "epoch_end", "logs": {"val_loss": 0.5}},
    }
    assert payload("job_progress", legacy) == ("epoch_end · val_loss 0.5", "")
    assert payload(
        "job_rejected",
        {"message": "no", "violations": [{"field": "spec", "code": "VIOLATION_CODE_REQUIRED"}]},
    ) == (
        "REJECTED: no · 1 violation(s): spec required",
        "err",
    )
    # a field of the wrong type (a damaged or newer message) still gets a line, no crash
    assert payload("path_check_result", {"videos": "oops", "labels": 3})[0].startswith("labels ")
    assert payload("job_progress", {"metrics": ["x"], "event": 7}) == ("7", "")
    assert payload("unknown_body_77", {"@unknown": [{"field": 77}]})[0] == (
        "1 field(s) this schema does not name"
    )
    assert payload("error", None) == ("", "err")


def test_peer_names_from_metadata_hello_and_hello_ack(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    talk = Talk(path, meta_client="peer-c9", meta_worker="peer-w4")
    talk.hello(worker_id="gpu-box", subject="alice")
    talk.close()
    d = draw(path, tmp_path)
    client, worker = d.heads["head peer-client"], d.heads["head peer-worker"]
    assert (client["name"], client["det"]) == ("alice", "lab-laptop · sleap-rtc 9.9")
    assert (worker["name"], worker["det"]) == ("gpu-box", "sleap-rtc 9.9 · sleap-nn 0.3.5")
    assert "recorded by the client" in d.text
    # without a HelloAck naming them, the channel metadata's peer ids name the lifelines
    path2 = tmp_path / "t2.mcap"
    talk = Talk(path2, meta_client="peer-c9", meta_worker="peer-w4")
    talk.c(job_pb2.JobAttach(job_id="j"))
    talk.close()
    d = draw(path2, tmp_path, name="t2.svg")
    assert d.heads["head peer-client"]["name"] == "peer-c9"
    assert d.heads["head peer-worker"]["name"] == "peer-w4"


def test_pauses_are_drawn_with_their_length_and_split_runs(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    talk = Talk(path)
    talk.hello()
    talk.progress(10)
    talk.wait(7.5)
    talk.progress(10, start=10)
    talk.close()
    d = draw(path, tmp_path)
    assert [p.get("data-seconds") for p in d.pauses] == ["7.501"]
    assert "pause 7.501 s" in d.text
    # the pause ends the first run of progress: two runs of 8 around it, not one of 18
    assert [r.get("data-count") for r in d.runs] == ["8", "8"]
    assert not draw(path, tmp_path, "--pause", "10", name="u.svg").pauses
    assert not draw(path, tmp_path, "--pause", "0", name="v.svg").pauses


def test_a_long_run_collapses_to_first_last_count_and_loss_range(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    talk = Talk(path)
    talk.hello()
    talk.progress(1000)
    for i in range(5):
        talk.w(progress_pb2.JobLog(job_id="job-1", lines=["a"] * (i + 1)))
    talk.close()
    d = draw(path, tmp_path)
    assert d.bodies() == ["hello", "hello_ack", *["job_progress"] * 2, *["job_log"] * 2]
    first, last = [i for i in sorted(d.arrows) if d.arrows[i].get("data-body") == "job_progress"]
    assert d.payload(first).startswith("batch_end · seq 1 · epoch 0 · batch 0 · loss 1 ")
    assert d.payload(last).startswith("batch_end · seq 1000 · epoch 99 · batch 9 · loss 0.001 ")
    run = d.runs[0]
    assert [r.get("data-count") for r in d.runs] == ["998", "3"]
    head, summary = texts(run)["lbl"], texts(run)["pay"]
    assert head == "⋯ 998 more job_progress (W->C) over 0.997 s"
    # the middle: messages 2..999, loss 1/2 .. 1/999, val_loss 2/2 .. 2/999
    assert summary == "epochs 0–99 · loss 0.5 → 0.001001 · val_loss 0.002002–1"
    # a run of logs: the middle three carry 2 + 3 + 4 lines
    assert texts(d.runs[1])["pay"].startswith("9 log lines · ")
    assert texts(d.runs[1])["pay"].endswith(" bytes")
    full = draw(path, tmp_path, "--no-collapse", name="full.svg")
    assert full.bodies().count("job_progress") == 1000 and not full.runs


def test_runs_never_mix_connections(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    talk = Talk(path)
    talk.hello()
    talk.progress(6)
    other = talk.writer.connection("conn-2", local_peer="c", remote_peer="w", local_role="client")
    stream = MessageStream()
    for i in range(6):
        for f in stream.send(progress_pb2.JobProgress(job_id="job-2", sequence=i + 1))[1]:
            talk.writer.record(other, W2C, f)
    talk.close()
    d = draw(path, tmp_path)
    assert [r.get("data-count") for r in d.runs] == ["4", "4"]
    assert "conn=conn-2" in d.label(max(d.arrows))
    assert d.label(0) == "hello #1 conn=conn-1"  # named from the first arrow on
    assert "2 connections" in d.text


def test_limit_bounds_what_is_drawn_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "t.mcap"
    talk = Talk(path)
    talk.hello()
    for i in range(30):  # alternating bodies: nothing collapses
        talk.c(job_pb2.JobAttach(job_id=f"j{i}"))
        talk.w(progress_pb2.JobLog(job_id=f"j{i}", lines=["x"]))
    talk.close()
    out = tmp_path / "t.svg"
    assert main(["timeline", str(path), "-o", str(out), "--limit", "5"]) == 0
    d = Drawn(out.read_text())
    assert len(d.arrows) == 5
    assert "first 5 of 62 drawn (--limit)" in d.text
    assert "62 messages over 0.061 s" in d.text  # the span of all, not of what was drawn
    assert "… 57 more messages not drawn (--limit)" in d.text
    assert main(["timeline", str(path), "-o", str(out), "--limit", "0"]) == 2


def test_the_builder_stays_bounded_on_many_records() -> None:
    """200,000 records (alternating, so nothing collapses): memory is the limit, not the input."""
    builder = TimelineBuilder(limit=50)
    for i in range(200_000):
        direction = C2W if i % 2 else W2C
        builder.add(
            Record(
                1_000_000 + i,
                direction,
                "c",
                "protobuf",
                "job_log" if i % 2 else "job_attach",
                10,
                message_id=i,
            )
        )
    layout = builder.finish()
    assert layout.total == 200_000
    assert sum(1 for i in layout.items if isinstance(i, Arrow | Run)) == 50
    assert layout.truncated and layout.drawn == 50


def test_html_is_self_contained_with_hover_details(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    writer = CaptureWriter(path, background=False, clock=Clock(), compression="none")
    session_capture(path, progress=10, writer=writer)
    conn = writer.connection("conn-1", local_peer="c", remote_peer="w", local_role="client")
    hostile = "</script><script>alert(1)</script><!-- <b>"
    for frame in MessageStream().send(progress_pb2.JobLog(job_id="j", lines=[hostile]))[1]:
        writer.record(conn, W2C, frame)
    writer.close()
    out = tmp_path / "t.html"
    assert main(["timeline", str(path), "-o", str(out)]) == 0
    html = out.read_text()
    # a message's text never becomes markup: two script elements, the hostile line as data
    assert html.count("<script") == 2 and "alert(1)</script>" not in html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # nothing fetched: the only URL is the SVG namespace
    assert re.findall(r"https?://[^\s\"'<>]+", html) == ["http://www.w3.org/2000/svg"]
    assert not re.search(r"""\b(src|href)\s*=""", html)
    data = re.search(r'<script type="application/json" id="tl-data">(.*?)</script>', html, re.S)
    assert data is not None
    details = json.loads(data.group(1))
    d = Drawn(html[html.index("<svg") : html.index("</svg>") + 6])
    assert set(details) == {str(i) for i in d.arrows}
    ack = details[str(d.first("hello_ack"))]
    assert "answers hello #1 in 1.000 ms" in ack and '"worker_id": "worker-3"' in ack
    assert hostile in details[str(max(d.arrows))]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(
    _chromium() is None,
    reason="no headless Chromium installed (Debian: apt-get install chromium)",
)
def test_html_in_a_real_headless_browser(tmp_path: Path) -> None:
    """Chromium runs the page's script: the status line, the hover panel, the highlight."""
    path = tmp_path / "s.mcap"
    session_capture(path, progress=10)
    out = tmp_path / "t.html"
    assert main(["timeline", str(path), "-o", str(out)]) == 0
    html = out.read_text()
    d = Drawn(html[html.index("<svg") : html.index("</svg>") + 6])
    result = d.first("path_check_result")
    chromium = _chromium()
    assert chromium is not None
    with tempfile.TemporaryDirectory() as profile:
        try:
            done = subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    f"--user-data-dir={profile}",
                    "--dump-dom",
                    f"{out.as_uri()}#show={result}",
                ],
                capture_output=True,
                text=True,
                timeout=90,
            )
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck browser
            pytest.skip("headless Chromium did not finish in 90 s")
    assert done.returncode == 0, done.stderr[-500:]
    dom = done.stdout
    # the script ran: it counted the links it found in the live DOM
    assert "a request and its answer light up together (5 answers linked)." in dom
    # the hover panel shows the answer's details ...
    tip = re.search(r'<div id="tip" style="([^"]*)">([^<]*)', dom)
    assert tip is not None and "display: block" in tip.group(1)
    assert "answers path_check_request #2 in 1.000 ms" in tip.group(2)
    assert "PATH_STATUS_FOUND" in tip.group(2)
    # ... and the answer, its request and the bracket between them are highlighted
    lit = set(re.findall(r'class="([^"]*\bhl\b[^"]*)" (data-[a-z]+="\d+")', dom))
    request = d.first("path_check_request")
    assert lit == {
        ("arrow c2w hl", f'data-i="{request}"'),
        ("arrow w2c hl", f'data-i="{result}"'),
        ("link hl", f'data-req="{request}"'),
    }
    # and the payload labels are in the rendered DOM
    assert "labels found · videos 2 found, 0 missing · check token" in dom
