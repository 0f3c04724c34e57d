"""Record datachannel frames into an MCAP capture, without ever hurting a session.

:class:`CaptureWriter` owns the file(s); :class:`RecordingLink` wraps any
:class:`~sleap_rtc.transport.link.Link` and hands every frame it sends or
receives to the writer. Recording a frame only appends it to a bounded queue
(no parsing, no I/O on the caller's thread); a background thread classifies,
redacts and writes. A full queue drops frames (counted); any write error stops
the capture, is logged once, and the session carries on.

The parts: :mod:`~sleap_rtc.capture.write.classify` (classify, redact, hold
fragments), :mod:`~sleap_rtc.capture.write.parts` (one MCAP file of a capture) and
the ``mcap`` library's writer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.write.classify import FrameClassifier
from sleap_rtc.capture.write.parts import SUMMARY_RESERVE, Connection, Part, fds, part_path
from sleap_rtc.transport.link import Link

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ENV_CAPTURE",
    "ENV_CAPTURE_MAX_BYTES",
    "MIN_MAX_BYTES",
    "CaptureWriter",
    "RecordingLink",
    "capture_from_env",
    "parse_size",
]

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
#: The background writer finishes the open chunk and flushes the file this often.
FLUSH_INTERVAL_S = 0.5
_ROLES = ("client", "worker")
_FINGERPRINT = re.compile(r"a=fingerprint:(\S+ \S+)")

# One queued frame: (connection, direction, log time ns, frame)
_Item = tuple[Connection, str, int, bytes]


class CaptureWriter(FrameClassifier):
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
        self._compression = {"zstd": "zstd", "lz4": "lz4", "none": ""}[compression]
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
        FrameClassifier.__init__(self)
        self._part: Part | None = None
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
        self,
        connection_id: str,
        *,
        local_peer: str,
        remote_peer: str,
        local_role: str,
        session_key: str = "",
    ) -> Connection:
        """Describe one connection; its channels carry this as metadata."""
        if local_role not in _ROLES:
            raise ValueError(f"local_role must be 'client' or 'worker', not {local_role!r}")
        return Connection(connection_id, local_peer, remote_peer, local_role, session_key)

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
        # A bytes frame is immutable: queue it as it is (copy only buffers that may change).
        self._queue.append((conn, direction, t, frame if type(frame) is bytes else bytes(frame)))

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
        flushed = time.monotonic()
        while not self._closed and self._active:
            self._wake.wait(0.05)
            self._wake.clear()
            with self._lock:
                try:
                    self._drain()
                    # What was written reaches the file within FLUSH_INTERVAL_S, so that a
                    # follower (``inspect cat -f``) sees it; a chunk at most that old is lost
                    # if the process dies.
                    now = time.monotonic()
                    part = self._part
                    if part is not None and part.pending and now - flushed >= FLUSH_INTERVAL_S:
                        part.flush()
                        flushed = now
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
    def _open_part(self) -> None:
        path = part_path(self.path, self._part_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._part = Part(path, self._part_index, self._chunk_size, self._compression, self._meta)
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
        if len(data) + 2 * len(fds()) + SUMMARY_RESERVE + 4096 > self.max_bytes:
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
            connection_id,
            local_peer=local_peer,
            remote_peer=remote_peer,
            local_role=local_role,
            session_key=session_key(link),
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


def session_key(link: object) -> str:
    """What both ends of a WebRTC link share: a digest of both DTLS fingerprints, or "".

    Each peer connection has its own certificate, and both ends hold both
    fingerprints (one in each session description), so the two sides'
    captures of one connection carry the same key and no other connection's.
    """
    pc: Any = getattr(link, "pc", None)
    try:
        sdp = f"{pc.localDescription.sdp}\n{pc.remoteDescription.sdp}"
    except AttributeError:  # not a WebRTC link (memory links, tests), or not negotiated
        return ""
    prints = sorted(set(_FINGERPRINT.findall(sdp)))
    if len(prints) < 2:
        return ""
    return hashlib.sha256("\n".join(prints).encode()).hexdigest()[:24]


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


def open_capture(path: str | os.PathLike[str] | None) -> CaptureWriter | None:
    """A capture writer for ``path``, else for ``$SLEAP_RTC_CAPTURE``, else None.

    Raises:
        OSError: the capture file cannot be created.
    """
    if path is None:
        return capture_from_env()
    writer = CaptureWriter(path)
    return writer if writer.active else None
