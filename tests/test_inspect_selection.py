"""What `-j`, `filter` and the Envelope header views keep (issue 14).

- ``filter -j`` / ``cat -j`` keep JobProgressBatch messages whose items belong to
  the job; ``info`` lists jobs seen only in batches.
- ``filter`` keeps the capture's own metadata record.
- A newer schema never shows less than an older one: an Envelope header field
  added in a newer minor is shown by name (new schema) or raw (old schema), in
  ``--json`` and in text ``cat``.

Captures come from the real recorder and MessageStream; the `mcap` library reads
``filter``'s output independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcap.reader import make_reader
from test_inspect_support import W2C, Clock, session_capture

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.write.recorder import CaptureWriter
from sleap_rtc.cli.inspect_cmd import main
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import progress_pb2


def _with_batches(path: Path) -> None:
    """A real conversation for job-1, then a batch of job-2 progress and a mixed batch."""
    writer = CaptureWriter(path, background=False, clock=Clock(), compression="zstd")
    session_capture(path, progress=3, writer=writer, legacy=False, garbage=False)
    conn = writer.connection(
        "conn-1", local_peer="client-7", remote_peer="worker-3", local_role="client"
    )
    worker = MessageStream()  # a second worker stream: its ids restart, -j does not care
    only_two = progress_pb2.JobProgressBatch(
        items=[
            progress_pb2.JobProgress(
                job_id="job-2", sequence=i, event=progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN
            )
            for i in (1, 2)
        ]
    )
    mixed = progress_pb2.JobProgressBatch(
        items=[
            progress_pb2.JobProgress(job_id="job-1", sequence=50),
            progress_pb2.JobProgress(job_id="job-3", sequence=1),
        ]
    )
    for body in (only_two, mixed):
        for frame in worker.send(body)[1]:
            writer.record(conn, W2C, frame)
    writer.close()


def _json_rows(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cat_j_keeps_batches_of_the_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.mcap"
    _with_batches(path)
    rows = _json_rows(capsys, ["cat", "--json", "-j", "job-2", str(path)])
    assert [r["body"] for r in rows] == ["job_progress_batch"]
    rows = _json_rows(capsys, ["cat", "--json", "-j", "job-1", str(path)])
    assert rows[-1]["body"] == "job_progress_batch"
    assert "job_submit" in [r["body"] for r in rows]
    capsys.readouterr()
    assert main(["cat", "-j", "job-3", str(path)]) == 0
    assert "job_progress_batch" in capsys.readouterr().out


def test_filter_j_keeps_batches_and_the_capture_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.mcap"
    _with_batches(path)
    out = tmp_path / "job2.mcap"
    assert main(["filter", str(path), "-o", str(out), "-j", "job-2"]) == 0
    assert "kept 1 of" in capsys.readouterr().out
    with open(out, "rb") as f:
        reader = make_reader(f)
        metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        messages = list(reader.iter_messages())
    assert len(messages) == 1
    own = metadata[fmt.METADATA_NAME]
    assert own["format"] == fmt.FORMAT_VERSION and own["tokens"] == "redacted"


def test_info_lists_jobs_seen_only_in_batches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.mcap"
    _with_batches(path)
    capsys.readouterr()
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"job-2", "job-3"} <= set(info["jobs"])
    assert main(["info", str(path)]) == 0
    assert "job-3" in capsys.readouterr().out


# -- an Envelope header field from a newer minor -------------------------------

TRACE = b"\x2a\x08trace-42"  # field 5 (a newer minor's trace_id), length-delimited


def _newer_schema() -> bytes:
    """Today's FileDescriptorSet with ``string trace_id = 5`` added to Envelope."""
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(fmt.envelope_file_descriptor_set())
    for file in fds.file:
        for message in file.message_type:
            if file.package == "sleap_rtc_proto.v1" and message.name == "Envelope":
                message.field.add(
                    name="trace_id",
                    number=5,
                    type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                    json_name="traceId",
                )
    return fds.SerializeToString()


def _frames_with_trace() -> list[bytes]:
    stream = MessageStream()
    out = []
    for body in (
        progress_pb2.JobProgress(job_id="job-1", sequence=1),
        progress_pb2.JobLog(job_id="job-1", sequence=2, lines=["x"]),
    ):
        (frame,) = stream.send(body)[1]
        out.append(frame + TRACE)
    return out


def _old_schema_capture(path: Path) -> None:
    writer = CaptureWriter(path, background=False, clock=Clock())
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    for frame in _frames_with_trace():
        writer.record(conn, W2C, frame)
    writer.close()


def _new_schema_capture(path: Path) -> None:
    from mcap.writer import Writer

    with open(path, "wb") as f:
        w = Writer(f)
        w.start(profile="", library="a newer sleap-rtc")
        sid = w.register_schema(fmt.SCHEMA_NAME, "protobuf", _newer_schema())
        cid = w.register_channel(
            fmt.topic_for(W2C), "protobuf", sid, {"direction": W2C, "connection_id": "c"}
        )
        for i, frame in enumerate(_frames_with_trace()):
            t = 1_800_000_000_000_000_000 + i
            w.add_message(cid, t, frame, t, i)
        w.finish()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_newer_header_field_by_name_with_the_newer_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str
) -> None:
    path = tmp_path / "new.mcap"
    _new_schema_capture(path)
    rows = _json_rows(capsys, ["cat", "--json", "--jobs", jobs, str(path)])
    assert [r["envelope"] for r in rows] == [{"trace_id": "trace-42"}] * 2
    assert all("envelope_unknown" not in r for r in rows)
    assert main(["cat", str(path)]) == 0
    assert capsys.readouterr().out.count("trace-42") == 2


def test_newer_header_field_raw_with_the_older_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.mcap"
    _old_schema_capture(path)
    rows = _json_rows(capsys, ["cat", "--json", str(path)])
    assert [r["body"] for r in rows] == ["job_progress", "job_log"]
    for row in rows:
        (entry,) = row["envelope_unknown"]  # type: ignore[misc]
        assert entry["field"] == 5 and bytes.fromhex(entry["hex"]) == b"trace-42"
    assert main(["cat", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.count(b"trace-42".hex()) == 2 and "envelope=" in text


def test_filter_by_body_keeps_the_capture_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "s.mcap"
    session_capture(src, progress=5)
    out = tmp_path / "submit.mcap"
    assert main(["filter", str(src), "-o", str(out), "-b", "job_submit"]) == 0
    with open(out, "rb") as f:
        metadata = {m.name: dict(m.metadata) for m in make_reader(f).iter_metadata()}
    assert metadata[fmt.METADATA_NAME]["tokens"] == "redacted"
    assert metadata["sleap_rtc.filter"]["kept"] == "1"


def test_cat_names_the_request_each_answer_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "s.mcap"
    session_capture(src, progress=3)  # the fake clock: 1 ms per frame
    capsys.readouterr()
    assert main(["cat", "--width", "0", "-b", "job_accepted,hello_ack", str(src)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(answers hello #1 in 1.000 ms)" in lines[0]
    assert "(answers job_submit #3 in 1.000 ms)" in lines[1]


def test_c_is_direction_aware(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "s.mcap"
    session_capture(src, progress=3)

    def bodies_of(spec: str) -> list[str]:
        rows = _json_rows(capsys, ["cat", "--json", "-c", spec, str(src)])
        return [f"{r['direction'][:1]}:{r['body']}" for r in rows]

    assert bodies_of("c2w:2") == ["c:path_check_request", "w:path_check_result"]
    assert bodies_of("w2c:2") == ["w:path_check_result"]
    assert bodies_of("2") == ["c:path_check_request", "w:path_check_result"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["cat", "-c", "sideways:2", str(src)])
    assert "not a direction" in capsys.readouterr().err
