"""Request and answer, paired the one way ``cat``, ``cat --json``, ``stats`` and ``-c`` use.

A request is answered by the first message in the other direction, on the
same connection, whose correlation_id is the request's message_id (ids are
numbered per connection and direction). A request is a message of a request
body, or of a body this program does not know (a newer peer's request), that
is not itself an answer. Latency is the difference of the recorder's log
times (one clock, so no skew).

Text ``cat``, ``stats`` and the timeline feed records in order to
:class:`Pairing`; ``cat --json`` first reads the headers of the capture
(:func:`~sleap_rtc.capture.read.headers.headers`) and builds, with the same
:class:`Pairing`, what each line carries (:func:`json_links`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sleap_rtc.capture import format as fmt
from sleap_rtc_proto import bodies

if TYPE_CHECKING:
    from sleap_rtc.capture.read.headers import Header
    from sleap_rtc.capture.read.mcapio import McapScan
    from sleap_rtc.capture.read.reader import CaptureReader
    from sleap_rtc.capture.read.record import Record

#: Requests remembered while waiting for answers (oldest forgotten first).
MAX_OPEN_REQUESTS = 200_000

#: Bodies this program knows are never requests: their messages answer nothing.
NOT_REQUESTS = frozenset(row.name for row in bodies.BODIES) - bodies.REQUESTS

#: (connection, direction) -> message id -> the JSON members its line gains.
JsonLinks = dict[tuple[str, str], dict[int, str]]


def other_direction(direction: str) -> str:
    return fmt.WORKER_TO_CLIENT if direction == fmt.CLIENT_TO_WORKER else fmt.CLIENT_TO_WORKER


@dataclass(frozen=True)
class Answer:
    """What an answer answers: the request's body and id, and how long it took."""

    request: str
    request_id: int
    latency_ms: float
    #: The request's direction.
    direction: str = ""


class Pairing:
    """Feed messages in order to :meth:`see` (records) or :meth:`step` (headers)."""

    def __init__(self, limit: int = MAX_OPEN_REQUESTS) -> None:
        self.limit = limit
        #: (connection, direction, message_id) -> (time, body) of requests not yet answered
        self.open: OrderedDict[tuple[str, str, int], tuple[int, str]] = OrderedDict()

    def see(self, rec: Record) -> Answer | None:
        """The request ``rec`` answers, if any (it may itself be a request)."""
        if rec.kind != "protobuf" or rec.message_id is None:
            return None
        return self.step(
            rec.connection,
            rec.direction,
            rec.message_id,
            rec.correlation_id or 0,
            rec.body,
            rec.time_ns,
        )

    def step(
        self,
        connection: str,
        direction: str,
        message_id: int,
        correlation_id: int,
        body: str,
        time_ns: int,
    ) -> Answer | None:
        """:meth:`see` for one message given by its header fields."""
        answer = None
        if correlation_id:
            other = other_direction(direction)
            req = self.open.pop((connection, other, correlation_id), None)
            if req is not None:
                answer = Answer(req[1], correlation_id, (time_ns - req[0]) / 1e6, other)
        if is_request(body, correlation_id):
            self.open[(connection, direction, message_id)] = (time_ns, body)
            if len(self.open) > self.limit:
                self.open.popitem(last=False)
        return answer

    def unanswered(self) -> list[str]:
        """The bodies of requests that were never answered."""
        return [body for _, body in self.open.values() if body in bodies.REQUESTS]


def is_request(body: str, correlation_id: int) -> bool:
    """May this message be answered? A request body, or a body this program does not
    know (a newer peer's request) that answers nothing itself. The one definition
    :class:`Pairing`, :func:`json_links` and :class:`Linker` use."""
    return body in bodies.REQUESTS or (correlation_id == 0 and body not in NOT_REQUESTS)


def _ref(direction: str, message_id: int, body: str, latency_ms: float) -> str:
    return (
        f'{{"direction":{json.dumps(direction)},"message_id":{message_id},'
        f'"body":{json.dumps(body)},"latency_ms":{round(latency_ms, 3)}}}'
    )


def answer_members(answer: Answer) -> str:
    """The ``,"answers":{...}`` JSON member of an answer's line."""
    return ',"answers":' + _ref(
        answer.direction, answer.request_id, answer.request, answer.latency_ms
    )


def json_links(headers: Iterable[Header], limit: int = MAX_OPEN_REQUESTS) -> JsonLinks:
    """What each ``cat --json`` line gains, by connection, direction and message id.

    An answer gains ``"answers": {direction, message_id, body, latency_ms}``
    (the request it answers); a request (a body of
    :data:`sleap_rtc_proto.bodies.REQUESTS`) gains ``"answered_by"``: the same
    for its answer, or null when nothing in the capture answered it.
    """
    pairing = Pairing(limit)
    links: JsonLinks = {}
    # ``headers`` may leave out messages of NOT_REQUESTS bodies without a correlation id:
    # they neither answer nor are answered.
    for h in headers:
        answer = pairing.step(
            h.connection, h.direction, h.message_id, h.correlation_id, h.body, h.time_ns
        )
        side = links.setdefault((h.connection, h.direction), {})
        if answer is not None:
            side[h.message_id] = side.get(h.message_id, "") + answer_members(answer)
            request_side = links.setdefault((h.connection, answer.direction), {})
            request_side[answer.request_id] = (
                request_side.get(answer.request_id, "").replace(',"answered_by":null', "")
                + ',"answered_by":'
                + _ref(h.direction, h.message_id, h.body, answer.latency_ms)
            )
        if h.body in bodies.REQUESTS:
            side[h.message_id] = side.get(h.message_id, "") + ',"answered_by":null'
    return {side: ids for side, ids in links.items() if ids}


class Linker:
    """:func:`json_links` found as the lines are made: ``cat --json`` in one process.

    The reader calls it (a :class:`~sleap_rtc.capture.tojson.jsonlines.LineHook`)
    for every message that may be a request or an answer, in file order: the
    same :class:`Pairing` names the request each answer answers, and a
    :class:`~sleap_rtc.capture.read.headers.Lookahead` reads on from each
    request to its answer. The lines are those of :func:`json_links`, without
    a first pass over the whole capture.
    """

    skip = NOT_REQUESTS

    def __init__(self, reader: CaptureReader, fallback_schema: bool = False) -> None:
        from sleap_rtc.capture.read.headers import Lookahead

        self.pairing = Pairing()
        self.lookahead = Lookahead(reader.paths, reader.kinds, fallback_schema)
        self._at = (0, 8)
        self._scan: McapScan | None = None

    def block(self, index: int, start: int, scan: McapScan) -> None:
        self._at, self._scan = (index, start), scan

    def __call__(
        self,
        connection: str,
        direction: str,
        message_id: int,
        correlation_id: int,
        body: str,
        time_ns: int,
    ) -> str:
        members = ""
        answer = self.pairing.step(connection, direction, message_id, correlation_id, body, time_ns)
        if answer is not None:
            members = answer_members(answer)
        if is_request(body, correlation_id):
            scan = self._scan
            found = None
            if scan is not None:
                found = self.lookahead.answer(
                    connection, direction, message_id, self._at, scan.channels, scan.schemas
                )
            if found is None:
                if body in bodies.REQUESTS:  # as json_links: null only for known requests
                    members += ',"answered_by":null'
            else:
                latency = (found.time_ns - time_ns) / 1e6
                members += ',"answered_by":' + _ref(
                    found.direction, found.message_id, found.body, latency
                )
        return members
