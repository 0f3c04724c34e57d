"""What the recorder does with each frame before writing it: classify, redact, hold.

Envelopes go on the protobuf channel of their direction; anything else (legacy
``TYPE::json`` text, bytes that do not decode) on the raw channel with the
reason. Hello tokens are redacted (JWTs in raw frames too); fragment sets are
held until complete so that a fragmented Hello can be redacted as well, and
sets that never complete are dropped with a note, unchecked tokens never
written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from sleap_rtc.auth.tokens import redact
from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.read.legacy import looks_legacy
from sleap_rtc.capture.write.parts import Connection
from sleap_rtc_proto.codec import Envelope, decode
from sleap_rtc_proto.errors import ProtocolError, UnsupportedVersion

#: Fragmented messages held back (per connection and direction) until complete.
MAX_PENDING_FRAGMENT_SETS = 8
MAX_PENDING_FRAGMENT_BYTES = 64 * 1024 * 1024


@dataclass
class _FragmentSet:
    conn: Connection
    count: int
    first_time: int
    frames: list[tuple[int, int, bytes, bytes]] = field(
        default_factory=list
    )  # (t, index, frame, data)
    size: int = 0


class FrameClassifier:
    """Turns frames into channel writes (:meth:`_add`, provided by the writer)."""

    redact_tokens: bool
    clock: Callable[[], int]

    def __init__(self) -> None:
        self._fragments: dict[tuple[str, str, int], _FragmentSet] = {}
        self._fragment_bytes = 0
        #: The latest frame time seen: staleness is judged on the frames' own times
        #: (a caller's ``log_time_ns`` may be far from this machine's clock).
        self._latest_t = 0

    def _add(
        self, conn: Connection, direction: str, raw: bool, t: int, publish: int, data: bytes
    ) -> None:
        raise NotImplementedError

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
        if looks_legacy(frame):
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
        self._latest_t = max(self._latest_t, t)
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
        now = self._latest_t
        for key, fset in list(self._fragments.items()):
            too_many = len(self._fragments) > MAX_PENDING_FRAGMENT_SETS
            too_big = self._fragment_bytes > MAX_PENDING_FRAGMENT_BYTES
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
