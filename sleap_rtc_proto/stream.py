"""One connection's message stream: numbering, fragmentation and reassembly.

Sans-IO: :meth:`MessageStream.send` returns the frames to put on the
datachannel; :meth:`MessageStream.receive` takes one frame and the current time
and returns a complete Envelope, or ``None`` while a fragmented message is
still arriving. Time is passed in, never read.

Memory is accounted in real bytes: a partial message is one buffer of its
announced size plus one byte per piece (at most 2x the payload, for 1-byte
fragments), charged in full when its first piece arrives. A
:class:`Reassembler` caps what it buffers (``max_buffered_bytes``) and may
also draw on a shared :class:`ByteBudget` (the worker gives every connection
that has not said Hello yet one budget, so together they cannot buffer more).
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
#: What one partial message costs beyond its buffer and its one byte per piece.
PARTIAL_OVERHEAD = 256


class ByteBudget:
    """Bytes several reassemblers may buffer together (sans-IO counter)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


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
    #: The message, written piece by piece at ``index * chunk``.
    buf: bytearray = field(default_factory=bytearray)
    #: One byte per piece: 1 once it arrived.
    have: bytearray = field(default_factory=bytearray)
    #: Size of every piece but the last (0 until the first piece arrived).
    chunk: int = 0
    received: int = 0
    #: Real bytes this partial holds (charged when its first piece arrived).
    cost: int = 0


class Reassembler:
    """Joins Fragment bodies back into Envelope bytes, with caps and timeouts."""

    def __init__(
        self,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        timeout_s: float = DEFAULT_REASSEMBLY_TIMEOUT_S,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_buffered_bytes: int | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        #: Real bytes all partial messages of this reassembler may hold.
        self.max_buffered_bytes = (
            2 * max_message_bytes + 4096 if max_buffered_bytes is None else max_buffered_bytes
        )
        self._budget = budget
        self.buffered_bytes = 0
        self._partials: dict[int, _Partial] = {}

    @property
    def budget(self) -> ByteBudget | None:
        return self._budget

    @budget.setter
    def budget(self, budget: ByteBudget | None) -> None:
        """Move what is buffered now from the old shared budget to the new one."""
        if self._budget is not None:
            self._budget.give(self.buffered_bytes)
        self._budget = budget
        if budget is not None:
            budget.used += self.buffered_bytes

    def _drop(self, key: int) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            self.buffered_bytes -= partial.cost
            if self._budget is not None:
                self._budget.give(partial.cost)

    @property
    def pending(self) -> int:
        """Messages partly received."""
        return len(self._partials)

    def feed(self, piece: envelope_pb2.Fragment, now: float) -> bytes | None:
        """Add one fragment; return the whole message's bytes once complete.

        The pieces are written into one buffer of the announced size (every piece
        but the last has the same size, as :func:`split` cuts them), so a partial
        message costs its announced size plus one byte per piece, charged in full
        when its first piece arrives.

        Raises:
            FragmentError: inconsistent, duplicated or out-of-range pieces, too
                many messages in flight, or over the buffered-bytes caps. The
                partial message is dropped.
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
            self._drop(key)
            raise FragmentError(
                f"fragment {piece.index} of {piece.count} of message {key} is invalid "
                "(count below 2 or above total_bytes, index out of range or empty data)",
                details=details,
            )
        if piece.total_bytes > self.max_message_bytes:
            self._drop(key)
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
            cost = piece.total_bytes + piece.count + PARTIAL_OVERHEAD
            if self.buffered_bytes + cost > self.max_buffered_bytes or (
                self._budget is not None and not self._budget.take(cost)
            ):
                shared = (
                    f"; {self._budget.used} of {self._budget.limit} shared bytes in use"
                    if self._budget is not None
                    else ""
                )
                raise FragmentError(
                    f"fragmented message {key} of {piece.total_bytes} bytes would buffer more "
                    f"than allowed ({self.buffered_bytes} of {self.max_buffered_bytes} bytes "
                    f"here{shared})",
                    details=details,
                )
            partial = self._partials[key] = _Partial(
                piece.count,
                piece.total_bytes,
                now,
                buf=bytearray(piece.total_bytes),
                have=bytearray(piece.count),
                cost=cost,
            )
            self.buffered_bytes += cost
        elif partial.count != piece.count or partial.total_bytes != piece.total_bytes:
            self._drop(key)
            raise FragmentError(
                f"fragment {piece.index} of message {key} disagrees with earlier fragments "
                f"on count or total size",
                details=details,
            )
        if partial.have[piece.index]:
            self._drop(key)
            raise FragmentError(
                f"fragment {piece.index} of message {key} arrived twice", details=details
            )
        size = len(piece.data)
        last = piece.index == partial.count - 1
        chunk = partial.chunk
        if not chunk:  # the first piece tells the size of all but the last
            rest = partial.total_bytes - size
            if not last:
                chunk = size
            elif rest % (partial.count - 1) == 0:
                chunk = rest // (partial.count - 1)
        expected_last = partial.total_bytes - (partial.count - 1) * chunk
        if (
            not chunk
            or not 0 < expected_last <= chunk
            or size != (expected_last if last else chunk)
        ):
            self._drop(key)
            raise FragmentError(
                f"fragment {piece.index} of message {key} has {size} bytes, which does not "
                f"fit {partial.count} fragments of {partial.total_bytes} bytes "
                f"(all but the last of one size)",
                details=details,
            )
        partial.chunk = chunk
        offset = piece.index * chunk
        partial.buf[offset : offset + size] = piece.data
        partial.have[piece.index] = 1
        partial.received += 1
        if partial.received < partial.count:
            return None
        self._drop(key)
        return bytes(partial.buf)

    def pending_ids(self) -> list[int]:
        """The fragmented message ids partly received, oldest first."""
        return list(self._partials)

    def abandon(self, fragmented_message_id: int) -> tuple[int, int] | None:
        """Drop one partial message: (pieces received, pieces announced), or None if none."""
        partial = self._partials.get(fragmented_message_id)
        if partial is None:
            return None
        self._drop(fragmented_message_id)
        return partial.received, partial.count

    def expire(self, now: float) -> list[FragmentError]:
        """Drop partial messages older than the timeout; one error for each."""
        errors = []
        for key, partial in list(self._partials.items()):
            if now - partial.started > self.timeout_s:
                self._drop(key)
                # Lazy: count may be huge; stop at the first ten gaps.
                gaps = (i for i in range(partial.count) if not partial.have[i])
                missing = list(islice(gaps, 10))
                errors.append(
                    FragmentError(
                        f"fragmented message {key} timed out after {self.timeout_s:g} s "
                        f"missing fragments {missing}"
                        f"{' and more' if partial.count - partial.received > 10 else ''}",
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

    @property
    def reassembler(self) -> Reassembler:
        """The reassembler of incoming fragments (its caps and shared budget)."""
        return self._reassembler

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
