"""The wire -> JSON fast path gives json_format's output, or nothing (then the general path)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.read.decode import load_schema
from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.capture.tojson.jsonlines import line_maker
from sleap_rtc.capture.tojson.wirejson import compile_wire_json
from sleap_rtc_proto import codec

GOLDEN = Path(__file__).parent / "golden" / "v1.0"
ENVELOPE = "sleap_rtc_proto.v1.Envelope"
F = descriptor_pb2.FieldDescriptorProto


def _all_types_class() -> Any:
    """A proto3 message with every scalar type, repeated, packed, maps, a oneof, nesting."""
    file = descriptor_pb2.FileDescriptorProto(name="t/all.proto", package="t", syntax="proto3")
    enum = file.enum_type.add(name="Color")
    for name, number in (("COLOR_UNSPECIFIED", 0), ("RED", 1), ("NEG", -3)):
        enum.value.add(name=name, number=number)
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="s", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg = file.message_type.add(name="All")
    scalars = [
        ("i32", F.TYPE_INT32),
        ("i64", F.TYPE_INT64),
        ("u32", F.TYPE_UINT32),
        ("u64", F.TYPE_UINT64),
        ("s32", F.TYPE_SINT32),
        ("s64", F.TYPE_SINT64),
        ("f32", F.TYPE_FIXED32),
        ("f64", F.TYPE_FIXED64),
        ("sf32", F.TYPE_SFIXED32),
        ("sf64", F.TYPE_SFIXED64),
        ("fl", F.TYPE_FLOAT),
        ("db", F.TYPE_DOUBLE),
        ("b", F.TYPE_BOOL),
        ("st", F.TYPE_STRING),
        ("by", F.TYPE_BYTES),
    ]
    number = 1
    for name, kind in scalars:
        msg.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
        msg.field.add(name="r" + name, number=number + 100, type=kind, label=F.LABEL_REPEATED)
        number += 1
    msg.field.add(
        name="color", number=40, type=F.TYPE_ENUM, type_name=".t.Color", label=F.LABEL_OPTIONAL
    )
    msg.field.add(
        name="colors", number=41, type=F.TYPE_ENUM, type_name=".t.Color", label=F.LABEL_REPEATED
    )
    msg.field.add(
        name="inner", number=42, type=F.TYPE_MESSAGE, type_name=".t.Inner", label=F.LABEL_OPTIONAL
    )
    msg.field.add(
        name="inners", number=43, type=F.TYPE_MESSAGE, type_name=".t.Inner", label=F.LABEL_REPEATED
    )
    msg.oneof_decl.add(name="choice")
    msg.field.add(
        name="pick_s", number=45, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, oneof_index=0
    )
    msg.field.add(
        name="pick_i", number=46, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL, oneof_index=0
    )
    opt = msg.field.add(name="maybe", number=44, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    opt.proto3_optional = True
    opt.oneof_index = 1
    msg.oneof_decl.add(name="_maybe")
    for name, number, key, value, value_type in (
        ("m_sd", 47, F.TYPE_STRING, F.TYPE_DOUBLE, ""),
        ("m_ii", 48, F.TYPE_INT64, F.TYPE_SINT32, ""),
        ("m_bm", 49, F.TYPE_BOOL, F.TYPE_MESSAGE, ".t.Inner"),
        ("m_ue", 50, F.TYPE_UINT32, F.TYPE_ENUM, ".t.Color"),
    ):
        entry_name = name.title().replace("_", "") + "Entry"
        entry = msg.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key, label=F.LABEL_OPTIONAL)
        value_field = entry.field.add(name="value", number=2, type=value, label=F.LABEL_OPTIONAL)
        if value_type:
            value_field.type_name = value_type
        msg.field.add(
            name=name,
            number=number,
            type=F.TYPE_MESSAGE,
            type_name=f".t.All.{entry_name}",
            label=F.LABEL_REPEATED,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.All"))


ALL = _all_types_class()
_i32 = st.integers(-(2**31), 2**31 - 1)
_u32 = st.integers(0, 2**32 - 1)
_i64 = st.integers(-(2**63), 2**63 - 1)
_u64 = st.integers(0, 2**64 - 1)
_f32 = st.floats(width=32, allow_nan=True)
_values: dict[str, Any] = {
    "i32": _i32,
    "i64": _i64,
    "u32": _u32,
    "u64": _u64,
    "s32": _i32,
    "s64": _i64,
    "f32": _u32,
    "f64": _u64,
    "sf32": _i32,
    "sf64": _i64,
    "fl": _f32,
    "db": st.floats(allow_nan=True),
    "b": st.booleans(),
    "st": st.text(max_size=8),
    "by": st.binary(max_size=8),
}


#: Decoders compiled once for all examples of the property tests below: generated code
#: that depends on the message type only, and compiling it anew per example was most of
#: their time (the example-based tests still compile theirs from scratch).
_DECODERS: dict[str, Any] = {}


def _wire(message: Any) -> str | None:
    convert = compile_wire_json(message.DESCRIPTOR, _DECODERS)
    data = message.SerializeToString()
    return convert(data, 0, len(data))


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to itself (json_format gives the string "NaN" anyway)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=3 * settings.default.max_examples, deadline=None)
@given(data=st.data())
def test_wire_json_equals_json_format_on_every_type(data: st.DataObject) -> None:
    message = ALL()
    for name, strategy in _values.items():
        if data.draw(st.booleans()):
            setattr(message, name, data.draw(strategy))
        getattr(message, "r" + name).extend(data.draw(st.lists(strategy, max_size=3)))
    message.color = data.draw(st.sampled_from([0, 1, -3]))
    message.colors.extend(data.draw(st.lists(st.sampled_from([0, 1, -3]), max_size=3)))
    if data.draw(st.booleans()):
        message.inner.s = data.draw(st.text(max_size=4))
    for text in data.draw(st.lists(st.text(max_size=4), max_size=2)):
        message.inners.add(s=text)
    if data.draw(st.booleans()):
        message.maybe = data.draw(_i32)
    pick = data.draw(st.sampled_from(["", "s", "i"]))
    if pick == "s":
        message.pick_s = data.draw(st.text(max_size=4))
    elif pick == "i":
        message.pick_i = data.draw(_u32)
    for key in data.draw(st.lists(st.text(max_size=4), max_size=3)):
        message.m_sd[key] = data.draw(st.floats(allow_nan=True))
    for key in data.draw(st.lists(_i64, max_size=3)):
        message.m_ii[key] = data.draw(_i32)
    for key in data.draw(st.lists(st.booleans(), max_size=2)):
        message.m_bm[key].s = data.draw(st.text(max_size=3))
    for key in data.draw(st.lists(_u32, max_size=2)):
        message.m_ue[key] = data.draw(st.sampled_from([0, 1, -3]))
    got = _wire(message)
    assert got is not None, "a canonical message must take the fast path"
    expected = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert _same(json.loads(got), expected)


@settings(max_examples=4 * settings.default.max_examples, deadline=None)
@given(data=st.data())
def test_wire_json_on_damaged_bytes_is_json_format_or_nothing(data: st.DataObject) -> None:
    message = ALL(i32=-5, u64=2**40, st="héllo", by=b"\x00\xff", fl=1.5, color=1, maybe=0)
    message.ri32.extend([1, -1, 300])
    message.m_sd["loss"] = 0.25
    message.m_bm[True].s = "x"
    message.inner.s = "in"
    blob = bytearray(message.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "swap"]))
        if action == "flip" and blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        elif action == "cut" and blob:
            del blob[data.draw(st.integers(0, len(blob) - 1)) :]
        elif action == "insert":
            at = data.draw(st.integers(0, len(blob)))
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "swap" and len(blob) > 4:
            cut = data.draw(st.integers(1, len(blob) - 1))
            blob = blob[cut:] + blob[:cut]
    raw = bytes(blob)
    convert = compile_wire_json(ALL.DESCRIPTOR, _DECODERS)
    try:
        got = convert(raw, 0, len(raw))
    except (IndexError, ValueError, UnicodeDecodeError, struct.error):
        got = None  # what json_block catches: the general path
    if got is None:
        return
    parsed = ALL.FromString(raw)  # the fast path only answers for bytes upb reads
    expected = json_format.MessageToDict(parsed, preserving_proto_field_name=True)
    assert _same(json.loads(got), expected)


def test_out_of_order_unknown_and_repeated_singular_fields_take_the_general_path() -> None:
    convert = compile_wire_json(ALL.DESCRIPTOR, {})
    one = ALL(i32=1).SerializeToString()
    two = ALL(u32=2).SerializeToString()
    assert convert(one + two, 0, len(one + two)) is not None
    assert convert(two + one, 0, len(two + one)) is None  # out of order
    assert convert(one + one, 0, len(one + one)) is None  # a singular field twice
    unknown = b"\xf8\x3e\x01"  # field 1000, varint
    assert convert(one + unknown, 0, len(one + unknown)) is None
    bad_enum = b"\xc0\x02\x07"  # color = 7, not a known value
    assert convert(bad_enum, 0, 3) is None
    both = ALL(pick_s="a").SerializeToString() + ALL(pick_i=3).SerializeToString()
    assert convert(both, 0, len(both)) is None  # two members of one oneof
    twice = ALL(m_sd={"a": 1.0}).SerializeToString() * 2
    assert convert(twice, 0, len(twice)) is None  # a map key twice: the last one wins


def test_unpacked_repeated_numbers_equal_the_packed_ones() -> None:
    convert = compile_wire_json(ALL.DESCRIPTOR, {})
    key = bytes([(101 << 3) & 0x7F | 0x80, 101 >> 4])  # field 101 (ri32), varint, two bytes
    unpacked = key + b"\x01" + key + b"\x96\x01"
    packed = ALL(ri32=[1, 150]).SerializeToString()
    assert packed != unpacked
    assert ALL.FromString(unpacked) == ALL.FromString(packed)
    assert convert(unpacked, 0, len(unpacked)) == convert(packed, 0, len(packed)) is not None


def test_golden_envelopes_take_the_fast_path_and_equal_the_record_line() -> None:
    schema = load_schema(ENVELOPE, "protobuf", fmt.envelope_file_descriptor_set())
    make = line_maker(schema, fmt.CLIENT_TO_WORKER, "c1")
    assert make is not None
    taken = 0
    for path in sorted(GOLDEN.glob("*.binpb")):
        data = path.read_bytes()
        line = make(data, 0, len(data), 1_700_000_000_123_456_789)
        envelope: Any = schema.message_class.FromString(data)
        body = envelope.WhichOneof("body")
        if body is None or body == "fragment":
            assert line is None
            continue
        assert line is not None, path.name
        taken += 1
        inner = getattr(envelope, body)
        expected = json_format.MessageToDict(inner, preserving_proto_field_name=True)
        parsed = json.loads(line)
        assert parsed["message"] == expected
        assert parsed["body"] == body and parsed["size"] == len(data)
        assert parsed["message_id"] == envelope.message_id
        assert parsed["time"] == "2023-11-14T22:13:20.123456Z"
    assert taken > 10


def test_json_lines_equal_record_lines_on_a_session(tmp_path: Path) -> None:
    from sleap_rtc.capture.write.recorder import CaptureWriter
    from sleap_rtc_proto.v1 import progress_pb2

    path = tmp_path / "s.mcap"
    writer = CaptureWriter(path, background=False, chunk_size=4096)
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="worker")
    for i in range(1, 400):
        progress = progress_pb2.JobProgress(
            job_id=f"job-{i % 3}", sequence=i * 1000, epoch=i, metrics={"loss": 1 / i, "lr": 0.1}
        )
        frame = codec.encode(progress, message_id=i * 997, sent_time_unix_nano=i)
        writer.record(conn, fmt.WORKER_TO_CLIENT, frame, 1_700_000_000_000_000_000 + i * 1001)
    writer.record(conn, fmt.WORKER_TO_CLIENT, b"JOB_FAILED::{}")
    writer.close()
    fast = list(CaptureReader([path]).json_lines())
    slow = [r.json_line() for r in CaptureReader([path]).records()]
    assert len(fast) == len(slow) == 400
    assert [json.loads(x) for x in fast] == [json.loads(x) for x in slow]


def test_mcap_library_reads_every_message_of_a_many_chunk_capture(tmp_path: Path) -> None:
    from mcap.reader import NonSeekingReader, make_reader

    from sleap_rtc.capture.write.recorder import CaptureWriter
    from sleap_rtc_proto.v1 import progress_pb2

    path = tmp_path / "m.mcap"
    writer = CaptureWriter(path, background=False, chunk_size=4096)
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    times = []
    for i in range(1, 2000):
        frame = codec.encode(progress_pb2.JobProgress(job_id="j", sequence=i), message_id=i)
        t = 1_700_000_000_000_000_000 + i * 1000
        times.append(t)
        writer.record(conn, fmt.CLIENT_TO_WORKER if i % 2 else fmt.WORKER_TO_CLIENT, frame, t)
    writer.close()
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None and summary.statistics is not None
        assert summary.statistics.message_count == len(times)
        assert summary.statistics.chunk_count == len(summary.chunk_indexes) > 5
        assert all(ci.message_index_offsets for ci in summary.chunk_indexes)
        indexed = [m.log_time for _, _, m in reader.iter_messages(log_time_order=True)]
        assert indexed == times
        assert sum(1 for _ in reader.iter_metadata()) == 1
    with open(path, "rb") as f:
        streamed = [
            m.log_time for _, _, m in NonSeekingReader(f, validate_crcs=True).iter_messages()
        ]
    assert streamed == times


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_each_compression_reads_back(tmp_path: Path, compression: str) -> None:
    from mcap.reader import make_reader

    from sleap_rtc.capture.write.recorder import CaptureWriter
    from sleap_rtc_proto.v1 import progress_pb2

    path = tmp_path / f"{compression}.mcap"
    writer = CaptureWriter(path, background=False, chunk_size=4096, compression=compression)
    conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
    for i in range(1, 300):
        writer.record(
            conn,
            fmt.CLIENT_TO_WORKER,
            codec.encode(progress_pb2.JobProgress(job_id="j"), message_id=i),
            1_700_000_000_000_000_000 + i,
        )
    writer.close()
    with open(path, "rb") as f:
        assert sum(1 for _ in make_reader(f).iter_messages()) == 299
    reader = CaptureReader([path])
    assert len(list(reader.json_lines())) == 299 and not reader.problems
