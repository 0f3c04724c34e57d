"""Read captures: MCAP files written by the recorder, and plain-text legacy captures.

:class:`CaptureReader` yields one :class:`Record` per message, in file order:
protobuf frames decoded with the schema stored in the capture (never today's
bindings), fragments reassembled into the message they carry, unknown bodies
and fields kept raw, undecodable frames shown raw with the reason. Damage in a
file ends that file's records early and is reported in :attr:`CaptureReader.problems`
with the byte offset; only files that are not captures at all raise
:class:`CaptureError`.

The parts: :mod:`~sleap_rtc.capture.read.mcapio` (records of the file),
:mod:`~sleap_rtc.capture.read.frames` (a frame -> a record; reassembly by the protocol's own
:class:`~sleap_rtc_proto.stream.Reassembler`),
:mod:`~sleap_rtc.capture.read.record` (the record and its JSON),
:mod:`~sleap_rtc.capture.tojson.jsonlines` and :mod:`~sleap_rtc.capture.tojson.parallel`
(the ``cat --json`` fast path).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from sleap_rtc.capture.read.frames import Channel, Fragments, decode_frame, make_channel, raw_record
from sleap_rtc.capture.read.legacy import read_text_capture
from sleap_rtc.capture.read.mcapio import (
    MAGIC,
    CaptureError,
    Follow,
    McapScan,
    Problem,
    RawMessage,
)
from sleap_rtc.capture.read.mcaprecords import ChannelRecord, ChunkPlan, SchemaRecord, chunk_plan
from sleap_rtc.capture.read.record import Record
from sleap_rtc.capture.tojson.jsonlines import LineHook, LineMaker, json_block, line_maker

__all__ = [
    "CaptureReader",
    "FileInfo",
]

#: (connection, direction) -> message id -> JSON members appended to its line.
Extras = dict[tuple[str, str], dict[int, str]]
#: Lines per batch when records are turned into JSON one by one.
_BATCH = 1024


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
        follow: wait at the end of the last file for more (a capture being
            written), until its footer or the :class:`Follow`'s timeout.

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
        follow: Follow | None = None,
    ) -> None:
        if not paths:
            raise CaptureError("no capture file given")
        self.paths = [os.fspath(p) for p in paths]
        self.reassemble = reassemble
        self.fallback_schema = fallback_schema
        self.keep_frames = keep_frames
        #: Follow the last file while it is written (``cat -f``): see :class:`Follow`.
        self.follow = follow
        self.problems: list[Problem] = []
        self.files: list[FileInfo] = []
        #: JSON members added to the lines of :meth:`json_batches` (see there).
        self.extras: Extras | None = None
        self.hook: LineHook | None = None
        self._kinds: list[str] = []
        for path in self.paths:
            self._kinds.append(_detect(path))

    @property
    def kinds(self) -> list[str]:
        """What each path is: "mcap" or "text"."""
        return list(self._kinds)

    @property
    def stopped_early(self) -> bool:
        """True when some file could not be read to its end."""
        return any(p.fatal for p in self.problems)

    @property
    def damaged(self) -> bool:
        """True when anything could not be read: messages lost, a record damaged."""
        return any(p.fatal or p.lost for p in self.problems)

    def records(self) -> Iterator[Record]:
        """Every record of every file, in file order."""
        fragments = Fragments(self.keep_frames)
        for path, kind in zip(self.paths, self._kinds, strict=True):
            if kind == "text":
                yield from self._text(path)
                continue
            scan, channels = self._open(path)
            try:
                lookup = self._lookup(path, scan, channels)
                for data, start in scan.blocks():
                    note = scan.salvaged
                    for msg in scan.block_messages(data, start):
                        if note is None:
                            yield from self._handle(msg, lookup, fragments)
                        else:
                            yield from _marked(self._handle(msg, lookup, fragments), note)
            finally:
                self._done(scan)
        yield from fragments.incomplete()

    def json_lines(self, jobs: int = 1, extras: Extras | None = None) -> Iterator[str]:
        """``record.json_line()`` of every record, in file order (see :meth:`json_batches`)."""
        for batch in self.json_batches(jobs, extras):
            for item in batch:
                if "\n" in item:
                    yield from item.split("\n")
                else:
                    yield item

    def json_line(self, rec: Record) -> str:
        """``rec.json_line()``, with the members :attr:`extras` gives it appended."""
        line = rec.json_line()
        if rec.kind != "protobuf" or rec.message_id is None:
            return line
        extras, hook = self.extras, self.hook
        more = None
        if extras:
            more = extras.get((rec.connection, rec.direction), {}).get(rec.message_id)
        elif hook is not None and (rec.correlation_id or rec.body not in hook.skip):
            more = hook(
                rec.connection,
                rec.direction,
                rec.message_id,
                rec.correlation_id or 0,
                rec.body,
                rec.time_ns,
            )
        return line[:-1] + more + "}" if more else line

    def json_batches(
        self, jobs: int = 1, extras: Extras | None = None, hook: LineHook | None = None
    ) -> Iterator[list[str]]:
        """:meth:`json_lines` in lists, a chunk of the file at a time (for big writes).

        An item of a list may hold several lines joined by newlines (JSON
        lines never contain a raw newline): write ``"\\n".join(batch)``.

        Whole Envelopes of a known body, without unknown fields, are turned
        into their JSON line straight from the chunk's bytes
        (:mod:`~sleap_rtc.capture.tojson.jsonlines`), without a :class:`Record`; the
        output is the same. With ``jobs`` > 1, a single complete MCAP file
        (summary and chunk index present) is decoded by that many processes,
        chunk by chunk, and still comes out in file order; fragments are
        reassembled in this process.

        ``extras``: (connection, direction) -> message id -> JSON members to
        append to that message's object (``cat --json`` adds the request an
        answer answers this way); also used by :meth:`json_line`. Or ``hook``,
        asked for them as the lines are made (one process only: ``jobs`` is 1).
        """
        self.extras = extras
        self.hook = hook
        if hook is not None:
            jobs = 1
        if self.keep_frames:
            yield from _batched(self.json_line(r) for r in self.records())
            return
        if jobs > 1 and len(self.paths) == 1 and self._kinds[0] == "mcap":
            plan = chunk_plan(self.paths[0])
            if plan is not None and len(plan.chunks) > 1:
                yield from self._parallel(self.paths[0], jobs, plan)
                return
        fragments = Fragments()
        for index, (path, kind) in enumerate(zip(self.paths, self._kinds, strict=True)):
            if kind == "text":
                yield from _batched(self.json_line(r) for r in self._text(path))
                continue
            yield from self._mcap_json(index, path, fragments)
        tail = [self.json_line(r) for r in fragments.incomplete()]
        if tail:
            yield tail

    # -- reading -------------------------------------------------------------

    def _text(self, path: str) -> Iterator[Record]:
        self.files.append(FileInfo(path, "text", complete=True))
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

    def _open(self, path: str) -> tuple[McapScan, dict[int, Channel | None]]:
        scan = McapScan(path, self.follow if path == self.paths[-1] else None)
        # The file's metadata list fills in as it is read (the capture's own comes first).
        self.files.append(FileInfo(path, "mcap", metadata=scan.metadata))
        return scan, {}

    def _done(self, scan: McapScan) -> None:
        info = self.files[-1]
        info.library, info.profile = scan.library, scan.profile
        info.metadata = scan.metadata
        info.channels = scan.channels
        info.schemas = scan.schemas
        info.complete = scan.complete
        self.problems.extend(scan.problems)

    def _lookup(
        self, path: str, scan: McapScan, channels: dict[int, Channel | None]
    ) -> Callable[[int], Channel | None]:
        def lookup(cid: int) -> Channel | None:
            if cid not in channels:
                record = scan.channels.get(cid)
                if record is None:
                    return None
                channels[cid] = self._channel(path, record, scan.schemas)
            return channels[cid]

        return lookup

    def _mcap_json(self, index: int, path: str, fragments: Fragments) -> Iterator[list[str]]:
        scan, channels = self._open(path)
        lookup = self._lookup(path, scan, channels)
        fast: dict[int, LineMaker | None] = {}

        def make_fast(cid: int) -> LineMaker | None:
            ch = lookup(cid)
            if ch is None or ch.kind != "protobuf" or ch.schema is None:
                return None
            side = self.extras.get((ch.connection, ch.direction)) if self.extras else None
            return line_maker(ch.schema, ch.direction, ch.connection, side, self.hook)

        def slow(msg: RawMessage) -> list[str]:
            return [self.json_line(r) for r in self._handle(msg, lookup, fragments)]

        try:
            hook = self.hook
            for data, start in scan.blocks():
                out: list[str] = []
                note = scan.salvaged
                if hook is not None:
                    hook.block(index, start, scan)
                if note is not None:
                    for msg in scan.block_messages(data, start):
                        records = _marked(self._handle(msg, lookup, fragments), note)
                        out.extend(self.json_line(r) for r in records)
                else:
                    json_block(scan, data, start, fast, make_fast, slow, out)
                if out:
                    yield ["\n".join(out)]
        finally:
            self._done(scan)

    def _parallel(self, path: str, jobs: int, plan: ChunkPlan) -> Iterator[list[str]]:
        from sleap_rtc.capture.tojson.parallel import parallel_json

        self.files.append(
            FileInfo(path, "mcap", channels=plan.channels, schemas=plan.schemas, complete=True)
        )
        channels = {
            cid: self._channel(path, rec, plan.schemas) for cid, rec in plan.channels.items()
        }
        fragments = Fragments()

        def finish(msg: RawMessage, note: str | None) -> list[str]:
            records = self._handle(msg, channels.get, fragments)
            shown = records if note is None else _marked(records, note)
            return [self.json_line(r) for r in shown]

        yield from parallel_json(
            path, plan, jobs, self.fallback_schema, finish, self.problems, self.extras
        )
        self.files[-1].complete = not any(p.lost and p.file == path for p in self.problems)
        tail = [self.json_line(r) for r in fragments.incomplete()]
        if tail:
            yield tail

    def _handle(
        self,
        msg: RawMessage,
        lookup: Callable[[int], Channel | None],
        fragments: Fragments,
    ) -> Iterator[Record]:
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
            rec = decode_frame(msg, ch, schema, frames)
            if rec.body == "fragment" and self.reassemble and rec.envelope is not None:
                whole = fragments.add(rec, ch, schema, msg)
                if whole is not None:
                    yield whole
                return
            yield rec
        elif ch.kind == "raw":
            yield raw_record(msg, ch, frames)
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

    def _channel(
        self, path: str, record: ChannelRecord, schemas: dict[int, SchemaRecord]
    ) -> Channel:
        ch, problem = make_channel(record, schemas, self.fallback_schema)
        if problem is not None:
            self.problems.append(Problem(path, 0, problem))
        return ch


def _marked(records: Iterator[Record], note: str) -> Iterator[Record]:
    """Records of a salvaged chunk, each saying so in its reason."""
    for rec in records:
        rec.reason = note if rec.reason is None else f"{rec.reason}; {note}"
        yield rec


def _batched(lines: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


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
