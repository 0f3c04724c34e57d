"""The relay's bookkeeping at both ends (sans-IO): numbering, resending, deduplicating, acks.

:class:`Outbox` (the relay) numbers Progress, Log and Result (1, 2, ...), keeps
what the worker did not acknowledge (bounded) and hands it to the socket again
after every reconnection; :class:`Inbox` (the worker's hub, one per job) delivers
each sequence once and says when to acknowledge (batched).

>>> box, inbox = Outbox("job-1"), Inbox()
>>> first = box.add_log(1, ["hello"])
>>> box.next_to_send() == first
True
>>> inbox.accept(first), inbox.accept(first)
(True, False)
>>> box.ack(inbox.take_ack())
>>> box.unacked, box.next_to_send()
(0, None)
"""

from __future__ import annotations

import math
from collections import deque

from sleap_rtc.worker.jobrecord import RunResult
from sleap_rtc.worker.relaywire import MAX_LINE_CHARS, Hello, Log, Progress, RelayMessage, Result
from sleap_rtc.worker.zmqprogress import ProgressUpdate
from sleap_rtc_proto.v1 import progress_pb2

#: Most unacknowledged messages the relay keeps (beyond: oldest progress dropped).
OUTBOX_LIMIT = 20_000


class Outbox:
    """The relay's numbered, unacknowledged messages (bounded), in order.

    Beyond ``limit`` unacknowledged messages the oldest ones (never ``train_begin``
    or the result) are dropped into one Log note in their place, which covers their
    sequences (``Log.first`` .. ``Log.seq``) and says how many were dropped, so the
    stream the worker sees has no hole.
    """

    def __init__(self, job_id: str, limit: int = OUTBOX_LIMIT) -> None:
        self.job_id = job_id
        self.limit = limit
        self.last_seq = 0
        self.acked = 0
        self.dropped = 0
        self._queue: deque[Progress | Log | Result] = deque()
        self._cursor = 0  # index in the queue of the next message to hand to the socket

    @property
    def unacked(self) -> int:
        return len(self._queue)

    def _add(self, msg: Progress | Log | Result) -> Progress | Log | Result:
        self._queue.append(msg)
        while len(self._queue) > self.limit and self._drop_one():
            pass
        return msg

    @staticmethod
    def _kept(msg: Progress | Log | Result) -> bool:
        if isinstance(msg, Progress):
            return msg.update.event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN
        return isinstance(msg, Result) or bool(msg.first)  # the result, and drop notes

    def _note(self, first: int, seq: int) -> Log:
        line = (
            f"relay: {seq - first + 1} message(s) (progress and output) were dropped while "
            f"the worker was unreachable (more than {self.limit} unacknowledged)"
        )
        return Log(self.job_id, seq, progress_pb2.LOG_STREAM_WORKER, (line,), first=first)

    def _drop_one(self) -> bool:
        queue = self._queue
        for i, msg in enumerate(queue):
            if self._kept(msg):
                continue
            self.dropped += 1
            before = queue[i - 1] if i else None
            if isinstance(before, Log) and before.first:  # extend the note in front
                queue[i - 1] = self._note(before.first, msg.seq)
                del queue[i]
                if i <= self._cursor:  # the note now covers more: hand it over again
                    self._cursor = i - 1
            else:
                queue[i] = self._note(msg.seq, msg.seq)
                if i < self._cursor:
                    self._cursor = i
            return True
        return False

    def _seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def add_progress(self, update: ProgressUpdate) -> Progress:
        msg = Progress(self.job_id, self._seq(), update)
        self._add(msg)
        return msg

    def add_log(self, stream: int, lines: list[str] | tuple[str, ...]) -> Log:
        msg = Log(self.job_id, self._seq(), stream, tuple(line[:MAX_LINE_CHARS] for line in lines))
        self._add(msg)
        return msg

    def add_result(self, result: RunResult) -> Result:
        msg = Result(self.job_id, self._seq(), result)
        self._add(msg)
        return msg

    def ack(self, upto: int | None) -> None:
        """Everything up to ``upto`` was delivered: forget it."""
        if upto is None or upto <= self.acked:
            return
        self.acked = min(upto, self.last_seq)
        while self._queue and self._queue[0].seq <= self.acked:
            self._queue.popleft()
            self._cursor = max(0, self._cursor - 1)

    def rewind(self) -> None:
        """A new connection (or the worker asked): everything unacknowledged is to be
        sent again."""
        self._cursor = 0

    def next_to_send(self) -> Progress | Log | Result | None:
        """The oldest message not yet handed to the socket since the last rewind."""
        return self._queue[self._cursor] if self._cursor < len(self._queue) else None

    def mark_sent(self, msg: Progress | Log | Result) -> None:
        """``msg`` (what :meth:`next_to_send` gave) went to the socket."""
        if self._cursor < len(self._queue) and self._queue[self._cursor] is msg:
            self._cursor += 1

    def hello(self, node: str, relay_pid: int, trainer_pid: int | None) -> Hello:
        return Hello(
            self.job_id, node, relay_pid, trainer_pid, assigned=self.last_seq, acked=self.acked
        )


class Inbox:
    """The worker's side of one job: deliver each sequence once, in order; batch the acks.

    ``after_seq``: what a previous worker life delivered already (duplicates after a
    restart are dropped). :meth:`take_ack` gives the sequence to acknowledge when an
    ack is due (``every`` deliveries or ``after_s`` seconds), else None. A message
    that comes after a hole (what came before it was lost with a connection) is not
    delivered; :meth:`take_resend` then asks the relay to send again from the hole.
    A Hello saying the relay had more acknowledged (by an earlier worker life that did
    not persist its position) moves the position there (counted in ``skipped``): the
    relay no longer has those messages, and waiting for them would stall the job.
    """

    def __init__(self, after_seq: int = 0, every: int = 100, after_s: float = 0.2) -> None:
        self.last = after_seq
        self.every = every
        self.after_s = after_s
        self.duplicates = 0
        self.ahead = 0
        self.skipped = 0
        self._resend = False
        self._resend_at = -math.inf
        self._acked = -1
        self._pending = 0
        self._since: float | None = None

    def accept(self, msg: RelayMessage, now: float = 0.0) -> bool:
        """True when ``msg`` is to be delivered (a Hello always is)."""
        if isinstance(msg, Hello):
            if msg.acked > self.last:  # an earlier worker life acknowledged more than this
                self.skipped += msg.acked - self.last  # one knows of: the relay has them no more
                self.last = msg.acked
            self._acked = -1  # a new connection hears where it stands at once
            self._since = -math.inf
            return True
        if msg.seq <= self.last:
            self.duplicates += 1
            self._acked = min(self._acked, self.last - 1)  # re-acknowledge what it resent
            self._since = -math.inf if self._since is None else self._since
            return False
        first = msg.first if isinstance(msg, Log) and msg.first else msg.seq
        if first > self.last + 1:  # something before it was lost with a connection
            self.ahead += 1
            self._resend = True
            return False
        self.last = msg.seq
        self._pending += 1
        if self._since is None:
            self._since = now
        if isinstance(msg, Result):
            self._since = -math.inf  # the relay waits for this one
        return True

    def take_ack(self, now: float = math.inf) -> int | None:
        """The sequence to acknowledge now, or None when no ack is due."""
        if self.last == self._acked:
            return None
        due = self._pending >= self.every or (
            self._since is not None and now - self._since >= self.after_s
        )
        if not due:
            return None
        self._acked = self.last
        self._pending = 0
        self._since = None
        return self.last

    def retry_ack(self) -> None:
        """The last ack could not be sent: it is due again at the next look."""
        self._acked = -1
        self._since = -math.inf

    def take_resend(self, now: float, every_s: float = 0.5) -> int | None:
        """The sequence to send a ``resend`` from (the last delivered), at most every
        ``every_s`` seconds while messages arrive after a hole; else None."""
        if not self._resend or now - self._resend_at < every_s:
            return None
        self._resend = False
        self._resend_at = now
        return self.last
