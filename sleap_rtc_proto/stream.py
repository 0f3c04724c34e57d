"""One connection's message stream: numbering, fragmentation and reassembly.

Sans-IO: :meth:`MessageStream.send` returns the frames to put on the
datachannel; :meth:`MessageStream.receive` takes one frame and the current time
and returns a complete Envelope, or ``None`` while a fragmented message is
still arriving. Time is passed in, never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

from google.protobuf.message import Message

from sleap_rtc_proto.codec import Envelope, decode, encode
from sleap_rtc_proto.errors import FragmentError, FrameTooLarge
from sleap_rtc_proto.limits import MAX_FRAME_BYTES, MAX_MESSAGE_BYTES
from sleap_rtc_proto.v1 import envelope_pb2
from sleap_rtc_proto.versions import CURRENT, Version

#: Bytes reserved in each fragment frame for its own envelope and header. The
#: worst case (every varint at its widest, a sent time) is 77 bytes.
FRAGMENT_OVERHEAD = 80
#: Seconds a partial message may wait for its missing fragments.
DEFAULT_REASSEMBLY_TIMEOUT_S = 30.0
#: Fragmented messages that may be in flight at once.
DEFAULT_MAX_PENDING = 8


def split(
    data: bytes,
    *,
    fragmented_message_id: int,
    next_message_id: int,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    version: Version = CURRENT,
    sent_time_unix_nano: int = 0,
) -> list[bytes]:
    """Split encoded Envelope bytes into fragment frames of at most ``max_frame_bytes``.

    Fragment envelopes are numbered from ``next_message_id`` upwards. Returns
    ``[data]`` when it already fits.
    """
    if len(data) <= max_frame_bytes:
        return [data]
    chunk = max_frame_bytes - FRAGMENT_OVERHEAD
    if chunk <= 0:
        raise ValueError("max_frame_bytes is too small to carry fragments")
    count = -(-len(data) // chunk)
    frames = []
    for index in range(count):
        piece = envelope_pb2.Fragment(
            fragmented_message_id=fragmented_message_id,
            index=index,
            count=count,
            total_bytes=len(data),
            data=data[index * chunk : (index + 1) * chunk],
        )
        frames.append(
            encode(
                piece,
                message_id=next_message_id + index,
                sent_time_unix_nano=sent_time_unix_nano,
                version=version,
            )
        )
    return frames


@dataclass
class _Partial:
    count: int
    total_bytes: int
    started: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Joins Fragment bodies back into Envelope bytes, with caps and timeouts."""

    def __init__(
        self,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        timeout_s: float = DEFAULT_REASSEMBLY_TIMEOUT_S,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self._partials: dict[int, _Partial] = {}

    @property
    def pending(self) -> int:
        """Messages partly received."""
        return len(self._partials)

    def feed(self, piece: envelope_pb2.Fragment, now: float) -> bytes | None:
        """Add one fragment; return the whole message's bytes once complete.

        Raises:
            FragmentError: inconsistent, duplicated or out-of-range pieces, too
                many messages in flight. The partial message is dropped.
            FrameTooLarge: the announced total exceeds the reassembly cap.
        """
        key = piece.fragmented_message_id
        details = {"fragmented_message_id": str(key), "index": str(piece.index)}
        if key == 0:
            raise FragmentError("fragment without fragmented_message_id", details=details)
        if (
            piece.count < 2
            or piece.index >= piece.count
            or not piece.data
            or piece.count > piece.total_bytes
        ):
            self._partials.pop(key, None)
            raise FragmentError(
                f"fragment {piece.index} of {piece.count} of message {key} is invalid "
                "(count below 2 or above total_bytes, index out of range or empty data)",
                details=details,
            )
        if piece.total_bytes > self.max_message_bytes:
            self._partials.pop(key, None)
            raise FrameTooLarge(
                f"fragmented message {key} announces {piece.total_bytes} bytes, over the "
                f"limit of {self.max_message_bytes} bytes",
                details={
                    "size_bytes": str(piece.total_bytes),
                    "limit_bytes": str(self.max_message_bytes),
                },
            )
        partial = self._partials.get(key)
        if partial is None:
            if len(self._partials) >= self.max_pending:
                raise FragmentError(
                    f"too many fragmented messages in flight (limit {self.max_pending})",
                    details=details,
                )
            partial = self._partials[key] = _Partial(piece.count, piece.total_bytes, now)
        elif partial.count != piece.count or partial.total_bytes != piece.total_bytes:
            del self._partials[key]
            raise FragmentError(
                f"fragment {piece.index} of message {key} disagrees with earlier fragments "
                f"on count or total size",
                details=details,
            )
        if piece.index in partial.pieces:
            del self._partials[key]
            raise FragmentError(
                f"fragment {piece.index} of message {key} arrived twice", details=details
            )
        partial.pieces[piece.index] = piece.data
        partial.size += len(piece.data)
        if partial.size > partial.total_bytes:
            del self._partials[key]
            raise FragmentError(
                f"fragments of message {key} exceed its announced {partial.total_bytes} bytes",
                details=details,
            )
        if len(partial.pieces) < partial.count:
            return None
        del self._partials[key]
        if partial.size != partial.total_bytes:
            raise FragmentError(
                f"fragments of message {key} hold {partial.size} bytes, "
                f"not the announced {partial.total_bytes}",
                details=details,
            )
        return b"".join(partial.pieces[i] for i in range(partial.count))

    def expire(self, now: float) -> list[FragmentError]:
        """Drop partial messages older than the timeout; one error for each."""
        errors = []
        for key, partial in list(self._partials.items()):
            if now - partial.started > self.timeout_s:
                del self._partials[key]
                # Lazy: count may be huge; stop at the first ten gaps.
                gaps = (i for i in range(partial.count) if i not in partial.pieces)
                missing = list(islice(gaps, 10))
                errors.append(
                    FragmentError(
                        f"fragmented message {key} timed out after {self.timeout_s:g} s "
                        f"missing fragments {missing}"
                        f"{' and more' if partial.count - len(partial.pieces) > 10 else ''}",
                        details={"fragmented_message_id": str(key)},
                    )
                )
        return errors


class MessageStream:
    """Numbering, fragmentation and reassembly for one connection (sans-IO)."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        reassembly_timeout_s: float = DEFAULT_REASSEMBLY_TIMEOUT_S,
        version: Version = CURRENT,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_message_bytes = max_message_bytes
        self.version = version
        self._next_id = 1
        self._reassembler = Reassembler(
            max_message_bytes=max_message_bytes, timeout_s=reassembly_timeout_s
        )

    def send(
        self, body: Message, *, correlation_id: int = 0, sent_time_unix_nano: int = 0
    ) -> tuple[int, list[bytes]]:
        """Encode ``body``; return its message id and the frames to send, in order."""
        message_id = self._next_id
        data = encode(
            body,
            message_id=message_id,
            correlation_id=correlation_id,
            sent_time_unix_nano=sent_time_unix_nano,
            version=self.version,
        )
        if len(data) > self.max_message_bytes:
            raise FrameTooLarge(
                f"outgoing {type(body).__name__} of {len(data)} bytes exceeds the limit of "
                f"{self.max_message_bytes} bytes"
            )
        frames = split(
            data,
            fragmented_message_id=message_id,
            next_message_id=message_id + 1,
            max_frame_bytes=self.max_frame_bytes,
            version=self.version,
            sent_time_unix_nano=sent_time_unix_nano,
        )
        self._next_id = message_id + 1 + (len(frames) if len(frames) > 1 else 0)
        return message_id, frames

    def receive(self, frame: bytes, now: float) -> Envelope | None:
        """Decode one frame; return the complete Envelope, or None while fragments arrive.

        Raises:
            ProtocolError: (a subclass) naming what is wrong with the frame. The
                stream stays usable afterwards.
        """
        envelope = decode(frame, max_bytes=self.max_frame_bytes)
        if envelope.WhichOneof("body") != "fragment":
            return envelope
        whole = self._reassembler.feed(envelope.fragment, now)
        if whole is None:
            return None
        inner = decode(whole, max_bytes=self.max_message_bytes)
        key = envelope.fragment.fragmented_message_id
        if inner.WhichOneof("body") == "fragment":
            raise FragmentError(
                "a fragment may not contain another fragment",
                details={"fragmented_message_id": str(key)},
            )
        if inner.message_id != key:
            raise FragmentError(
                f"fragments of message {key} reassemble into message {inner.message_id}",
                details={"fragmented_message_id": str(key)},
            )
        return inner

    def expire(self, now: float) -> list[FragmentError]:
        """Drop fragmented messages that waited too long; see :meth:`Reassembler.expire`."""
        return self._reassembler.expire(now)
