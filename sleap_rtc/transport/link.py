"""A Link moves whole frames (bytes) between two peers; sessions never see sockets.

The asyncio adapters of the client and the worker only ever talk to a
:class:`Link`. The WebRTC datachannel adapter implements it for real; the
in-memory pair here joins a client and a worker inside one process for tests,
and can drop or reorder frames to prove the sessions cope.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Protocol, runtime_checkable


class LinkClosed(ConnectionError):
    """The link is closed: by either side, or because the transport dropped."""


@runtime_checkable
class Link(Protocol):
    """One connection carrying whole frames in both directions."""

    async def send(self, frame: bytes) -> None:
        """Send one frame. Raises LinkClosed when the link is closed."""

    async def recv(self) -> bytes:
        """Wait for the next frame. Raises LinkClosed once closed and drained."""

    async def close(self) -> None:
        """Close both directions; idempotent."""

    @property
    def closed(self) -> bool:
        """True once either side closed the link."""


_CLOSE = object()


class MemoryLink:
    """One end of an in-memory link pair (see :func:`memory_link_pair`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peer: MemoryLink | None = None
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False
        #: Decides per outgoing frame whether to drop it (tests inject faults).
        self.drop: Callable[[bytes], bool] = lambda frame: False
        #: When set, outgoing frames are held and released in shuffled order
        #: every ``reorder_window`` frames.
        self.reorder_window = 0
        self._held: list[bytes] = []
        self._rng = random.Random(0)
        self.sent: list[bytes] = []

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, frame: bytes) -> None:
        if self._closed or self.peer is None or self.peer._closed:
            raise LinkClosed(f"link {self.name} is closed")
        self.sent.append(frame)
        if self.drop(frame):
            return
        if self.reorder_window > 1:
            self._held.append(frame)
            if len(self._held) >= self.reorder_window:
                self._rng.shuffle(self._held)
                for held in self._held:
                    self.peer._inbox.put_nowait(held)
                self._held.clear()
            return
        self.peer._inbox.put_nowait(frame)

    async def recv(self) -> bytes:
        if self._closed and self._inbox.empty():
            raise LinkClosed(f"link {self.name} is closed")
        item = await self._inbox.get()
        if item is _CLOSE:
            self._closed = True
            raise LinkClosed(f"link {self.name} was closed by the peer")
        assert isinstance(item, bytes)
        return item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put_nowait(_CLOSE)
        if self.peer is not None and not self.peer._closed:
            self.peer._inbox.put_nowait(_CLOSE)


def memory_link_pair(a: str = "client", b: str = "worker") -> tuple[MemoryLink, MemoryLink]:
    """Two joined in-memory links; frames sent on one arrive on the other."""
    left, right = MemoryLink(a), MemoryLink(b)
    left.peer, right.peer = right, left
    return left, right
