"""Reassembling fragmented messages into the message they carry.

Fragments are keyed by connection, direction and fragmented message id; a set
completes when all its pieces arrived, and is then decoded as one Envelope.
Inconsistent pieces and sets that never complete become raw records with the
reason. Reassembly carries over between the rotated parts of one capture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sleap_rtc.capture.decode import LoadedSchema
from sleap_rtc.capture.frames import Channel, decode_frame
from sleap_rtc.capture.mcapio import ChannelRecord, RawMessage, SchemaRecord
from sleap_rtc.capture.record import Record

#: Fragmented messages kept pending before the oldest is given up.
MAX_PENDING_FRAGMENTS = 64

_Frames = list[tuple[RawMessage, ChannelRecord, SchemaRecord | None]]


@dataclass
class _Partial:
    count: int
    total: int
    first_time: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    frames: _Frames = field(default_factory=list)


class Reassembler:
    """Pending fragment sets of one reading (all the files of a capture)."""

    def __init__(self, keep_frames: bool = False) -> None:
        self.keep_frames = keep_frames
        self._pending: dict[tuple[str, str, int], _Partial] = {}

    def add(self, rec: Record, ch: Channel, schema: LoadedSchema, msg: RawMessage) -> Record | None:
        """Take one fragment record; the whole message once complete (or a raw record)."""
        pending = self._pending
        piece: Any = getattr(rec.envelope, "fragment")  # noqa: B009
        mid = int(piece.fragmented_message_id)
        key = (ch.connection, ch.direction, mid)
        partial = pending.get(key)
        if partial is None:
            if len(pending) >= MAX_PENDING_FRAGMENTS:
                oldest = next(iter(pending))
                return self._incomplete(*oldest, pending.pop(oldest))
            partial = pending[key] = _Partial(int(piece.count), int(piece.total_bytes), msg[2])
        if rec.frames:
            partial.frames.extend(rec.frames)
        if (
            partial.count != piece.count
            or piece.index in partial.pieces
            or piece.index >= piece.count
        ):
            del pending[key]
            return Record(
                msg[2],
                ch.direction,
                ch.connection,
                "raw",
                "fragment",
                len(msg[4]),
                message_id=mid,
                reason=f"fragment {piece.index} of message {mid} is inconsistent "
                "(count, index or duplicate)",
                raw=msg[4],
                frames=partial.frames or None,
            )
        partial.pieces[int(piece.index)] = bytes(piece.data)
        if len(partial.pieces) < partial.count:
            return None
        del pending[key]
        data = b"".join(partial.pieces[i] for i in range(partial.count))
        whole = decode_frame(
            (msg[0], msg[1], msg[2], msg[3], data), ch, schema, partial.frames or None
        )
        whole.fragments = partial.count
        if len(data) != partial.total and whole.reason is None:
            whole.reason = (
                f"reassembled {len(data)} bytes, but the fragments announced {partial.total}"
            )
        return whole

    def incomplete(self) -> Iterator[Record]:
        """Records of the sets that never completed (at the end of the capture)."""
        pending, self._pending = self._pending, {}
        for (connection, direction, mid), partial in pending.items():
            yield self._incomplete(connection, direction, mid, partial)

    def _incomplete(self, connection: str, direction: str, mid: int, partial: _Partial) -> Record:
        have = sorted(partial.pieces)
        return Record(
            partial.first_time,
            direction,
            connection,
            "raw",
            "fragment",
            sum(len(p) for p in partial.pieces.values()),
            message_id=mid,
            reason=f"fragmented message {mid} incomplete: {len(have)} of {partial.count} "
            "fragments captured",
            frames=partial.frames if self.keep_frames else None,
        )
