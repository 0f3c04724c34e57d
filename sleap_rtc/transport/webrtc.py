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

The offering side (the client) calls :func:`offer_link` (or
:func:`make_connector`); the answering side (the worker) runs an
:class:`Answerer` (or :func:`serve_links`) on its signaling connection and gets
one link per incoming offer.

This module is the transport's public door; the parts live in
:mod:`sleap_rtc.transport.channel` (the Link over one datachannel, constants,
errors, ICE configuration) and :mod:`sleap_rtc.transport.answerer` (the
worker's side), and everything is importable from here.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence

from aiortc import RTCPeerConnection, RTCSessionDescription

from sleap_rtc.signaling.client import SignalingClient, SignalingError
from sleap_rtc.transport.channel import (
    CHANNEL_LABEL,
    DEFAULT_CONNECT_TIMEOUT_S,
    PROTOCOL,
    ConnectError,
    DataChannelLink,
    IceServerSpec,
    ice_configuration,
)
from sleap_rtc.transport.link import LinkClosed
from sleap_rtc.transport.loopback import loopback_candidates

__all__ = [
    "connect_worker",
    "make_connector",
    "offer_link",
]


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
