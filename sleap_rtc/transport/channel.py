"""One open aiortc datachannel as a :class:`~sleap_rtc.transport.link.Link`.

:class:`DataChannelLink` wraps an ordered, reliable datachannel and owns its
peer connection. Frames are bytes only: a text message from the peer is
counted and logged, never delivered or fatal. A frame over
:data:`MAX_FRAME_BYTES` is refused before it reaches aiortc (the codec
fragments before that). Every wait has a timeout; a closed channel, an aborted
association or a failed peer connection ends ``recv()`` with
:class:`LinkClosed`, never a hang.

The constants, errors and ICE configuration shared by the offering side
(:mod:`sleap_rtc.transport.webrtc`) and the answering side
(:mod:`sleap_rtc.transport.answerer`) live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection

from sleap_rtc.transport.link import LinkClosed
from sleap_rtc_proto.limits import MAX_FRAME_BYTES

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
            async with asyncio.timeout(timeout):
                await self._closed_event.wait()
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
        self._close_task = spawn(self._teardown())

    async def _teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        await close_pc(self.pc)


#: Background teardowns, referenced so they are not garbage-collected mid-way.
_background: set[asyncio.Task[None]] = set()


def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``coro`` in the background, kept referenced until it ends."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def close_pc(pc: RTCPeerConnection) -> None:
    """Close a peer connection, giving up after :data:`CLOSE_TIMEOUT_S`; never raises."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await pc.close()
    except Exception as exc:
        log.debug("closing a peer connection: %r", exc)
