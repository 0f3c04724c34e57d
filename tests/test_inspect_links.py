"""cat --json links each answer to its request (and each request to its answer), like text cat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_inspect_support import C2W, W2C, Clock, session_capture

from sleap_rtc.capture.read.headers import headers
from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.capture.write.recorder import CaptureWriter
from sleap_rtc.cli.inspect_cmd import main
from sleap_rtc.inspect.pairing import NOT_REQUESTS, Pairing
from sleap_rtc_proto import codec
from sleap_rtc_proto.v1 import job_pb2


def capture_with_unanswered(path: Path) -> Path:
    """The session capture plus a JobAttach (message id 900) nothing answers."""
    w = CaptureWriter(path, background=False, clock=Clock(), compression="none", chunk_size=4096)
    session_capture(path, progress=30, big_result=True, writer=w)
    conn = w.connection(
        "conn-1", local_peer="client-7", remote_peer="worker-3", local_role="client"
    )
    w.record(conn, C2W, codec.encode(job_pb2.JobAttach(job_id="job-1"), message_id=900))
    w.close()
    return path


def rows(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["cat", "--json", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def by_body(found: list[dict[str, Any]], body: str) -> dict[str, Any]:
    return next(r for r in found if r["body"] == body)


def test_answers_carry_their_request_and_requests_their_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = capture_with_unanswered(tmp_path / "s.mcap")
    got = rows(capsys, str(path))
    request, result = by_body(got, "path_check_request"), by_body(got, "path_check_result")
    assert result["answers"]["direction"] == "client_to_worker"
    assert result["answers"]["message_id"] == request["message_id"] == result["correlation_id"]
    assert result["answers"]["body"] == "path_check_request"
    # The recorder's fake clock ticks 1 ms a frame; the result is fragmented (several frames).
    latency = (result["time_ns"] - request["time_ns"]) / 1e6
    assert result["answers"]["latency_ms"] == pytest.approx(latency) and latency > 0
    assert request["answered_by"] == {
        "direction": "worker_to_client",
        "message_id": result["message_id"],
        "body": "path_check_result",
        "latency_ms": result["answers"]["latency_ms"],
    }
    assert by_body(got, "hello_ack")["answers"]["body"] == "hello"
    assert by_body(got, "job_accepted")["answers"]["body"] == "job_submit"
    assert by_body(got, "error")["answers"]["body"] == "job_attach"
    unanswered = [r for r in got if r["body"] == "job_attach" and r["message_id"] == 900]
    assert unanswered and unanswered[0]["answered_by"] is None
    progress = [r for r in got if r["body"] == "job_progress" and r["kind"] == "protobuf"]
    assert progress and not any("answers" in r or "answered_by" in r for r in progress)


def test_every_path_gives_the_same_links(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = capture_with_unanswered(tmp_path / "s.mcap")
    fast = rows(capsys, str(path), "--jobs", "1")
    parallel = rows(capsys, str(path), "--jobs", "2")
    assert fast == parallel
    selected = rows(capsys, str(path), "-b", "path_check_request,path_check_result,job_attach")
    assert selected == [
        r for r in fast if r["body"] in {"path_check_request", "path_check_result", "job_attach"}
    ]


def test_header_pass_pairs_like_the_records(tmp_path: Path) -> None:
    """The fast header pass and the records give the same pairing, message for message."""
    path = capture_with_unanswered(tmp_path / "s.mcap")
    reader = CaptureReader([path])
    pairing = Pairing()
    from_records = []
    for rec in reader.records():
        if rec.kind == "protobuf":
            answer = pairing.see(rec)
            from_records.append((rec.direction, rec.message_id, rec.body, answer))
    unanswered = pairing.unanswered()
    for skip in ((), NOT_REQUESTS):
        pairing = Pairing()
        from_headers = [
            (h.direction, h.message_id, h.body, pairing.step(*h[1:], h.time_ns))
            for h in headers(reader.paths, reader.kinds, skip=skip)
        ]
        if not skip:
            assert from_headers == from_records
        else:  # only what pairing needs: far fewer messages, the same answers
            assert len(from_headers) < len(from_records) / 2
        answers = [item for item in from_headers if item[3] is not None]
        assert answers == [item for item in from_records if item[3] is not None]
        assert len(answers) == 5  # hello, path check, submit, stop, attach
        assert pairing.unanswered() == unanswered == ["job_attach"]


def _lines(path_list: list[Path], *, hook: bool) -> tuple[list[str], int]:
    from sleap_rtc.inspect.pairing import Linker, json_links

    reader = CaptureReader(path_list)
    if hook:
        linker = Linker(reader)
        lines = list(_flat(reader.json_batches(1, hook=linker)))
        return lines, linker.lookahead.blocks_read
    links = json_links(headers(reader.paths, reader.kinds, skip=NOT_REQUESTS))
    return list(_flat(reader.json_batches(1, links))), 0


def _flat(batches: Any) -> Any:
    for batch in batches:
        for item in batch:
            yield from item.split("\n")


def _conversation(
    path: Path, seed: int, *, max_bytes: int = 1 << 30, rotate: bool = False
) -> list[Path]:
    """Requests all through a long capture: answered at once, late, never; some fragmented."""
    import random

    from sleap_rtc_proto.stream import MessageStream
    from sleap_rtc_proto.v1 import paths_pb2, progress_pb2

    rng = random.Random(seed)
    w = CaptureWriter(
        path,
        background=False,
        clock=Clock(),
        compression="zstd",
        chunk_size=4096,
        max_bytes=max_bytes,
        rotate=rotate,
        max_files=100,
    )
    conns = [
        w.connection(f"conn-{i}", local_peer="c", remote_peer="w", local_role="client")
        for i in range(2)
    ]
    streams = [(MessageStream(), MessageStream(max_frame_bytes=2048)) for _ in conns]
    waiting: list[tuple[int, int, int]] = []  # (connection, request id, answer when)
    for step in range(3000):
        i = rng.randrange(2)
        client, worker = streams[i]
        if rng.random() < 0.02:
            mid, frames = client.send(paths_pb2.PathCheckRequest(labels_path=f"/d/{step}.slp"))
            for f in frames:
                w.record(conns[i], C2W, f)
            r = rng.random()
            if r < 0.7:  # answered soon, or much later; else never
                waiting.append(
                    (i, mid, step + (rng.randrange(3) if r < 0.5 else rng.randrange(2000)))
                )
        for item in [x for x in waiting if x[2] <= step]:
            waiting.remove(item)
            j, mid, _ = item
            videos = [
                paths_pb2.VideoCheck(index=k, original_path=f"/v/{k}" * 20)
                for k in range(rng.choice([1, 40]))
            ]  # 40: fragmented
            for f in streams[j][1].send(
                paths_pb2.PathCheckResult(videos=videos), correlation_id=mid
            )[1]:
                w.record(conns[j], W2C, f)
        for f in worker.send(progress_pb2.JobProgress(job_id="j", sequence=step + 1))[1]:
            w.record(conns[i], W2C, f)
    w.close()
    return w.paths


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reading_ahead_gives_the_links_of_the_first_pass(tmp_path: Path, seed: int) -> None:
    paths = _conversation(tmp_path / "long.mcap", seed)
    ahead, blocks = _lines(paths, hook=True)
    first_pass, _ = _lines(paths, hook=False)
    assert ahead == first_pass
    rows = [json.loads(x) for x in ahead]
    assert any(r.get("answered_by") is None and r["body"] == "path_check_request" for r in rows)
    assert any(r.get("answered_by") for r in rows)
    assert any(r.get("answers") and r.get("fragments") for r in rows)
    chunks = sum(1 for p in paths for _ in _chunk_offsets(p))
    assert 0 < blocks <= chunks  # each block read ahead at most once


def test_reading_ahead_follows_into_the_next_part(tmp_path: Path) -> None:
    paths = _conversation(tmp_path / "rot.mcap", 4, max_bytes=64 * 1024, rotate=True)
    assert len(paths) > 2
    ahead, _ = _lines(paths, hook=True)
    first_pass, _ = _lines(paths, hook=False)
    assert ahead == first_pass


def test_prompt_answers_need_little_reading_ahead(tmp_path: Path) -> None:
    """Requests at the start and the end of a long capture, each answered at once: only the
    blocks around them are read ahead, not the whole capture again."""
    path = tmp_path / "s.mcap"
    w = CaptureWriter(path, background=False, clock=Clock(), compression="zstd", chunk_size=4096)
    session_capture(path, progress=5000, writer=w)
    w.close()
    chunks = len(_chunk_offsets(path))
    lines, blocks = _lines([path], hook=True)
    assert lines == _lines([path], hook=False)[0]
    assert chunks > 40 and blocks <= 6, (blocks, chunks)


def _chunk_offsets(path: Path) -> list[int]:
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None
    return [c.chunk_start_offset for c in summary.chunk_indexes]


def test_a_newer_peers_request_is_linked_the_same_in_every_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body this program does not know (field 1000, no correlation id) may be a newer
    peer's request: its answer links to it in one process as with --jobs 2."""
    path = tmp_path / "u.mcap"
    w = CaptureWriter(path, background=False, clock=Clock(), compression="none", chunk_size=4096)
    conn = w.connection("conn-1", local_peer="c", remote_peer="w", local_role="client")
    # Envelope: version {major: 1}, message_id 50, then unknown body field 1000 (empty).
    w.record(conn, C2W, b"\x0a\x02\x08\x01" + b"\x10\x32" + b"\xc2\x3e\x00")
    w.record(conn, W2C, codec.encode(job_pb2.JobAttach(job_id="x"), message_id=7,
                                     correlation_id=50))
    w.close()
    one, two = rows(capsys, str(path), "--jobs", "1"), rows(capsys, str(path), "--jobs", "2")
    assert one == two
    assert one[0]["answered_by"]["message_id"] == 7, one[0]
