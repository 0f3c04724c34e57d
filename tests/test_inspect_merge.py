"""inspect merge: the two sides' captures of one connection, matched, clock-corrected, once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from test_inspect_support import C2W, session_capture

from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.capture.write.recorder import CaptureWriter, session_key
from sleap_rtc.cli.inspect_cmd import main

T0 = 1_800_000_000_000_000_000
MS = 1_000_000
TRANSIT = 300_000  # 0.3 ms each way
OFFSET = 7_250 * MS  # the worker's clock runs 7.25 s ahead


def frames_of(progress: int = 5) -> list[tuple[str, bytes]]:
    """The frames of one conversation (as the client sent and received them)."""
    scratch = CaptureWriter("/dev/null", background=False, compression="none")
    try:
        return session_capture(Path("/dev/null"), progress=progress, writer=scratch, garbage=False)
    finally:
        scratch.close()


def two_sides(
    tmp_path: Path, progress: int = 5, offset: int = OFFSET, client_misses: int = 0
) -> tuple[Path, Path]:
    """Client and worker captures of one conversation; the true time of frame i is T0 + i ms.

    ``client_misses``: the client's capture lacks the last frames of the conversation.
    """
    frames = frames_of(progress)
    paths = tmp_path / f"client{progress}.mcap", tmp_path / f"worker{progress}.mcap"
    for path, role in zip(paths, ("client", "worker"), strict=True):
        if role == "client" and client_misses:
            frames, full = frames[:-client_misses], frames
        w = CaptureWriter(path, background=False, compression="none")
        remote = "worker-3" if role == "client" else "client-7"
        local = "client-7" if role == "client" else "worker-3"
        conn = w.connection(f"{role}-conn", local_peer=local, remote_peer=remote, local_role=role)
        for i, (direction, frame) in enumerate(frames):
            true = T0 + i * MS
            sending = (direction == C2W) == (role == "client")
            t = true if sending else true + TRANSIT
            w.record(conn, direction, frame, t + (offset if role == "worker" else 0))
        w.close()
        if role == "client" and client_misses:
            frames = full
    return paths


def test_merge_shows_each_message_once_with_both_views(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, worker = two_sides(tmp_path)
    assert main(["merge", str(client), str(worker), "--json"]) == 0
    captured = capsys.readouterr()
    rows: list[dict[str, Any]] = [json.loads(line) for line in captured.out.splitlines()]
    one_side = list(CaptureReader([client]).records())
    assert len(rows) == len(one_side)  # each message once
    assert [r["body"] for r in rows] == [r.body for r in one_side]  # in the order they were sent
    assert "worker clock - client clock = +7250.000 ms" in captured.err
    for row in rows:
        assert row["transit_ms"] == pytest.approx(TRANSIT / MS, abs=1e-6)
        sender = "client" if row["direction"] == C2W else "worker"
        assert row["sent_at"]["side"] == sender and row["received_at"]["side"] != sender
    first = rows[0]
    assert first["body"] == "hello" and first["sent_at"]["time_ns"] == T0
    assert first["received_at"]["time_ns"] == T0 + TRANSIT + OFFSET
    ack = rows[1]
    assert ack["body"] == "hello_ack" and ack["answers"]["body"] == "hello"
    assert ack["merged_time_ns"] == T0 + MS  # the worker's send time on the client's clock
    # The text view says the same, one line per message after the header line.
    assert main(["merge", str(worker), str(client)]) == 0  # either order
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# connection client-conn") and "+7250.000 ms" in lines[0]
    assert "matched by handshake" in lines[0]
    assert len(lines) == len(one_side) + 1
    assert "sent " in lines[1] and "(client)" in lines[1] and "+0.300 ms" in lines[1]


def test_a_message_only_one_side_has_is_shown_and_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, worker = two_sides(tmp_path, client_misses=3)
    assert main(["merge", str(client), str(worker)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == len(list(CaptureReader([worker]).records()))
    assert sum("not in client capture" in line for line in lines) == 3
    assert all("not in client capture" in line for line in lines[-3:])


def test_captures_of_different_connections_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, _ = two_sides(tmp_path, progress=5)
    _, other_worker = two_sides(tmp_path, progress=6)
    assert main(["merge", str(client), str(other_worker)]) == 1
    err = capsys.readouterr().err
    assert "cannot merge" in err and "not the same connection" in err
    # Two captures of the same side.
    assert main(["merge", str(client), str(client)]) == 1
    assert "both captures were recorded by the client side" in capsys.readouterr().err
    # A capture that shares no handshake at all.
    lone = tmp_path / "lone.mcap"
    w = CaptureWriter(lone, background=False, compression="none")
    conn = w.connection("x", local_peer="w", remote_peer="c", local_role="worker")
    w.record(conn, C2W, b"\xff\xfe not protobuf", T0)
    w.close()
    assert main(["merge", str(client), str(lone)]) == 1
    assert "share no connection" in capsys.readouterr().err


def test_session_key_is_shared_by_both_ends_of_a_real_webrtc_link(tmp_path: Path) -> None:
    from test_webrtc import link_pair

    async def keys() -> tuple[str, str, str, str]:
        async with link_pair(tmp_path / "a") as (c1, w1):
            one = session_key(c1), session_key(w1)
        async with link_pair(tmp_path / "b") as (c2, w2):
            two = session_key(c2), session_key(w2)
        return (*one, *two)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a_client, a_worker, b_client, b_worker = asyncio.run(keys())
    assert a_client and a_client == a_worker
    assert b_client == b_worker and b_client != a_client
    assert session_key(object()) == ""
