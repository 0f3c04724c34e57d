"""The answering side (the worker): one :class:`DataChannelLink` per relayed offer.

:class:`Answerer` takes offers from a worker's signaling connection and
negotiates each concurrently, bounded by a timeout; a channel whose
``protocol`` is not :data:`PROTOCOL` is refused. Pending negotiations are
capped per sending peer (``max_pending_per_peer``; a new offer from a peer at
its cap replaces that peer's oldest) and in total (``max_pending``; when full,
the oldest negotiation of the peer with the most pending gives way), so one
room member relaying offers whose ICE never completes cannot make the worker
ignore everyone else. :func:`serve_links` runs a
handler per connected link and decides what happens to the handlers when the
signaling connection ends (they keep running) or the call is cancelled (they
are cancelled and their links closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from sleap_rtc.signaling.client import Relayed, SignalingClient, SignalingError
from sleap_rtc.transport.channel import (
    DEFAULT_CONNECT_TIMEOUT_S,
    PROTOCOL,
    ConnectError,
    DataChannelLink,
    IceServerSpec,
    close_pc,
    ice_configuration,
    spawn,
)
from sleap_rtc.transport.loopback import loopback_candidates

log = logging.getLogger(__name__)


class Answerer:
    """Answers offers relayed to a worker's signaling connection; yields one link each.

    Use ``async with Answerer(sig) as answerer: async for link in answerer: ...``
    or :func:`serve_links`. Negotiations run concurrently, each bounded by
    ``timeout``; failed or refused ones are logged and never yielded.
    """

    def __init__(
        self,
        signaling: SignalingClient,
        *,
        loopback: bool = False,
        ice_servers: Sequence[IceServerSpec] | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        protocol: str = PROTOCOL,
        max_pending: int = 16,
        max_pending_per_peer: int = 4,
    ) -> None:
        self.signaling = signaling
        self.loopback = loopback
        self.ice_servers = ice_servers
        self.timeout = timeout
        self.protocol = protocol
        self.max_pending = max_pending
        self.max_pending_per_peer = max_pending_per_peer
        #: Offers refused because of the channel protocol (for logs and tests).
        self.refused = 0
        #: Pending negotiations dropped to make room for other offers.
        self.superseded = 0
        self._by_peer: dict[str, dict[asyncio.Task[None], None]] = {}
        self._links: asyncio.Queue[DataChannelLink | None] = asyncio.Queue()
        self._pending: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._offer_loop(), name="webrtc-answerer")

    async def __aenter__(self) -> Answerer:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[DataChannelLink]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[DataChannelLink]:
        while True:
            try:
                yield await self.accept()
            except SignalingError:
                return

    async def accept(self, timeout: float | None = None) -> DataChannelLink:
        """The next connected link; SignalingError once the signaling connection ended."""
        self.start()
        try:
            async with asyncio.timeout(timeout):
                item = await self._links.get()
        except TimeoutError:
            raise ConnectError(f"no connection within {timeout:g} s") from None
        if item is None:
            self._links.put_nowait(None)
            raise SignalingError("closed", f"signaling connection ended: {self._error!r}")
        return item

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        for task in list(self._pending):
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        while not self._links.empty():
            item = self._links.get_nowait()
            if item is not None:
                await item.close(reason="answerer closed")
        self._links.put_nowait(None)

    async def _offer_loop(self) -> None:
        try:
            while True:
                offer = await self.signaling.next_relayed("offer", timeout=float("inf"))
                if not self._make_room(offer.sender):
                    log.warning(
                        "answerer: too many pending connections; ignoring offer from %s",
                        offer.sender,
                    )
                    continue
                task = asyncio.create_task(self._answer(offer))
                self._pending.add(task)
                self._by_peer.setdefault(offer.sender, {})[task] = None
                task.add_done_callback(self._pending.discard)
                task.add_done_callback(functools.partial(self._forget, offer.sender))
        except SignalingError as exc:
            self._error = exc
        finally:
            self._links.put_nowait(None)

    def _forget(self, sender: str, task: asyncio.Task[None]) -> None:
        tasks = self._by_peer.get(sender)
        if tasks is not None:
            tasks.pop(task, None)
            if not tasks:
                del self._by_peer[sender]

    def _supersede(self, sender: str) -> None:
        """Cancel the oldest pending negotiation of ``sender``."""
        oldest = next(iter(self._by_peer[sender]))
        self._forget(sender, oldest)
        self._pending.discard(oldest)
        oldest.cancel()
        self.superseded += 1
        log.info("answerer: dropped a pending connection from %s to make room", sender)

    def _make_room(self, sender: str) -> bool:
        """Room for one more negotiation from ``sender``; False to ignore its offer."""
        mine = len(self._by_peer.get(sender, ()))
        if mine >= self.max_pending_per_peer:
            self._supersede(sender)  # its newest offer replaces its oldest
            return True
        if len(self._pending) < self.max_pending:
            return True
        busiest = max(self._by_peer, key=lambda s: len(self._by_peer[s]), default=None)
        if busiest is None or len(self._by_peer[busiest]) <= mine:
            return False  # everyone is at most as busy as this peer
        self._supersede(busiest)
        return True

    async def _answer(self, offer: Relayed) -> None:
        servers = self.signaling.ice_servers if self.ice_servers is None else self.ice_servers
        pc = RTCPeerConnection(ice_configuration(servers))
        got: asyncio.Future[DataChannelLink | None] = asyncio.get_running_loop().create_future()

        def on_datachannel(channel: RTCDataChannel) -> None:
            if got.done():
                log.warning("answerer: %s opened a second channel; closing it", offer.sender)
                channel.close()
                return
            if channel.protocol != self.protocol:
                self.refused += 1
                log.warning(
                    "answerer: refused a channel from %s with protocol %r (expected %r)",
                    offer.sender,
                    channel.protocol,
                    self.protocol,
                )
                channel.close()
                got.set_result(None)
                return
            # Wrap at once, inside the event, so no message can arrive unheard.
            got.set_result(DataChannelLink(pc, channel, peer_id=offer.sender))

        pc.on("datachannel", on_datachannel)
        try:
            async with asyncio.timeout(self.timeout):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
                with loopback_candidates(self.loopback):
                    await pc.setLocalDescription(await pc.createAnswer())
                await self.signaling.relay(
                    "answer", offer.sender, sdp=pc.localDescription.sdp, session=offer.session
                )
                link = await got
                if link is not None:
                    await link.wait_open(self.timeout)
        except asyncio.CancelledError:
            if got.done() and got.result() is not None:
                got.result().abort("answerer closed")  # type: ignore[union-attr]
            else:
                spawn(close_pc(pc))
            raise
        except Exception as exc:  # a bad SDP, a timeout, a refused relay: log, never crash
            log.warning("answerer: connection from %s failed: %r", offer.sender, exc)
            if got.done() and got.result() is not None:
                await got.result().close(reason="connect failed")  # type: ignore[union-attr]
            await close_pc(pc)
            return
        if link is None:
            await close_pc(pc)
            return
        log.info("answerer: connected to %s", offer.sender)
        self._links.put_nowait(link)


#: Handlers that outlived the signaling connection they were accepted on.
_detached: set[asyncio.Task[None]] = set()


async def serve_links(
    signaling: SignalingClient,
    handle: Callable[[DataChannelLink], Awaitable[None]],
    *,
    loopback: bool = False,
    ice_servers: Sequence[IceServerSpec] | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    handlers: set[asyncio.Task[None]] | None = None,
) -> None:
    """Answer offers until the signaling connection ends; run ``handle(link)`` for each.

    Each handler runs in its own task and its link is closed when it returns.

    - The signaling connection ends (server restart, network blip): this returns
      and the handlers **keep running**: an open datachannel does not need
      signaling, so connected clients are not cut off while the worker
      re-registers. They live on in ``handlers`` (a module-level set by default).
    - This call is cancelled (shutdown): the handlers it started are cancelled
      and their links closed before the cancellation propagates.
    """
    running = _detached if handlers is None else handlers
    mine: set[asyncio.Task[None]] = set()

    async def run(link: DataChannelLink) -> None:
        try:
            await handle(link)
        except Exception:
            log.exception("connection handler for %s failed", link.peer_id)
        finally:
            await link.close(reason="handler finished")

    def forget(task: asyncio.Task[None]) -> None:
        running.discard(task)
        mine.discard(task)

    try:
        async with Answerer(
            signaling, loopback=loopback, ice_servers=ice_servers, timeout=timeout
        ) as ans:
            async for link in ans:
                task = asyncio.create_task(run(link), name=f"link-{link.peer_id}")
                running.add(task)
                mine.add(task)
                task.add_done_callback(forget)
    except asyncio.CancelledError:
        for task in list(mine):
            task.cancel()
        for task in list(mine):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        raise
