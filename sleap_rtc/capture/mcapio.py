"""A streaming MCAP scanner that survives truncated and corrupt files.

The mcap library's readers stop with an exception at the first bad byte; an
inspector must instead show everything up to the damage and say where it
stopped. This scanner reads records in file order (chunks decompressed one at
a time, so memory stays bounded on multi-GB files), validates lengths against
the file size before reading, checks chunk CRCs, and reports problems with the
byte offset instead of raising. A damaged chunk gives what can be read of it,
as ``mcap recover`` does. Garbage costs bounded time: reading stops at an
opcode 0 record or after :data:`MAX_JUNK_RECORDS` unknown records in a row.
Only a file that is not MCAP at all, or a newer capture format, raises
:class:`CaptureError`.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from sleap_rtc.capture.format import METADATA_NAME, newer_format

MAGIC = b"\x89MCAP0\r\n"

OP_HEADER = 0x01
OP_FOOTER = 0x02
OP_SCHEMA = 0x03
OP_CHANNEL = 0x04
OP_MESSAGE = 0x05
OP_CHUNK = 0x06
OP_STATISTICS = 0x0B
OP_METADATA = 0x0C
OP_DATA_END = 0x0F

#: A chunk larger than this (compressed or not) is refused as corrupt.
MAX_CHUNK_BYTES = 1 << 30
#: Any other record larger than this is refused as corrupt.
MAX_RECORD_BYTES = 256 * 1024 * 1024
#: Opcodes the MCAP specification defines (0x01..0x10); 0x80.. are user records.
KNOWN_OPCODES = frozenset(range(0x01, 0x11))
#: Reading stops after this many records in a row of opcodes it does not read
#: (reserved 0x11..0x7f, user 0x80..): garbage costs at most this many reads,
#: not one per 9 bytes. A sleap-rtc capture holds none.
MAX_JUNK_RECORDS = 4096

_REC = struct.Struct("<BQ")
_MSG = struct.Struct("<HIQQ")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_CHUNK_HEAD = struct.Struct("<QQQI")


class CaptureError(Exception):
    """The file cannot be read as a capture at all (missing, empty, not MCAP)."""


@dataclass(frozen=True)
class Problem:
    """Something wrong in a capture, and where."""

    file: str
    offset: int
    message: str
    #: True when reading stopped here (what follows was not read).
    fatal: bool = False
    #: True when records (messages, or what describes them) were lost or damaged here.
    lost: bool = False

    def __str__(self) -> str:
        where = f"{self.file} at byte {self.offset}"
        return f"{where}: {self.message}" + (" (stopped here)" if self.fatal else "")


@dataclass(frozen=True)
class SchemaRecord:
    id: int
    name: str
    encoding: str
    data: bytes


@dataclass(frozen=True)
class ChannelRecord:
    id: int
    schema_id: int
    topic: str
    message_encoding: str
    metadata: dict[str, str]


@dataclass
class Statistics:
    message_count: int
    start_time: int
    end_time: int
    channel_message_counts: dict[int, int] = field(default_factory=dict)


class _Bad(Exception):
    pass


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise _Bad("string runs past the end of its record")
    return buf[pos : pos + n].decode("utf-8", "replace"), pos + n


def _schema(buf: bytes) -> SchemaRecord:
    (sid,) = _U16.unpack_from(buf, 0)
    name, pos = _string(buf, 2)
    encoding, pos = _string(buf, pos)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise _Bad("schema data runs past the end of its record")
    return SchemaRecord(sid, name, encoding, bytes(buf[pos : pos + n]))


def _channel(buf: bytes) -> ChannelRecord:
    cid, schema_id = struct.unpack_from("<HH", buf, 0)
    topic, pos = _string(buf, 4)
    encoding, pos = _string(buf, pos)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = pos + n
    if end > len(buf):
        raise _Bad("channel metadata runs past the end of its record")
    meta: dict[str, str] = {}
    while pos < end:
        key, pos = _string(buf, pos)
        value, pos = _string(buf, pos)
        meta[key] = value
    return ChannelRecord(cid, schema_id, topic, encoding, meta)


def _metadata(buf: bytes) -> tuple[str, dict[str, str]]:
    name, pos = _string(buf, 0)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = min(pos + n, len(buf))
    meta: dict[str, str] = {}
    while pos < end:
        key, pos = _string(buf, pos)
        value, pos = _string(buf, pos)
        meta[key] = value
    return name, meta


def _statistics(buf: bytes) -> Statistics:
    count, _schemas, _channels, _attachments, _metadata_n, _chunks, start, end = struct.unpack_from(
        "<QHIIIIQQ", buf, 0
    )
    pos = struct.calcsize("<QHIIIIQQ")
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    counts: dict[int, int] = {}
    stop = min(pos + n, len(buf))
    while pos + 10 <= stop:
        cid, c = struct.unpack_from("<HQ", buf, pos)
        counts[cid] = c
        pos += 10
    return Statistics(count, start, end, counts)


# A message as scanned: (channel id, sequence, log time, publish time, data)
RawMessage = tuple[int, int, int, int, bytes]


class McapScan:
    """Reads one MCAP file in order; see the module docstring.

    Iterate :meth:`messages` once. Schemas and channels become known as they
    are met (before their messages, as MCAP requires); :attr:`problems` and
    :attr:`complete` are final once the iteration ends.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._file: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 - closed in messages()
        except OSError as exc:
            raise CaptureError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            head = self._file.read(8)
        except OSError as exc:
            self._file.close()
            raise CaptureError(f"cannot read {self.path}: {exc}") from None
        if self.size == 0:
            self._file.close()
            raise CaptureError(f"{self.path} is empty")
        if head != MAGIC:
            self._file.close()
            if MAGIC.startswith(head):
                raise CaptureError(
                    f"{self.path} is cut off inside the MCAP magic ({self.size} bytes)"
                )
            raise CaptureError(
                f"{self.path} is not an MCAP file (it does not start with the MCAP magic)"
            )
        self.profile = ""
        self.library = ""
        self.schemas: dict[int, SchemaRecord] = {}
        self.channels: dict[int, ChannelRecord] = {}
        self.metadata: list[tuple[str, dict[str, str]]] = []
        #: Why this file is refused (a newer capture format), once its metadata is read;
        #: :meth:`blocks` then raises :class:`CaptureError` with it.
        self.refused: str | None = None
        #: Set while the block just given comes from a damaged chunk: how it was salvaged.
        self.salvaged: str | None = None
        self.statistics: Statistics | None = None
        self.problems: list[Problem] = []
        #: True once the footer and the closing magic were read, and nothing was damaged.
        self.complete = False
        #: Offset where reading stopped, when it stopped early.
        self.stopped_at: int | None = None

    def _problem(self, offset: int, message: str, fatal: bool = False, lost: bool = True) -> None:
        self.problems.append(Problem(self.path, offset, message, fatal, lost or fatal))
        if fatal:
            self.stopped_at = offset

    @property
    def damaged(self) -> bool:
        """True when something of this file could not be read (or was read damaged)."""
        return any(p.lost for p in self.problems)

    def messages(self) -> Iterator[RawMessage]:
        """The messages of the file, in file order."""
        for data, start in self.blocks():
            yield from self.block_messages(data, start)

    def blocks(self) -> Iterator[tuple[bytes, int]]:
        """The file's message records in blocks, in file order: ``(records, offset)``.

        A block is a run of whole MCAP records (opcode, length, body): the
        decompressed data of one chunk, or one message record outside chunks.
        ``offset`` is where the block's chunk (or record) is in the file, for
        problem reports. Read them with :meth:`block_messages`, or walk them
        directly (the ``cat --json`` fast path) and hand other records to
        :meth:`block_record`.
        """
        f = self._file
        offset = 8
        in_summary = False
        junk = 0
        try:
            while True:
                if self.refused is not None:
                    raise CaptureError(f"{self.path}: {self.refused}")
                head = f.read(9)
                if len(head) < 9:
                    if head or not in_summary:
                        self._problem(
                            offset,
                            "file ends without a footer: truncated, or the recording was "
                            "interrupted; everything before this point was read",
                            fatal=True,
                        )
                    else:
                        self._problem(offset, "file ends without a footer", fatal=True)
                    return
                opcode, length = _REC.unpack(head)
                start = offset + 9
                if opcode not in KNOWN_OPCODES:
                    junk += 1
                    if opcode == 0 or junk > MAX_JUNK_RECORDS:
                        self._problem(
                            offset,
                            f"not an MCAP record (opcode 0x{opcode:02x}): the file is corrupt "
                            "from here",
                            fatal=True,
                        )
                        return
                else:
                    junk = 0
                limit = MAX_CHUNK_BYTES if opcode == OP_CHUNK else MAX_RECORD_BYTES
                if length > self.size - start:
                    if opcode == OP_CHUNK and not in_summary and length <= limit:
                        data = self._chunk_data(f.read(length), start, truncated=True)
                        if data:
                            yield data, start
                    self._problem(
                        offset,
                        f"record (opcode 0x{opcode:02x}) claims {length} bytes but only "
                        f"{self.size - start} remain: the file is truncated or corrupt",
                        fatal=True,
                    )
                    return
                if length > limit:
                    self._problem(
                        offset,
                        f"record (opcode 0x{opcode:02x}) of {length} bytes is over the "
                        f"{limit} byte limit: corrupt",
                        fatal=True,
                    )
                    return
                self.salvaged = None
                if opcode == OP_MESSAGE and not in_summary:
                    body = f.read(length)
                    offset = start + length
                    if length < 22:
                        self._problem(start, "message record too short")
                        continue
                    yield head + body, start
                    continue
                if opcode == OP_CHUNK and not in_summary:
                    body = f.read(length)
                    offset = start + length
                    data = self._chunk_data(body, start)
                    if data is not None:
                        yield data, start
                    continue
                if opcode in (OP_FOOTER,):
                    f.read(length)
                    tail = f.read(8)
                    if tail != MAGIC:
                        self._problem(start + length, "closing MCAP magic missing or damaged")
                    self.complete = not self.damaged
                    return
                body = f.read(length)
                offset = start + length
                try:
                    self._other(opcode, body, in_summary)
                except (_Bad, struct.error, ValueError) as exc:
                    self._problem(start, f"bad record (opcode 0x{opcode:02x}): {exc}")
                if opcode == OP_DATA_END:
                    in_summary = True
        except OSError as exc:
            self._problem(offset, f"read error: {exc}", fatal=True)
        finally:
            f.close()

    def read_chunk(self, offset: int, length: int) -> Iterator[RawMessage]:
        """The messages of the Chunk record at ``offset`` (from a summary's chunk index)."""
        data = self.read_chunk_data(offset, length)
        if data is not None:
            yield from self.block_messages(data, offset + 9)

    def read_chunk_data(self, offset: int, length: int) -> bytes | None:
        """The decompressed records of the Chunk record at ``offset``, or None (reported)."""
        try:
            self._file.seek(offset)
            data = self._file.read(length)
        except OSError as exc:
            self._problem(offset, f"read error: {exc}")
            return None
        if len(data) < 9 or data[0] != OP_CHUNK:
            self._problem(offset, "the chunk index points at something that is not a chunk")
            return None
        return self._chunk_data(data[9:], offset + 9)

    def close(self) -> None:
        self._file.close()

    def _other(self, opcode: int, body: bytes, in_summary: bool) -> None:
        if opcode == OP_SCHEMA:
            schema = _schema(body)
            self.schemas.setdefault(schema.id, schema)
        elif opcode == OP_CHANNEL:
            channel = _channel(body)
            self.channels.setdefault(channel.id, channel)
        elif opcode == OP_HEADER:
            self.profile, pos = _string(body, 0)
            self.library, _ = _string(body, pos)
        elif opcode == OP_METADATA and not in_summary:
            name, values = _metadata(body)
            self.metadata.append((name, values))
            if name == METADATA_NAME and self.refused is None:
                self.refused = newer_format(values.get("format", ""))
        elif opcode == OP_STATISTICS:
            self.statistics = _statistics(body)

    def _chunk_data(self, body: bytes, start: int, truncated: bool = False) -> bytes | None:
        """The decompressed, CRC-checked records of a chunk, or None (reported).

        Like ``mcap recover``, a damaged chunk gives what can still be read:
        data whose CRC does not match (kept, and :attr:`salvaged` says so), or
        the decompressed prefix of a truncated or corrupt chunk.
        """
        self.salvaged = None
        try:
            _s, _e, usize, crc = _CHUNK_HEAD.unpack_from(body, 0)
            compression, pos = _string(body, _CHUNK_HEAD.size)
            (n,) = _U64.unpack_from(body, pos)
            pos += 8
            if usize > MAX_CHUNK_BYTES:
                raise _Bad(f"chunk claims {usize} uncompressed bytes")
        except (_Bad, struct.error, ValueError) as exc:
            self._problem(start, f"chunk skipped: {exc}")
            return None
        compressed = body[pos : pos + n]
        if pos + n > len(body) and not truncated:
            self._problem(start, "chunk data runs past the end of the chunk")
            truncated = True
        try:
            if truncated:
                raise _Bad("the chunk is cut off")
            data = _decompress(compression, compressed, usize)
        except Exception as exc:
            why = str(exc) if isinstance(exc, _Bad) else f"cannot decompress ({exc})"
            data = _decompress_prefix(compression, compressed, usize)
            self.salvaged = f"salvaged from a damaged chunk at byte {start} ({why})"
            self._problem(
                start,
                f"chunk damaged: {why}; {len(data)} of {usize} bytes recovered, "
                "the messages in them are shown, the rest of the chunk is lost",
            )
            return data
        if crc and zlib.crc32(data) != crc:
            self.salvaged = f"from a chunk at byte {start} whose CRC does not match"
            self._problem(
                start,
                "chunk CRC does not match its data: its messages are shown, marked, "
                "and may be damaged",
            )
        return data

    def block_record(self, opcode: int, body: bytes, start: int) -> bool:
        """A record of a block other than a message (a schema or channel, say).

        False when the block is garbage from here (opcode 0): stop walking it.
        """
        if opcode == 0:
            self._problem(start, "chunk holds garbage (opcode 0x00); rest of chunk skipped")
            return False
        try:
            self._other(opcode, body, False)
        except (_Bad, struct.error, ValueError) as exc:
            self._problem(start, f"bad record in chunk (opcode 0x{opcode:02x}): {exc}")
        return True

    def block_overrun(self, start: int, pos: int) -> None:
        """Report a block record at ``pos`` that runs past the block's end."""
        self._problem(
            start, f"chunk record at {pos} runs past the end of the chunk; rest of chunk skipped"
        )

    def block_messages(self, data: bytes, start: int) -> Iterator[RawMessage]:
        """The messages of one block of :meth:`blocks` (other records are taken in)."""
        pos = 0
        size = len(data)
        unpack_rec = _REC.unpack_from
        unpack_msg = _MSG.unpack_from
        while pos + 9 <= size:
            opcode, length = unpack_rec(data, pos)
            body_start = pos + 9
            end = body_start + length
            if end > size:
                self.block_overrun(start, pos)
                return
            if opcode == OP_MESSAGE:
                if length >= 22:
                    cid, seq, lt, pt = unpack_msg(data, body_start)
                    yield cid, seq, lt, pt, data[body_start + 22 : end]
            elif not self.block_record(opcode, data[body_start:end], start):
                return
            pos = end
        if pos != size:
            self.block_tail(start)

    def block_tail(self, start: int) -> None:
        """Report a block that ends inside a record."""
        self._problem(start, "chunk ends inside a record")


def _decompress_prefix(compression: str, data: bytes, usize: int) -> bytes:
    """What can be decompressed from the start of damaged or cut-off chunk data."""
    if compression == "":
        return bytes(data[:usize])
    out = bytearray()
    if compression == "zstd":
        import io

        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        try:
            while len(out) < usize:
                piece = reader.read(min(1 << 16, usize - len(out)))
                if not piece:
                    break
                out += piece
        except Exception:  # keep the prefix read before the damage
            pass
        return bytes(out)
    if compression == "lz4":
        try:
            import lz4.frame  # type: ignore[import-untyped, unused-ignore]

            dec = lz4.frame.LZ4FrameDecompressor()
            for i in range(0, len(data), 1 << 12):
                out += dec.decompress(data[i : i + (1 << 12)])
                if len(out) >= usize:
                    break
        except Exception:  # keep the prefix read before the damage
            pass
        return bytes(out[:usize])
    return b""


def _decompress(compression: str, data: bytes, usize: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        out: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(usize, 1))
        return out
    if compression == "lz4":
        try:
            import lz4.frame  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise _Bad("lz4 compression, and the lz4 package is not installed") from None
        lz: bytes = lz4.frame.decompress(data)
        return lz
    raise _Bad(f"unknown compression {compression!r}")


@dataclass(frozen=True)
class ChunkPlan:
    """Where a complete file's chunks are, from its summary (for parallel reading)."""

    channels: dict[int, ChannelRecord]
    schemas: dict[int, SchemaRecord]
    #: (offset, length) of every Chunk record, in file order.
    chunks: list[tuple[int, int]]


def chunk_plan(path: str | os.PathLike[str]) -> ChunkPlan | None:
    """The chunk layout of a finished capture, or None (no summary, unchunked, damaged)."""
    from mcap.reader import make_reader

    try:
        with open(path, "rb") as f:
            summary = make_reader(f).get_summary()
    except Exception:
        return None
    if summary is None or not summary.chunk_indexes or summary.statistics is None:
        return None
    if summary.statistics.chunk_count != len(summary.chunk_indexes):
        return None
    channels = {
        c.id: ChannelRecord(c.id, c.schema_id, c.topic, c.message_encoding, dict(c.metadata))
        for c in summary.channels.values()
    }
    schemas = {
        s.id: SchemaRecord(s.id, s.name, s.encoding, bytes(s.data))
        for s in summary.schemas.values()
    }
    chunks = sorted((ci.chunk_start_offset, ci.chunk_length) for ci in summary.chunk_indexes)
    return ChunkPlan(channels, schemas, chunks)
