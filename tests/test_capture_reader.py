"""CaptureReader: the schema inside the capture, fragments, raw frames, damaged files."""

from __future__ import annotations

import functools
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcap.writer import CompressionType, Writer
from test_inspect_support import session_capture

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.read.decode import SchemaProblem, load_schema
from sleap_rtc.capture.read.mcapio import MAGIC, CaptureError
from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.capture.read.record import Record
from sleap_rtc.capture.tojson.convert import compile_json, to_dict
from sleap_rtc_proto import codec
from sleap_rtc_proto.v1 import envelope_pb2, job_pb2, spec_pb2

GOLDEN = Path(__file__).parent / "golden" / "v1.0"
ENVELOPE = "sleap_rtc_proto.v1.Envelope"


def write_mcap(
    path: Path,
    frames: list[bytes],
    *,
    schema: bytes | None,
    encoding: str = "protobuf",
    topic: str = "/datachannel/client_to_worker",
    message_encoding: str = "protobuf",
) -> None:
    with open(path, "wb") as f:
        writer = Writer(f, compression=CompressionType.NONE)
        writer.start()
        sid = writer.register_schema(ENVELOPE, encoding, schema) if schema is not None else 0
        cid = writer.register_channel(
            topic,
            message_encoding,
            sid,
            {"connection_id": "x", "direction": fmt.direction_of_topic(topic)},
        )
        for i, frame in enumerate(frames):
            writer.add_message(cid, 1_800_000_000_000_000_000 + i * 1000, frame, 0)
        writer.finish()


def records(*paths: Path, **kw: Any) -> tuple[list[Record], CaptureReader]:
    reader = CaptureReader(list(paths), **kw)
    return list(reader.records()), reader


def today_fds() -> descriptor_pb2.FileDescriptorSet:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(fmt.envelope_file_descriptor_set())
    return fds


def file_of(fds: descriptor_pb2.FileDescriptorSet, name: str) -> descriptor_pb2.FileDescriptorProto:
    return next(f for f in fds.file if f.name == f"sleap_rtc_proto/v1/{name}.proto")


def message_of(
    file: descriptor_pb2.FileDescriptorProto, name: str
) -> descriptor_pb2.DescriptorProto:
    return next(m for m in file.message_type if m.name == name)


F = descriptor_pb2.FieldDescriptorProto


def future_fds() -> descriptor_pb2.FileDescriptorSet:
    """v1.1 as it might come: TrainJobSpec.priority_note (40) and a JobPriority body (50)."""
    fds = today_fds()
    spec = message_of(file_of(fds, "spec"), "TrainJobSpec")
    spec.field.add(
        name="priority_note",
        number=40,
        type=F.TYPE_STRING,
        label=F.LABEL_OPTIONAL,
        json_name="priorityNote",
    )
    env_file = file_of(fds, "envelope")
    prio = env_file.message_type.add(name="JobPriority")
    prio.field.add(
        name="job_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="jobId"
    )
    prio.field.add(
        name="level", number=2, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL, json_name="level"
    )
    envelope = message_of(env_file, "Envelope")
    envelope.field.add(
        name="job_priority",
        number=50,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_OPTIONAL,
        type_name=".sleap_rtc_proto.v1.JobPriority",
        oneof_index=0,
        json_name="jobPriority",
    )
    return fds


def older_fds() -> descriptor_pb2.FileDescriptorSet:
    """A v1.0 predecessor without JobStatus (body 39) and TrainJobSpec.resume_ckpt_path (11)."""
    fds = today_fds()
    spec = message_of(file_of(fds, "spec"), "TrainJobSpec")
    keep = [f for f in spec.field if f.number != 11]
    del spec.field[:]
    spec.field.extend(keep)
    assert spec.oneof_decl[-1].name == "_resume_ckpt_path"
    del spec.oneof_decl[-1]
    envelope = message_of(file_of(fds, "envelope"), "Envelope")
    keep = [f for f in envelope.field if f.number != 39]
    del envelope.field[:]
    envelope.field.extend(keep)
    return fds


def future_frames() -> list[bytes]:
    pool = descriptor_pool.DescriptorPool()
    for file in future_fds().file:
        pool.Add(file)
    env_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(ENVELOPE))
    first: Any = env_cls(message_id=1)
    first.version.major = 1
    first.version.minor = 1
    first.job_submit.job_id = "job-9"
    first.job_submit.spec.labels_path = "/data/l.slp"
    first.job_submit.spec.priority_note = "urgent"
    second: Any = env_cls(message_id=2)
    second.version.major = 1
    second.version.minor = 1
    second.job_priority.job_id = "job-9"
    second.job_priority.level = 3
    return [first.SerializeToString(), second.SerializeToString()]


def test_future_minor_decodes_with_the_schema_in_the_capture(tmp_path: Path) -> None:
    path = tmp_path / "future.mcap"
    write_mcap(path, future_frames(), schema=future_fds().SerializeToString())
    recs, reader = records(path)
    assert not reader.problems
    submit, prio = recs
    assert submit.body == "job_submit" and submit.version == "1.1"
    assert submit.message() == {
        "job_id": "job-9",
        "spec": {"labels_path": "/data/l.slp", "priority_note": "urgent"},
    }
    assert prio.body == "job_priority" and prio.job_id == "job-9"
    assert prio.message() == {"job_id": "job-9", "level": 3}
    assert json.loads(prio.json_line())["message"] == {"job_id": "job-9", "level": 3}
    # Today's compiled classes would not know either addition: the capture's schema did the work.
    today = codec.decode(future_frames()[1])
    assert codec.body_name(today) == "unknown_body_50"


def test_without_the_new_schema_the_additions_are_shown_raw_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "future-today-schema.mcap"
    write_mcap(path, future_frames(), schema=fmt.envelope_file_descriptor_set())
    submit, prio = records(path)[0]
    spec = submit.message()["spec"]  # type: ignore[index]
    assert spec["labels_path"] == "/data/l.slp"
    unknown = spec["@unknown"]
    assert unknown[0]["field"] == 40 and unknown[0]["wire_type"] == "len"
    assert bytes.fromhex(unknown[0]["hex"]) == b"urgent"
    assert prio.body == "unknown_body_50" and prio.kind == "protobuf"
    entry = prio.message()["@unknown"][0]  # type: ignore[index]
    assert (
        entry["field"] == 50
        and entry["fields"][0]["text"] == "job-9"
        and entry["fields"][1]["value"] == 3
    )
    line = json.loads(prio.json_line())
    assert line["body"] == "unknown_body_50" and line["message"]["@unknown"][0]["field"] == 50


def test_todays_capture_decoded_with_an_older_schema(tmp_path: Path) -> None:
    frames = [
        codec.encode(
            job_pb2.JobSubmit(
                job_id="j",
                spec=spec_pb2.TrainJobSpec(
                    labels_path="/l.slp", resume_ckpt_path="/ckpt/best.ckpt"
                ),
            ),
            message_id=1,
        ),
        codec.encode(job_pb2.JobStatus(job_id="j", state=job_pb2.JOB_STATE_RUNNING), message_id=2),
    ]
    path = tmp_path / "older.mcap"
    write_mcap(path, frames, schema=older_fds().SerializeToString())
    (submit, status), reader = records(path)
    assert not reader.problems
    spec = submit.message()["spec"]  # type: ignore[index]
    assert "resume_ckpt_path" not in spec
    assert spec["@unknown"][0]["field"] == 11
    assert bytes.fromhex(spec["@unknown"][0]["hex"]) == b"/ckpt/best.ckpt"
    assert status.body == "unknown_body_39"
    assert status.message()["@unknown"][0]["fields"][0] == {  # type: ignore[index]
        "field": 1,
        "wire_type": "len",
        "hex": b"j".hex(),
        "text": "j",
    }


def test_a_whole_session_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    sent = session_capture(path, progress=5)
    recs, reader = records(path)
    assert not reader.problems and reader.files[0].complete
    assert len(recs) == len(sent)
    bodies = [r.body for r in recs]
    assert bodies[:6] == [
        "hello",
        "hello_ack",
        "path_check_request",
        "path_check_result",
        "job_submit",
        "job_accepted",
    ]
    hello = recs[0]
    assert hello.direction == fmt.CLIENT_TO_WORKER and hello.connection == "conn-1"
    assert hello.message()["token"].startswith("<jwt")  # type: ignore[index]
    assert recs[1].correlation_id == hello.message_id
    assert [r.job_id for r in recs if r.body == "job_progress" and r.kind == "protobuf"] == [
        "job-1"
    ] * 5
    legacy = next(r for r in recs if r.kind == "legacy")
    assert legacy.body == "job_progress" and legacy.legacy_type == "JOB_PROGRESS"
    assert legacy.message()["payload"]["logs"] == {"val/loss": 0.5}  # type: ignore[index]
    raw = recs[-1]
    assert raw.kind == "raw" and "not a protobuf Envelope" in (raw.reason or "")
    assert raw.raw == b"\xff\xfe not protobuf \x00"
    assert json.loads(raw.json_line())["hex"] == raw.raw.hex()


def test_fragments_are_shown_reassembled(tmp_path: Path) -> None:
    path = tmp_path / "frag.mcap"
    session_capture(path, progress=2, big_result=True)
    recs, _ = records(path)
    result = next(r for r in recs if r.body == "path_check_result")
    assert result.fragments > 2 and result.size > 4096
    assert len(result.message()["videos"]) == 400  # type: ignore[index]
    assert result.correlation_id == 2
    assert json.loads(result.json_line())["fragments"] == result.fragments
    pieces, _ = records(path, reassemble=False)
    assert sum(1 for r in pieces if r.body == "fragment") == result.fragments
    assert not any(r.body == "path_check_result" for r in pieces)


def test_incomplete_fragments_are_reported(tmp_path: Path) -> None:
    full = tmp_path / "frag.mcap"
    sent = session_capture(full, progress=0, big_result=True, legacy=False, garbage=False)
    frags = [f for _, f in sent if codec.body_name(codec.decode(f)) == "fragment"]
    path = tmp_path / "partial.mcap"
    write_mcap(
        path,
        frags[:-1],
        schema=fmt.envelope_file_descriptor_set(),
        topic="/datachannel/worker_to_client",
    )
    recs, _ = records(path)
    assert len(recs) == 1 and recs[0].kind == "raw"
    assert f"{len(frags) - 1} of {len(frags)} fragments" in (recs[0].reason or "")


def test_undecodable_frame_on_the_protobuf_channel_is_shown_raw(tmp_path: Path) -> None:
    path = tmp_path / "bad.mcap"
    good = codec.encode(job_pb2.JobAttach(job_id="a"), message_id=1)
    write_mcap(path, [b"\x0a\xff\xff\xff", good], schema=fmt.envelope_file_descriptor_set())
    (bad, ok), _ = records(path)
    assert bad.kind == "raw" and "not a sleap_rtc_proto.v1.Envelope" in (bad.reason or "")
    assert json.loads(bad.json_line())["hex"] == "0affffff"
    assert ok.body == "job_attach"


def test_capture_without_schema(tmp_path: Path) -> None:
    path = tmp_path / "noschema.mcap"
    frame = codec.encode(job_pb2.JobAttach(job_id="a"), message_id=1)
    write_mcap(path, [frame], schema=None)
    (rec,), reader = records(path)
    assert rec.kind == "raw" and "no schema" in (rec.reason or "")
    assert any("no schema" in str(p) for p in reader.problems) and not reader.stopped_early
    fields = json.loads(rec.json_line())["protobuf_fields"]
    assert {f["field"] for f in fields} >= {1, 2, 38}
    (rec,), reader = records(path, fallback_schema=True)
    assert rec.body == "job_attach" and rec.message() == {"job_id": "a"}


@pytest.mark.parametrize(
    ("encoding", "schema"), [("jsonschema", b"{}"), ("protobuf", b"\xff\xff"), ("", b"")]
)
def test_unusable_schemas_give_a_message(tmp_path: Path, encoding: str, schema: bytes) -> None:
    path = tmp_path / "wrong.mcap"
    write_mcap(
        path,
        [codec.encode(job_pb2.JobAttach(job_id="a"), message_id=1)],
        schema=schema,
        encoding=encoding,
    )
    (rec,), reader = records(path)
    assert rec.kind == "raw" and rec.reason
    assert reader.problems and not reader.stopped_early


def test_wrong_message_encoding(tmp_path: Path) -> None:
    path = tmp_path / "cdr.mcap"
    write_mcap(
        path, [b"\x00\x01"], schema=fmt.envelope_file_descriptor_set(), message_encoding="cdr"
    )
    (rec,), _ = records(path)
    assert rec.kind == "raw" and "cdr" in (rec.reason or "")


def test_truncated_capture_gives_a_partial_result(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    writer_path = tmp_path / "big.mcap"
    from sleap_rtc.capture.write.recorder import CaptureWriter

    writer = CaptureWriter(writer_path, background=False, chunk_size=4096, compression="none")
    session_capture(writer_path, progress=400, writer=writer)
    writer.close()
    data = writer_path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    recs, reader = records(path)
    assert 10 < len(recs) < 400
    assert reader.stopped_early
    fatal = [p for p in reader.problems if p.fatal]
    assert len(fatal) == 1 and "truncated" in fatal[0].message and fatal[0].offset > 0
    assert "stopped here" in str(fatal[0])


def test_corrupt_chunk_is_skipped_and_reported(tmp_path: Path) -> None:
    from sleap_rtc.capture.write.recorder import CaptureWriter

    path = tmp_path / "c.mcap"
    writer = CaptureWriter(path, background=False, chunk_size=4096, compression="zstd")
    session_capture(path, progress=400, writer=writer)
    writer.close()
    data = bytearray(path.read_bytes())
    # The middle of the chunk record around the file's middle (not of a message
    # index beside it, which a linear reader may ignore).
    pos, chunk = 8, None
    while pos < len(data) - 9:
        opcode, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        if opcode == 0x06 and (chunk is None or pos <= len(data) // 2):
            chunk = (pos, length)
        pos += 9 + length
    assert chunk is not None
    middle = chunk[0] + 9 + chunk[1] // 2
    data[middle : middle + 8] = b"\x00" * 8
    path.write_bytes(bytes(data))
    recs, reader = records(path)
    assert reader.problems
    assert len(recs) > 0


@pytest.mark.parametrize(
    "content", [b"", b"\x89MCA", b"hello world, not a capture\n\x00\x01", b"\x89PNG\r\n\x1a\n"]
)
def test_not_a_capture_raises_the_typed_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.mcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError):
        list(CaptureReader([path]).records())


def test_missing_file() -> None:
    with pytest.raises(CaptureError, match="cannot open"):
        CaptureReader(["/no/such/capture.mcap"])
    with pytest.raises(CaptureError):
        CaptureReader([])


def test_record_length_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "huge.mcap"
    path.write_bytes(MAGIC + b"\x06" + (2**62).to_bytes(8, "little") + b"\x00" * 32)
    recs, reader = records(path)
    assert recs == [] and reader.stopped_early
    assert "claims" in reader.problems[0].message


def read_everything(data: bytes, tmp: Path) -> None:
    path = tmp / "fuzz.mcap"
    path.write_bytes(data)
    try:
        reader = CaptureReader([path])
        for rec in reader.records():
            rec.json_line()
            rec.to_json()
    except CaptureError:
        pass


@settings(
    max_examples=3 * settings.default.max_examples // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=2048), with_magic=st.booleans())
def test_random_bytes_only_raise_the_typed_error(
    tmp_path: Path, data: bytes, with_magic: bool
) -> None:
    read_everything((MAGIC + data) if with_magic else data, tmp_path)


_VALID: list[bytes] = []


def _valid_capture(tmp: Path) -> bytes:
    if not _VALID:
        path = tmp / "valid.mcap"
        session_capture(path, progress=30, big_result=True)
        _VALID.append(path.read_bytes())
    return _VALID[0]


@settings(
    max_examples=3 * settings.default.max_examples // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_damaged_real_captures_never_raise(tmp_path: Path, data: st.DataObject) -> None:
    blob = bytearray(_valid_capture(tmp_path))
    cut = data.draw(st.integers(0, len(blob)))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=8)
    )
    for pos, value in flips:
        blob[pos] = value
    read_everything(bytes(blob[:cut] if data.draw(st.booleans()) else blob), tmp_path)


def golden_envelopes() -> list[envelope_pb2.Envelope]:
    return [codec.decode(p.read_bytes()) for p in sorted(GOLDEN.glob("*.binpb"))]


def test_converters_match_json_format_on_golden_messages() -> None:
    schema = load_schema(ENVELOPE, "protobuf", fmt.envelope_file_descriptor_set())
    envelopes = golden_envelopes()
    assert len(envelopes) > 10
    for env in envelopes:
        dynamic = schema.message_class.FromString(env.SerializeToString())
        expected = json_format.MessageToDict(dynamic, preserving_proto_field_name=True)
        assert to_dict(dynamic) == expected
        assert schema.converter(dynamic.DESCRIPTOR)(dynamic) == expected
        assert json.loads(compile_json(dynamic.DESCRIPTOR, {})(dynamic)) == expected


@functools.cache
def _envelope_schema() -> Any:
    return load_schema(ENVELOPE, "protobuf", fmt.envelope_file_descriptor_set())


#: Converters compiled once for every example of test_fast_json_equals_json_format: they
#: are generated code that depends on the message type only, not on the values, and
#: compiling them anew per example was most of the test's time (the golden-message test
#: above still compiles them from scratch).
_DICTS: dict[str, Any] = {}
_JSONS: dict[str, Any] = {}


@settings(max_examples=2 * settings.default.max_examples, deadline=None)
@given(
    loss=st.floats(allow_nan=True, allow_infinity=True),
    epoch=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    text=st.text(max_size=20),
    seq=st.integers(0, 2**64 - 1),
    flag=st.booleans(),
    lr=st.one_of(st.none(), st.floats(allow_nan=True)),
)
def test_fast_json_equals_json_format(
    loss: float, epoch: int | None, text: str, seq: int, flag: bool, lr: float | None
) -> None:
    schema = _envelope_schema()
    env: Any = schema.message_class(message_id=1)
    env.version.major = 1
    env.job_progress.job_id = text
    env.job_progress.sequence = seq
    env.job_progress.metrics[text] = loss
    if epoch is not None:
        env.job_progress.epoch = epoch
    sub: Any = schema.message_class(message_id=2)
    sub.job_submit.spec.config_content = text
    sub.job_submit.spec.path_mappings[text] = text
    if lr is not None:
        sub.job_submit.spec.learning_rate = lr
    ack: Any = schema.message_class(message_id=3)
    ack.job_accepted.duplicate = flag
    ack.job_accepted.warnings.extend([text, text])
    for message in (env, sub, ack):
        expected = json_format.MessageToDict(message, preserving_proto_field_name=True)
        assert to_dict(message, _DICTS) == expected
        assert json.loads(compile_json(message.DESCRIPTOR, _JSONS)(message)) == expected


def test_load_schema_errors() -> None:
    with pytest.raises(SchemaProblem, match="encoding"):
        load_schema(ENVELOPE, "ros2msg", b"")
    with pytest.raises(SchemaProblem, match="not found"):
        load_schema("no.such.Type", "protobuf", fmt.envelope_file_descriptor_set())
    fds = today_fds()
    fds.file.pop(0)
    with pytest.raises(SchemaProblem, match="missing"):
        load_schema(ENVELOPE, "protobuf", fds.SerializeToString())


def test_json_line_equals_to_json(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    session_capture(path, progress=10, big_result=True)
    for rec in records(path)[0]:
        assert json.loads(rec.json_line()) == json.loads(json.dumps(rec.to_json()))


def test_reads_a_stream_of_rotated_parts(tmp_path: Path) -> None:
    from sleap_rtc.capture.write.recorder import CaptureWriter

    writer = CaptureWriter(
        tmp_path / "r.mcap", max_bytes=64 * 1024, background=False, max_files=50, compression="none"
    )
    sent = session_capture(tmp_path / "r.mcap", progress=1500, big_result=True, writer=writer)
    writer.close()
    assert len(writer.paths) > 1
    recs, reader = records(*writer.paths)
    assert not reader.problems
    frags = sum(
        1
        for _, f in sent
        if f and f[:1] == b"\x0a" and codec.body_name(codec.decode(f)) == "fragment"
    )
    assert len(recs) == len(sent) - frags + 1
    assert io.StringIO  # keep the import used


def test_parallel_json_lines_equal_the_sequential_ones(tmp_path: Path) -> None:
    from sleap_rtc.capture.write.recorder import CaptureWriter

    path = tmp_path / "p.mcap"
    writer = CaptureWriter(path, background=False, chunk_size=4096)
    session_capture(path, progress=600, big_result=True, writer=writer)
    writer.close()
    sequential = list(CaptureReader([path]).json_lines())
    reader = CaptureReader([path])
    parallel = list(reader.json_lines(jobs=2))
    assert parallel == sequential and not reader.problems
    assert any('"fragments":' in line for line in parallel)
    assert any('"kind":"legacy"' in line for line in parallel)
