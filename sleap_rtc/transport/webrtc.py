"""The WebRTC transport: an aiortc datachannel as a :class:`~sleap_rtc.transport.link.Link`.

One ordered, reliable datachannel per connection, labelled ``sleap-rtc`` with
``protocol = "sleap-rtc.v1"``; the answering side refuses a channel with any
other protocol. Frames are bytes only: a text message from the peer is
counted and logged, never delivered or fatal. A frame over
:data:`MAX_FRAME_BYTES` is refused before it reaches aiortc (the codec
fragments before that).

ICE: ``RTCConfiguration(iceServers=[])`` unless servers are given, so nothing
contacts a public STUN server; ``loopback=True`` gathers a 127.0.0.1 host
candidate (see :mod:`sleap_rtc.transport.loopback`) for tests, the local demo
and loopback-only hosts. Python peers put every candidate in the SDP (no
trickle).

Every wait has a timeout; a closed channel, an aborted association or a failed
peer connection ends ``recv()`` with :class:`LinkClosed`, never a hang.

The offering side (the client) calls :func:`offer_link`; the answering side
(the worker) runs an :class:`Answerer` (or :func:`serve_links`) on its
signaling connection and gets one link per incoming offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from sleap_rtc.signaling.client import Relayed, SignalingClient, SignalingError
from sleap_rtc.transport.link import LinkClosed
from sleap_rtc.transport.loopback import loopback_candidates
from sleap_rtc_proto.codec import MAX_FRAME_BYTES

log = logging.getLogger(__name__)

#: The datachannel's ``protocol``: names the schema version spoken on it.
PROTOCOL = "sleap-rtc.v1"
CHANNEL_LABEL = "sleap-rtc"
DEFAULT_CONNECT_TIMEOUT_S = 15.0
#: Bytes queued in aiortc before ``send()`` waits for the peer to catch up.
DEFAULT_HIGH_WATER = 4 * 1024 * 1024
#: A ``send()`` blocked by a peer that takes nothing for this long closes the link.
DEFAULT_SEND_STALL_S = 30.0
#: Received bytes waiting for ``recv()`` past which the peer is flooding: the link closes.
DEFAULT_MAX_INBOX_BYTES = 64 * 1024 * 1024
#: Closing the peer connection is given this long before it is abandoned.
CLOSE_TIMEOUT_S = 5.0

IceServerSpec = RTCIceServer | Mapping[str, Any] | str


class FrameTooLargeToSend(ValueError):
    """A frame bigger than a datachannel message may be (local misuse: fragment first)."""


class ConnectError(ConnectionError):
    """The WebRTC connection could not be set up (timeout, refused, negotiation failed)."""


def ice_configuration(ice_servers: Sequence[IceServerSpec] | None = None) -> RTCConfiguration:
    """An RTCConfiguration with exactly the given ICE servers (none by default).

    Servers may be ``RTCIceServer``, ``{"urls", "username"?, "credential"?}``
    mappings (the signaling server's ``ice_servers`` shape) or URL strings.
    Never None: aiortc would fall back to a public STUN server.
    """
    servers: list[RTCIceServer] = []
    for spec in ice_servers or ():
        if isinstance(spec, RTCIceServer):
            servers.append(spec)
        elif isinstance(spec, str):
            servers.append(RTCIceServer(urls=spec))
        else:
            servers.append(
                RTCIceServer(
                    urls=spec["urls"],
                    username=spec.get("username"),
                    credential=spec.get("credential"),
                )
            )
    return RTCConfiguration(iceServers=servers)


class DataChannelLink:
    """A Link over one open aiortc datachannel; owns its peer connection."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        channel: RTCDataChannel,
        *,
        peer_id: str = "",
        high_water: int = DEFAULT_HIGH_WATER,
        send_stall_s: float = DEFAULT_SEND_STALL_S,
        max_inbox_bytes: int = DEFAULT_MAX_INBOX_BYTES,
    ) -> None:
        self.pc = pc
        self.channel = channel
        self.peer_id = peer_id
        self.high_water = high_water
        self.send_stall_s = send_stall_s
        self.max_inbox_bytes = max_inbox_bytes
        self._inbox_bytes = 0
        #: Text messages received and ignored (the protocol is bytes only).
        self.text_messages_ignored = 0
        self.close_reason = ""
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = False
        self._opened = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._drained = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        channel.bufferedAmountLowThreshold = high_water // 2
        channel.on("message", self._on_message)
        channel.on("open", self._on_open)
        channel.on("close", lambda: self._mark_closed("the datachannel closed"))
        channel.on("bufferedamountlow", self._drained.set)
        pc.on("connectionstatechange", self._on_state)
        if channel.readyState == "open":
            self._opened.set()
        elif channel.readyState == "closed":
            self._mark_closed("the datachannel closed")

    # -- Link ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def protocol(self) -> str:
        return str(self.channel.protocol)

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise LinkClosed(f"link to {self.peer_id or 'peer'} is closed: {self.close_reason}")
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise TypeError(f"a link carries bytes, not {type(frame).__name__}")
        if len(frame) > MAX_FRAME_BYTES:
            raise FrameTooLargeToSend(
                f"frame of {len(frame)} bytes is over the datachannel limit of "
                f"{MAX_FRAME_BYTES} bytes; fragment it first (sleap_rtc_proto.stream)"
            )
        while self.channel.bufferedAmount > self.high_water:
            self._drained.clear()
            waiter = asyncio.ensure_future(self._drained.wait())
            closer = asyncio.ensure_future(self._closed_event.wait())
            try:
                done, _ = await asyncio.wait(
                    {waiter, closer}, timeout=self.send_stall_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
                closer.cancel()
            if self._closed:
                raise LinkClosed(f"link to {self.peer_id or 'peer'} is closed: {self.close_reason}")
            if not done:
                await self.close(reason=f"peer took nothing for {self.send_stall_s:g} s")
                raise LinkClosed(f"link to {self.peer_id or 'peer'} stalled and was closed")
        try:
            self.channel.send(bytes(frame))
        except Exception as exc:  # InvalidStateError, or a transport torn down under us
            self._mark_closed(f"send failed: {exc!r}")
            raise LinkClosed(
                f"link to {self.peer_id or 'peer'} is closed: {self.close_reason}"
            ) from None

    async def recv(self) -> bytes:
        if self._closed and self._inbox.empty():
            raise LinkClosed(f"link to {self.peer_id or 'peer'} is closed: {self.close_reason}")
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # every later recv() raises too
            raise LinkClosed(f"link to {self.peer_id or 'peer'} is closed: {self.close_reason}")
        self._inbox_bytes -= len(item)
        return item

    async def close(self, reason: str = "closed by this side") -> None:
        """Close the channel and the peer connection; idempotent, bounded in time."""
        self._mark_closed(reason)
        if self._close_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._close_task)

    def abort(self, reason: str) -> None:
        """Close without waiting (the teardown runs in the background)."""
        self._mark_closed(reason)

    async def wait_open(self, timeout: float) -> None:
        """Wait until the channel is open; LinkClosed if it closes, ConnectError on timeout."""
        if self._opened.is_set() and not self._closed:
            return
        opener = asyncio.ensure_future(self._opened.wait())
        closer = asyncio.ensure_future(self._closed_event.wait())
        try:
            done, _ = await asyncio.wait(
                {opener, closer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            opener.cancel()
            closer.cancel()
        if self._closed:
            raise LinkClosed(f"the datachannel closed before it opened: {self.close_reason}")
        if not done:
            raise ConnectError(f"the datachannel did not open within {timeout:g} s")

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the link is closed; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._closed_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- events ----------------------------------------------------------

    def _on_open(self) -> None:
        self._opened.set()

    def _on_message(self, message: bytes | str) -> None:
        if isinstance(message, str):
            self.text_messages_ignored += 1
            if self.text_messages_ignored in (1, 10, 100) or self.text_messages_ignored % 1000 == 0:
                log.warning(
                    "link %s: ignored a text message of %d chars (the protocol carries bytes "
                    "only; %d so far)",
                    self.peer_id,
                    len(message),
                    self.text_messages_ignored,
                )
            return
        if self._closed:
            return
        self._inbox_bytes += len(message)
        if self._inbox_bytes > self.max_inbox_bytes:
            log.warning(
                "link %s: peer sent more than %d unread bytes", self.peer_id, self.max_inbox_bytes
            )
            self._mark_closed(f"peer flooded the link (over {self.max_inbox_bytes} unread bytes)")
            return
        self._inbox.put_nowait(message)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self._mark_closed(f"peer connection {state}")

    def _mark_closed(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._inbox.put_nowait(None)
        self._closed_event.set()
        self._close_task = asyncio.ensure_future(self._teardown())
        _background.add(self._close_task)
        self._close_task.add_done_callback(_background.discard)

    async def _teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        await _close_pc(self.pc)


#: Background teardowns, referenced so they are not garbage-collected mid-way.
_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _close_pc(pc: RTCPeerConnection) -> None:
    try:
        await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT_S)
    except Exception as exc:
        log.debug("closing a peer connection: %r", exc)


async def offer_link(
    signaling: SignalingClient,
    target_peer_id: str,
    *,
    loopback: bool = False,
    ice_servers: Sequence[IceServerSpec] | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    protocol: str = PROTOCOL,
) -> DataChannelLink:
    """Open a datachannel link to ``target_peer_id`` (the client's side).

    Args:
        signaling: A registered signaling connection (the client's).
        target_peer_id: The worker to connect to (from discovery).
        loopback: Gather a 127.0.0.1 candidate only (both peers on this host).
        ice_servers: STUN/TURN servers; None -> those the signaling server handed
            out at registration (none by default). Never a public default.
        timeout: Seconds for the whole setup: offer, answer, ICE, DTLS, channel open.
        protocol: The channel's protocol string (tests change it to see refusal).

    Raises:
        SignalingError: the server refused the offer (e.g. unknown peer) or closed.
        ConnectError: no answer, or the channel did not open, within ``timeout``.
        LinkClosed: the peer refused the channel or the connection dropped while opening.
    """
    servers = signaling.ice_servers if ice_servers is None else ice_servers
    pc = RTCPeerConnection(ice_configuration(servers))
    channel = pc.createDataChannel(CHANNEL_LABEL, ordered=True, protocol=protocol)
    link = DataChannelLink(pc, channel, peer_id=target_peer_id)
    session = secrets.token_hex(8)
    try:
        async with asyncio.timeout(timeout):
            with loopback_candidates(loopback):
                await pc.setLocalDescription(await pc.createOffer())
            await signaling.relay(
                "offer", target_peer_id, sdp=pc.localDescription.sdp, session=session
            )
            answer = await signaling.next_relayed(
                "answer", sender=target_peer_id, session=session, timeout=float("inf")
            )
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
            await link.wait_open(timeout)
    except TimeoutError:
        await link.close(reason="connect timed out")
        raise ConnectError(
            f"could not connect to {target_peer_id} within {timeout:g} s "
            "(no answer, or ICE/DTLS did not complete)"
        ) from None
    except (SignalingError, LinkClosed, ConnectError):
        await link.close(reason="connect failed")
        raise
    except asyncio.CancelledError:
        link.abort("connect cancelled")  # closes in the background; never leaks the pc
        raise
    except Exception as exc:
        await link.close(reason="connect failed")
        raise ConnectError(f"WebRTC negotiation with {target_peer_id} failed: {exc!r}") from exc
    return link


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
    ) -> None:
        self.signaling = signaling
        self.loopback = loopback
        self.ice_servers = ice_servers
        self.timeout = timeout
        self.protocol = protocol
        self.max_pending = max_pending
        #: Offers refused because of the channel protocol (for logs and tests).
        self.refused = 0
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
            item = await asyncio.wait_for(self._links.get(), timeout)
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
                if len(self._pending) >= self.max_pending:
                    log.warning(
                        "answerer: too many pending connections; ignoring offer from %s",
                        offer.sender,
                    )
                    continue
                task = asyncio.create_task(self._answer(offer))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        except SignalingError as exc:
            self._error = exc
        finally:
            self._links.put_nowait(None)

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
                _spawn(_close_pc(pc))
            raise
        except Exception as exc:  # a bad SDP, a timeout, a refused relay: log, never crash
            log.warning("answerer: connection from %s failed: %r", offer.sender, exc)
            if got.done() and got.result() is not None:
                await got.result().close(reason="connect failed")  # type: ignore[union-attr]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT_S)
            return
        if link is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT_S)
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


async def connect_worker(
    url: str,
    *,
    room_id: str,
    token: str,
    worker_id: str | None = None,
    loopback: bool = False,
    ice_servers: Sequence[IceServerSpec] | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> DataChannelLink:
    """Everything a client needs for one connection: sign in, pick a worker, connect.

    Registers with ``token`` in ``room_id``, picks ``worker_id`` (or the first
    available worker of the room), opens the link, then closes the signaling
    connection (the datachannel does not need it once open).

    Raises:
        SignalingError: unreachable server, refused token (``.is_auth``), or no such
            worker in the room (code ``unknown_peer`` / ``no_worker``).
        ConnectError, LinkClosed: as :func:`offer_link`.
    """
    sig = await SignalingClient.connect(url, timeout=timeout)
    try:
        await sig.register(room_id=room_id, role="client", token=token)
        target = worker_id
        if target is None:
            workers = await sig.discover(role="worker")
            available = [w for w in workers if w.status in ("", "available")] or workers
            if not available:
                raise SignalingError("no_worker", f"no worker is registered in room {room_id!r}")
            target = available[0].peer_id
        return await offer_link(
            sig, target, loopback=loopback, ice_servers=ice_servers, timeout=timeout
        )
    finally:
        await sig.close()


def make_connector(
    url: str,
    *,
    room_id: str,
    token: str,
    worker_id: str | None = None,
    loopback: bool = False,
    ice_servers: Sequence[IceServerSpec] | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> Callable[[], Awaitable[DataChannelLink]]:
    """A ``connect()`` for the client flow: each call opens a fresh link to the worker."""

    async def connect() -> DataChannelLink:
        return await connect_worker(
            url,
            room_id=room_id,
            token=token,
            worker_id=worker_id,
            loopback=loopback,
            ice_servers=ice_servers,
            timeout=timeout,
        )

    return connect
