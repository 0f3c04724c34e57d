"""The ``cat --json`` fast path: JSON lines straight from decompressed MCAP chunks.

:func:`line_maker` builds, for one protobuf channel, a function that turns a
whole Envelope in a chunk buffer into its JSON line (what
``Record.json_line()`` gives, field for field) by reading the wire format
(:mod:`sleap_rtc.capture.tojson.wirejson`), with no message object, no dict and no
copy of the frame. Whatever it does not take (fragments, unknown fields or
bodies, anything unusual) it hands back (None), and the reader decodes that
message the general way. :func:`json_block` walks one block of records.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Container, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from sleap_rtc.capture.read.mcapio import OP_MESSAGE, McapScan, RawMessage
from sleap_rtc.capture.tojson.wirejson import varint

if TYPE_CHECKING:
    from sleap_rtc.capture.read.decode import LoadedSchema

#: ``(buf, pos, end, log_time) -> JSON line``, or None for the general path.
LineMaker = Callable[[Any, int, int, int], "str | None"]

_enc = json.encoder.encode_basestring
_U64 = struct.Struct("<Q").unpack_from
_REC = struct.Struct("<BQ").unpack_from
_MSG = struct.Struct("<HIQQ").unpack_from
_HEAD = struct.Struct("<BQHIQQ").unpack_from
_MISSING: Any = object()


class LineHook(Protocol):
    """What adds JSON members to the lines of some messages, as they are made (in file order).

    Called for the messages with a correlation id and those of a body not in
    :attr:`skip`; :meth:`block` is told which block the next messages are in.
    """

    @property
    def skip(self) -> Container[str]: ...

    def block(self, index: int, start: int, scan: McapScan) -> None: ...

    def __call__(
        self,
        connection: str,
        direction: str,
        message_id: int,
        correlation_id: int,
        body: str,
        time_ns: int,
    ) -> str: ...


def line_maker(
    schema: LoadedSchema,
    direction: str,
    connection: str,
    extras: dict[int, str] | None = None,
    hook: LineHook | None = None,
) -> LineMaker | None:
    """The fast JSON line function of a protobuf channel, or None (general path only).

    ``extras``: message id -> JSON members appended to that message's object
    (``,"answers":{...}``, say), as :meth:`Record.json_line` callers add them;
    or ``hook``, asked for them (see :class:`LineHook`).
    """
    bodies = schema.wire_bodies()
    if bodies is None:
        return None
    middle = (
        f',"direction":{_enc(direction)},"connection":{_enc(connection)},"kind":"protobuf","body":'
    )
    skip = hook.skip if hook is not None else ()
    table = {
        tag: (f'{middle}{_enc(name)},"message_id":', decoder, name not in skip, name)
        for tag, (name, decoder) in bodies.items()
    }
    times: dict[str, str] = {}
    var = varint
    # The version field of the last message, and what it said (it rarely changes).
    last = [b"\n\x02\x08\x01", "1.0"]

    def line(d: Any, pos: int, end: int, t: int) -> str | None:
        start = pos
        mid = cid = sent = 0
        if d.startswith(last[0], pos):
            version = last[1]
            pos += len(last[0])
        elif pos < end and d[pos] == 0x0A:
            n = d[pos + 1]
            q = pos + 2
            if n > 127:
                return None
            pos = q + n
            if pos > end:
                return None
            major = minor = 0
            if q < pos and d[q] == 0x08:
                major = d[q + 1]
                q += 2
                if major > 127:
                    major, q = var(d, q, major)
                major &= 0xFFFFFFFF
            if q < pos and d[q] == 0x10:
                minor = d[q + 1]
                q += 2
                if minor > 127:
                    minor, q = var(d, q, minor)
                minor &= 0xFFFFFFFF
            if q != pos:
                return None
            version = f"{major}.{minor}"
            last[:] = [bytes(d[start:pos]), version]
        else:
            version = "0.0"
        if pos < end and d[pos] == 0x10:
            mid = d[pos + 1]
            pos += 2
            if mid > 127:
                if d[pos] < 128:
                    mid = (mid & 127) | (d[pos] << 7)
                    pos += 1
                elif d[pos + 1] < 128:
                    mid = (mid & 127) | ((d[pos] & 127) << 7) | (d[pos + 1] << 14)
                    pos += 2
                else:
                    mid, pos = var(d, pos, mid)
        if pos < end and d[pos] == 0x18:
            cid = d[pos + 1]
            pos += 2
            if cid > 127:
                cid, pos = var(d, pos, cid)
        if pos < end and d[pos] == 0x21:
            sent = _U64(d, pos + 1)[0]
            pos += 9
        if pos >= end:
            return None  # no body (or truncated): the general path says so
        tag = d[pos]
        q = pos + 1
        if tag > 127:
            if d[q] < 128:  # a two-byte tag: fields 16 to 2047
                tag = (tag & 127) | (d[q] << 7)
                q += 1
            else:
                tag, q = var(d, q, tag)
        entry = table.get(tag)
        if entry is None:
            return None
        n = d[q]
        q += 1
        if n > 127:
            n, q = var(d, q, n)
        if q + n != end:
            return None  # a field after the body, or a bad length
        got: Any = entry[1](d, q, end)  # (json, job id): a body decoder
        if got is None or t < 1_000_000_000:
            return None
        s = str(t)
        head = times.get(s[:-9])
        if head is None:
            if len(times) > 4096:
                times.clear()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(s[:-9])))
            head = times[s[:-9]] = '{"time":"' + stamp + "."
        job = got[1]
        extra = f',"sent_time_ns":{sent}' if sent else ""
        message = got[0]
        if extras and mid in extras:
            message += extras[mid]
        elif hook is not None and (cid or entry[2]):
            message += hook(connection, direction, mid, cid, entry[3], t)
        return (
            f'{head}{s[-9:-3]}Z","time_ns":{s}{entry[0]}{mid},"correlation_id":{cid},'
            f'"job_id":{_enc(job) if job else "null"},"size":{end - start},'
            f'"version":"{version}"{extra},"message":{message}}}'
        )

    return line


def json_block(
    scan: McapScan,
    data: bytes,
    start: int,
    fast: dict[int, LineMaker | None],
    make_fast: Callable[[int], LineMaker | None],
    slow: Callable[[RawMessage], Iterable[Any]],
    out: list[Any],
) -> None:
    """Append to ``out`` the JSON lines of one block of ``scan.blocks()``.

    ``fast`` caches :func:`line_maker` per channel id (``make_fast`` builds
    one); messages it does not take go to ``slow``, whose items are appended
    in order (JSON lines, or whatever the caller wants to finish later).
    """
    pos = 0
    size = len(data)
    append = out.append
    # A record costs one step of the scan's budget (its bound on time: see mcapio).
    allowed = scan.budget
    steps = 0
    while pos + 9 <= size:
        steps += 1
        if steps > allowed:
            scan.over_budget(start, pos, size)
            return
        if pos + 31 <= size:  # room for a message record header: read it in one go
            opcode, length, cid, seq, lt, pt = _HEAD(data, pos)
        else:
            opcode, length = _REC(data, pos)
            cid = -1
        body = pos + 9
        end = body + length
        if end > size:
            scan.budget -= steps
            scan.block_overrun(start, pos)
            return
        if opcode == OP_MESSAGE:
            if length >= 22:
                if cid < 0:
                    cid, seq, lt, pt = _MSG(data, body)
                maker = fast.get(cid, _MISSING)
                if maker is _MISSING:
                    maker = fast[cid] = make_fast(cid)
                line = None
                if maker is not None:
                    try:
                        line = maker(data, body + 22, end, lt)
                    except (IndexError, ValueError, UnicodeDecodeError, struct.error):
                        line = None
                if line is None:
                    out.extend(slow((cid, seq, lt, pt, data[body + 22 : end])))
                else:
                    append(line)
        elif not scan.block_record(opcode, data[body:end], start):
            scan.budget -= steps
            return
        pos = end
    scan.budget -= steps
    if pos != size:
        scan.block_tail(start)
