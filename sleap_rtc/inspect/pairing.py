"""Request and answer, paired the one way ``cat``, ``stats`` and ``-c`` use.

A request is answered by the first message in the other direction, on the
same connection, whose correlation_id is the request's message_id (ids are
numbered per connection and direction). Latency is the difference of the
recorder's log times (one clock, so no skew).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sleap_rtc.capture import format as fmt
from sleap_rtc_proto import bodies

if TYPE_CHECKING:
    from sleap_rtc.capture.record import Record

#: Requests remembered while waiting for answers (oldest forgotten first).
MAX_OPEN_REQUESTS = 200_000


def other_direction(direction: str) -> str:
    return fmt.WORKER_TO_CLIENT if direction == fmt.CLIENT_TO_WORKER else fmt.CLIENT_TO_WORKER


@dataclass(frozen=True)
class Answer:
    """What an answer answers: the request's body and id, and how long it took."""

    request: str
    request_id: int
    latency_ms: float


class Pairing:
    """Feed records in order to :meth:`see`; it names the request each answer answers."""

    def __init__(self, limit: int = MAX_OPEN_REQUESTS) -> None:
        self.limit = limit
        #: (connection, direction, message_id) -> (time, body) of requests not yet answered
        self.open: OrderedDict[tuple[str, str, int], tuple[int, str]] = OrderedDict()

    def see(self, rec: Record) -> Answer | None:
        if rec.kind != "protobuf" or rec.message_id is None:
            return None
        answer = None
        if rec.correlation_id:
            key = (rec.connection, other_direction(rec.direction), rec.correlation_id)
            req = self.open.pop(key, None)
            if req is not None:
                answer = Answer(req[1], rec.correlation_id, (rec.time_ns - req[0]) / 1e6)
        if rec.body in bodies.REQUESTS or rec.correlation_id == 0:
            self.open[(rec.connection, rec.direction, rec.message_id)] = (rec.time_ns, rec.body)
            if len(self.open) > self.limit:
                self.open.popitem(last=False)
        return answer

    def unanswered(self) -> list[str]:
        """The bodies of requests that were never answered."""
        return [body for _, body in self.open.values() if body in bodies.REQUESTS]
