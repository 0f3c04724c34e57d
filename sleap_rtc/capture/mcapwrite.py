"""A lean MCAP writer for the recorder: chunked, compressed, indexed, with a summary.

It writes what ``mcap.writer.Writer`` writes (header, schemas and channels in
the data, chunks each followed by their message indexes, data end, a summary
with schemas, channels, statistics, chunk and metadata indexes, summary
offsets, footer with CRC), so the files open in the mcap reader and standard
MCAP tools with summary and index. The difference is the hot path: a message
is one ``struct.pack`` and two list appends, not a record object and a
builder per message. The rare records (header, schema, channel, chunk,
indexes, summary) are serialized by the mcap library's own record classes.
"""

from __future__ import annotations

import struct
import zlib
from typing import IO, Any

from mcap import records as r
from mcap.data_stream import RecordBuilder
from mcap.opcode import Opcode

MAGIC = b"\x89MCAP0\r\n"
_MSG_HEAD = struct.Struct("<BQHIQQ")  # opcode, length, channel, sequence, log, publish


def _bytes(*records: Any) -> bytes:
    builder = RecordBuilder()
    for record in records:
        record.write(builder)
    data: bytes = builder.end()  # type: ignore[no-untyped-call]
    return data


def _message_index(channel_id: int, entries: list[tuple[int, int]]) -> bytes:
    """A MessageIndex record: channel id, then (log time, offset in the chunk) pairs."""
    flat = [value for entry in entries for value in entry]
    pairs = struct.pack(f"<{len(flat)}Q", *flat)
    return struct.pack("<BQHI", 0x07, 6 + len(pairs), channel_id, len(pairs)) + pairs


def _compress(compression: str, data: bytes) -> bytes:
    if compression == "zstd":
        import zstandard

        out: bytes = zstandard.compress(data)
        return out
    if compression == "lz4":
        import lz4.frame  # type: ignore[import-untyped, unused-ignore]

        lz: bytes = lz4.frame.compress(data)
        return lz
    return data


class McapWriter:
    """Writes one MCAP file to ``stream`` (see the module docstring).

    Args:
        stream: a binary file open for writing (not closed here).
        chunk_size: uncompressed bytes per chunk before it is written.
        compression: "zstd", "lz4" or "" (none).
    """

    def __init__(self, stream: IO[bytes], *, chunk_size: int, compression: str) -> None:
        if compression not in ("zstd", "lz4", ""):
            raise ValueError(f"unknown compression {compression!r}")
        self._out = stream
        self._chunk_size = chunk_size
        self._compression = compression
        #: Bytes written to the file so far.
        self.written = 0
        #: Chunks written so far.
        self.chunk_count = 0
        self._parts: list[bytes] = []
        #: Uncompressed bytes and messages of the chunk being built.
        self.chunk_bytes = 0
        self.chunk_messages = 0
        self._chunk_start = 0
        self._chunk_end = 0
        self._index: dict[int, list[tuple[int, int]]] = {}
        self._schemas: list[Any] = []
        self._channels: list[Any] = []
        self._chunk_indexes: list[Any] = []
        self._metadata_indexes: list[Any] = []
        self._counts: dict[int, int] = {}
        self._message_count = 0
        self._start_time = 0
        self._end_time = 0
        self._metadata_count = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def start(self, profile: str = "", library: str = "") -> None:
        self._write(MAGIC + _bytes(r.Header(profile=profile, library=library)))

    def register_schema(self, name: str, encoding: str, data: bytes) -> int:
        schema = r.Schema(id=len(self._schemas) + 1, name=name, encoding=encoding, data=data)
        self._schemas.append(schema)
        self._add_to_chunk(_bytes(schema))
        return int(schema.id)

    def register_channel(
        self, topic: str, message_encoding: str, schema_id: int, metadata: dict[str, str]
    ) -> int:
        channel = r.Channel(
            id=len(self._channels) + 1,
            topic=topic,
            message_encoding=message_encoding,
            schema_id=schema_id,
            metadata=dict(metadata),
        )
        self._channels.append(channel)
        self._add_to_chunk(_bytes(channel))
        return int(channel.id)

    def add_metadata(self, name: str, data: dict[str, str]) -> None:
        record = _bytes(r.Metadata(name=name, metadata=dict(data)))
        self._metadata_indexes.append(
            r.MetadataIndex(offset=self.written, length=len(record), name=name)
        )
        self._metadata_count += 1
        self._write(record)

    def add_message(
        self, channel_id: int, log_time: int, data: bytes, publish_time: int, sequence: int
    ) -> None:
        """Add one message to the chunk being built (written once the chunk is full)."""
        index = self._index.get(channel_id)
        if index is None:
            if not self._index:  # the chunk's first message
                self._chunk_start = self._chunk_end = log_time
            index = self._index[channel_id] = []
        index.append((log_time, self.chunk_bytes))
        parts = self._parts
        parts.append(
            _MSG_HEAD.pack(5, 22 + len(data), channel_id, sequence, log_time, publish_time)
        )
        parts.append(data)
        self.chunk_bytes += 31 + len(data)
        self.chunk_messages += 1
        if self._message_count == 0:
            self._start_time = self._end_time = log_time
        elif log_time < self._start_time:
            self._start_time = log_time
        elif log_time > self._end_time:
            self._end_time = log_time
        self._message_count += 1
        self._counts[channel_id] = self._counts.get(channel_id, 0) + 1
        if log_time < self._chunk_start:
            self._chunk_start = log_time
        elif log_time > self._chunk_end:
            self._chunk_end = log_time
        if self.chunk_bytes > self._chunk_size:
            self._finish_chunk()

    def _add_to_chunk(self, record: bytes) -> None:
        self._parts.append(record)
        self.chunk_bytes += len(record)
        if self.chunk_bytes > self._chunk_size:
            self._finish_chunk()

    def _finish_chunk(self) -> None:
        if not self._index:
            return  # schemas and channels only: they wait for the next message
        data = b"".join(self._parts)
        compressed = _compress(self._compression, data)
        chunk = _bytes(
            r.Chunk(
                compression=self._compression,
                data=compressed,
                message_start_time=self._chunk_start,
                message_end_time=self._chunk_end,
                uncompressed_crc=zlib.crc32(data),
                uncompressed_size=len(data),
            )
        )
        chunk_offset = self.written
        self._write(chunk)
        offsets: dict[int, int] = {}
        indexes = b""
        for channel_id, entries in self._index.items():
            offsets[channel_id] = self.written + len(indexes)
            indexes += _message_index(channel_id, entries)
        self._write(indexes)
        self._chunk_indexes.append(
            r.ChunkIndex(
                message_start_time=self._chunk_start,
                message_end_time=self._chunk_end,
                chunk_start_offset=chunk_offset,
                chunk_length=len(chunk),
                message_index_offsets=offsets,
                message_index_length=len(indexes),
                compression=self._compression,
                compressed_size=len(compressed),
                uncompressed_size=len(data),
            )
        )
        self.chunk_count += 1
        self._parts = []
        self.chunk_bytes = 0
        self.chunk_messages = 0
        self._index = {}

    def finish(self) -> None:
        """Write the last chunk, the summary and the footer (the stream stays open)."""
        self._finish_chunk()
        if self._parts:  # schemas or channels never followed by a message
            self._write(b"".join(self._parts))
            self._parts = []
        self._write(_bytes(r.DataEnd(data_section_crc=0)))
        summary_start = self.written
        groups: list[tuple[int, bytes]] = [
            (Opcode.SCHEMA, _bytes(*self._schemas)),
            (Opcode.CHANNEL, _bytes(*self._channels)),
            (
                Opcode.STATISTICS,
                _bytes(
                    r.Statistics(
                        attachment_count=0,
                        channel_count=len(self._channels),
                        channel_message_counts=dict(self._counts),
                        chunk_count=self.chunk_count,
                        message_count=self._message_count,
                        metadata_count=self._metadata_count,
                        message_start_time=self._start_time,
                        message_end_time=self._end_time,
                        schema_count=len(self._schemas),
                    )
                ),
            ),
            (Opcode.CHUNK_INDEX, _bytes(*self._chunk_indexes)),
            (Opcode.METADATA_INDEX, _bytes(*self._metadata_indexes)),
        ]
        summary = b""
        offsets = []
        for opcode, data in groups:
            if data:
                offsets.append(
                    r.SummaryOffset(
                        group_opcode=opcode,
                        group_start=summary_start + len(summary),
                        group_length=len(data),
                    )
                )
                summary += data
        offset_start = summary_start + len(summary)
        summary += _bytes(*offsets)
        crc = zlib.crc32(summary)
        crc = zlib.crc32(struct.pack("<BQQQ", Opcode.FOOTER, 20, summary_start, offset_start), crc)
        self._write(summary)
        footer = r.Footer(
            summary_start=summary_start, summary_offset_start=offset_start, summary_crc=crc
        )
        self._write(_bytes(footer) + MAGIC)
