"""Encode bodies into Envelope bytes and decode bytes back, with typed errors.

Stateless: message numbering, fragmentation and reassembly of one connection
live in :mod:`sleap_rtc_proto.stream`.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from sleap_rtc_proto.bodies import BODIES
from sleap_rtc_proto.errors import FrameTooLarge, MalformedFrame, MissingBody, UnsupportedVersion
from sleap_rtc_proto.limits import MAX_MESSAGE_BYTES
from sleap_rtc_proto.v1 import envelope_pb2
from sleap_rtc_proto.versions import CURRENT, SUPPORTED, Version

Envelope = envelope_pb2.Envelope

#: Envelope field numbers below this are header fields; from it on, bodies.
FIRST_BODY_FIELD = 10
_MIN_MAJOR, _MAX_MAJOR = SUPPORTED.min.major, SUPPORTED.max.major

#: (message full name, Envelope field number, oneof field name) of every body in the table.
_BODY_TYPES: list[tuple[str, int, str]] = [
    (row.full_name, Envelope.DESCRIPTOR.fields_by_name[row.name].number, row.name) for row in BODIES
]
#: Envelope oneof field name for each body message's full name.
BODY_FIELDS: dict[str, str] = {full_name: name for full_name, _, name in _BODY_TYPES}
#: Body field names, in field-number order.
BODY_NAMES: tuple[str, ...] = tuple(name for _, _, name in sorted(_BODY_TYPES, key=lambda t: t[1]))


@dataclass(frozen=True)
class UnknownBody:
    """A body this code does not know (a newer minor version), kept as raw bytes.

    Attributes:
        field_number: the Envelope field number of the body.
        data: the body's encoded bytes (length-delimited payload), unchanged.
    """

    field_number: int
    data: bytes

    @property
    def name(self) -> str:
        return f"unknown_body_{self.field_number}"


def body_field(body: Message) -> str:
    """The Envelope oneof field name that holds ``body``.

    Raises:
        TypeError: ``body`` is not a body message of this schema.
    """
    try:
        return BODY_FIELDS[body.DESCRIPTOR.full_name]
    except KeyError:
        raise TypeError(f"{type(body).__name__} is not an Envelope body") from None


def make_envelope(
    body: Message,
    *,
    message_id: int,
    correlation_id: int = 0,
    sent_time_unix_nano: int = 0,
    version: Version = CURRENT,
) -> Envelope:
    """Wrap ``body`` in an Envelope (the body is copied)."""
    envelope = Envelope(
        version=version.to_proto(),
        message_id=message_id,
        correlation_id=correlation_id,
        sent_time_unix_nano=sent_time_unix_nano,
    )
    getattr(envelope, body_field(body)).CopyFrom(body)
    return envelope


def encode(
    body: Message,
    *,
    message_id: int,
    correlation_id: int = 0,
    sent_time_unix_nano: int = 0,
    version: Version = CURRENT,
) -> bytes:
    """Encode ``body`` as the bytes of an Envelope.

    Writes the Envelope header and the length-delimited body field directly
    (the bytes ``make_envelope(...).SerializeToString()`` gives, without
    copying the body into an Envelope first).

    >>> from sleap_rtc_proto.v1 import job_pb2
    >>> body = job_pb2.JobControl(job_id="j1", action=job_pb2.CONTROL_ACTION_STOP)
    >>> body_of(decode(encode(body, message_id=1))).job_id
    'j1'

    Raises:
        TypeError: ``body`` is not an Envelope body.
        ValueError: ``message_id`` is not positive, or a header value is out of range.
    """
    if message_id <= 0:
        raise ValueError("message_id must be positive")
    key = _BODY_KEYS.get(body.DESCRIPTOR.full_name)
    if key is None:
        raise TypeError(f"{type(body).__name__} is not an Envelope body")
    header = _version_field(version) + b"\x10" + _varint(message_id)
    if correlation_id:
        header += b"\x18" + _varint(correlation_id)
    if sent_time_unix_nano:
        if not 0 <= sent_time_unix_nano <= _U64:
            raise ValueError(f"sent_time_unix_nano {sent_time_unix_nano} is out of range")
        header += b"\x21" + sent_time_unix_nano.to_bytes(8, "little")
    payload = body.SerializeToString()
    return b"".join((header, key, _varint(len(payload)), payload))


_U64 = 2**64 - 1
_U32 = 2**32 - 1
_SMALL = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a uint64 (ValueError outside 0..2**64-1)."""
    if not 0 <= value <= _U64:
        raise ValueError(f"{value} is out of range for uint64")
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: Tag bytes (field number, wire type 2) of each body, by message full name.
_BODY_KEYS: dict[str, bytes] = {
    full_name: _varint(number << 3 | 2) for full_name, number, _ in _BODY_TYPES
}
_VERSION_FIELDS: dict[Version, bytes] = {}


def _version_field(version: Version) -> bytes:
    """Envelope field 1 (ProtocolVersion) for ``version``, cached."""
    cached = _VERSION_FIELDS.get(version)
    if cached is None:
        major, minor = version
        if not (0 <= major <= _U32 and 0 <= minor <= _U32):
            raise ValueError(f"protocol version {version} is out of range for uint32")
        inner = (b"\x08" + _varint(major) if major else b"") + (
            b"\x10" + _varint(minor) if minor else b""
        )
        cached = b"\x0a" + _varint(len(inner)) + inner
        if len(_VERSION_FIELDS) < 64:
            _VERSION_FIELDS[version] = cached
    return cached


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Decode and check one Envelope.

    Checks size, protobuf well-formedness, the header (version, message id) and
    that a body (known or unknown) is present. Does not reassemble fragments.

    Raises:
        FrameTooLarge: ``data`` is longer than ``max_bytes``.
        MalformedFrame: not an Envelope, or a required header field is unset.
        MissingBody: an Envelope with no body.
        UnsupportedVersion: a major version this code does not speak.
    """
    if len(data) > max_bytes:
        raise FrameTooLarge(
            f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes",
            details={"size_bytes": str(len(data)), "limit_bytes": str(max_bytes)},
        )
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MalformedFrame(f"not a protobuf Envelope ({len(data)} bytes): {exc}") from None
    major = envelope.version.major  # 0 when the field is absent
    if major == 0:
        raise MalformedFrame("Envelope has no protocol version (field 1)")
    if not _MIN_MAJOR <= major <= _MAX_MAJOR:
        raise UnsupportedVersion(
            f"protocol major version {major} is not supported; this side speaks {SUPPORTED}",
            details={"remote": str(Version.from_proto(envelope.version)), "local": str(SUPPORTED)},
        )
    if envelope.message_id == 0:
        raise MalformedFrame("Envelope has no message_id (field 2)")
    if envelope.WhichOneof("body") is None and _unknown_body(envelope) is None:
        raise MissingBody("Envelope has no body")
    return envelope


def body_of(envelope: Envelope) -> Message | UnknownBody:
    """The envelope's body message, or :class:`UnknownBody` for a newer body."""
    name = envelope.WhichOneof("body")
    if name is not None:
        body: Message = getattr(envelope, name)
        return body
    unknown = _unknown_body(envelope)
    if unknown is None:
        raise MissingBody("Envelope has no body")
    return unknown


def body_name(envelope: Envelope) -> str:
    """The body's field name, e.g. ``"job_submit"`` or ``"unknown_body_45"``."""
    name = envelope.WhichOneof("body")
    if name is not None:
        return name
    unknown = _unknown_body(envelope)
    return unknown.name if unknown is not None else "none"


def _unknown_body(envelope: Envelope) -> UnknownBody | None:
    unknown = UnknownFieldSet(envelope)
    for i in range(len(unknown)):
        field = unknown[i]
        if field.field_number >= FIRST_BODY_FIELD and isinstance(field.data, bytes):
            return UnknownBody(field.field_number, field.data)
    return None
