"""inspect timeline: a sequence diagram a person can open (SVG or HTML)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_inspect_support import session_capture

from sleap_rtc.cli.inspect_cmd import main

SVG = "{http://www.w3.org/2000/svg}"


def arrows(svg_text: str) -> list[tuple[str, str, str]]:
    root = ET.fromstring(svg_text)
    out = []
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "arrow":
            label = g.findall(f"{SVG}text")[0].text or ""
            out.append((g.get("data-body") or "", g.get("data-direction") or "", label))
    return out


def test_svg_has_two_lifelines_and_the_expected_arrows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.mcap"
    session_capture(path, progress=40)
    out = tmp_path / "t.svg"
    assert main(["timeline", str(path), "-o", str(out)]) == 0
    text = out.read_text()
    got = arrows(text)
    bodies = [b for b, _, _ in got]
    assert bodies[:6] == [
        "hello",
        "hello_ack",
        "path_check_request",
        "path_check_result",
        "job_submit",
        "job_accepted",
    ]
    assert got[1] == ("hello_ack", "worker_to_client", "hello_ack #1 re #1")
    assert any(label.startswith("job_submit #3") and "job=job-1" in label for _, _, label in got)
    # 40 progress messages: the first and last drawn, the rest collapsed.
    assert bodies.count("job_progress") == 3  # two protobuf ends + the legacy frame
    assert "38 more job_progress" in text
    assert "RAW: not a protobuf Envelope" in text
    root = ET.fromstring(text)
    lifelines = [t.text for t in root.iter(f"{SVG}text") if t.text in ("client", "worker")]
    assert lifelines == ["client", "worker"]


def test_html_and_no_collapse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.mcap"
    session_capture(path, progress=10)
    out = tmp_path / "t.html"
    assert main(["timeline", str(path), "-o", str(out), "--no-collapse"]) == 0
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "</html>" in html
    start = html.index("<svg")
    got = arrows(html[start : html.index("</svg>") + 6])
    assert [b for b, _, _ in got].count("job_progress") == 11
    assert "wrote HTML timeline" in capsys.readouterr().out


def test_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    session_capture(path, progress=10)
    out = tmp_path / "t.svg"
    assert main(["timeline", str(path), "-o", str(out), "--limit", "4"]) == 0
    assert len(arrows(out.read_text())) == 4 and "first 4 of" in out.read_text()
