"""``inspect merge``: the client's and the worker's captures of one connection, as one view.

Each side records the frames it sends and receives with its own wall clock,
under a connection id of its own. The two captures are matched by what both
sides share: the connection's ``session_key`` (both DTLS fingerprints of the
WebRTC connection, which the recorder writes since format 1 in a backward
compatible way), or, for captures without one, the handshake itself (the
Hello and HelloAck frames, recorded byte for byte alike on both sides). Then
every message is matched with its other side's copy (by direction and message
id; frames without an id by their order), and the content is checked: the same
body and size on both sides, or the files are refused as not one connection.

Clock offset (worker clock minus client clock) is estimated the NTP way from
request/answer pairs: a client request sent at t1 (client clock), received at
t2 (worker clock), answered at t3 (worker clock), the answer received at t4
(client clock) gives offset ((t2 - t1) + (t3 - t4)) / 2 with round trip
(t4 - t1) - (t3 - t2); the pair with the smallest round trip is kept (its
error is at most half its round trip). Without pairs, the midpoint of the
bounds one-way messages set (a message is never received before it was sent)
is used. Messages are then ordered by their send time on the client's clock,
each shown once with both views: sent at (sender's clock), received at
(receiver's clock) and the transit time.

Memory: both sides are held, one line (text or JSON) per message of the
sending side and the times of the receiving side: about 1 KB a message
(100,000 messages merged in about 5 s with a 266 MB peak on a 2-core machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from sleap_rtc.capture import format as fmt
from sleap_rtc.inspect.common import report_problems

if TYPE_CHECKING:
    from sleap_rtc.capture.read.reader import CaptureReader
    from sleap_rtc.capture.read.record import Record

# (direction, key): key is ("id", message_id) or ("n", ordinal among frames without an id)
_Key = tuple[str, tuple[str, int]]


class NotOneConnection(Exception):
    """The two captures are not the two sides of one connection."""


@dataclass(slots=True)
class Entry:
    """One message as one side saw it."""

    time_ns: int
    direction: str
    body: str
    size: int
    message_id: int | None
    correlation_id: int
    #: The message's text line, or its JSON line with ``--json`` (sending side only).
    line: str = ""


@dataclass
class Side:
    """One side's capture of one connection."""

    path: str
    connection: str
    role: str = ""
    peers: dict[str, str] = field(default_factory=dict)
    session_key: str = ""
    handshake: list[bytes] = field(default_factory=list)
    entries: dict[_Key, Entry] = field(default_factory=dict)
    _ordinal: dict[str, int] = field(default_factory=dict)

    def key(self, rec: Record) -> _Key:
        if rec.kind == "protobuf" and rec.message_id:
            return rec.direction, ("id", rec.message_id)
        n = self._ordinal.get(rec.direction, 0)
        self._ordinal[rec.direction] = n + 1
        return rec.direction, ("n", n)

    @property
    def fingerprint(self) -> str:
        """What both sides share: the session key, else a digest of the handshake frames."""
        if self.session_key:
            return f"session {self.session_key}"
        if len(self.handshake) < 2:
            return ""
        digest = hashlib.sha256(b"".join(hashlib.sha256(f).digest() for f in self.handshake))
        return f"handshake {digest.hexdigest()[:16]}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("first", metavar="CLIENT.mcap", help="one side's capture")
    parser.add_argument("second", metavar="WORKER.mcap", help="the other side's capture")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--width", type=int, default=0, help="cut text lines at this many characters (0: never)"
    )


def read_sides(reader: CaptureReader, path: str, as_json: bool = False) -> dict[str, Side]:
    """The connections of one capture (one :class:`Side` each), with their messages."""
    from sleap_rtc.inspect.cat import text_line
    from sleap_rtc.inspect.pairing import Pairing

    sides: dict[str, Side] = {}
    pairing = Pairing()
    for rec in reader.records():
        side = sides.get(rec.connection)
        if side is None:
            side = sides[rec.connection] = Side(path, rec.connection)
        meta = rec.channel.metadata if rec.channel is not None else {}
        if not side.role and meta.get("local_role"):
            side.role = meta["local_role"]
            side.peers = {k: meta[k] for k in ("client_peer", "worker_peer") if k in meta}
            side.session_key = meta.get("session_key", "")
        envelope = rec.envelope
        if rec.body in ("hello", "hello_ack") and envelope is not None and len(side.handshake) < 2:
            side.handshake.append(envelope.SerializeToString(deterministic=True))
        answer = pairing.see(rec)
        entry = Entry(
            rec.time_ns,
            rec.direction,
            rec.body,
            rec.size,
            rec.message_id,
            rec.correlation_id or 0,
        )
        sending = (side.role == "client") == (rec.direction == fmt.CLIENT_TO_WORKER)
        if sending or not side.role:
            entry.line = reader.json_line(rec) if as_json else text_line(rec, 0, answer)
        side.entries.setdefault(side.key(rec), entry)
    return sides


def match(first: dict[str, Side], second: dict[str, Side]) -> list[tuple[Side, Side]]:
    """(client side, worker side) of each connection found in both captures."""
    by_print: dict[str, Side] = {}
    for side in second.values():
        if side.fingerprint:
            by_print.setdefault(side.fingerprint, side)
    pairs = []
    for side in first.values():
        other = by_print.get(side.fingerprint) if side.fingerprint else None
        if other is None:
            continue
        if side.role == other.role:
            raise NotOneConnection(
                f"both captures were recorded by the {side.role or 'same'} side "
                f"(connection {side.connection} in {side.path} and {other.connection} in "
                f"{other.path}); merge needs one client capture and one worker capture"
            )
        pairs.append((side, other) if side.role == "client" else (other, side))
    if not pairs:
        seen = ", ".join(
            f"{s.path} {s.connection} ({s.role or '?'}: {s.fingerprint or 'no handshake'})"
            for s in [*first.values(), *second.values()]
        )
        raise NotOneConnection(
            "the captures share no connection: no connection of one has the session key or "
            f"the handshake of a connection of the other ({seen or 'no connections'})"
        )
    for client, worker in pairs:
        check_same(client, worker)
    return pairs


def check_same(client: Side, worker: Side) -> None:
    """Refuse two sides whose common messages differ (not the same conversation)."""
    for key in client.entries.keys() & worker.entries.keys():
        a, b = client.entries[key], worker.entries[key]
        if (a.body, a.size) != (b.body, b.size):
            direction, (kind, n) = key
            what = f"message #{n}" if kind == "id" else f"frame {n + 1} without an id"
            raise NotOneConnection(
                f"{what} {fmt.ARROWS.get(direction, '?')} is {a.body} of {a.size} B in "
                f"{client.path} but {b.body} of {b.size} B in {worker.path}: "
                "not the same connection"
            )


@dataclass(frozen=True)
class Offset:
    """The worker's clock minus the client's, and how it was found."""

    ns: int
    how: str
    #: Half the round trip of the pair used: the most the estimate can be off (ns).
    error_ns: int | None = None


def clock_offset(client: Side, worker: Side) -> Offset:
    """See the module docstring."""
    best: tuple[int, int] | None = None  # (round trip, offset)
    pairs = 0
    c2w, w2c = fmt.CLIENT_TO_WORKER, fmt.WORKER_TO_CLIENT
    for (direction, key), answer in worker.entries.items():
        if direction != w2c or not answer.correlation_id:
            continue
        request_key = (c2w, ("id", answer.correlation_id))
        sent, got = client.entries.get(request_key), worker.entries.get(request_key)
        received = client.entries.get((direction, key))
        if sent is None or got is None or received is None:
            continue
        t1, t2, t3, t4 = sent.time_ns, got.time_ns, answer.time_ns, received.time_ns
        trip = (t4 - t1) - (t3 - t2)
        pairs += 1
        if trip >= 0 and (best is None or trip < best[0]):
            best = (trip, ((t2 - t1) + (t3 - t4)) // 2)
    if best is not None:
        return Offset(
            best[1],
            f"from the request/answer pair with the shortest round trip "
            f"({best[0] / 1e6:.3f} ms) of {pairs}",
            best[0] // 2,
        )
    # One-way bounds: t_received - t_sent = +offset + transit (c2w), -offset + transit (w2c).
    upper = [
        worker.entries[k].time_ns - e.time_ns
        for k, e in client.entries.items()
        if k[0] == c2w and k in worker.entries
    ]
    lower = [
        e.time_ns - client.entries[k].time_ns
        for k, e in worker.entries.items()
        if k[0] == w2c and k in client.entries
    ]
    if upper and lower and max(lower) <= min(upper):
        lo, hi = max(lower), min(upper)
        return Offset((lo + hi) // 2, "midpoint of the one-way bounds (no request/answer pair)")
    return Offset(0, "unknown (no message seen by both sides): clocks taken as equal")


@dataclass
class Merged:
    """One message with both sides' view, on the client's clock."""

    at_ns: int
    sender: str
    sent: Entry | None
    received: Entry | None


def merged(client: Side, worker: Side, offset: Offset) -> Iterator[Merged]:
    """Every message of the connection once, ordered by send time on the client's clock."""
    out = []
    for key in client.entries.keys() | worker.entries.keys():
        direction = key[0]
        by_client = direction == fmt.CLIENT_TO_WORKER
        sender, receiver = (client, worker) if by_client else (worker, client)
        sent, received = sender.entries.get(key), receiver.entries.get(key)
        if sent is not None:
            at = sent.time_ns - (0 if by_client else offset.ns)
        else:
            assert received is not None
            at = received.time_ns - (offset.ns if by_client else 0)
        out.append(Merged(at, sender.role or "?", sent, received))
    out.sort(key=lambda m: m.at_ns)
    yield from out


def _time(ns: int) -> str:
    from sleap_rtc.capture.read.record import format_time

    return format_time(ns)[11:26]


def text_of(m: Merged, offset: Offset) -> str:
    shown = m.sent or m.received
    assert shown is not None
    receiver = "worker" if m.sender == "client" else "client"
    sent = f"sent {_time(m.sent.time_ns)} ({m.sender})" if m.sent else f"not in {m.sender} capture"
    if m.received is None:
        got = f"not in {receiver} capture"
    else:
        transit = _transit_ms(m, offset)
        got = f"received {_time(m.received.time_ns)} ({receiver})"
        if transit is not None:
            got += f" +{transit:.3f} ms"
    line = (
        shown.line or f"{_time(shown.time_ns)} {fmt.ARROWS.get(shown.direction, '?')} {shown.body}"
    )
    return f"{_time(m.at_ns)} | {sent} | {got} | {line[16:]}"


def _transit_ms(m: Merged, offset: Offset) -> float | None:
    if m.sent is None or m.received is None:
        return None
    sign = 1 if m.sender == "client" else -1
    return (m.received.time_ns - m.sent.time_ns - sign * offset.ns) / 1e6


def json_of(m: Merged, offset: Offset) -> str:
    shown = m.sent or m.received
    assert shown is not None
    receiver = "worker" if m.sender == "client" else "client"
    extra: dict[str, Any] = {
        "merged_time_ns": m.at_ns,
        "sent_at": None if m.sent is None else {"side": m.sender, "time_ns": m.sent.time_ns},
        "received_at": None
        if m.received is None
        else {"side": receiver, "time_ns": m.received.time_ns},
        "transit_ms": _transit_ms(m, offset),
    }
    line = shown.line or json.dumps({"body": shown.body, "direction": shown.direction})
    members = json.dumps(extra, separators=(",", ":"))[1:-1]
    return line[:-1] + "," + members + "}"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from sleap_rtc.capture.read.mcapio import CaptureError
    from sleap_rtc.capture.read.reader import CaptureReader

    stream = sys.stdout if out is None else out
    readers = [CaptureReader([args.first]), CaptureReader([args.second])]
    if args.json:  # each line as ``cat --json`` gives it (with its request/answer links)
        from sleap_rtc.capture.read.headers import headers
        from sleap_rtc.inspect.pairing import NOT_REQUESTS, json_links

        for reader in readers:
            reader.extras = json_links(headers(reader.paths, reader.kinds, skip=NOT_REQUESTS))
    first = read_sides(readers[0], args.first, args.json)
    second = read_sides(readers[1], args.second, args.json)
    try:
        pairs = match(first, second)
    except NotOneConnection as exc:
        raise CaptureError(f"cannot merge {args.first} and {args.second}: {exc}") from None
    for client, worker in pairs:
        offset = clock_offset(client, worker)
        error = f" (within {offset.error_ns / 1e6:.3f} ms)" if offset.error_ns is not None else ""
        header = (
            f"connection {client.connection} (client {client.path}) = "
            f"{worker.connection} (worker {worker.path}), matched by {client.fingerprint}; "
            f"worker clock - client clock = {offset.ns / 1e6:+.3f} ms{error}, {offset.how}"
        )
        if not args.json:
            stream.write(f"# {header}\n")
        else:
            print(header, file=sys.stderr)
        for m in merged(client, worker, offset):
            line = json_of(m, offset) if args.json else text_of(m, offset)
            if args.width and not args.json and len(line) > args.width:
                line = line[: max(args.width - 1, 10)] + "…"
            stream.write(line + "\n")
    unmatched = [s for s in [*first.values(), *second.values()] if not any(s in p for p in pairs)]
    for side in unmatched:
        print(
            f"note: connection {side.connection} of {side.path} has no other side", file=sys.stderr
        )
    return max(report_problems(readers[0]), report_problems(readers[1]))
