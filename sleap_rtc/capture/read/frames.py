"""How a captured frame becomes a :class:`Record`: per channel, per frame.

A channel is read one of three ways: protobuf (decoded with the capture's own
schema), raw (the recorder's raw channel: legacy text or undecodable bytes,
behind a JSON header), or bad (no schema, wrong encoding: frames shown raw
with the reason).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.read.decode import FIRST_BODY_FIELD, LoadedSchema, SchemaProblem, load_schema
from sleap_rtc.capture.read.legacy import looks_legacy, parse_frame
from sleap_rtc.capture.read.mcapio import RawMessage
from sleap_rtc.capture.read.mcaprecords import ChannelRecord, SchemaRecord
from sleap_rtc.capture.read.rawproto import unknown_field_set
from sleap_rtc.capture.read.record import Record
from sleap_rtc_proto.bodies import JOB_EVENTS
from sleap_rtc_proto.errors import ProtocolError
from sleap_rtc_proto.stream import Reassembler

__all__ = [
    "Channel",
    "Fragments",
    "decode_frame",
    "fallback_schema",
    "make_channel",
    "raw_record",
]


@dataclass
class Channel:
    """How to read the messages of one MCAP channel."""

    record: ChannelRecord
    kind: str  # "protobuf", "raw", or "bad"
    direction: str
    connection: str
    schema: LoadedSchema | None = None
    schema_record: SchemaRecord | None = None
    problem: str | None = None


def fallback_schema() -> SchemaRecord:
    """This program's own schema, for ``--fallback-schema``."""
    return SchemaRecord(0, fmt.SCHEMA_NAME, "protobuf", fmt.envelope_file_descriptor_set())


def make_channel(
    record: ChannelRecord, schemas: dict[int, SchemaRecord], fallback: bool
) -> tuple[Channel, str | None]:
    """How to read one channel, and the problem to report about it (if any)."""
    meta = record.metadata
    direction = meta.get("direction") or fmt.direction_of_topic(record.topic)
    ch = Channel(record, "bad", direction, meta.get("connection_id", ""))
    if record.message_encoding == fmt.RAW_ENCODING:
        ch.kind = "raw"
        return ch, None
    if record.message_encoding != fmt.PROTOBUF_ENCODING:
        ch.problem = (
            f"channel {record.topic!r} has message encoding "
            f"{record.message_encoding!r}, not protobuf"
        )
        return ch, ch.problem
    note = None
    schema_record = schemas.get(record.schema_id) if record.schema_id else None
    if schema_record is None:
        if not fallback:
            ch.problem = (
                f"channel {record.topic!r} has no schema in the capture; frames shown raw "
                "(--fallback-schema decodes them with this program's schema)"
            )
            return ch, ch.problem
        schema_record = fallback_schema()
        note = (
            f"channel {record.topic!r} has no schema; decoded with this "
            "program's own schema (--fallback-schema)"
        )
    try:
        ch.schema = load_schema(schema_record.name, schema_record.encoding, schema_record.data)
    except SchemaProblem as exc:
        ch.problem = str(exc)
        return ch, ch.problem
    ch.schema_record = schema_record
    ch.kind = "protobuf"
    return ch, note


def decode_frame(
    msg: RawMessage, ch: Channel, schema: LoadedSchema, frames: list[Any] | None
) -> Record:
    data = msg[4]
    try:
        env: Any = schema.message_class.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return Record(
            msg[2],
            ch.direction,
            ch.connection,
            "raw",
            "raw",
            len(data),
            reason=f"not a {schema.name}: {exc}",
            raw=data,
            channel=ch.record,
            frames=frames,
        )
    body = env.WhichOneof("body")
    if body is None:
        body = "none"
        for f in unknown_field_set(env):
            if f.field_number >= FIRST_BODY_FIELD and f.wire_type == 2:
                body = f"unknown_body_{f.field_number}"
                break
    job_id = None
    if body in schema.job_id_bodies:
        if schema.job_id_bodies[body]:
            job_id = getattr(env, body).job_id or None
    elif body != "none" and not body.startswith("unknown_body_"):
        inner = getattr(env, body)
        if schema.has_job_id(body, inner):
            job_id = inner.job_id or None
    job_ids: tuple[str, ...] = ()
    if job_id is None and body in JOB_EVENTS:
        job_ids = item_job_ids(getattr(env, body))
    version = env.version
    return Record(
        msg[2],
        ch.direction,
        ch.connection,
        "protobuf",
        body,
        len(data),
        message_id=env.message_id,
        correlation_id=env.correlation_id,
        job_id=job_id,
        job_ids=job_ids,
        version=f"{version.major}.{version.minor}",
        sent_time_ns=env.sent_time_unix_nano,
        reason="Envelope has no body" if body == "none" else None,
        envelope=env,
        schema=schema,
        channel=ch.record,
        frames=frames,
    )


def item_job_ids(message: Any) -> tuple[str, ...]:
    """The job ids of a job event's items (a JobProgressBatch's JobProgress), in order."""
    seen: dict[str, None] = {}
    for fd, value in message.ListFields():
        if fd.message_type is None or not fd.is_repeated:
            continue
        job = fd.message_type.fields_by_name.get("job_id")
        if job is None or job.type != job.TYPE_STRING:
            continue
        for item in value:
            if item.job_id:
                seen[item.job_id] = None
    return tuple(seen)


def raw_record(msg: RawMessage, ch: Channel, frames: list[Any] | None) -> Record:
    try:
        head, frame = fmt.parse_raw(msg[4])
    except ValueError as exc:
        return Record(
            msg[2],
            ch.direction,
            ch.connection,
            "raw",
            "raw",
            len(msg[4]),
            reason=f"raw record without a valid header: {exc}",
            raw=msg[4],
            channel=ch.record,
            frames=frames,
        )
    direction = head.get("direction", ch.direction)
    reason = head.get("reason", "")
    if looks_legacy(frame):
        parsed = parse_frame(frame.decode("utf-8", "replace"))
        return Record(
            msg[2],
            direction,
            ch.connection,
            "legacy",
            parsed["body"],
            len(frame),
            job_id=parsed["job_id"],
            legacy_type=parsed["type"],
            message=parsed["message"],
            raw=frame,
            reason=None if reason == "legacy text frame" else reason,
            channel=ch.record,
            frames=frames,
        )
    return Record(
        msg[2],
        direction,
        ch.connection,
        "raw",
        "raw",
        len(frame),
        reason=reason or "raw frame",
        raw=frame,
        channel=ch.record,
        frames=frames,
    )


#: Fragmented messages kept pending per connection and direction before the oldest
#: is given up (a capture may hold more in flight than a live peer allows).
MAX_PENDING_FRAGMENTS = 64


@dataclass
class _Pending:
    first_time: int
    frames: list[Any]


class Fragments:
    """Fragment reassembly of one reading (all the files of a capture).

    The protocol's own :class:`~sleap_rtc_proto.stream.Reassembler` does the
    work, one per connection and direction (message ids are numbered per
    direction), with the protocol's message size cap; what it refuses
    (inconsistent, duplicated or out-of-range pieces) becomes a raw record with
    its reason, and sets that never complete are reported at the end.
    """

    def __init__(self, keep_frames: bool = False) -> None:
        self.keep_frames = keep_frames
        self._streams: dict[tuple[str, str], Reassembler] = {}
        self._pending: dict[tuple[str, str, int], _Pending] = {}

    def add(self, rec: Record, ch: Channel, schema: LoadedSchema, msg: RawMessage) -> Record | None:
        """Take one fragment record; the whole message once complete (or a raw record)."""
        piece: Any = getattr(rec.envelope, "fragment")  # noqa: B009
        mid = int(piece.fragmented_message_id)
        side = (ch.connection, ch.direction)
        stream = self._streams.get(side)
        if stream is None:
            stream = self._streams[side] = Reassembler(
                timeout_s=float("inf"), max_pending=MAX_PENDING_FRAGMENTS
            )
        key = (*side, mid)
        given_up = None
        pending = self._pending.get(key)
        if pending is None:
            if stream.pending >= MAX_PENDING_FRAGMENTS:
                oldest = stream.pending_ids()[0]
                given_up = self._incomplete(side, oldest, stream.abandon(oldest))
            pending = self._pending[key] = _Pending(msg[2], [])
        if rec.frames:
            pending.frames.extend(rec.frames)
        try:
            data = stream.feed(piece, msg[2] / 1e9)
        except ProtocolError as exc:
            self._pending.pop(key, None)
            return Record(
                msg[2],
                ch.direction,
                ch.connection,
                "raw",
                "fragment",
                len(msg[4]),
                message_id=mid,
                reason=exc.message,
                raw=msg[4],
                frames=pending.frames or None,
            )
        if data is None:
            return given_up
        del self._pending[key]
        whole = decode_frame(
            (msg[0], msg[1], msg[2], msg[3], data), ch, schema, pending.frames or None
        )
        whole.fragments = int(piece.count)
        return whole

    def incomplete(self) -> Iterator[Record]:
        """Records of the sets that never completed (at the end of the capture)."""
        for side, stream in self._streams.items():
            for mid in stream.pending_ids():
                yield self._incomplete(side, mid, stream.abandon(mid))
        self._pending.clear()

    def _incomplete(
        self, side: tuple[str, str], mid: int, counts: tuple[int, int] | None
    ) -> Record:
        received, count = counts or (0, 0)
        pending = self._pending.pop((*side, mid), None) or _Pending(0, [])
        return Record(
            pending.first_time,
            side[1],
            side[0],
            "raw",
            "fragment",
            0,
            message_id=mid,
            reason=f"fragmented message {mid} incomplete: {received} of {count} fragments captured",
            frames=pending.frames if self.keep_frames and pending.frames else None,
        )
