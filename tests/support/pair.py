"""A ClientSession and a WorkerSession joined in memory: no asyncio, no sockets, no clock.

In the spirit of h11's ``ConnectionPair`` and aioquic's ``client_and_server()``:
each side's queued frames are moved onto an in-flight list by :meth:`SessionPair.pump`
and handed to the other side by :meth:`SessionPair.deliver`, which can drop or
reorder them. Time is ``pair.now``, moved by the test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from sleap_rtc.client.events import Event as ClientEvent
from sleap_rtc.client.session import ClientSession
from sleap_rtc.worker.events import Event as WorkerEvent
from sleap_rtc.worker.session import TokenRefused, Verifier, WorkerInfo, WorkerSession

Side = Literal["client", "worker"]


def token_verifier(good: str = "good", subject: str = "ann") -> Verifier:
    """A verifier that accepts exactly ``good`` as ``subject``."""

    def verify(token: str) -> str:
        if token == good:
            return subject
        raise TokenRefused("malformed", f"token {token!r} is not accepted")

    return verify


class SessionPair:
    """Both sessions of one connection, and the frames in flight between them."""

    def __init__(
        self,
        *,
        client: ClientSession | None = None,
        worker: WorkerSession | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.client = client or ClientSession(token="good", software="pair-client")
        self.worker = worker or WorkerSession(
            WorkerInfo(worker_id="w1", software="pair-worker", mounts=["/mnt/lab"]),
            verifier=verifier or token_verifier(),
            session_id="s1",
        )
        self.now = 0.0
        #: Frames sent and not yet delivered, per receiving side.
        self.in_flight: dict[Side, list[bytes]] = {"client": [], "worker": []}
        self.client_events: list[ClientEvent] = []
        self.worker_events: list[WorkerEvent] = []

    def pump(self) -> None:
        """Move every frame each side queued onto the in-flight lists."""
        self.in_flight["worker"] += self.client.data_to_send()
        self.in_flight["client"] += self.worker.data_to_send()

    def deliver(
        self,
        to: Side,
        *,
        drop: Callable[[int, bytes], bool] | None = None,
        order: Sequence[int] | None = None,
    ) -> list[ClientEvent] | list[WorkerEvent]:
        """Hand the frames in flight to ``to``; returns the events they gave.

        Args:
            drop: ``(index, frame) -> True`` loses that frame.
            order: a permutation of the in-flight indexes to deliver in.
        """
        self.pump()
        frames, self.in_flight[to] = self.in_flight[to], []
        indexes = list(order) if order is not None else list(range(len(frames)))
        assert sorted(indexes) == list(range(len(frames))), "order must permute the frames"
        if to == "worker":
            worker_events: list[WorkerEvent] = []
            for i in indexes:
                if drop is None or not drop(i, frames[i]):
                    worker_events += self.worker.receive(frames[i], self.now)
            self.worker_events += worker_events
            return worker_events
        client_events: list[ClientEvent] = []
        for i in indexes:
            if drop is None or not drop(i, frames[i]):
                client_events += self.client.receive(frames[i], self.now)
        self.client_events += client_events
        return client_events

    def roundtrip(self) -> tuple[list[WorkerEvent], list[ClientEvent]]:
        """Deliver client to worker, then worker to client; the events of each side."""
        worker_events = self.deliver("worker")
        client_events = self.deliver("client")
        return list(worker_events), list(client_events)  # type: ignore[arg-type]

    def handshake(self) -> None:
        """Hello and HelloAck; both sides ready afterwards."""
        self.client.hello(now=self.now)
        self.roundtrip()
        assert self.client.ready and self.worker.authenticated
