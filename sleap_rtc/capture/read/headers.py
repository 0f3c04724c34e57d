"""The Envelope headers of a capture, fast: ids, direction and body type, no bodies decoded.

What pairing a request with its answer needs (``cat --json`` links them in a
first pass over the file): for every protobuf message, in file order, its log
time, connection, direction, message id, correlation id and body type, with
fragmented messages reassembled. Standard Envelopes are read straight from the
chunk's bytes; anything else (fragments, a newer header, odd encodings) is
decoded the general way, so the answer is the same as the records'. Damage is
not reported here: the reading that shows the messages reports it.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterator, Sequence
from typing import Any, NamedTuple

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.read.frames import Channel, Fragments, decode_frame, make_channel
from sleap_rtc.capture.read.mcapio import OP_MESSAGE, CaptureError, McapScan, RawMessage
from sleap_rtc.capture.read.mcaprecords import ChannelRecord, SchemaRecord
from sleap_rtc.capture.read.record import Record
from sleap_rtc.capture.tojson.wirejson import varint
from sleap_rtc_proto import bodies

__all__ = ["ANSWERS_ONLY", "Header", "Lookahead", "headers"]

#: A ``skip`` that leaves every message without a correlation id out (fragments are
#: reassembled first: the message they carry may be an answer).
ANSWERS_ONLY = frozenset(row.name for row in bodies.BODIES) - {"fragment"}

_HEAD = struct.Struct("<BQH").unpack_from  # opcode, length, channel id
_TIMES = struct.Struct("<IQQ").unpack_from  # sequence, log time, publish time
_MISSING: Any = object()
_SKIP: Any = object()
_REC = struct.Struct("<BQ").unpack_from


class Header(NamedTuple):
    """One protobuf message's header, as pairing needs it."""

    time_ns: int
    connection: str
    direction: str
    message_id: int
    correlation_id: int
    body: str


def _of(rec: Record) -> Header | None:
    if rec.kind != "protobuf" or rec.message_id is None:
        return None
    return Header(
        rec.time_ns,
        rec.connection,
        rec.direction,
        rec.message_id,
        rec.correlation_id or 0,
        rec.body,
    )


def headers(
    paths: Sequence[str],
    kinds: Sequence[str],
    fallback_schema: bool = False,
    skip: Container[str] = (),
) -> Iterator[Header]:
    """The header of every protobuf message of the MCAP files among ``paths``, in order.

    ``kinds`` says which paths are MCAP ("mcap"); text captures carry no ids.
    ``skip``: bodies whose messages are left out unless they carry a
    correlation id (pairing needs only requests and answers; leaving the rest
    out here is what makes this pass cheap).
    """
    fragments = Fragments()
    for path, kind in zip(paths, kinds, strict=True):
        if kind != "mcap":
            continue
        try:
            scan = McapScan(path)
            for _, header in _file(scan, fragments, fallback_schema, skip):
                yield header
        except CaptureError:
            continue  # the reading that shows the messages says why


class Lookahead:
    """The answer of a request, found by reading ahead of it (``cat --json`` in one process).

    Instead of a first pass over the whole capture, the reading that writes
    the lines asks, at each request, for the first message after it in the
    other direction whose correlation id is the request's id. This reads on
    from the request's block until that answer (usually in the same block) or
    the end of the capture, remembering every answer it passes; each block is
    read at most once, so the cost is at most one pass over the headers, and
    next to nothing when requests are answered promptly.

    Positions are ``(index of the file in paths, block offset)``, as
    :meth:`McapScan.blocks` gives them.
    """

    def __init__(
        self, paths: Sequence[str], kinds: Sequence[str], fallback_schema: bool = False
    ) -> None:
        self.paths = list(paths)
        self.kinds = list(kinds)
        self.fallback_schema = fallback_schema
        #: (connection, direction, correlation id) -> the first such answer and its position
        self._answers: dict[tuple[str, str, int], tuple[Header, tuple[int, int]]] = {}
        self._began: tuple[int, int] | None = None  # blocks read: from here ...
        self._reached: tuple[int, int] = (-1, -1)  # ... to here
        self._finished = False  # ... and on to the end of the capture
        self._walk: Iterator[tuple[tuple[int, int], Header]] | None = None
        #: Blocks read ahead so far (for tests and the benchmark).
        self.blocks_read = 0

    def answer(
        self,
        connection: str,
        direction: str,
        message_id: int,
        at: tuple[int, int],
        channels: dict[int, ChannelRecord],
        schemas: dict[int, SchemaRecord],
    ) -> Header | None:
        """The first answer to the request ``message_id`` seen in block ``at``, or None.

        ``channels`` and ``schemas``: those the file declared before block ``at``.
        """
        c2w, w2c = fmt.CLIENT_TO_WORKER, fmt.WORKER_TO_CLIENT
        other = w2c if direction == c2w else c2w
        key = (connection, other, message_id)
        found = self._answers.get(key)
        if found is not None and found[1] >= at:
            return found[0]
        covered = self._began is not None and self._began <= at <= self._reached
        if not covered:
            if self._finished and self._began is not None and self._began <= at:
                return None
            self._walk = self._from(at, channels, schemas)
            self._began, self._reached, self._finished = at, at, False
        elif self._finished:
            return None
        assert self._walk is not None
        for position, header in self._walk:
            self._reached = position
            if header.correlation_id:
                answer_key = (header.connection, header.direction, header.correlation_id)
                self._answers.setdefault(answer_key, (header, position))
                if answer_key == key:
                    return header
        self._finished = True
        return None

    def _from(
        self,
        at: tuple[int, int],
        channels: dict[int, ChannelRecord],
        schemas: dict[int, SchemaRecord],
    ) -> Iterator[tuple[tuple[int, int], Header]]:
        fragments = Fragments()
        index, offset = at
        for i in range(index, len(self.paths)):
            if self.kinds[i] != "mcap":
                continue
            try:
                scan = McapScan(self.paths[i])
            except CaptureError:
                continue
            first = 8
            if i == index:  # the block of the request, knowing what the file declared before
                scan.channels.update(channels)
                scan.schemas.update(schemas)
                first = offset - 9
            try:
                walk = _file(scan, fragments, self.fallback_schema, ANSWERS_ONLY, first)
                for start, header in walk:
                    yield (i, start), header
            except CaptureError:
                continue
            finally:
                self.blocks_read += scan.blocks_given


def _file(
    scan: McapScan,
    fragments: Fragments,
    fallback: bool,
    skip: Container[str],
    first: int = 8,
) -> Iterator[tuple[int, Header]]:
    # channel id -> (channel, body tag -> name or None: a skipped body) or None (not protobuf)
    channels: dict[int, tuple[Channel, dict[int, str | None] | None] | None] = {}

    def channel(cid: int) -> tuple[Channel, dict[int, str | None] | None] | None:
        record = scan.channels.get(cid)
        ch = None if record is None else make_channel(record, scan.schemas, fallback)[0]
        if ch is None or ch.kind != "protobuf" or ch.schema is None:
            channels[cid] = None
        else:
            known = ch.schema.header_bodies()
            table: dict[int, str | None] | None = None
            if known is not None:
                # Fragments are never skipped: the message they carry may be a request.
                table = {
                    tag: (None if name in skip and name != "fragment" else name)
                    for tag, name in known.items()
                }
            channels[cid] = (ch, table)
        return channels[cid]

    def slow(ch: Channel, msg: RawMessage) -> Header | None:
        assert ch.schema is not None
        rec = decode_frame(msg, ch, ch.schema, None)
        if rec.body == "fragment" and rec.envelope is not None:
            whole = fragments.add(rec, ch, ch.schema, msg)
            if whole is None:
                return None
            rec = whole
        header = _of(rec)
        if header is None or (header.correlation_id == 0 and header.body in skip):
            return None
        return header

    for data, start in scan.blocks(first):
        pos, size = 0, len(data)
        left = scan.budget  # the time bound (see mcapio.RECORD_BUDGET_BASE)
        try:
            while pos + 9 <= size:
                left -= 1
                if left < 0:
                    left = 0
                    scan.over_budget(start, pos, size)
                    break
                if pos + 11 <= size:
                    opcode, length, cid = _HEAD(data, pos)
                else:
                    opcode, length = _REC(data, pos)
                    cid = -1
                end = pos + 9 + length
                if end > size:
                    break
                if opcode != OP_MESSAGE:
                    if not scan.block_record(opcode, data[pos + 9 : end], start):
                        break
                    pos = end
                    continue
                at, pos = pos, end
                if length < 22 or cid < 0:
                    continue
                found = channels.get(cid, _MISSING)
                if found is _MISSING:
                    found = channel(cid)
                if found is None:
                    continue
                ch, table = found
                got = None
                if table is not None:
                    try:
                        got = _fast(data, at + 31, end, table)
                    except (IndexError, ValueError):
                        got = None
                if got is _SKIP:
                    continue
                seq, lt, pt = _TIMES(data, at + 11)
                if got is None:
                    header = slow(ch, (cid, seq, lt, pt, data[at + 31 : end]))
                    if header is not None:
                        yield start, header
                else:
                    yield start, Header(lt, ch.connection, ch.direction, *got)
        finally:
            scan.budget = left


def _fast(d: bytes, pos: int, end: int, table: dict[int, str | None]) -> Any:
    """(message id, correlation id, body) of a standard Envelope, :data:`_SKIP` for a
    skipped body without a correlation id, or None (read it fully)."""
    mid = cid = 0
    if d[pos] == 0x0A:  # version
        n = d[pos + 1]
        if n > 127:
            return None
        pos += 2 + n
    if pos < end and d[pos] == 0x10:
        mid = d[pos + 1]
        pos += 2
        if mid > 127:
            if d[pos] < 128:  # two bytes: ids 128 to 16383
                mid = (mid & 127) | (d[pos] << 7)
                pos += 1
            else:
                mid, pos = varint(d, pos, mid)
    if pos < end and d[pos] == 0x18:
        cid = d[pos + 1]
        pos += 2
        if cid > 127:
            cid, pos = varint(d, pos, cid)
    if pos < end and d[pos] == 0x21:
        pos += 9
    if pos >= end:
        return None
    tag = d[pos]
    pos += 1
    if tag > 127:
        if d[pos] < 128:  # a two-byte tag: fields 16 to 2047
            tag = (tag & 127) | (d[pos] << 7)
            pos += 1
        else:
            tag, pos = varint(d, pos, tag)
    body = table.get(tag, _MISSING)
    if body is None:  # a skipped body
        if not cid:
            return _SKIP
        return None  # an answer of a skipped body: read it fully (rare)
    if body is _MISSING or body == "fragment":
        return None
    n = d[pos]
    pos += 1
    if n > 127:
        n, pos = varint(d, pos, n)
    if pos + n != end:  # a field after the body, or a bad length: read it fully
        return None
    return mid, cid, body
