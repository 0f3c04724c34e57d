"""Read captures: MCAP files written by the recorder, and plain-text legacy captures.

:class:`CaptureReader` yields one :class:`Record` per message, in file order:
protobuf frames decoded with the schema stored in the capture (never today's
bindings), fragments reassembled into the message they carry, unknown bodies
and fields kept raw, undecodable frames shown raw with the reason. Damage in a
file ends that file's records early and is reported in :attr:`CaptureReader.problems`
with the byte offset; only files that are not captures at all raise
:class:`CaptureError`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.decode import (
    FIRST_BODY_FIELD,
    UNKNOWN_KEY,
    LoadedSchema,
    SchemaProblem,
    _unknown_entry,
    decode_raw,
    load_schema,
    unknown_field_set,
)
from sleap_rtc.capture.legacy import parse_frame, read_text_capture
from sleap_rtc.capture.mcapio import (
    MAGIC,
    CaptureError,
    ChannelRecord,
    ChunkPlan,
    McapScan,
    Problem,
    RawMessage,
    SchemaRecord,
    chunk_plan,
)

__all__ = ["CaptureError", "CaptureReader", "Problem", "Record", "format_time"]

#: Fragmented messages kept pending per file before the oldest is given up.
_MAX_PENDING_FRAGMENTS = 64


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
        if self.envelope is not None:
            extra = [
                _unknown_entry(f)
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
    if schema is None or rec._message is not None or len(UnknownFieldSet(env)):
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


def _make_channel(
    record: ChannelRecord, schemas: dict[int, SchemaRecord], fallback: bool
) -> tuple[_Channel, str | None]:
    """How to read one channel, and the problem to report about it (if any)."""
    meta = record.metadata
    direction = meta.get("direction") or fmt.direction_of_topic(record.topic)
    ch = _Channel(record, "bad", direction, meta.get("connection_id", ""))
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
        schema_record = _fallback_schema()
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


# -- parallel decoding (worker processes) -----------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_init(path: str, plan: ChunkPlan, fallback: bool) -> None:
    _WORKER.clear()
    _WORKER.update(path=path, plan=plan, fallback=fallback, channels={}, scan=None)


def _worker_lines(span: list[tuple[int, int]]) -> tuple[list[str | RawMessage], list[Problem]]:
    """JSON lines of some chunks; messages that need the main process come back raw."""
    scan = _WORKER["scan"]
    if scan is None:
        scan = _WORKER["scan"] = McapScan(_WORKER["path"])
    plan: ChunkPlan = _WORKER["plan"]
    channels: dict[int, _Channel | None] = _WORKER["channels"]
    out: list[str | RawMessage] = []
    for offset, length in span:
        for msg in scan.read_chunk(offset, length):
            cid = msg[0]
            if cid not in channels:
                record = plan.channels.get(cid)
                channels[cid] = (
                    None
                    if record is None
                    else _make_channel(record, plan.schemas, _WORKER["fallback"])[0]
                )
            ch = channels[cid]
            if ch is not None and ch.kind == "protobuf":
                assert ch.schema is not None
                line = _fast_json(msg, ch, ch.schema)
                out.append(msg if line is None else line)
            elif ch is not None and ch.kind == "raw":
                out.append(_raw_record(msg, ch, None).json_line())
            else:
                out.append(msg)
    problems, scan.problems = scan.problems, []
    return out, problems


def _fast_json(msg: RawMessage, ch: _Channel, schema: LoadedSchema) -> str | None:
    """The JSON line of a whole protobuf frame, or None to take the general path."""
    try:
        env: Any = schema.message_class.FromString(msg[4])
    except (DecodeError, RuntimeError, ValueError):
        return None
    body = env.WhichOneof("body")
    if body is None or body == "fragment" or len(UnknownFieldSet(env)):
        return None
    inner = getattr(env, body)
    cached = ch.json_bodies.get(body)
    if cached is None:
        has_job = schema.has_job_id(body, inner)
        conv = schema.json_converter(inner.DESCRIPTOR)
        cached = ch.json_bodies[body] = (conv, _enc(body), has_job)
        if not ch.json_middle:
            ch.json_middle = (
                f',"direction":{_enc(ch.direction)},"connection":{_enc(ch.connection)},'
                '"kind":"protobuf","body":'
            )
    conv, quoted, has_job = cached
    job = inner.job_id if has_job else ""
    version = env.version
    sent = env.sent_time_unix_nano
    t = msg[2]
    return (
        f'{{"time":"{format_time(t)}","time_ns":{t}{ch.json_middle}{quoted},'
        f'"message_id":{env.message_id},"correlation_id":{env.correlation_id},'
        f'"job_id":{_enc(job) if job else "null"},"size":{len(msg[4])},'
        f'"version":"{version.major}.{version.minor}"'
        + (f',"sent_time_ns":{sent}' if sent else "")
        + f',"message":{conv(inner)}}}'
    )


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
            _unknown_entry(f)
            for f in unknown_field_set(envelope)
            if f.field_number >= FIRST_BODY_FIELD
        ]
        return {UNKNOWN_KEY: entries}
    message = getattr(envelope, body)
    return schema.converter(message.DESCRIPTOR)(message)


@dataclass
class _Channel:
    record: ChannelRecord
    kind: str  # "protobuf", "raw", or "bad"
    direction: str
    connection: str
    schema: LoadedSchema | None = None
    schema_record: SchemaRecord | None = None
    problem: str | None = None
    #: JSON fast path: the text between "time_ns" and "body", and per body its
    #: (converter, quoted name, has job_id).
    json_middle: str = ""
    json_bodies: dict[str, tuple[Any, str, bool]] = field(default_factory=dict)


@dataclass
class _Partial:
    count: int
    total: int
    first_time: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    frames: list[tuple[RawMessage, ChannelRecord, SchemaRecord | None]] = field(
        default_factory=list
    )


@dataclass
class FileInfo:
    """What a capture file says about itself."""

    path: str
    kind: str  # "mcap" or "text"
    library: str = ""
    profile: str = ""
    metadata: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    channels: dict[int, ChannelRecord] = field(default_factory=dict)
    schemas: dict[int, SchemaRecord] = field(default_factory=dict)
    complete: bool = False


def _fallback_schema() -> SchemaRecord:
    return SchemaRecord(0, fmt.SCHEMA_NAME, "protobuf", fmt.envelope_file_descriptor_set())


class CaptureReader:
    """Records of one or more capture files (e.g. the rotated parts of one capture).

    Args:
        paths: MCAP captures or plain-text legacy captures, read in order.
            Fragment reassembly carries over between files.
        reassemble: show fragmented messages reassembled (default); False
            shows each fragment frame as it crossed.
        fallback_schema: decode protobuf channels that have no schema with
            this code's schema (loaded from its descriptors, not its classes).
        keep_frames: keep the captured frames on each record (for ``filter``).

    Raises:
        CaptureError: a file cannot be opened, or is neither MCAP nor text.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        reassemble: bool = True,
        fallback_schema: bool = False,
        keep_frames: bool = False,
    ) -> None:
        if not paths:
            raise CaptureError("no capture file given")
        self.paths = [os.fspath(p) for p in paths]
        self.reassemble = reassemble
        self.fallback_schema = fallback_schema
        self.keep_frames = keep_frames
        self.problems: list[Problem] = []
        self.files: list[FileInfo] = []
        self._kinds: list[str] = []
        for path in self.paths:
            self._kinds.append(_detect(path))

    @property
    def stopped_early(self) -> bool:
        """True when some file could not be read to its end."""
        return any(p.fatal for p in self.problems)

    def records(self) -> Iterator[Record]:
        """Every record of every file, in file order."""
        for item in self._items(fast_json=False):
            assert isinstance(item, Record)
            yield item

    def json_lines(self, jobs: int = 1) -> Iterator[str]:
        """``record.json_line()`` of every record, with a fast path for whole protobuf frames.

        Whole (unfragmented) Envelopes of a known body and without unknown
        envelope fields are turned into their JSON line directly, without a
        :class:`Record`; the output is the same. With ``jobs`` > 1, a single
        complete MCAP file (summary and chunk index present) is decoded by that
        many processes, chunk by chunk, and still printed in file order;
        fragments are reassembled in this process.
        """
        if jobs > 1 and len(self.paths) == 1 and self._kinds[0] == "mcap" and not self.keep_frames:
            plan = chunk_plan(self.paths[0])
            if plan is not None and len(plan.chunks) > 1:
                yield from self._parallel_json(self.paths[0], plan, jobs)
                return
        for item in self._items(fast_json=not self.keep_frames):
            yield item if isinstance(item, str) else item.json_line()

    def _items(self, fast_json: bool) -> Iterator[Record | str]:
        pending: dict[tuple[str, str, int], _Partial] = {}
        for path, kind in zip(self.paths, self._kinds, strict=True):
            if kind == "text":
                info = FileInfo(path, "text", complete=True)
                self.files.append(info)
                for item in read_text_capture(path, self.problems):
                    yield Record(
                        item.pop("time_ns"),
                        item.pop("direction"),
                        "",
                        item.pop("kind"),
                        item.pop("body"),
                        item.pop("size"),
                        **item,
                    )
                continue
            yield from self._mcap(path, pending, fast_json)
        for (connection, direction, mid), partial in pending.items():
            yield self._incomplete(connection, direction, mid, partial)

    def _incomplete(self, connection: str, direction: str, mid: int, partial: _Partial) -> Record:
        have = sorted(partial.pieces)
        return Record(
            partial.first_time,
            direction,
            connection,
            "raw",
            "fragment",
            sum(len(p) for p in partial.pieces.values()),
            message_id=mid,
            reason=f"fragmented message {mid} incomplete: {len(have)} of {partial.count} "
            "fragments captured",
            frames=partial.frames if self.keep_frames else None,
        )

    def _mcap(
        self, path: str, pending: dict[tuple[str, str, int], _Partial], fast_json: bool = False
    ) -> Iterator[Record | str]:
        scan = McapScan(path)
        info = FileInfo(path, "mcap")
        self.files.append(info)
        channels: dict[int, _Channel | None] = {}

        def lookup(cid: int) -> _Channel | None:
            if cid not in channels:
                record = scan.channels.get(cid)
                if record is None:
                    return None
                channels[cid] = self._channel(path, record, scan.schemas)
            return channels[cid]

        try:
            for msg in scan.messages():
                if fast_json:
                    # The common case inline (no generator per message): a whole protobuf frame.
                    ch = channels.get(msg[0])
                    if ch is not None and ch.schema is not None and ch.kind == "protobuf":
                        line = _fast_json(msg, ch, ch.schema)
                        if line is not None:
                            yield line
                            continue
                yield from self._handle(msg, lookup, pending, path, fast_json)
        finally:
            info.library, info.profile = scan.library, scan.profile
            info.metadata = scan.metadata
            info.channels = scan.channels
            info.schemas = scan.schemas
            info.complete = scan.complete
            self.problems.extend(scan.problems)

    def _handle(
        self,
        msg: RawMessage,
        lookup: Callable[[int], _Channel | None],
        pending: dict[tuple[str, str, int], _Partial],
        path: str,
        fast_json: bool,
    ) -> Iterator[Record | str]:
        """The record(s) of one captured message (none while a fragmented message is incomplete)."""
        cid = msg[0]
        ch = lookup(cid)
        if ch is None:
            yield Record(
                msg[2],
                "",
                "",
                "raw",
                "raw",
                len(msg[4]),
                reason=f"message on channel {cid}, which the file never declared",
                raw=msg[4],
            )
            return
        frames = [(msg, ch.record, ch.schema_record)] if self.keep_frames else None
        if ch.kind == "protobuf":
            schema = ch.schema
            assert schema is not None
            if fast_json:
                line = _fast_json(msg, ch, schema)
                if line is not None:
                    yield line
                    return
            rec = _decode(msg, ch, schema, frames)
            if rec.body == "fragment" and self.reassemble and rec.envelope is not None:
                whole = self._fragment(rec, ch, schema, pending, msg, path)
                if whole is not None:
                    yield whole
                return
            yield rec
        elif ch.kind == "raw":
            yield _raw_record(msg, ch, frames)
        else:
            yield Record(
                msg[2],
                ch.direction,
                ch.connection,
                "raw",
                "raw",
                len(msg[4]),
                reason=ch.problem,
                raw=msg[4],
                channel=ch.record,
                frames=frames,
            )

    def _parallel_json(self, path: str, plan: ChunkPlan, jobs: int) -> Iterator[str]:
        """JSON lines of one complete file, chunks decoded by ``jobs`` processes, in file order."""
        import multiprocessing

        self.files.append(
            FileInfo(path, "mcap", channels=plan.channels, schemas=plan.schemas, complete=True)
        )
        channels = {
            cid: self._channel(path, rec, plan.schemas) for cid, rec in plan.channels.items()
        }
        pending: dict[tuple[str, str, int], _Partial] = {}
        per = max(1, min(8, len(plan.chunks) // (jobs * 4)))
        spans = [plan.chunks[i : i + per] for i in range(0, len(plan.chunks), per)]
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        init = (path, plan, self.fallback_schema)
        with ctx.Pool(jobs, initializer=_worker_init, initargs=init) as pool:
            for items, problems in pool.imap(_worker_lines, spans):
                self.problems.extend(problems)
                for item in items:
                    if isinstance(item, str):
                        yield item
                        continue
                    for rec in self._handle(item, channels.get, pending, path, False):
                        yield rec if isinstance(rec, str) else rec.json_line()
        for (connection, direction, mid), partial in pending.items():
            yield self._incomplete(connection, direction, mid, partial).json_line()

    def _channel(
        self, path: str, record: ChannelRecord, schemas: dict[int, SchemaRecord]
    ) -> _Channel:
        ch, problem = _make_channel(record, schemas, self.fallback_schema)
        if problem is not None:
            self.problems.append(Problem(path, 0, problem))
        return ch

    def _fragment(
        self,
        rec: Record,
        ch: _Channel,
        schema: LoadedSchema,
        pending: dict[tuple[str, str, int], _Partial],
        msg: RawMessage,
        path: str,
    ) -> Record | None:
        piece: Any = getattr(rec.envelope, "fragment")  # noqa: B009
        mid = int(piece.fragmented_message_id)
        key = (ch.connection, ch.direction, mid)
        partial = pending.get(key)
        if partial is None:
            if len(pending) >= _MAX_PENDING_FRAGMENTS:
                oldest = next(iter(pending))
                return self._incomplete(*oldest, pending.pop(oldest))
            partial = pending[key] = _Partial(int(piece.count), int(piece.total_bytes), msg[2])
        if rec.frames:
            partial.frames.extend(rec.frames)
        if (
            partial.count != piece.count
            or piece.index in partial.pieces
            or piece.index >= piece.count
        ):
            del pending[key]
            return Record(
                msg[2],
                ch.direction,
                ch.connection,
                "raw",
                "fragment",
                len(msg[4]),
                message_id=mid,
                reason=f"fragment {piece.index} of message {mid} is inconsistent "
                "(count, index or duplicate)",
                raw=msg[4],
                frames=partial.frames or None,
            )
        partial.pieces[int(piece.index)] = bytes(piece.data)
        if len(partial.pieces) < partial.count:
            return None
        del pending[key]
        data = b"".join(partial.pieces[i] for i in range(partial.count))
        whole = _decode((msg[0], msg[1], msg[2], msg[3], data), ch, schema, partial.frames or None)
        whole.fragments = partial.count
        if len(data) != partial.total and whole.reason is None:
            whole.reason = (
                f"reassembled {len(data)} bytes, but the fragments announced {partial.total}"
            )
        return whole


def _detect(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CaptureError(f"cannot open {path}: {exc.strerror or exc}") from None
    if not head:
        raise CaptureError(f"{path} is empty")
    if head == MAGIC or MAGIC.startswith(head) or path.endswith(".mcap") or head[:1] == MAGIC[:1]:
        return "mcap"
    return "text"


def _decode(
    msg: RawMessage, ch: _Channel, schema: LoadedSchema, frames: list[Any] | None
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
        version=f"{version.major}.{version.minor}",
        sent_time_ns=env.sent_time_unix_nano,
        reason="Envelope has no body" if body == "none" else None,
        envelope=env,
        schema=schema,
        channel=ch.record,
        frames=frames,
    )


def _raw_record(msg: RawMessage, ch: _Channel, frames: list[Any] | None) -> Record:
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
    if fmt.looks_legacy(frame):
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
