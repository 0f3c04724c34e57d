"""cat -f: a capture being written is shown as it grows; the footer, a timeout or Ctrl-C end it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from test_inspect_support import session_capture

from sleap_rtc.capture.read.mcapio import Follow
from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.capture.write.recorder import FLUSH_INTERVAL_S, CaptureWriter
from sleap_rtc.cli.inspect_cmd import main


def conversation() -> list[tuple[str, bytes]]:
    scratch = CaptureWriter("/dev/null", background=False, compression="none")
    try:
        return session_capture(Path("/dev/null"), progress=5, writer=scratch, garbage=False)
    finally:
        scratch.close()


def test_the_recorder_flushes_so_a_follower_sees_messages_within_a_second(
    tmp_path: Path,
) -> None:
    path = tmp_path / "live.mcap"
    frames = conversation()
    writer = CaptureWriter(path)  # the background writer thread, as in a session
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    try:
        direction, frame = frames[0]
        writer.record(conn, direction, frame)
        start = time.monotonic()
        bodies: list[str] = []
        while time.monotonic() - start < 3 and "hello" not in bodies:
            reader = CaptureReader([path], follow=Follow(timeout_s=0.05, poll_s=0.01))
            bodies = [r.body for r in reader.records()]
        seen_after = time.monotonic() - start
        assert bodies == ["hello"]
        assert not reader.damaged  # a capture still being written is not damaged
        assert seen_after < FLUSH_INTERVAL_S + 0.5 <= 1.0
    finally:
        writer.close()


def test_a_follower_sees_everything_and_stops_at_the_footer(tmp_path: Path) -> None:
    path = tmp_path / "live.mcap"
    frames = conversation()
    writer = CaptureWriter(path, chunk_size=4096)
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    reader = CaptureReader([path], follow=Follow(timeout_s=20, poll_s=0.02))
    got: list[str] = []
    ended: list[float] = []

    def follow() -> None:
        got.extend(r.body for r in reader.records())
        ended.append(time.monotonic())

    follower = threading.Thread(target=follow)
    follower.start()
    for i in range(0, len(frames), 4):  # the conversation arrives in bursts
        for direction, frame in frames[i : i + 4]:
            writer.record(conn, direction, frame)
        time.sleep(0.15)
    writer.close()
    closed = time.monotonic()
    follower.join(timeout=10)
    assert not follower.is_alive()
    assert ended[0] - closed < 2  # the footer ended it, not the 20 s timeout
    expected = [r.body for r in CaptureReader([path]).records()]
    assert got == expected and len(expected) == len(frames)
    assert reader.files[-1].complete and not reader.problems


def test_cat_follow_timeout_on_an_unfinished_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "live.mcap"
    writer = CaptureWriter(path)
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    try:
        for direction, frame in conversation()[:2]:
            writer.record(conn, direction, frame)
        writer.flush()
        time.sleep(FLUSH_INTERVAL_S + 0.3)  # the writer thread's periodic flush
        start = time.monotonic()
        code = main(["cat", "-f", "--follow-timeout", "0.3", "--json", str(path)])
        assert time.monotonic() - start < 3
        captured = capsys.readouterr()
        rows = [json.loads(line) for line in captured.out.splitlines()]
        assert code == 0 and [r["body"] for r in rows] == ["hello", "hello_ack"]
        assert rows[1]["answers"]["body"] == "hello"  # linked in one pass
        assert "stopped following: no new data for 0.3 s" in captured.err
        # Without -f the same unfinished file is a file without a footer: exit 1.
        assert main(["cat", str(path)]) == 1
    finally:
        writer.close()


def test_ctrl_c_ends_following_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "live.mcap"
    writer = CaptureWriter(path)
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    try:
        direction, frame = conversation()[0]
        writer.record(conn, direction, frame)
        writer.flush()
        time.sleep(FLUSH_INTERVAL_S + 0.3)

        def interrupted(self: Follow, size: int) -> bool:
            raise KeyboardInterrupt

        monkeypatch.setattr(Follow, "wait", interrupted)
        assert main(["cat", "--follow", str(path)]) == 0
        assert "hello" in capsys.readouterr().out
    finally:
        writer.close()
