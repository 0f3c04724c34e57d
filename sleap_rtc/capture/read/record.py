"""One message of a capture, as the inspector shows it: :class:`Record` and its JSON.

A record is a captured frame, or a fragmented message reassembled. Its JSON
line (``cat --json``) is :meth:`Record.to_json` dumped compactly; for plain
protobuf records :meth:`Record.json_line` writes the same text directly.
"""

from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from sleap_rtc.capture.read.decode import FIRST_BODY_FIELD, LoadedSchema
from sleap_rtc.capture.read.mcapio import RawMessage
from sleap_rtc.capture.read.mcaprecords import ChannelRecord, SchemaRecord
from sleap_rtc.capture.read.rawproto import (
    UNKNOWN_KEY,
    decode_raw,
    unknown_entry,
    unknown_field_set,
)

__all__ = ["Record", "format_time", "raw_view"]


class Record:
    """One message of a capture (a frame, or a reassembled fragmented message)."""

    __slots__ = (
        "_message",
        "body",
        "channel",
        "connection",
        "correlation_id",
        "direction",
        "envelope",
        "fragments",
        "frames",
        "job_id",
        "job_ids",
        "kind",
        "legacy_type",
        "message_id",
        "raw",
        "reason",
        "schema",
        "sent_time_ns",
        "size",
        "source",
        "time_ns",
        "version",
    )

    def __init__(
        self,
        time_ns: int,
        direction: str,
        connection: str,
        kind: str,
        body: str,
        size: int,
        *,
        message_id: int | None = None,
        correlation_id: int | None = None,
        job_id: str | None = None,
        job_ids: tuple[str, ...] = (),
        version: str | None = None,
        sent_time_ns: int | None = None,
        reason: str | None = None,
        raw: bytes | None = None,
        fragments: int = 0,
        legacy_type: str | None = None,
        message: dict[str, Any] | None = None,
        envelope: Message | None = None,
        schema: LoadedSchema | None = None,
        channel: ChannelRecord | None = None,
        frames: list[tuple[RawMessage, ChannelRecord, SchemaRecord | None]] | None = None,
        source: str = "",
    ) -> None:
        #: Wall clock (ns since the epoch) when the recorder saw the frame; 0 if unknown.
        self.time_ns = time_ns
        #: "client_to_worker", "worker_to_client", or "" when unknown.
        self.direction = direction
        self.connection = connection
        #: "protobuf" (an Envelope), "legacy" (a TYPE::json frame) or "raw" (undecodable).
        self.kind = kind
        #: The body type: an Envelope body name, "unknown_body_N", a legacy type's v1
        #: name, or "raw".
        self.body = body
        #: Bytes of the frame, or of the whole message once reassembled.
        self.size = size
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.job_id = job_id
        #: The jobs of a message's items when it has no job id of its own
        #: (a JobProgressBatch): what ``-j`` and ``info`` go by.
        self.job_ids = job_ids
        self.version = version
        self.sent_time_ns = sent_time_ns
        #: Why the frame is shown raw (kind "raw"), or a note about it.
        self.reason = reason
        self.raw = raw
        #: How many fragments carried the message (0: it crossed whole).
        self.fragments = fragments
        self.legacy_type = legacy_type
        self.envelope = envelope
        self.schema = schema
        self.channel = channel
        #: The captured frames behind this record (kept for ``filter``).
        self.frames = frames
        self.source = source
        self._message = message

    def message(self) -> dict[str, Any] | None:
        """The decoded body as a JSON-ready dict (json_format's shape plus ``@unknown``)."""
        if self._message is None and self.envelope is not None and self.schema is not None:
            self._message = _body_dict(self.envelope, self.body, self.schema)
        return self._message

    def json_line(self) -> str:
        """The record as one line of JSON (what ``cat --json`` prints)."""
        if (
            self.kind == "protobuf"
            and self.reason is None
            and not self.fragments
            and self.time_ns
            and self.envelope is not None
        ):
            return _line_fast(self)
        return _dump(self.to_json())

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (one ``cat --json`` line)."""
        out: dict[str, Any] = {
            "time": format_time(self.time_ns),
            "time_ns": self.time_ns,
            "direction": self.direction,
            "connection": self.connection,
            "kind": self.kind,
            "body": self.body,
            "message_id": self.message_id,
            "correlation_id": self.correlation_id,
            "job_id": self.job_id,
            "size": self.size,
        }
        if self.version is not None:
            out["version"] = self.version
        if self.sent_time_ns:
            out["sent_time_ns"] = self.sent_time_ns
        if self.fragments:
            out["fragments"] = self.fragments
        if self.legacy_type is not None:
            out["legacy_type"] = self.legacy_type
        message = self.message()
        if message is not None:
            out["message"] = message
        if self.envelope is not None and self.schema is not None and self.schema.extra_header:
            named = envelope_fields(self.envelope, self.schema.extra_header)
            if named:
                out["envelope"] = named
        if self.envelope is not None:
            extra = [
                unknown_entry(f)
                for f in unknown_field_set(self.envelope)
                if f.field_number < FIRST_BODY_FIELD
            ]
            if extra:
                out["envelope_unknown"] = extra
        if self.reason is not None:
            out["reason"] = self.reason
        if self.kind == "raw" and self.raw is not None:
            out.update(raw_view(self.raw))
        return out


_enc = json.encoder.encode_basestring  # C-accelerated string quoting
_dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def _line_fast(rec: Record) -> str:
    """``json.dumps(rec.to_json())`` for a plain protobuf record, without the dict."""
    job = rec.job_id
    env: Any = rec.envelope
    schema = rec.schema
    if (
        schema is None
        or rec._message is not None
        or schema.extra_header
        or len(UnknownFieldSet(env))
    ):
        return _dump(rec.to_json())
    inner = getattr(env, rec.body)
    body = schema.json_converter(inner.DESCRIPTOR)(inner)
    return (
        f'{{"time":"{format_time(rec.time_ns)}","time_ns":{rec.time_ns},"direction":{_enc(rec.direction)},'
        f'"connection":{_enc(rec.connection)},"kind":"protobuf","body":{_enc(rec.body)},'
        f'"message_id":{rec.message_id},"correlation_id":{rec.correlation_id},'
        f'"job_id":{"null" if job is None else _enc(job)},"size":{rec.size},'
        f'"version":"{rec.version}"'
        + (f',"sent_time_ns":{rec.sent_time_ns}' if rec.sent_time_ns else "")
        + f',"message":{body}}}'
    )


def envelope_fields(envelope: Message, names: frozenset[str]) -> dict[str, Any]:
    """The Envelope header fields set in ``envelope`` that only a newer schema names."""
    if not any(fd.name in names for fd, _ in envelope.ListFields()):
        return {}
    from google.protobuf.json_format import MessageToDict

    whole = MessageToDict(envelope, preserving_proto_field_name=True)
    return {name: whole[name] for name in sorted(names) if name in whole}


def raw_view(data: bytes, limit: int = 4096) -> dict[str, Any]:
    """How a raw frame is shown: text when it is UTF-8, else hex; cut at ``limit`` bytes."""
    shown = data[:limit]
    out: dict[str, Any] = {}
    try:
        text = shown.decode("utf-8")
        if not all(c.isprintable() or c in "\t\r\n" for c in text):
            raise UnicodeDecodeError("utf-8", shown, 0, 1, "control characters")
        out["text"] = text
    except UnicodeDecodeError:
        out["hex"] = shown.hex()
        fields = decode_raw(data) if len(data) <= 1 << 20 else None
        if fields is not None:
            out["protobuf_fields"] = fields
    if len(data) > limit:
        out["truncated_from"] = len(data)
    return out


_time_cache: dict[int, str] = {}


def format_time(ns: int) -> str:
    """ISO 8601 UTC with microseconds; "" for 0 (unknown)."""
    if not ns:
        return ""
    sec, rem = divmod(ns, 10**9)
    prefix = _time_cache.get(sec)
    if prefix is None:
        if len(_time_cache) > 4096:
            _time_cache.clear()
        prefix = _time_cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{prefix}.{rem // 1000:06d}Z"


def _body_dict(envelope: Message, body: str, schema: LoadedSchema) -> dict[str, Any]:
    if body.startswith("unknown_body_") or body == "none":
        entries = [
            unknown_entry(f)
            for f in unknown_field_set(envelope)
            if f.field_number >= FIRST_BODY_FIELD
        ]
        return {UNKNOWN_KEY: entries}
    message = getattr(envelope, body)
    return schema.converter(message.DESCRIPTOR)(message)
