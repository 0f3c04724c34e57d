"""Codec: encode/decode round trips, typed errors on bad input, fuzzing with hypothesis."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor as _d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleap_rtc_proto.codec import (
    BODY_NAMES,
    Envelope,
    UnknownBody,
    body_field,
    body_name,
    body_of,
    decode,
    encode,
    make_envelope,
)
from sleap_rtc_proto.errors import (
    FrameTooLarge,
    MalformedFrame,
    MissingBody,
    ProtocolError,
    UnsupportedVersion,
)
from sleap_rtc_proto.limits import MAX_FRAME_BYTES
from sleap_rtc_proto.v1 import error_pb2, job_pb2, progress_pb2, spec_pb2, version_pb2
from sleap_rtc_proto.versions import SUPPORTED, Version

FD = _d.FieldDescriptor
U32, U64 = 2**32 - 1, 2**64 - 1
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FD.TYPE_STRING: st.text(max_size=12),
    FD.TYPE_BYTES: st.binary(max_size=12),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_UINT32: st.integers(0, U32),
    FD.TYPE_UINT64: st.integers(0, U64),
    FD.TYPE_FIXED64: st.integers(0, U64),
    FD.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FD.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
    FD.TYPE_DOUBLE: st.floats(allow_nan=False),
}


def _value(field: _d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FD.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == FD.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    return _SCALARS[field.type]


def messages(descriptor: _d.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any valid message of ``descriptor``'s type (schema-driven, so new fields are covered)."""
    cls = message_factory.GetMessageClass(descriptor)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            continue  # a real oneof (Envelope.body): chosen by envelopes()
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields
            optional[field.name] = st.dictionaries(
                _value(key, depth), _value(value, depth), max_size=3
            )
        elif field.is_repeated:
            optional[field.name] = st.lists(_value(field, depth), max_size=2 if depth else 3)
        elif field.type == FD.TYPE_MESSAGE and depth > 3:
            continue
        else:
            optional[field.name] = _value(field, depth)

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            target = getattr(msg, name)
            if isinstance(value, dict):
                target.update(value)
            elif isinstance(value, list):
                if field.type == FD.TYPE_MESSAGE:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif isinstance(value, Message):
                target.CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional=optional).map(build)


BODY_DESCRIPTORS = {
    f.name: f.message_type for f in Envelope.DESCRIPTOR.oneofs_by_name["body"].fields
}


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    name = draw(st.sampled_from(BODY_NAMES))
    body = draw(messages(BODY_DESCRIPTORS[name]))
    return make_envelope(
        body,
        message_id=draw(st.integers(1, U64)),
        correlation_id=draw(st.integers(0, U64)),
        sent_time_unix_nano=draw(st.integers(0, U64)),
        version=Version(1, draw(st.integers(0, U32))),
    )


def _decode_or_protocol_error(data: bytes) -> Envelope | None:
    try:
        return decode(data)
    except ProtocolError as exc:
        assert exc.message and str(exc) == exc.message
        assert exc.to_message().code != error_pb2.ERROR_CODE_UNSPECIFIED
        return None


# -- hypothesis ------------------------------------------------------------------------------


@settings(
    max_examples=4 * settings.default.max_examples, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_protocol_errors(data: bytes) -> None:
    _decode_or_protocol_error(data)


@settings(
    max_examples=2 * settings.default.max_examples, suppress_health_check=[HealthCheck.too_slow]
)
@given(envelopes(), st.data())
def test_mutated_valid_frames_only_raise_protocol_errors(
    env: Envelope, data: st.DataObject
) -> None:
    raw = bytearray(env.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _decode_or_protocol_error(bytes(raw))
    _decode_or_protocol_error(bytes(raw[:cut]))


@settings(
    max_examples=3 * settings.default.max_examples, suppress_health_check=[HealthCheck.too_slow]
)
@given(envelopes())
def test_generated_valid_envelopes_round_trip(env: Envelope) -> None:
    data = env.SerializeToString()
    decoded = decode(data)
    assert decoded == env
    assert decoded.SerializeToString(deterministic=True) == env.SerializeToString(
        deterministic=True
    )
    assert body_name(decoded) == env.WhichOneof("body")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(messages(job_pb2.JobSubmit.DESCRIPTOR), st.integers(1, U64), st.integers(0, U64))
def test_encode_then_body_of_returns_the_body(body: Message, message_id: int, corr: int) -> None:
    env = decode(encode(body, message_id=message_id, correlation_id=corr))
    assert (env.message_id, env.correlation_id) == (message_id, corr)
    assert body_of(env) == body


# -- typed errors ----------------------------------------------------------------------------


def _control() -> job_pb2.JobControl:
    return job_pb2.JobControl(job_id="j1", action=job_pb2.CONTROL_ACTION_STOP)


def test_truncated_frames_are_malformed() -> None:
    data = encode(
        job_pb2.JobSubmit(job_id="j", spec=spec_pb2.TrainJobSpec(labels_path="/a.slp")),
        message_id=3,
    )
    for cut in range(1, len(data)):
        try:
            decode(data[:cut])
        except ProtocolError as exc:
            assert isinstance(exc, MalformedFrame)
        # Some prefixes are themselves complete envelopes (field boundaries).


def test_truncated_body_names_the_problem() -> None:
    data = encode(_control(), message_id=1)
    with pytest.raises(MalformedFrame, match="not a protobuf Envelope"):
        decode(data[:-1])


def test_empty_bytes_are_malformed() -> None:
    with pytest.raises(MalformedFrame, match="no protocol version"):
        decode(b"")


def test_wrong_major_version() -> None:
    data = encode(_control(), message_id=1, version=Version(2, 0))
    with pytest.raises(UnsupportedVersion) as info:
        decode(data)
    assert "major version 2" in info.value.message and str(SUPPORTED) in info.value.message
    assert info.value.details == {"remote": "2.0", "local": str(SUPPORTED)}
    assert info.value.to_message().code == error_pb2.ERROR_CODE_UNSUPPORTED_VERSION


def test_newer_minor_version_is_accepted() -> None:
    env = decode(encode(_control(), message_id=1, version=Version(1, 7)))
    assert Version.from_proto(env.version) == Version(1, 7)


def test_missing_version_or_message_id() -> None:
    env = Envelope(message_id=1, job_control=_control())
    with pytest.raises(MalformedFrame, match="version"):
        decode(env.SerializeToString())
    env = Envelope(version=version_pb2.ProtocolVersion(major=1), job_control=_control())
    with pytest.raises(MalformedFrame, match="message_id"):
        decode(env.SerializeToString())


def test_envelope_with_no_body() -> None:
    env = Envelope(version=version_pb2.ProtocolVersion(major=1), message_id=5)
    with pytest.raises(MissingBody, match="no body") as info:
        decode(env.SerializeToString())
    assert info.value.to_message().code == error_pb2.ERROR_CODE_MALFORMED
    with pytest.raises(MissingBody):
        body_of(env)
    assert body_name(env) == "none"


def test_unknown_varint_field_is_not_a_body() -> None:
    env = Envelope(version=version_pb2.ProtocolVersion(major=1), message_id=5)
    data = env.SerializeToString() + b"\x98\x06\x01"  # field 99, varint 1
    with pytest.raises(MissingBody):
        decode(data)


def test_too_large() -> None:
    data = encode(progress_pb2.JobLog(job_id="j", lines=["x" * 1000]), message_id=1)
    decode(data, max_bytes=len(data))
    with pytest.raises(FrameTooLarge) as info:
        decode(data, max_bytes=len(data) - 1)
    assert info.value.details["limit_bytes"] == str(len(data) - 1)
    assert info.value.to_message().code == error_pb2.ERROR_CODE_TOO_LARGE


def test_unknown_body_is_kept_as_bytes() -> None:
    payload = b"\n\x03abc"
    data = encode(_control(), message_id=9)
    env = Envelope()
    env.ParseFromString(data)
    env.ClearField("job_control")
    raw = env.SerializeToString() + b"\x9a\x06" + bytes([len(payload)]) + payload  # field 99
    decoded = decode(raw)
    body = body_of(decoded)
    assert body == UnknownBody(99, payload)
    assert isinstance(body, UnknownBody) and body.name == "unknown_body_99"
    assert body_name(decoded) == "unknown_body_99"
    assert decoded.SerializeToString() == raw


def test_body_field_and_encode_argument_checks() -> None:
    assert body_field(_control()) == "job_control"
    with pytest.raises(TypeError, match="not an Envelope body"):
        body_field(spec_pb2.TrainJobSpec())
    with pytest.raises(ValueError, match="message_id"):
        encode(_control(), message_id=0)


def test_every_body_round_trips_through_encode() -> None:
    for name, descriptor in BODY_DESCRIPTORS.items():
        body = message_factory.GetMessageClass(descriptor)()
        env = decode(encode(body, message_id=1, sent_time_unix_nano=123))
        assert body_name(env) == name
        assert body_of(env) == body
    assert MAX_FRAME_BYTES == 262_144


@settings(
    max_examples=2 * settings.default.max_examples, suppress_health_check=[HealthCheck.too_slow]
)
@given(envelopes())
def test_encode_writes_the_same_envelope_as_protobuf(env: Envelope) -> None:
    body = body_of(env)
    assert isinstance(body, Message)
    data = encode(
        body,
        message_id=env.message_id,
        correlation_id=env.correlation_id,
        sent_time_unix_nano=env.sent_time_unix_nano,
        version=Version.from_proto(env.version),
    )
    assert Envelope.FromString(data) == env
    # Byte for byte: the body is the envelope's own sub-message, so maps iterate alike.
    assert data == env.SerializeToString()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"message_id": 2**64},
        {"message_id": 1, "correlation_id": 2**64},
        {"message_id": 1, "correlation_id": -1},
        {"message_id": 1, "sent_time_unix_nano": 2**64},
        {"message_id": 1, "sent_time_unix_nano": -5},
        {"message_id": 1, "version": Version(2**32, 0)},
    ],
)
def test_encode_rejects_out_of_range_headers(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode(_control(), **kwargs)
