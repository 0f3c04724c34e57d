"""The files of a capture: one connection's channel metadata, and one MCAP part.

A capture is one MCAP file, or several "parts" when it rotates at its size
cap (``run.mcap``, ``run.1.mcap``, ...). Each part is a complete MCAP file
with the schema, its own channels, a summary and an index, written by the
``mcap`` library's :class:`mcap.writer.Writer` (the one MCAP writer of the
package: ``filter`` and ``recover`` use it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sleap_rtc.capture import format as fmt

if TYPE_CHECKING:
    from mcap.writer import Writer

#: Bytes kept free in each file for the summary written when it is finished.
SUMMARY_RESERVE = 2048
#: The recorder's compression names -> the mcap library's ``CompressionType`` names.
COMPRESSION = {"zstd": "ZSTD", "lz4": "LZ4", "": "NONE"}
#: Bytes of an MCAP message record beyond its data (opcode, length, channel, ...).
MESSAGE_RECORD_BYTES = 31


@dataclass(frozen=True)
class Connection:
    """One recorded connection: its id, both peers, and which side records it."""

    connection_id: str
    local_peer: str
    remote_peer: str
    local_role: str
    #: What both ends share (a digest of both DTLS fingerprints), "" when unknown:
    #: ``inspect merge`` matches the two sides' captures of a connection by it.
    session_key: str = ""

    def metadata(self, direction: str) -> dict[str, str]:
        client, worker = (
            (self.local_peer, self.remote_peer)
            if self.local_role == "client"
            else (self.remote_peer, self.local_peer)
        )
        meta = {
            "connection_id": self.connection_id,
            "local_peer": self.local_peer,
            "remote_peer": self.remote_peer,
            "local_role": self.local_role,
            "client_peer": client,
            "worker_peer": worker,
        }
        if self.session_key:
            meta["session_key"] = self.session_key
        if direction:
            meta["direction"] = direction
        return meta


def part_path(path: Path, index: int) -> Path:
    """Where part ``index`` of the capture ``path`` goes (``run.mcap``, ``run.1.mcap``, ...)."""
    if index == 0:
        return path
    return path.with_name(f"{path.stem}.{index}{path.suffix or '.mcap'}")


class Part:
    """One MCAP file of a capture.

    The open chunk is mirrored here (its bytes and messages) so that the size
    the file would have if finished now can be estimated without reaching into
    the writer; a chunk the writer wrote shows as the file growing.
    """

    def __init__(
        self,
        path: Path,
        index: int,
        chunk_size: int,
        compression: str,
        meta: dict[str, str],
    ) -> None:
        self.path = path
        self.index = index
        self._chunk_size = chunk_size
        # Imported here: mcap.writer loads zstandard and lz4 (~15 ms), needed only to write.
        from mcap.writer import CompressionType, Writer

        self._file = open(path, "wb")  # noqa: SIM115 - closed in finish()
        try:
            self._writer: Writer = Writer(
                self._file,
                chunk_size=chunk_size,
                compression=CompressionType[COMPRESSION[compression]],
            )
            self._writer.start(profile="", library=f"sleap-rtc capture ({fmt.FORMAT_VERSION})")
            self._schema = self._writer.register_schema(
                name=fmt.SCHEMA_NAME, encoding="protobuf", data=fds()
            )
            self._writer.add_metadata(fmt.METADATA_NAME, {**meta, "part": str(index)})
            self._file.flush()  # a follower (``cat -f``) can open the file at once
        except BaseException:
            self._file.close()
            raise
        self._channels: dict[tuple[str, str], int] = {}
        self._sequence: dict[int, int] = {}
        self._written = self._file.tell()
        self.chunk_count = 0
        #: Uncompressed bytes and messages of the chunk being built (the schema waits in it).
        self.chunk_bytes = len(fds()) + 64
        self.chunk_messages = 0

    @property
    def size(self) -> int:
        return self._written

    def estimate(self, extra: int) -> int:
        """File size if ``extra`` more bytes were added and the file finished now."""
        # The summary repeats the schema and channels, and indexes every chunk.
        return (
            self._written
            + self.chunk_bytes
            + 16 * self.chunk_messages  # message index entries of the open chunk
            + extra
            + 64
            + 256  # chunk record and compression framing
            + SUMMARY_RESERVE
            + len(fds())
            + 128 * (self.chunk_count + 1) * max(1, len(self._channels))
            + 384 * (len(self._channels) + 1)
        )

    def channel(self, conn: Connection, direction: str, raw: bool) -> int:
        key = (conn.connection_id, "raw" if raw else direction)
        channel_id = self._channels.get(key)
        if channel_id is None:
            if raw:
                meta = conn.metadata("")
                meta["format"] = (
                    "one JSON header line (direction, reason), b'\\n', the frame unchanged"
                )
                channel_id = self._writer.register_channel(fmt.RAW_TOPIC, fmt.RAW_ENCODING, 0, meta)
            else:
                channel_id = self._writer.register_channel(
                    fmt.topic_for(direction),
                    fmt.PROTOBUF_ENCODING,
                    self._schema,
                    conn.metadata(direction),
                )
            self._channels[key] = channel_id
            self.chunk_bytes += 512  # the channel record (about 300 bytes), in the open chunk
        return int(channel_id)

    def add(self, channel_id: int, log_time: int, publish_time: int, data: bytes) -> None:
        seq = self._sequence.get(channel_id, 0) + 1
        self._sequence[channel_id] = seq
        self._writer.add_message(channel_id, log_time, data, publish_time, seq & 0xFFFFFFFF)
        self.chunk_bytes += MESSAGE_RECORD_BYTES + len(data)
        self.chunk_messages += 1
        if self._file.tell() != self._written:  # the writer wrote the chunk (tell: ~25 ns)
            self._sync()

    @property
    def pending(self) -> int:
        """Messages added since the last chunk reached the file."""
        return self.chunk_messages

    def flush(self) -> None:
        """Write the open chunk now and flush the file, so a reader sees it (``cat -f``)."""
        if self.chunk_messages:
            self._writer.flush()  # type: ignore[no-untyped-call]
            self._sync()

    def _sync(self) -> None:
        written = self._file.tell()
        if written != self._written:  # the writer wrote a chunk
            self._written = written
            self.chunk_count += 1
            self.chunk_bytes = 0
            self.chunk_messages = 0

    def finish(self) -> None:
        try:
            self._writer.finish()  # type: ignore[no-untyped-call]
        finally:
            self._file.close()


_FDS: bytes | None = None


def fds() -> bytes:
    """The FileDescriptorSet embedded as the capture's schema (built once)."""
    global _FDS
    if _FDS is None:
        _FDS = fmt.envelope_file_descriptor_set()
    return _FDS
