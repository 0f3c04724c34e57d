"""CaptureWriter / RecordingLink: directions, redaction, rotation; failures never hurt a session."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from mcap.reader import make_reader
from test_inspect_support import TOKEN, Clock, session_capture

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.write.recorder import (
    CaptureWriter,
    RecordingLink,
    capture_from_env,
    parse_size,
)
from sleap_rtc.transport.link import memory_link_pair
from sleap_rtc_proto import codec
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import handshake_pb2, progress_pb2


def read_all(path: Path) -> list[tuple[str, dict[str, str], int, bytes]]:
    with open(path, "rb") as f:
        reader = make_reader(f)
        return [
            (ch.topic, dict(ch.metadata), m.log_time, m.data) for _, ch, m in reader.iter_messages()
        ]


def progress_frame(i: int) -> bytes:
    return codec.encode(
        progress_pb2.JobProgress(job_id="j", sequence=i, event=4, metrics={"loss": 0.5}),
        message_id=i,
    )


def test_recording_link_records_both_directions_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "cap.mcap"

    async def scenario() -> list[bytes]:
        client, worker = memory_link_pair()
        writer = CaptureWriter(path)
        link = RecordingLink(
            client,
            writer,
            connection_id="c1",
            local_peer="me",
            remote_peer="w9",
            local_role="client",
        )
        frames = [progress_frame(i) for i in range(1, 6)]
        for frame in frames[:3]:
            await link.send(frame)
        for frame in frames[3:]:
            await worker.send(frame)
            assert await link.recv() == frame
        await link.close()
        assert link.closed
        await writer.aclose()
        return frames

    frames = asyncio.run(scenario())
    rows = read_all(path)
    assert [r[3] for r in rows] == frames
    assert [r[0] for r in rows] == ["/datachannel/client_to_worker"] * 3 + [
        "/datachannel/worker_to_client"
    ] * 2
    meta = rows[0][1]
    assert (
        meta["connection_id"] == "c1"
        and meta["client_peer"] == "me"
        and meta["worker_peer"] == "w9"
    )
    assert meta["local_role"] == "client" and meta["direction"] == "client_to_worker"
    times = [r[2] for r in rows]
    assert times == sorted(times) and times[0] > 1_600_000_000 * 10**9


def test_worker_side_directions(tmp_path: Path) -> None:
    path = tmp_path / "w.mcap"

    async def scenario() -> None:
        client, worker = memory_link_pair()
        writer = CaptureWriter(path, background=False)
        link = writer.wrap(
            worker, connection_id="c2", local_peer="w", remote_peer="c", local_role="worker"
        )
        await link.send(progress_frame(1))
        await client.send(progress_frame(2))
        await link.recv()
        writer.close()

    asyncio.run(scenario())
    rows = read_all(path)
    assert [r[0] for r in rows] == [
        "/datachannel/worker_to_client",
        "/datachannel/client_to_worker",
    ]
    assert rows[0][1]["client_peer"] == "c" and rows[0][1]["worker_peer"] == "w"


def test_file_opens_with_mcap_reader_summary_index_and_protobuf_decoder(tmp_path: Path) -> None:
    decoder = pytest.importorskip(
        "mcap_protobuf.decoder", reason="mcap-protobuf-support not installed"
    )
    path = tmp_path / "s.mcap"
    sent = session_capture(path)
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[decoder.DecoderFactory()])
        summary = reader.get_summary()
        assert summary is not None and summary.statistics is not None
        assert summary.statistics.message_count == len(sent)
        assert summary.chunk_indexes
        schemas = list(summary.schemas.values())
        assert [(s.name, s.encoding) for s in schemas] == [
            ("sleap_rtc_proto.v1.Envelope", "protobuf")
        ]
        encodings = {c.message_encoding for c in summary.channels.values()}
        assert encodings == {"protobuf", fmt.RAW_ENCODING}
        decoded = [
            item.decoded_message.WhichOneof("body")
            for item in reader.iter_decoded_messages(topics=["/datachannel/client_to_worker"])
        ]
    assert decoded[:3] == ["hello", "path_check_request", "job_submit"]


def test_hello_token_redacted_by_default(tmp_path: Path) -> None:
    path = tmp_path / "r.mcap"
    session_capture(path)
    data = path.read_bytes()
    assert TOKEN.encode() not in data
    assert TOKEN.split(".")[2].encode() not in data
    hello = next(r for r in read_all(path) if r[0].endswith("client_to_worker"))
    envelope = codec.decode(hello[3])
    assert envelope.hello.token.startswith("<jwt") and envelope.hello.software == "sleap-rtc 0.1.0"


def test_tokens_kept_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "k.mcap"
    writer = CaptureWriter(path, background=False, redact_tokens=False, compression="none")
    session_capture(path, writer=writer)
    writer.close()
    assert TOKEN.encode() in path.read_bytes()


def test_fragmented_hello_is_redacted_and_other_fragments_kept(tmp_path: Path) -> None:
    path = tmp_path / "f.mcap"
    writer = CaptureWriter(path, background=False, compression="none", clock=Clock())
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    stream = MessageStream(max_frame_bytes=1024)
    _, frames = stream.send(
        handshake_pb2.Hello(token=TOKEN, components={f"k{i}": "v" * 40 for i in range(60)})
    )
    assert len(frames) > 2
    for frame in frames:
        writer.record(conn, fmt.CLIENT_TO_WORKER, frame)
    _, progress = stream.send(progress_pb2.JobProgress(job_id="j" * 3000, sequence=1, event=4))
    for frame in progress:
        writer.record(conn, fmt.WORKER_TO_CLIENT, frame)
    # An incomplete set is never written unchecked.
    _, partial = stream.send(handshake_pb2.Hello(token=TOKEN, software="s" * 3000))
    writer.record(conn, fmt.CLIENT_TO_WORKER, partial[0])
    writer.close()
    data = path.read_bytes()
    assert TOKEN.encode() not in data and TOKEN.split(".")[2].encode() not in data
    rows = read_all(path)
    first = codec.decode(rows[0][3])
    assert first.WhichOneof("body") == "hello" and first.hello.token.startswith("<jwt")
    kept = [r for r in rows if r[0].endswith("worker_to_client")]
    assert [r[3] for r in kept] == progress
    assert rows[-1][0] == fmt.RAW_TOPIC and b"not recorded" in rows[-1][3]


def test_caller_times_ten_minutes_old_keep_a_fragmented_message(tmp_path: Path) -> None:
    """Staleness of a held fragment set is judged on the frames' times, not the wall clock."""
    import time

    path = tmp_path / "old.mcap"
    writer = CaptureWriter(path, background=False, compression="none")  # the real clock
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    stream = MessageStream(max_frame_bytes=1024)
    _, frames = stream.send(progress_pb2.JobProgress(job_id="j" * 3000, sequence=1, event=4))
    assert len(frames) > 2
    old = time.time_ns() - 600 * 10**9
    for i, frame in enumerate(frames):
        writer.record(conn, fmt.WORKER_TO_CLIENT, frame, log_time_ns=old + i * 1000)
    writer.close()
    rows = read_all(path)
    assert [r[3] for r in rows] == frames
    assert all(b"not recorded" not in r[3] for r in rows)


def test_legacy_and_garbage_go_to_the_raw_channel_with_a_header(tmp_path: Path) -> None:
    path = tmp_path / "raw.mcap"
    session_capture(path)
    raw = [r for r in read_all(path) if r[0] == fmt.RAW_TOPIC]
    assert len(raw) == 2
    head, frame = fmt.parse_raw(raw[0][3])
    assert head == {"direction": "worker_to_client", "reason": "legacy text frame"}
    assert frame.startswith(b"JOB_PROGRESS::")
    head, frame = fmt.parse_raw(raw[1][3])
    assert head["direction"] == "client_to_worker" and "not a protobuf Envelope" in head["reason"]
    assert frame == b"\xff\xfe not protobuf \x00"


def test_jwt_in_a_raw_frame_is_scrubbed(tmp_path: Path) -> None:
    path = tmp_path / "j.mcap"
    writer = CaptureWriter(path, background=False, compression="none")
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    writer.record(conn, fmt.CLIENT_TO_WORKER, f"LOGIN::{TOKEN}".encode())
    writer.close()
    assert TOKEN.encode() not in path.read_bytes()
    head, frame = fmt.parse_raw(read_all(path)[0][3])
    assert frame == b"LOGIN::" + fmt.REDACTED_JWT.encode() and head["redacted"] == "jwt"


def test_rotation_at_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "rot.mcap"
    cap = 64 * 1024
    writer = CaptureWriter(path, max_bytes=cap, background=False, compression="none", max_files=100)
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="worker")
    frames = [progress_frame(i) for i in range(1, 6001)]
    for frame in frames:
        writer.record(conn, fmt.WORKER_TO_CLIENT, frame)
    writer.close()
    assert writer.error is None and writer.written == len(frames)
    assert len(writer.paths) > 3
    assert writer.paths[0] == path and writer.paths[1] == tmp_path / "rot.1.mcap"
    got: list[bytes] = []
    for part in writer.paths:
        assert part.stat().st_size <= cap, part
        with open(part, "rb") as f:
            reader = make_reader(f)
            assert reader.get_summary() is not None
            got += [m.data for _, _, m in reader.iter_messages()]
    assert got == frames


def test_rotation_keeps_the_first_part_and_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "ring.mcap"
    writer = CaptureWriter(
        path, max_bytes=64 * 1024, background=False, compression="none", max_files=3
    )
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="worker")
    for i in range(1, 6001):
        writer.record(conn, fmt.WORKER_TO_CLIENT, progress_frame(i))
    writer.close()
    assert len(writer.paths) == 3 and writer.paths[0] == path
    assert sorted(tmp_path.iterdir()) == sorted(writer.paths)


def test_cap_without_rotation_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "stop.mcap"
    writer = CaptureWriter(
        path, max_bytes=64 * 1024, rotate=False, background=False, compression="none"
    )
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="worker")
    with caplog.at_level(logging.WARNING, logger="sleap_rtc.capture"):
        for i in range(1, 4001):
            writer.record(conn, fmt.WORKER_TO_CLIENT, progress_frame(i))
    writer.close()
    assert not writer.active and writer.stop_reason and "size cap" in writer.stop_reason
    assert path.stat().st_size <= 64 * 1024
    assert len([r for r in caplog.records if "stopped" in r.message]) == 1
    with open(path, "rb") as f:
        assert make_reader(f).get_summary() is not None


def test_unwritable_path_gives_an_inactive_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.ERROR, logger="sleap_rtc.capture"):
        writer = CaptureWriter(blocker / "sub" / "c.mcap")
    assert not writer.active and writer.error is not None
    writer.close()

    async def scenario() -> None:
        client, worker = memory_link_pair()
        link = writer.wrap(
            client, connection_id="c", local_peer="a", remote_peer="b", local_role="client"
        )
        await link.send(b"x")
        assert await worker.recv() == b"x"

    asyncio.run(scenario())


@pytest.mark.parametrize("background", [True, False])
def test_write_error_stops_capture_and_the_session_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, background: bool
) -> None:
    path = tmp_path / "err.mcap"

    async def scenario() -> None:
        client, worker = memory_link_pair()
        writer = CaptureWriter(path, background=background, chunk_size=4096)
        link = writer.wrap(
            client, connection_id="c", local_peer="a", remote_peer="b", local_role="client"
        )
        await link.send(progress_frame(1))
        writer.flush()
        # The disk goes away under the writer: every write now fails.
        part = writer._part
        assert part is not None
        part._file.close()
        for i in range(2, 400):
            await link.send(progress_frame(i))
            await worker.recv()
        writer.flush()
        await worker.send(progress_frame(999))
        assert codec.decode(await link.recv()).message_id == 999
        await writer.aclose()
        assert not writer.active and writer.error is not None

    with caplog.at_level(logging.ERROR, logger="sleap_rtc.capture"):
        asyncio.run(scenario())
    assert (
        len([r for r in caplog.records if r.levelno == logging.ERROR and "stopped" in r.message])
        == 1
    )


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "q.mcap", queue_frames=10)
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    frame = progress_frame(1)
    for _ in range(5000):
        writer.record(conn, fmt.CLIENT_TO_WORKER, frame)
    writer.close()
    assert writer.dropped > 0 and writer.written + writer.dropped == 5000


def test_capture_from_env(tmp_path: Path) -> None:
    assert capture_from_env({}) is None
    writer = capture_from_env(
        {"SLEAP_RTC_CAPTURE": str(tmp_path / "e.mcap"), "SLEAP_RTC_CAPTURE_MAX_BYTES": "1M"}
    )
    assert writer is not None and writer.max_bytes == 1024 * 1024 and writer.active
    writer.close()
    assert (tmp_path / "e.mcap").exists()
    blocker = tmp_path / "f"
    blocker.write_text("")
    assert capture_from_env({"SLEAP_RTC_CAPTURE": str(blocker / "x.mcap")}) is None


def test_parse_size() -> None:
    assert (
        parse_size("64M") == 64 * 1024**2
        and parse_size("2g") == 2 * 1024**3
        and parse_size("1000") == 1000
    )
    with pytest.raises(ValueError):
        parse_size("lots")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CaptureWriter(tmp_path / "never.mcap", max_bytes=10)
    assert not (tmp_path / "never.mcap").exists()
    writer = CaptureWriter(tmp_path / "role.mcap", background=False)
    with pytest.raises(ValueError):
        writer.connection("c", local_peer="a", remote_peer="b", local_role="server")
    writer.close()
