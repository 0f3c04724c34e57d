"""Record datachannel frames into an MCAP capture, without ever hurting a session.

:class:`CaptureWriter` owns the file(s); :class:`RecordingLink` wraps any
:class:`~sleap_rtc.transport.link.Link` and hands every frame it sends or
receives to the writer. Recording a frame only appends it to a bounded queue
(no parsing, no I/O on the caller's thread); a background thread classifies,
redacts and writes. A full queue drops frames (counted); any write error stops
the capture, is logged once, and the session carries on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from google.protobuf.message import DecodeError
from mcap.writer import CompressionType, Writer

from sleap_rtc.auth.tokens import redact
from sleap_rtc.capture import format as fmt
from sleap_rtc.transport.link import Link
from sleap_rtc_proto.codec import Envelope, decode
from sleap_rtc_proto.errors import ProtocolError, UnsupportedVersion

log = logging.getLogger("sleap_rtc.capture")

#: Environment variable naming a capture file; see :func:`capture_from_env`.
ENV_CAPTURE = "SLEAP_RTC_CAPTURE"
#: Optional size cap per file, in bytes (suffixes k, M, G allowed).
ENV_CAPTURE_MAX_BYTES = "SLEAP_RTC_CAPTURE_MAX_BYTES"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Smallest cap accepted: a file holds the schema twice (data and summary).
MIN_MAX_BYTES = 64 * 1024
DEFAULT_MAX_FILES = 10
DEFAULT_QUEUE_FRAMES = 100_000
DEFAULT_CHUNK_BYTES = 1024 * 1024
#: Fragmented messages held back (per connection and direction) until complete.
_MAX_PENDING_FRAGMENT_SETS = 8
_MAX_PENDING_FRAGMENT_BYTES = 64 * 1024 * 1024
#: Bytes kept free in each file for the summary written when it is finished.
_SUMMARY_RESERVE = 2048
_ROLES = ("client", "worker")


class _CountingFile:
    """A binary file that counts what was written (the mcap writer calls tell())."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.written = 0

    def write(self, data: bytes) -> int:
        self._stream.write(data)
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


@dataclass(frozen=True)
class Connection:
    """One recorded connection: its id, both peers, and which side records it."""

    connection_id: str
    local_peer: str
    remote_peer: str
    local_role: str

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
        if direction:
            meta["direction"] = direction
        return meta


class _Part:
    """One MCAP file of a capture."""

    def __init__(
        self,
        path: Path,
        index: int,
        chunk_size: int,
        compression: CompressionType,
        meta: dict[str, str],
    ) -> None:
        self.path = path
        self.index = index
        self._file = _CountingFile(open(path, "wb"))  # noqa: SIM115 - closed in finish()
        self._writer = Writer(
            self._file,  # type: ignore[arg-type]
            chunk_size=chunk_size,
            compression=compression,
        )
        self._writer.start(profile="", library=f"sleap-rtc capture ({fmt.FORMAT_VERSION})")
        self._schema = self._writer.register_schema(
            name=fmt.SCHEMA_NAME, encoding="protobuf", data=_fds()
        )
        self._writer.add_metadata(fmt.METADATA_NAME, {**meta, "part": str(index)})
        self._channels: dict[tuple[str, str], int] = {}
        self._sequence: dict[int, int] = {}
        self.pending = 0  # bytes added since the last chunk reached the file
        self._last_written = self._file.written
        self.chunks = 0

    @property
    def size(self) -> int:
        return self._file.written

    def estimate(self, extra: int) -> int:
        """File size if ``extra`` more bytes were added and the file finished now."""
        # The summary repeats the schema and channels, and indexes every chunk.
        return (
            self._file.written
            + self.pending
            + extra
            + 64
            + _SUMMARY_RESERVE
            + len(_fds())
            + 128 * (self.chunks + 1) * max(1, len(self._channels))
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
        return channel_id

    def add(self, channel_id: int, log_time: int, publish_time: int, data: bytes) -> None:
        seq = self._sequence.get(channel_id, 0) + 1
        self._sequence[channel_id] = seq
        self._writer.add_message(channel_id, log_time, data, publish_time, seq)
        if self._file.written != self._last_written:
            self._last_written = self._file.written
            self.pending = 0
            self.chunks += 1
        self.pending += len(data) + 64  # record header and its message index entry

    def finish(self) -> None:
        try:
            self._writer.finish()  # type: ignore[no-untyped-call]
        finally:
            self._file.close()


_FDS: bytes | None = None


def _fds() -> bytes:
    global _FDS
    if _FDS is None:
        _FDS = fmt.envelope_file_descriptor_set()
    return _FDS


@dataclass
class _FragmentSet:
    conn: Connection
    count: int
    first_time: int
    frames: list[tuple[int, int, bytes, bytes]] = field(
        default_factory=list
    )  # (t, index, frame, data)
    size: int = 0


# One queued frame: (connection, direction, log time ns, frame)
_Item = tuple[Connection, str, int, bytes]


class CaptureWriter:
    """Writes datachannel frames of one or more connections into an MCAP capture.

    Args:
        path: the capture file, e.g. ``run.mcap``. Rotated parts are written
            next to it as ``run.1.mcap``, ``run.2.mcap``, ...
        max_bytes: size cap of each file. When the next frame would pass it,
            the file is finished and the next part started (``rotate=True``) or
            the capture stops (``rotate=False``).
        redact_tokens: replace Hello.token (and JWTs in raw frames) with a
            redaction marker; the token is never written.
        rotate: start a new part at the cap instead of stopping.
        max_files: parts kept when rotating. The first part (the handshake) is
            always kept; beyond that the oldest parts are deleted.
        queue_frames: frames that may wait for the writer thread; beyond that,
            frames are dropped (and counted in :attr:`dropped`).
        background: write on a background thread (the default). ``False``
            writes synchronously in :meth:`record` (tests, offline tools).
        clock: wall clock in ns used for log times.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        redact_tokens: bool = True,
        rotate: bool = True,
        max_files: int = DEFAULT_MAX_FILES,
        queue_frames: int = DEFAULT_QUEUE_FRAMES,
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        compression: str = "zstd",
        background: bool = True,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(
                f"max_bytes must be at least {MIN_MAX_BYTES} bytes (the schema alone is ~8 KiB)"
            )
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.redact_tokens = redact_tokens
        self.rotate = rotate
        self.max_files = max(1, max_files)
        if self.max_files == 1:
            self.rotate = False  # one file: stopping at the cap is all that is left
        self.queue_frames = queue_frames
        self.clock = clock
        self._chunk_size = max(4096, min(chunk_size, max_bytes // 4))
        self._compression = {
            "zstd": CompressionType.ZSTD,
            "lz4": CompressionType.LZ4,
            "none": CompressionType.NONE,
        }[compression]
        self._meta = {
            "format": fmt.FORMAT_VERSION,
            "tokens": "redacted" if redact_tokens else "kept",
            "started_unix_ns": str(clock()),
            "pid": str(os.getpid()),
        }
        #: Paths of the parts written so far (deleted ones excluded), in order.
        self.paths: list[Path] = []
        #: Frames dropped because the queue was full.
        self.dropped = 0
        #: Frames written (after redaction / fragment handling).
        self.written = 0
        #: The error that stopped the capture, if any.
        self.error: BaseException | None = None
        #: Why the capture stopped before close(), if it did.
        self.stop_reason: str | None = None
        self._active = True
        self._closed = False
        self._queue: deque[_Item] = deque()
        self._lock = threading.Lock()  # guards the part and the fragment sets
        self._fragments: dict[tuple[str, str, int], _FragmentSet] = {}
        self._fragment_bytes = 0
        self._part: _Part | None = None
        self._part_index = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self._open_part()
        except OSError as exc:
            self._fail(exc, "cannot create the capture file")
        if background and self._active:
            self._thread = threading.Thread(target=self._run, name="sleap-rtc-capture", daemon=True)
            self._thread.start()

    # -- public ------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while frames are being recorded."""
        return self._active

    def connection(
        self, connection_id: str, *, local_peer: str, remote_peer: str, local_role: str
    ) -> Connection:
        """Describe one connection; its channels carry this as metadata."""
        if local_role not in _ROLES:
            raise ValueError(f"local_role must be 'client' or 'worker', not {local_role!r}")
        return Connection(connection_id, local_peer, remote_peer, local_role)

    def record(
        self, conn: Connection, direction: str, frame: bytes, log_time_ns: int | None = None
    ) -> None:
        """Queue one frame. Never blocks, never raises."""
        if not self._active:
            return
        t = self.clock() if log_time_ns is None else log_time_ns
        if self._thread is None:
            try:
                with self._lock:
                    self._write_frame(conn, direction, t, bytes(frame))
            except Exception as exc:
                self._fail(exc, "write failed")
            return
        if len(self._queue) >= self.queue_frames:
            if self.dropped == 0:
                log.warning("capture %s: queue full, dropping frames", self.path)
            self.dropped += 1
            return
        self._queue.append((conn, direction, t, bytes(frame)))

    def wrap(
        self, link: Link, *, connection_id: str, local_peer: str, remote_peer: str, local_role: str
    ) -> RecordingLink:
        """``link`` recorded into this capture (see :class:`RecordingLink`)."""
        return RecordingLink(
            link,
            self,
            connection_id=connection_id,
            local_peer=local_peer,
            remote_peer=remote_peer,
            local_role=local_role,
        )

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued frames are written (not necessarily on disk). True if drained."""
        deadline = time.monotonic() + timeout_s
        while self._queue and self._active and self._thread is not None:
            self._wake.set()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Write what is queued, finish the file (summary and index). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._wake.set()
            self._thread.join(timeout=30)
        with self._lock:
            if self._active:
                try:
                    self._drain()
                    self._flush_fragments(final=True)
                except Exception as exc:
                    self._fail(exc, "write failed")
            self._active = False
            self._finish_part()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        import asyncio

        await asyncio.to_thread(self.close)

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread -----------------------------------------------------

    def _run(self) -> None:
        while not self._closed and self._active:
            self._wake.wait(0.05)
            self._wake.clear()
            with self._lock:
                try:
                    self._drain()
                except Exception as exc:
                    self._fail(exc, "write failed")

    def _drain(self) -> None:
        queue = self._queue
        while queue and self._active:
            conn, direction, t, frame = queue.popleft()
            self._write_frame(conn, direction, t, frame)

    def _fail(self, exc: BaseException, what: str) -> None:
        if self.error is None:
            self.error = exc
            self.stop_reason = f"{what}: {exc}"
            log.error("capture %s stopped (%s: %s); the session continues", self.path, what, exc)
        self._active = False
        self._queue.clear()
        self._finish_part()

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("capture %s stopped: %s", self.path, reason)
        self._active = False
        self._queue.clear()
        self._finish_part()

    # -- files -------------------------------------------------------------

    def _part_path(self, index: int) -> Path:
        if index == 0:
            return self.path
        return self.path.with_name(f"{self.path.stem}.{index}{self.path.suffix or '.mcap'}")

    def _open_part(self) -> None:
        path = self._part_path(self._part_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._part = _Part(path, self._part_index, self._chunk_size, self._compression, self._meta)
        self.paths.append(path)

    def _finish_part(self) -> None:
        part, self._part = self._part, None
        if part is not None:
            try:
                part.finish()
            except Exception as exc:
                if self.error is None:
                    self.error = exc
                    self.stop_reason = f"finishing {part.path} failed: {exc}"
                    log.error("capture %s: finishing failed (%s)", part.path, exc)

    def _rotate(self) -> None:
        self._finish_part()
        self._part_index += 1
        while len(self.paths) >= self.max_files and len(self.paths) > 1:
            old = self.paths.pop(1)
            try:
                old.unlink()
            except OSError as exc:
                log.warning("capture: could not delete old part %s (%s)", old, exc)
        self._open_part()

    def _add(
        self, conn: Connection, direction: str, raw: bool, t: int, publish: int, data: bytes
    ) -> None:
        part = self._part
        if part is None or not self._active:
            return
        if len(data) + 2 * len(_fds()) + _SUMMARY_RESERVE + 4096 > self.max_bytes:
            data = fmt.raw_header(
                direction, f"frame of {len(data)} bytes omitted: over the capture size cap"
            )
            raw = True
        if part.estimate(len(data)) > self.max_bytes:
            if not self.rotate:
                self._stop(f"size cap of {self.max_bytes} bytes reached")
                return
            self._rotate()
            part = self._part
            assert part is not None
        part.add(part.channel(conn, direction, raw), t, publish, data)
        self.written += 1

    def _add_raw(
        self, conn: Connection, direction: str, t: int, frame: bytes, reason: str, **extra: str
    ) -> None:
        if self.redact_tokens and b"eyJ" in frame:
            scrubbed = fmt.JWT_RE.sub(fmt.REDACTED_JWT.encode(), frame)
            if scrubbed != frame:
                frame = scrubbed
                extra["redacted"] = "jwt"
        self._add(conn, direction, True, t, t, fmt.raw_header(direction, reason, **extra) + frame)

    # -- classification ----------------------------------------------------

    def _write_frame(self, conn: Connection, direction: str, t: int, frame: bytes) -> None:
        if fmt.looks_legacy(frame):
            self._add_raw(conn, direction, t, frame, "legacy text frame")
            return
        try:
            envelope = decode(frame, max_bytes=1 << 62)
        except UnsupportedVersion:
            envelope = Envelope()
            try:
                envelope.ParseFromString(frame)
            except (DecodeError, RuntimeError, ValueError):
                self._add_raw(conn, direction, t, frame, "not a protobuf Envelope")
                return
        except ProtocolError as exc:
            self._add_raw(conn, direction, t, frame, exc.message)
            return
        publish = envelope.sent_time_unix_nano or t
        body = envelope.WhichOneof("body")
        if body == "fragment":
            self._fragment(conn, direction, t, frame, envelope)
            return
        if body == "hello" and self.redact_tokens and envelope.hello.token:
            envelope.hello.token = redact(envelope.hello.token)
            frame = envelope.SerializeToString()
        self._add(conn, direction, False, t, publish, frame)

    def _fragment(
        self, conn: Connection, direction: str, t: int, frame: bytes, envelope: Any
    ) -> None:
        """Hold a fragment set until complete, so a fragmented Hello can be redacted."""
        if not self.redact_tokens:
            self._add(conn, direction, False, t, envelope.sent_time_unix_nano or t, frame)
            return
        piece = envelope.fragment
        key = (conn.connection_id, direction, piece.fragmented_message_id)
        fset = self._fragments.get(key)
        if fset is None:
            fset = self._fragments[key] = _FragmentSet(conn, max(piece.count, 1), t)
        fset.frames.append((t, piece.index, frame, piece.data))
        fset.size += len(frame)
        self._fragment_bytes += len(frame)
        if len({index for _, index, _, _ in fset.frames}) >= fset.count:
            del self._fragments[key]
            self._fragment_bytes -= fset.size
            self._complete_fragments(conn, direction, fset)
        self._flush_fragments(final=False)

    def _complete_fragments(self, conn: Connection, direction: str, fset: _FragmentSet) -> None:
        pieces = sorted(fset.frames, key=lambda item: item[1])
        whole = Envelope()
        try:
            whole.ParseFromString(b"".join(data for _, _, _, data in pieces))
            hello = whole.WhichOneof("body") == "hello" and bool(whole.hello.token)
        except (DecodeError, RuntimeError, ValueError):
            hello = False
        if hello:
            whole.hello.token = redact(whole.hello.token)
            self._add(
                conn, direction, False, fset.first_time, fset.first_time, whole.SerializeToString()
            )
            return
        for t, _, frame, _ in fset.frames:
            self._add(conn, direction, False, t, t, frame)

    def _flush_fragments(self, *, final: bool) -> None:
        """Drop incomplete sets at close or over the caps: unchecked, they might hold a token."""
        now = self.clock()
        for key, fset in list(self._fragments.items()):
            too_many = len(self._fragments) > _MAX_PENDING_FRAGMENT_SETS
            too_big = self._fragment_bytes > _MAX_PENDING_FRAGMENT_BYTES
            stale = now - fset.first_time > 120 * 10**9
            if not (final or too_many or too_big or stale):
                continue
            del self._fragments[key]
            self._fragment_bytes -= fset.size
            conn = fset.conn
            note = (
                f"{len(fset.frames)} of {fset.count} fragments of message {key[2]} not recorded: "
                "the set never completed, so it could not be checked for tokens"
            )
            self._add_raw(conn, key[1], fset.first_time, b"", note)


class RecordingLink:
    """A :class:`Link` that records every frame it sends and receives.

    Frames are recorded after they crossed (a send that raised is not
    recorded) with the wall clock taken when the frame was seen. Recording
    never raises into the session.
    """

    def __init__(
        self,
        link: Link,
        writer: CaptureWriter,
        *,
        connection_id: str,
        local_peer: str,
        remote_peer: str,
        local_role: str,
    ) -> None:
        self.link = link
        self.writer = writer
        self._conn = writer.connection(
            connection_id, local_peer=local_peer, remote_peer=remote_peer, local_role=local_role
        )
        if local_role == "client":
            self._out, self._in = fmt.CLIENT_TO_WORKER, fmt.WORKER_TO_CLIENT
        else:
            self._out, self._in = fmt.WORKER_TO_CLIENT, fmt.CLIENT_TO_WORKER

    async def send(self, frame: bytes) -> None:
        t = self.writer.clock()
        await self.link.send(frame)
        self.writer.record(self._conn, self._out, frame, t)

    async def recv(self) -> bytes:
        frame = await self.link.recv()
        self.writer.record(self._conn, self._in, frame)
        return frame

    async def close(self) -> None:
        await self.link.close()

    @property
    def closed(self) -> bool:
        return self.link.closed

    def __getattr__(self, name: str) -> Any:
        # Transport extras (e.g. a WebRTC link's peer info) stay reachable.
        return getattr(self.link, name)


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864. Accepts a plain number of bytes or k/M/G suffixes."""
    text = text.strip()
    scale = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    return int(float(number) * scale)


def capture_from_env(environ: dict[str, str] | None = None, **kwargs: Any) -> CaptureWriter | None:
    """A :class:`CaptureWriter` for ``$SLEAP_RTC_CAPTURE``, or None when it is unset.

    ``$SLEAP_RTC_CAPTURE_MAX_BYTES`` (e.g. ``64M``) sets the cap. Extra keyword
    arguments go to :class:`CaptureWriter`. A path that cannot be created is
    logged and gives None: a capture never stops a session from starting.
    """
    env = os.environ if environ is None else environ
    path = env.get(ENV_CAPTURE, "").strip()
    if not path:
        return None
    cap = env.get(ENV_CAPTURE_MAX_BYTES, "").strip()
    if cap:
        try:
            kwargs.setdefault("max_bytes", parse_size(cap))
        except ValueError:
            log.warning("ignoring %s=%r: not a size", ENV_CAPTURE_MAX_BYTES, cap)
    writer = CaptureWriter(path, **kwargs)
    if not writer.active:
        return None
    return writer
