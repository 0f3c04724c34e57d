"""How a captured frame becomes a :class:`Record`: per channel, per frame.

A channel is read one of three ways: protobuf (decoded with the capture's own
schema), raw (the recorder's raw channel: legacy text or undecodable bytes,
behind a JSON header), or bad (no schema, wrong encoding: frames shown raw
with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.decode import FIRST_BODY_FIELD, LoadedSchema, SchemaProblem, load_schema
from sleap_rtc.capture.legacy import looks_legacy, parse_frame
from sleap_rtc.capture.mcapio import ChannelRecord, RawMessage, SchemaRecord
from sleap_rtc.capture.rawproto import unknown_field_set
from sleap_rtc.capture.record import Record
from sleap_rtc_proto.bodies import JOB_EVENTS

__all__ = ["Channel", "decode_frame", "fallback_schema", "make_channel", "raw_record"]


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
