"""The MCAP records a capture reader parses itself, chunk decompression (with salvage),
and a finished file's chunk plan (from its summary, for parallel reading).

The records' layouts follow the MCAP specification; :func:`decompress_prefix`
gives what can still be decompressed from the start of damaged chunk data, as
``mcap recover`` does.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


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


class BadRecord(Exception):
    """A record whose fields do not fit it (reported as damage, never raised out)."""


def read_string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise BadRecord("string runs past the end of its record")
    return buf[pos : pos + n].decode("utf-8", "replace"), pos + n


def parse_schema(buf: bytes) -> SchemaRecord:
    (sid,) = _U16.unpack_from(buf, 0)
    name, pos = read_string(buf, 2)
    encoding, pos = read_string(buf, pos)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise BadRecord("schema data runs past the end of its record")
    return SchemaRecord(sid, name, encoding, bytes(buf[pos : pos + n]))


def parse_channel(buf: bytes) -> ChannelRecord:
    cid, schema_id = struct.unpack_from("<HH", buf, 0)
    topic, pos = read_string(buf, 4)
    encoding, pos = read_string(buf, pos)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = pos + n
    if end > len(buf):
        raise BadRecord("channel metadata runs past the end of its record")
    meta: dict[str, str] = {}
    while pos < end:
        key, pos = read_string(buf, pos)
        value, pos = read_string(buf, pos)
        meta[key] = value
    return ChannelRecord(cid, schema_id, topic, encoding, meta)


def parse_metadata(buf: bytes) -> tuple[str, dict[str, str]]:
    name, pos = read_string(buf, 0)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = min(pos + n, len(buf))
    meta: dict[str, str] = {}
    while pos < end:
        key, pos = read_string(buf, pos)
        value, pos = read_string(buf, pos)
        meta[key] = value
    return name, meta


def parse_statistics(buf: bytes) -> Statistics:
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


def decompress_prefix(compression: str, data: bytes, usize: int) -> bytes:
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


def decompress(compression: str, data: bytes, usize: int) -> bytes:
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
            raise BadRecord("lz4 compression, and the lz4 package is not installed") from None
        lz: bytes = lz4.frame.decompress(data)
        return lz
    raise BadRecord(f"unknown compression {compression!r}")


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
