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
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from sleap_rtc.capture.format import METADATA_NAME, newer_format
from sleap_rtc.capture.read.mcaprecords import (
    BadRecord,
    ChannelRecord,
    SchemaRecord,
    Statistics,
    decompress,
    decompress_prefix,
    parse_channel,
    parse_metadata,
    parse_schema,
    parse_statistics,
    read_string,
)

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
#: The records a file may hold: this many, plus one per byte of the file. Walking a
#: record costs about a microsecond, so reading any file takes time linear in its size
#: (a chunk that decompresses to 1 GiB of 9-byte records holds 119 million: without
#: this bound about a minute for a file of a few kilobytes). A real capture holds
#: about one record per 30 bytes of file; past the budget, reading stops, reported.
RECORD_BUDGET_BASE = 1_000_000
#: Reading stops after this many records in a row of opcodes it does not read
#: (reserved 0x11..0x7f, user 0x80..): garbage costs at most this many reads,
#: not one per 9 bytes. A sleap-rtc capture holds none.
MAX_JUNK_RECORDS = 4096

_REC = struct.Struct("<BQ")
_MSG = struct.Struct("<HIQQ")
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


class Follow:
    """How long to wait for a capture being written to grow (``cat -f``).

    Args:
        timeout_s: stop after this many seconds without new data (None: never;
            the footer or Ctrl-C ends following).
        poll_s: how often to look at the file's size.
    """

    def __init__(
        self,
        timeout_s: float | None = None,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        self._size = -1
        self._since = clock()

    @property
    def stopped(self) -> str:
        return (
            f"stopped following: no new data for {self.timeout_s or 0:g} s (--follow-timeout); "
            "the capture has no footer yet (still being written?)"
        )

    def wait(self, size: int) -> bool:
        """Sleep one poll; False once the file has not grown for ``timeout_s``."""
        now = self._clock()
        if size != self._size:
            self._size, self._since = size, now
        if self.timeout_s is not None and now - self._since >= self.timeout_s:
            return False
        self._sleep(self.poll_s)
        return True


# A message as scanned: (channel id, sequence, log time, publish time, data)
RawMessage = tuple[int, int, int, int, bytes]


class McapScan:
    """Reads one MCAP file in order; see the module docstring.

    Iterate :meth:`messages` once. Schemas and channels become known as they
    are met (before their messages, as MCAP requires); :attr:`problems` and
    :attr:`complete` are final once the iteration ends.
    """

    def __init__(self, path: str | os.PathLike[str], follow: Follow | None = None) -> None:
        self.path = os.fspath(path)
        #: Follow a file being written (``cat -f``): wait at its end instead of stopping.
        self.follow = follow
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
        #: Records that may still be walked inside chunks (see RECORD_BUDGET_BASE).
        self.budget = RECORD_BUDGET_BASE + self.size
        #: Blocks :meth:`blocks` gave so far.
        self.blocks_given = 0
        #: Set once the budget ran out: :meth:`blocks` gives nothing more.
        self.exhausted = False
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

    def blocks(self, first: int = 8) -> Iterator[tuple[bytes, int]]:
        """The file's message records in blocks, in file order: ``(records, offset)``.

        ``first``: where to start, the offset of a record (the block offsets
        given here are 9 bytes past their record's). Records before it are not
        read: channels and schemas declared there must be known already.

        A block is a run of whole MCAP records (opcode, length, body): the
        decompressed data of one chunk, or one message record outside chunks.
        ``offset`` is where the block's chunk (or record) is in the file, for
        problem reports. Read them with :meth:`block_messages`, or walk them
        directly (the ``cat --json`` fast path) and hand other records to
        :meth:`block_record`.
        """
        f = self._file
        offset = first
        if first != 8:
            f.seek(first)
        in_summary = False
        junk = 0
        try:
            while not self.exhausted:
                if self.refused is not None:
                    raise CaptureError(f"{self.path}: {self.refused}")
                head = f.read(9)
                if len(head) < 9:
                    if self._wait(offset):
                        continue
                    if self.follow is not None:
                        self._problem(offset, self.follow.stopped, lost=False)
                        return
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
                if length > self.size - start and length <= limit and self._wait(offset):
                    continue  # following: the record is still being written
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
                        self.blocks_given += 1
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
                except (BadRecord, struct.error, ValueError) as exc:
                    self._problem(start, f"bad record (opcode 0x{opcode:02x}): {exc}")
                if opcode == OP_DATA_END:
                    in_summary = True
        except OSError as exc:
            self._problem(offset, f"read error: {exc}", fatal=True)
        finally:
            f.close()

    def _wait(self, offset: int) -> bool:
        """Following: wait for the file to grow; True (and back at ``offset``) once it did.

        False when not following or following ended; the file position is then
        left where it was.
        """
        if self.follow is None:
            return False
        while True:
            size = os.fstat(self._file.fileno()).st_size
            if size > self.size:
                self.size = size
                self._file.seek(offset)
                return True
            if not self.follow.wait(size):
                return False

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
            schema = parse_schema(body)
            self.schemas.setdefault(schema.id, schema)
        elif opcode == OP_CHANNEL:
            channel = parse_channel(body)
            self.channels.setdefault(channel.id, channel)
        elif opcode == OP_HEADER:
            self.profile, pos = read_string(body, 0)
            self.library, _ = read_string(body, pos)
        elif opcode == OP_METADATA and not in_summary:
            name, values = parse_metadata(body)
            self.metadata.append((name, values))
            if name == METADATA_NAME and self.refused is None:
                self.refused = newer_format(values.get("format", ""))
        elif opcode == OP_STATISTICS:
            self.statistics = parse_statistics(body)

    def _chunk_data(self, body: bytes, start: int, truncated: bool = False) -> bytes | None:
        """The decompressed, CRC-checked records of a chunk, or None (reported).

        Like ``mcap recover``, a damaged chunk gives what can still be read:
        data whose CRC does not match (kept, and :attr:`salvaged` says so), or
        the decompressed prefix of a truncated or corrupt chunk.
        """
        self.salvaged = None
        try:
            _s, _e, usize, crc = _CHUNK_HEAD.unpack_from(body, 0)
            compression, pos = read_string(body, _CHUNK_HEAD.size)
            (n,) = _U64.unpack_from(body, pos)
            pos += 8
            if usize > MAX_CHUNK_BYTES:
                raise BadRecord(f"chunk claims {usize} uncompressed bytes")
        except (BadRecord, struct.error, ValueError) as exc:
            self._problem(start, f"chunk skipped: {exc}")
            return None
        compressed = body[pos : pos + n]
        if pos + n > len(body) and not truncated:
            self._problem(start, "chunk data runs past the end of the chunk")
            truncated = True
        try:
            if truncated:
                raise BadRecord("the chunk is cut off")
            data = decompress(compression, compressed, usize)
        except Exception as exc:
            why = str(exc) if isinstance(exc, BadRecord) else f"cannot decompress ({exc})"
            data = decompress_prefix(compression, compressed, usize)
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
        except (BadRecord, struct.error, ValueError) as exc:
            self._problem(start, f"bad record in chunk (opcode 0x{opcode:02x}): {exc}")
        return True

    def over_budget(self, start: int, pos: int, size: int) -> None:
        """Report that the record budget ran out at ``pos`` of a block; reading stops."""
        self.budget = 0
        self.exhausted = True
        self._problem(
            start,
            f"more records than a file of {self.size} bytes may hold "
            f"({RECORD_BUDGET_BASE:,} plus one per byte): a decompression bomb or damage; "
            f"the rest of this chunk ({size - pos} bytes) and of the file is skipped",
            fatal=True,
        )

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
        left = self.budget
        while pos + 9 <= size:
            left -= 1
            if left < 0:
                self.over_budget(start, pos, size)
                return
            self.budget = left
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
