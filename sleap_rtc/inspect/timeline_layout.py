"""What the timeline draws, decided without drawing: arrows, collapsed runs, pauses, links.

:class:`TimelineBuilder` is fed records in order (:meth:`~TimelineBuilder.add`)
and hands back a :class:`Layout` (:meth:`~TimelineBuilder.finish`): a list of
items (:class:`Arrow`, :class:`Run`, :class:`Pause`), the request/answer
:class:`Link` s between arrows (paired by :class:`~sleap_rtc.inspect.pairing.Pairing`,
the one pairing ``cat`` and ``stats`` use), and the :class:`Peers`' names.

Bounded: at most ``limit`` arrows and runs are kept (each a few hundred bytes
plus its hover text); after that records are only counted, so a
1,000,000-message capture costs the read and no more memory. A run of more
than three alike messages (same body, direction and connection, neither a
request nor an answer nor a problem) keeps its first and last arrow and one
:class:`Run` summary between them (count, time span, epochs, loss range). A
gap of more than ``pause_s`` between two messages ends any run and becomes a
:class:`Pause`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sleap_rtc.capture import format as fmt
from sleap_rtc.inspect.pairing import Answer, Pairing, other_direction
from sleap_rtc.inspect.timeline_payload import (
    ERR,
    MAX_PAYLOAD,
    PROBLEM_BODIES,
    ProgressStats,
    log_lines,
    payload,
    progress_facts,
    short,
    short_id,
)
from sleap_rtc_proto import bodies

if TYPE_CHECKING:
    from sleap_rtc.capture.read.record import Record

#: Characters of a message's JSON kept for its hover text.
DETAIL_CHARS = 1500
#: Lanes for link brackets; more overlapping links share lanes.
MAX_LANES = 8
#: Connections named apart in labels (beyond this they are only counted).
MAX_CONNECTIONS = 1000
_PROGRESS = frozenset({"job_progress", "job_progress_batch"})


@dataclass
class Arrow:
    """One message drawn as an arrow."""

    time_ns: int
    direction: str
    connection: str
    kind: str
    body: str
    message_id: int | None
    #: "job_submit #4 re #2 job=job-1" and the like (the renderer adds the connection
    #: when there are several).
    label: str
    #: The key payload ("labels found · videos 1 found, 0 missing").
    payload: str
    #: "err" (an error, a failed or rejected job, a raw frame: red), "warn" (a missing
    #: path, a refused mapping: amber) or "".
    level: str
    size: int
    #: What this message answers (request body and id, latency), when it is an answer.
    answer: Answer | None = None
    #: The full text shown on hover: header, answer, the body's JSON (cut).
    detail: str = ""


@dataclass
class Run:
    """Messages collapsed between a run's first and last arrow."""

    direction: str
    body: str
    count: int
    start_ns: int
    end_ns: int
    #: "epochs 0–9 · loss 0.91 → 0.12 (range 0.1–0.95) · 10 epoch_end".
    summary: str


@dataclass
class Pause:
    """Nothing crossed for ``seconds`` (more than the pause threshold)."""

    seconds: float
    start_ns: int


Item = Arrow | Run | Pause


@dataclass(frozen=True)
class Link:
    """A request arrow tied to the arrow that answers it."""

    request: int  #: index of the request in Layout.items
    answer: int  #: index of the answer
    latency_ms: float
    lane: int
    #: The side that answered ("worker" for a client's request): the bracket is drawn there.
    side: str


@dataclass
class Peers:
    """Who talked: from the capture's channel metadata, Hello and HelloAck."""

    client: str = "client"
    worker: str = "worker"
    client_detail: str = ""
    worker_detail: str = ""
    #: "client" or "worker": whose side the recorder ran on ("" when unknown).
    recorded_by: str = ""
    _named: set[str] = field(default_factory=set, repr=False)

    def see(self, rec: Record) -> None:
        if "meta" not in self._named and rec.channel is not None:
            meta = rec.channel.metadata
            if meta.get("client_peer") or meta.get("worker_peer"):
                self._named.add("meta")
                self.client = meta.get("client_peer") or self.client
                self.worker = meta.get("worker_peer") or self.worker
                self.recorded_by = meta.get("local_role", "")
        if rec.body not in ("hello", "hello_ack") or rec.body in self._named:
            return
        m = rec.message()
        if not isinstance(m, dict):
            return
        self._named.add(rec.body)
        if rec.body == "hello":
            self.client_detail = " · ".join(
                str(m[k]) for k in ("client_name", "software") if m.get(k)
            )
            return
        if m.get("worker_id"):
            self.worker = str(m["worker_id"])
        if m.get("subject"):
            self.client = str(m["subject"])
        parts = [str(m.get("software", ""))]
        components = m.get("components")
        if isinstance(components, dict) and components.get("sleap-nn"):
            parts.append(f"sleap-nn {components['sleap-nn']}")
        self.worker_detail = " · ".join(p for p in parts if p)


@dataclass
class Layout:
    """Everything :mod:`~sleap_rtc.inspect.timeline` draws."""

    items: list[Item]
    links: list[Link]
    peers: Peers
    t0: int
    t_end: int
    #: Records read (all of them, drawn or not).
    total: int
    #: Records drawn as arrows or summarised in runs.
    drawn: int
    #: True when ``limit`` stopped the drawing before the end.
    truncated: bool
    connections: int


def _label(rec: Record) -> str:
    parts = [rec.body if not rec.legacy_type else f"{rec.body} ({rec.legacy_type})"]
    if rec.message_id is not None:
        parts.append(f"#{rec.message_id}")
    if rec.correlation_id:
        parts.append(f"re #{rec.correlation_id}")
    job = rec.job_id or (rec.job_ids[0] if rec.job_ids else None)
    if job:
        parts.append(f"job={short_id(job)}")
    if rec.fragments:
        parts.append(f"[{rec.fragments} fragments]")
    return " ".join(parts)


def _detail(rec: Record, answer: Answer | None, message: object) -> str:
    from sleap_rtc.capture.read.record import format_time

    head = [
        f"{format_time(rec.time_ns)}  {fmt.ARROWS.get(rec.direction, '?')}  {rec.body}",
        f"message #{rec.message_id}" if rec.message_id is not None else "",
        f"re #{rec.correlation_id}" if rec.correlation_id else "",
        f"job {rec.job_id}" if rec.job_id else "",
        f"{rec.size} bytes",
        f"{rec.fragments} fragments" if rec.fragments else "",
        f"connection {rec.connection}" if rec.connection else "",
    ]
    lines = ["  ".join(h for h in head if h)]
    if answer is not None:
        lines.append(f"answers {answer.request} #{answer.request_id} in {answer.latency_ms:.3f} ms")
    if rec.kind == "raw":
        lines.append(f"RAW: {rec.reason}")
    elif rec.reason:
        lines.append(f"note: {rec.reason}")
    if message is not None:
        text = json.dumps(message, indent=1, ensure_ascii=False, default=str)
        lines.append(short(text, DETAIL_CHARS))
    elif rec.kind == "raw" and rec.raw is not None:
        lines.append(short(repr(rec.raw[:400]), DETAIL_CHARS))
    return "\n".join(lines)


class _Pending:
    """The run being gathered: its first record, the last one, and the middle's summary."""

    __slots__ = (
        "bytes",
        "count",
        "first",
        "key",
        "last",
        "lines",
        "mid_end",
        "mid_one",
        "mid_start",
        "stats",
    )

    def __init__(self, key: tuple[str, str, str, str], rec: Record) -> None:
        self.key = key
        self.first = rec
        self.last: Record | None = None
        self.count = 1
        self.mid_one: Record | None = None
        self.mid_start = 0
        self.mid_end = 0
        self.stats = ProgressStats()
        self.bytes = 0
        self.lines = 0

    def add(self, rec: Record) -> None:
        if self.last is not None:
            self._middle(self.last)
        self.last = rec
        self.count += 1

    def _middle(self, rec: Record) -> None:
        if self.mid_one is None:
            self.mid_one = rec
            self.mid_start = rec.time_ns
        self.mid_end = rec.time_ns
        self.bytes += rec.size
        if rec.body == "job_log":
            self.lines += log_lines(rec.envelope, rec.message)
        elif rec.body in _PROGRESS:
            for event, epoch, loss, val in progress_facts(rec.body, rec.envelope, rec.message):
                self.stats.add(event, epoch, loss, val)

    def summary(self) -> str:
        parts = self.stats.describe()
        if self.lines:
            parts.insert(0, f"{self.lines} log lines")
        if not self.stats.events:  # progress has its own summary; others get their size
            parts.append(_bytes(self.bytes))
        return " · ".join(parts)


def _bytes(n: int) -> str:
    if n < 10_000:
        return f"{n} bytes"
    return f"{n / 1000:.1f} kB" if n < 10_000_000 else f"{n / 1e6:.1f} MB"


class TimelineBuilder:
    """Feed records in order; :meth:`finish` returns the :class:`Layout`.

    Args:
        limit: arrows and runs drawn at most; later records are only counted.
        collapse: collapse runs of more than three alike messages.
        pause_s: a gap longer than this (seconds) is drawn as a pause; 0 draws none.
    """

    def __init__(self, *, limit: int = 2000, collapse: bool = True, pause_s: float = 2.0) -> None:
        self.limit = max(1, limit)
        self.collapse = collapse
        self.pause_ns = int(pause_s * 1e9) if pause_s > 0 else 0
        self.items: list[Item] = []
        self.links: list[Link] = []
        self.peers = Peers()
        self.pairing = Pairing()
        self.total = 0
        self.drawn = 0
        self.t0 = 0
        self.t_end = 0
        self._shown = 0  # arrows and runs in items
        self._truncated = False
        self._pending: _Pending | None = None
        self._prev_ns = 0
        self._connections: set[str] = set()
        # (connection, direction, message_id) of drawn requests -> their item index
        self._request_items: dict[tuple[str, str, int], int] = {}
        self._lane_end = [-1] * MAX_LANES

    def add(self, rec: Record) -> None:
        self.total += 1
        if rec.time_ns:  # the span and the connections count every record, drawn or not
            self.t0 = self.t0 or rec.time_ns
            self.t_end = max(self.t_end, rec.time_ns)
        if len(self._connections) < MAX_CONNECTIONS:
            self._connections.add(rec.connection)
        if self._truncated:
            return
        self.peers.see(rec)
        answer = self.pairing.see(rec)
        gap = rec.time_ns - self._prev_ns if rec.time_ns and self._prev_ns else 0
        if rec.time_ns:
            self._prev_ns = rec.time_ns
        if self.pause_ns and gap > self.pause_ns:
            self._close()
            if self._truncated:
                return
            self.items.append(Pause(gap / 1e9, rec.time_ns - gap))
        key = (rec.body, rec.direction, rec.kind, rec.connection)
        collapsible = (
            self.collapse
            and answer is None
            and rec.kind != "raw"
            and rec.body not in bodies.REQUESTS
            and rec.body not in PROBLEM_BODIES
            and rec.body not in ("hello", "hello_ack")
        )
        pending = self._pending
        if pending is not None and collapsible and pending.key == key:
            pending.add(rec)
            return
        self._close()
        if self._truncated:
            return
        if collapsible:
            self._pending = _Pending(key, rec)
        else:
            self._arrow(rec, answer)

    def _close(self) -> None:
        run, self._pending = self._pending, None
        if run is None:
            return
        self._arrow(run.first, None)
        if run.count == 3 and run.mid_one is not None:
            self._arrow(run.mid_one, None)
        elif run.count > 3 and self._room():
            first, last = run.first, run.last
            assert last is not None
            self.items.append(
                Run(
                    first.direction,
                    first.body,
                    run.count - 2,
                    run.mid_start,
                    run.mid_end,
                    run.summary(),
                )
            )
            self._shown += 1
            self.drawn += run.count - 2
        if run.last is not None:
            self._arrow(run.last, None)

    def _room(self) -> bool:
        if self._shown >= self.limit:
            self._truncated = True
        return not self._truncated

    def _arrow(self, rec: Record, answer: Answer | None) -> None:
        if not self._room():
            return
        message = rec.message() if rec.kind != "raw" else None
        text, level = payload(rec.body, message)
        if rec.kind == "raw":
            text, level = short(f"RAW: {rec.reason}", MAX_PAYLOAD), ERR
        index = len(self.items)
        self.items.append(
            Arrow(
                rec.time_ns,
                rec.direction,
                rec.connection,
                rec.kind,
                rec.body,
                rec.message_id,
                _label(rec),
                text,
                level,
                rec.size,
                answer,
                _detail(rec, answer, message),
            )
        )
        self._shown += 1
        self.drawn += 1
        if rec.message_id is not None and rec.kind == "protobuf":
            key = (rec.connection, rec.direction, rec.message_id)
            if answer is None:  # at most one entry per arrow: bounded by limit
                self._request_items[key] = index
        if answer is not None:
            req = self._request_items.pop(
                (rec.connection, other_direction(rec.direction), answer.request_id), None
            )
            if req is not None:
                self._link(req, index, answer.latency_ms, rec.direction)

    def _link(self, req: int, ans: int, latency_ms: float, answer_direction: str) -> None:
        lane = next((i for i, end in enumerate(self._lane_end) if end < req), None)
        if lane is None:
            lane = min(range(MAX_LANES), key=lambda i: self._lane_end[i])
        self._lane_end[lane] = ans
        side = "worker" if answer_direction == fmt.WORKER_TO_CLIENT else "client"
        self.links.append(Link(req, ans, latency_ms, lane, side))

    def finish(self) -> Layout:
        self._close()
        return Layout(
            self.items,
            self.links,
            self.peers,
            self.t0,
            self.t_end,
            self.total,
            self.drawn,
            self._truncated,
            len(self._connections),
        )
